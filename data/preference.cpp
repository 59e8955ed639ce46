#include "data/preference.h"

#include <sstream>

#include "kernels/error.h"

namespace cst {
namespace {

std::string list_columns(const Table& table) {
  std::ostringstream list;
  for (size_t i = 0; i < table.columns_in_source.size(); i++) {
    list << (i ? ", " : "") << table.columns_in_source[i];
  }
  return list.str();
}

const Column& text_column(const Table& table, const std::string& name, const char* role) {
  const Column* column = table.find(name);
  if (column == nullptr) {
    fail(table.source, ": no ", role, " column '", name, "' (columns: ", list_columns(table), ")");
  }
  if (column->is_integer) {
    fail(table.source, ": ", role, " column '", name, "' holds integers, expected text");
  }
  if (int64_t(column->text.size()) != table.num_rows) {
    fail(table.source, ": column '", name, "' has ", column->text.size(), " cells for ",
         table.num_rows, " rows");
  }
  return *column;
}

// The text columns one example is read from; system is null when the options supply it.
struct SourceColumns {
  const Column* system = nullptr;
  const Column *prompt, *chosen, *rejected;
};

SourceColumns find_source_columns(const Table& table, const PreferenceOptions& options) {
  const PreferenceColumns& names = options.columns;
  SourceColumns columns{nullptr, &text_column(table, names.prompt, "prompt"),
                        &text_column(table, names.chosen, "chosen"),
                        &text_column(table, names.rejected, "rejected")};
  bool has_system_column = !names.system.empty() && table.find(names.system) != nullptr;
  if (options.system_prompts) {
    // A system column and two system prompts would silently compete; make the caller choose.
    if (has_system_column) {
      fail(
          table.source, ": has a system column '", names.system,
          "' and two system prompts were given; drop one (an empty system column name ignores it)");
    }
  } else {
    if (options.dpo_baseline) fail("dpo_baseline needs the two system prompts of CST");
    if (names.system.empty()) fail(table.source, ": no system column and no system prompts given");
    columns.system = &text_column(table, names.system, "system");
  }
  return columns;
}

// The row's cell in column, or null (reported by the caller, who knows the row policy).
const std::string* cell(const Column* column, int64_t row) {
  const std::optional<std::string>& value = column->text[size_t(row)];
  return value ? &*value : nullptr;
}

const Column* first_null_column(const SourceColumns& columns, int64_t row) {
  for (const Column* column : {columns.system, columns.prompt, columns.chosen, columns.rejected}) {
    if (column != nullptr && cell(column, row) == nullptr) return column;
  }
  return nullptr;
}

}  // namespace

std::vector<PreferenceExample> build_preference_examples(const Table& table,
                                                         const PreferenceOptions& options,
                                                         PreferenceReport* report) {
  if (table.num_rows == 0) fail(table.source, ": the dataset is empty (0 rows)");
  SourceColumns columns = find_source_columns(table, options);
  PreferenceReport counts;
  counts.rows = table.num_rows;
  std::vector<PreferenceExample> examples;
  for (int64_t row = 0; row < table.num_rows; row++) {
    if (const Column* null_column = first_null_column(columns, row)) {
      if (!options.skip_bad_rows) {
        fail(table.source, " row ", row, ": column '", null_column->name, "' is null");
      }
      counts.skipped_rows++;
      continue;
    }
    const std::string& prompt = *cell(columns.prompt, row);
    const std::string& chosen = *cell(columns.chosen, row);
    const std::string& rejected = *cell(columns.rejected, row);
    if (!options.system_prompts) {
      examples.push_back({*cell(columns.system, row), prompt, chosen, rejected, row});
      continue;
    }
    const auto& [system_a, system_b] = *options.system_prompts;
    examples.push_back({system_a, prompt, chosen, rejected, row});
    if (!options.dpo_baseline) examples.push_back({system_b, prompt, rejected, chosen, row});
  }
  counts.examples = int64_t(examples.size());
  if (report != nullptr) *report = counts;
  return examples;
}

}  // namespace cst
