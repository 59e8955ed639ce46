// Attention for incremental decoding with a KV cache. Every new token (of any of the sequences
// being decoded together) attends to the cached keys and values of its own sequence, its own key
// and value already written there. The cache holds the sequences as row ranges: a sequence's key
// for position p is at row base + p. New token i, at position p_i with its key at cache row r_i,
// sees the rows r_i - p_i + j for the positions j with
//   j <= p_i  and  j > p_i - window      (window = 0: no window)
// with the same softmax as kernels/attention.h:
//   s_j = q . k_j / sqrt(D),   o = sum_j softmax(s)_j v_j
// There is no backward: decoding never trains.
#pragma once
#include "kernels/attention.h"

namespace cst {

// q, out (n, H, D); k_cache, v_cache (rows, KVH, D); cache_rows, positions (n) i32 on the tensors'
// device: r_i and p_i above. A token whose rows r_i - p_i .. r_i leave the cache is an error (on
// CUDA at the next synchronisation; its output is then zero).
void attention_decode(const Tensor& out, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                      const Tensor& cache_rows, const Tensor& positions, const AttentionShape& shape);

namespace cuda {
void attention_decode(const Tensor& out, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                      const Tensor& cache_rows, const Tensor& positions, const AttentionShape& shape);
}

}  // namespace cst
