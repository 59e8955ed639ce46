// Small elementwise ops of the residual stream and LoRA.
//
//   add:      y += x                       (residual connections; gradient fan-in)
//   scale:    y *= alpha
//   dropout:  y_i = keep_i ? x_i * scale : 0,   keep_i = counter_uniform(seed, stream, i) >= p,
//             scale = 1.0f / (1.0f - p) computed in f32, i = the element's flat index, 0 <= p < 1.
//             backward applies the same mask to dy (dropout(dx, dy, p, seed, stream)). The mask
//             is a pure function of (seed, stream, index), so it is recomputed in backward instead
//             of stored, and it is identical on every backend.
//
// counter_uniform, bit for bit (all arithmetic on uint64_t, wrapping):
//   mix64(z):  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
//              z = (z ^ (z >> 27)) * 0x94d049bb133111eb
//              return z ^ (z >> 31)                      (the splitmix64 output function)
//   gamma    = 0x9e3779b97f4a7c15
//   key      = mix64(seed ^ mix64(stream + gamma))
//   bits     = mix64(key + (index + 1) * gamma)         (the index-th splitmix64 draw from key)
//   result   = float(bits >> 40) * 2^-24                 (top 24 bits: exact in f32, in [0, 1))
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
