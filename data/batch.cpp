#include "data/batch.h"

#include <algorithm>

#include "kernels/error.h"

namespace cst {
namespace {

// splitmix64 (Steele, Lea, Flood 2014): a tiny generator whose output is fixed by its definition,
// unlike std:: distributions, whose results differ between standard libraries.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t state) : state_(state) {}
  uint64_t next() {
    state_ += 0x9E3779B97F4A7C15ull;
    uint64_t z = state_;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // A number in [0, bound): the high 64 bits of next() * bound (bias below 2^-40 for our sizes).
  uint64_t below(uint64_t bound) { return uint64_t((unsigned __int128)next() * bound >> 64); }

 private:
  uint64_t state_;
};

template <class T>
void fisher_yates_shuffle(std::vector<T>& items, SplitMix64& generator) {
  for (size_t i = items.size(); i > 1; i--) {
    std::swap(items[i - 1], items[generator.below(i)]);
  }
}

// What padding costs for a pair: its longer sequence.
size_t pair_length(const TokenizedPair& pair) {
  return std::max(pair.chosen.ids.size(), pair.rejected.ids.size());
}

// Appends one sequence; in pad mode it is right-padded to row_length tokens.
void append_sequence(Batch& batch, const TokenizedSequence& sequence, size_t row_length,
                     int32_t pad_id) {
  size_t length = sequence.ids.size();
  for (size_t t = 0; t < row_length; t++) {
    bool real = t < length;
    bool next_is_completion = t + 1 < length && sequence.completion_mask[t + 1];
    batch.tokens.push_back(real ? sequence.ids[t] : pad_id);
    batch.positions.push_back(int32_t(t));
    batch.labels.push_back(next_is_completion ? sequence.ids[t + 1] : -1);
  }
  batch.padding_tokens += int64_t(row_length - length);
  batch.cu_seqlens.push_back(int32_t(batch.tokens.size()));
  batch.longest_sequence = std::max(batch.longest_sequence, int32_t(row_length));
}

}  // namespace

Batch make_batch(const std::vector<TokenizedPair>& pairs, const std::vector<int64_t>& indices,
                 bool packing, int32_t pad_id) {
  size_t padded_length = 0;
  for (int64_t index : indices) {
    if (index < 0 || index >= int64_t(pairs.size())) {
      fail("batch pair index ", index, " is outside the ", pairs.size(), " tokenized pairs");
    }
    padded_length = std::max(padded_length, pair_length(pairs[size_t(index)]));
  }
  Batch batch;
  batch.pair_indices = indices;
  batch.cu_seqlens.push_back(0);
  for (int64_t index : indices) {
    const TokenizedPair& pair = pairs[size_t(index)];
    for (const TokenizedSequence* sequence : {&pair.chosen, &pair.rejected}) {
      size_t row_length = packing ? sequence->ids.size() : padded_length;
      append_sequence(batch, *sequence, row_length, pad_id);
    }
  }
  return batch;
}

PairLoader::PairLoader(const std::vector<TokenizedPair>& pairs, const BatchOptions& options)
    : pairs_(&pairs), options_(options) {
  if (pairs.empty()) fail("no preference pairs to batch");
  if (options.pairs_per_batch < 1) {
    fail("pairs per batch must be at least 1, got ", options.pairs_per_batch);
  }
  if (options.length_bucketing && options.bucket_window_batches < 1) {
    fail("bucket window must be at least 1 batch, got ", options.bucket_window_batches);
  }
}

int64_t PairLoader::batches_per_epoch() const {
  int64_t per_batch = options_.pairs_per_batch;
  return (int64_t(pairs_->size()) + per_batch - 1) / per_batch;
}

std::vector<std::vector<int64_t>> PairLoader::epoch_plan(int64_t epoch) const {
  // Each epoch gets its own generator, so any epoch can be planned without replaying earlier ones.
  SplitMix64 generator(options_.seed + uint64_t(epoch) * 0xD1B54A32D192ED03ull);
  std::vector<int64_t> order(pairs_->size());
  for (size_t i = 0; i < order.size(); i++) order[i] = int64_t(i);
  if (options_.shuffle) fisher_yates_shuffle(order, generator);

  if (options_.length_bucketing) {
    size_t window = size_t(options_.bucket_window_batches) * size_t(options_.pairs_per_batch);
    auto shorter = [&](int64_t a, int64_t b) {
      return pair_length((*pairs_)[size_t(a)]) < pair_length((*pairs_)[size_t(b)]);
    };
    // stable_sort keeps equal lengths in shuffled order, so the result is fully determined.
    for (size_t begin = 0; begin < order.size(); begin += window) {
      size_t end = std::min(order.size(), begin + window);
      std::stable_sort(order.begin() + ptrdiff_t(begin), order.begin() + ptrdiff_t(end), shorter);
    }
  }

  std::vector<std::vector<int64_t>> batches;
  for (size_t begin = 0; begin < order.size(); begin += size_t(options_.pairs_per_batch)) {
    size_t end = std::min(order.size(), begin + size_t(options_.pairs_per_batch));
    batches.emplace_back(order.begin() + ptrdiff_t(begin), order.begin() + ptrdiff_t(end));
  }
  // Sorted windows would otherwise run from short to long batches within each window.
  if (options_.length_bucketing && options_.shuffle) fisher_yates_shuffle(batches, generator);
  return batches;
}

Batch PairLoader::next() {
  if (plan_epoch_ != position_.epoch) {
    plan_ = epoch_plan(position_.epoch);
    plan_epoch_ = position_.epoch;
  }
  Batch batch = make_batch(*pairs_, plan_[size_t(position_.batch_in_epoch)], options_.packing,
                           options_.pad_id);
  skip(1);
  return batch;
}

void PairLoader::skip(int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    if (++position_.batch_in_epoch == batches_per_epoch()) {
      position_.epoch++;
      position_.batch_in_epoch = 0;
    }
  }
}

PairLoader::Position PairLoader::position() const { return position_; }

void PairLoader::restore(Position position) {
  if (position.epoch < 0 || position.batch_in_epoch < 0 ||
      position.batch_in_epoch >= batches_per_epoch()) {
    fail("data position (epoch ", position.epoch, ", batch ", position.batch_in_epoch,
         ") is outside an epoch of ", batches_per_epoch(), " batches");
  }
  position_ = position;
}

}  // namespace cst
