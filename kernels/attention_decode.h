// Attention for incremental decoding with a KV cache: n new tokens of one sequence, at positions
// start .. start + n - 1, attend to the cached keys and values of positions 0 .. start + n - 1
// (the new tokens' own keys already appended). Query at position p sees key j iff
//   j <= p  and  j > p - window      (window = 0: no window)
// with the same softmax as kernels/attention.h:
//   s_j = q . k_j / sqrt(D),   o = sum_j softmax(s)_j v_j
// There is no backward: decoding never trains.
#pragma once
#include "kernels/attention.h"

namespace cst {

// q, out (n, H, D); k_cache, v_cache (capacity, KVH, D) with capacity >= start + n.
void attention_decode(const Tensor& out, const Tensor& q, const Tensor& k_cache,
                      const Tensor& v_cache, int64_t start, const AttentionShape& shape);

namespace cuda {
void attention_decode(const Tensor& out, const Tensor& q, const Tensor& k_cache,
                      const Tensor& v_cache, int64_t start, const AttentionShape& shape);
}

}  // namespace cst
