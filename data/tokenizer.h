// Tokenizer: the BPE vocabulary of Llama/Mistral and of byte-level models (Llama 3, GPT-2) plus the
// Hugging Face layer on top of it (added tokens, the `legacy` prefix rule, post-processor, decoder),
// producing the same ids as transformers' AutoTokenizer for the same tokenizer files
// (LlamaTokenizerFast, PreTrainedTokenizerFast, GPT2TokenizerFast).
//
// Where the vocabulary and merges come from, as AutoTokenizer decides it:
//  - tokenizer.json (the fast tokenizer's own file) when present: model.vocab, and merges ranked by
//    their line in model.merges. Two BPE pipelines are read, anything else (Unigram, WordPiece,
//    other normalizers or pre-tokenizers) is refused by name:
//      * Llama/Mistral: byte fallback and the "▁" metaspace pipeline (below). If tokenizer.model is
//        there too it is not read: where the two disagree, tokenizer.json wins.
//      * byte-level (Llama 3, GPT-2): see "Byte-level BPE" below. tokenizer.model is never read.
//  - tokenizer.model (sentencepiece) otherwise, or when tokenizer_config.json sets add_prefix_space
//    or from_slow (LlamaTokenizerFast then converts tokenizer.model again and ignores tokenizer.json).
//    A merge (a, b) exists when the piece a+b is in the vocabulary; merges rank by that piece's score
//    (higher first), ties by the merged piece's id, then the ids of a and b: the order transformers'
//    converter writes them into tokenizer.json.
//
// Encoding (Llama/Mistral), the way the fast tokenizer does it:
//  1. Added tokens whose `normalized` flag is false are found in the raw text (leftmost, then
//     longest match; lstrip/rstrip swallow the whitespace beside them). They are never split.
//  2. Each stretch of text between them is normalized. legacy (the default when the flag is unset):
//     "▁" is prepended to every stretch and spaces become "▁". legacy = false: no normalizer; the
//     Metaspace pre-tokenizer turns spaces into "▁" and prepends "▁" only to the stretch that starts
//     the text (and only when it does not already start with "▁").
//  3. Added tokens whose `normalized` flag is true are found in the normalized stretches (their
//     content normalized the same way).
//  4. What remains is split into characters (bytes as <0xXX> pieces when a character is not in the
//     vocabulary) and merged pairwise, best-ranked merge first.
//
// The slow LlamaTokenizer gives different ids on some texts when legacy = false or when added tokens
// are "normalized" (see tools/python/make_tokenizer_fixtures.py); cst follows the fast tokenizer,
// which is what AutoTokenizer returns.
//
// Byte-level BPE (tokenizer.json with a ByteLevel pre-tokenizer and decoder, no normalizer, no byte
// fallback), as the `tokenizers` library runs it:
//  1. Added tokens are found as in steps 1 and 3 above (there is no normalizer, so both passes see
//     the raw text).
//  2. Each stretch between them is split into pre-tokens by one of two regexes, matched here by hand
//     (data/tokenizer.cpp spells out each alternative), with \p{L}, \p{N} and \s from the generated
//     table of data/unicode_categories.h:
//       Llama 3: pre_tokenizer Sequence[Split(pattern, behavior Isolated), ByteLevel(add_prefix_space
//                false, use_regex false)] with the pattern
//                (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
//                \s*[\r\n]+|\s+(?!\S)|\s+
//       GPT-2:   pre_tokenizer ByteLevel(add_prefix_space false, use_regex true), whose pattern is
//                's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//  3. Each pre-token's UTF-8 bytes are spelled with GPT-2's bytes_to_unicode characters. With the
//     model's "ignore_merges" (Llama 3) a pre-token that is itself a piece is that one piece;
//     otherwise its characters are merged pairwise as in step 4 above (no byte fallback: there is a
//     piece for every byte).
//  4. AutoTokenizer(text) adds what the post-processor's TemplateProcessing "single" template puts
//     around the sequence (Llama 3: <|begin_of_text|> in front); a ByteLevel post-processor adds
//     nothing.
//  Decoding maps each token's characters back to bytes (a token with a character outside
//  bytes_to_unicode, such as an added token with a space, contributes its own UTF-8 bytes) and reads
//  the bytes as UTF-8 with one U+FFFD per maximal invalid subpart, as Rust's from_utf8_lossy does.
//  Text that is not valid UTF-8 (which a Python string cannot hold) is encoded byte by byte: an
//  invalid byte counts as a character of its own that is neither letter, number nor space.
//
// Decoding ends, on every path, with transformers' clean_up_tokenization when
// clean_up_tokenization_spaces is set in tokenizer_config.json, or absent for a byte-level tokenizer
// (PreTrainedTokenizerFast's default; LlamaTokenizerFast defaults to false).
#pragma once
#include <cstdint>
#include <map>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace cst {

// A token of the Hugging Face layer, matched in the text before the BPE model sees it.
struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false;     // skipped by decode(skip_special_tokens = true)
  bool normalized = false;  // matched in normalized text rather than raw text
  bool lstrip = false;      // swallows the whitespace on its left
  bool rstrip = false;      // swallows the whitespace on its right
};

class Tokenizer {
 public:
  // files: file name -> bytes. tokenizer.json or tokenizer.model (sentencepiece) is required (see
  // above for which one is used); tokenizer_config.json, added_tokens.json, special_tokens_map.json
  // are used when present.
  explicit Tokenizer(const std::map<std::string, std::string>& files);
  static Tokenizer from_directory(const std::string& directory);  // reads those files from a dir

  // Same ids as transformers' AutoTokenizer(text, add_special_tokens=False)["input_ids"]: what trl
  // tokenizes prompts and answers with before it prepends bos_id() itself.
  std::vector<int32_t> encode(std::string_view text) const;
  // Same ids as AutoTokenizer(text)["input_ids"]: encode(text) between the special tokens that the
  // post-processor adds (byte-level: the tokenizer.json TemplateProcessing; Llama/Mistral: BOS when
  // add_bos_token, default true, and EOS when add_eos_token, as LlamaTokenizerFast rebuilds it).
  std::vector<int32_t> encode_with_special_tokens(std::string_view text) const;
  // Same text as AutoTokenizer.decode(ids, skip_special_tokens=...). An id outside the vocabulary
  // is an error (transformers silently drops it).
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens = false) const;
  // The longest start of decode(ids) that no ids appended later can change: without a character
  // whose bytes are still arriving, and without an end that the clean-up could still rewrite.
  std::string decode_settled(const std::vector<int32_t>& ids, bool skip_special_tokens) const;
  // Byte-level tokenizers only: the pre-tokens of text (step 2 of "Byte-level BPE" above, without
  // matching added tokens), spelled in bytes_to_unicode characters, as the tokenizers library's
  // pre_tokenizer.pre_tokenize_str gives them.
  std::vector<std::string> pre_tokenize(std::string_view text) const;

  int32_t bos_id() const { return bos_id_; }  // -1 when none
  int32_t eos_id() const { return eos_id_; }  // tokenizer_config.json eos_token, else </s>
  int32_t pad_id() const { return pad_id_; }  // pad_token, else eos (trl's convention)
  int vocab_size() const { return vocab_size_; }  // BPE pieces + added tokens beyond them
  std::optional<int32_t> token_id(std::string_view token) const;  // added/special token or piece
  bool is_special(int32_t id) const;
  bool is_byte(int32_t id) const;  // a byte-fallback piece <0xXX>
  const std::string& chat_template_source() const { return chat_template_source_; }
  bool legacy() const { return legacy_; }
  bool byte_level() const { return byte_level_split_ != ByteLevelSplit::none; }
  const std::vector<AddedToken>& added_tokens() const { return added_tokens_; }

 private:
  struct Merge {
    int32_t rank;
    int32_t merged_id;
  };
  // Open addressing, (left id << 32 | right id) -> merge: the lookup the BPE loop spends its time on,
  // kept in two flat arrays so a probe touches one or two cache lines.
  struct MergeTable {
    static constexpr uint64_t kEmpty = ~0ull;
    std::vector<uint64_t> keys;
    std::vector<Merge> merges;
    int shift = 64;
    void build(const std::vector<std::pair<uint64_t, Merge>>& entries);
    const Merge* find(uint64_t key) const;
  };
  struct Span {  // a piece of the text being encoded: [begin, end) and the added token there, if any
    size_t begin, end;
    int added_token_index;  // -1: ordinary text
  };
  enum class ByteLevelSplit { none, llama3, gpt2 };  // none: the Llama/Mistral pipeline

  void load_sentencepiece(const std::string& model_bytes);
  void build_merges_from_scores();
  void find_byte_pieces(bool byte_fallback);
  void load_bpe_model(const nlohmann::json& tokenizer_json, bool byte_level);
  void load_vocabulary(const nlohmann::json& vocab);
  void load_merge_list(const nlohmann::json& merges);
  void read_pipeline(const nlohmann::json& tokenizer_json);
  void read_byte_level_pipeline(const nlohmann::json& tokenizer_json, const nlohmann::json& config);
  void read_post_processor(const nlohmann::json& post_processor);
  void add_tokenizer_json_added_tokens(const nlohmann::json& tokenizer_json);
  void load_added_tokens(const std::map<std::string, std::string>& files, const nlohmann::json& config,
                         const std::optional<nlohmann::json>& tokenizer_json, bool model_from_json);
  void add_token(AddedToken token);
  void resolve_special_ids(const std::map<std::string, std::string>& files);
  void rebuild_llama_post_processor(const nlohmann::json& config);

  std::vector<Span> split_on_added_tokens(std::string_view text, bool normalized_pass) const;
  std::string normalize(std::string_view text) const;
  void encode_ordinary(std::string_view text, size_t offset_in_text, std::vector<int32_t>& ids) const;
  void encode_byte_level(std::string_view text, std::vector<int32_t>& ids) const;
  void encode_word(std::string_view word, std::vector<int32_t>& ids) const;
  const std::string& token_text(int32_t id) const;
  std::string decode_metaspace(const std::vector<int32_t>& ids, bool skip_special_tokens, bool settled_only) const;
  std::string decode_byte_level(const std::vector<int32_t>& ids, bool skip_special_tokens, bool settled_only) const;
  std::string decode_text(const std::vector<int32_t>& ids, bool skip_special_tokens, bool settled_only) const;

  // The BPE vocabulary (from tokenizer.json, or from tokenizer.model with its scores).
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::unordered_map<std::string, int32_t> piece_ids_;
  int32_t byte_piece_ids_[256];  // -1: no byte piece, or byte fallback off
  int32_t unk_id_ = 0;           // -1: unknown characters are dropped
  bool fuse_unknown_ = true;     // a run of unknown characters becomes one unk
  MergeTable merges_;
  ByteLevelSplit byte_level_split_ = ByteLevelSplit::none;
  bool ignore_merges_ = false;  // a pre-token that is a piece is not merged from its characters

  // The Hugging Face layer.
  std::vector<AddedToken> added_tokens_;
  std::unordered_map<int32_t, int> added_index_by_id_;
  std::unordered_map<std::string, int> added_index_by_content_;
  std::vector<std::string> normalized_contents_;  // per added token: the text it matches in pass 2
  bool legacy_ = true;
  bool add_prefix_space_ = true;
  bool decode_strips_leading_space_ = true;
  bool clean_up_tokenization_spaces_ = false;
  std::vector<int32_t> special_prefix_ids_, special_suffix_ids_;  // the post-processor's, around a text
  int32_t bos_id_ = -1, eos_id_ = -1, pad_id_ = -1;
  int vocab_size_ = 0;
  std::string chat_template_source_;
};

// Turns generated ids into text as they arrive. Returns only text that later ids cannot change
// (Tokenizer::decode_settled): a character whose bytes are still arriving (as <0xXX> pieces or in
// byte-level tokens) is held back until it is whole, and so is an end that the decode clean-up could
// still rewrite (" ." becomes "." once the "." arrives). The pieces concatenate to decode(ids).
class StreamingDecoder {
 public:
  explicit StreamingDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = true)
      : tokenizer_(tokenizer), skip_special_tokens_(skip_special_tokens) {}
  std::string push(int32_t id);  // the text newly completed by this id (possibly empty)
  std::string finish();          // whatever is still held back, at the end of the sequence
  const std::vector<int32_t>& ids() const { return ids_; }

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_tokens_;
  std::vector<int32_t> ids_;
  size_t emitted_bytes_ = 0;
};

}  // namespace cst
