#!/usr/bin/env python3
"""How far bf16 moves the logits of the generation fixtures, in transformers + PEFT.

tests/test_cuda_generation.cpp bounds how far the CUDA backend's logits (bf16 weights, adapter
and activations, f32 accumulation) may lie from the f32 ones along the golden generations of
tests/fixtures/generate/. This script measures the same quantity for transformers running the
same models and adapters with every weight, the adapter's included, in bf16 (torch on the CPU
accumulates bf16 products in f32, as the tensor cores do): for each golden generation, the prompt
and its golden tokens teacher-forced through the model in f32 and in bf16, and the largest
|logit difference| over the generated steps.

The same for cst's CUDA backend, whose rounding points differ from transformers': a plain torch
forward (cst_forward) in f32 that rounds to bf16 exactly where the CUDA backend stores bf16:
weights and adapter; every GEMM output; the LoRA product u = x A^T; y + s u B^T once; the RMSNorm
output once (f32 inside); q and k after RoPE (cos and sin in f32); the attention output (f32
softmax, as the row-wise kernels of these head dims compute it); SwiGLU once; each residual sum.
Logits stay f32. It prints both per generation, and the largest of each.

    python3 tools/python/measure_bf16_logit_drift.py
"""
import json
import math
import os

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
MODELS = os.path.join(ROOT, "tests", "fixtures", "model")
GOLDEN = os.path.join(ROOT, "tests", "fixtures", "generate")
CASES = ("mistral_gqa_window", "llama_tied")


def load(case, adapter, dtype):
    model = AutoModelForCausalLM.from_pretrained(os.path.join(MODELS, case, "hf"), torch_dtype=torch.float32,
                                                 attn_implementation="eager")
    if adapter:
        model = PeftModel.from_pretrained(model, os.path.join(MODELS, case, "adapter"))
    return model.to(dtype).eval()


def rounded(x, bf16):
    return x.to(torch.bfloat16).float() if bf16 else x


def cst_parameters(case, adapter):
    """(config, weights, LoRA weights, LoRA scaling) of a fixture model, in f32."""
    hf = os.path.join(MODELS, case, "hf")
    with open(os.path.join(hf, "config.json")) as f:
        config = json.load(f)
    weights = {k: v.float() for k, v in load_file(os.path.join(hf, "model.safetensors")).items()}
    lora, scaling = {}, 0.0
    if adapter:
        folder = os.path.join(MODELS, case, "adapter")
        with open(os.path.join(folder, "adapter_config.json")) as f:
            adapter_config = json.load(f)
        lora = {k: v.float() for k, v in load_file(os.path.join(folder, "adapter_model.safetensors")).items()}
        r, alpha = adapter_config["r"], adapter_config["lora_alpha"]
        scaling = alpha / math.sqrt(r) if adapter_config.get("use_rslora") else alpha / r
    return config, weights, lora, scaling


def cst_forward(parameters, tokens, bf16):
    """The logits of `tokens` with cst's CUDA rounding points (bf16=True) or none (f32)."""
    config, weights, lora, scaling = parameters
    weights = {k: rounded(v, bf16) for k, v in weights.items()}
    lora = {k: rounded(v, bf16) for k, v in lora.items()}

    def linear(x, name):
        y = rounded(x @ weights[name + ".weight"].T, bf16)
        key = "base_model.model." + name
        if key + ".lora_A.weight" not in lora:
            return y
        u = rounded(x @ lora[key + ".lora_A.weight"].T, bf16)
        return rounded(y + scaling * (u @ lora[key + ".lora_B.weight"].T), bf16)

    def norm(x, name):
        rstd = torch.rsqrt((x * x).mean(-1, keepdim=True) + config["rms_norm_eps"])
        return rounded(weights[name] * (x * rstd), bf16)

    n, heads, kv_heads = len(tokens), config["num_attention_heads"], config["num_key_value_heads"]
    dim = config.get("head_dim") or config["hidden_size"] // heads
    inverse_frequencies = 1.0 / (config.get("rope_theta", 10000.0) ** (torch.arange(0, dim, 2).double() / dim)).float()
    angles = (torch.arange(n).float()[:, None] * inverse_frequencies[None]).double()
    cos, sin = torch.cos(angles).float().repeat(1, 2), torch.sin(angles).float().repeat(1, 2)

    def rope(x):  # (n, heads, dim), HF's rotate_half
        half = torch.cat([-x[..., dim // 2:], x[..., :dim // 2]], dim=-1)
        return rounded(x * cos[:, None] + half * sin[:, None], bf16)

    visible = torch.ones(n, n).tril().bool()
    if config.get("sliding_window"):
        visible &= ~torch.ones(n, n).tril(-config["sliding_window"]).bool()
    h = weights["model.embed_tokens.weight"][torch.tensor(tokens)]
    for layer in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{layer}"
        x = norm(h, prefix + ".input_layernorm.weight")
        q = rope(linear(x, prefix + ".self_attn.q_proj").view(n, heads, dim))
        k = rope(linear(x, prefix + ".self_attn.k_proj").view(n, kv_heads, dim))
        v = linear(x, prefix + ".self_attn.v_proj").view(n, kv_heads, dim)
        k, v = k.repeat_interleave(heads // kv_heads, 1), v.repeat_interleave(heads // kv_heads, 1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(dim)
        probabilities = scores.masked_fill(~visible, float("-inf")).softmax(-1)
        attention = rounded(torch.einsum("hqk,khd->qhd", probabilities, v).reshape(n, heads * dim), bf16)
        h = rounded(h + linear(attention, prefix + ".self_attn.o_proj"), bf16)
        x = norm(h, prefix + ".post_attention_layernorm.weight")
        gate, up = linear(x, prefix + ".mlp.gate_proj"), linear(x, prefix + ".mlp.up_proj")
        h = rounded(h + linear(rounded(torch.nn.functional.silu(gate) * up, bf16), prefix + ".mlp.down_proj"), bf16)
    head = weights.get("lm_head.weight", weights["model.embed_tokens.weight"])
    return norm(h, "model.norm.weight") @ head.T


def generated_step_logits(model, prompt, generated):
    """The logits that chose each generated token (teacher forcing), in f32."""
    sequence = torch.tensor([prompt + generated])
    with torch.no_grad():
        logits = model(input_ids=sequence).logits[0].float()
    return logits[len(prompt) - 1:len(prompt) - 1 + len(generated)]


def largest_step_difference(bf16_logits, f32_logits):
    difference = (bf16_logits - f32_logits).abs()
    return float(difference.max()), int(difference.max(dim=1).values.argmax())


def main():
    largest = {"transformers": 0.0, "cst": 0.0}
    for case in CASES:
        with open(os.path.join(GOLDEN, case + ".json")) as f:
            golden = json.load(f)
        for adapter in (False, True):
            f32, bf16 = load(case, adapter, torch.float32), load(case, adapter, torch.bfloat16)
            parameters = cst_parameters(case, adapter)
            for prompt, generated in zip(golden["prompts"], golden["adapter" if adapter else "base"]):
                steps = slice(len(prompt) - 1, len(prompt) - 1 + len(generated))
                with torch.no_grad():
                    cst = largest_step_difference(cst_forward(parameters, prompt + generated, True)[steps],
                                                  cst_forward(parameters, prompt + generated, False)[steps])
                transformers = largest_step_difference(generated_step_logits(bf16, prompt, generated),
                                                       generated_step_logits(f32, prompt, generated))
                for name, (worst, _) in (("transformers", transformers), ("cst", cst)):
                    largest[name] = max(largest[name], worst)
                print(f"{case} prompt of {len(prompt)} {'with' if adapter else 'without'} the adapter: "
                      f"largest |bf16 - f32| logit difference: transformers {transformers[0]:.4f} "
                      f"(step {transformers[1]}), cst's rounding {cst[0]:.4f} (step {cst[1]})")
    print(f"largest over all generations: transformers {largest['transformers']:.4f}, "
          f"cst's rounding {largest['cst']:.4f}")


if __name__ == "__main__":
    main()
