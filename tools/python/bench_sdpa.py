#!/usr/bin/env python3
"""Speed of torch's SDPA flash backend on the shapes of tools/bench/attention_bench.cu.

Rerun on a GPU machine:  python3 tools/python/bench_sdpa.py [--json FILE]

Same table as attention_bench: head dim 128, causal, 32 query heads over 8 key/value heads,
16384 tokens per batch as equal sequences of 512..4096; FLOPs 4*N*T*H*D/2 forward and 2.5x that
backward, so the two programs' TFLOP/s can be put side by side.
"""
import argparse
import json

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

TOKENS, HEADS, KV_HEADS, HEAD_DIM = 16384, 32, 8, 128


def time_ms(call, repeats=20):
    for _ in range(3):
        call()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        call()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / repeats


def attention(q, k, v, grouped):
    """Causal SDPA restricted to the flash backend; GQA natively when torch supports it there."""
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        if grouped:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def inputs(seqlen, grouped):
    batch = TOKENS // seqlen
    make = lambda heads: torch.randn(batch, heads, seqlen, HEAD_DIM, device="cuda",
                                     dtype=torch.bfloat16, requires_grad=True)
    kv_heads = KV_HEADS if grouped else HEADS  # without native GQA, K/V are repeated up front
    return make(HEADS), make(kv_heads), make(kv_heads)


def supports_native_gqa():
    try:
        q, k, v = inputs(512, True)
        attention(q, k, v, True)
        return True
    except (RuntimeError, TypeError):
        return False


def benchmark(seqlen, grouped):
    q, k, v = inputs(seqlen, grouped)
    out = attention(q, k, v, grouped)
    dout = torch.randn_like(out)
    forward_ms = time_ms(lambda: attention(q, k, v, grouped))
    backward_ms = time_ms(lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True))
    forward_flops = 4.0 * TOKENS * seqlen * HEADS * HEAD_DIM / 2
    backward_flops = 2.5 * forward_flops
    return {"seqlen": seqlen, "batch": TOKENS // seqlen, "heads": HEADS, "kv_heads": KV_HEADS,
            "head_dim": HEAD_DIM, "forward_ms": forward_ms,
            "forward_tflops": forward_flops / forward_ms * 1e-9, "backward_ms": backward_ms,
            "backward_tflops": backward_flops / backward_ms * 1e-9}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    grouped = supports_native_gqa()
    print(f"torch {torch.__version__} SDPA flash, {torch.cuda.get_device_name()}, head_dim 128, "
          f"causal, 32 heads / 8 kv heads ({'native GQA' if grouped else 'K/V repeated'}), "
          f"16384 tokens")
    print(f"{'seqlen':>8} {'batch':>6} {'fwd ms':>10} {'fwd TF/s':>10} {'bwd ms':>10} "
          f"{'bwd TF/s':>10}")
    rows = []
    for seqlen in (512, 1024, 2048, 4096):
        row = benchmark(seqlen, grouped)
        print(f"{seqlen:8d} {row['batch']:6d} {row['forward_ms']:10.3f} "
              f"{row['forward_tflops']:10.1f} {row['backward_ms']:10.3f} "
              f"{row['backward_tflops']:10.1f}")
        rows.append(row)
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"benchmark": "attention", "implementation": "torch-sdpa-flash",
                       "torch": torch.__version__, "native_gqa": grouped, "rows": rows}, file,
                      indent=2)


if __name__ == "__main__":
    main()
