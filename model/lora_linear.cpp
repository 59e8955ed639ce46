#include "model/lora_linear.h"

#include "kernels/elementwise.h"
#include "kernels/gemm.h"

namespace cst {

// dropout(x), or x itself when there is no dropout.
static Tensor dropped_input(const Tensor& x, const LoraLinear& layer, Arena& arena) {
  if (layer.dropout <= 0.0f) return x;
  Tensor dropped = arena.alloc({x.dim(0), x.dim(1)}, x.dtype);
  dropout(dropped, x, layer.dropout, layer.dropout_seed, layer.dropout_stream);
  return dropped;
}

Tensor lora_linear_forward(const Tensor& y, const Tensor& x, const LoraLinear& layer, Arena& arena) {
  matmul(y, x, layer.weight, false, true);  // (N, out) = (N, in) (out, in)^T
  if (!layer.lora) return {};
  const LoraPair& lora = *layer.lora;
  const int64_t tokens = x.dim(0), rank = lora.compute_a.dim(0);
  Tensor u = arena.alloc({tokens, rank}, x.dtype);
  matmul(u, dropped_input(x, layer, arena), lora.compute_a, false, true);  // (N, r)
  matmul(y, u, lora.compute_b, false, true, layer.scaling, 1.0f);           // y += s u B^T
  return u;
}

void lora_linear_backward(const Tensor& dx, bool accumulate, const Tensor& dy, const Tensor& x,
                          const Tensor& u, const LoraLinear& layer, Arena& arena) {
  matmul(dx, dy, layer.weight, false, false, 1.0f, accumulate ? 1.0f : 0.0f);  // dx (+)= dy W
  if (!layer.lora) return;
  const LoraPair& lora = *layer.lora;
  const int64_t tokens = x.dim(0), rank = lora.compute_a.dim(0);
  // dB += s dy^T u   (out, r)
  matmul(lora.grad_b, dy, u, true, false, layer.scaling, 1.0f);
  // du = s dy B      (N, r)
  Tensor du = arena.alloc({tokens, rank}, dy.dtype);
  matmul(du, dy, lora.compute_b, false, false, layer.scaling, 0.0f);
  // dA += du^T dropout(x)   (r, in)
  matmul(lora.grad_a, du, dropped_input(x, layer, arena), true, false, 1.0f, 1.0f);
  // dx += dropout'(du A): the same mask and 1/(1-p) scale as the forward.
  if (layer.dropout <= 0.0f) {
    matmul(dx, du, lora.compute_a, false, false, 1.0f, 1.0f);
  } else {
    Tensor dx_lora = arena.alloc({tokens, x.dim(1)}, dx.dtype);
    matmul(dx_lora, du, lora.compute_a, false, false);
    dropout(dx_lora, dx_lora, layer.dropout, layer.dropout_seed, layer.dropout_stream);
    add_inplace(dx, dx_lora);
  }
}

bool LoraLinearGroup::batched() const {
  if (!group_a) return false;
  for (const LoraLinear& member : members)
    if (!member.lora || member.dropout > 0.0f) return false;
  return true;
}

// Member p's rank-r rows of a (g r, N) group matrix.
static Tensor member_rows(const Tensor& group_matrix, size_t member, size_t members) {
  const int64_t rank = group_matrix.dim(0) / int64_t(members);
  return group_matrix.rows(int64_t(member) * rank, int64_t(member + 1) * rank);
}

static void check_group_arity(size_t tensors, const LoraLinearGroup& group, const char* what) {
  CST_CHECK(group.members.size() <= size_t(kMaxInputGroupMembers), "LoRA group of ",
            group.members.size(), " projections");
  if (tensors != group.members.size())
    fail("LoRA group: ", tensors, " ", what, " for ", group.members.size(), " projections");
}

LoraGroupSaved lora_group_forward(std::span<const Tensor> outputs, const Tensor& x,
                                  const LoraLinearGroup& group, Arena& arena) {
  check_group_arity(outputs.size(), group, "outputs");
  const size_t members = group.members.size();
  LoraGroupSaved saved;
  if (!group.batched()) {
    for (size_t p = 0; p < members; ++p)
      saved.u[p] = lora_linear_forward(outputs[p], x, group.members[p], arena);
    return saved;
  }
  for (size_t p = 0; p < members; ++p)
    matmul(outputs[p], x, group.members[p].weight, false, true);  // y_p = x W_p^T
  const Tensor& group_a = group.group_a->compute_a;
  saved.u_transposed = arena.alloc({group_a.dim(0), x.dim(0)}, x.dtype);
  matmul(saved.u_transposed, group_a, x, false, true);  // u_g^T = A_g x^T
  for (size_t p = 0; p < members; ++p) {
    const LoraLinear& member = group.members[p];
    // y_p += s u_p B_p^T
    matmul(outputs[p], member_rows(saved.u_transposed, p, members), member.lora->compute_b, true,
           true, member.scaling, 1.0f);
  }
  return saved;
}

void lora_group_backward(const Tensor& dx, std::span<const Tensor> output_grads, const Tensor& x,
                         const LoraGroupSaved& saved, const LoraLinearGroup& group, Arena& arena) {
  check_group_arity(output_grads.size(), group, "output gradients");
  const size_t members = group.members.size();
  if (!group.batched()) {
    for (size_t p = 0; p < members; ++p)
      lora_linear_backward(dx, p > 0, output_grads[p], x, saved.u[p], group.members[p], arena);
    return;
  }
  for (size_t p = 0; p < members; ++p)  // dx (+)= dy_p W_p
    matmul(dx, output_grads[p], group.members[p].weight, false, false, 1.0f, p > 0 ? 1.0f : 0.0f);
  const LoraGroupA& group_a = *group.group_a;
  Tensor du_transposed = arena.alloc({saved.u_transposed.dim(0), x.dim(0)}, output_grads[0].dtype);
  for (size_t p = 0; p < members; ++p) {
    const LoraLinear& member = group.members[p];
    const Tensor& dy = output_grads[p];
    // dB_p += s dy_p^T u_p   (out, r)
    matmul(member.lora->grad_b, dy, member_rows(saved.u_transposed, p, members), true, true,
           member.scaling, 1.0f);
    // du_p^T = s B_p^T dy_p^T   (r, N)
    matmul(member_rows(du_transposed, p, members), member.lora->compute_b, dy, true, true,
           member.scaling, 0.0f);
  }
  matmul(group_a.grad_a, du_transposed, x, false, false, 1.0f, 1.0f);         // dA_g += du_g^T x
  matmul(dx, du_transposed, group_a.compute_a, true, false, 1.0f, 1.0f);      // dx += du_g A_g
}

}  // namespace cst
