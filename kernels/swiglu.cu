// CUDA SwiGLU: elementwise, 8 elements (16 bytes of bf16) per thread per step when the tensors
// allow it. Every tensor has the same dtype, bf16 or f32; the math is f32.
#include "kernels/cuda_utils.cuh"
#include "kernels/swiglu.h"

namespace cst::cuda {

__device__ inline float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// out, gate, up: (count) flattened (N, F).
template <int Width, class T>
__global__ void swiglu_forward_kernel(T* out, const T* gate, const T* up, int64_t count) {
  for (int64_t i = first_chunk(Width); i < count; i += chunk_stride(Width)) {
    float g[Width], u[Width], o[Width];
    load_chunk<Width>(gate + i, g);
    load_chunk<Width>(up + i, u);
    for (int k = 0; k < Width; ++k) o[k] = g[k] * sigmoid(g[k]) * u[k];
    store_chunk<Width>(out + i, o);
  }
}

// Each thread reads its whole chunk before writing, so dgate/dup may alias gate/up.
template <int Width, class T>
__global__ void swiglu_backward_kernel(T* dgate, T* dup, const T* dout, const T* gate, const T* up,
                                       int64_t count) {
  for (int64_t i = first_chunk(Width); i < count; i += chunk_stride(Width)) {
    float d[Width], g[Width], u[Width], dg[Width], du[Width];
    load_chunk<Width>(dout + i, d);
    load_chunk<Width>(gate + i, g);
    load_chunk<Width>(up + i, u);
    for (int k = 0; k < Width; ++k) {
      float s = sigmoid(g[k]);
      dg[k] = d[k] * u[k] * (s * (1.0f + g[k] * (1.0f - s)));
      du[k] = d[k] * g[k] * s;
    }
    store_chunk<Width>(dgate + i, dg);
    store_chunk<Width>(dup + i, du);
  }
}

static void check_swiglu_tensors(const char* op, std::initializer_list<const Tensor*> tensors) {
  const Tensor& first = **tensors.begin();
  for (const Tensor* t : tensors) {
    check_on_gpu(*t, op, "every argument");
    if (t->dtype != first.dtype || t->numel() != first.numel())
      fail(op, ": every tensor must match ", first.describe(), ", got ", t->describe());
  }
}

void swiglu_forward(const Tensor& out, const Tensor& gate, const Tensor& up) {
  const char* op = "swiglu_forward";
  check_swiglu_tensors(op, {&out, &gate, &up});
  int64_t count = out.numel();
  if (count == 0) return;
  with_float_type(out, op, "out", [&](auto tag) {
    using T = decltype(tag);
    T* out_data = static_cast<T*>(out.data);
    const T* gate_data = static_cast<const T*>(gate.data);
    const T* up_data = static_cast<const T*>(up.data);
    if (can_use_chunks(count, out_data, gate_data, up_data))
      CST_LAUNCH(grid_blocks(count / kChunk), kThreads, 0, swiglu_forward_kernel<kChunk>)(
          out_data, gate_data, up_data, count);
    else
      CST_LAUNCH(grid_blocks(count), kThreads, 0, swiglu_forward_kernel<1>)(out_data, gate_data,
                                                                              up_data, count);
    CUDA_CHECK_LAUNCH();
  });
}

void swiglu_backward(const Tensor& dgate, const Tensor& dup, const Tensor& dout, const Tensor& gate,
                     const Tensor& up) {
  const char* op = "swiglu_backward";
  check_swiglu_tensors(op, {&dgate, &dup, &dout, &gate, &up});
  int64_t count = dout.numel();
  if (count == 0) return;
  with_float_type(dout, op, "dout", [&](auto tag) {
    using T = decltype(tag);
    T* dgate_data = static_cast<T*>(dgate.data);
    T* dup_data = static_cast<T*>(dup.data);
    const T* dout_data = static_cast<const T*>(dout.data);
    const T* gate_data = static_cast<const T*>(gate.data);
    const T* up_data = static_cast<const T*>(up.data);
    if (can_use_chunks(count, dgate_data, dup_data, dout_data, gate_data, up_data))
      CST_LAUNCH(grid_blocks(count / kChunk), kThreads, 0, swiglu_backward_kernel<kChunk>)(
          dgate_data, dup_data, dout_data, gate_data, up_data, count);
    else
      CST_LAUNCH(grid_blocks(count), kThreads, 0, swiglu_backward_kernel<1>)(
          dgate_data, dup_data, dout_data, gate_data, up_data, count);
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace cst::cuda
