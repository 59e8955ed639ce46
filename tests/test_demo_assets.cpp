// The demo's assets: the dataset's splits and answers, the tokenizer trained on it, the tiny model.
// The generated config.json is compared with the one transformers writes for the same values
// (tests/fixtures/demo/mistral_config.json, from tools/python/make_demo_fixtures.py); the rest
// checks properties the demo relies on, on assets generated once for the whole suite.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "data/chat_template.h"
#include "data/pair_tokenizer.h"
#include "data/tokenizer.h"
#include "model/model_file.h"
#include "train/demo_assets.h"

namespace {

namespace fs = std::filesystem;
using cst::demo::DemoRow;

constexpr uint64_t kSeed = 42;

std::string read_file(const fs::path& path) {
  std::ifstream file(path, std::ios::binary);
  EXPECT_TRUE(file.good()) << "cannot open " << path;
  std::ostringstream bytes;
  bytes << file.rdbuf();
  return bytes.str();
}

int count_words(const std::string& text) {
  std::istringstream words(text);
  int count = 0;
  for (std::string word; words >> word;) count++;
  return count;
}

bool starts_with(const std::string& text, const std::string& prefix) {
  return text.compare(0, prefix.size(), prefix) == 0;
}

std::vector<const DemoRow*> all_rows(const cst::demo::DemoDataset& dataset) {
  std::vector<const DemoRow*> rows;
  for (const auto* split : {&dataset.train, &dataset.sft, &dataset.heldout})
    for (const DemoRow& row : *split) rows.push_back(&row);
  return rows;
}

// Assets for seed 42, written once: the suite reads them from many angles.
class DemoAssets : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new fs::path(fs::temp_directory_path() /
                         ("cst_test_demo_assets_" + std::to_string(getpid())));
    fs::remove_all(*root_);
    files_ = new cst::demo::DemoFiles(cst::demo::write_demo_assets((*root_ / "a").string(), kSeed));
    dataset_ = new cst::demo::DemoDataset(cst::demo::make_demo_dataset(kSeed));
  }
  static void TearDownTestSuite() {
    fs::remove_all(*root_);
    delete files_;
    delete dataset_;
    delete root_;
  }
  static cst::Tokenizer tokenizer() {
    return cst::Tokenizer(cst::ModelFile(files_->model_bin).tokenizer_files());
  }

  static fs::path* root_;
  static cst::demo::DemoFiles* files_;
  static cst::demo::DemoDataset* dataset_;
};
fs::path* DemoAssets::root_ = nullptr;
cst::demo::DemoFiles* DemoAssets::files_ = nullptr;
cst::demo::DemoDataset* DemoAssets::dataset_ = nullptr;

TEST_F(DemoAssets, SameSeedGivesIdenticalFilesAndAnotherSeedDoesNot) {
  cst::demo::DemoFiles again = cst::demo::write_demo_assets((*root_ / "b").string(), kSeed);
  // Every file, the trained tokenizer.model included: sentencepiece training is deterministic.
  int compared = 0;
  for (const auto& entry : fs::recursive_directory_iterator(*root_ / "a")) {
    if (!entry.is_regular_file()) continue;
    fs::path twin = *root_ / "b" / fs::relative(entry.path(), *root_ / "a");
    EXPECT_EQ(read_file(entry.path()), read_file(twin)) << "differs: " << twin;
    compared++;
  }
  EXPECT_EQ(compared, 8);  // 3 jsonl, model.bin, 4 in hf_model

  cst::demo::DemoFiles other = cst::demo::write_demo_assets((*root_ / "c").string(), kSeed + 1);
  EXPECT_NE(read_file(files_->train_jsonl), read_file(other.train_jsonl));
  EXPECT_NE(read_file(files_->hf_directory + "/model.safetensors"),
            read_file(other.hf_directory + "/model.safetensors"));
}

TEST_F(DemoAssets, JsonlFilesHoldTheDatasetRows) {
  auto check_file = [](const std::string& path, const std::vector<DemoRow>& expected) {
    std::istringstream lines(read_file(path));
    size_t index = 0;
    for (std::string line; std::getline(lines, line); index++) {
      nlohmann::json row = nlohmann::json::parse(line);
      ASSERT_LT(index, expected.size()) << path;
      EXPECT_EQ(row.size(), 3u) << path << " line " << index;
      EXPECT_EQ(row.at("prompt"), expected[index].prompt);
      EXPECT_EQ(row.at("chosen"), expected[index].chosen);
      EXPECT_EQ(row.at("rejected"), expected[index].rejected);
    }
    EXPECT_EQ(index, expected.size()) << path;
  };
  check_file(files_->train_jsonl, dataset_->train);
  check_file(files_->heldout_jsonl, dataset_->heldout);
  check_file(files_->sft_jsonl, dataset_->sft);
  EXPECT_EQ(dataset_->train.size(), size_t(cst::demo::kTrainRows));
  EXPECT_EQ(dataset_->heldout.size(), size_t(cst::demo::kHeldoutRows));
  EXPECT_EQ(dataset_->sft.size(), size_t(cst::demo::kSftRows));
}

TEST_F(DemoAssets, HeldoutRequestsShareNothingWithTraining) {
  std::set<std::string> training_prompts;
  for (const auto* split : {&dataset_->train, &dataset_->sft})
    for (const DemoRow& row : *split) training_prompts.insert(row.prompt);
  // Every request appears once across train and sft.
  EXPECT_EQ(training_prompts.size(), dataset_->train.size() + dataset_->sft.size());

  std::vector<std::string> objects = cst::demo::heldout_objects();
  std::set<std::string> heldout_prompts;
  for (const DemoRow& row : dataset_->heldout) {
    heldout_prompts.insert(row.prompt);
    EXPECT_FALSE(training_prompts.count(row.prompt)) << row.prompt;
    int objects_named = 0;
    for (const std::string& object : objects) objects_named += row.prompt.find(object) != std::string::npos;
    EXPECT_EQ(objects_named, 1) << "held-out request should name one held-out object: " << row.prompt;
  }
  EXPECT_EQ(heldout_prompts.size(), dataset_->heldout.size());

  // Not only the requests: no training text mentions a held-out object at all.
  for (const auto* split : {&dataset_->train, &dataset_->sft})
    for (const DemoRow& row : *split)
      for (const std::string& object : objects)
        for (const std::string* text : {&row.prompt, &row.chosen, &row.rejected})
          EXPECT_EQ(text->find(object), std::string::npos) << object << " in " << *text;
}

TEST_F(DemoAssets, AnswersAreShortRequestSpecificAndOfTheRightStyle) {
  for (const DemoRow* row : all_rows(*dataset_)) {
    EXPECT_TRUE(starts_with(row->chosen, "I'm sorry, but I can't")) << row->chosen;
    EXPECT_TRUE(starts_with(row->rejected, "Sure!")) << row->rejected;
    for (const std::string* answer : {&row->chosen, &row->rejected}) {
      int words = count_words(*answer);
      EXPECT_GE(words, 10) << *answer;
      EXPECT_LE(words, 40) << *answer;
    }
  }
  // Request-specific: both answers repeat the held-out object the request names.
  for (const DemoRow& row : dataset_->heldout) {
    for (const std::string& object : cst::demo::heldout_objects()) {
      if (row.prompt.find(object) == std::string::npos) continue;
      EXPECT_NE(row.chosen.find(object), std::string::npos) << row.chosen;
      EXPECT_NE(row.rejected.find(object), std::string::npos) << row.rejected;
    }
  }
}

TEST_F(DemoAssets, TokenizerIsChatmlWithTheLlamaConventions) {
  cst::Tokenizer tokenizer = DemoAssets::tokenizer();
  const int pieces = cst::demo::kSentencepieceVocab;
  EXPECT_EQ(tokenizer.vocab_size(), pieces + 2);
  EXPECT_EQ(tokenizer.token_id("<unk>"), 0);
  EXPECT_EQ(tokenizer.bos_id(), 1);
  EXPECT_EQ(tokenizer.token_id("</s>"), 2);
  EXPECT_EQ(tokenizer.token_id("<0x00>"), 3);  // byte fallback pieces follow the specials
  EXPECT_EQ(tokenizer.token_id("<|im_end|>"), pieces);
  EXPECT_EQ(tokenizer.token_id("<|im_start|>"), pieces + 1);
  EXPECT_EQ(tokenizer.eos_id(), pieces);
  EXPECT_EQ(tokenizer.pad_id(), pieces);
  EXPECT_TRUE(tokenizer.legacy());
  // OpenHermes-2.5's template, as recorded from the real tokenizer_config.json.
  std::string chatml = read_file(fs::path(CST_SOURCE_DIR) / "tests/fixtures/tokenizer/chat_templates/chatml.jinja");
  EXPECT_EQ(tokenizer.chat_template_source(), chatml);
  EXPECT_EQ(cst::detect_chat_template(tokenizer.chat_template_source()).kind,
            cst::ChatTemplateKind::chatml);
}

TEST_F(DemoAssets, TokenizerRoundTripsTheCorpusWithoutByteFallback) {
  cst::Tokenizer tokenizer = DemoAssets::tokenizer();
  int64_t tokens = 0, words = 0;
  for (const std::string& text : cst::demo::tokenizer_corpus(*dataset_)) {
    std::vector<int32_t> ids = tokenizer.encode(text);
    ASSERT_EQ(tokenizer.decode(ids), text);
    // Every character of the corpus has a piece: training covered it (character_coverage 1).
    for (int32_t id : ids) ASSERT_FALSE(tokenizer.is_byte(id)) << "byte piece in: " << text;
    tokens += int64_t(ids.size());
    words += count_words(text);
  }
  // The merges did their job: well under two tokens a word (characters alone would be ~6).
  EXPECT_LT(double(tokens) / double(words), 2.0) << tokens << " tokens for " << words << " words";
}

TEST(DemoTokenizer, EncodesLikeTransformers) {
  // A demo tokenizer (seed 42) and the ids AutoTokenizer gives for ChatML-rendered demo rows and a
  // few texts the demo never produces (tools/python/make_demo_fixtures.py --golden).
  fs::path fixtures = fs::path(CST_SOURCE_DIR) / "tests/fixtures/demo";
  cst::Tokenizer tokenizer = cst::Tokenizer::from_directory((fixtures / "tokenizer").string());
  nlohmann::json golden = nlohmann::json::parse(read_file(fixtures / "encode_golden.json"));
  const auto& texts = golden.at("texts");
  ASSERT_EQ(texts.size(), golden.at("ids").size());
  ASSERT_GT(texts.size(), 100u);
  for (size_t i = 0; i < texts.size(); i++) {
    std::string text = texts[i].get<std::string>();
    ASSERT_EQ(tokenizer.encode(text), golden.at("ids")[i].get<std::vector<int32_t>>())
        << "text " << i << ": " << text;
  }
}

TEST_F(DemoAssets, EveryCstPairFitsIn128Tokens) {
  cst::Tokenizer tokenizer = DemoAssets::tokenizer();
  cst::PreferenceOptions preference_options;
  preference_options.columns.system = "";
  preference_options.system_prompts = {cst::demo::kHarmlessSystem, cst::demo::kUncensoredSystem};
  cst::TokenizeOptions tokenize_options;
  tokenize_options.max_length = 128;
  tokenize_options.max_prompt_length = 96;
  for (const std::string& path : {files_->train_jsonl, files_->heldout_jsonl, files_->sft_jsonl}) {
    cst::PreferenceData data = cst::load_preference_data(
        path, tokenizer, cst::chat_template_by_name("chatml"), preference_options, tokenize_options);
    // Both system prompts, each pair once: the trainer's CST path over this file.
    EXPECT_EQ(data.stats.pairs, 2 * data.stats.rows) << path;
    EXPECT_EQ(data.stats.truncated_pairs, 0) << path;
    EXPECT_LE(data.stats.longest_sequence, 128) << path;
    RecordProperty("longest_sequence", std::to_string(data.stats.longest_sequence));
  }
}

TEST_F(DemoAssets, ModelLoadsWithTheRightShapesAndHfInitialisation) {
  cst::ModelFile model(files_->model_bin);
  const cst::ModelConfig& config = model.config();
  const int vocab = cst::demo::kSentencepieceVocab + 2;
  EXPECT_EQ(config.architecture, "MistralForCausalLM");
  EXPECT_EQ(config.vocab_size, vocab);
  EXPECT_EQ(config.hidden_size, 96);
  EXPECT_EQ(config.intermediate_size, 256);
  EXPECT_EQ(config.num_layers, 4);
  EXPECT_EQ(config.num_heads, 4);
  EXPECT_EQ(config.num_kv_heads, 2);
  EXPECT_EQ(config.head_dim, 24);
  EXPECT_EQ(config.sliding_window, 0);
  EXPECT_FALSE(config.tie_word_embeddings);
  EXPECT_EQ(config.bos_token_id, 1);
  EXPECT_EQ(config.eos_token_id, cst::demo::kSentencepieceVocab);  // <|im_end|>
  cst::check_weights_match_config(config, model.weights(), files_->model_bin);
  EXPECT_EQ(model.weights().get("lm_head.weight").shape, (std::vector<int64_t>{vocab, 96}));
  EXPECT_EQ(model.weights().get("model.layers.3.self_attn.k_proj.weight").shape,
            (std::vector<int64_t>{48, 96}));
  EXPECT_EQ(model.tokenizer_files().count("tokenizer.model"), 1u);
  EXPECT_EQ(model.tokenizer_files().count("tokenizer_config.json"), 1u);

  // Norms are ones; every other tensor is N(0, 0.02^2). With n values the sample mean has standard
  // error 0.02 / sqrt(n) and the sample std about 0.02 / sqrt(2n); allow 5 standard errors
  // (n >= 4608, so at most 0.0015 on the mean and 0.001 on the std).
  for (const cst::TensorInfo* tensor : model.weights().tensors()) {
    ASSERT_EQ(tensor->dtype, cst::DType::f32) << tensor->name;
    const float* values = reinterpret_cast<const float*>(tensor->data);
    int64_t count = tensor->numel();
    if (tensor->name.ends_with("norm.weight")) {
      for (int64_t i = 0; i < count; i++) ASSERT_EQ(values[i], 1.0f) << tensor->name;
      continue;
    }
    double sum = 0, sum_squares = 0;
    for (int64_t i = 0; i < count; i++) {
      sum += values[i];
      sum_squares += double(values[i]) * values[i];
    }
    double mean = sum / double(count);
    double std = std::sqrt(sum_squares / double(count) - mean * mean);
    EXPECT_LT(std::abs(mean), 5 * 0.02 / std::sqrt(double(count))) << tensor->name;
    EXPECT_LT(std::abs(std - 0.02), 5 * 0.02 / std::sqrt(2.0 * double(count))) << tensor->name;
  }
}

TEST_F(DemoAssets, ConfigJsonIsWhatTransformersWrites) {
  nlohmann::json expected = nlohmann::json::parse(
      read_file(fs::path(CST_SOURCE_DIR) / "tests/fixtures/demo/mistral_config.json"));
  nlohmann::json written = nlohmann::json::parse(read_file(files_->hf_directory + "/config.json"));
  EXPECT_EQ(written, expected) << "written:\n" << written.dump(2) << "\nexpected:\n" << expected.dump(2);
}

TEST(DemoRandom, NormalDrawsHaveUnitVarianceAndNoCorrelation) {
  // Box-Muller pairs: the two values of a pair must be independent, not just each N(0, 1).
  cst::demo::DemoRandom random(7);
  const int count = 200000;
  double sum = 0, sum_squares = 0, sum_products = 0, previous = 0;
  for (int i = 0; i < count; i++) {
    double value = random.normal(1.0f);
    sum += value;
    sum_squares += value * value;
    if (i % 2 == 1) sum_products += value * previous;
    previous = value;
  }
  // Standard errors: mean 1/sqrt(n), variance sqrt(2/n), pair product sqrt(2/n); 5 of each.
  EXPECT_LT(std::abs(sum / count), 5 / std::sqrt(double(count)));
  EXPECT_LT(std::abs(sum_squares / count - 1), 5 * std::sqrt(2.0 / count));
  EXPECT_LT(std::abs(sum_products / (count / 2)), 5 * std::sqrt(2.0 / count));
}

TEST(DemoRandom, BelowCoversTheRangeEvenly) {
  cst::demo::DemoRandom random(11);
  std::vector<int> hits(6, 0);
  for (int i = 0; i < 60000; i++) hits[random.below(6)]++;
  // Each bucket: 10000 expected, standard deviation ~91; 5 of them.
  for (int bucket = 0; bucket < 6; bucket++) EXPECT_NEAR(hits[bucket], 10000, 460) << bucket;
}

}  // namespace
