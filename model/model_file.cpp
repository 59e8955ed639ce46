// model.bin (one safetensors file holding config, tokenizer files and weights) and the
// conversions between it and a Hugging Face model directory.
#include "model/model_file.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <filesystem>
#include <sstream>
#include <vector>

#include "kernels/error.h"
#include "kernels/files.h"

namespace cst {

namespace {

namespace fs = std::filesystem;

constexpr const char* kFormatVersionKey = "cst.format_version";
constexpr const char* kFormatVersion = "1";
constexpr const char* kConfigJsonKey = "cst.config_json";
constexpr const char* kOwnTensorPrefix = "cst.";
constexpr const char* kTokenizerTensorPrefix = "cst.tokenizer.";

std::map<std::string, std::string> read_tokenizer_files(const fs::path& directory) {
  std::map<std::string, std::string> files;
  for (const char* name : kTokenizerFileNames)
    if (fs::exists(directory / name)) files[name] = read_file_bytes((directory / name).string());
  return files;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::ostringstream text;
  text << "[";
  for (size_t i = 0; i < shape.size(); ++i) text << (i ? ", " : "") << shape[i];
  text << "]";
  return text.str();
}

// Every tensor name of the architecture with the shape config.json implies ([out, in] linears).
std::vector<std::pair<std::string, std::vector<int64_t>>> expected_tensors(const ModelConfig& c) {
  int64_t hidden = c.hidden_size, query_width = int64_t(c.num_heads) * c.head_dim,
          kv_width = int64_t(c.num_kv_heads) * c.head_dim, mlp_width = c.intermediate_size;
  std::vector<std::pair<std::string, std::vector<int64_t>>> tensors = {
      {"model.embed_tokens.weight", {c.vocab_size, hidden}},
      {"model.norm.weight", {hidden}},
  };
  if (!c.tie_word_embeddings) tensors.push_back({"lm_head.weight", {c.vocab_size, hidden}});
  for (int layer = 0; layer < c.num_layers; ++layer) {
    std::string prefix = "model.layers." + std::to_string(layer) + ".";
    tensors.push_back({prefix + "input_layernorm.weight", {hidden}});
    tensors.push_back({prefix + "post_attention_layernorm.weight", {hidden}});
    tensors.push_back({prefix + "self_attn.q_proj.weight", {query_width, hidden}});
    tensors.push_back({prefix + "self_attn.k_proj.weight", {kv_width, hidden}});
    tensors.push_back({prefix + "self_attn.v_proj.weight", {kv_width, hidden}});
    tensors.push_back({prefix + "self_attn.o_proj.weight", {hidden, query_width}});
    tensors.push_back({prefix + "mlp.gate_proj.weight", {mlp_width, hidden}});
    tensors.push_back({prefix + "mlp.up_proj.weight", {mlp_width, hidden}});
    tensors.push_back({prefix + "mlp.down_proj.weight", {hidden, mlp_width}});
  }
  return tensors;
}

// "model.layers.2.x" before "model.layers.10.x": digit runs compare as numbers, so shards hold
// whole consecutive layers, as in checkpoints saved by transformers.
bool natural_less(const std::string& a, const std::string& b) {
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    if (std::isdigit((unsigned char)a[i]) && std::isdigit((unsigned char)b[j])) {
      size_t a_end = i, b_end = j;
      while (a_end < a.size() && std::isdigit((unsigned char)a[a_end])) ++a_end;
      while (b_end < b.size() && std::isdigit((unsigned char)b[b_end])) ++b_end;
      std::string_view a_digits(a.data() + i, a_end - i), b_digits(b.data() + j, b_end - j);
      if (a_digits.size() != b_digits.size()) return a_digits.size() < b_digits.size();
      if (a_digits != b_digits) return a_digits < b_digits;
      i = a_end;
      j = b_end;
    } else {
      if (a[i] != b[j]) return a[i] < b[j];
      ++i;
      ++j;
    }
  }
  return a.size() - i < b.size() - j;
}

std::vector<TensorToWrite> weights_to_write(const SafetensorsSet& weights) {
  std::vector<TensorToWrite> tensors;
  for (const TensorInfo* tensor : weights.tensors())
    tensors.push_back({tensor->name, tensor->dtype, tensor->shape, tensor->data});
  std::sort(tensors.begin(), tensors.end(), [](const TensorToWrite& a, const TensorToWrite& b) {
    return natural_less(a.name, b.name);
  });
  return tensors;
}

void write_text_file(const fs::path& path, const std::string& bytes) {
  write_file_atomically(path, {{bytes.data(), bytes.size()}});
}

}  // namespace

void check_weights_match_config(const ModelConfig& config, const SafetensorsSet& weights,
                                const std::string& where) {
  for (const auto& [name, shape] : expected_tensors(config)) {
    const TensorInfo* tensor = weights.find(name);
    if (!tensor) fail(where, ": tensor '", name, "' is missing");
    if (tensor->shape != shape)
      fail(where, ": tensor '", name, "' has shape ", shape_text(tensor->shape),
           " but config.json implies ", shape_text(shape));
    if (tensor->dtype != DType::f32 && tensor->dtype != DType::bf16 && tensor->dtype != DType::f16)
      fail(where, ": tensor '", name, "' has dtype ", safetensors_dtype_name(tensor->dtype),
           "; weights must be F32, BF16 or F16");
  }
}

ModelFile::ModelFile(const std::string& path) {
  if (fs::is_directory(path)) {
    fs::path directory(path);
    if (!fs::exists(directory / "config.json"))
      fail(path, ": no config.json (expected a Hugging Face model directory)");
    config_ = load_model_config(directory / "config.json");
    weights_ = std::make_unique<SafetensorsSet>(path);
    tokenizer_files_ = read_tokenizer_files(directory);
  } else {
    SafetensorsFile file(path);
    const auto& metadata = file.metadata();
    auto version = metadata.find(kFormatVersionKey);
    if (version == metadata.end())
      fail(path, ": not a cst model.bin (no '", kFormatVersionKey,
           "' in its metadata); make one with: cst_convert <hf_model_dir> model.bin");
    if (version->second != kFormatVersion)
      fail(path, ": model.bin format version '", version->second, "'; this cst reads version ",
           kFormatVersion);
    auto config_text = metadata.find(kConfigJsonKey);
    if (config_text == metadata.end()) fail(path, ": metadata has no '", kConfigJsonKey, "'");
    std::string where = path + " (" + kConfigJsonKey + ")";
    auto config_json = nlohmann::json::parse(config_text->second, nullptr, false);
    if (config_json.is_discarded()) fail(where, ": not valid JSON");
    config_ = parse_model_config(config_json, where);
    for (const TensorInfo& tensor : file.tensors()) {
      if (!tensor.name.starts_with(kTokenizerTensorPrefix)) continue;
      if (tensor.dtype != DType::u8 || tensor.shape.size() != 1)
        fail(path, ": tensor '", tensor.name, "' must be a U8 vector of file bytes");
      const std::string name = tensor.name.substr(std::string(kTokenizerTensorPrefix).size());
      // Only known file names: they become paths when the model is exported.
      if (std::find(std::begin(kTokenizerFileNames), std::end(kTokenizerFileNames), name) == std::end(kTokenizerFileNames))
        fail(path, ": tensor '", tensor.name, "' carries an unknown file '", name, "'");
      tokenizer_files_[name] = std::string(reinterpret_cast<const char*>(tensor.data), tensor.nbytes);
    }
    weights_ = std::make_unique<SafetensorsSet>(path, kOwnTensorPrefix);
  }
  check_weights_match_config(config_, *weights_, path);
}

void convert_hf_directory(const std::string& hf_directory, const std::string& model_bin_path) {
  if (!fs::is_directory(hf_directory))
    fail(hf_directory, ": not a directory (expected a Hugging Face model directory)");
  ModelFile model(hf_directory);  // validates config, weights and their agreement
  // The config text is stored as written, so model.bin records exactly what came in.
  std::string config_text = read_file_bytes((fs::path(hf_directory) / "config.json").string());

  std::vector<TensorToWrite> tensors = weights_to_write(model.weights());
  for (const auto& [name, bytes] : model.tokenizer_files())
    tensors.push_back(
        {kTokenizerTensorPrefix + name, DType::u8, {int64_t(bytes.size())}, bytes.data()});
  write_safetensors(model_bin_path, tensors,
                    {{kConfigJsonKey, config_text}, {kFormatVersionKey, kFormatVersion}});
}

void export_hf_directory(const ModelFile& model, const std::string& hf_directory,
                         size_t max_shard_bytes) {
  fs::path directory(hf_directory);
  std::error_code error;
  fs::create_directories(directory, error);
  if (error) fail(hf_directory, ": cannot create the directory (", error.message(), ")");
  // Weights first: if they fail, no config.json announces a model that is not there.
  write_sharded_safetensors(hf_directory, weights_to_write(model.weights()), max_shard_bytes);
  for (const auto& [name, bytes] : model.tokenizer_files())
    write_text_file(directory / name, bytes);
  // transformers writes config.json with indent 2 and sorted keys; nlohmann::json sorts keys.
  write_text_file(directory / "config.json", model_config_to_json(model.config()).dump(2) + "\n");
}

size_t parse_byte_size(const std::string& text, const std::string& what) {
  auto bad = [&]() {
    fail(what, ": '", text, "' is not a size like 5GB, 500MB, 2GiB or a byte count");
  };
  uint64_t count = 0;
  auto [unit_begin, error] = std::from_chars(text.data(), text.data() + text.size(), count);
  if (error != std::errc() || count == 0) bad();
  std::string unit(unit_begin, text.data() + text.size());
  std::transform(unit.begin(), unit.end(), unit.begin(),
                 [](unsigned char c) { return std::toupper(c); });
  static const std::vector<std::pair<std::string, uint64_t>> units = {{"", 1},
                                                                      {"B", 1},
                                                                      {"KB", 1000},
                                                                      {"MB", 1000'000},
                                                                      {"GB", 1000'000'000},
                                                                      {"TB", 1000'000'000'000},
                                                                      {"KIB", 1ull << 10},
                                                                      {"MIB", 1ull << 20},
                                                                      {"GIB", 1ull << 30},
                                                                      {"TIB", 1ull << 40}};
  for (const auto& [name, scale] : units) {
    if (unit != name) continue;
    uint64_t bytes;
    if (__builtin_mul_overflow(count, scale, &bytes)) bad();
    return size_t(bytes);
  }
  bad();
  return 0;
}

}  // namespace cst
