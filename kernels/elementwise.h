// Small elementwise ops of the residual stream and LoRA.
//
//   add:      y += x                       (residual connections; gradient fan-in)
//   scale:    y *= alpha
//   dropout:  y = x * keep / (1 - p),  keep = hash(seed, stream, index) >= p
//             backward applies the same mask to dy. The mask is a pure function of
//             (seed, stream, index), so it is recomputed in backward instead of stored, and it is
//             identical on every backend.
#pragma once
#include <cstdint>

#include "kernels/tensor.h"

namespace cst {

void add_inplace(const Tensor& y, const Tensor& x);
void scale_inplace(const Tensor& y, float alpha);
// out may alias x.
void dropout(const Tensor& out, const Tensor& x, float p, uint64_t seed, uint64_t stream);

// Uniform [0, 1) from a counter, the source of every dropout mask.
float counter_uniform(uint64_t seed, uint64_t stream, uint64_t index);

namespace cuda {
void add_inplace(const Tensor& y, const Tensor& x);
void scale_inplace(const Tensor& y, float alpha);
void dropout(const Tensor& out, const Tensor& x, float p, uint64_t seed, uint64_t stream);
}

}  // namespace cst
