// Batching of preference pairs: hand-checked layouts (packed and padded), the loader's epoch
// guarantees (each pair once, chosen and rejected together), determinism, restore, and what length
// bucketing saves in padding on the real dataset.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <set>

#include "data/batch.h"
#include "kernels/error.h"

namespace cst {
namespace {

TokenizedSequence sequence(std::vector<int32_t> ids, std::vector<uint8_t> mask) {
  return {std::move(ids), std::move(mask)};
}

// Two small pairs whose labels can be checked by hand.
std::vector<TokenizedPair> hand_pairs() {
  TokenizedPair first, second;
  first.chosen = sequence({1, 10, 11, 12}, {0, 0, 1, 1});
  first.rejected = sequence({1, 10, 13}, {0, 0, 1});
  second.chosen = sequence({1, 20, 21}, {0, 1, 1});
  second.rejected = sequence({1, 20, 22, 23, 24}, {0, 1, 1, 1, 1});
  return {first, second};
}

// Pairs whose lengths vary widely, as in real data: pair i has sequences of about 5 + 37i mod 400.
std::vector<TokenizedPair> varied_pairs(int count) {
  std::vector<TokenizedPair> pairs(static_cast<size_t>(count));
  for (int i = 0; i < count; i++) {
    int length = 5 + (37 * i) % 400;
    pairs[size_t(i)].chosen =
        sequence(std::vector<int32_t>(size_t(length), i), std::vector<uint8_t>(size_t(length), 1));
    pairs[size_t(i)].rejected = sequence(std::vector<int32_t>(size_t(length / 2 + 1), i),
                                         std::vector<uint8_t>(size_t(length / 2 + 1), 1));
  }
  return pairs;
}

TEST(Batch, PackedLayoutIsHandChecked) {
  auto pairs = hand_pairs();
  Batch batch = make_batch(pairs, {1, 0}, /*packing=*/true, /*pad_id=*/99);
  // Sequences in order: pair 1 chosen, pair 1 rejected, pair 0 chosen, pair 0 rejected.
  EXPECT_EQ(batch.tokens,
            (std::vector<int32_t>{1, 20, 21, 1, 20, 22, 23, 24, 1, 10, 11, 12, 1, 10, 13}));
  EXPECT_EQ(batch.positions, (std::vector<int32_t>{0, 1, 2, 0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 1, 2}));
  // Position t is labelled with token t+1 when that token is an answer token of the same sequence.
  EXPECT_EQ(batch.labels,
            (std::vector<int32_t>{20, 21, -1, 20, 22, 23, 24, -1, -1, 11, 12, -1, -1, 13, -1}));
  EXPECT_EQ(batch.cu_seqlens, (std::vector<int32_t>{0, 3, 8, 12, 15}));
  EXPECT_EQ(batch.pair_indices, (std::vector<int64_t>{1, 0}));
  EXPECT_EQ(batch.padding_tokens, 0);
  EXPECT_EQ(batch.longest_sequence, 5);
}

TEST(Batch, PaddedLayoutIsHandChecked) {
  auto pairs = hand_pairs();
  Batch batch = make_batch(pairs, {0, 1}, /*packing=*/false, /*pad_id=*/99);
  // Every sequence padded to the longest (5) with the pad id and label -1.
  EXPECT_EQ(batch.tokens, (std::vector<int32_t>{1, 10, 11, 12, 99, 1, 10, 13, 99, 99,  //
                                                1, 20, 21, 99, 99, 1, 20, 22, 23, 24}));
  EXPECT_EQ(batch.labels, (std::vector<int32_t>{-1, 11, 12, -1, -1, -1, 13, -1, -1, -1,  //
                                                20, 21, -1, -1, -1, 20, 22, 23, 24, -1}));
  EXPECT_EQ(batch.positions, (std::vector<int32_t>{0, 1, 2, 3, 4, 0, 1, 2, 3, 4,  //
                                                   0, 1, 2, 3, 4, 0, 1, 2, 3, 4}));
  EXPECT_EQ(batch.cu_seqlens, (std::vector<int32_t>{0, 5, 10, 15, 20}));
  EXPECT_EQ(batch.padding_tokens, 1 + 2 + 2 + 0);
}

TEST(Batch, BadPairIndexIsAnError) {
  auto pairs = hand_pairs();
  EXPECT_THROW(make_batch(pairs, {2}, true, 0), Error);
  EXPECT_THROW(make_batch(pairs, {-1}, true, 0), Error);
}

// Every pair exactly once per epoch, for batch sizes that do and do not divide the pair count.
TEST(PairLoader, EveryPairOncePerEpoch) {
  auto pairs = varied_pairs(101);
  for (int per_batch : {1, 2, 4, 7}) {
    for (bool bucketing : {false, true}) {
      BatchOptions options;
      options.pairs_per_batch = per_batch;
      options.length_bucketing = bucketing;
      options.bucket_window_batches = 4;
      PairLoader loader(pairs, options);
      EXPECT_EQ(loader.batches_per_epoch(), (101 + per_batch - 1) / per_batch);
      for (int epoch = 0; epoch < 2; epoch++) {
        std::multiset<int64_t> seen;
        for (int64_t b = 0; b < loader.batches_per_epoch(); b++) {
          Batch batch = loader.next();
          ASSERT_LE(batch.pair_indices.size(), size_t(per_batch));
          ASSERT_EQ(batch.cu_seqlens.size(), 2 * batch.pair_indices.size() + 1);
          // Sequence 2i is the chosen and 2i+1 the rejected of pair i: the pair's own tokens.
          for (size_t i = 0; i < batch.pair_indices.size(); i++) {
            const TokenizedPair& pair = pairs[size_t(batch.pair_indices[i])];
            EXPECT_EQ(batch.cu_seqlens[2 * i + 1] - batch.cu_seqlens[2 * i],
                      int32_t(pair.chosen.ids.size()));
            EXPECT_EQ(batch.cu_seqlens[2 * i + 2] - batch.cu_seqlens[2 * i + 1],
                      int32_t(pair.rejected.ids.size()));
            EXPECT_EQ(batch.tokens[size_t(batch.cu_seqlens[2 * i])], pair.chosen.ids[0]);
          }
          seen.insert(batch.pair_indices.begin(), batch.pair_indices.end());
        }
        ASSERT_EQ(seen.size(), 101u);
        EXPECT_EQ(std::set<int64_t>(seen.begin(), seen.end()).size(), 101u) << "a pair repeated";
        EXPECT_EQ(loader.position().epoch, epoch + 1);
      }
    }
  }
}

std::vector<std::vector<int64_t>> first_batches(PairLoader& loader, int count) {
  std::vector<std::vector<int64_t>> batches;
  for (int i = 0; i < count; i++) batches.push_back(loader.next().pair_indices);
  return batches;
}

TEST(PairLoader, DeterministicInTheSeed) {
  auto pairs = varied_pairs(64);
  BatchOptions options;
  PairLoader first(pairs, options), second(pairs, options);
  auto batches = first_batches(first, 80);  // crosses into the third epoch
  EXPECT_EQ(batches, first_batches(second, 80));
  // A new epoch reshuffles; another seed gives another order.
  EXPECT_NE(std::vector(batches.begin(), batches.begin() + 32),
            std::vector(batches.begin() + 32, batches.begin() + 64));
  options.seed = 43;
  PairLoader other_seed(pairs, options);
  EXPECT_NE(batches, first_batches(other_seed, 80));
}

// Without shuffling or bucketing the pairs come in their order, the last batch short.
TEST(PairLoader, SequentialWithoutShuffleOrBucketing) {
  auto pairs = varied_pairs(5);
  BatchOptions options;
  options.shuffle = false;
  options.length_bucketing = false;
  PairLoader loader(pairs, options);
  EXPECT_EQ(first_batches(loader, 4),
            (std::vector<std::vector<int64_t>>{{0, 1}, {2, 3}, {4}, {0, 1}}));
}

TEST(PairLoader, RestoreReproducesTheSameBatches) {
  auto pairs = varied_pairs(50);
  BatchOptions options;
  options.packing = false;
  PairLoader loader(pairs, options);
  first_batches(loader, 37);  // into the second epoch
  PairLoader::Position saved = loader.position();
  EXPECT_EQ(saved.epoch, 1);
  EXPECT_EQ(saved.batch_in_epoch, 12);
  std::vector<Batch> expected;
  for (int i = 0; i < 20; i++) expected.push_back(loader.next());

  PairLoader resumed(pairs, options);
  resumed.restore(saved);
  for (const Batch& batch : expected) {
    Batch again = resumed.next();
    EXPECT_EQ(again.pair_indices, batch.pair_indices);
    EXPECT_EQ(again.tokens, batch.tokens);
    EXPECT_EQ(again.labels, batch.labels);
  }
  EXPECT_THROW(resumed.restore({0, 25}), Error);
  EXPECT_THROW(resumed.restore({-1, 0}), Error);
}

TEST(PairLoader, BadOptionsAreErrors) {
  std::vector<TokenizedPair> none;
  EXPECT_THROW(PairLoader(none, BatchOptions{}), Error);
  auto pairs = varied_pairs(3);
  BatchOptions options;
  options.pairs_per_batch = 0;
  EXPECT_THROW(PairLoader(pairs, options), Error);
}

int64_t epoch_padding(const std::vector<TokenizedPair>& pairs, BatchOptions options) {
  options.packing = false;
  PairLoader loader(pairs, options);
  int64_t padding = 0;
  for (int64_t b = 0; b < loader.batches_per_epoch(); b++) padding += loader.next().padding_tokens;
  return padding;
}

// The real dataset with the seed's recipe: how much padding length bucketing saves, and how long
// the whole data path takes (read, render, tokenize, one epoch of batches).
TEST(PairLoader, BucketingCutsPaddingOnRealData) {
  std::string tokenizer_directory = CST_SOURCE_DIR "/tests/fixtures/tokenizer/chatml";
  std::string dataset = CST_SOURCE_DIR "/../shared/data/configurable-system-prompt-multitask.json";
  if (!std::filesystem::exists(dataset)) GTEST_SKIP() << "dataset not found at " << dataset;
  if (!std::filesystem::exists(tokenizer_directory + "/tokenizer.model")) {
    GTEST_SKIP() << "ChatML tokenizer fixture missing at " << tokenizer_directory;
  }
  // Wall time, and CPU time over all threads, which a busy machine distorts less.
  auto start = std::chrono::steady_clock::now();
  std::clock_t cpu_start = std::clock();
  Tokenizer tokenizer = Tokenizer::from_directory(tokenizer_directory);
  PreferenceData data = load_preference_data(dataset, tokenizer, chat_template_by_name("chatml"),
                                             PreferenceOptions{}, TokenizeOptions{});
  BatchOptions options;
  options.pad_id = tokenizer.pad_id();
  PairLoader loader(data.pairs, options);
  int64_t tokens = 0;
  for (int64_t b = 0; b < loader.batches_per_epoch(); b++) {
    tokens += int64_t(loader.next().tokens.size());
  }
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  double cpu_seconds = double(std::clock() - cpu_start) / CLOCKS_PER_SEC;
  std::printf(
      "C++ data path (load tokenizer, read %lld rows, render, tokenize, %lld packed "
      "batches of %lld tokens): %.3f s wall, %.3f s CPU\n%s",
      (long long)data.report.rows, (long long)loader.batches_per_epoch(), (long long)tokens,
      seconds, cpu_seconds, format_dataset_stats(data.stats, TokenizeOptions{}).c_str());
  EXPECT_EQ(tokens, data.stats.chosen_tokens + data.stats.rejected_tokens);

  options.length_bucketing = false;
  int64_t unbucketed = epoch_padding(data.pairs, options);
  options.length_bucketing = true;
  int64_t bucketed = epoch_padding(data.pairs, options);
  // The floor: one window over the whole epoch sorts every pair by length. What remains there is
  // mostly a pair's chosen and rejected differing in length, which no grouping can remove.
  BatchOptions sorted = options;
  sorted.bucket_window_batches = int(loader.batches_per_epoch());
  int64_t floor = epoch_padding(data.pairs, sorted);
  std::printf(
      "padding over one epoch, %d pairs per batch, as a share of %lld real tokens: "
      "%.1f%% without bucketing, %.1f%% with windows of %d batches, %.1f%% fully sorted\n",
      options.pairs_per_batch, (long long)tokens, 100.0 * double(unbucketed) / double(tokens),
      100.0 * double(bucketed) / double(tokens), options.bucket_window_batches,
      100.0 * double(floor) / double(tokens));
  // Windows of 64 pairs hold neighbours of nearly equal length: bucketing should remove most of
  // the padding that sorting can remove at all.
  EXPECT_LT(bucketed - floor, (unbucketed - floor) / 4);
}

}  // namespace
}  // namespace cst
