// A frozen linear layer with LoRA and dropout (model/lora_linear.h): the analytic gradients of A, B
// and x against central finite differences of the forward. The dropout mask is a pure function of
// (seed, stream, index), so the forward is deterministic and differentiable as a whole.
// Tolerance: the f32 forward differenced with step 1e-2 on a loss of order 1 gives about 1e-4
// relative noise; 2e-3 catches a missing mask, scale or transpose (errors of order 1).
//
// The batched products of an input group (q, k, v sharing one stored A) are checked the same way,
// and against the members run one by one, which the golden model tests compare with PEFT.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <vector>

#include "model/lora.h"
#include "model/lora_linear.h"
#include "tests/golden_support.h"

namespace cst {
namespace {
using namespace testing_support;

constexpr int64_t kTokens = 5, kIn = 7, kOut = 6, kRank = 3;

// Smooth, distinct, deterministic values of order 0.5; `counter` continues across tensors.
void fill_deterministic(const Tensor& t, int& counter) {
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = 0.5f * std::sin(float(++counter) * 1.7f);
}

// Central differences of `loss` with respect to every element of `parameter`.
std::vector<float> numeric_gradient(const std::function<double()>& loss, const Tensor& parameter) {
  std::vector<float> gradient(size_t(parameter.numel()));
  const float step = 1e-2f;
  for (int64_t i = 0; i < parameter.numel(); ++i) {
    const float saved = parameter.f32()[i];
    parameter.f32()[i] = saved + step;
    const double up = loss();
    parameter.f32()[i] = saved - step;
    const double down = loss();
    parameter.f32()[i] = saved;
    gradient[size_t(i)] = float((up - down) / (2 * step));
  }
  return gradient;
}

double weighted_sum(const Tensor& y, const std::vector<float>& weights) {
  double total = 0;
  for (int64_t i = 0; i < y.numel(); ++i) total += double(y.f32()[i]) * weights[size_t(i)];
  return total;
}

std::vector<float> cosines(int64_t count, float frequency) {
  std::vector<float> values(static_cast<size_t>(count));
  for (size_t i = 0; i < values.size(); ++i) values[i] = std::cos(float(i) * frequency);
  return values;
}

struct Layer {
  OwnedTensor weight{{kOut, kIn}, DType::f32, Device::cpu};
  LoraPair lora;
  OwnedTensor x{{kTokens, kIn}, DType::f32, Device::cpu};
  Layer() {
    lora.a = OwnedTensor({kRank, kIn}, DType::f32, Device::cpu);
    lora.b = OwnedTensor({kOut, kRank}, DType::f32, Device::cpu);
    lora.grad_a = OwnedTensor({kRank, kIn}, DType::f32, Device::cpu);
    lora.grad_b = OwnedTensor({kOut, kRank}, DType::f32, Device::cpu);
    lora.compute_a = lora.a.view;
    lora.compute_b = lora.b.view;
    int counter = 0;
    for (const Tensor* t : {&weight.view, &lora.a.view, &lora.b.view, &x.view})
      fill_deterministic(*t, counter);
  }
  LoraLinear linear() const { return {weight.view, &lora, 1.5f, 0.3f, 11, 4}; }
};

// loss = sum(y * r) for a fixed r.
double loss(Layer& layer, const std::vector<float>& r) {
  Arena arena(Device::cpu, 1 << 16);
  OwnedTensor y({kTokens, kOut}, DType::f32, Device::cpu);
  lora_linear_forward(y.view, layer.x.view, layer.linear(), arena);
  return weighted_sum(y.view, r);
}

TEST(LoraLinear, DropoutGradientsMatchFiniteDifferences) {
  Layer layer;
  std::vector<float> r = cosines(kTokens * kOut, 0.9f);
  Arena arena(Device::cpu, 1 << 16);
  OwnedTensor y({kTokens, kOut}, DType::f32, Device::cpu), dx({kTokens, kIn}, DType::f32, Device::cpu);
  Tensor u = lora_linear_forward(y.view, layer.x.view, layer.linear(), arena);
  Tensor dy = make_view(r.data(), {kTokens, kOut}, DType::f32, Device::cpu);
  lora_linear_backward(dx.view, false, dy, layer.x.view, u, layer.linear(), arena);
  auto layer_loss = [&] { return loss(layer, r); };
  EXPECT_LE(relative_error(to_host(layer.lora.grad_a.view), numeric_gradient(layer_loss, layer.lora.a.view)), 2e-3);
  EXPECT_LE(relative_error(to_host(layer.lora.grad_b.view), numeric_gradient(layer_loss, layer.lora.b.view)), 2e-3);
  EXPECT_LE(relative_error(to_host(dx.view), numeric_gradient(layer_loss, layer.x.view)), 2e-3);
}

// ---- Input groups: three projections of one input (q, k, v with GQA widths) ----

constexpr size_t kGroupMembers = 3;

struct GroupShape {
  int64_t tokens, in, rank;
  std::array<int64_t, kGroupMembers> outs;
};
constexpr GroupShape kSmallGroup = {kTokens, kIn, kRank, {6, 4, 4}};
// Every GEMM of the batched path above matmul's threshold for splitting over threads.
constexpr GroupShape kThreadedGroup = {512, 96, 8, {128, 64, 64}};

struct Group {
  GroupShape shape;
  std::vector<OwnedTensor> weights;
  LoraGroupA group_a;
  std::array<LoraPair, kGroupMembers> pairs;
  OwnedTensor x;
  explicit Group(const GroupShape& group_shape)
      : shape(group_shape), x({shape.tokens, shape.in}, DType::f32, Device::cpu) {
    const int64_t rank = shape.rank, group_rows = int64_t(kGroupMembers) * rank;
    group_a.a = OwnedTensor({group_rows, shape.in}, DType::f32, Device::cpu);
    group_a.grad_a = OwnedTensor({group_rows, shape.in}, DType::f32, Device::cpu);
    group_a.compute_a = group_a.a.view;
    int counter = 0;
    fill_deterministic(group_a.a.view, counter);
    fill_deterministic(x.view, counter);
    for (size_t p = 0; p < kGroupMembers; ++p) {
      const int64_t out = shape.outs[p];
      weights.emplace_back(std::initializer_list<int64_t>{out, shape.in}, DType::f32, Device::cpu);
      fill_deterministic(weights.back().view, counter);
      LoraPair& pair = pairs[p];
      pair.a.view = group_a.a.view.rows(int64_t(p) * rank, int64_t(p + 1) * rank);
      pair.grad_a.view = group_a.grad_a.view.rows(int64_t(p) * rank, int64_t(p + 1) * rank);
      pair.compute_a = pair.a.view;
      pair.b = OwnedTensor({out, rank}, DType::f32, Device::cpu);
      pair.grad_b = OwnedTensor({out, rank}, DType::f32, Device::cpu);
      pair.compute_b = pair.b.view;
      fill_deterministic(pair.b.view, counter);
    }
  }
  // stored: the members share group_a (batched); otherwise each runs by itself on its view.
  LoraLinearGroup linear(bool stored, float dropout = 0.0f) const {
    LoraLinearGroup group;
    for (size_t p = 0; p < kGroupMembers; ++p)
      group.members.push_back({weights[p].view, &pairs[p], 1.5f, dropout, 11, p});
    group.group_a = stored ? &group_a : nullptr;
    return group;
  }
  std::vector<Tensor> outputs(Arena& arena) const {
    std::vector<Tensor> result;
    for (int64_t out : shape.outs) result.push_back(arena.alloc({shape.tokens, out}, DType::f32));
    return result;
  }
  // Fixed output gradients r_p, so that loss = sum_p sum(y_p * r_p).
  std::vector<std::vector<float>> output_weights() const {
    std::vector<std::vector<float>> r;
    for (size_t p = 0; p < kGroupMembers; ++p)
      r.push_back(cosines(shape.tokens * shape.outs[p], 0.9f + 0.2f * float(p)));
    return r;
  }
  void zero_grad() {
    fill_zero(group_a.grad_a.view);
    for (LoraPair& pair : pairs) fill_zero(pair.grad_b.view);
  }
};

struct GroupResult {
  std::vector<std::vector<float>> outputs, grad_b;
  std::vector<float> dx, grad_a;
};

// One forward and backward of the group with output gradients `r[p]`.
GroupResult run_group(Group& group, const LoraLinearGroup& linear,
                      const std::vector<std::vector<float>>& r) {
  Arena arena(Device::cpu, 1 << 20);
  std::vector<Tensor> outputs = group.outputs(arena), output_grads;
  for (size_t p = 0; p < kGroupMembers; ++p)
    output_grads.push_back(make_view(const_cast<float*>(r[p].data()),
                                     {group.shape.tokens, group.shape.outs[p]}, DType::f32,
                                     Device::cpu));
  Tensor dx = arena.alloc({group.shape.tokens, group.shape.in}, DType::f32);
  group.zero_grad();
  LoraGroupSaved saved = lora_group_forward(outputs, group.x.view, linear, arena);
  lora_group_backward(dx, output_grads, group.x.view, saved, linear, arena);
  GroupResult result{{}, {}, to_host(dx), to_host(group.group_a.grad_a.view)};
  for (size_t p = 0; p < kGroupMembers; ++p) {
    result.outputs.push_back(to_host(outputs[p]));
    result.grad_b.push_back(to_host(group.pairs[p].grad_b.view));
  }
  return result;
}

TEST(LoraLinearGroup, BatchedOnlyWithStoredAdaptersAndNoDropout) {
  Group group(kSmallGroup);
  EXPECT_TRUE(group.linear(true).batched());
  EXPECT_FALSE(group.linear(false).batched());
  EXPECT_FALSE(group.linear(true, 0.1f).batched()) << "dropout draws a mask per projection";
  LoraLinearGroup disabled = group.linear(true);
  disabled.members[1].lora = nullptr;  // adapters off (the DPO reference pass)
  EXPECT_FALSE(disabled.batched());
}

// Batched and one-by-one are the same sums in another order: f32 rounding apart (about 1e-7
// relative for sums of up to 512 terms of order 1), so 1e-5; a wrong row block or transpose is
// off by order 1. The threaded shape also runs matmul's per-thread blocks with both operands
// transposed.
TEST(LoraLinearGroup, BatchedMatchesTheMembersOneByOne) {
  for (const GroupShape& shape : {kSmallGroup, kThreadedGroup}) {
    SCOPED_TRACE(testing::Message() << "tokens " << shape.tokens << " in " << shape.in);
    Group group(shape);
    const std::vector<std::vector<float>> r = group.output_weights();
    GroupResult batched = run_group(group, group.linear(true), r);
    GroupResult one_by_one = run_group(group, group.linear(false), r);
    for (size_t p = 0; p < kGroupMembers; ++p) {
      EXPECT_LE(relative_error(batched.outputs[p], one_by_one.outputs[p]), 1e-5) << "member " << p;
      EXPECT_LE(relative_error(batched.grad_b[p], one_by_one.grad_b[p]), 1e-5) << "member " << p;
    }
    EXPECT_LE(relative_error(batched.grad_a, one_by_one.grad_a), 1e-5);
    EXPECT_LE(relative_error(batched.dx, one_by_one.dx), 1e-5);
  }
}

TEST(LoraLinearGroup, BatchedGradientsMatchFiniteDifferences) {
  Group group(kSmallGroup);
  const std::vector<std::vector<float>> r = group.output_weights();
  const LoraLinearGroup linear = group.linear(true);
  GroupResult analytic = run_group(group, linear, r);
  auto group_loss = [&] {
    Arena arena(Device::cpu, 1 << 16);
    std::vector<Tensor> outputs = group.outputs(arena);
    lora_group_forward(outputs, group.x.view, linear, arena);
    double total = 0;
    for (size_t p = 0; p < kGroupMembers; ++p) total += weighted_sum(outputs[p], r[p]);
    return total;
  };
  EXPECT_LE(relative_error(analytic.grad_a, numeric_gradient(group_loss, group.group_a.a.view)), 2e-3);
  for (size_t p = 0; p < kGroupMembers; ++p)
    EXPECT_LE(relative_error(analytic.grad_b[p], numeric_gradient(group_loss, group.pairs[p].b.view)), 2e-3)
        << "member " << p;
  EXPECT_LE(relative_error(analytic.dx, numeric_gradient(group_loss, group.x.view)), 2e-3);
}

TEST(LoraLinearGroup, GroupOfTheWrongSizeIsRefused) {
  Group group(kSmallGroup);
  Arena arena(Device::cpu, 1 << 16);
  std::vector<Tensor> two_outputs = group.outputs(arena);
  two_outputs.pop_back();
  EXPECT_THROW(lora_group_forward(two_outputs, group.x.view, group.linear(true), arena), Error);
}

// ---- The adapter's storage of input groups ----

ModelConfig small_model() {
  ModelConfig config;
  config.hidden_size = 8;
  config.intermediate_size = 12;
  config.num_layers = 2;
  config.num_heads = 2;
  config.num_kv_heads = 1;
  config.head_dim = 4;
  return config;
}

// Member p's A, gradient and compute copy are rows [p r, (p+1) r) of the group's matrices.
void expect_row_blocks_of_group(const LoraAdapter& adapter, int layer, InputGroup group) {
  const LoraGroupA* stored = adapter.group_a(layer, group);
  ASSERT_NE(stored, nullptr);
  const int64_t rank = adapter.config().r;
  std::span<const Projection> members = input_group_members(group);
  EXPECT_EQ(stored->a.view.dim(0), int64_t(members.size()) * rank);
  for (size_t p = 0; p < members.size(); ++p) {
    const LoraPair* pair = adapter.pair(layer, members[p]);
    const int64_t offset = int64_t(p) * rank * stored->a.view.dim(1);
    EXPECT_EQ(pair->a.view.f32(), stored->a.view.f32() + offset) << projection_name(members[p]);
    EXPECT_EQ(pair->grad_a.view.f32(), stored->grad_a.view.f32() + offset);
    EXPECT_EQ(pair->compute_a.data, pair->a.view.data);
    EXPECT_EQ(pair->a.view.dim(0), rank);
    EXPECT_EQ(pair->a.view.dim(1), stored->a.view.dim(1));
  }
}

TEST(LoraAdapterGroups, FullyAdaptedGroupsShareOneAMatrix) {
  LoraConfig config;
  config.r = 3;
  LoraAdapter adapter(small_model(), config, Device::cpu);
  for (int layer = 0; layer < 2; ++layer)
    for (InputGroup group : kAllInputGroups) expect_row_blocks_of_group(adapter, layer, group);
  // r (in + out) per projection: q, k, v, o, gate, up, down.
  EXPECT_EQ(adapter.num_parameters(),
            2 * 3 * ((8 + 8) + (8 + 4) + (8 + 4) + (8 + 8) + (8 + 12) + (8 + 12) + (12 + 8)));
}

TEST(LoraAdapterGroups, PartlyAdaptedGroupsKeepSeparateMatrices) {
  LoraConfig config;
  config.r = 3;
  config.targets = {Projection::v, Projection::gate, Projection::up, Projection::q};
  LoraAdapter adapter(small_model(), config, Device::cpu);
  EXPECT_EQ(adapter.group_a(0, InputGroup::attention), nullptr) << "k is not adapted";
  expect_row_blocks_of_group(adapter, 0, InputGroup::mlp);
  for (Projection projection : {Projection::q, Projection::v}) {
    const LoraPair* pair = adapter.pair(0, projection);
    EXPECT_NE(pair->a.memory.data(), nullptr) << projection_name(projection) << " owns its A";
    EXPECT_EQ(pair->a.view.dim(0), 3);
  }
}

// Initialisation writes through the views: every member of a group gets its own values, and the
// same values as with separate storage (the stream of a projection does not depend on grouping).
TEST(LoraAdapterGroups, InitializationIsTheSameWithAndWithoutGroups) {
  LoraConfig grouped_config, separate_config;
  grouped_config.r = separate_config.r = 3;
  separate_config.targets = {Projection::q, Projection::v, Projection::gate};  // no full group
  LoraAdapter grouped(small_model(), grouped_config, Device::cpu);
  LoraAdapter separate(small_model(), separate_config, Device::cpu);
  grouped.initialize(5);
  separate.initialize(5);
  for (Projection projection : separate_config.targets)
    EXPECT_EQ(to_host(grouped.pair(1, projection)->a.view), to_host(separate.pair(1, projection)->a.view))
        << projection_name(projection);
  EXPECT_NE(to_host(grouped.pair(1, Projection::q)->a.view), to_host(grouped.pair(1, Projection::k)->a.view));
}

}  // namespace
}  // namespace cst
