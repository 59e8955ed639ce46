// Pair tokenization against trl 0.9.6's own DPOTrainer.tokenize_row.
// Golden data: tools/python/make_trl_tokenization_fixtures.py (rerun it from the repository root)
// wrote tests/fixtures/trl_tokenization/ with the ChatML tokenizer of
// tests/fixtures/tokenizer/chatml, and llama3.json with the Llama 3 style byte-level tokenizer.
// Token ids are integers: every comparison is exact, no tolerance.
//
// Dataset rows are stored as a 64-bit FNV-1a hash (offset 0xcbf29ce484222325, prime 0x100000001b3)
// over four sequences in order: chosen ids, chosen labels, rejected ids, rejected labels; each as
// its length (8 bytes little-endian) then its values (4 bytes little-endian int32). Labels are
// trl's: the id on completion tokens, -100 on prompt tokens.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>

#include "data/pair_tokenizer.h"
#include "kernels/error.h"

namespace cst {
namespace {

const std::string kFixtures = CST_SOURCE_DIR "/tests/fixtures/trl_tokenization/";
const std::string kTokenizerDirectory = CST_SOURCE_DIR "/tests/fixtures/tokenizer/chatml";
const std::string kDataset =
    CST_SOURCE_DIR "/../shared/data/configurable-system-prompt-multitask.json";
constexpr int32_t kLabelPad = -100;  // trl's label_pad_token_id

nlohmann::json read_json(const std::string& path) {
  std::ifstream file(path);
  if (!file) throw std::runtime_error("cannot open " + path);
  return nlohmann::json::parse(file);
}

std::vector<int32_t> trl_labels(const TokenizedSequence& sequence) {
  std::vector<int32_t> labels(sequence.ids.size());
  for (size_t t = 0; t < labels.size(); t++) {
    labels[t] = sequence.completion_mask[t] ? sequence.ids[t] : kLabelPad;
  }
  return labels;
}

uint64_t fnv1a64_pair(const TokenizedPair& pair) {
  uint64_t hash = 0xcbf29ce484222325ull;
  auto feed = [&](uint64_t value, int bytes) {
    for (int i = 0; i < bytes; i++) {
      hash = (hash ^ ((value >> (8 * i)) & 0xff)) * 0x100000001b3ull;
    }
  };
  for (const TokenizedSequence* sequence : {&pair.chosen, &pair.rejected}) {
    for (const std::vector<int32_t>& values : {sequence->ids, trl_labels(*sequence)}) {
      feed(uint64_t(values.size()), 8);
      for (int32_t value : values) feed(uint32_t(value), 4);
    }
  }
  return hash;
}

// First index where two sequences differ, or -1.
template <class A, class B>
long first_difference(const A& actual, const B& expected) {
  size_t common = std::min(actual.size(), expected.size());
  for (size_t i = 0; i < common; i++) {
    if (int64_t(actual[i]) != int64_t(expected[i])) return long(i);
  }
  return actual.size() == expected.size() ? -1 : long(common);
}

// Compares a pair with a fixture record of trl's output (ids and labels in full).
void expect_same_as_trl(const TokenizedPair& pair, const nlohmann::json& trl,
                        const std::string& what) {
  auto check = [&](const std::vector<int32_t>& actual, const char* key) {
    std::vector<int64_t> expected = trl[key].get<std::vector<int64_t>>();
    long at = first_difference(actual, expected);
    EXPECT_EQ(at, -1) << what << ": " << key << " differs at index " << at << " (lengths "
                      << actual.size() << " vs trl " << expected.size() << ")";
  };
  check(pair.chosen.ids, "chosen_input_ids");
  check(trl_labels(pair.chosen), "chosen_labels");
  check(pair.rejected.ids, "rejected_input_ids");
  check(trl_labels(pair.rejected), "rejected_labels");
  EXPECT_EQ(size_t(pair.prompt_length), trl["prompt_input_ids"].size()) << what;
}

TokenizeOptions options_of(const nlohmann::json& record) {
  TokenizeOptions options;
  options.max_length = record["max_length"].get<int>();
  options.max_prompt_length = record["max_prompt_length"].get<int>();
  options.truncation_mode = truncation_mode_by_name(record["truncation_mode"].get<std::string>());
  return options;
}

class PairTokenizer : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(kTokenizerDirectory + "/tokenizer.model")) {
      GTEST_SKIP() << "ChatML tokenizer fixture missing at " << kTokenizerDirectory;
    }
    tokenizer_ = std::make_unique<Tokenizer>(Tokenizer::from_directory(kTokenizerDirectory));
  }
  std::unique_ptr<Tokenizer> tokenizer_;
};

// Short limits, both truncation modes, BOS/EOS already present, empty texts, and raw texts whose
// last prompt token merges with the answer's first.
TEST_F(PairTokenizer, SyntheticCasesMatchTrl) {
  nlohmann::json fixture = read_json(kFixtures + "synthetic.json");
  ChatTemplate chatml = chat_template_by_name("chatml");
  ASSERT_GE(fixture["cases"].size(), 10u);
  for (const nlohmann::json& record : fixture["cases"]) {
    std::string name = record["name"].get<std::string>();
    const nlohmann::json& input = record["input"];
    const nlohmann::json& rendered = record["rendered"];
    TokenizeOptions options = options_of(record);
    TokenizedPair pair;
    if (input.contains("system")) {
      PreferenceExample example{input["system"], input["user"], input["chosen"], input["rejected"]};
      EXPECT_EQ(chatml.prompt(example.system, example.prompt), rendered["prompt"]) << name;
      EXPECT_EQ(chatml.answer(example.chosen), rendered["chosen"]) << name;
      EXPECT_EQ(chatml.answer(example.rejected), rendered["rejected"]) << name;
      pair = tokenize_pair(*tokenizer_, chatml, example, options);
      EXPECT_EQ(pair.system, example.system);
    } else {
      pair = tokenize_rendered_pair(*tokenizer_, rendered["prompt"], rendered["chosen"],
                                    rendered["rejected"], options);
    }
    expect_same_as_trl(pair, record, name);
    EXPECT_LE(pair.chosen.ids.size(), size_t(options.max_length)) << name;
    EXPECT_LE(pair.rejected.ids.size(), size_t(options.max_length)) << name;
  }
}

TEST_F(PairTokenizer, BadOptionsAreErrors) {
  TokenizeOptions options;
  options.max_prompt_length = 512;
  EXPECT_THROW(tokenize_rendered_pair(*tokenizer_, "a", "b", "c", options), Error);
  options.max_prompt_length = 0;
  EXPECT_THROW(tokenize_rendered_pair(*tokenizer_, "a", "b", "c", options), Error);
  EXPECT_THROW(truncation_mode_by_name("keep_middle"), Error);
}

// A compact record of trl's output: the ids, the number of leading positions its labels mask, and
// the length of prompt_input_ids.
void expect_same_as_compact_trl(const TokenizedPair& pair, const nlohmann::json& trl,
                                const std::string& what) {
  for (const auto& [sequence, name] : {std::pair{&pair.chosen, "chosen"}, {&pair.rejected, "rejected"}}) {
    const std::string key = name;
    EXPECT_EQ(sequence->ids, trl[key + "_input_ids"].get<std::vector<int32_t>>()) << what << " " << key;
    std::vector<uint8_t> mask(trl[key + "_input_ids"].size(), 1);
    std::fill_n(mask.begin(), std::min(mask.size(), trl[key + "_prompt_length"].get<size_t>()), 0);
    EXPECT_EQ(sequence->completion_mask, mask) << what << " " << key;
  }
  EXPECT_EQ(pair.prompt_length, trl["prompt_length"].get<int>()) << what;
}

// Multi-turn rows, from the table to the token ids: tools/python/make_message_fixtures.py rendered
// each example's whole conversation with apply_chat_template for every chat template and ran trl's
// tokenize_row on the strings (tests/fixtures/parquet/preference_multiturn.expected.json). The
// parquet rows carry their system messages; the JSON lines rows flip under CST's system prompts.
TEST_F(PairTokenizer, MultiTurnExamplesMatchTrl) {
  const std::string parquet = CST_SOURCE_DIR "/tests/fixtures/parquet/";
  const nlohmann::json fixture = read_json(parquet + "preference_multiturn.expected.json");
  PreferenceOptions cst;
  cst.system_prompts = std::make_pair(fixture["cst_system_prompts"][0].get<std::string>(),
                                      fixture["cst_system_prompts"][1].get<std::string>());
  const std::pair<std::vector<PreferenceExample>, const nlohmann::json*> sets[] = {
      {build_preference_examples(read_table(parquet + "preference_multiturn_trl.parquet", {}),
                                 PreferenceOptions{}, nullptr),
       &fixture["trl_examples"]},
      {build_preference_examples(read_table(parquet + "preference_multiturn_implicit.jsonl", {}),
                                 cst, nullptr),
       &fixture["cst_examples"]}};
  int prompts_cut = 0;
  for (const auto& [examples, expected] : sets) {
    ASSERT_EQ(examples.size(), expected->size());
    for (size_t i = 0; i < examples.size(); i++) {
      for (const auto& [name, rendered] : (*expected)[i]["rendered"].items()) {
        const ChatTemplate chat_template = chat_template_by_name(name);
        const std::string what = name + " example " + std::to_string(i);
        EXPECT_EQ(chat_template.prompt(examples[i].system, examples[i].prompt_turns()),
                  rendered["prompt"])
            << what;
        EXPECT_EQ(chat_template.answer(examples[i].chosen), rendered["chosen"]) << what;
        EXPECT_EQ(chat_template.answer(examples[i].rejected), rendered["rejected"]) << what;
        for (size_t limit = 0; limit < rendered["trl"].size(); limit++) {
          const TokenizeOptions options = options_of(fixture["limits"][limit]);
          const TokenizedPair pair = tokenize_pair(*tokenizer_, chat_template, examples[i], options);
          expect_same_as_compact_trl(pair, rendered["trl"][limit], what + " limit " + std::to_string(limit));
          prompts_cut += pair.prompt_length == options.max_prompt_length;
        }
      }
    }
  }
  EXPECT_GT(prompts_cut, 0) << "no multi-turn prompt was cut to max_prompt_length";
}

// The Llama 3 style byte-level tokenizer (tests/fixtures/tokenizer/byte_level/llama3) with its eos_token
// replaced by eos_token when that is given, as AutoTokenizer.from_pretrained(..., eos_token=...) does.
Tokenizer llama3_tokenizer(const nlohmann::json& eos_token) {
  const std::string directory = CST_SOURCE_DIR "/tests/fixtures/tokenizer/byte_level/llama3/";
  std::map<std::string, std::string> files;
  for (const char* name : {"tokenizer.json", "tokenizer_config.json"}) {
    std::ifstream file(directory + name, std::ios::binary);
    if (!file) throw std::runtime_error("cannot open " + directory + name);
    files[name].assign(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>());
  }
  if (!eos_token.is_null()) {
    nlohmann::json config = nlohmann::json::parse(files["tokenizer_config.json"]);
    config["eos_token"] = eos_token;
    files["tokenizer_config.json"] = config.dump();
  }
  return Tokenizer(files);
}

// The llama3 chat template with the Llama 3 style tokenizer, against trl's tokenize_row
// (tests/fixtures/trl_tokenization/llama3.json): the prompt starts with the text <|begin_of_text|>,
// which is BOS, so trl prepends none; the answers end with <|eot_id|>, Llama 3 Instruct's
// eos_token, so trl appends none, while under the base model's <|end_of_text|> it appends that.
// Hand-made, multi-turn and dataset rows at 512/128 keep_end and 64/24 keep_end and keep_start.
TEST(PairTokenizerLlama3, RowsMatchTrl) {
  const nlohmann::json fixture = read_json(kFixtures + "llama3.json");
  const ChatTemplate llama3 = chat_template_by_name("llama3");
  std::vector<Tokenizer> tokenizers;
  for (const nlohmann::json& limit : fixture["limits"]) {
    tokenizers.push_back(llama3_tokenizer(limit["eos_token"]));
  }
  ASSERT_EQ(tokenizers[0].bos_id(), tokenizers[0].encode("<|begin_of_text|>").at(0));
  ASSERT_EQ(tokenizers[0].eos_id(), tokenizers[0].encode("<|eot_id|>").at(0));
  ASSERT_GE(fixture["rows"].size(), 15u);
  int prompts_cut = 0, answers_cut = 0, eos_appended = 0;
  for (size_t r = 0; r < fixture["rows"].size(); r++) {
    const nlohmann::json& row = fixture["rows"][r];
    const std::string what = row.contains("row") ? "dataset row " + row["row"].dump()
                                                 : "hand-made row " + std::to_string(r);
    PreferenceExample example;
    example.system = row["system"];
    for (const nlohmann::json& turn : row["turns"]) {
      example.history.push_back(ChatTurn{turn["role"], turn["content"]});
    }
    example.prompt = example.history.back().content;
    example.history.pop_back();
    example.chosen = row["chosen"];
    example.rejected = row["rejected"];
    if (row.contains("rendered")) {
      EXPECT_EQ(llama3.prompt(example.system, example.prompt_turns()), row["rendered"]["prompt"]) << what;
      EXPECT_EQ(llama3.answer(example.chosen), row["rendered"]["chosen"]) << what;
      EXPECT_EQ(llama3.answer(example.rejected), row["rendered"]["rejected"]) << what;
    }
    for (size_t limit = 0; limit < tokenizers.size(); limit++) {
      const TokenizeOptions options = options_of(fixture["limits"][limit]);
      const TokenizedPair pair = tokenize_pair(tokenizers[limit], llama3, example, options);
      const nlohmann::json& trl = row["trl"][limit];
      expect_same_as_compact_trl(pair, trl, what + " limits " + fixture["limits"][limit]["name"].dump());
      EXPECT_NE(pair.chosen.ids.at(1), tokenizers[limit].bos_id()) << what << ": BOS twice";
      prompts_cut += pair.truncated && pair.prompt_length == options.max_prompt_length;
      answers_cut += pair.chosen.ids.size() == size_t(options.max_length);
      eos_appended += pair.chosen.ids.size() >= 2 &&
                      pair.chosen.ids.back() == tokenizers[limit].encode("<|end_of_text|>").at(0) &&
                      pair.chosen.ids.end()[-2] == tokenizers[limit].encode("<|eot_id|>").at(0);
    }
  }
  // The fixture covers what it is for: cut prompts, cut answers, and trl's appended EOS.
  EXPECT_GT(prompts_cut, 0);
  EXPECT_GT(answers_cut, 0);
  EXPECT_GT(eos_appended, 0);
}

// Every row of the real dataset, rendered and tokenized as the seed did (512 / 128 / keep_end).
TEST_F(PairTokenizer, EveryDatasetRowMatchesTrl) {
  if (!std::filesystem::exists(kDataset)) GTEST_SKIP() << "dataset not found at " << kDataset;
  nlohmann::json fixture = read_json(kFixtures + "dataset_rows.json");
  TokenizeOptions options = options_of(fixture);

  PreferenceData data = load_preference_data(kDataset, *tokenizer_, chat_template_by_name("chatml"),
                                             PreferenceOptions{}, options);
  std::printf("%s", format_dataset_stats(data.stats, options).c_str());

  const nlohmann::json& rows = fixture["rows"];
  ASSERT_EQ(data.pairs.size(), rows.size());
  int64_t mismatches = 0;
  for (size_t i = 0; i < rows.size(); i++) {
    // [row, hash, prompt_length, chosen_length, rejected_length, truncated]
    const nlohmann::json& row = rows[i];
    const TokenizedPair& pair = data.pairs[i];
    char hash[17];
    std::snprintf(hash, sizeof hash, "%016llx", (unsigned long long)fnv1a64_pair(pair));
    bool same = hash == row[1].get<std::string>() && pair.prompt_length == row[2].get<int>() &&
                pair.truncated == row[5].get<bool>();
    if (!same && mismatches++ == 0) {
      ADD_FAILURE() << "first mismatch at dataset row " << row[0]
                    << ": lengths prompt/chosen/rejected " << pair.prompt_length << "/"
                    << pair.chosen.ids.size() << "/" << pair.rejected.ids.size() << " vs trl "
                    << row[2] << "/" << row[3] << "/" << row[4] << ", truncated " << pair.truncated
                    << " vs " << row[5];
    }
  }
  EXPECT_EQ(mismatches, 0) << "rows differing from trl";
  EXPECT_EQ(data.stats.truncated_pairs, fixture["truncated_rows"].get<int64_t>());
  EXPECT_EQ(data.stats.pairs, 1952);
  EXPECT_EQ(data.stats.dropped_pairs, 0);

  for (const nlohmann::json& record : fixture["full_rows"]) {
    int64_t row = record["row"].get<int64_t>();
    expect_same_as_trl(data.pairs[size_t(row)], record, "dataset row " + std::to_string(row));
  }
}

}  // namespace
}  // namespace cst
