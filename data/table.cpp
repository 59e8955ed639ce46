#include "data/table.h"

#include <glob.h>

#include <algorithm>
#include <cctype>
#include <filesystem>

#include "data/json_rows.h"
#include "data/parquet.h"
#include "kernels/error.h"

namespace cst {

const Column* Table::find(const std::string& name) const {
  for (const Column& column : columns)
    if (column.name == name) return &column;
  return nullptr;
}

const char* column_kind_name(const Column& column) {
  return column.is_messages ? "message lists" : column.is_integer ? "integers" : "strings";
}

void fail_if_git_lfs_pointer(std::string_view head, const std::string& path) {
  if (head.starts_with("version https://git-lfs.github.com/spec/"))
    fail(path,
         " is a git-LFS pointer, not the data itself: run `git lfs pull` in its repository "
         "(or download the real file)");
}

std::vector<std::string> names_to_read(const std::vector<std::string>& wanted,
                                       const std::vector<std::string>& available) {
  const std::vector<std::string>& requested = wanted.empty() ? available : wanted;
  std::vector<std::string> names;
  for (const std::string& name : requested) {
    const bool present = std::find(available.begin(), available.end(), name) != available.end();
    const bool repeated = std::find(names.begin(), names.end(), name) != names.end();
    if (present && !repeated) names.push_back(name);
  }
  return names;
}

namespace {

std::string lowercase_extension(const std::string& path) {
  std::string extension = std::filesystem::path(path).extension().string();
  std::transform(extension.begin(), extension.end(), extension.begin(),
                 [](unsigned char c) { return char(std::tolower(c)); });
  return extension;
}

bool is_json_file(const std::string& path) {
  const std::string extension = lowercase_extension(path);
  return extension == ".json" || extension == ".jsonl";
}

bool is_dataset_file(const std::string& path) {
  return is_json_file(path) || lowercase_extension(path) == ".parquet";
}

std::vector<std::string> glob_files(const std::string& pattern) {
  glob_t matches{};
  const int status = glob(pattern.c_str(), 0, nullptr, &matches);
  std::vector<std::string> files;
  for (size_t i = 0; status == 0 && i < matches.gl_pathc; ++i) {
    if (std::filesystem::is_regular_file(matches.gl_pathv[i])) files.push_back(matches.gl_pathv[i]);
  }
  globfree(&matches);
  if (files.empty()) fail("no files match ", pattern);
  std::sort(files.begin(), files.end());
  return files;
}

std::vector<std::string> directory_files(const std::string& directory) {
  std::error_code error;
  std::filesystem::directory_iterator entries(directory, error);
  if (error) fail("cannot list directory ", directory, ": ", error.message());
  std::vector<std::string> files;
  for (const auto& entry : entries) {
    if (entry.is_regular_file() && is_dataset_file(entry.path().string()))
      files.push_back(entry.path().string());
  }
  if (files.empty()) fail(directory, " holds no .parquet, .json or .jsonl files");
  // Shards are named train-00000-of-00002.parquet ...: name order is row order.
  std::sort(files.begin(), files.end());
  return files;
}

std::vector<std::string> source_files(const std::string& path) {
  if (path.find_first_of("*?[") != std::string::npos) return glob_files(path);
  if (std::filesystem::is_directory(path)) return directory_files(path);
  return {path};
}

Table read_file(const std::string& path, const std::vector<std::string>& wanted) {
  return is_json_file(path) ? read_json_rows(path, wanted) : read_parquet_file(path, wanted);
}

std::string join(const std::vector<std::string>& names) {
  std::string joined;
  for (const std::string& name : names) joined += (joined.empty() ? "" : ", ") + name;
  return joined;
}

// Appends the rows of a later shard, which must have the first shard's columns (in any order: JSON
// rows list their keys in whatever order they were written) and kinds.
void append_shard(Table& table, Table&& shard) {
  auto sorted = [](std::vector<std::string> names) {
    std::sort(names.begin(), names.end());
    return names;
  };
  if (sorted(shard.columns_in_source) != sorted(table.columns_in_source))
    fail(shard.source, " has columns [", join(shard.columns_in_source), "] but ", table.source,
         " has [", join(table.columns_in_source), "]: all shards must have the same columns");
  for (Column& into : table.columns) {
    auto same_name = [&](const Column& column) { return column.name == into.name; };
    Column& from = *std::find_if(shard.columns.begin(), shard.columns.end(), same_name);
    if (std::string_view(column_kind_name(into)) != column_kind_name(from))
      fail("column '", into.name, "' holds ", column_kind_name(from), " in ", shard.source, " but ",
           column_kind_name(into), " in ", table.source);
    std::move(from.text.begin(), from.text.end(), std::back_inserter(into.text));
    into.integers.insert(into.integers.end(), from.integers.begin(), from.integers.end());
    std::move(from.messages.begin(), from.messages.end(), std::back_inserter(into.messages));
  }
  table.num_rows += shard.num_rows;
}

}  // namespace

Table read_table(const std::string& path, const std::vector<std::string>& wanted) {
  const std::vector<std::string> files = source_files(path);
  Table table = read_file(files[0], wanted);
  for (size_t i = 1; i < files.size(); ++i) append_shard(table, read_file(files[i], wanted));
  if (files.size() > 1) table.source = path + " (" + std::to_string(files.size()) + " files)";
  return table;
}

}  // namespace cst
