#include "data/json_rows.h"

#include <limits>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "kernels/error.h"
#include "kernels/files.h"

namespace cst {

namespace {

// ordered_json keeps each object's keys in file order, so columns_in_source reads like the file.
using Json = nlohmann::ordered_json;

// "line L, column C" of a byte offset into `text`, whose first line is line `first_line`.
std::string text_position(std::string_view text, size_t byte, size_t first_line) {
  byte = std::min(byte, text.size());
  size_t line = first_line, line_start = 0;
  for (size_t i = 0; i < byte; ++i) {
    if (text[i] == '\n') {
      ++line;
      line_start = i + 1;
    }
  }
  return "line " + std::to_string(line) + ", column " + std::to_string(byte - line_start + 1);
}

// The rows of the file, with the line each starts on for JSON lines (row labels in errors).
struct Rows {
  std::vector<Json> objects;
  std::vector<size_t> lines;  // empty for a JSON array

  std::string label(size_t row) const {
    return "row " + std::to_string(row) +
           (lines.empty() ? "" : " (line " + std::to_string(lines[row]) + ")");
  }
};

Json parse_json(std::string_view text, const std::string& path, size_t first_line) {
  try {
    return Json::parse(text.begin(), text.end());
  } catch (const Json::parse_error& error) {
    // nlohmann counts `byte` from 1: the last byte it read. Its message repeats a position
    // counted within `text` alone (wrong for a JSON line), so only the part after it is kept.
    const size_t byte = error.byte == 0 ? 0 : error.byte - 1;
    std::string detail = error.what();
    const size_t column = detail.find("column ");
    const size_t colon = column == std::string::npos ? column : detail.find(": ", column);
    if (colon != std::string::npos) detail = detail.substr(colon + 2);
    fail(path, ": invalid JSON at ", text_position(text, byte, first_line), ": ", detail);
  }
}

// What a value is, with its article, for messages: "a string", "an array" ...
std::string kind_of(const Json& value) {
  if (value.is_number_integer()) return "an integer";
  if (value.is_number_float()) return "a non-integer number";
  if (value.is_array() || value.is_object()) return std::string("an ") + value.type_name();
  return std::string("a ") + value.type_name();
}

void require_object(const Json& row, const Rows& rows, size_t index, const std::string& path) {
  if (!row.is_object())
    fail(path, ": ", rows.label(index), " is ", kind_of(row), ", expected a JSON object");
}

Rows parse_json_lines(std::string_view text, const std::string& path) {
  Rows rows;
  size_t line_start = 0;
  for (size_t line = 1; line_start < text.size(); ++line) {
    size_t line_end = text.find('\n', line_start);
    if (line_end == std::string_view::npos) line_end = text.size();
    const std::string_view content = text.substr(line_start, line_end - line_start);
    line_start = line_end + 1;
    if (content.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    rows.lines.push_back(line);
    rows.objects.push_back(parse_json(content, path, line));
    require_object(rows.objects.back(), rows, rows.objects.size() - 1, path);
  }
  return rows;
}

Rows parse_json_array(std::string_view text, const std::string& path) {
  Json document = parse_json(text, path, 1);
  if (!document.is_array())
    fail(path, ": the JSON document is ", kind_of(document), ", expected an array of row objects");
  Rows rows;
  rows.objects = std::move(document.get_ref<Json::array_t&>());
  for (size_t i = 0; i < rows.objects.size(); ++i) require_object(rows.objects[i], rows, i, path);
  return rows;
}

// JSON lines (.jsonl, or .json as HF datasets' to_json writes it) start with an object; a JSON
// table starts with an array.
bool holds_json_lines(std::string_view text) {
  if (text.starts_with("\xEF\xBB\xBF")) text.remove_prefix(3);  // UTF-8 byte order mark
  const size_t first = text.find_first_not_of(" \t\r\n");
  return first != std::string_view::npos && text[first] == '{';
}

std::vector<std::string> keys_in_order(const Rows& rows) {
  std::vector<std::string> keys;
  std::unordered_set<std::string> seen;
  for (const Json& row : rows.objects)
    for (const auto& item : row.items())
      if (seen.insert(item.key()).second) keys.push_back(item.key());
  return keys;
}

// The cell of a row, or nullptr for a missing key or a JSON null.
Json* cell(Json& row, const std::string& name) {
  const auto found = row.find(name);
  return found == row.end() || found->is_null() ? nullptr : &*found;
}

// The kinds a JSON column can hold; the first non-null value decides, every other must match.
enum class JsonKind { string, integer, messages };

JsonKind kind_of_cell(const Json& value) {
  if (value.is_number_integer()) return JsonKind::integer;
  return value.is_array() ? JsonKind::messages : JsonKind::string;
}

const char* kind_name(JsonKind kind) {
  switch (kind) {
    case JsonKind::integer: return "an integer";
    case JsonKind::messages: return "an array of messages";
    case JsonKind::string: break;
  }
  return "a string";
}

// A message field: a string, or null when the key is missing or null (as HF datasets reads it).
std::optional<std::string> message_field(const Json& message, const char* key,
                                         const std::string& where) {
  const auto found = message.find(key);
  if (found == message.end() || found->is_null()) return std::nullopt;
  if (!found->is_string()) fail(where, " has ", kind_of(*found), " for '", key, "', expected a string");
  return found->get<std::string>();
}

// An array of {"role", "content"} objects; other keys are ignored.
Messages message_list(const Json& array, const std::string& where) {
  Messages messages;
  for (size_t i = 0; i < array.size(); ++i) {
    const std::string message_where = where + ", message " + std::to_string(i);
    if (!array[i].is_object())
      fail(message_where, " is ", kind_of(array[i]), ", expected an object with role and content");
    messages.push_back({message_field(array[i], "role", message_where),
                        message_field(array[i], "content", message_where)});
  }
  return messages;
}

Column read_column(Rows& rows, const std::string& name, const std::string& path) {
  Column column{name, false, {}, {}, false, {}};
  JsonKind kind = JsonKind::string;
  std::optional<size_t> kind_row;
  for (size_t i = 0; i < rows.objects.size() && !kind_row; ++i) {
    if (const Json* value = cell(rows.objects[i], name)) {
      kind_row = i;
      kind = kind_of_cell(*value);
    }
  }
  column.is_integer = kind == JsonKind::integer;
  column.is_messages = kind == JsonKind::messages;
  for (size_t i = 0; i < rows.objects.size(); ++i) {
    Json* value = cell(rows.objects[i], name);
    const std::string where = path + ": " + rows.label(i) + ", column '" + name + "'";
    if (value && !value->is_string() && !value->is_number_integer() && !value->is_array())
      fail(where, " holds ", kind_of(*value),
           "; only strings, integers, arrays of messages and null are supported");
    if (value && kind_of_cell(*value) != kind)
      fail(where, " holds ", kind_of(*value), " but ", rows.label(*kind_row), " holds ",
           kind_name(kind), ": a column must hold one kind");
    switch (kind) {
      case JsonKind::integer:
        if (value && value->is_number_unsigned() &&
            value->get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max()))
          fail(where, " holds ", value->get<uint64_t>(), ", beyond int64");
        column.integers.push_back(value ? std::optional(value->get<int64_t>()) : std::nullopt);
        break;
      case JsonKind::messages:
        column.messages.push_back(value ? std::optional(message_list(*value, where)) : std::nullopt);
        break;
      case JsonKind::string:
        column.text.push_back(value ? std::optional(std::move(value->get_ref<std::string&>()))
                                    : std::nullopt);
        break;
    }
  }
  return column;
}

}  // namespace

Table read_json_rows(const std::string& path, const std::vector<std::string>& wanted) {
  const std::string text = read_file_bytes(path);
  fail_if_git_lfs_pointer(std::string_view(text).substr(0, 64), path);
  // A file of only whitespace is an empty table (a JSON lines file with no lines).
  const bool blank = text.find_first_not_of(" \t\r\n") == std::string::npos;
  Rows rows = blank || holds_json_lines(text) ? parse_json_lines(text, path) : parse_json_array(text, path);
  Table table;
  table.source = path;
  table.columns_in_source = keys_in_order(rows);
  table.num_rows = int64_t(rows.objects.size());
  for (const std::string& name : names_to_read(wanted, table.columns_in_source))
    table.columns.push_back(read_column(rows, name, path));
  return table;
}

}  // namespace cst
