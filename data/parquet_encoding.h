// Parquet value and level encodings
// (https://parquet.apache.org/docs/file-format/data-pages/encodings/) for the column kinds cst
// reads: BYTE_ARRAY strings and INT32/INT64 integers. Every decoder checks its reads against the
// page bytes and throws cst::Error on anything malformed.
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace cst::parquet {

// The non-null values of one page (or of a dictionary page), in order. Integers are widened to
// int64; INT32 values come out sign-extended from their low 32 bits.
struct PageValues {
  std::vector<std::string> text;
  std::vector<int64_t> integers;
};

// RLE / bit-packed hybrid: runs of (varint header; header & 1 ? bit-packed groups of 8 values :
// one repeated value of ceil(bit_width / 8) bytes). Used for definition levels and dictionary ids.
std::vector<uint32_t> decode_hybrid(std::span<const uint8_t> bytes, int bit_width, size_t count);

// Dictionary-encoded data page values: one byte of bit width, then the hybrid-encoded indices.
std::vector<uint32_t> decode_dictionary_indices(std::span<const uint8_t> bytes, size_t count);

// PLAIN: BYTE_ARRAY = u32 LE length + bytes; INT32/INT64 = little-endian fixed width.
void decode_plain(int32_t physical_type, std::span<const uint8_t> bytes, size_t count,
                  PageValues& out);

// DELTA_BINARY_PACKED integers. Returns the values and stores how many bytes they took in
// *consumed (the delta string encodings put more data right after them).
std::vector<int64_t> decode_delta_binary_packed(std::span<const uint8_t> bytes, size_t max_values,
                                                size_t* consumed);

// DELTA_LENGTH_BYTE_ARRAY: all lengths (delta binary packed), then all the bytes back to back.
void decode_delta_length_byte_array(std::span<const uint8_t> bytes, size_t count, PageValues& out);

// DELTA_BYTE_ARRAY: prefix lengths shared with the previous value, then the suffixes as
// DELTA_LENGTH_BYTE_ARRAY.
void decode_delta_byte_array(std::span<const uint8_t> bytes, size_t count, PageValues& out);

}  // namespace cst::parquet
