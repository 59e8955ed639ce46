// Batches of preference pairs. A batch holds whole pairs: the chosen and the rejected sequence of
// a pair always travel together, because the DPO loss compares their log-probabilities.
//
// Two layouts of the same tokens:
//  - packing: sequences laid end to end with no padding; cu_seqlens marks where each one starts,
//    and attention must not cross those boundaries (varlen attention).
//  - padding: every sequence right-padded with pad_id to the batch's longest one, as trl's collator
//    does; padded positions carry label -1 and, being after the real tokens, are never attended to
//    by them under the causal mask.
//
// Length bucketing cuts padding: an epoch's shuffled order is cut into windows, each window is
// sorted by length so neighbours have similar lengths, and the resulting batches are shuffled
// again so the epoch does not run from short to long. Shuffles are Fisher-Yates over splitmix64,
// so the batches are the same on every platform for a given seed.
#pragma once
#include <cstdint>
#include <vector>

#include "data/pair_tokenizer.h"

namespace cst {

struct Batch {
  // N tokens laid end to end; sequence 2i is pair i's chosen, 2i+1 its rejected.
  std::vector<int32_t> tokens;     // N
  std::vector<int32_t> positions;  // N, 0-based within each sequence
  // labels[t] = tokens[t+1] if token t+1 is a completion token of the same sequence, else -1:
  // position t predicts the next token, and only answer tokens are scored.
  std::vector<int32_t> labels;        // N
  std::vector<int32_t> cu_seqlens;    // 2P + 1 offsets (padded rows in pad mode)
  std::vector<int64_t> pair_indices;  // P indices into the tokenized pairs
  int64_t padding_tokens = 0;         // tokens that are padding (pad mode)
  int32_t longest_sequence = 0;       // max over cu_seqlens differences, for attention kernels
};

struct BatchOptions {
  int pairs_per_batch = 2;
  bool packing = true;
  bool length_bucketing = true;
  uint64_t seed = 42;
  bool shuffle = true;
  int32_t pad_id = 0;  // the tokenizer's pad id (trl: pad, else eos)
  // Batches per bucketing window: larger windows pad less but order the data less randomly.
  int bucket_window_batches = 32;
};

// Builds one batch from the given pairs, in the given order.
Batch make_batch(const std::vector<TokenizedPair>& pairs, const std::vector<int64_t>& indices,
                 bool packing, int32_t pad_id);

// Iterates epochs of batches over the pairs, deterministic in the seed. Every pair appears exactly
// once per epoch; the last batch of an epoch is smaller when the pairs do not divide evenly.
// The loader keeps a reference to pairs, which must outlive it.
class PairLoader {
 public:
  PairLoader(const std::vector<TokenizedPair>& pairs, const BatchOptions& options);
  int64_t batches_per_epoch() const;
  Batch next();  // wraps to a new epoch (new shuffle) at the end
  void skip(int64_t count);  // moves past count batches without building them

  // The batch next() returns next. Restoring a saved position reproduces the same batches.
  struct Position {
    int64_t epoch = 0, batch_in_epoch = 0;
  };
  Position position() const;
  void restore(Position position);

  // The pair indices of every batch of an epoch, in order.
  std::vector<std::vector<int64_t>> epoch_plan(int64_t epoch) const;

 private:
  const std::vector<TokenizedPair>* pairs_;
  BatchOptions options_;
  Position position_;
  std::vector<std::vector<int64_t>> plan_;  // epoch_plan(plan_epoch_), built when needed
  int64_t plan_epoch_ = -1;
};

}  // namespace cst
