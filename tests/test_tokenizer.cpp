// Tokenizer parity with transformers' AutoTokenizer (LlamaTokenizerFast, and for byte-level BPE
// PreTrainedTokenizerFast and GPT2TokenizerFast; transformers 4.42.4).
// Golden data: tools/python/make_tokenizer_fixtures.py -> tests/fixtures/tokenizer/. Ids must be
// equal (no tolerance: one different id is a different training example).
//
// Dataset hashes: 64-bit FNV-1a over each text's ids, each id fed as the 4 little-endian bytes of
// its int32 value (offset basis 0xcbf29ce484222325, prime 0x100000001b3), 16 lowercase hex digits.
#include <gtest/gtest.h>

#include <chrono>
#include <ctime>
#include <functional>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "data/chat_template.h"
#include "data/tokenizer.h"
#include "kernels/error.h"
#include "tests/test_support.h"

namespace cst {
namespace {
using testing_support::read_bytes;

using nlohmann::json;

const std::string kFixtures = CST_SOURCE_DIR "/tests/fixtures/tokenizer/";
const std::string kDataset = CST_SOURCE_DIR "/../shared/data/configurable-system-prompt-multitask.json";
const char* const kVariants[] = {"chatml", "chatml_legacy_false", "chatml_added_tokens_json"};

// A variant's files: its JSON files plus the shared chatml/tokenizer.model (kept once in the repo).
std::map<std::string, std::string> variant_files(const std::string& variant) {
  std::map<std::string, std::string> files = {{"tokenizer.model", read_bytes(kFixtures + "chatml/tokenizer.model")}};
  for (const char* name : {"tokenizer_config.json", "added_tokens.json", "special_tokens_map.json"}) {
    files[name] = read_bytes(kFixtures + variant + "/" + name);
  }
  return files;
}

const json& golden() {
  static const json parsed = json::parse(read_bytes(kFixtures + "encode_golden.json"));
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

// Encodes every text (with the post-processor's special tokens or without) and compares with the
// golden ids; returns the number of mismatches, reporting the first few.
int count_encode_mismatches(const Tokenizer& tokenizer, const json& texts, const json& expected_ids,
                            const std::string& label, bool with_special_tokens = false) {
  EXPECT_EQ(expected_ids.size(), texts.size());
  int mismatches = 0;
  for (size_t i = 0; i < texts.size() && i < expected_ids.size(); i++) {
    const std::string text = texts[i].get<std::string>();
    const std::vector<int32_t> expected = expected_ids[i].get<std::vector<int32_t>>();
    const std::vector<int32_t> actual =
        with_special_tokens ? tokenizer.encode_with_special_tokens(text) : tokenizer.encode(text);
    if (actual != expected && mismatches++ < 5) {
      ADD_FAILURE() << label << " text " << i << " " << json(text).dump() << "\n  expected " << ids_text(expected)
                    << "\n  actual   " << ids_text(actual);
    }
  }
  return mismatches;
}

// Decodes every id sequence, with and without special tokens, and compares with the golden
// strings; returns the number of mismatches, reporting the first few.
int count_decode_mismatches(const Tokenizer& tokenizer, const json& sequences, const json& variant,
                            const std::string& label) {
  int mismatches = 0;
  for (size_t i = 0; i < sequences.size(); i++) {
    const std::vector<int32_t> ids = sequences[i].get<std::vector<int32_t>>();
    for (bool skip : {false, true}) {
      const std::string expected = variant[skip ? "decoded_skip_special" : "decoded"][i].get<std::string>();
      const std::string actual = tokenizer.decode(ids, skip);
      if (actual != expected && mismatches++ < 5) {
        ADD_FAILURE() << label << " sequence " << i << " " << ids_text(ids) << " skip_special=" << skip
                      << "\n  expected " << json(expected).dump() << "\n  actual   " << json(actual).dump();
      }
    }
  }
  return mismatches;
}

// Vocabulary size, bos/eos/pad and the set of special ids equal the golden ones.
void expect_special_tokens_match(const Tokenizer& tokenizer, const json& variant) {
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

class TokenizerGolden : public ::testing::TestWithParam<const char*> {};

TEST_P(TokenizerGolden, EncodeMatchesAutoTokenizer) {
  const Tokenizer tokenizer(variant_files(GetParam()));
  const json& variant = golden()["variants"][GetParam()];
  ASSERT_EQ(variant["class"], "LlamaTokenizerFast");
  ASSERT_GE(golden()["texts"].size(), 500u);
  EXPECT_EQ(count_encode_mismatches(tokenizer, golden()["texts"], variant["ids"], GetParam()), 0)
      << "of " << golden()["texts"].size() << " texts";
}

TEST_P(TokenizerGolden, DecodeMatchesAutoTokenizer) {
  const Tokenizer tokenizer(variant_files(GetParam()));
  const json& variant = golden()["variants"][GetParam()];
  const json& sequences = variant["decode_ids"];
  ASSERT_GT(sequences.size(), 600u);
  EXPECT_EQ(count_decode_mismatches(tokenizer, sequences, variant, GetParam()), 0)
      << "of " << 2 * sequences.size() << " decodes";
}

TEST_P(TokenizerGolden, SpecialTokensMatchAutoTokenizer) {
  const Tokenizer tokenizer(variant_files(GetParam()));
  const json& variant = golden()["variants"][GetParam()];
  expect_special_tokens_match(tokenizer, variant);
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
  EXPECT_EQ(tokenizer.chat_template_source(), read_bytes(kFixtures + "chat_templates/chatml.jinja"));
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
  EXPECT_NE(message_of({}).find("needs tokenizer.json or tokenizer.model"), std::string::npos);
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
  const json rows = json::parse(read_bytes(kDataset));
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

// A tokenizer.json is what AutoTokenizer loads, even beside tokenizer.model: one without a model is
// refused with a clear error (not read out of bounds, not silently replaced by tokenizer.model).
TEST(Tokenizer, TokenizerJsonWithoutPipelineKeys) {
  std::map<std::string, std::string> files = variant_files("chatml");
  files["tokenizer.json"] = R"({"version": "1.0", "added_tokens": []})";
  try {
    Tokenizer tokenizer(files);
    ADD_FAILURE() << "a tokenizer.json without a model was accepted";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("tokenizer.json: no \"model\""), std::string::npos) << error.what();
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

// ---- tokenizer.json without tokenizer.model ------------------------------------------------------
// Golden data: tests/fixtures/tokenizer/json/golden.json (make_tokenizer_fixtures.py, json_golden):
// per variant the files it is made of (paths under json/), transformers' ids for the texts of
// encode_golden.json, and decodes. Exact equality, as above.

namespace cst {
namespace {

const std::string kJsonFixtures = kFixtures + "json/";
const char* const kJsonVariants[] = {"legacy", "metaspace", "json_only", "disagrees", "rebuilt"};

const json& json_golden() {
  static const json parsed = json::parse(read_bytes(kJsonFixtures + "golden.json"));
  return parsed;
}

std::map<std::string, std::string> json_variant_files(const std::string& variant) {
  std::map<std::string, std::string> files;
  for (const auto& [name, path] : json_golden()["variants"][variant]["files"].items()) {
    files[name] = read_bytes(kJsonFixtures + path.get<std::string>());
  }
  return files;
}

class TokenizerJsonGolden : public ::testing::TestWithParam<const char*> {};

TEST_P(TokenizerJsonGolden, EncodeMatchesTransformers) {
  const Tokenizer tokenizer(json_variant_files(GetParam()));
  const json& variant = json_golden()["variants"][GetParam()];
  ASSERT_GE(golden()["texts"].size(), 500u);
  EXPECT_EQ(count_encode_mismatches(tokenizer, golden()["texts"], variant["ids"], GetParam()), 0);
}

TEST_P(TokenizerJsonGolden, DecodeMatchesTransformers) {
  const Tokenizer tokenizer(json_variant_files(GetParam()));
  const json& variant = json_golden()["variants"][GetParam()];
  json sequences = variant["ids"];
  for (const json& ids : variant["random_ids"]) sequences.push_back(ids);
  ASSERT_EQ(sequences.size(), variant["decoded"].size());
  EXPECT_EQ(count_decode_mismatches(tokenizer, sequences, variant, GetParam()), 0)
      << "of " << 2 * sequences.size() << " decodes";
}

TEST_P(TokenizerJsonGolden, SpecialTokensMatchTransformers) {
  const Tokenizer tokenizer(json_variant_files(GetParam()));
  const json& variant = json_golden()["variants"][GetParam()];
  expect_special_tokens_match(tokenizer, variant);
}

INSTANTIATE_TEST_SUITE_P(Variants, TokenizerJsonGolden, ::testing::ValuesIn(kJsonVariants));

// The fixtures do exercise what they are for: the reversed merges of "disagrees" change the ids of
// many texts against tokenizer.model, and "rebuilt" (same files, add_prefix_space set) does not
// follow tokenizer.json.
TEST(TokenizerJson, FixturesCoverDisagreement) {
  const json& variants = json_golden()["variants"];
  EXPECT_GT(variants["disagrees"]["texts_where_tokenizer_model_differs"].get<int>(), 50);
  EXPECT_EQ(variants["legacy"]["texts_where_tokenizer_model_differs"].get<int>(), 0);
  EXPECT_NE(variants["rebuilt"]["ids"], variants["disagrees"]["ids"]);
  EXPECT_EQ(json_variant_files("json_only").size(), 1u);
}

// tokenizers 0.20 and later write merges as [left, right] pairs: the same merges, the same ids.
TEST(TokenizerJson, MergesAsPairsEncodeTheSame) {
  std::map<std::string, std::string> files = json_variant_files("legacy");
  json tokenizer_json = json::parse(files["tokenizer.json"]);
  json pairs = json::array();
  for (const json& line : tokenizer_json["model"]["merges"]) {
    const std::string text = line.get<std::string>();
    const size_t space = text.find(' ');
    pairs.push_back({text.substr(0, space), text.substr(space + 1)});
  }
  ASSERT_GT(pairs.size(), 100u);
  tokenizer_json["model"]["merges"] = pairs;
  files["tokenizer.json"] = tokenizer_json.dump();
  const json& legacy_ids = json_golden()["variants"]["legacy"]["ids"];
  EXPECT_EQ(count_encode_mismatches(Tokenizer(files), golden()["texts"], legacy_ids, "pairs"), 0);
}

// tokenizer.model alone with the Hub's "add_prefix_space": null: no "▁" prefix, the same ids as the
// explicit false of "rebuilt" (the generator asserts this equivalence against transformers).
TEST(TokenizerJson, NullAddPrefixSpaceWithSentencepieceOnly) {
  const Tokenizer tokenizer({{"tokenizer.model", read_bytes(kJsonFixtures + "tokenizer.model")},
                             {"tokenizer_config.json", read_bytes(kJsonFixtures + "legacy/tokenizer_config.json")}});
  const json& rebuilt_ids = json_golden()["variants"]["rebuilt"]["ids"];
  EXPECT_EQ(count_encode_mismatches(tokenizer, golden()["texts"], rebuilt_ids, "null prefix"), 0);
}

TEST(TokenizerJson, RejectsWhatItDoesNotRead) {
  const std::map<std::string, std::string> good = json_variant_files("legacy");
  const auto message_with = [&](const std::function<void(json&)>& change) -> std::string {
    json tokenizer_json = json::parse(good.at("tokenizer.json"));
    change(tokenizer_json);
    std::map<std::string, std::string> files = good;
    files["tokenizer.json"] = tokenizer_json.dump();
    try {
      Tokenizer tokenizer(files);
    } catch (const Error& error) {
      return error.what();
    }
    return "no error";
  };
  const auto expect_message = [&](const std::function<void(json&)>& change, const std::string& part) {
    const std::string message = message_with(change);
    EXPECT_NE(message.find(part), std::string::npos) << "expected '" << part << "' in: " << message;
  };
  expect_message([](json& j) { j["model"]["type"] = "Unigram"; }, "tokenizer.json: model type 'Unigram' is not supported");
  expect_message([](json& j) { j["model"]["type"] = "WordPiece"; }, "tokenizer.json: model type 'WordPiece' is not supported");
  // A ByteLevel step makes it a byte-level tokenizer, which has a piece for every byte.
  expect_message([](json& j) { j["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}}; },
                 "\"byte_fallback\" with a ByteLevel pipeline is not supported");
  expect_message([](json& j) { j["model"]["ignore_merges"] = true; },
                 "\"ignore_merges\" is supported with byte-level BPE only");
  expect_message([](json& j) { j["model"]["merges"][3] = "no_such_piece x"; }, "merge 3 \"no_such_piece x\" names a piece");
  expect_message([](json& j) { j["model"]["merges"][0] = "a b c"; }, "merge 0 \"a b c\" must be two pieces");
  expect_message([](json& j) { j["model"]["merges"][0] = 7; }, "merge 0 must be \"left right\" or [left, right]");
  expect_message([](json& j) { j["model"]["vocab"]["<s>"] = 0; }, "vocab ids must be 0..");
  expect_message([](json& j) { j["model"]["unk_token"] = "<nope>"; }, "unk_token \"<nope>\" is not in the vocabulary");
  expect_message([](json& j) { j["model"]["dropout"] = 0.1; }, "dropout is not supported");
  expect_message([](json& j) { j["normalizer"] = nullptr; }, "is not the Llama/Mistral form");
  expect_message([](json& j) { j["decoder"]["decoders"].erase(1); }, "decoder");
  expect_message([](json& j) { j.erase("model"); }, "tokenizer.json: no \"model\"");
  expect_message(
      [](json& j) {
        j["normalizer"] = nullptr;
        j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}, {"prepend_scheme", "first"}};
      },
      "split false");
  expect_message([](json& j) { j["pre_tokenizer"] = 5; }, "is not the Llama/Mistral form");
  expect_message([](json& j) { j["model"]["type"] = nullptr; }, "model type '' is not supported");
  // add_prefix_space in tokenizer_config.json sends transformers back to tokenizer.model.
  std::map<std::string, std::string> files = good;
  json config = json::parse(files["tokenizer_config.json"]);
  config["add_prefix_space"] = true;
  files["tokenizer_config.json"] = config.dump();
  try {
    Tokenizer tokenizer(files);
    ADD_FAILURE() << "add_prefix_space without tokenizer.model was accepted";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("there is no tokenizer.model"), std::string::npos) << error.what();
  }
  EXPECT_NO_THROW(Tokenizer::from_directory(kJsonFixtures + "legacy"));
}

}  // namespace
}  // namespace cst

// ---- Byte-level BPE (Llama 3, GPT-2) -----------------------------------------------------------------
// Golden data: tests/fixtures/tokenizer/byte_level/ (tools/python/make_byte_level_tokenizer_fixtures.py):
// small tokenizers of Llama 3's and GPT-2's form trained with the tokenizers library, and per variant
// transformers' ids (without and with special tokens) for the texts of texts.json, and decodes of
// those ids and of random id sequences. Exact equality, as above.

namespace cst {
namespace {

const std::string kByteLevelFixtures = kFixtures + "byte_level/";
const char* const kByteLevelVariants[] = {"llama3", "llama3_no_cleanup", "llama3_json_only", "gpt2"};

const json& byte_level_texts() {
  static const json parsed = json::parse(read_bytes(kByteLevelFixtures + "texts.json"))["texts"];
  return parsed;
}

const json& byte_level_golden(const std::string& variant) {
  static std::map<std::string, json> parsed;
  if (!parsed.count(variant)) {
    parsed[variant] = json::parse(read_bytes(kByteLevelFixtures + "golden_" + variant + ".json"));
  }
  return parsed.at(variant);
}

std::map<std::string, std::string> byte_level_files(const std::string& variant) {
  std::map<std::string, std::string> files;
  for (const auto& [name, path] : byte_level_golden(variant)["files"].items()) {
    files[name] = read_bytes(kByteLevelFixtures + path.get<std::string>());
  }
  return files;
}

// The golden ids of every text, then the random id sequences: what the decodes were made of.
json decode_sequences(const json& variant) {
  json sequences = variant["ids"];
  for (const json& ids : variant["random_ids"]) sequences.push_back(ids);
  return sequences;
}

// Whole UTF-8 characters only: no chunk starts inside a character or stops before its end.
bool is_whole_utf8(const std::string& chunk) {
  for (size_t pos = 0; pos < chunk.size();) {
    const unsigned char lead = static_cast<unsigned char>(chunk[pos]);
    const size_t length = lead < 0x80           ? 1
                          : (lead >> 5) == 0x6  ? 2
                          : (lead >> 4) == 0xE  ? 3
                          : (lead >> 3) == 0x1E ? 4
                                                : 0;
    if (length == 0 || pos + length > chunk.size()) return false;
    for (size_t i = 1; i < length; i++) {
      if ((static_cast<unsigned char>(chunk[pos + i]) & 0xC0) != 0x80) return false;
    }
    pos += length;
  }
  return true;
}

class TokenizerByteLevelGolden : public ::testing::TestWithParam<const char*> {};

TEST_P(TokenizerByteLevelGolden, EncodeMatchesTransformers) {
  const Tokenizer tokenizer(byte_level_files(GetParam()));
  const json& variant = byte_level_golden(GetParam());
  ASSERT_GE(byte_level_texts().size(), 600u);
  EXPECT_TRUE(tokenizer.byte_level());
  EXPECT_EQ(count_encode_mismatches(tokenizer, byte_level_texts(), variant["ids"], GetParam()), 0)
      << "of " << byte_level_texts().size() << " texts";
}

TEST_P(TokenizerByteLevelGolden, EncodeWithSpecialTokensMatchesTransformers) {
  const Tokenizer tokenizer(byte_level_files(GetParam()));
  const json& variant = byte_level_golden(GetParam());
  EXPECT_EQ(count_encode_mismatches(tokenizer, byte_level_texts(), variant["ids_with_special_tokens"], GetParam(),
                                    /*with_special_tokens=*/true),
            0);
}

TEST_P(TokenizerByteLevelGolden, DecodeMatchesTransformers) {
  const Tokenizer tokenizer(byte_level_files(GetParam()));
  const json& variant = byte_level_golden(GetParam());
  const json sequences = decode_sequences(variant);
  ASSERT_EQ(sequences.size(), variant["decoded"].size());
  EXPECT_EQ(count_decode_mismatches(tokenizer, sequences, variant, GetParam()), 0)
      << "of " << 2 * sequences.size() << " decodes";
}

TEST_P(TokenizerByteLevelGolden, SpecialTokensMatchTransformers) {
  const Tokenizer tokenizer(byte_level_files(GetParam()));
  expect_special_tokens_match(tokenizer, byte_level_golden(GetParam()));
}

// Streamed chunks are whole characters and concatenate to decode(); the sequences do make the
// decoder hold text back (cut characters, clean-up patterns waiting for their next character).
TEST_P(TokenizerByteLevelGolden, StreamingConcatenatesToDecode) {
  const Tokenizer tokenizer(byte_level_files(GetParam()));
  const json& variant = byte_level_golden(GetParam());
  const json sequences = decode_sequences(variant);
  int held_back = 0;
  for (size_t i = 0; i < sequences.size(); i++) {
    const std::vector<int32_t> ids = sequences[i].get<std::vector<int32_t>>();
    for (bool skip : {false, true}) {
      StreamingDecoder stream(tokenizer, skip);
      std::string streamed;
      for (size_t n = 0; n < ids.size(); n++) {
        const std::string chunk = stream.push(ids[n]);
        ASSERT_TRUE(is_whole_utf8(chunk)) << "sequence " << i << " chunk " << json(chunk).dump();
        streamed += chunk;
        held_back += streamed != tokenizer.decode(std::vector<int32_t>(ids.begin(), ids.begin() + n + 1), skip);
      }
      streamed += stream.finish();
      EXPECT_EQ(streamed, variant[skip ? "decoded_skip_special" : "decoded"][i].get<std::string>())
          << "sequence " << i << " " << ids_text(ids) << " skip_special=" << skip;
    }
  }
  EXPECT_GT(held_back, 50);
}

INSTANTIATE_TEST_SUITE_P(Variants, TokenizerByteLevelGolden, ::testing::ValuesIn(kByteLevelVariants));

// The regex pre-tokenizers alone, for every text: a difference the merges happen to hide shows here.
TEST(TokenizerByteLevel, PreTokensMatchTokenizersLibrary) {
  const json golden_pre_tokens = json::parse(read_bytes(kByteLevelFixtures + "pre_tokens.json"));
  for (const char* variant : {"llama3", "gpt2"}) {
    const Tokenizer tokenizer(byte_level_files(variant));
    int mismatches = 0;
    for (size_t i = 0; i < byte_level_texts().size(); i++) {
      const std::string text = byte_level_texts()[i].get<std::string>();
      const std::vector<std::string> expected = golden_pre_tokens[variant][i].get<std::vector<std::string>>();
      const std::vector<std::string> actual = tokenizer.pre_tokenize(text);
      if (actual != expected && mismatches++ < 5) {
        ADD_FAILURE() << variant << " text " << i << " " << json(text).dump() << "\n  expected " << json(expected).dump()
                      << "\n  actual   " << json(actual).dump();
      }
    }
    EXPECT_EQ(mismatches, 0) << variant << ", of " << byte_level_texts().size() << " texts";
  }
  EXPECT_THROW(Tokenizer(variant_files("chatml")).pre_tokenize("x"), Error);
}

// The fixtures exercise what they are for: Llama 3's ignore_merges changes ids (turned off, cst must
// differ from the golden ids on exactly the texts where the tokenizers library does), clean-up on and
// off decode differently, and the file alone has no BOS token yet its post-processor adds one.
TEST(TokenizerByteLevel, FixturesCoverIgnoreMergesCleanUpAndTemplate) {
  const json& llama3 = byte_level_golden("llama3");
  std::map<std::string, std::string> files = byte_level_files("llama3");
  json tokenizer_json = json::parse(files["tokenizer.json"]);
  ASSERT_EQ(tokenizer_json["model"]["ignore_merges"], true);
  tokenizer_json["model"]["ignore_merges"] = false;
  files["tokenizer.json"] = tokenizer_json.dump();
  const int matters = llama3["texts_where_ignore_merges_matters"].get<int>();
  EXPECT_GT(matters, 5);
  int differing = 0;
  const Tokenizer without_flag(files);
  for (size_t i = 0; i < byte_level_texts().size(); i++) {
    const std::vector<int32_t> golden_ids = llama3["ids"][i].get<std::vector<int32_t>>();
    differing += without_flag.encode(byte_level_texts()[i].get<std::string>()) != golden_ids;
  }
  EXPECT_EQ(differing, matters);
  EXPECT_NE(llama3["decoded"], byte_level_golden("llama3_no_cleanup")["decoded"]);
  EXPECT_EQ(byte_level_golden("llama3_json_only")["bos_id"], -1);
  EXPECT_EQ(byte_level_golden("llama3_json_only")["ids_with_special_tokens"][0][0], llama3["bos_id"]);
}

// trl prepends bos_id() to encode(prompt); for Llama 3 that is exactly what AutoTokenizer(text) gives.
TEST(TokenizerByteLevel, BosMatchesThePostProcessor) {
  const Tokenizer tokenizer(byte_level_files("llama3"));
  ASSERT_EQ(tokenizer.token_id("<|begin_of_text|>"), tokenizer.bos_id());
  for (const char* text : {"Hello", "", "<|begin_of_text|>x"}) {
    std::vector<int32_t> expected = {tokenizer.bos_id()};
    for (int32_t id : tokenizer.encode(text)) expected.push_back(id);
    EXPECT_EQ(tokenizer.encode_with_special_tokens(text), expected) << text;
  }
}

// LlamaTokenizerFast's own post-processor (BOS when add_bos_token) on the Llama/Mistral fixtures.
TEST(TokenizerByteLevel, SentencepieceSpecialTokensMatchTransformers) {
  const json golden_ids = json::parse(read_bytes(kFixtures + "sentencepiece_special_tokens.json"));
  const json& texts = golden_ids["texts"];
  EXPECT_EQ(count_encode_mismatches(Tokenizer(variant_files("chatml")), texts, golden_ids["variants"]["chatml"], "chatml",
                                    /*with_special_tokens=*/true),
            0);
  EXPECT_EQ(count_encode_mismatches(Tokenizer(json_variant_files("legacy")), texts, golden_ids["variants"]["json/legacy"],
                                    "json/legacy", /*with_special_tokens=*/true),
            0);
}

// Every row of the real dataset, with the Llama 3 style tokenizer.
TEST(TokenizerByteLevel, DatasetMatchesTransformersHashes) {
  if (!std::filesystem::exists(kDataset)) GTEST_SKIP() << "dataset not found at " << kDataset;
  const Tokenizer tokenizer(byte_level_files("llama3"));
  const json rows = json::parse(read_bytes(kDataset));
  std::ifstream hashes(kByteLevelFixtures + "dataset_hashes.txt");
  std::string line;
  std::getline(hashes, line);  // header
  const auto start = std::chrono::steady_clock::now();
  for (size_t row = 0; row < rows.size(); row++) {
    ASSERT_TRUE(std::getline(hashes, line)) << "dataset_hashes.txt has fewer lines than the dataset has rows";
    std::istringstream expected_hashes(line);
    for (const char* field : {"system", "prompt", "chosen", "rejected"}) {
      std::string expected;
      expected_hashes >> expected;
      const std::string text = rows[row][field];
      ASSERT_EQ(fnv1a64_hex(tokenizer.encode(text)), expected)
          << "first mismatch: row " << row << " field " << field << " " << json(text).dump().substr(0, 200);
    }
  }
  EXPECT_EQ(rows.size(), 1952u);
  std::printf("[ timing   ] byte-level: encoded %zu dataset texts in %.3f s\n", 4 * rows.size(),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
}

TEST(TokenizerByteLevel, RejectsWhatItDoesNotRead) {
  const std::map<std::string, std::string> good = byte_level_files("llama3");
  const auto message_with = [&](const std::function<void(json&, json&)>& change) -> std::string {
    json tokenizer_json = json::parse(good.at("tokenizer.json"));
    json config = json::parse(good.at("tokenizer_config.json"));
    change(tokenizer_json, config);
    std::map<std::string, std::string> files = {{"tokenizer.json", tokenizer_json.dump()},
                                                {"tokenizer_config.json", config.dump()}};
    try {
      Tokenizer tokenizer(files);
    } catch (const Error& error) {
      return error.what();
    }
    return "no error";
  };
  const auto expect_message = [&](const std::function<void(json&, json&)>& change, const std::string& part) {
    const std::string message = message_with(change);
    EXPECT_NE(message.find(part), std::string::npos) << "expected '" << part << "' in: " << message;
  };
  EXPECT_EQ(message_with([](json&, json&) {}), "no error");
  const auto split = [](json& j) -> json& { return j["pre_tokenizer"]["pretokenizers"][0]; };
  const auto byte_level_step = [](json& j) -> json& { return j["pre_tokenizer"]["pretokenizers"][1]; };
  expect_message([&](json& j, json&) { split(j)["pattern"]["Regex"] = "\\s+"; }, "byte-level pre_tokenizer");
  expect_message([&](json& j, json&) { split(j)["behavior"] = "Removed"; }, "byte-level pre_tokenizer");
  expect_message([&](json& j, json&) { split(j)["invert"] = true; }, "byte-level pre_tokenizer");
  expect_message([&](json& j, json&) { byte_level_step(j)["add_prefix_space"] = true; }, "byte-level pre_tokenizer");
  expect_message([&](json& j, json&) { byte_level_step(j)["use_regex"] = true; }, "byte-level pre_tokenizer");
  expect_message(
      [&](json& j, json&) {
        const json alone = byte_level_step(j);  // use_regex false: neither Llama 3's nor GPT-2's form
        j["pre_tokenizer"] = alone;
      },
      "byte-level pre_tokenizer");
  expect_message([](json& j, json&) { j["normalizer"] = {{"type", "NFC"}}; },
                 "byte-level BPE with normalizer {\"type\":\"NFC\"}");
  expect_message([](json& j, json&) { j["decoder"] = {{"type", "Fuse"}}; }, "decoder {\"type\":\"Fuse\"} is not supported");
  expect_message([](json& j, json&) { j["post_processor"] = {{"type", "BertProcessing"}}; }, "post_processor");
  const auto template_single = [](json& j) -> json& { return j["post_processor"]["processors"][1]["single"]; };
  expect_message([&](json& j, json&) { template_single(j)[0]["SpecialToken"]["id"] = "<|x|>"; },
                 "TemplateProcessing single piece");
  expect_message([&](json& j, json&) { template_single(j).erase(1); }, "has no sequence $A");
  expect_message([](json& j, json&) { j["model"]["byte_fallback"] = true; }, "\"byte_fallback\" with a ByteLevel pipeline");
  expect_message([](json&, json& c) { c["tokenizer_class"] = "LlamaTokenizerFast"; }, "tokenizer_class 'LlamaTokenizerFast'");
  expect_message([](json&, json& c) { c["add_prefix_space"] = true; }, "add_prefix_space true with a byte-level tokenizer");
  expect_message([](json&, json& c) { c["bos_token"] = "<s>"; }, "special token '<s>' is not in the vocabulary");
  EXPECT_NO_THROW(Tokenizer::from_directory(kByteLevelFixtures + "gpt2"));
}

}  // namespace
}  // namespace cst
