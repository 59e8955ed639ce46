// Tokenizer parity with transformers' AutoTokenizer (LlamaTokenizerFast, transformers 4.42.4).
// Golden data: tools/python/make_tokenizer_fixtures.py -> tests/fixtures/tokenizer/. Ids must be
// equal (no tolerance: one different id is a different training example).
//
// Dataset hashes: 64-bit FNV-1a over each text's ids, each id fed as the 4 little-endian bytes of
// its int32 value (offset basis 0xcbf29ce484222325, prime 0x100000001b3), 16 lowercase hex digits.
#include <gtest/gtest.h>

#include <chrono>
#include <ctime>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "data/chat_template.h"
#include "data/tokenizer.h"
#include "kernels/error.h"

namespace cst {
namespace {

using nlohmann::json;

const std::string kFixtures = CST_SOURCE_DIR "/tests/fixtures/tokenizer/";
const std::string kDataset = CST_SOURCE_DIR "/../shared/data/configurable-system-prompt-multitask.json";
const char* const kVariants[] = {"chatml", "chatml_legacy_false", "chatml_added_tokens_json"};

std::string read_file(const std::string& path) {
  std::ifstream stream(path, std::ios::binary);
  if (!stream) throw std::runtime_error("cannot open " + path);
  std::ostringstream bytes;
  bytes << stream.rdbuf();
  return bytes.str();
}

// A variant's files: its JSON files plus the shared chatml/tokenizer.model (kept once in the repo).
std::map<std::string, std::string> variant_files(const std::string& variant) {
  std::map<std::string, std::string> files = {{"tokenizer.model", read_file(kFixtures + "chatml/tokenizer.model")}};
  for (const char* name : {"tokenizer_config.json", "added_tokens.json", "special_tokens_map.json"}) {
    files[name] = read_file(kFixtures + variant + "/" + name);
  }
  return files;
}

const json& golden() {
  static const json parsed = json::parse(read_file(kFixtures + "encode_golden.json"));
  return parsed;
}

std::string ids_text(const std::vector<int32_t>& ids) {
  std::string text = "[";
  for (size_t i = 0; i < ids.size(); i++) text += (i ? ", " : "") + std::to_string(ids[i]);
  return text + "]";
}

std::string fnv1a64_hex(const std::vector<int32_t>& ids) {
  uint64_t hash = 0xcbf29ce484222325ull;
  for (int32_t id : ids) {
    const uint32_t bits = static_cast<uint32_t>(id);
    for (int byte = 0; byte < 4; byte++) {
      hash ^= (bits >> (8 * byte)) & 0xFF;
      hash *= 0x100000001b3ull;
    }
  }
  char text[17];
  std::snprintf(text, sizeof(text), "%016llx", static_cast<unsigned long long>(hash));
  return text;
}

class TokenizerGolden : public ::testing::TestWithParam<const char*> {};

TEST_P(TokenizerGolden, EncodeMatchesAutoTokenizer) {
  const Tokenizer tokenizer(variant_files(GetParam()));
  const json& variant = golden()["variants"][GetParam()];
  ASSERT_EQ(variant["class"], "LlamaTokenizerFast");
  const json& texts = golden()["texts"];
  ASSERT_GE(texts.size(), 500u);
  int mismatches = 0;
  for (size_t i = 0; i < texts.size(); i++) {
    const std::string text = texts[i].get<std::string>();
    const std::vector<int32_t> expected = variant["ids"][i].get<std::vector<int32_t>>();
    const std::vector<int32_t> actual = tokenizer.encode(text);
    if (actual != expected && mismatches++ < 5) {
      ADD_FAILURE() << GetParam() << " text " << i << " " << json(text).dump() << "\n  expected "
                    << ids_text(expected) << "\n  actual   " << ids_text(actual);
    }
  }
  EXPECT_EQ(mismatches, 0) << "of " << texts.size() << " texts";
}

TEST_P(TokenizerGolden, DecodeMatchesAutoTokenizer) {
  const Tokenizer tokenizer(variant_files(GetParam()));
  const json& variant = golden()["variants"][GetParam()];
  const json& sequences = variant["decode_ids"];
  ASSERT_GT(sequences.size(), 600u);
  int mismatches = 0;
  for (size_t i = 0; i < sequences.size(); i++) {
    const std::vector<int32_t> ids = sequences[i].get<std::vector<int32_t>>();
    for (bool skip : {false, true}) {
      const std::string expected = variant[skip ? "decoded_skip_special" : "decoded"][i].get<std::string>();
      const std::string actual = tokenizer.decode(ids, skip);
      if (actual != expected && mismatches++ < 5) {
        ADD_FAILURE() << GetParam() << " sequence " << i << " " << ids_text(ids) << " skip_special=" << skip
                      << "\n  expected " << json(expected).dump() << "\n  actual   " << json(actual).dump();
      }
    }
  }
  EXPECT_EQ(mismatches, 0) << "of " << 2 * sequences.size() << " decodes";
}

TEST_P(TokenizerGolden, SpecialTokensMatchAutoTokenizer) {
  const Tokenizer tokenizer(variant_files(GetParam()));
  const json& variant = golden()["variants"][GetParam()];
  EXPECT_EQ(tokenizer.vocab_size(), variant["vocab_size"].get<int>());
  EXPECT_EQ(tokenizer.bos_id(), variant["bos_id"].get<int32_t>());
  EXPECT_EQ(tokenizer.eos_id(), variant["eos_id"].get<int32_t>());
  EXPECT_EQ(tokenizer.pad_id(), variant["pad_id"].get<int32_t>());
  std::vector<int32_t> special;
  for (int32_t id = 0; id < tokenizer.vocab_size(); id++) {
    if (tokenizer.is_special(id)) special.push_back(id);
  }
  EXPECT_EQ(special, variant["added_special_ids"].get<std::vector<int32_t>>());
}

INSTANTIATE_TEST_SUITE_P(Variants, TokenizerGolden, ::testing::ValuesIn(kVariants));

TEST(Tokenizer, OpenHermesStyleDirectory) {
  const Tokenizer tokenizer = Tokenizer::from_directory(kFixtures + "chatml");
  EXPECT_EQ(tokenizer.vocab_size(), 32002);
  EXPECT_EQ(tokenizer.token_id("<|im_end|>"), 32000);
  EXPECT_EQ(tokenizer.token_id("<|im_start|>"), 32001);
  EXPECT_EQ(tokenizer.token_id("<s>"), 1);
  EXPECT_EQ(tokenizer.token_id("<0x0A>"), 13);  // the newline byte piece
  EXPECT_FALSE(tokenizer.token_id("<|not a token|>").has_value());
  EXPECT_TRUE(tokenizer.legacy());
  EXPECT_EQ(tokenizer.chat_template_source(), read_file(kFixtures + "chat_templates/chatml.jinja"));
  EXPECT_EQ(detect_chat_template(tokenizer.chat_template_source()).kind, ChatTemplateKind::chatml);
}

TEST(Tokenizer, RejectsBadFiles) {
  const auto message_of = [](const std::map<std::string, std::string>& files) -> std::string {
    try {
      Tokenizer tokenizer(files);
    } catch (const Error& error) {
      return error.what();
    }
    return "no error";
  };
  EXPECT_NE(message_of({}).find("tokenizer.model is required"), std::string::npos);
  EXPECT_NE(message_of({{"tokenizer.model", "not a protobuf at all"}}).find("tokenizer.model"), std::string::npos);
  std::map<std::string, std::string> files = variant_files("chatml");
  files["tokenizer_config.json"] = "{\"legacy\": tru";
  EXPECT_NE(message_of(files).find("tokenizer_config.json: not valid JSON"), std::string::npos);
  files["tokenizer_config.json"] = R"({"added_tokens_decoder": {}, "eos_token": "<|missing|>"})";
  EXPECT_NE(message_of(files).find("'<|missing|>' is not in the vocabulary"), std::string::npos);
  files["tokenizer_config.json"] = R"({"added_tokens_decoder": {"x": {"content": "a"}}})";
  EXPECT_NE(message_of(files).find("key 'x' is not a token id"), std::string::npos);
  EXPECT_THROW(Tokenizer::from_directory(kFixtures + "does_not_exist"), Error);
}

TEST(Tokenizer, DecodeRejectsIdsOutsideTheVocabulary) {
  const Tokenizer tokenizer(variant_files("chatml"));
  EXPECT_THROW(tokenizer.decode({1, 32002}), Error);
  EXPECT_THROW(tokenizer.decode({-1}), Error);
}

// Streaming pieces, concatenated, equal the golden decode; no piece ends inside a character.
TEST(Tokenizer, StreamingDecoderEmitsWholeCharacters) {
  const Tokenizer tokenizer(variant_files("chatml"));
  const json& variant = golden()["variants"]["chatml"];
  const json& texts = golden()["texts"];
  int byte_fallback_texts = 0;
  for (size_t i = 0; i < texts.size(); i++) {
    const std::vector<int32_t> ids = variant["ids"][i].get<std::vector<int32_t>>();
    StreamingDecoder stream(tokenizer, /*skip_special_tokens=*/true);
    std::string streamed;
    for (int32_t id : ids) {
      const std::string piece = stream.push(id);
      ASSERT_TRUE(piece.empty() || (static_cast<unsigned char>(piece.back()) & 0xC0) != 0xC0 ||
                  (static_cast<unsigned char>(piece.back()) < 0x80))
          << "text " << i << " chunk ends with a lead byte";
      streamed += piece;
    }
    streamed += stream.finish();
    byte_fallback_texts += std::any_of(ids.begin(), ids.end(), [&](int32_t id) { return tokenizer.is_byte(id); });
    EXPECT_EQ(streamed, variant["decoded_skip_special"][i].get<std::string>()) << "text " << i;
  }
  EXPECT_GT(byte_fallback_texts, 10);  // the corpus does exercise multi-byte fallback
}

// Every row of the real dataset: the four fields and the seed's ChatML prompt and answer turns.
TEST(Tokenizer, DatasetMatchesAutoTokenizerHashes) {
  if (!std::filesystem::exists(kDataset)) GTEST_SKIP() << "dataset not found at " << kDataset;
  const Tokenizer tokenizer(variant_files("chatml"));
  const ChatTemplate chatml = chat_template_by_name("chatml");
  const json rows = json::parse(read_file(kDataset));
  std::ifstream hashes(kFixtures + "dataset_hashes.txt");
  std::string line;
  std::getline(hashes, line);  // header
  const char* const fields[] = {"system", "prompt", "chosen", "rejected", "chatml_prompt", "chatml_chosen",
                                "chatml_rejected"};
  double field_seconds = 0, field_cpu_seconds = 0;  // wall clock, and this process's CPU time
  size_t field_texts = 0;
  for (size_t row = 0; row < rows.size(); row++) {
    ASSERT_TRUE(std::getline(hashes, line)) << "dataset_hashes.txt has fewer lines than the dataset has rows";
    std::istringstream expected_hashes(line);
    const json& r = rows[row];
    const std::string texts[] = {r["system"], r["prompt"], r["chosen"], r["rejected"],
                                 chatml.prompt(r["system"], r["prompt"]), chatml.answer(r["chosen"]),
                                 chatml.answer(r["rejected"])};
    for (int field = 0; field < 7; field++) {
      std::string expected;
      expected_hashes >> expected;
      const auto start = std::chrono::steady_clock::now();
      const std::clock_t cpu_start = std::clock();
      const std::vector<int32_t> ids = tokenizer.encode(texts[field]);
      if (field < 4) {
        field_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        field_cpu_seconds += double(std::clock() - cpu_start) / CLOCKS_PER_SEC;
        field_texts++;
      }
      ASSERT_EQ(fnv1a64_hex(ids), expected) << "first mismatch: row " << row << " field " << fields[field] << " "
                                            << json(texts[field]).dump().substr(0, 200);
    }
  }
  EXPECT_EQ(rows.size(), 1952u);
  std::printf("[ timing   ] encoded %zu dataset texts (4 fields x %zu rows) in %.3f s wall, %.3f s CPU\n",
              field_texts, rows.size(), field_seconds, field_cpu_seconds);
}

}  // namespace
}  // namespace cst

namespace cst {
namespace {

// A tokenizer.json without normalizer or pre_tokenizer keys must not crash the loader.
TEST(Tokenizer, TokenizerJsonWithoutPipelineKeys) {
  std::map<std::string, std::string> files = variant_files("chatml");
  files["tokenizer.json"] = R"({"version": "1.0", "added_tokens": []})";
  try {
    Tokenizer tokenizer(files);
    EXPECT_FALSE(tokenizer.encode("hello").empty());
  } catch (const Error&) {
    SUCCEED() << "refused with a clear error, which is fine";
  }
}

// Streaming never emits text a later byte piece would change: the chunks concatenate to decode().
TEST(Tokenizer, StreamingHoldsBackByteRuns) {
  Tokenizer tokenizer(variant_files("chatml"));
  const int32_t letter_a = 3 + 0x41, lead_byte = 3 + 0xE4;  // <0x41>, <0xE4>: byte pieces 3..258
  const std::vector<int32_t> ids = {letter_a, lead_byte, tokenizer.encode(" b").back()};
  StreamingDecoder stream(tokenizer, true);
  std::string streamed;
  for (int32_t id : ids) streamed += stream.push(id);
  streamed += stream.finish();
  EXPECT_EQ(streamed, tokenizer.decode(ids, true));
}

}  // namespace
}  // namespace cst
