#include "data/parquet.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "data/parquet_codec.h"
#include "data/parquet_encoding.h"
#include "data/parquet_metadata.h"
#include "kernels/error.h"

namespace cst {

using namespace parquet;

namespace {

// Writers cap pages at a few MiB; 1 GiB is far beyond any real page and stops corrupt sizes early.
constexpr int64_t kMaxPageBytes = int64_t(1) << 30;
constexpr char kMagic[] = "PAR1";
constexpr char kEncryptedMagic[] = "PARE";
constexpr size_t kMagicSize = 4;

// A file opened for reading byte ranges; every range is checked against the file size.
class InputFile {
 public:
  explicit InputFile(const std::string& path) : path_(path), stream_(path, std::ios::binary) {
    if (!std::filesystem::is_regular_file(path)) fail("cannot open ", path, ": not a regular file");
    if (!stream_) fail("cannot open ", path, ": ", std::strerror(errno));
    stream_.seekg(0, std::ios::end);
    size_ = uint64_t(stream_.tellg());
  }

  uint64_t size() const { return size_; }

  std::vector<uint8_t> read(uint64_t offset, uint64_t length) {
    if (offset > size_ || length > size_ - offset)
      fail(path_, ": byte range ", offset, "+", length, " lies outside the ", size_, "-byte file");
    std::vector<uint8_t> bytes(length);
    stream_.seekg(std::streamoff(offset));
    stream_.read(reinterpret_cast<char*>(bytes.data()), std::streamsize(length));
    if (!stream_) fail(path_, ": read of ", length, " bytes at ", offset, " failed");
    return bytes;
  }

 private:
  std::string path_;
  std::ifstream stream_;
  uint64_t size_ = 0;
};

bool has_magic(const std::vector<uint8_t>& bytes, size_t at, const char* magic) {
  return bytes.size() >= at + kMagicSize && std::memcmp(bytes.data() + at, magic, kMagicSize) == 0;
}

// The footer: PAR1 | column chunks | FileMetaData | u32 LE metadata length | PAR1.
struct Footer {
  FileMetaData metadata;
  uint64_t data_end = 0;  // where the column chunks end and the metadata begins
};

Footer read_footer(InputFile& file, const std::string& path) {
  const uint64_t size = file.size();
  const std::vector<uint8_t> head = file.read(0, std::min<uint64_t>(size, 64));
  fail_if_git_lfs_pointer(std::string_view(reinterpret_cast<const char*>(head.data()), head.size()),
                          path);
  if (size < 3 * kMagicSize) fail(path, " is too small (", size, " bytes) to be a parquet file");
  if (!has_magic(head, 0, kMagic))
    fail(path, " does not start with the PAR1 magic: not a parquet file");
  const std::vector<uint8_t> tail = file.read(size - 2 * kMagicSize, 2 * kMagicSize);
  if (has_magic(tail, kMagicSize, kEncryptedMagic))
    fail(path, " is an encrypted parquet file (PARE magic): encryption is not supported");
  if (!has_magic(tail, kMagicSize, kMagic))
    fail(path, " does not end with the PAR1 magic: the file is truncated or not parquet");
  const uint64_t metadata_size = uint64_t(tail[0]) | uint64_t(tail[1]) << 8 |
                                 uint64_t(tail[2]) << 16 | uint64_t(tail[3]) << 24;
  if (metadata_size > size - 3 * kMagicSize)
    fail(path, ": footer length ", metadata_size, " exceeds the file size ", size,
         " (truncated or corrupt file)");
  Footer footer;
  footer.data_end = size - 2 * kMagicSize - metadata_size;
  const std::vector<uint8_t> metadata = file.read(footer.data_end, metadata_size);
  try {
    footer.metadata = parse_file_metadata(metadata);
  } catch (const Error& error) {
    fail(path, ": corrupt footer metadata: ", error.what());
  }
  if (footer.metadata.encrypted)
    fail(path, " has encrypted columns: parquet encryption is not supported");
  return footer;
}

// A top-level field of the schema. Nested fields (groups, repeated fields) span several leaves,
// which is also how many column chunks they own in each row group.
struct Field {
  size_t schema_index = 0;  // where its subtree starts in the depth-first schema list
  const SchemaElement* element = nullptr;
  size_t first_leaf = 0;
  size_t leaf_count = 0;
  bool nested = false;
};

// The index just past the subtree at schema[index] (depth-first: an element, then its
// num_children subtrees); adds the subtree's typed leaves to *leaves.
size_t subtree_end(const std::vector<SchemaElement>& schema, size_t index, size_t* leaves) {
  int64_t pending = 1;  // subtrees still to walk
  while (pending > 0) {
    if (index >= schema.size()) fail("the schema is cut off after ", schema.size(), " elements");
    const SchemaElement& element = schema[index++];
    if (element.num_children < 0 || element.type.has_value() == (element.num_children > 0))
      fail("schema element '", element.name,
           "' is neither a typed leaf nor a group with children");
    pending += element.num_children - 1;
    if (element.type) ++*leaves;
  }
  return index;
}

std::vector<Field> top_level_fields(const std::vector<SchemaElement>& schema,
                                    size_t* total_leaves) {
  if (schema.empty()) fail("the footer has no schema");
  std::vector<Field> fields;
  size_t index = 1, leaves = 0;
  for (int32_t child = 0; child < schema[0].num_children; ++child) {
    if (index >= schema.size())
      fail("the root has ", schema[0].num_children, " children but the schema ends");
    Field field{index, &schema[index], leaves, 0, false};
    const size_t end = subtree_end(schema, index, &field.leaf_count);
    field.nested = end - index > 1 || field.element->repetition == int32_t(Repetition::repeated);
    index = end;
    leaves += field.leaf_count;
    fields.push_back(field);
  }
  if (index != schema.size())
    fail("the schema has ", schema.size() - index, " elements outside the root");
  *total_leaves = leaves;
  return fields;
}

// The subtree at schema[index] as text, e.g.
// "optional group m { repeated group list { optional BYTE_ARRAY element } }", for errors. Deep
// levels are elided: a corrupt schema may nest thousands of groups.
std::string describe_subtree(const std::vector<SchemaElement>& schema, size_t index,
                             int depth = 0) {
  static const char* const kRepetitions[] = {"required", "optional", "repeated"};
  const SchemaElement& element = schema[index];
  const int32_t repetition = element.repetition;
  std::string text = repetition >= 0 && repetition <= 2 ? kRepetitions[repetition] : "?";
  if (element.type) return text + " " + physical_type_name(*element.type) + " " + element.name;
  if (depth == 4) return text + " group " + element.name + " { ... }";
  text += " group " + element.name + " {";
  size_t child = index + 1, leaves = 0;
  for (int32_t k = 0; k < element.num_children; ++k) {
    text += (k ? "; " : " ") + describe_subtree(schema, child, depth + 1);
    child = subtree_end(schema, child, &leaves);
  }
  return text + " }";
}

// Names the annotation when an INT32/INT64 column holds something other than plain integers.
const char* non_integer_annotation(const SchemaElement& element) {
  enum { kDecimal = 5, kDate = 6, kTime = 7, kTimestamp = 8 };  // LogicalType union members
  if (element.logical_type) {
    switch (*element.logical_type) {
      case kDecimal: return "DECIMAL";
      case kDate: return "DATE";
      case kTime: return "TIME";
      case kTimestamp: return "TIMESTAMP";
    }
  }
  if (element.converted_type) {
    switch (*element.converted_type) {  // ConvertedType, the legacy annotation
      case 5: return "DECIMAL";
      case 6: return "DATE";
      case 7:
      case 8: return "TIME";
      case 9:
      case 10: return "TIMESTAMP";
      case 21: return "INTERVAL";
    }
  }
  return nullptr;
}

bool is_unsigned(const SchemaElement& element) {
  constexpr int32_t kUint8 = 11, kUint64 = 14;  // ConvertedType UINT_8 .. UINT_64
  return element.logical_integer_unsigned ||
         (element.converted_type && *element.converted_type >= kUint8 &&
          *element.converted_type <= kUint64);
}

// One leaf (typed schema element) of a requested column: what decoding its chunks needs.
struct LeafSpec {
  size_t index = 0;               // which column chunk of each row group holds it
  std::vector<std::string> path;  // its path_in_schema
  int32_t physical_type = 0;
  int max_definition_level = 0;  // 0 when no definition levels are stored
  int max_repetition_level = 0;  // 1 in a message list, else 0
  bool is_unsigned = false;
};

// A message list, list<struct<role, content>>, is stored in one of the list forms of parquet's
// LogicalTypes.md. pyarrow and HF datasets write three levels:
//   <optional|required> group prompt (LIST) {
//     repeated group list {                       (older writers: "bag")
//       <optional|required> group element {       ("item", "array_element")
//         <optional|required> BYTE_ARRAY role; ... content; (other fields ignored) } } }
// Older Java writers (parquet-avro, Hive, Spark) write two levels, the repeated group being the
// message itself (so messages cannot be null):
//   <optional|required> group prompt (LIST) { repeated group array { role; content } }
// and a bare repeated group at the top level is a required list of required messages (one level):
//   repeated group prompt { role; content }
// A leaf's definition level counts the optional and repeated nodes defined on its path; these
// thresholds say how far down one level entry is defined.
struct MessageLevels {
  uint32_t list = 0;     // at or above: the row's list is not null
  uint32_t element = 0;  // at or above: the entry is a message, below it the list is empty
  uint32_t message = 0;  // at or above: the message struct is not null
};

// A requested column, checked readable.
struct ColumnSpec {
  std::string name;
  bool is_messages = false;
  std::vector<LeafSpec> leaves;  // a flat column's one leaf; a message list's role and content
  MessageLevels levels;          // message lists only
};

int optional_level(const SchemaElement& element) {
  return element.repetition == int32_t(Repetition::optional) ? 1 : 0;
}

ColumnSpec flat_column(const Field& field) {
  const SchemaElement& element = *field.element;
  const std::string& name = element.name;
  const int32_t type = *element.type;
  const bool integer = type == int32_t(PhysicalType::int32) || type == int32_t(PhysicalType::int64);
  if (!integer && type != int32_t(PhysicalType::byte_array))
    fail("column '", name, "' has type ", physical_type_name(type),
         "; only string (BYTE_ARRAY) and integer (INT32, INT64) columns are supported");
  if (const char* annotation = integer ? non_integer_annotation(element) : nullptr)
    fail("column '", name, "' holds ", annotation,
         " values; only plain integers and strings are supported");
  const LeafSpec leaf{field.first_leaf, {name},           type, optional_level(element), 0,
                      is_unsigned(element)};
  return {name, false, {leaf}, {}};
}

[[noreturn]] void refuse_nested_column(const std::vector<SchemaElement>& schema, size_t index,
                                       const char* shape) {
  fail("column '", schema[index].name, "' is a nested column (", describe_subtree(schema, index),
       ") ", shape,
       "; only flat string and integer columns and message lists "
       "list<struct<role: string, content: string>> are supported");
}

bool is_list_annotated(const SchemaElement& element) {
  constexpr int32_t kListConvertedType = 3, kListLogicalType = 3;  // ConvertedType, LogicalType id
  return element.converted_type == kListConvertedType || element.logical_type == kListLogicalType;
}

// LogicalTypes.md's backward-compatibility rules: a LIST's repeated group is the element itself
// when it has more than one field, or when it has one and is named "array" or "<list>_tuple";
// otherwise it wraps the element. pyarrow takes any name ending in "_tuple", not only the list's
// own, and so does cst: where the two disagree the element is then a one-field struct, not a
// message, and the column is refused rather than read otherwise than pyarrow reads it.
bool repeated_group_is_element(const SchemaElement& repeated) {
  return repeated.num_children > 1 || repeated.name == "array" || repeated.name.ends_with("_tuple");
}

// Where a message list's message struct lies in the schema, and its list's levels.
struct MessageListShape {
  size_t message_index = 0;       // the message struct's schema element
  std::vector<std::string> path;  // path_in_schema down to the message struct
  MessageLevels levels;
};

MessageListShape message_list_shape(const std::vector<SchemaElement>& schema, size_t list_index) {
  const auto repeated = int32_t(Repetition::repeated);
  const SchemaElement& list = schema[list_index];
  if (list.repetition == repeated) {  // one level: the list is required, its messages too
    if (list.type) refuse_nested_column(schema, list_index, "whose elements are not structs");
    if (is_list_annotated(list))
      refuse_nested_column(schema, list_index, "whose LIST group is itself repeated");
    return {list_index, {list.name}, {0, 1, 1}};
  }
  // Without the LIST annotation a group is a struct, whatever it holds.
  if (!is_list_annotated(list) || list.num_children != 1)
    refuse_nested_column(schema, list_index, "that is not a list");
  const SchemaElement& entries = schema[list_index + 1];
  if (entries.repetition != repeated)
    refuse_nested_column(schema, list_index, "that is not a list");
  if (entries.type) refuse_nested_column(schema, list_index, "whose elements are not structs");
  const uint32_t defined_list = uint32_t(optional_level(list));
  if (repeated_group_is_element(entries))  // two levels: the messages are never null
    return {list_index + 1,
            {list.name, entries.name},
            {defined_list, defined_list + 1, defined_list + 1}};
  const SchemaElement& element = schema[list_index + 2];
  if (element.type || element.repetition == repeated)
    refuse_nested_column(schema, list_index, "whose elements are not structs");
  return {list_index + 2,
          {list.name, entries.name, element.name},
          {defined_list, defined_list + 1, defined_list + 1 + uint32_t(optional_level(element))}};
}

ColumnSpec message_list_column(const std::vector<SchemaElement>& schema, const Field& field) {
  const MessageListShape shape = message_list_shape(schema, field.schema_index);
  const SchemaElement& message = schema[shape.message_index];
  ColumnSpec spec{field.element->name, true, {}, shape.levels};
  std::optional<LeafSpec> role, content;
  size_t child = shape.message_index + 1, leaf = field.first_leaf;
  for (int32_t k = 0; k < message.num_children; ++k) {
    const SchemaElement& member = schema[child];
    size_t member_leaves = 0;
    const size_t next = subtree_end(schema, child, &member_leaves);
    if (member.name == "role" || member.name == "content") {
      if (member.type != int32_t(PhysicalType::byte_array) ||
          member.repetition == int32_t(Repetition::repeated))
        refuse_nested_column(schema, field.schema_index,
                             "whose 'role' or 'content' is not a string");
      LeafSpec member_leaf{leaf, shape.path, *member.type,
                           int(shape.levels.message) + optional_level(member), 1, false};
      member_leaf.path.push_back(member.name);
      (member.name == "role" ? role : content) = member_leaf;
    }
    leaf += member_leaves;
    child = next;
  }
  if (!role || !content)
    refuse_nested_column(schema, field.schema_index,
                         "without both 'role' and 'content' string fields");
  spec.leaves = {*role, *content};
  return spec;
}

ColumnSpec readable_column(const std::vector<SchemaElement>& schema, const Field& field) {
  return field.nested ? message_list_column(schema, field) : flat_column(field);
}

// Brings decoded integers to their true value: INT32 annotated unsigned is zero-extended.
void normalize_integers(const LeafSpec& leaf, std::vector<int64_t>& values) {
  for (int64_t& value : values) {
    if (leaf.physical_type == int32_t(PhysicalType::int32))
      value = leaf.is_unsigned ? int64_t(uint32_t(value)) : int64_t(int32_t(value));
    else if (leaf.is_unsigned && value < 0)
      fail("unsigned 64-bit value ", uint64_t(value), " does not fit in int64");
  }
}

void require_strings(const LeafSpec& column, int32_t encoding) {
  if (column.physical_type != int32_t(PhysicalType::byte_array))
    fail(encoding_name(encoding), " encoding on an integer column is not valid");
}

PageValues decode_values(const LeafSpec& column, int32_t encoding, std::span<const uint8_t> bytes,
                         size_t count, const std::optional<PageValues>& dictionary) {
  PageValues values;
  switch (Encoding(encoding)) {
    case Encoding::plain: decode_plain(column.physical_type, bytes, count, values); break;
    case Encoding::plain_dictionary:
    case Encoding::rle_dictionary: {
      if (!dictionary)
        fail("dictionary-encoded page but the chunk has no dictionary page before it");
      const bool strings = column.physical_type == int32_t(PhysicalType::byte_array);
      const size_t dictionary_size =
          strings ? dictionary->text.size() : dictionary->integers.size();
      for (const uint32_t index : decode_dictionary_indices(bytes, count)) {
        if (index >= dictionary_size)
          fail("dictionary index ", index, " is past the ", dictionary_size, "-entry dictionary");
        if (strings)
          values.text.push_back(dictionary->text[index]);
        else
          values.integers.push_back(dictionary->integers[index]);
      }
      break;
    }
    case Encoding::delta_length_byte_array:
      require_strings(column, encoding);
      decode_delta_length_byte_array(bytes, count, values);
      break;
    case Encoding::delta_byte_array:
      require_strings(column, encoding);
      decode_delta_byte_array(bytes, count, values);
      break;
    case Encoding::delta_binary_packed: {
      if (column.physical_type == int32_t(PhysicalType::byte_array))
        fail("DELTA_BINARY_PACKED encoding on a string column is not valid");
      size_t consumed = 0;
      values.integers = decode_delta_binary_packed(bytes, count, &consumed);
      if (values.integers.size() != count)
        fail("DELTA_BINARY_PACKED page holds ", values.integers.size(), " values, expected ",
             count);
      break;
    }
    default: fail("encoding ", encoding_name(encoding), " (", encoding, ") is not supported");
  }
  normalize_integers(column, values.integers);
  if (values.text.size() + values.integers.size() != count)
    fail("the page decodes to ", values.text.size() + values.integers.size(), " values, expected ",
         count);
  return values;
}

// One leaf's column chunk, decoded: a level entry per value slot (a row of a flat column; a
// message, an empty list or a null list in a message list) and the values of the slots that hold
// one, in order. A level vector stays empty when its maximum is 0 (the file stores none).
struct LeafChunk {
  std::vector<uint32_t> repetition, definition;
  PageValues values;
};

int bit_width(int max_level) {
  int width = 0;
  while ((1 << width) <= max_level) ++width;
  return width;
}

// Decodes a page's levels onto `levels`; returns how many equal the maximum.
size_t append_levels(std::span<const uint8_t> bytes, int max_level, size_t count, const char* kind,
                     std::vector<uint32_t>& levels) {
  size_t at_maximum = 0;
  for (const uint32_t level : decode_hybrid(bytes, bit_width(max_level), count)) {
    if (level > uint32_t(max_level))
      fail(kind, " level ", level, " is above the column's maximum of ", max_level);
    at_maximum += level == uint32_t(max_level);
    levels.push_back(level);
  }
  return at_maximum;
}

// Appends one data page to the chunk: its levels, then the values of the slots defined down to
// the leaf.
void append_page(const LeafSpec& leaf, std::span<const uint8_t> repetition_bytes,
                 std::span<const uint8_t> definition_bytes, std::span<const uint8_t> value_bytes,
                 int32_t encoding, size_t num_values, const std::optional<PageValues>& dictionary,
                 LeafChunk& out) {
  if (leaf.max_repetition_level > 0)
    append_levels(repetition_bytes, leaf.max_repetition_level, num_values, "repetition",
                  out.repetition);
  size_t present = num_values;
  if (leaf.max_definition_level > 0)
    present = append_levels(definition_bytes, leaf.max_definition_level, num_values, "definition",
                            out.definition);
  PageValues values = decode_values(leaf, encoding, value_bytes, present, dictionary);
  std::move(values.text.begin(), values.text.end(), std::back_inserter(out.values.text));
  out.values.integers.insert(out.values.integers.end(), values.integers.begin(),
                             values.integers.end());
}

// A flat column's cells: definition level 1 = value present, 0 = null.
void append_flat_cells(const LeafSpec& leaf, LeafChunk& chunk, int64_t rows, Column& out) {
  size_t next = 0;
  for (size_t row = 0; row < size_t(rows); ++row) {
    const bool present = chunk.definition.empty() || chunk.definition[row] == 1;
    if (leaf.physical_type != int32_t(PhysicalType::byte_array))
      out.integers.push_back(present ? std::optional(chunk.values.integers[next++]) : std::nullopt);
    else
      out.text.push_back(present ? std::optional(std::move(chunk.values.text[next++]))
                                 : std::nullopt);
  }
}

// One leaf's view of a message list: per row, null or one value (maybe null) per message.
using LeafRows = std::vector<std::optional<std::vector<std::optional<std::string>>>>;

// Rebuilds the rows from the levels: repetition level 0 starts a row, 1 adds a message to it.
LeafRows split_into_rows(const MessageLevels& levels, const LeafSpec& leaf, LeafChunk& chunk,
                         int64_t first_row) {
  LeafRows rows;
  size_t next = 0;
  for (size_t entry = 0; entry < chunk.definition.size(); ++entry) {
    const uint32_t definition = chunk.definition[entry];
    if (chunk.repetition[entry] == 0) {
      if (definition < levels.list) {
        rows.emplace_back(std::nullopt);
        continue;
      }
      rows.emplace_back(std::in_place);
      if (definition < levels.element) continue;  // an empty list
    } else if (rows.empty() || !rows.back() || rows.back()->empty() ||
               definition < levels.element) {
      fail("level entry ", entry, " continues a list that holds no message");
    }
    const int64_t row = first_row + int64_t(rows.size()) - 1;
    if (definition < levels.message)
      fail("row ", row, ", message ", rows.back()->size(),
           " is null; a message list must hold messages");
    const bool present = definition == uint32_t(leaf.max_definition_level);
    if (present && next >= chunk.values.text.size())
      fail("row ", row, " needs more values than the chunk holds");
    rows.back()->push_back(present ? std::optional(std::move(chunk.values.text[next++]))
                                   : std::nullopt);
  }
  return rows;
}

// A message list's cells, from its role and content leaves, which must agree on every list.
void append_message_cells(const ColumnSpec& column, LeafChunk& role_chunk,
                          LeafChunk& content_chunk, int64_t rows, Column& out) {
  const int64_t first_row = int64_t(out.messages.size());
  LeafRows roles = split_into_rows(column.levels, column.leaves[0], role_chunk, first_row);
  LeafRows contents = split_into_rows(column.levels, column.leaves[1], content_chunk, first_row);
  if (int64_t(roles.size()) != rows || contents.size() != roles.size())
    fail("the 'role' and 'content' chunks hold ", roles.size(), " and ", contents.size(),
         " rows for the row group's ", rows);
  for (size_t row = 0; row < roles.size(); ++row) {
    if (roles[row].has_value() != contents[row].has_value() ||
        (roles[row] && roles[row]->size() != contents[row]->size()))
      fail("row ", first_row + int64_t(row),
           ": the 'role' and 'content' chunks disagree on the list's length");
    if (!roles[row]) {
      out.messages.emplace_back(std::nullopt);
      continue;
    }
    Messages messages;
    for (size_t k = 0; k < roles[row]->size(); ++k)
      messages.push_back({std::move((*roles[row])[k]), std::move((*contents[row])[k])});
    out.messages.emplace_back(std::move(messages));
  }
}

uint32_t read_u32_le(std::span<const uint8_t> bytes) {
  return uint32_t(bytes[0]) | uint32_t(bytes[1]) << 8 | uint32_t(bytes[2]) << 16 |
         uint32_t(bytes[3]) << 24;
}

// Decoding state of one column chunk: its pages share a dictionary and a count of values so far.
struct ChunkReader {
  const LeafSpec& column;
  const ColumnChunk& chunk;
  LeafChunk& out;
  std::optional<PageValues> dictionary;
  int64_t values_read = 0;
  std::vector<uint8_t> scratch;  // decompression buffer, reused across pages

  size_t page_value_count(int32_t num_values) const {
    if (num_values < 0 || num_values > chunk.num_values - values_read)
      fail("page of ", num_values, " values overruns the chunk's ", chunk.num_values, " values (",
           values_read, " read)");
    return size_t(num_values);
  }

  void read_dictionary_page(const PageHeader& header, std::span<const uint8_t> body) {
    if (dictionary || values_read > 0) fail("a dictionary page after the chunk's first page");
    const int32_t encoding = header.dictionary->encoding;
    if (encoding != int32_t(Encoding::plain) && encoding != int32_t(Encoding::plain_dictionary))
      fail("dictionary page encoding ", encoding_name(encoding), " is not supported");
    if (header.dictionary->num_values < 0)
      fail("dictionary page has ", header.dictionary->num_values, " values");
    const auto bytes =
        decompress(chunk.codec, body, size_t(header.uncompressed_page_size), scratch);
    dictionary = decode_values(column, int32_t(Encoding::plain), bytes,
                               size_t(header.dictionary->num_values), {});
  }

  // Page v1: the whole body is compressed; inside, the repetition and then the definition levels
  // each carry a u32 length.
  static std::span<const uint8_t> take_v1_levels(std::span<const uint8_t>& bytes, int32_t encoding,
                                                 const char* kind) {
    if (encoding != int32_t(Encoding::rle))
      fail(kind, " levels in ", encoding_name(encoding), " encoding are not supported");
    if (bytes.size() < 4) fail("page is too short for its ", kind, " levels");
    const uint32_t levels_size = read_u32_le(bytes);
    if (levels_size > bytes.size() - 4)
      fail(kind, " levels of ", levels_size, " bytes overrun the page");
    const std::span<const uint8_t> levels = bytes.subspan(4, levels_size);
    bytes = bytes.subspan(4 + levels_size);
    return levels;
  }

  void read_data_page_v1(const PageHeader& header, std::span<const uint8_t> body) {
    const DataPageHeader& page = *header.data;
    const size_t num_values = page_value_count(page.num_values);
    std::span<const uint8_t> bytes =
        decompress(chunk.codec, body, size_t(header.uncompressed_page_size), scratch);
    std::span<const uint8_t> repetition, definition;
    if (column.max_repetition_level > 0)
      repetition = take_v1_levels(bytes, page.repetition_level_encoding, "repetition");
    if (column.max_definition_level > 0)
      definition = take_v1_levels(bytes, page.definition_level_encoding, "definition");
    append_page(column, repetition, definition, bytes, page.encoding, num_values, dictionary, out);
    values_read += int64_t(num_values);
  }

  // Page v2: repetition then definition levels come first, uncompressed, with their sizes in the
  // header; then the values.
  void read_data_page_v2(const PageHeader& header, std::span<const uint8_t> body) {
    const DataPageHeaderV2& page = *header.data_v2;
    const size_t num_values = page_value_count(page.num_values);
    const int64_t repetition_size = page.repetition_levels_byte_length;
    const int64_t definition_size = page.definition_levels_byte_length;
    if (column.max_repetition_level == 0 && repetition_size != 0)
      fail("repetition levels in a flat column");
    if (repetition_size < 0 || definition_size < 0 ||
        repetition_size + definition_size > int64_t(body.size()) ||
        repetition_size + definition_size > header.uncompressed_page_size)
      fail("levels of ", repetition_size, " + ", definition_size, " bytes overrun the page");
    const size_t levels_size = size_t(repetition_size + definition_size);
    const std::span<const uint8_t> repetition = body.first(size_t(repetition_size));
    const std::span<const uint8_t> definition =
        body.subspan(size_t(repetition_size), size_t(definition_size));
    const std::span<const uint8_t> stored = body.subspan(levels_size);
    const size_t values_size = size_t(header.uncompressed_page_size) - levels_size;
    const int32_t codec = page.is_compressed ? chunk.codec : int32_t(Codec::uncompressed);
    const auto values = decompress(codec, stored, values_size, scratch);
    append_page(column, repetition, definition, values, page.encoding, num_values, dictionary,
                out);
    values_read += int64_t(num_values);
  }

  void read_page(const PageHeader& header, std::span<const uint8_t> body) {
    switch (PageType(header.type)) {
      case PageType::dictionary:
        if (!header.dictionary) fail("dictionary page without a dictionary page header");
        read_dictionary_page(header, body);
        return;
      case PageType::data:
        if (!header.data) fail("data page without a data page header");
        read_data_page_v1(header, body);
        return;
      case PageType::data_v2:
        if (!header.data_v2) fail("data page v2 without its header");
        read_data_page_v2(header, body);
        return;
      case PageType::index: return;  // carries no rows
    }
    fail("unknown page type ", header.type);
  }

  void read_pages(std::span<const uint8_t> bytes) {
    size_t position = 0;
    for (int page = 0; values_read < chunk.num_values; ++page) {
      if (position >= bytes.size())
        fail("the chunk ends after ", values_read, " of its ", chunk.num_values, " values");
      try {
        const PageHeader header = parse_page_header(bytes.subspan(position));
        const size_t body_start = position + header.header_size;
        if (header.compressed_page_size < 0 ||
            size_t(header.compressed_page_size) > bytes.size() - body_start)
          fail("compressed size ", header.compressed_page_size, " overruns the chunk");
        if (header.uncompressed_page_size < 0 || header.uncompressed_page_size > kMaxPageBytes)
          fail("uncompressed size ", header.uncompressed_page_size, " is outside 0..",
               kMaxPageBytes);
        read_page(header, bytes.subspan(body_start, size_t(header.compressed_page_size)));
        position = body_start + size_t(header.compressed_page_size);
      } catch (const Error& error) {
        fail("page ", page, " at chunk byte ", position, ": ", error.what());
      }
    }
  }
};

// Where a chunk's pages start: its dictionary page if any, else its first data page. Some old
// writers store 0 for "no dictionary", so only an offset before the data pages counts.
int64_t chunk_start(const ColumnChunk& chunk) {
  const int64_t dictionary = chunk.dictionary_page_offset.value_or(0);
  return dictionary > 0 && dictionary < chunk.data_page_offset ? dictionary
                                                               : chunk.data_page_offset;
}

std::string dotted(const std::vector<std::string>& path) {
  std::string text;
  for (const std::string& part : path) text += (text.empty() ? "" : ".") + part;
  return text;
}

void read_column_chunk(InputFile& file, uint64_t data_end, const ColumnChunk& chunk,
                       const LeafSpec& leaf, int64_t rows, LeafChunk& out) {
  if (chunk.encrypted) fail("the column chunk is encrypted: parquet encryption is not supported");
  if (chunk.has_file_path)
    fail("the column chunk lives in another file (file_path): not supported");
  if (chunk.type != leaf.physical_type)
    fail("the chunk's type ", physical_type_name(chunk.type), " differs from the schema's ",
         physical_type_name(leaf.physical_type));
  if (chunk.path_in_schema != leaf.path)
    fail("the chunk's path in schema '", dotted(chunk.path_in_schema), "' is not the column's '",
         dotted(leaf.path), "'");
  // A flat column has one value slot per row; a list has at least one (null and empty lists
  // take one too).
  if (leaf.max_repetition_level == 0 ? chunk.num_values != rows : chunk.num_values < rows)
    fail("the chunk holds ", chunk.num_values, " values for the row group's ", rows, " rows");
  check_codec_supported(chunk.codec);
  if (chunk.num_values == 0) return;  // pyarrow gives an empty chunk no data page (offset 0)
  const int64_t start = chunk_start(chunk);
  if (start < int64_t(kMagicSize) || chunk.total_compressed_size < 0 ||
      uint64_t(start) > data_end ||
      uint64_t(chunk.total_compressed_size) > data_end - uint64_t(start))
    fail("the chunk's bytes ", start, "+", chunk.total_compressed_size,
         " lie outside the data region 4..", data_end);
  const std::vector<uint8_t> bytes =
      file.read(uint64_t(start), uint64_t(chunk.total_compressed_size));
  ChunkReader reader{leaf, chunk, out, std::nullopt, 0, {}};
  reader.read_pages(bytes);
}

// Reads the column's part of one row group onto its cells.
void read_column_in_row_group(InputFile& file, uint64_t data_end, const RowGroup& row_group,
                              const ColumnSpec& column, Column& out) {
  std::vector<LeafChunk> chunks(column.leaves.size());
  for (size_t i = 0; i < column.leaves.size(); ++i) {
    const LeafSpec& leaf = column.leaves[i];
    try {
      read_column_chunk(file, data_end, row_group.columns[leaf.index], leaf, row_group.num_rows,
                        chunks[i]);
    } catch (const Error& error) {
      if (!column.is_messages) throw;
      fail("field '", leaf.path.back(), "': ", error.what());
    }
  }
  if (column.is_messages)
    append_message_cells(column, chunks[0], chunks[1], row_group.num_rows, out);
  else
    append_flat_cells(column.leaves[0], chunks[0], row_group.num_rows, out);
}

}  // namespace

Table read_parquet_file(const std::string& path, const std::vector<std::string>& wanted) {
  InputFile file(path);
  const Footer footer = read_footer(file, path);
  const FileMetaData& metadata = footer.metadata;

  Table table;
  table.source = path;
  size_t total_leaves = 0;
  std::vector<Field> fields;
  try {
    fields = top_level_fields(metadata.schema, &total_leaves);
  } catch (const Error& error) {
    fail(path, ": corrupt schema: ", error.what());
  }
  for (const Field& field : fields) table.columns_in_source.push_back(field.element->name);

  std::vector<ColumnSpec> specs;
  for (const std::string& name : names_to_read(wanted, table.columns_in_source)) {
    const auto field = std::find_if(fields.begin(), fields.end(),
                                    [&](const Field& f) { return f.element->name == name; });
    try {
      specs.push_back(readable_column(metadata.schema, *field));
    } catch (const Error& error) {
      fail(path, ": ", error.what());
    }
    const ColumnSpec& spec = specs.back();
    Column column;
    column.name = name;
    column.is_messages = spec.is_messages;
    column.is_integer =
        !spec.is_messages && spec.leaves[0].physical_type != int32_t(PhysicalType::byte_array);
    table.columns.push_back(std::move(column));
  }

  int64_t rows_in_groups = 0;
  for (size_t group = 0; group < metadata.row_groups.size(); ++group) {
    const RowGroup& row_group = metadata.row_groups[group];
    if (row_group.columns.size() != total_leaves || row_group.num_rows < 0 ||
        row_group.num_rows > metadata.num_rows - rows_in_groups)
      fail(path, ": row group ", group, " has ", row_group.columns.size(), " column chunks and ",
           row_group.num_rows, " rows, which does not match the schema's ", total_leaves,
           " columns and the file's ", metadata.num_rows, " rows");
    for (size_t i = 0; i < specs.size(); ++i) {
      try {
        read_column_in_row_group(file, footer.data_end, row_group, specs[i], table.columns[i]);
      } catch (const Error& error) {
        fail(path, ": column '", specs[i].name, "', row group ", group, ": ", error.what());
      }
    }
    rows_in_groups += row_group.num_rows;
  }
  if (rows_in_groups != metadata.num_rows)
    fail(path, ": the footer promises ", metadata.num_rows, " rows but the row groups hold ",
         rows_in_groups);
  table.num_rows = metadata.num_rows;
  return table;
}

}  // namespace cst
