// Shared pieces of the tests that compare the model with golden data: reading tensors from a
// fixture, relative errors, and the packed batch of sequences the fixtures describe.
#pragma once
#include <cmath>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/error.h"
#include "model/safetensors.h"
#include "model/transformer.h"

namespace cst::testing_support {

template <class T>
std::vector<T> read_vector(const SafetensorsFile& file, const std::string& name) {
  const TensorInfo* info = file.find(name);
  if (!info) fail(file.path(), ": fixture lacks ", name);
  const T* values = reinterpret_cast<const T*>(info->data);
  return std::vector<T>(values, values + info->numel());
}

inline std::vector<float> to_host(const Tensor& t) { return to_host_f32(t); }

// ||actual - expected|| / ||expected||, Frobenius norms in double.
inline double relative_error(const std::vector<float>& actual, const std::vector<float>& expected) {
  double diff = 0, norm = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    diff += (double(actual[i]) - expected[i]) * (double(actual[i]) - expected[i]);
    norm += double(expected[i]) * expected[i];
  }
  return std::sqrt(diff / norm);
}

inline double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) fail("compared vectors differ in length: ", a.size(), " vs ", b.size());
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(double(a[i]) - b[i]));
  return worst;
}

// Sequences laid end to end: positions restart per sequence, and position t is labelled with
// token t+1 of its own sequence, where that token is scored (completion_mask empty: every token).
struct PackedBatch {
  std::vector<int32_t> tokens, positions, labels, cu_seqlens;
  TokenSpans spans() const { return {tokens, positions, labels, cu_seqlens}; }
};

inline PackedBatch packed_batch(std::vector<int32_t> tokens, std::vector<int32_t> cu_seqlens,
                                const std::vector<int32_t>& completion_mask = {}) {
  PackedBatch batch{std::move(tokens), {}, {}, std::move(cu_seqlens)};
  batch.positions.resize(batch.tokens.size());
  batch.labels.assign(batch.tokens.size(), -1);
  for (size_t s = 0; s + 1 < batch.cu_seqlens.size(); ++s)
    for (int32_t t = batch.cu_seqlens[s]; t < batch.cu_seqlens[s + 1]; ++t) {
      batch.positions[size_t(t)] = t - batch.cu_seqlens[s];
      // The mask is read only inside the sequence: past the last token there is nothing to score.
      if (t + 1 < batch.cu_seqlens[s + 1] && (completion_mask.empty() || completion_mask[size_t(t) + 1]))
        batch.labels[size_t(t)] = batch.tokens[size_t(t) + 1];
    }
  return batch;
}

// The input_ids / cu_seqlens of a golden fixture file as a packed batch.
inline PackedBatch golden_batch(const SafetensorsFile& golden, const std::string& mask_name = "") {
  return packed_batch(read_vector<int32_t>(golden, "input_ids"), read_vector<int32_t>(golden, "cu_seqlens"),
                      mask_name.empty() ? std::vector<int32_t>{} : read_vector<int32_t>(golden, mask_name));
}

// A file of golden greedy generations, tests/fixtures/generate/<name>.json
// (tools/python/make_generate_fixtures.py), with the model and adapter directories it names.
struct GenerationGoldenFile {
  nlohmann::json golden;
  std::string model_directory, adapter_directory;
};

inline GenerationGoldenFile read_generation_golden(const std::string& name) {
  const std::string root = std::string(CST_SOURCE_DIR) + "/";
  std::ifstream in(root + "tests/fixtures/generate/" + name + ".json");
  if (!in) fail("missing generation fixture ", name);
  GenerationGoldenFile file{nlohmann::json::parse(in), "", ""};
  file.model_directory = root + file.golden.at("model_directory").get<std::string>();
  file.adapter_directory = root + file.golden.at("adapter_directory").get<std::string>();
  return file;
}

}  // namespace cst::testing_support
