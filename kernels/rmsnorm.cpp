// CPU reference of RMSNorm: one row per iteration, reductions accumulated in double.
#include "kernels/rmsnorm.h"

#include <algorithm>
#include <cmath>

#include "kernels/device.h"
#include "kernels/op_checks.h"

namespace cst {

void rmsnorm_forward(const Tensor& out, const Tensor& rstd, const Tensor& x, const Tensor& weight,
                     float eps) {
  const char* op = "rmsnorm_forward";
  Device device = common_device(op, out, rstd, x, weight);
  check_rank(x, 2, op, "x");
  int64_t rows = x.shape[0], channels = x.shape[1];
  check_dims(out, {rows, channels}, op, "out");
  check_dims(weight, {channels}, op, "weight");
  check_dims(rstd, {rows}, op, "rstd");
  check_dtype(rstd, DType::f32, op, "rstd");
  if (device == Device::cuda) return CST_ON_CUDA(cuda::rmsnorm_forward(out, rstd, x, weight, eps));

  check_f32(op, {{&out, "out"}, {&x, "x"}, {&weight, "weight"}});
  const float* x_data = x.f32();
  const float* w = weight.f32();
  float* out_data = out.f32();
  float* rstd_data = rstd.f32();
#pragma omp parallel for
  for (int64_t row = 0; row < rows; ++row) {
    const float* x_row = x_data + row * channels;
    float* out_row = out_data + row * channels;
    double sum_of_squares = 0;
    for (int64_t c = 0; c < channels; ++c) sum_of_squares += double(x_row[c]) * x_row[c];
    float r = float(1.0 / std::sqrt(sum_of_squares / double(channels) + double(eps)));
    rstd_data[row] = r;
    for (int64_t c = 0; c < channels; ++c) out_row[c] = w[c] * (x_row[c] * r);
  }
}

// dx for every row; independent rows, so parallel over rows.
static void rmsnorm_backward_input(float* dx, const float* dout, const float* x, const float* w,
                                   const float* rstd, int64_t rows, int64_t channels) {
#pragma omp parallel for
  for (int64_t row = 0; row < rows; ++row) {
    const float* dout_row = dout + row * channels;
    const float* x_row = x + row * channels;
    float* dx_row = dx + row * channels;
    float r = rstd[row];
    double sum_g_n = 0;  // sum over c of (dout_c w_c) (x_c r)
    for (int64_t c = 0; c < channels; ++c) sum_g_n += double(dout_row[c] * w[c]) * (x_row[c] * r);
    float mean_g_n = float(sum_g_n / double(channels));
    for (int64_t c = 0; c < channels; ++c)
      dx_row[c] = r * (dout_row[c] * w[c] - (x_row[c] * r) * mean_g_n);
  }
}

// dweight sums over rows. Parallel over blocks of columns (each thread owns its columns), so the
// sum order is fixed and the result does not depend on the thread count.
static void rmsnorm_backward_weight(float* dweight, const float* dout, const float* x,
                                    const float* rstd, int64_t rows, int64_t channels) {
  constexpr int64_t kBlock = 64;
#pragma omp parallel for
  for (int64_t begin = 0; begin < channels; begin += kBlock) {
    int64_t end = std::min(begin + kBlock, channels);
    double sums[kBlock] = {};
    for (int64_t row = 0; row < rows; ++row) {
      const float* dout_row = dout + row * channels;
      const float* x_row = x + row * channels;
      for (int64_t c = begin; c < end; ++c)
        sums[c - begin] += double(dout_row[c]) * (x_row[c] * rstd[row]);
    }
    for (int64_t c = begin; c < end; ++c) dweight[c] += float(sums[c - begin]);
  }
}

void rmsnorm_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dout, const Tensor& x,
                      const Tensor& weight, const Tensor& rstd) {
  const char* op = "rmsnorm_backward";
  Device device = common_device(op, dx, dout, x, weight, rstd);
  check_rank(x, 2, op, "x");
  int64_t rows = x.shape[0], channels = x.shape[1];
  check_dims(dx, {rows, channels}, op, "dx");
  check_dims(dout, {rows, channels}, op, "dout");
  check_dims(weight, {channels}, op, "weight");
  check_dims(rstd, {rows}, op, "rstd");
  check_dtype(rstd, DType::f32, op, "rstd");
  if (!dweight.empty()) {
    common_device(op, dx, dweight);
    check_dims(dweight, {channels}, op, "dweight");
  }
  if (device == Device::cuda)
    return CST_ON_CUDA(cuda::rmsnorm_backward(dx, dweight, dout, x, weight, rstd));

  check_f32(op, {{&dx, "dx"}, {&dout, "dout"}, {&x, "x"}, {&weight, "weight"}});
  rmsnorm_backward_input(dx.f32(), dout.f32(), x.f32(), weight.f32(), rstd.f32(), rows, channels);
  if (!dweight.empty()) {
    check_dtype(dweight, DType::f32, op, "dweight");
    rmsnorm_backward_weight(dweight.f32(), dout.f32(), x.f32(), rstd.f32(), rows, channels);
  }
}

}  // namespace cst
