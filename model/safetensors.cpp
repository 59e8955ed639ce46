// safetensors reading (mmap + full validation of the header against the file) and writing.
#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <numeric>
#include <set>

#include "kernels/files.h"

namespace cst {

namespace {

using ordered_json = nlohmann::ordered_json;
namespace fs = std::filesystem;

// The reference implementation refuses larger headers; a bigger length means a corrupt file.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
// A safetensors header nests three levels (header, entry, shape); deeper means garbage, and
// stopping early keeps a hostile header from building a huge tree.
constexpr int kMaxHeaderDepth = 8;
constexpr const char* kIndexFileName = "model.safetensors.index.json";
constexpr const char* kSingleFileName = "model.safetensors";

// Every dtype the safetensors format defines, so a file using one cst does not read gets
// "not supported" instead of "unknown".
bool is_known_safetensors_dtype(const std::string& name) {
  static const std::set<std::string> known = {
      "BOOL", "U8",  "I8",  "I16", "U16", "F16",     "BF16",    "I32",     "U32",     "F32",
      "F64",  "I64", "U64", "C64", "F4",  "F6_E2M3", "F6_E3M2", "F8_E5M2", "F8_E4M3", "F8_E8M0"};
  return known.count(name) > 0;
}

DType parse_dtype(const std::string& name, const std::string& tensor, const std::string& path) {
  for (DType dtype : {DType::f32, DType::bf16, DType::f16, DType::i32, DType::u8})
    if (name == safetensors_dtype_name(dtype)) return dtype;
  if (is_known_safetensors_dtype(name))
    fail(path, ": tensor '", tensor, "' has dtype ", name,
         ", which cst does not read (supported: F32, BF16, F16, I32, U8)");
  fail(path, ": tensor '", tensor, "' has unknown dtype '", name, "'");
}

// Python's safetensors writes the buffer ordered by dtype (F32, I32, BF16, F16, U8: the reverse
// of its dtype enum), then by name. Using the same order makes our files byte-identical to its.
int write_order(DType dtype) {
  switch (dtype) {
    case DType::f32: return 0;
    case DType::i32: return 1;
    case DType::bf16: return 2;
    case DType::f16: return 3;
    case DType::u8: return 4;
  }
  return 5;
}

// Parses JSON, refusing duplicate keys in any object: nlohmann would silently keep one of them,
// and a file whose two entries share a name is ambiguous.
ordered_json parse_json_strictly(const char* begin, const char* end, const std::string& where) {
  std::vector<std::set<std::string>> keys_per_open_object;
  auto on_event = [&](int depth, ordered_json::parse_event_t event, ordered_json& parsed) {
    using Event = ordered_json::parse_event_t;
    if (depth > kMaxHeaderDepth) fail(where, ": JSON nested deeper than ", kMaxHeaderDepth);
    if (event == Event::object_start) keys_per_open_object.emplace_back();
    if (event == Event::object_end) keys_per_open_object.pop_back();
    if (event == Event::key &&
        !keys_per_open_object.back().insert(parsed.get<std::string>()).second)
      fail(where, ": duplicate key '", parsed.get<std::string>(), "'");
    return true;
  };
  try {
    return ordered_json::parse(begin, end, on_event);
  } catch (const nlohmann::json::exception& error) {
    fail(where, ": not valid JSON (", error.what(), ")");
  }
}

bool is_non_negative_integer(const ordered_json& value) {
  return value.is_number_unsigned() || (value.is_number_integer() && value.get<int64_t>() >= 0);
}

// numel * element size, refusing shapes whose byte count overflows.
size_t checked_nbytes(const std::vector<int64_t>& shape, DType dtype, const std::string& tensor,
                      const std::string& path) {
  uint64_t total = dtype_size(dtype);
  for (int64_t dim : shape)
    if (__builtin_mul_overflow(total, uint64_t(dim), &total))
      fail(path, ": tensor '", tensor, "' has a shape too large to address");
  return size_t(total);
}

std::vector<int64_t> read_shape(const ordered_json& shape, const std::string& tensor,
                                const std::string& path) {
  if (!shape.is_array()) fail(path, ": tensor '", tensor, "': 'shape' must be a list");
  std::vector<int64_t> result;
  for (const ordered_json& dim : shape) {
    if (!is_non_negative_integer(dim) || dim.get<uint64_t>() > uint64_t(INT64_MAX))
      fail(path, ": tensor '", tensor, "': shape ", shape.dump(),
           " must hold non-negative integers");
    result.push_back(dim.get<int64_t>());
  }
  return result;
}

// data_offsets [begin, end] relative to the data buffer.
std::pair<uint64_t, uint64_t> read_offsets(const ordered_json& offsets, const std::string& tensor,
                                           const std::string& path) {
  if (!offsets.is_array() || offsets.size() != 2 || !is_non_negative_integer(offsets[0]) ||
      !is_non_negative_integer(offsets[1]))
    fail(path, ": tensor '", tensor, "': 'data_offsets' must be two non-negative integers, got ",
         offsets.dump());
  uint64_t begin = offsets[0].get<uint64_t>(), end = offsets[1].get<uint64_t>();
  if (begin > end)
    fail(path, ": tensor '", tensor, "': data_offsets ", offsets.dump(), " end before they begin");
  return {begin, end};
}

std::map<std::string, std::string> read_metadata(const ordered_json& metadata,
                                                 const std::string& path) {
  std::map<std::string, std::string> result;
  if (metadata.is_null()) return result;
  if (!metadata.is_object())
    fail(path, ": '__metadata__' must be an object of strings, got ", metadata.type_name());
  for (const auto& [key, value] : metadata.items()) {
    if (!value.is_string())
      fail(path, ": '__metadata__' must map strings to strings; '", key, "' holds a ",
           value.type_name());
    result[key] = value.get<std::string>();
  }
  return result;
}

// The tensors, visited in offset order, must tile the buffer exactly: no overlap, no hole,
// nothing after the last one.
void check_tiling(const std::vector<size_t>& offset_order,
                  const std::vector<std::pair<uint64_t, uint64_t>>& ranges,
                  const std::vector<TensorInfo>& tensors, uint64_t buffer_size,
                  const std::string& path) {
  uint64_t expected_begin = 0;
  const std::string* previous = nullptr;
  for (size_t i : offset_order) {
    auto [begin, end] = ranges[i];
    if (begin < expected_begin)
      fail(path, ": tensor '", tensors[i].name, "' overlaps tensor '", *previous, "'");
    if (begin > expected_begin)
      fail(path, ": hole of ", begin - expected_begin, " bytes before tensor '", tensors[i].name,
           "' (data must be contiguous)");
    expected_begin = end;
    previous = &tensors[i].name;
  }
  if (expected_begin != buffer_size)
    fail(path, ": ", buffer_size - expected_begin, " bytes after the last tensor's data");
}

}  // namespace

void check_finite(const TensorInfo& tensor, const std::string& where) {
  const Tensor values = make_view(const_cast<uint8_t*>(tensor.data), tensor.shape, tensor.dtype, Device::cpu);
  const int64_t index = first_non_finite(values);
  if (index < 0) return;
  const Tensor value = make_view(const_cast<uint8_t*>(tensor.data) + index * int64_t(dtype_size(tensor.dtype)), {1},
                                 tensor.dtype, Device::cpu);
  fail(where, ": tensor '", tensor.name, "' holds ", to_host_f32(value)[0], " at index ", index,
       " (a damaged file, or a float16 export that overflowed)");
}

const char* safetensors_dtype_name(DType dtype) {
  switch (dtype) {
    case DType::f32: return "F32";
    case DType::bf16: return "BF16";
    case DType::f16: return "F16";
    case DType::i32: return "I32";
    case DType::u8: return "U8";
  }
  return "?";
}

int64_t TensorInfo::numel() const {
  int64_t count = 1;
  for (int64_t dim : shape) count *= dim;
  return count;
}

// ---------------------------------------------------------------------------------------------
// Reading

namespace {

struct ParsedHeader {
  std::vector<TensorInfo> tensors;  // in buffer order
  std::map<std::string, std::string> metadata;
};

// Validates the whole header against the mapped bytes of the file.
ParsedHeader parse_header(const uint8_t* bytes, size_t file_size, const std::string& path) {
  uint64_t header_length;
  std::memcpy(&header_length, bytes, 8);  // little-endian, as are all hosts cst runs on
  if (header_length > kMaxHeaderBytes)
    fail(path, ": header length ", header_length,
         " exceeds the 100 MB limit (corrupt, or not a safetensors file)");
  if (header_length > file_size - 8)
    fail(path, ": header length ", header_length, " runs past the end of the file (", file_size,
         " bytes; truncated?)");
  const char* header_text = reinterpret_cast<const char*>(bytes + 8);
  ordered_json header = parse_json_strictly(header_text, header_text + header_length, path);
  if (!header.is_object()) fail(path, ": header must be a JSON object, got ", header.type_name());

  const uint8_t* buffer = bytes + 8 + header_length;
  uint64_t buffer_size = file_size - 8 - header_length;
  ParsedHeader result;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      result.metadata = read_metadata(entry, path);
      continue;
    }
    if (!entry.is_object()) fail(path, ": tensor '", name, "': entry must be an object");
    for (const auto& [key, value] : entry.items())
      if (key != "dtype" && key != "shape" && key != "data_offsets")
        fail(path, ": tensor '", name, "': unexpected key '", key, "'");
    if (!entry.contains("dtype") || !entry["dtype"].is_string())
      fail(path, ": tensor '", name, "': 'dtype' must be a string");
    if (!entry.contains("shape") || !entry.contains("data_offsets"))
      fail(path, ": tensor '", name, "': needs 'shape' and 'data_offsets'");
    TensorInfo info;
    info.name = name;
    info.dtype = parse_dtype(entry["dtype"].get<std::string>(), name, path);
    info.shape = read_shape(entry["shape"], name, path);
    auto [begin, end] = read_offsets(entry["data_offsets"], name, path);
    info.nbytes = checked_nbytes(info.shape, info.dtype, name, path);
    if (end - begin != info.nbytes)
      fail(path, ": tensor '", name, "': data_offsets [", begin, ", ", end, "] hold ", end - begin,
           " bytes but ", entry["dtype"].get<std::string>(), entry["shape"].dump(), " needs ",
           info.nbytes);
    if (end > buffer_size)
      fail(path, ": tensor '", name, "': data_offsets [", begin, ", ", end,
           "] run past the end of the data (", buffer_size, " bytes; truncated file?)");
    info.data = buffer + begin;
    result.tensors.push_back(std::move(info));
    ranges.push_back({begin, end});
  }
  // Offset order is the file's order (and the order Python's writer chose).
  std::vector<size_t> order(result.tensors.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return ranges[a] < ranges[b]; });
  check_tiling(order, ranges, result.tensors, buffer_size, path);
  std::vector<TensorInfo> in_order;
  for (size_t i : order) in_order.push_back(std::move(result.tensors[i]));
  result.tensors = std::move(in_order);
  return result;
}

}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, ": cannot open (", std::strerror(errno), ")");
  struct stat status;
  if (::fstat(fd, &status) != 0 || !S_ISREG(status.st_mode)) {
    ::close(fd);
    fail(path, ": not a regular file");
  }
  size_t size = size_t(status.st_size);
  if (size < 8) {
    ::close(fd);
    fail(path, ": file is ", size,
         " bytes; a safetensors file starts with an 8-byte header length");
  }
  void* mapping = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  int map_errno = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (mapping == MAP_FAILED) fail(path, ": mmap failed (", std::strerror(map_errno), ")");
  mapping_ = mapping;
  mapping_size_ = size;
  try {
    ParsedHeader header = parse_header(static_cast<const uint8_t*>(mapping), size, path);
    tensors_ = std::move(header.tensors);
    metadata_ = std::move(header.metadata);
    for (size_t i = 0; i < tensors_.size(); ++i) index_[tensors_[i].name] = i;
  } catch (...) {
    ::munmap(mapping_, mapping_size_);  // the destructor does not run for a throwing constructor
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_) ::munmap(mapping_, mapping_size_);
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto found = index_.find(name);
  return found == index_.end() ? nullptr : &tensors_[found->second];
}

namespace {

// model.safetensors.index.json: {"metadata": {...}, "weight_map": {tensor name: shard file}}.
std::map<std::string, std::string> read_weight_map(const std::string& index_path) {
  std::string text = read_file_bytes(index_path);
  ordered_json index = parse_json_strictly(text.data(), text.data() + text.size(), index_path);
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    fail(index_path, ": needs a 'weight_map' object of tensor name -> shard file");
  std::map<std::string, std::string> weight_map;
  for (const auto& [name, shard] : index["weight_map"].items()) {
    if (!shard.is_string())
      fail(index_path, ": weight_map entry '", name, "' must be a file name string");
    std::string file = shard.get<std::string>();
    if (file.empty() || file.find('/') != std::string::npos || file == "." || file == "..")
      fail(index_path, ": weight_map entry '", name, "' names '", file,
           "', which is not a file in the same directory");
    weight_map[name] = file;
  }
  return weight_map;
}

}  // namespace

SafetensorsSet::SafetensorsSet(const std::string& path) : SafetensorsSet(path, "") {}

SafetensorsSet::SafetensorsSet(const std::string& path, const std::string& excluded_prefix) {
  std::string index_path;
  std::string single_path;
  if (fs::is_directory(path)) {
    // The same preference as transformers: a single file wins over an index.
    if (fs::exists(fs::path(path) / kSingleFileName))
      single_path = fs::path(path) / kSingleFileName;
    else if (fs::exists(fs::path(path) / kIndexFileName))
      index_path = fs::path(path) / kIndexFileName;
    else
      fail(path, ": no ", kSingleFileName, " or ", kIndexFileName, " in this directory");
  } else if (path.ends_with(".index.json")) {
    index_path = path;
  } else {
    single_path = path;
  }
  auto keep = [&](const std::string& name) {
    return excluded_prefix.empty() || !name.starts_with(excluded_prefix);
  };

  if (!single_path.empty()) {
    files_.push_back(std::make_unique<SafetensorsFile>(single_path));
    for (const TensorInfo& tensor : files_.back()->tensors())
      if (keep(tensor.name)) by_name_[tensor.name] = &tensor;
    return;
  }
  // Tensors a shard holds but the index does not list are ignored, as transformers does.
  std::map<std::string, SafetensorsFile*> shards;
  fs::path directory = fs::path(index_path).parent_path();
  for (const auto& [name, shard_name] : read_weight_map(index_path)) {
    SafetensorsFile*& shard = shards[shard_name];
    if (!shard) {
      files_.push_back(std::make_unique<SafetensorsFile>(directory / shard_name));
      shard = files_.back().get();
    }
    const TensorInfo* tensor = shard->find(name);
    if (!tensor)
      fail(index_path, ": tensor '", name, "' is listed in ", shard_name, " but not stored there");
    if (keep(name)) by_name_[name] = tensor;
  }
}

const TensorInfo* SafetensorsSet::find(const std::string& name) const {
  auto found = by_name_.find(name);
  return found == by_name_.end() ? nullptr : found->second;
}

const TensorInfo& SafetensorsSet::get(const std::string& name) const {
  const TensorInfo* tensor = find(name);
  if (!tensor) {
    std::string where = files_.empty() ? std::string("weights") : files_.front()->path();
    fail(where, ": tensor '", name, "' not found");
  }
  return *tensor;
}

std::vector<const TensorInfo*> SafetensorsSet::tensors() const {
  std::vector<const TensorInfo*> result;
  for (const auto& [name, tensor] : by_name_) result.push_back(tensor);
  return result;
}

// ---------------------------------------------------------------------------------------------
// Writing

void write_file_atomically(const std::string& path, const std::vector<BytesToWrite>& pieces) {
  std::string temporary = path + ".tmp." + std::to_string(::getpid());
  std::FILE* file = std::fopen(temporary.c_str(), "wb");
  if (!file) fail(path, ": cannot create ", temporary, " (", std::strerror(errno), ")");
  auto abandon = [&](const char* what) {
    int saved_errno = errno;
    if (file) std::fclose(file);
    std::remove(temporary.c_str());
    fail(path, ": ", what, " failed (", std::strerror(saved_errno), "); nothing was written");
  };
  for (const BytesToWrite& piece : pieces)
    if (piece.size > 0 && std::fwrite(piece.data, 1, piece.size, file) != piece.size)
      abandon("writing");
  // Flush to disk before the rename, so a crash leaves the old file or the complete new one.
  if (std::fflush(file) != 0 || ::fsync(::fileno(file)) != 0) abandon("flushing");
  int close_result = std::fclose(file);
  file = nullptr;
  if (close_result != 0) abandon("closing");
  if (std::rename(temporary.c_str(), path.c_str()) != 0) abandon("renaming the temporary file");
}

namespace {

void check_tensors_to_write(const std::vector<TensorToWrite>& tensors, const std::string& path) {
  std::set<std::string> names;
  for (const TensorToWrite& tensor : tensors) {
    if (tensor.name.empty() || tensor.name == "__metadata__")
      fail(path, ": cannot write a tensor named '", tensor.name, "'");
    if (!names.insert(tensor.name).second)
      fail(path, ": tensor '", tensor.name, "' is given twice");
    for (int64_t dim : tensor.shape)
      if (dim < 0) fail(path, ": tensor '", tensor.name, "' has a negative dimension");
    if (!tensor.data && checked_nbytes(tensor.shape, tensor.dtype, tensor.name, path) > 0)
      fail(path, ": tensor '", tensor.name, "' has no data");
  }
}

}  // namespace

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       std::map<std::string, std::string> metadata) {
  check_tensors_to_write(tensors, path);
  metadata["format"] = "pt";
  std::vector<const TensorToWrite*> order;
  for (const TensorToWrite& tensor : tensors) order.push_back(&tensor);
  std::sort(order.begin(), order.end(), [](const TensorToWrite* a, const TensorToWrite* b) {
    return std::pair(write_order(a->dtype), a->name) < std::pair(write_order(b->dtype), b->name);
  });

  ordered_json header = ordered_json::object();
  header["__metadata__"] = ordered_json::object();
  for (const auto& [key, value] : metadata) header["__metadata__"][key] = value;
  std::vector<BytesToWrite> pieces(2);  // the length and the header text come first
  uint64_t offset = 0;
  for (const TensorToWrite* tensor : order) {
    size_t nbytes = checked_nbytes(tensor->shape, tensor->dtype, tensor->name, path);
    header[tensor->name] = {{"dtype", safetensors_dtype_name(tensor->dtype)},
                            {"shape", tensor->shape},
                            {"data_offsets", {offset, offset + nbytes}}};
    pieces.push_back({tensor->data, nbytes});
    offset += nbytes;
  }
  std::string header_text;
  try {
    header_text = header.dump();
  } catch (const nlohmann::json::exception& error) {
    fail(path, ": cannot write the header (", error.what(), ")");  // e.g. metadata not UTF-8
  }
  // Pad with spaces so the data buffer starts 8-byte aligned, as the reference writer does.
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  uint64_t header_length = header_text.size();
  pieces[0] = {&header_length, 8};
  pieces[1] = {header_text.data(), header_text.size()};
  write_file_atomically(path, pieces);
}

namespace {

// "model-00001-of-00003.safetensors", as transformers names shards.
bool is_shard_file_name(const std::string& name) {
  const std::string pattern = "model-#####-of-#####.safetensors";
  if (name.size() != pattern.size()) return false;
  for (size_t i = 0; i < name.size(); ++i)
    if (pattern[i] == '#' ? !std::isdigit((unsigned char)name[i]) : name[i] != pattern[i])
      return false;
  return true;
}

// Shard files of an earlier save that the new save does not overwrite would be loaded by
// mistake (a stale model.safetensors even wins over a new index), so they are removed.
void remove_stale_weight_files(const fs::path& directory, const std::set<std::string>& written) {
  for (const fs::directory_entry& entry : fs::directory_iterator(directory)) {
    std::string name = entry.path().filename().string();
    bool weight_file =
        name == kSingleFileName || name == kIndexFileName || is_shard_file_name(name);
    if (weight_file && !written.count(name)) fs::remove(entry.path());
  }
}

std::string shard_file_name(size_t shard, size_t count) {
  char name[64];
  std::snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors", shard + 1, count);
  return name;
}

}  // namespace

void write_sharded_safetensors(const std::string& directory,
                               const std::vector<TensorToWrite>& tensors, size_t max_shard_bytes) {
  if (max_shard_bytes == 0) fail(directory, ": the maximum shard size must be positive");
  check_tensors_to_write(tensors, directory);
  std::error_code error;
  fs::create_directories(directory, error);
  if (error) fail(directory, ": cannot create the directory (", error.message(), ")");

  // Greedy in the given order, like transformers: a tensor larger than a shard gets its own.
  std::vector<std::vector<TensorToWrite>> shards(1);
  size_t shard_bytes = 0, total_bytes = 0;
  for (const TensorToWrite& tensor : tensors) {
    size_t nbytes = checked_nbytes(tensor.shape, tensor.dtype, tensor.name, directory);
    if (!shards.back().empty() && shard_bytes + nbytes > max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(tensor);
    shard_bytes += nbytes;
    total_bytes += nbytes;
  }

  fs::path root(directory);
  std::set<std::string> written;
  if (shards.size() == 1) {
    write_safetensors(root / kSingleFileName, shards[0]);
    written.insert(kSingleFileName);
  } else {
    nlohmann::json weight_map = nlohmann::json::object();
    for (size_t i = 0; i < shards.size(); ++i) {
      std::string name = shard_file_name(i, shards.size());
      write_safetensors(root / name, shards[i]);
      written.insert(name);
      for (const TensorToWrite& tensor : shards[i]) weight_map[tensor.name] = name;
    }
    nlohmann::json index = {{"metadata", {{"total_size", total_bytes}}},
                            {"weight_map", weight_map}};
    // transformers writes the index with indent 2 and sorted keys; nlohmann::json sorts keys.
    std::string text = index.dump(2) + "\n";
    write_file_atomically(root / kIndexFileName, {{text.data(), text.size()}});
    written.insert(kIndexFileName);
  }
  remove_stale_weight_files(root, written);
}

}  // namespace cst
