#include "data/parquet_metadata.h"

#include "data/thrift_compact.h"

namespace cst::parquet {

using thrift::CompactReader;
using thrift::Type;

const char* physical_type_name(int32_t type) {
  switch (PhysicalType(type)) {
    case PhysicalType::boolean: return "BOOLEAN";
    case PhysicalType::int32: return "INT32";
    case PhysicalType::int64: return "INT64";
    case PhysicalType::int96: return "INT96";
    case PhysicalType::float_: return "FLOAT";
    case PhysicalType::double_: return "DOUBLE";
    case PhysicalType::byte_array: return "BYTE_ARRAY";
    case PhysicalType::fixed_len_byte_array: return "FIXED_LEN_BYTE_ARRAY";
  }
  return "unknown physical type";
}

const char* codec_name(int32_t codec) {
  switch (Codec(codec)) {
    case Codec::uncompressed: return "UNCOMPRESSED";
    case Codec::snappy: return "SNAPPY";
    case Codec::gzip: return "GZIP";
    case Codec::lzo: return "LZO";
    case Codec::brotli: return "BROTLI";
    case Codec::lz4: return "LZ4";
    case Codec::zstd: return "ZSTD";
    case Codec::lz4_raw: return "LZ4_RAW";
  }
  return "unknown codec";
}

const char* encoding_name(int32_t encoding) {
  switch (Encoding(encoding)) {
    case Encoding::plain: return "PLAIN";
    case Encoding::plain_dictionary: return "PLAIN_DICTIONARY";
    case Encoding::rle: return "RLE";
    case Encoding::bit_packed: return "BIT_PACKED";
    case Encoding::delta_binary_packed: return "DELTA_BINARY_PACKED";
    case Encoding::delta_length_byte_array: return "DELTA_LENGTH_BYTE_ARRAY";
    case Encoding::delta_byte_array: return "DELTA_BYTE_ARRAY";
    case Encoding::rle_dictionary: return "RLE_DICTIONARY";
    case Encoding::byte_stream_split: return "BYTE_STREAM_SPLIT";
  }
  return "unknown encoding";
}

namespace {

// Reads a list<struct> field, parsing each element with parse_element(in).
template <class Element, class ParseElement>
void parse_struct_list(CompactReader& in, Type type, std::vector<Element>& out, const char* what,
                       ParseElement parse_element) {
  const thrift::ListHeader list = in.read_list_header(type);
  if (list.element_type != Type::struct_) fail(what, " list holds non-structs");
  for (size_t i = 0; i < list.size; ++i) out.push_back(parse_element(in));
}

// LogicalType is a union: exactly one member struct is set, and its field id says which.
// Only INTEGER (id 10) has a member we look into, for its signedness.
void parse_logical_type(CompactReader& in, SchemaElement& element) {
  constexpr int16_t kIntegerMember = 10;
  in.read_struct([&](int16_t id, Type type) {
    element.logical_type = id;
    in.expect(type, Type::struct_);
    if (id == kIntegerMember) {
      in.read_struct([&](int16_t int_field, Type int_type) {
        if (int_field == 2)
          element.logical_integer_unsigned = !in.read_bool(int_type);
        else
          in.skip(int_type);
      });
    } else {
      in.skip(type);
    }
  });
}

SchemaElement parse_schema_element(CompactReader& in) {
  SchemaElement element;
  in.read_struct([&](int16_t id, Type type) {
    switch (id) {
      case 1: element.type = in.read_i32(type); break;
      case 3: element.repetition = in.read_i32(type); break;
      case 4: element.name = in.read_string(type); break;
      case 5: element.num_children = in.read_i32(type); break;
      case 6: element.converted_type = in.read_i32(type); break;
      case 10:
        in.expect(type, Type::struct_);
        parse_logical_type(in, element);
        break;
      default: in.skip(type);
    }
  });
  if (element.num_children < 0)
    fail("schema element '", element.name, "' has ", element.num_children, " children");
  return element;
}

void parse_column_metadata(CompactReader& in, ColumnChunk& chunk) {
  in.read_struct([&](int16_t id, Type type) {
    switch (id) {
      case 1: chunk.type = in.read_i32(type); break;
      case 3: {
        const thrift::ListHeader list = in.read_list_header(type);
        for (size_t i = 0; i < list.size; ++i)
          chunk.path_in_schema.push_back(in.read_string(list.element_type));
        break;
      }
      case 4: chunk.codec = in.read_i32(type); break;
      case 5: chunk.num_values = in.read_i64(type); break;
      case 7: chunk.total_compressed_size = in.read_i64(type); break;
      case 9: chunk.data_page_offset = in.read_i64(type); break;
      case 11: chunk.dictionary_page_offset = in.read_i64(type); break;
      default: in.skip(type);
    }
  });
}

ColumnChunk parse_column_chunk(CompactReader& in) {
  ColumnChunk chunk;
  in.read_struct([&](int16_t id, Type type) {
    switch (id) {
      case 1:
        chunk.has_file_path = true;
        in.skip(type);
        break;
      case 3:
        in.expect(type, Type::struct_);
        parse_column_metadata(in, chunk);
        break;
      case 8:  // crypto_metadata
      case 9:  // encrypted_column_metadata
        chunk.encrypted = true;
        in.skip(type);
        break;
      default: in.skip(type);
    }
  });
  return chunk;
}

RowGroup parse_row_group(CompactReader& in) {
  RowGroup group;
  in.read_struct([&](int16_t id, Type type) {
    switch (id) {
      case 1: parse_struct_list(in, type, group.columns, "column chunk", parse_column_chunk); break;
      case 3: group.num_rows = in.read_i64(type); break;
      default: in.skip(type);
    }
  });
  return group;
}

}  // namespace

FileMetaData parse_file_metadata(std::span<const uint8_t> footer) {
  CompactReader in(footer);
  FileMetaData meta;
  in.read_struct([&](int16_t id, Type type) {
    switch (id) {
      case 2: parse_struct_list(in, type, meta.schema, "schema", parse_schema_element); break;
      case 3: meta.num_rows = in.read_i64(type); break;
      case 4: parse_struct_list(in, type, meta.row_groups, "row group", parse_row_group); break;
      case 8:
        meta.encrypted = true;
        in.skip(type);
        break;  // encryption_algorithm
      default: in.skip(type);
    }
  });
  return meta;
}

namespace {

DataPageHeader parse_data_page_header(CompactReader& in) {
  DataPageHeader header;
  in.read_struct([&](int16_t id, Type type) {
    switch (id) {
      case 1: header.num_values = in.read_i32(type); break;
      case 2: header.encoding = in.read_i32(type); break;
      case 3: header.definition_level_encoding = in.read_i32(type); break;
      case 4: header.repetition_level_encoding = in.read_i32(type); break;
      default: in.skip(type);
    }
  });
  return header;
}

DictionaryPageHeader parse_dictionary_page_header(CompactReader& in) {
  DictionaryPageHeader header;
  in.read_struct([&](int16_t id, Type type) {
    switch (id) {
      case 1: header.num_values = in.read_i32(type); break;
      case 2: header.encoding = in.read_i32(type); break;
      default: in.skip(type);
    }
  });
  return header;
}

DataPageHeaderV2 parse_data_page_header_v2(CompactReader& in) {
  DataPageHeaderV2 header;
  in.read_struct([&](int16_t id, Type type) {
    switch (id) {
      case 1: header.num_values = in.read_i32(type); break;
      case 4: header.encoding = in.read_i32(type); break;
      case 5: header.definition_levels_byte_length = in.read_i32(type); break;
      case 6: header.repetition_levels_byte_length = in.read_i32(type); break;
      case 7: header.is_compressed = in.read_bool(type); break;
      default: in.skip(type);
    }
  });
  return header;
}

}  // namespace

PageHeader parse_page_header(std::span<const uint8_t> bytes) {
  CompactReader in(bytes);
  PageHeader header;
  in.read_struct([&](int16_t id, Type type) {
    switch (id) {
      case 1: header.type = in.read_i32(type); break;
      case 2: header.uncompressed_page_size = in.read_i32(type); break;
      case 3: header.compressed_page_size = in.read_i32(type); break;
      case 5:
        in.expect(type, Type::struct_);
        header.data = parse_data_page_header(in);
        break;
      case 7:
        in.expect(type, Type::struct_);
        header.dictionary = parse_dictionary_page_header(in);
        break;
      case 8:
        in.expect(type, Type::struct_);
        header.data_v2 = parse_data_page_header_v2(in);
        break;
      default: in.skip(type);
    }
  });
  header.header_size = in.position();
  return header;
}

}  // namespace cst::parquet
