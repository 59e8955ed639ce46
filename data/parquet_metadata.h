// Parquet footer and page headers: the subset of parquet.thrift that a reader of string, integer
// and message-list columns needs, decoded from Thrift compact bytes. Field ids follow parquet.thrift
// (https://github.com/apache/parquet-format/blob/master/src/main/thrift/parquet.thrift).
#pragma once
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace cst::parquet {

enum class PhysicalType : int32_t {
  boolean = 0,
  int32 = 1,
  int64 = 2,
  int96 = 3,
  float_ = 4,
  double_ = 5,
  byte_array = 6,
  fixed_len_byte_array = 7,
};
enum class Repetition : int32_t { required = 0, optional = 1, repeated = 2 };
enum class Codec : int32_t {
  uncompressed = 0,
  snappy = 1,
  gzip = 2,
  lzo = 3,
  brotli = 4,
  lz4 = 5,
  zstd = 6,
  lz4_raw = 7,
};
enum class Encoding : int32_t {
  plain = 0,
  plain_dictionary = 2,
  rle = 3,
  bit_packed = 4,
  delta_binary_packed = 5,
  delta_length_byte_array = 6,
  delta_byte_array = 7,
  rle_dictionary = 8,
  byte_stream_split = 9,
};
enum class PageType : int32_t { data = 0, index = 1, dictionary = 2, data_v2 = 3 };

const char* physical_type_name(int32_t type);
const char* codec_name(int32_t codec);
const char* encoding_name(int32_t encoding);

// Logical annotations that change what an INT32/INT64 means (dates, decimals, unsigned ...).
// converted_type is the legacy field; logical_type is the id of the set member of the newer union.
struct SchemaElement {
  std::string name;
  std::optional<int32_t> type;  // absent for groups
  int32_t repetition = int32_t(Repetition::required);
  int32_t num_children = 0;
  std::optional<int32_t> converted_type;
  std::optional<int32_t> logical_type;
  bool logical_integer_unsigned = false;  // IntType.isSigned == false
};

struct ColumnChunk {
  bool has_file_path = false;  // data lives in another file: not supported
  bool encrypted = false;
  int32_t type = -1;
  std::vector<std::string> path_in_schema;
  int32_t codec = 0;
  int64_t num_values = 0;
  int64_t total_compressed_size = 0;
  int64_t data_page_offset = -1;
  std::optional<int64_t> dictionary_page_offset;
};

struct RowGroup {
  std::vector<ColumnChunk> columns;
  int64_t num_rows = 0;
};

struct FileMetaData {
  std::vector<SchemaElement> schema;  // depth-first; schema[0] is the root
  int64_t num_rows = 0;
  std::vector<RowGroup> row_groups;
  bool encrypted = false;  // encryption_algorithm set (encrypted columns, plaintext footer)
};

struct DataPageHeader {
  int32_t num_values = 0;
  int32_t encoding = 0;
  int32_t definition_level_encoding = int32_t(Encoding::rle);
  int32_t repetition_level_encoding = int32_t(Encoding::rle);
};

struct DictionaryPageHeader {
  int32_t num_values = 0;
  int32_t encoding = 0;
};

struct DataPageHeaderV2 {
  int32_t num_values = 0;
  int32_t encoding = 0;
  int32_t definition_levels_byte_length = 0;
  int32_t repetition_levels_byte_length = 0;
  bool is_compressed = true;
};

struct PageHeader {
  int32_t type = -1;
  int32_t uncompressed_page_size = 0;
  int32_t compressed_page_size = 0;
  std::optional<DataPageHeader> data;
  std::optional<DictionaryPageHeader> dictionary;
  std::optional<DataPageHeaderV2> data_v2;
  size_t header_size = 0;  // bytes the header itself took
};

FileMetaData parse_file_metadata(std::span<const uint8_t> footer);
// Parses the page header at the start of `bytes`.
PageHeader parse_page_header(std::span<const uint8_t> bytes);

}  // namespace cst::parquet
