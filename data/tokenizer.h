// Tokenizer: the Llama/Mistral BPE vocabulary plus the Hugging Face layer on top of it (added
// tokens, the `legacy` prefix rule, the fast tokenizer's decoder), producing the same ids as
// transformers' AutoTokenizer (LlamaTokenizerFast) for the same tokenizer files.
//
// Where the vocabulary and merges come from, as AutoTokenizer decides it:
//  - tokenizer.json (the fast tokenizer's own file) when present: model.vocab, and merges ranked by
//    their line in model.merges. Only the Llama/Mistral BPE with byte fallback and the "▁" metaspace
//    pipeline is read; Unigram, WordPiece and byte-level BPE (GPT-2, Llama 3) are refused by name.
//    If tokenizer.model is there too it is not read: where the two disagree, tokenizer.json wins.
//  - tokenizer.model (sentencepiece) otherwise, or when tokenizer_config.json sets add_prefix_space
//    or from_slow (LlamaTokenizerFast then converts tokenizer.model again and ignores tokenizer.json).
//    A merge (a, b) exists when the piece a+b is in the vocabulary; merges rank by that piece's score
//    (higher first), ties by the merged piece's id, then the ids of a and b: the order transformers'
//    converter writes them into tokenizer.json.
//
// Encoding, the way the fast tokenizer does it:
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

  // Same ids as transformers' AutoTokenizer(text, add_special_tokens=False)["input_ids"].
  std::vector<int32_t> encode(std::string_view text) const;
  // Same text as AutoTokenizer.decode(ids, skip_special_tokens=...). An id outside the vocabulary
  // is an error (transformers silently drops it).
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens = false) const;

  int32_t bos_id() const { return bos_id_; }  // -1 when none
  int32_t eos_id() const { return eos_id_; }  // tokenizer_config.json eos_token, else </s>
  int32_t pad_id() const { return pad_id_; }  // pad_token, else eos (trl's convention)
  int vocab_size() const { return vocab_size_; }  // BPE pieces + added tokens beyond them
  std::optional<int32_t> token_id(std::string_view token) const;  // added/special token or piece
  bool is_special(int32_t id) const;
  bool is_byte(int32_t id) const;  // a byte-fallback piece <0xXX>
  const std::string& chat_template_source() const { return chat_template_source_; }
  bool legacy() const { return legacy_; }
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

  void load_sentencepiece(const std::string& model_bytes);
  void build_merges_from_scores();
  void find_byte_pieces(bool byte_fallback);
  void load_bpe_model(const nlohmann::json& tokenizer_json);
  void load_vocabulary(const nlohmann::json& vocab);
  void load_merge_list(const nlohmann::json& merges);
  void read_pipeline(const nlohmann::json& tokenizer_json);
  void add_tokenizer_json_added_tokens(const nlohmann::json& tokenizer_json);
  void load_added_tokens(const std::map<std::string, std::string>& files, const nlohmann::json& config,
                         const std::optional<nlohmann::json>& tokenizer_json, bool model_from_json);
  void add_token(AddedToken token);
  void resolve_special_ids(const std::map<std::string, std::string>& files);

  std::vector<Span> split_on_added_tokens(std::string_view text, bool normalized_pass) const;
  std::string normalize(std::string_view text) const;
  void encode_ordinary(std::string_view text, size_t offset_in_text, std::vector<int32_t>& ids) const;
  void encode_word(std::string_view word, std::vector<int32_t>& ids) const;
  const std::string& token_text(int32_t id) const;

  // The BPE vocabulary (from tokenizer.json, or from tokenizer.model with its scores).
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::unordered_map<std::string, int32_t> piece_ids_;
  int32_t byte_piece_ids_[256];  // -1: no byte piece, or byte fallback off
  int32_t unk_id_ = 0;           // -1: unknown characters are dropped
  bool fuse_unknown_ = true;     // a run of unknown characters becomes one unk
  MergeTable merges_;

  // The Hugging Face layer.
  std::vector<AddedToken> added_tokens_;
  std::unordered_map<int32_t, int> added_index_by_id_;
  std::unordered_map<std::string, int> added_index_by_content_;
  std::vector<std::string> normalized_contents_;  // per added token: the text it matches in pass 2
  bool legacy_ = true;
  bool add_prefix_space_ = true;
  bool decode_strips_leading_space_ = true;
  int32_t bos_id_ = -1, eos_id_ = -1, pad_id_ = -1;
  int vocab_size_ = 0;
  std::string chat_template_source_;
};

// Turns generated ids into text as they arrive. Returns only text that is complete: a character
// whose bytes are still arriving as <0xXX> pieces is held back until it is whole.
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
