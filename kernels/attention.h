// Causal self-attention with grouped-query heads, an optional sliding window and packed
// variable-length sequences.
//
// Layout: the batch is N tokens laid end to end; sequence s owns tokens
// [cu_seqlens[s], cu_seqlens[s+1]). A query at position i (within its sequence) sees keys j with
//   j <= i  and  j > i - window      (window = 0: no window)
// Query head h reads key/value head h / (H / KVH) (GQA: K and V are never replicated).
//
// forward, per query row (scale = 1/sqrt(D)):
//   s_j = scale * q . k_j,   lse = log sum_j exp(s_j),   p_j = exp(s_j - lse),   o = sum_j p_j v_j
// The online softmax computes this in one pass over key tiles: keep the running max m, the running
// sum l = sum exp(s_j - m) and the unnormalised output acc; for a new tile with max m' > m rescale
// l and acc by exp(m - m') before adding the tile. At the end o = acc / l and lse = m + log l.
//
// backward, with D_i = do_i . o_i (= sum_j p_j dp_j):
//   dp_j = do . v_j,   ds_j = p_j (dp_j - D_i),
//   dq  = scale * sum_j ds_j k_j,   dk_j += scale * ds_j q,   dv_j += p_j do
// p is recomputed from the saved lse, so nothing of size T x T is ever stored. dk/dv sum over
// the query heads of a group.
//
// CUDA (kernels/attention.cu, docs/attention.md): the forward runs the online softmax per 64-query
// tile in registers; the backward first computes D, then dk/dv per 64-key tile (looping over the
// query tiles that see it and the group's query heads) and dq per 64-query tile in a separate
// pass, so every sum has a fixed order and results are bitwise reproducible (AttentionBackward
// below: dq can also come from the dK/dV blocks, in a fixed order or by atomics). Those kernels are
// built for D = 64 and 128; other head dims (up to 256: the small test and demo models) run plain
// one-warp-per-row kernels with the same math and the same determinism
// (kernels/attention_rowwise.cuh).
#pragma once
#include <string>
#include <vector>

#include "kernels/tensor.h"

namespace cst {

struct AttentionShape {
  int heads = 0;       // H, query heads
  int kv_heads = 0;    // KVH, divides H
  int head_dim = 0;    // D
  int window = 0;      // sliding window W; 0 = plain causal
};

// q, out (N, H, D); k, v (N, KVH, D); lse (H, N) f32; cu_seqlens (S + 1) i32 on the host.
void attention_forward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k,
                       const Tensor& v, const std::vector<int32_t>& cu_seqlens,
                       const AttentionShape& shape);
// How the CUDA backward forms dq with the flash kernels (head dims 64 and 128); each gives the
// same dk and dv bits. `recompute_dq`, the default: a dQ pass of its own per query tile recomputes
// S and dP and sums dq in registers, for 7 matmuls per backward instead of 5. `ordered_dq`: each
// dK/dV block adds its dS K to an f32 (N, H, D) accumulator, the key tiles of a query tile taking
// turns in a fixed order through a counter, so nothing is recomputed and every dq element is the
// same sum whatever order the blocks run in. `atomic_dq`, as FlashAttention-2 does: the same adds
// with float atomics and no turns, so the order of the additions, and with it the last bits of
// dq, changes from run to run. recompute_dq and ordered_dq give the same bits on every run (not
// the same bits as each other: dq's sums are grouped differently). The CPU backend and the CUDA
// kernels of other head dims always recompute and ignore the mode.
enum class AttentionBackward { recompute_dq, ordered_dq, atomic_dq };
// The mode of the op, cst_train and model_bench unless they are told another.
constexpr AttentionBackward kDefaultAttentionBackward = AttentionBackward::recompute_dq;
// A mode's name as the flags take it: "recompute_dq", "ordered_dq" or "atomic_dq".
const char* attention_backward_name(AttentionBackward mode);
// The mode of a name; anything else is refused with an error that starts with `what` (the flag
// that gave the name) and names all three.
AttentionBackward attention_backward_by_name(const std::string& name, const char* what);

// dq (N, H, D), dk/dv (N, KVH, D) are overwritten.
void attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                        const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const std::vector<int32_t>& cu_seqlens,
                        const AttentionShape& shape,
                        AttentionBackward mode = kDefaultAttentionBackward);

namespace cuda {
// Same contract; the implementation uploads the offsets (a few bytes) and takes max_seqlen from them.
void attention_forward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k,
                       const Tensor& v, const std::vector<int32_t>& cu_seqlens,
                       const AttentionShape& shape);
// The flash forward's query tile (head dims 64 and 128): 64 rows, 16 per warp, or 128 rows, 32
// per warp (each K/V fragment read from shared memory then serves twice the rows). The op above
// runs default_forward_query_tile(), so far kDefaultForwardQueryTile, the 128-row tile: 8% to
// 15% faster than the 64-row one at every length of attention_bench on an H200
// (docs/attention.md, speed); the tests and attention_bench run every tile. rows64 and rows128
// give the same bits: each output sums the same products in the same order, and the key tiles a
// 128-row tile visits for one of its row blocks are fully masked, adding exact zeros, for the
// other. rows128_steps32 is the 128-row tile with the online
// softmax stepping over 32 keys at a time instead of 64: at D = 128 it holds half the scores,
// which keeps the kernel within its registers (the 64-key step spills), but reads Q twice per
// key tile and rounds differently (within the same tolerance of the reference).
// rows128_warpgroups (Hopper only: compute capability 9.0, code for sm_90a) is the 128-row tile
// on two warpgroups of 64 rows, whose products are warpgroup multiplies (wgmma) reading K, V and
// Q straight from shared memory (kernels/attention_warpgroup.cuh); its sums are the tensor
// cores', grouped differently, so it rounds differently within the same tolerance.
enum class ForwardQueryTile { rows64, rows128, rows128_steps32, rows128_warpgroups };
// Every tile, for the tests and attention_bench (which skip those the GPU cannot run).
constexpr ForwardQueryTile kForwardQueryTiles[] = {
    ForwardQueryTile::rows64, ForwardQueryTile::rows128, ForwardQueryTile::rows128_steps32,
    ForwardQueryTile::rows128_warpgroups};
constexpr ForwardQueryTile kDefaultForwardQueryTile = ForwardQueryTile::rows128;
// Whether the op runs rows128_warpgroups instead where the GPU can (compute capability 9.0):
// off until the Hopper forward has passed its tests and beaten the default on such a GPU
// (tools/gpu_check.sh: the AttentionHopper tests, attention_bench --hopper).
constexpr bool kWarpgroupForwardOnHopper = false;
// The tile the op runs on this process's GPU: kDefaultForwardQueryTile, or rows128_warpgroups
// where kWarpgroupForwardOnHopper and warpgroup_kernels_run allow.
ForwardQueryTile default_forward_query_tile();
// The tile's name: "rows64", "rows128", "rows128_steps32" or "rows128_warpgroups".
const char* forward_query_tile_name(ForwardQueryTile tile);
void attention_forward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k,
                       const Tensor& v, const std::vector<int32_t>& cu_seqlens,
                       const AttentionShape& shape, ForwardQueryTile tile);

// The kernels of AttentionBackward::recompute_dq's two passes (head dims 64 and 128): mma.sync
// for both (every GPU), or, on Hopper, warpgroup multiplies (kernels/attention_warpgroup.cuh)
// for the dQ pass (128-query tiles on two warpgroups), the dK/dV pass (64-key tiles on one) or
// both. A warpgroup pass rounds its outputs differently (its sums are the tensor cores'),
// within the same tolerance and the same on every run; the other pass's outputs keep their
// bits. The other modes ignore it.
enum class BackwardKernels { mma, warpgroup_dq, warpgroup_dkdv, warpgroups };
// Every choice, for the tests and attention_bench.
constexpr BackwardKernels kBackwardKernels[] = {
    BackwardKernels::mma, BackwardKernels::warpgroup_dq, BackwardKernels::warpgroup_dkdv,
    BackwardKernels::warpgroups};
// As kWarpgroupForwardOnHopper, for the backward: the kernels the op runs on Hopper once the
// GPU check has told which are the fastest (mma until then).
constexpr BackwardKernels kBackwardKernelsOnHopper = BackwardKernels::mma;
BackwardKernels default_backward_kernels();
// "mma", "warpgroup_dq", "warpgroup_dkdv" or "warpgroups".
const char* backward_kernels_name(BackwardKernels kernels);
void attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                        const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const std::vector<int32_t>& cu_seqlens,
                        const AttentionShape& shape, AttentionBackward mode,
                        BackwardKernels kernels = default_backward_kernels());

// Whether this process's GPU runs the warpgroup kernels (rows128_warpgroups of either kind):
// compute capability 9.0, for which they are built (sm_90a). Asked for on another GPU, the op
// throws.
bool warpgroup_kernels_run();
}

}  // namespace cst
