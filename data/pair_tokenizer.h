// Token ids and completion masks of preference pairs, by the rules of trl 0.9.6's
// DPOTrainer.tokenize_row (the seed's era) for decoder-only models:
//
//  1. prompt ids = encode(prompt); for each answer, full = encode(prompt + answer). The answer's
//     tokens are full[len(prompt ids):], except that when the tokenizer merged the prompt's last
//     token with the answer's first one (full does not start with the prompt ids), the boundary
//     moves one token left. The prompt ids of chosen and rejected may so differ by one token.
//  2. BOS is prepended to each prompt unless it is already there; EOS is appended to each answer
//     unless it is already there.
//  3. If a prompt + the longer answer exceeds max_length, the prompt is cut to max_prompt_length
//     (keep_end keeps its last tokens, keep_start its first); if still too long, each answer is
//     cut to its first max_length - max_prompt_length tokens (EOS may be cut off, as in trl).
//  4. labels = ids with the prompt positions masked; here completion_mask[t] = 1 on answer tokens.
//
// Texts are rendered the seed's way: prompt = template.prompt(system, user),
// answer = template.answer(text) (REFERENCE.md sections 2 and 3); a multi-turn example's prompt is
// the whole conversation, template.prompt(system, history + [user]), so max_prompt_length and the
// truncation mode apply to all of it (keep_end drops the earliest turns first).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/chat_template.h"
#include "data/preference.h"
#include "data/tokenizer.h"

namespace cst {

enum class TruncationMode { keep_end, keep_start };
TruncationMode truncation_mode_by_name(const std::string& name);  // "keep_end" or "keep_start"
const char* truncation_mode_name(TruncationMode mode);

struct TokenizeOptions {
  int max_length = 512;  // trl's defaults when unset
  int max_prompt_length = 128;
  TruncationMode truncation_mode = TruncationMode::keep_end;
  // tokenize_pairs only: a pair trl would reject (see tokenize_rendered_pair) is dropped and
  // counted instead of being an error.
  bool skip_bad_pairs = false;
};

// mask[t] = 1 iff ids[t] is a completion (answer) token, i.e. trl's labels[t] != -100.
struct TokenizedSequence {
  std::vector<int32_t> ids;
  std::vector<uint8_t> completion_mask;
};

struct TokenizedPair {
  std::string system;  // the example's system prompt, for per-system-prompt metrics
  TokenizedSequence chosen, rejected;
  // Length of trl's prompt_input_ids: the prompt alone (BOS included, truncated like the pair),
  // as a generation prompt would be fed.
  int prompt_length = 0;
  bool truncated = false;     // chosen or rejected lost tokens to max_length
  int64_t example_index = 0;  // index into the examples given to tokenize_pairs
};

// trl's tokenize_row on texts already rendered with the chat template. Throws cst::Error where
// trl raises: the prompt + answer encodes shorter than the prompt alone, or the chosen and
// rejected prompt ids differ by more than the one merged boundary token.
TokenizedPair tokenize_rendered_pair(const Tokenizer& tokenizer, const std::string& prompt_text,
                                     const std::string& chosen_text,
                                     const std::string& rejected_text,
                                     const TokenizeOptions& options);

// Renders the example with the template, then tokenize_rendered_pair. example_index is left 0.
TokenizedPair tokenize_pair(const Tokenizer& tokenizer, const ChatTemplate& chat_template,
                            const PreferenceExample& example, const TokenizeOptions& options);

struct DatasetStats {
  int64_t rows = 0;             // source rows the examples came from
  int64_t pairs = 0;            // tokenized pairs kept
  int64_t chosen_tokens = 0;    // total length of the chosen sequences (prompt + answer)
  int64_t rejected_tokens = 0;  // total length of the rejected sequences (prompt + answer)
  int64_t prompt_tokens = 0;    // total prompt_length
  int64_t truncated_pairs = 0;  // pairs that lost tokens to max_length
  int64_t dropped_pairs = 0;    // pairs trl would reject, dropped under skip_bad_pairs
  int64_t longest_sequence = 0;
};

// Tokenizes every example (in parallel; the result keeps the examples' order) and fills stats
// (may be null). An error names the example's source row.
std::vector<TokenizedPair> tokenize_pairs(const Tokenizer& tokenizer,
                                          const ChatTemplate& chat_template,
                                          const std::vector<PreferenceExample>& examples,
                                          const TokenizeOptions& options, DatasetStats* stats);

// The data path of a run: read the table at path, build the examples, tokenize them.
struct PreferenceData {
  std::vector<PreferenceExample> examples;
  std::vector<TokenizedPair> pairs;  // pairs[i].example_index indexes examples
  PreferenceReport report;
  DatasetStats stats;
};
PreferenceData load_preference_data(const std::string& path, const Tokenizer& tokenizer,
                                    const ChatTemplate& chat_template,
                                    const PreferenceOptions& preference_options,
                                    const TokenizeOptions& tokenize_options);

// A few readable lines: counts, mean lengths, truncation.
std::string format_dataset_stats(const DatasetStats& stats, const TokenizeOptions& options);

}  // namespace cst
