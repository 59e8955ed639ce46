// Export: cst's PEFT adapter has exactly the layout PEFT itself writes (compared with the adapter
// PEFT saved for the fixture), and the merged model reproduces HF's adapter logits.
// tools/python/check_export.py loads both outputs in PEFT / transformers for the same check in
// Python; run it after changing the writers.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "model/lora.h"
#include "model/merge.h"
#include "model/model_file.h"
#include "model/safetensors.h"
#include "model/transformer.h"
#include "model/weights.h"
#include "tests/golden_support.h"
#include "tests/test_support.h"

namespace cst {
namespace {
namespace fs = std::filesystem;
using namespace testing_support;

const std::string kFixture = std::string(CST_SOURCE_DIR) + "/tests/fixtures/model/mistral_gqa_window";

nlohmann::json read_json(const fs::path& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

fs::path scratch_dir(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / ("cst_test_export_" + name);
  fs::remove_all(dir);
  return dir;
}

TEST(Export, AdapterHasPeftLayout) {
  ModelFile model(kFixture + "/hf");
  LoraAdapter adapter(model.config(), LoraAdapter::read_peft_config(kFixture + "/adapter"), Device::cpu);
  adapter.load_peft_weights(kFixture + "/adapter");
  const fs::path out = scratch_dir("adapter");
  adapter.save_peft(out.string(), "tiny-mistral");

  SafetensorsFile ours((out / "adapter_model.safetensors").string());
  SafetensorsFile peft(kFixture + "/adapter/adapter_model.safetensors");
  ASSERT_EQ(ours.tensors().size(), peft.tensors().size());
  EXPECT_EQ(ours.metadata().at("format"), "pt");
  for (const TensorInfo& expected : peft.tensors()) {
    const TensorInfo* actual = ours.find(expected.name);
    ASSERT_NE(actual, nullptr) << expected.name;
    EXPECT_EQ(actual->dtype, expected.dtype) << expected.name;
    EXPECT_EQ(actual->shape, expected.shape) << expected.name;
    ASSERT_EQ(actual->nbytes, expected.nbytes);
    EXPECT_EQ(std::memcmp(actual->data, expected.data, expected.nbytes), 0) << expected.name;
  }
  nlohmann::json ours_config = read_json(out / "adapter_config.json");
  nlohmann::json peft_config = read_json(kFixture + "/adapter/adapter_config.json");
  for (const char* key : {"peft_type", "task_type", "r", "lora_alpha", "use_rslora", "bias", "fan_in_fan_out", "use_dora"})
    EXPECT_EQ(ours_config[key], peft_config[key]) << key;
  auto sorted = [](nlohmann::json list) {
    std::vector<std::string> names = list.get<std::vector<std::string>>();
    std::sort(names.begin(), names.end());
    return names;
  };
  EXPECT_EQ(sorted(ours_config["target_modules"]), sorted(peft_config["target_modules"]));
}

// An adapter with a NaN would make every output NaN: loading it fails, naming file and tensor.
TEST(Export, AdapterWithANaNIsRefusedAsItLoads) {
  const fs::path damaged = scratch_dir("nan_adapter");
  const std::string name = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight";
  testing_support::copy_with_a_nan(kFixture + "/adapter", damaged, "adapter_model.safetensors", name);
  ModelFile model(kFixture + "/hf");
  LoraAdapter adapter(model.config(), LoraAdapter::read_peft_config(damaged.string()), Device::cpu);
  const std::string message = testing_support::error_of([&] { adapter.load_peft_weights(damaged.string()); });
  EXPECT_NE(message.find("adapter_model.safetensors: tensor '" + name + "' holds nan at index 0"), std::string::npos)
      << message;
}

TEST(Export, MergedModelMatchesHfAdapterLogits) {
  const fs::path out = scratch_dir("merged");
  write_merged_hf_directory(ModelFile(kFixture + "/hf"), kFixture + "/adapter", out.string(), size_t(64) << 10);
  EXPECT_TRUE(fs::exists(out / "model.safetensors.index.json")) << "64 KiB shards: the model is split";
  ModelFile merged(out.string());
  ModelWeights weights(merged, Device::cpu, DType::f32);
  Transformer transformer(merged.config(), weights, nullptr);

  SafetensorsFile golden(kFixture + "/golden.safetensors");
  PackedBatch batch = golden_batch(golden);
  std::vector<float> logits = transformer.logits(batch.spans(), false);
  const TensorInfo& logits_info = *golden.find("logits");
  const float* expected = reinterpret_cast<const float*>(logits_info.data);
  double worst = 0;
  for (size_t i = 0; i < logits.size(); ++i) worst = std::max(worst, std::abs(double(logits[i]) - expected[i]));
  // Merging adds B A to W in f32 once; the products are reordered relative to running the adapter,
  // so the logits move by rounding only (~1e-6); 1e-4 as in the model golden test.
  EXPECT_LE(worst, 1e-4);
}

}  // namespace
}  // namespace cst
