#!/usr/bin/env python3
"""PyTorch + PEFT reference for tools/bench/model_bench.cpp --step dpo: one LoRA DPO step on a GPU.

Rerun (tools/gpu_check.sh runs it next to model_bench, on the same GPU, in the same check):
    python3 tools/python/bench_gpu_torch.py [--shape 1b] [--sequences 4] [--sequence_length 512]
                                            [--warmup 3] [--iterations 10] [--device cuda]

The same step as cst: a MistralForCausalLM (transformers) with random bf16 weights of the 1b
shape (TinyLlama-1.1B: 22 layers, hidden 2048, MLP 5632, 32 heads, 4 kv heads, vocab 32000, no
sliding window, untied LM head), sdpa attention, PEFT LoRA r=16, alpha=16, dropout 0 on all seven
projections (LoRA matrices in f32, as cst keeps them). A batch of 2 pairs = 4 sequences x 512
random tokens, every token labelled with a random token. One step:
    reference forward (adapters disabled, no grad) -> per-sequence sums of the label log-probs
    policy forward -> the same sums -> sigmoid DPO loss (beta 0.1) over the pairs
    backward -> clip_grad_norm_(1.0) -> AdamW (fused) step -> zero_grad
The log-probs are log_softmax of the f32 logits gathered at the labels, as trl computes them.
Warm-up, then the median of the timed steps (torch.cuda.synchronize around each). Prints one
"RESULT ..." line in model_bench's format; memory_gib is the device memory the process holds at
the end (the CUDA context and the caching allocator's pool: the quantity model_bench reports),
peak_allocated_gib is torch's own peak of live tensors.
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import MistralConfig, MistralForCausalLM

# name -> (vocab, hidden, intermediate, layers, heads, kv_heads), as in model_bench.cpp.
SHAPES = {
    "1b": (32000, 2048, 5632, 22, 32, 4),
    "v32k": (32000, 256, 688, 4, 8, 4),
}
LORA_RANK, LORA_ALPHA, BETA, MAX_GRAD_NORM, LEARNING_RATE = 16, 16, 0.1, 1.0, 1e-4
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_model(shape, device):
    vocab, hidden, intermediate, layers, heads, kv_heads = shape
    config = MistralConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                           num_hidden_layers=layers, num_attention_heads=heads,
                           num_key_value_heads=kv_heads, max_position_embeddings=4096,
                           sliding_window=None, tie_word_embeddings=False, use_cache=False,
                           attn_implementation="sdpa")
    torch.manual_seed(0)
    # The base weights are created in bf16 directly on the device (initialising 1.1B parameters
    # on the CPU in f32 would take longer than the benchmark); LoRA's matrices stay f32.
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(device):
        model = MistralForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    lora = LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
                      target_modules=PROJECTIONS, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)  # freezes every base weight
    for name, parameter in model.named_parameters():
        if "lora_" in name:
            parameter.data = parameter.data.float()
    model.train()
    return model


def sequence_logps(model, tokens, labels):
    """Sum over each sequence of log p(label | prefix), from the f32 logits."""
    logits = model(input_ids=tokens, use_cache=False).logits.float()
    return torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1).sum(-1)


def dpo_step(model, optimizer, parameters, tokens, labels):
    """One optimizer step; returns (forward seconds, backward seconds, loss)."""
    synchronize = torch.cuda.synchronize if tokens.is_cuda else (lambda: None)
    synchronize()
    start = time.perf_counter()
    with torch.no_grad(), model.disable_adapter():
        reference = sequence_logps(model, tokens, labels)
    policy = sequence_logps(model, tokens, labels)
    # Sequences 2i and 2i+1 are pair i's chosen and rejected.
    margin = (policy[0::2] - policy[1::2]) - (reference[0::2] - reference[1::2])
    loss = -F.logsigmoid(BETA * margin).mean()
    synchronize()
    middle = time.perf_counter()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, MAX_GRAD_NORM)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    synchronize()
    return middle - start, time.perf_counter() - middle, loss.item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=list(SHAPES), default="1b")
    parser.add_argument("--sequences", type=int, default=4)
    parser.add_argument("--sequence_length", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    if args.sequences % 2:
        parser.error("--sequences must be even (a chosen and a rejected sequence per pair)")
    shape = SHAPES[args.shape]
    device = torch.device(args.device)
    print(f"bench_gpu_torch: torch {torch.__version__}, dpo step on {args.device} (bf16), "
          f"{args.sequences} sequences x {args.sequence_length} tokens, LoRA r={LORA_RANK} "
          f"alpha={LORA_ALPHA} on all projections, sdpa, warm-up {args.warmup}, "
          f"median of {args.iterations}", flush=True)
    model = build_model(shape, device)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=LEARNING_RATE, weight_decay=0.0,
                                  fused=device.type == "cuda")
    generator = torch.Generator().manual_seed(1)
    size = (args.sequences, args.sequence_length)
    tokens = torch.randint(0, shape[0], size, generator=generator).to(device)
    labels = torch.randint(0, shape[0], size, generator=generator).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    timings = []
    for _ in range(args.warmup + args.iterations):
        forward, backward, loss = dpo_step(model, optimizer, parameters, tokens, labels)
        if loss != loss:
            raise SystemExit("bench_gpu_torch: the DPO loss is not finite")
        timings.append((forward, backward))
    timings = timings[args.warmup:]
    step_ms = [(f + b) * 1e3 for f, b in timings]
    median_step = statistics.median(step_ms)
    parameters_count = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    memory = ""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info()
        memory = (f" memory_gib={(total - free) / 2**30:.2f}"
                  f" peak_allocated_gib={torch.cuda.max_memory_allocated() / 2**30:.2f}")
    print(f"RESULT impl=torch-peft-sdpa shape={args.shape} params={parameters_count / 1e6:.1f}M "
          f"device={args.device} step=dpo batch={args.sequences}x{args.sequence_length} "
          f"step_ms={median_step:.1f} min_ms={min(step_ms):.1f} "
          f"forward_ms={statistics.median(f * 1e3 for f, _ in timings):.1f} "
          f"backward_ms={statistics.median(b * 1e3 for _, b in timings):.1f} "
          f"tokens_per_s={args.sequences * args.sequence_length / (median_step * 1e-3):.0f}"
          f"{memory}", flush=True)


if __name__ == "__main__":
    main()
