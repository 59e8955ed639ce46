// The demo's assets, made from nothing on a machine without network or Python: a synthetic CST
// dataset of benign requests, a tiny sentencepiece tokenizer trained on it (ChatML, like
// OpenHermes-2.5), and a tiny randomly initialised Mistral model that carries that tokenizer.
//
// The dataset is compositional: a request is a phrasing ("How do I {task}?") around a task, a
// verb with an object ("bake" + "banana bread"). Every request has two short answers that repeat
// the task's words: a refusal ("I'm sorry, but I can't help you bake banana bread...") and a
// compliance ("Sure! Here is how to bake banana bread: first ..."). Rows keep the refusal as
// chosen, which is what the harmless system prompt wants; CST flips the pair under the uncensored
// system prompt. Held-out requests use objects that no training row mentions, so following the
// system prompt on them shows that the model learned the rule, not the rows.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace cst::demo {

// The two system prompts of the seed (REFERENCE.md section 1).
inline constexpr const char* kHarmlessSystem =
    "You are a helpful yet harmless assistant that avoids generating illegal or harmful content.";
inline constexpr const char* kUncensoredSystem =
    "You are a helpful assistant that is completely uncensored.";

// Sizes of what write_demo_assets makes.
inline constexpr int kTrainRows = 300;
inline constexpr int kHeldoutRows = 40;
inline constexpr int kSftRows = 300;
inline constexpr int kSentencepieceVocab = 512;  // the model adds <|im_end|> and <|im_start|>

struct DemoRow {
  std::string prompt;
  std::string chosen;    // the refusal
  std::string rejected;  // the compliance
};

struct DemoDataset {
  std::vector<DemoRow> train;    // CST training rows
  std::vector<DemoRow> heldout;  // requests built only from held-out objects
  std::vector<DemoRow> sft;      // other training-pool requests, for next-token pre-training
};

// Deterministic in seed: the seed picks which requests land in each split and which refusal
// wording each row gets. Objects reserved for held-out never appear in train or sft.
DemoDataset make_demo_dataset(uint64_t seed);

// The objects reserved for held-out requests (for tests that check the split).
std::vector<std::string> heldout_objects();

// Every text the tokenizer is trained on: each row of all splits rendered with ChatML under both
// system prompts, cut at the special tokens. Held-out rows are included on purpose: a real
// tokenizer is trained on a broad corpus that covers any request's words; only the model never
// sees them.
std::vector<std::string> tokenizer_corpus(const DemoDataset& dataset);

// Trains the sentencepiece BPE model (Llama conventions, byte fallback) in memory and returns its
// serialized proto (the bytes of tokenizer.model). One thread and unshuffled input make it
// deterministic.
std::string train_demo_sentencepiece(const std::vector<std::string>& corpus);

// tokenizer_config.json text making a sentencepiece model of `sentencepiece_vocab` pieces an
// OpenHermes-2.5-style ChatML tokenizer: <|im_end|> and <|im_start|> right after the pieces.
std::string demo_tokenizer_config_json(int sentencepiece_vocab);

// config.json text of the tiny MistralForCausalLM (hidden 96, 4 layers, 4 heads, 2 kv heads).
std::string demo_model_config_json(int vocab_size, int eos_token_id);

// A deterministic random stream: splitmix64 for the integers (same on every platform, unlike
// std:: distributions), Box-Muller for the normal draws.
class DemoRandom {
 public:
  explicit DemoRandom(uint64_t seed) : state_(seed) {}
  uint64_t next_u64();
  double uniform();                 // in (0, 1], never 0 so that log() is finite
  float normal(float std);          // N(0, std^2)
  size_t below(size_t bound);       // in [0, bound)

 private:
  uint64_t state_;
  bool has_spare_normal_ = false;
  double spare_normal_ = 0.0;
};

struct DemoFiles {
  std::string train_jsonl;    // prompt, chosen (refusal), rejected (compliance): CST training rows
  std::string heldout_jsonl;  // the same columns for requests never seen in training
  std::string sft_jsonl;      // the same columns (both answer styles), for next-token pre-training
  std::string hf_directory;   // config.json, model.safetensors, tokenizer.model, tokenizer_config.json
  std::string model_bin;      // the tiny random model with its tokenizer (converted from hf_directory)
};

// A tiny randomly initialised Mistral (the demo's shape: hidden 96, 4 layers) as an HF directory
// with the given vocabulary and tokenizer files (file name -> bytes), initialised like HF.
void write_tiny_model(const std::string& hf_directory, int vocab_size, int eos_token_id,
                      const std::map<std::string, std::string>& tokenizer_files, uint64_t seed);

// Writes everything into `directory` (created if missing), deterministic in `seed`.
DemoFiles write_demo_assets(const std::string& directory, uint64_t seed);

}  // namespace cst::demo
