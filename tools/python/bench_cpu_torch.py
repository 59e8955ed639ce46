#!/usr/bin/env python3
"""PyTorch reference for tools/bench/model_bench.cpp (--step logps): the same forward + backward on the CPU.

Rerun (make bench runs it through tools/bench/run_bench.sh):
    python3 tools/python/bench_cpu_torch.py --threads 2 [--shape v32k|v8k|all]
                                            [--attention sdpa|eager|all]

Same step as cst: a MistralForCausalLM (transformers) with random f32 weights, PEFT LoRA r=16,
alpha=32, dropout 0 on all seven projections, 4 sequences x 256 random tokens, every token
labelled with a random token, loss = sum of log-probs (log_softmax of the logits gathered at the
labels). Only the LoRA parameters require gradients. Warm-up 2, then the median of 7 steps;
torch.set_num_threads equals cst's thread count. Prints one "RESULT ..." line per configuration.
"""
import argparse
import resource
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import MistralConfig, MistralForCausalLM

# The shapes of model_bench.cpp: name -> (vocab, hidden, intermediate, layers, heads, kv_heads).
SHAPES = {
    "v32k": (32000, 256, 688, 4, 8, 4),
    "v8k": (8192, 256, 688, 22, 8, 4),
}
SEQUENCES, SEQUENCE_LENGTH, LORA_RANK, LORA_ALPHA = 4, 256, 16, 32
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_model(shape, attention):
    vocab, hidden, intermediate, layers, heads, kv_heads = shape
    config = MistralConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                           num_hidden_layers=layers, num_attention_heads=heads,
                           num_key_value_heads=kv_heads, max_position_embeddings=4096,
                           sliding_window=None, tie_word_embeddings=False, use_cache=False,
                           torch_dtype="float32", attn_implementation=attention)
    torch.manual_seed(0)
    model = MistralForCausalLM(config).float()
    lora = LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
                      target_modules=PROJECTIONS, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)  # freezes every base weight
    model.train()
    return model


def process_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def step(model, tokens, labels):
    """Returns (forward seconds, backward seconds, CPU seconds) of one step."""
    model.zero_grad(set_to_none=True)
    cpu_start, start = process_cpu_seconds(), time.perf_counter()
    logits = model(input_ids=tokens, use_cache=False).logits
    logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.unsqueeze(-1))
    loss = logps.sum()
    middle = time.perf_counter()
    loss.backward()
    end = time.perf_counter()
    return middle - start, end - middle, process_cpu_seconds() - cpu_start


def bench(name, attention, threads, warmup, iterations):
    shape = SHAPES[name]
    model = build_model(shape, attention)
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, shape[0], (SEQUENCES, SEQUENCE_LENGTH), generator=generator)
    labels = torch.randint(0, shape[0], (SEQUENCES, SEQUENCE_LENGTH), generator=generator)
    timings = [step(model, tokens, labels) for _ in range(warmup + iterations)][warmup:]
    forward = [t[0] * 1e3 for t in timings]
    backward = [t[1] * 1e3 for t in timings]
    total = [(t[0] + t[1]) * 1e3 for t in timings]
    cpu = [t[2] * 1e3 for t in timings]
    parameters = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    print(f"RESULT impl=torch-{attention} shape={name} params={parameters / 1e6:.1f}M "
          f"threads={threads} step_ms={statistics.median(total):.1f} min_ms={min(total):.1f} "
          f"cpu_ms={statistics.median(cpu):.1f} forward_ms={statistics.median(forward):.1f} "
          f"backward_ms={statistics.median(backward):.1f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shape", choices=[*SHAPES, "all"], default="all")
    parser.add_argument("--attention", choices=["sdpa", "eager", "all"], default="all")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"bench_cpu_torch: torch {torch.__version__}, {args.threads} threads, "
          f"warm-up {args.warmup}, median of {args.iterations}", flush=True)
    shapes = list(SHAPES) if args.shape == "all" else [args.shape]
    attentions = ["sdpa", "eager"] if args.attention == "all" else [args.attention]
    for name in shapes:
        for attention in attentions:
            bench(name, attention, args.threads, args.warmup, args.iterations)


if __name__ == "__main__":
    main()
