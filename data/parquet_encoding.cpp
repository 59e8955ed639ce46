#include "data/parquet_encoding.h"

#include <algorithm>
#include <cstring>

#include "data/parquet_metadata.h"
#include "kernels/error.h"

namespace cst::parquet {

namespace {

// Unsigned LEB128 varint at bytes[*position], advancing *position.
uint64_t read_varint(std::span<const uint8_t> bytes, size_t* position, const char* what) {
  uint64_t value = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (*position >= bytes.size()) fail(what, " varint is cut off at byte ", *position);
    const uint8_t byte = bytes[(*position)++];
    value |= uint64_t(byte & 0x7f) << shift;
    if ((byte & 0x80) == 0) return value;
  }
  fail(what, " varint at byte ", *position, " is longer than 10 bytes");
}

int64_t read_zigzag(std::span<const uint8_t> bytes, size_t* position, const char* what) {
  const uint64_t encoded = read_varint(bytes, position, what);
  return int64_t(encoded >> 1) ^ -int64_t(encoded & 1);
}

// `width` (0..64) bits starting at bit_offset, least significant bit first, as Parquet packs them.
uint64_t read_bits(std::span<const uint8_t> bytes, uint64_t bit_offset, int width) {
  if (width == 0) return 0;
  if ((bit_offset + uint64_t(width) + 7) / 8 > bytes.size())
    fail("bit-packed values run past the end of the page");
  uint64_t value = 0;
  size_t index = bit_offset / 8;
  int skip = int(bit_offset % 8), filled = 0;
  while (filled < width) {
    value |= uint64_t(bytes[index++] >> skip) << filled;
    filled += 8 - skip;
    skip = 0;
  }
  return width == 64 ? value : value & ((uint64_t(1) << width) - 1);
}

uint64_t read_little_endian(const uint8_t* bytes, size_t size) {
  uint64_t value = 0;
  for (size_t i = 0; i < size; ++i) value |= uint64_t(bytes[i]) << (8 * i);
  return value;
}

}  // namespace

std::vector<uint32_t> decode_hybrid(std::span<const uint8_t> bytes, int bit_width, size_t count) {
  if (bit_width < 0 || bit_width > 32)
    fail("RLE/bit-packed bit width ", bit_width, " is not in 0..32");
  const size_t value_bytes = size_t(bit_width + 7) / 8;
  std::vector<uint32_t> out;
  size_t position = 0;
  while (out.size() < count) {
    if (position >= bytes.size())
      fail("RLE/bit-packed data ends after ", out.size(), " of ", count, " values");
    const uint64_t header = read_varint(bytes, &position, "RLE run header");
    const size_t wanted = count - out.size();
    if (header & 1) {
      const uint64_t groups = header >> 1;
      const size_t take =
          size_t(std::min<uint64_t>(std::min<uint64_t>(groups, wanted / 8 + 1) * 8, wanted));
      const uint64_t first_bit = uint64_t(position) * 8;
      for (size_t i = 0; i < take; ++i)
        out.push_back(uint32_t(read_bits(bytes, first_bit + i * bit_width, bit_width)));
      // A final run may be declared longer than the bytes left; nothing is read past them.
      const size_t left = bytes.size() - position;
      const uint64_t run_bytes = bit_width == 0  ? 0
                                 : groups > left ? left
                                                 : groups * uint64_t(bit_width);
      position = run_bytes >= left ? bytes.size() : position + size_t(run_bytes);
    } else {
      const uint64_t run = header >> 1;
      if (value_bytes > bytes.size() - position)
        fail("RLE run value is cut off at byte ", position);
      const uint32_t value = uint32_t(read_little_endian(bytes.data() + position, value_bytes));
      position += value_bytes;
      out.insert(out.end(), size_t(std::min<uint64_t>(run, wanted)), value);
    }
  }
  return out;
}

std::vector<uint32_t> decode_dictionary_indices(std::span<const uint8_t> bytes, size_t count) {
  if (count == 0) return {};
  if (bytes.empty()) fail("dictionary-encoded page has no bit-width byte");
  return decode_hybrid(bytes.subspan(1), bytes[0], count);
}

void decode_plain(int32_t physical_type, std::span<const uint8_t> bytes, size_t count,
                  PageValues& out) {
  switch (PhysicalType(physical_type)) {
    case PhysicalType::byte_array: {
      size_t position = 0;
      for (size_t i = 0; i < count; ++i) {
        if (bytes.size() - position < 4)
          fail("PLAIN string ", i, " of ", count, " has no length: page is cut off");
        const uint64_t length = read_little_endian(bytes.data() + position, 4);
        position += 4;
        if (length > bytes.size() - position)
          fail("PLAIN string ", i, " claims ", length, " bytes but the page has ",
               bytes.size() - position, " left");
        out.text.emplace_back(reinterpret_cast<const char*>(bytes.data() + position),
                              size_t(length));
        position += size_t(length);
      }
      return;
    }
    case PhysicalType::int32:
    case PhysicalType::int64: {
      const size_t width = PhysicalType(physical_type) == PhysicalType::int32 ? 4 : 8;
      if (count > bytes.size() / width)
        fail("PLAIN page holds ", bytes.size(), " bytes, too few for ", count, " values of ", width,
             " bytes");
      for (size_t i = 0; i < count; ++i) {
        const uint64_t raw = read_little_endian(bytes.data() + i * width, width);
        out.integers.push_back(width == 4 ? int64_t(int32_t(uint32_t(raw))) : int64_t(raw));
      }
      return;
    }
    default: fail("PLAIN decoding of ", physical_type_name(physical_type), " is not supported");
  }
}

std::vector<int64_t> decode_delta_binary_packed(std::span<const uint8_t> bytes, size_t max_values,
                                                size_t* consumed) {
  size_t position = 0;
  const uint64_t block_size = read_varint(bytes, &position, "DELTA_BINARY_PACKED block size");
  const uint64_t miniblocks = read_varint(bytes, &position, "DELTA_BINARY_PACKED miniblock count");
  const uint64_t total = read_varint(bytes, &position, "DELTA_BINARY_PACKED value count");
  const int64_t first = read_zigzag(bytes, &position, "DELTA_BINARY_PACKED first value");
  if (block_size == 0 || block_size % 128 != 0 || block_size > (uint64_t(1) << 31) ||
      miniblocks == 0 || block_size % miniblocks != 0 || (block_size / miniblocks) % 32 != 0)
    fail("DELTA_BINARY_PACKED header has an invalid block size ", block_size, " with ", miniblocks,
         " miniblocks");
  if (total > max_values)
    fail("DELTA_BINARY_PACKED declares ", total, " values where at most ", max_values, " fit");
  const uint64_t values_per_miniblock = block_size / miniblocks;

  std::vector<int64_t> values;
  values.reserve(size_t(total));
  if (total > 0) values.push_back(first);
  // Deltas are added modulo 2^64, as the encoder subtracted them.
  uint64_t last = uint64_t(first);
  while (values.size() < total) {
    const uint64_t min_delta =
        uint64_t(read_zigzag(bytes, &position, "DELTA_BINARY_PACKED min delta"));
    if (miniblocks > bytes.size() - position)
      fail("DELTA_BINARY_PACKED bit widths are cut off at byte ", position);
    const std::span<const uint8_t> widths = bytes.subspan(position, size_t(miniblocks));
    position += size_t(miniblocks);
    for (uint64_t m = 0; m < miniblocks && values.size() < total; ++m) {
      const int width = widths[m];
      if (width > 64) fail("DELTA_BINARY_PACKED miniblock bit width ", width, " exceeds 64");
      const uint64_t miniblock_bytes = values_per_miniblock * uint64_t(width) / 8;
      if (miniblock_bytes > bytes.size() - position)
        fail("DELTA_BINARY_PACKED miniblock is cut off at byte ", position);
      const std::span<const uint8_t> packed = bytes.subspan(position, size_t(miniblock_bytes));
      const size_t take = size_t(std::min<uint64_t>(values_per_miniblock, total - values.size()));
      for (size_t i = 0; i < take; ++i) {
        last += min_delta + read_bits(packed, uint64_t(i) * uint64_t(width), width);
        values.push_back(int64_t(last));
      }
      position += size_t(miniblock_bytes);
    }
  }
  *consumed = position;
  return values;
}

void decode_delta_length_byte_array(std::span<const uint8_t> bytes, size_t count, PageValues& out) {
  size_t position = 0;
  const std::vector<int64_t> lengths = decode_delta_binary_packed(bytes, count, &position);
  if (lengths.size() != count)
    fail("DELTA_LENGTH_BYTE_ARRAY holds ", lengths.size(), " lengths, expected ", count);
  for (const int64_t length : lengths) {
    if (length < 0 || uint64_t(length) > bytes.size() - position)
      fail("DELTA_LENGTH_BYTE_ARRAY string of ", length, " bytes does not fit in the ",
           bytes.size() - position, " bytes left");
    out.text.emplace_back(reinterpret_cast<const char*>(bytes.data() + position), size_t(length));
    position += size_t(length);
  }
}

void decode_delta_byte_array(std::span<const uint8_t> bytes, size_t count, PageValues& out) {
  size_t suffix_start = 0;
  const std::vector<int64_t> prefix_lengths =
      decode_delta_binary_packed(bytes, count, &suffix_start);
  if (prefix_lengths.size() != count)
    fail("DELTA_BYTE_ARRAY holds ", prefix_lengths.size(), " prefix lengths, expected ", count);
  PageValues suffixes;
  decode_delta_length_byte_array(bytes.subspan(suffix_start), count, suffixes);
  std::string previous;
  for (size_t i = 0; i < count; ++i) {
    const int64_t prefix = prefix_lengths[i];
    if (prefix < 0 || uint64_t(prefix) > previous.size())
      fail("DELTA_BYTE_ARRAY value ", i, " shares a ", prefix, "-byte prefix with a ",
           previous.size(), "-byte value");
    previous.resize(size_t(prefix));
    previous += suffixes.text[i];
    out.text.push_back(previous);
  }
}

}  // namespace cst::parquet
