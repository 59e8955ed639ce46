// safetensors: read (mmap, validated) and write (atomic: temp file + rename).
//
// File layout: u64 little-endian header length N, N bytes of JSON header, then the data buffer.
// Header: {"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [begin, end]}}
// with offsets relative to the buffer. A valid file has no holes or overlaps, end - begin equal to
// numel * dtype size, no duplicate names, and 8 + N + last end = file size. Every violation is an
// Error naming the file and the tensor.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kernels/tensor.h"

namespace cst {

struct TensorInfo {
  std::string name;
  DType dtype = DType::f32;  // F32, BF16, F16, I32 and U8 are read; other dtypes are an error
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // inside the mapping
  size_t nbytes = 0;
  int64_t numel() const;
};

// One memory-mapped .safetensors file.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // in file order
  const TensorInfo* find(const std::string& name) const;  // nullptr when absent
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  std::string path_;
  void* mapping_ = nullptr;
  size_t mapping_size_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// The weights of a model directory: model.safetensors, or the shards listed in
// model.safetensors.index.json. Also opens a single .safetensors path.
class SafetensorsSet {
 public:
  explicit SafetensorsSet(const std::string& path);
  // The same, leaving out tensors whose names start with excluded_prefix (model.bin's "cst.").
  SafetensorsSet(const std::string& path, const std::string& excluded_prefix);
  const TensorInfo* find(const std::string& name) const;
  const TensorInfo& get(const std::string& name) const;  // Error naming the tensor when absent
  std::vector<const TensorInfo*> tensors() const;       // all tensors, sorted by name

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorInfo*> by_name_;  // into files_
};

// Fails when a float tensor holds a NaN or an infinity, naming `where`, the tensor, the value and
// its index: weights and adapters are checked as they load, so a damaged file stops the run there
// instead of turning every log-prob into NaN.
void check_finite(const TensorInfo& tensor, const std::string& where);

struct TensorToWrite {
  std::string name;
  DType dtype = DType::f32;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // host memory, numel * dtype size bytes
};

// Writes one file; metadata always gains {"format": "pt"} (transformers requires it).
void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       std::map<std::string, std::string> metadata = {});
// Writes model-0000k-of-0000n.safetensors shards of at most max_shard_bytes each plus
// model.safetensors.index.json into directory (a single model.safetensors when one shard fits).
void write_sharded_safetensors(const std::string& directory,
                               const std::vector<TensorToWrite>& tensors, size_t max_shard_bytes);

const char* safetensors_dtype_name(DType dtype);  // "F32", "BF16", ...

struct BytesToWrite {
  const void* data = nullptr;
  size_t size = 0;
};
// Writes the pieces, in order, to a temporary file beside path, flushes it to disk and renames it
// over path: readers see the old file or the complete new one. On failure the temporary file is
// removed and an Error is thrown.
void write_file_atomically(const std::string& path, const std::vector<BytesToWrite>& pieces);

}  // namespace cst
