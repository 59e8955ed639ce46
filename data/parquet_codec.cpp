#include "data/parquet_codec.h"

#include <snappy-c.h>
#include <zlib.h>
#include <zstd.h>

#include "data/parquet_metadata.h"
#include "kernels/error.h"

namespace cst::parquet {

namespace {

// Deflate cannot shrink data by more than about 1032:1, so a bigger promise is corrupt metadata;
// checking it first keeps a flipped size field from triggering a huge allocation.
constexpr uint64_t kMaxDeflateRatio = 1032;

std::span<const uint8_t> snappy_decompress(std::span<const uint8_t> compressed, size_t expected,
                                           std::vector<uint8_t>& out) {
  const char* source = reinterpret_cast<const char*>(compressed.data());
  size_t length = 0;
  if (snappy_uncompressed_length(source, compressed.size(), &length) != SNAPPY_OK)
    fail("SNAPPY page has a corrupt length header");
  if (length != expected)
    fail("SNAPPY page decompresses to ", length, " bytes, the page header says ", expected);
  out.resize(expected);
  if (snappy_uncompress(source, compressed.size(), reinterpret_cast<char*>(out.data()), &length) !=
          SNAPPY_OK ||
      length != expected)
    fail("SNAPPY page data is corrupt");
  return out;
}

std::span<const uint8_t> gzip_decompress(std::span<const uint8_t> compressed, size_t expected,
                                         std::vector<uint8_t>& out) {
  if (expected > compressed.size() * kMaxDeflateRatio + 64)
    fail("GZIP page of ", compressed.size(), " bytes cannot expand to the ", expected,
         " bytes its header says");
  out.resize(expected);
  z_stream stream{};
  // 15 window bits + 32: accept both gzip and zlib headers.
  if (inflateInit2(&stream, 15 + 32) != Z_OK) fail("cannot initialise zlib");
  stream.next_in = const_cast<Bytef*>(compressed.data());
  stream.avail_in = uInt(compressed.size());
  stream.next_out = out.data();
  stream.avail_out = uInt(expected);
  const int status = inflate(&stream, Z_FINISH);
  const uint64_t produced = stream.total_out;
  inflateEnd(&stream);
  if (status != Z_STREAM_END)
    fail("GZIP page data is corrupt or longer than the ", expected,
         " bytes its header says (zlib status ", status, ")");
  if (produced != expected)
    fail("GZIP page decompresses to ", produced, " bytes, the page header says ", expected);
  return out;
}

std::span<const uint8_t> zstd_decompress(std::span<const uint8_t> compressed, size_t expected,
                                         std::vector<uint8_t>& out) {
  // Writers put each page in one frame that records its size: check it before allocating.
  const unsigned long long declared =
      ZSTD_getFrameContentSize(compressed.data(), compressed.size());
  if (declared == ZSTD_CONTENTSIZE_ERROR) fail("ZSTD page data is corrupt (bad frame header)");
  const bool single_frame =
      ZSTD_findFrameCompressedSize(compressed.data(), compressed.size()) == compressed.size();
  if (single_frame && declared != ZSTD_CONTENTSIZE_UNKNOWN && declared != expected)
    fail("ZSTD page decompresses to ", declared, " bytes, the page header says ", expected);
  out.resize(expected);
  const size_t produced =
      ZSTD_decompress(out.data(), expected, compressed.data(), compressed.size());
  if (ZSTD_isError(produced)) fail("ZSTD page data is corrupt: ", ZSTD_getErrorName(produced));
  if (produced != expected)
    fail("ZSTD page decompresses to ", produced, " bytes, the page header says ", expected);
  return out;
}

}  // namespace

void check_codec_supported(int32_t codec) {
  switch (Codec(codec)) {
    case Codec::uncompressed:
    case Codec::snappy:
    case Codec::gzip:
    case Codec::zstd: return;
    default:
      fail("compression codec ", codec_name(codec), " (", codec,
           ") is not supported; rewrite the file with snappy, gzip, zstd or no compression");
  }
}

std::span<const uint8_t> decompress(int32_t codec, std::span<const uint8_t> compressed,
                                    size_t uncompressed_size, std::vector<uint8_t>& scratch) {
  switch (Codec(codec)) {
    case Codec::uncompressed:
      if (compressed.size() != uncompressed_size)
        fail("uncompressed page holds ", compressed.size(), " bytes but its header says ",
             uncompressed_size);
      return compressed;
    case Codec::snappy: return snappy_decompress(compressed, uncompressed_size, scratch);
    case Codec::gzip: return gzip_decompress(compressed, uncompressed_size, scratch);
    case Codec::zstd: return zstd_decompress(compressed, uncompressed_size, scratch);
    default: check_codec_supported(codec);
  }
  return {};
}

}  // namespace cst::parquet
