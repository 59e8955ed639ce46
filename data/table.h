// Table: the columns of a dataset file (parquet, json or jsonl), as cst's data pipeline sees them.
// Columns hold strings, integers or message lists (chat turns: trl's "conversational" format,
// list<struct<role, content>> in parquet, arrays of {"role", "content"} objects in JSON). Anything
// else is refused with a clear error by the reader that met it.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace cst {

// One chat turn. The readers keep what the file holds: a null role or content (a missing key in
// JSON) stays null here, and whoever uses the message decides whether that is an error.
struct Message {
  std::optional<std::string> role, content;
  bool operator==(const Message&) const = default;
};
using Messages = std::vector<Message>;

// Exactly one of text, integers, messages is filled, with one cell per row.
struct Column {
  std::string name;
  bool is_integer = false;                       // integer columns (INT32/INT64)
  std::vector<std::optional<std::string>> text;  // filled for string columns (nullopt = null)
  std::vector<std::optional<int64_t>> integers;  // filled for integer columns
  bool is_messages = false;                      // message-list columns
  std::vector<std::optional<Messages>> messages;  // a cell is null, or a list (maybe empty)
};

// "strings", "integers" or "message lists", for error messages.
const char* column_kind_name(const Column& column);

struct Table {
  std::vector<std::string> columns_in_source;  // every column name the source has
  std::vector<Column> columns;                 // the requested ones that exist, in request order
  int64_t num_rows = 0;
  const Column* find(const std::string& name) const;  // nullptr when not read/absent
  std::string source;                                 // path(s) for error messages
};

// Reads a .parquet file, a directory of parquet shards (sorted by name), a glob
// ("data/train-*.parquet"), a .json file (JSON array of objects) or a .jsonl file. `wanted` empty =
// all columns. A requested column that the source lacks is simply absent from `columns` (callers
// decide whether that is an error and list columns_in_source in their message). A directory or glob
// may mix formats; its files must all have the same columns.
Table read_table(const std::string& path, const std::vector<std::string>& wanted);

// For the readers: fails with a hint when a file's first bytes are a git-LFS pointer, the text
// git leaves in place of a large file that was never pulled.
void fail_if_git_lfs_pointer(std::string_view head, const std::string& path);

// For the readers: the names to read, in order, without repeats (all of `available` when
// `wanted` is empty; requested names the source lacks are dropped).
std::vector<std::string> names_to_read(const std::vector<std::string>& wanted,
                                       const std::vector<std::string>& available);

}  // namespace cst
