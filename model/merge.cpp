#include "model/merge.h"

#include <filesystem>

#include "kernels/files.h"
#include "kernels/gemm.h"
#include "model/lora.h"

namespace cst {
namespace fs = std::filesystem;

void write_merged_hf_directory(const ModelFile& model, const std::string& adapter_dir,
                               const std::string& output_dir, size_t max_shard_bytes) {
  const ModelConfig& config = model.config();
  LoraAdapter adapter(config, LoraAdapter::read_peft_config(adapter_dir), Device::cpu);
  adapter.load_peft_weights(adapter_dir);
  const float scaling = adapter.config().scaling();

  // Merged tensors live here, in the checkpoint's dtype; the others are written from the mapping.
  std::vector<OwnedTensor> merged;
  std::map<std::string, const Tensor*> replaced;
  merged.reserve(size_t(config.num_layers) * kNumProjections);
  for (int layer = 0; layer < config.num_layers; ++layer)
    for (Projection projection : kAllProjections) {
      const LoraPair* pair = adapter.pair(layer, projection);
      if (!pair) continue;
      const std::string name = "model.layers." + std::to_string(layer) + "." +
                               projection_parent(projection) + "." + projection_name(projection) + ".weight";
      const TensorInfo& info = model.weights().get(name);
      OwnedTensor weight(info.shape, DType::f32, Device::cpu);
      copy_tensor(weight.view, make_view(const_cast<uint8_t*>(info.data), info.shape, info.dtype, Device::cpu));
      matmul(weight.view, pair->b.view, pair->a.view, false, false, scaling, 1.0f);  // W += s B A
      merged.emplace_back(info.shape, info.dtype, Device::cpu);
      copy_tensor(merged.back().view, weight.view);
      replaced[name] = &merged.back().view;
    }

  std::vector<TensorToWrite> tensors;
  for (const TensorInfo* info : model.weights().tensors()) {
    auto found = replaced.find(info->name);
    const void* data = found != replaced.end() ? found->second->data : info->data;
    tensors.push_back({info->name, info->dtype, info->shape, data});
  }
  // Everything goes into a staging directory renamed into place at the end, so a failure never
  // leaves a half-written model under the requested name.
  if (fs::exists(output_dir) && !fs::is_empty(output_dir))
    fail("output directory ", output_dir, " already exists and is not empty");
  const fs::path staging = fs::path(output_dir).string() + ".tmp";
  fs::remove_all(staging);
  try {
    fs::create_directories(staging);
    write_sharded_safetensors(staging.string(), tensors, max_shard_bytes);
    write_file_bytes((staging / "config.json").string(),
                     model_config_to_json(config).dump(2) + "\n");
    for (const auto& [name, bytes] : model.tokenizer_files())
      write_file_bytes((staging / name).string(), bytes);
    fs::remove_all(output_dir);  // empty, if it exists
    fs::rename(staging, output_dir);
  } catch (...) {
    fs::remove_all(staging);
    throw;
  }
}

void write_merged_model_bin(const ModelFile& model, const std::string& adapter_dir,
                            const std::string& model_bin_path) {
  const fs::path staging = model_bin_path + ".merge-tmp";
  fs::remove_all(staging);
  try {
    write_merged_hf_directory(model, adapter_dir, staging.string(), size_t(1) << 40);
    convert_hf_directory(staging.string(), model_bin_path);
  } catch (...) {
    fs::remove_all(staging);
    throw;
  }
  fs::remove_all(staging);
}

}  // namespace cst
