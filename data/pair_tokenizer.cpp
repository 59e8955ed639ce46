#include "data/pair_tokenizer.h"

#include <algorithm>
#include <cstdio>

#include "kernels/error.h"

namespace cst {
namespace {

using Ids = std::vector<int32_t>;

// One answer tokenized after its prompt: the prompt part and the answer part of the same ids.
struct SplitSequence {
  Ids prompt, answer;
};

// trl's build_tokenized_answer: encode(prompt + answer) split where the prompt ends. Sentencepiece
// may merge the prompt's last token with the answer's first; then the joint ids do not start with
// the prompt's own ids, and the boundary moves one token left (trl moves it by exactly one).
SplitSequence split_after_prompt(const Tokenizer& tokenizer, const std::string& prompt_text,
                                 const Ids& prompt_ids, const std::string& answer_text) {
  Ids full = tokenizer.encode(prompt_text + answer_text);
  if (full.size() < prompt_ids.size()) {
    fail("prompt + answer encodes to ", full.size(), " tokens, fewer than the prompt alone (",
         prompt_ids.size(), ")");
  }
  size_t boundary = prompt_ids.size();
  if (!std::equal(prompt_ids.begin(), prompt_ids.end(), full.begin())) boundary--;
  return {Ids(full.begin(), full.begin() + boundary), Ids(full.begin() + boundary, full.end())};
}

// trl accepts a chosen and a rejected prompt that differ only in the merged boundary token.
void check_prompts_agree(const Ids& chosen_prompt, const Ids& rejected_prompt) {
  size_t common = std::min(chosen_prompt.size(), rejected_prompt.size());
  size_t differing = 0;
  for (size_t i = 0; i < common; i++) differing += chosen_prompt[i] != rejected_prompt[i];
  size_t length_difference = std::max(chosen_prompt.size(), rejected_prompt.size()) - common;
  if (differing > 1 || length_difference > 1) {
    fail("chosen and rejected prompt ids differ in more than the last token (", differing,
         " differing tokens, lengths ", chosen_prompt.size(), " and ", rejected_prompt.size(), ")");
  }
}

void prepend_bos_if_missing(Ids& prompt, int32_t bos_id) {
  if (prompt.empty() || prompt.front() != bos_id) prompt.insert(prompt.begin(), bos_id);
}

void append_eos_if_missing(Ids& answer, int32_t eos_id) {
  if (answer.empty() || answer.back() != eos_id) answer.push_back(eos_id);
}

// Keeps max_prompt_length tokens of the prompt, from its end or its start.
void cut_prompt(Ids& prompt, const TokenizeOptions& options) {
  size_t keep = size_t(options.max_prompt_length);
  if (prompt.size() <= keep) return;
  if (options.truncation_mode == TruncationMode::keep_end) {
    prompt.erase(prompt.begin(), prompt.end() - ptrdiff_t(keep));
  } else {
    prompt.resize(keep);
  }
}

// trl measures every prompt against the longer answer, so both sequences are cut alike: first
// the prompts (the prompt alone too), then, if still too long, the answers.
void truncate_to_max_length(SplitSequence& chosen, SplitSequence& rejected, Ids& prompt_alone,
                            const TokenizeOptions& options) {
  size_t longer_answer = std::max(chosen.answer.size(), rejected.answer.size());
  size_t max_length = size_t(options.max_length);
  for (Ids* prompt : {&chosen.prompt, &rejected.prompt, &prompt_alone}) {
    if (prompt->size() + longer_answer > max_length) cut_prompt(*prompt, options);
  }
  size_t answer_budget = size_t(options.max_length - options.max_prompt_length);
  for (SplitSequence* sequence : {&chosen, &rejected}) {
    if (sequence->prompt.size() + longer_answer > max_length) {
      sequence->answer.resize(std::min(sequence->answer.size(), answer_budget));
    }
  }
}

void check_options(const TokenizeOptions& options) {
  if (options.max_prompt_length < 1 || options.max_prompt_length >= options.max_length) {
    fail("max_prompt_length (", options.max_prompt_length, ") must be at least 1 and less than ",
         "max_length (", options.max_length, ")");
  }
}

TokenizedSequence join(const Ids& prompt, const Ids& answer) {
  TokenizedSequence sequence;
  sequence.ids = prompt;
  sequence.ids.insert(sequence.ids.end(), answer.begin(), answer.end());
  sequence.completion_mask.assign(prompt.size(), 0);
  sequence.completion_mask.resize(sequence.ids.size(), 1);
  return sequence;
}

}  // namespace

TruncationMode truncation_mode_by_name(const std::string& name) {
  if (name == "keep_end") return TruncationMode::keep_end;
  if (name == "keep_start") return TruncationMode::keep_start;
  fail("unknown truncation mode '", name, "' (expected keep_end or keep_start)");
}

const char* truncation_mode_name(TruncationMode mode) {
  return mode == TruncationMode::keep_end ? "keep_end" : "keep_start";
}

TokenizedPair tokenize_rendered_pair(const Tokenizer& tokenizer, const std::string& prompt_text,
                                     const std::string& chosen_text,
                                     const std::string& rejected_text,
                                     const TokenizeOptions& options) {
  check_options(options);
  if (tokenizer.bos_id() < 0) fail("the tokenizer has no BOS token, which trl's rules prepend");
  Ids prompt_ids = tokenizer.encode(prompt_text);
  SplitSequence chosen = split_after_prompt(tokenizer, prompt_text, prompt_ids, chosen_text);
  SplitSequence rejected = split_after_prompt(tokenizer, prompt_text, prompt_ids, rejected_text);
  check_prompts_agree(chosen.prompt, rejected.prompt);

  // The prompt alone stops where the earlier of the two boundaries is.
  prompt_ids.resize(std::min(chosen.prompt.size(), rejected.prompt.size()));
  for (Ids* prompt : {&prompt_ids, &chosen.prompt, &rejected.prompt}) {
    prepend_bos_if_missing(*prompt, tokenizer.bos_id());
  }
  append_eos_if_missing(chosen.answer, tokenizer.eos_id());
  append_eos_if_missing(rejected.answer, tokenizer.eos_id());

  size_t chosen_length = chosen.prompt.size() + chosen.answer.size();
  size_t rejected_length = rejected.prompt.size() + rejected.answer.size();
  truncate_to_max_length(chosen, rejected, prompt_ids, options);

  TokenizedPair pair;
  pair.chosen = join(chosen.prompt, chosen.answer);
  pair.rejected = join(rejected.prompt, rejected.answer);
  pair.prompt_length = int(prompt_ids.size());
  pair.truncated =
      pair.chosen.ids.size() < chosen_length || pair.rejected.ids.size() < rejected_length;
  return pair;
}

TokenizedPair tokenize_pair(const Tokenizer& tokenizer, const ChatTemplate& chat_template,
                            const PreferenceExample& example, const TokenizeOptions& options) {
  TokenizedPair pair = tokenize_rendered_pair(
      tokenizer, chat_template.prompt(example.system, example.prompt_turns()),
      chat_template.answer(example.chosen), chat_template.answer(example.rejected), options);
  pair.system = example.system;
  return pair;
}

std::vector<TokenizedPair> tokenize_pairs(const Tokenizer& tokenizer,
                                          const ChatTemplate& chat_template,
                                          const std::vector<PreferenceExample>& examples,
                                          const TokenizeOptions& options, DatasetStats* stats) {
  check_options(options);
  int64_t count = int64_t(examples.size());
  std::vector<TokenizedPair> tokenized(examples.size());
  // Exceptions must not leave an OpenMP region: each example keeps its own error message.
  std::vector<std::string> errors(examples.size());
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t i = 0; i < count; i++) {
    try {
      tokenized[size_t(i)] = tokenize_pair(tokenizer, chat_template, examples[size_t(i)], options);
      tokenized[size_t(i)].example_index = i;
    } catch (const std::exception& error) {
      errors[size_t(i)] = error.what();
    }
  }

  DatasetStats counts;
  std::vector<TokenizedPair> kept;
  kept.reserve(tokenized.size());
  for (size_t i = 0; i < tokenized.size(); i++) {
    // Examples come in row order, so a new source row starts wherever the row number changes.
    if (i == 0 || examples[i].source_row != examples[i - 1].source_row) counts.rows++;
    if (!errors[i].empty()) {
      if (!options.skip_bad_pairs) fail("row ", examples[i].source_row, ": ", errors[i]);
      counts.dropped_pairs++;
      continue;
    }
    const TokenizedPair& pair = tokenized[i];
    counts.chosen_tokens += int64_t(pair.chosen.ids.size());
    counts.rejected_tokens += int64_t(pair.rejected.ids.size());
    counts.prompt_tokens += pair.prompt_length;
    counts.truncated_pairs += pair.truncated;
    counts.longest_sequence = std::max({counts.longest_sequence, int64_t(pair.chosen.ids.size()),
                                        int64_t(pair.rejected.ids.size())});
    kept.push_back(std::move(tokenized[i]));
  }
  counts.pairs = int64_t(kept.size());
  if (stats != nullptr) *stats = counts;
  return kept;
}

PreferenceData load_preference_data(const std::string& path, const Tokenizer& tokenizer,
                                    const ChatTemplate& chat_template,
                                    const PreferenceOptions& preference_options,
                                    const TokenizeOptions& tokenize_options) {
  check_options(tokenize_options);  // before reading, and so that only row errors follow
  const PreferenceColumns& names = preference_options.columns;
  std::vector<std::string> wanted = {names.prompt, names.chosen, names.rejected};
  // The system column is read even under CST, so that build_preference_examples can refuse a
  // table that has one.
  if (!names.system.empty()) wanted.push_back(names.system);
  PreferenceData data;
  data.examples =
      build_preference_examples(read_table(path, wanted), preference_options, &data.report);
  try {
    data.pairs =
        tokenize_pairs(tokenizer, chat_template, data.examples, tokenize_options, &data.stats);
  } catch (const Error& error) {
    fail(path, " ", error.what());  // "<path> row N: ..." like the table errors
  }
  return data;
}

std::string format_dataset_stats(const DatasetStats& stats, const TokenizeOptions& options) {
  auto mean = [&](int64_t total) {
    return stats.pairs ? double(total) / double(stats.pairs) : 0.0;
  };
  auto percent = [&](int64_t part) {
    return stats.pairs ? 100.0 * double(part) / double(stats.pairs) : 0.0;
  };
  char text[512];
  std::snprintf(text, sizeof text,
                "dataset: %lld rows -> %lld pairs (%lld dropped)\n"
                "tokens: chosen %lld (mean %.1f), rejected %lld (mean %.1f), prompt mean %.1f, "
                "longest sequence %lld\n"
                "truncated to max_length %d / max_prompt_length %d (%s): %lld pairs (%.1f%%)\n",
                (long long)stats.rows, (long long)stats.pairs, (long long)stats.dropped_pairs,
                (long long)stats.chosen_tokens, mean(stats.chosen_tokens),
                (long long)stats.rejected_tokens, mean(stats.rejected_tokens),
                mean(stats.prompt_tokens), (long long)stats.longest_sequence, options.max_length,
                options.max_prompt_length, truncation_mode_name(options.truncation_mode),
                (long long)stats.truncated_pairs, percent(stats.truncated_pairs));
  return text;
}

}  // namespace cst
