// Page decompression for the codecs pyarrow, pandas and HF datasets use: UNCOMPRESSED, SNAPPY,
// GZIP and ZSTD. LZ4, LZ4_RAW, BROTLI and LZO are refused with a message naming the codec.
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace cst::parquet {

// Fails unless `codec` is one decompress() handles; called once per column chunk, before any page.
void check_codec_supported(int32_t codec);

// Decompresses one page body, which must come out at exactly `uncompressed_size` bytes (the page
// header's promise). Returns a view of `scratch`, or of `compressed` itself when uncompressed.
std::span<const uint8_t> decompress(int32_t codec, std::span<const uint8_t> compressed,
                                    size_t uncompressed_size, std::vector<uint8_t>& scratch);

}  // namespace cst::parquet
