// model/model_file: the tiny Mistral checkpoint transformers saved (tests/fixtures/safetensors/
// tiny_hf, from tools/python/make_safetensors_fixtures.py) goes HF dir -> model.bin -> HF dir
// and comes back with identical tensor bytes, tokenizer files and config.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "kernels/error.h"
#include "model/model_file.h"
#include "tests/test_support.h"

namespace cst {
namespace {
using namespace testing_support;

namespace fs = std::filesystem;
using nlohmann::json;

const std::string kTinyHf = std::string(CST_SOURCE_DIR) + "/tests/fixtures/safetensors/tiny_hf";

void expect_error_mentions(const std::function<void()>& action, const std::string& fragment) {
  try {
    action();
    ADD_FAILURE() << "no error; expected one mentioning '" << fragment << "'";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find(fragment), std::string::npos) << error.what();
  }
}

void expect_same_tensors(const SafetensorsSet& expected, const SafetensorsSet& actual) {
  ASSERT_EQ(actual.tensors().size(), expected.tensors().size());
  for (const TensorInfo* tensor : expected.tensors()) {
    SCOPED_TRACE(tensor->name);
    const TensorInfo* copy = actual.find(tensor->name);
    ASSERT_NE(copy, nullptr);
    EXPECT_EQ(copy->dtype, tensor->dtype);
    EXPECT_EQ(copy->shape, tensor->shape);
    ASSERT_EQ(copy->nbytes, tensor->nbytes);
    EXPECT_EQ(std::memcmp(copy->data, tensor->data, tensor->nbytes), 0);
  }
}

TEST(ModelFile, OpensHfDirectory) {
  ModelFile model(kTinyHf);
  EXPECT_EQ(model.config().architecture, "MistralForCausalLM");
  EXPECT_EQ(model.config().vocab_size, 102);
  EXPECT_EQ(model.weights().tensors().size(), 2u * 9 + 3);
  std::vector<std::string> names;
  for (const auto& [name, bytes] : model.tokenizer_files()) {
    names.push_back(name);
    EXPECT_EQ(bytes, read_bytes(kTinyHf + "/" + name)) << name;
  }
  EXPECT_EQ(names, (std::vector<std::string>{"added_tokens.json", "generation_config.json",
                                             "special_tokens_map.json", "tokenizer.json",
                                             "tokenizer.model", "tokenizer_config.json"}));
}

TEST(ModelFile, RoundTripThroughModelBin) {
  std::string directory = current_test_dir();
  std::string model_bin = directory + "/model.bin";
  convert_hf_directory(kTinyHf, model_bin);

  ModelFile original(kTinyHf);
  ModelFile converted(model_bin);
  EXPECT_EQ(converted.config().original, original.config().original);
  EXPECT_EQ(converted.tokenizer_files(), original.tokenizer_files());
  expect_same_tensors(original.weights(), converted.weights());
  // model.bin is a plain safetensors file that carries the config text as written.
  SafetensorsFile raw(model_bin);
  EXPECT_EQ(raw.metadata().at("cst.config_json"), read_bytes(kTinyHf + "/config.json"));
  EXPECT_EQ(raw.metadata().at("cst.format_version"), "1");
  EXPECT_EQ(raw.metadata().at("format"), "pt");
  EXPECT_NE(raw.find("cst.tokenizer.tokenizer.model"), nullptr);

  std::string exported = directory + "/hf";
  export_hf_directory(converted, exported, 30'000);  // small shards: the tiny model is ~50 KB
  EXPECT_TRUE(fs::exists(exported + "/model.safetensors.index.json"));
  ModelFile back(exported);
  expect_same_tensors(original.weights(), back.weights());
  for (const char* name : kTokenizerFileNames)
    EXPECT_EQ(read_bytes(exported + "/" + name), read_bytes(kTinyHf + "/" + name)) << name;
  // transformers wrote config.json with sorted keys and indent 2; so does the export.
  EXPECT_EQ(read_bytes(exported + "/config.json"), read_bytes(kTinyHf + "/config.json"));

  // Exporting again into the same directory as one file leaves no stale shards behind.
  export_hf_directory(converted, exported, size_t(1) << 30);
  EXPECT_FALSE(fs::exists(exported + "/model.safetensors.index.json"));
  expect_same_tensors(original.weights(), ModelFile(exported).weights());
}

TEST(ModelFile, MissingConfigOrWeightsIsAClearError) {
  std::string directory = current_test_dir();
  fs::copy(kTinyHf, directory + "/no_config", fs::copy_options::recursive);
  fs::remove(directory + "/no_config/config.json");
  expect_error_mentions(
      [&] { convert_hf_directory(directory + "/no_config", directory + "/m.bin"); },
      "no config.json");
  fs::create_directory(directory + "/no_weights");
  fs::copy_file(kTinyHf + "/config.json", directory + "/no_weights/config.json");
  expect_error_mentions(
      [&] { convert_hf_directory(directory + "/no_weights", directory + "/m.bin"); },
      "model.safetensors");
  expect_error_mentions([&] { convert_hf_directory(directory + "/absent", directory + "/m.bin"); },
                        "not a directory");
  EXPECT_FALSE(fs::exists(directory + "/m.bin"));
}

TEST(ModelFile, RefusesSafetensorsThatIsNotModelBin) {
  std::string plain =
      std::string(CST_SOURCE_DIR) + "/tests/fixtures/safetensors/dtypes.safetensors";
  expect_error_mentions([&] { ModelFile model(plain); }, "not a cst model.bin");
}

TEST(ModelFile, RefusesWeightsThatDisagreeWithConfig) {
  std::string directory = current_test_dir();
  fs::copy(kTinyHf, directory, fs::copy_options::recursive);
  json config = json::parse(read_bytes(directory + "/config.json"));
  config["intermediate_size"] = 96;
  std::ofstream(directory + "/config.json") << config.dump(2);
  expect_error_mentions(
      [&] { ModelFile model(directory); },
      "'model.layers.0.mlp.gate_proj.weight' has shape [64, 32] but config.json implies [96, 32]");
  config["intermediate_size"] = 64;
  config["num_hidden_layers"] = 3;
  std::ofstream(directory + "/config.json") << config.dump(2);
  expect_error_mentions([&] { ModelFile model(directory); }, "'model.layers.2.");
}

TEST(ModelFile, ParsesShardSizesLikeTransformers) {
  EXPECT_EQ(parse_byte_size("5GB", "--max_shard_size"), 5'000'000'000u);
  EXPECT_EQ(parse_byte_size("2GiB", "--max_shard_size"), size_t(2) << 30);
  EXPECT_EQ(parse_byte_size("500mb", "--max_shard_size"), 500'000'000u);
  EXPECT_EQ(parse_byte_size("64KiB", "--max_shard_size"), 65536u);
  EXPECT_EQ(parse_byte_size("12345", "--max_shard_size"), 12345u);
  for (const char* bad : {"", "GB", "0", "5XB", "-5GB", "1.5GB", "99999999999999999999TB"})
    expect_error_mentions([&] { parse_byte_size(bad, "--max_shard_size"); }, "--max_shard_size");
}

}  // namespace
}  // namespace cst

namespace cst {
namespace {

// File names stored in a model.bin become paths on export: unknown names are refused on open.
TEST(ModelFile, RefusesUnknownCarriedFileNames) {
  const std::string model_bin = (fs::temp_directory_path() / "cst_test_bad_names.bin").string();
  ModelFile source(kTinyHf);
  std::vector<TensorToWrite> tensors;
  for (const TensorInfo* info : source.weights().tensors())
    tensors.push_back({info->name, info->dtype, info->shape, info->data});
  const std::string evil = "pwned";
  tensors.push_back({"cst.tokenizer.../evil.txt", DType::u8, {int64_t(evil.size())}, evil.data()});
  write_safetensors(model_bin, tensors,
                    {{"cst.config_json", read_bytes(kTinyHf + "/config.json")}, {"cst.format_version", "1"}});
  EXPECT_TRUE(contains(error_of([&] { ModelFile opened(model_bin); }), "unknown file"));
}

}  // namespace
}  // namespace cst
