// JSON datasets: a .json file holding an array of objects (one per row) or JSON lines (what
// Hugging Face datasets' to_json writes, even under a .json name), and .jsonl files.
// Each key is a column. A column holds strings, integers or message lists (arrays of
// {"role": ..., "content": ...} objects, other keys ignored, a missing or null role or content read
// as null); null and a missing key read as a null cell. Any other value, or a mix of kinds, is an
// error naming the row and the column.
#pragma once
#include <string>
#include <vector>

#include "data/table.h"

namespace cst {

Table read_json_rows(const std::string& path, const std::vector<std::string>& wanted);

}  // namespace cst
