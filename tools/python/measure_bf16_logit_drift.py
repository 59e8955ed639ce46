#!/usr/bin/env python3
"""How far bf16 moves the logits of the generation fixtures, and the bounds it gives.

tests/test_cuda_generation.cpp bounds how far the CUDA backend's logits (bf16 weights, adapter
and activations, f32 accumulation) may lie from the f32 ones along the golden generations of
tests/fixtures/generate/ (each file names its model and adapter), one bound per file and adapter
setting, and how far two bf16 paths (cached decoding against a full forward, a batch against one
sequence) may differ. This script
measures, along the same prefixes (each prompt and its golden tokens teacher-forced; the largest
|logit difference| over the generated steps):
  - transformers: the same models and adapters with every weight, the adapter's included, in bf16
    (torch on the CPU accumulates bf16 products in f32, as the tensor cores do), against f32.
    Not for llama3_rope_scaled, whose RoPE scaling transformers 4.42.4 lacks;
  - cst: a plain torch forward (cst_forward) in f32 that rounds to bf16 exactly where the CUDA
    backend stores bf16: weights and adapter; every GEMM output; the LoRA product u = x A^T;
    y + s u B^T once; the RMSNorm output once (f32 inside); q and k after RoPE (cos and sin in
    f32); the attention output (f32 softmax, as the row-wise kernels of these head dims compute
    it); SwiGLU once; each residual sum. Logits stay f32. Against the same forward in f32, which
    gives each fixture's golden logits (checked first);
  - summation order: cst's rounding with f32 sums against cst's rounding with f64 sums. An f32
    sum lies within its rounding error of the exact one, as a sum in any other order does; where
    that error carries a value across a bf16 rounding boundary, the stored value moves by a bf16
    step. Two bf16 paths that round at the same points but sum in different orders (cached
    decoding and a full forward, a batch and one sequence, the tensor cores and the emulated GPU)
    differ in this way.
The fixture's weights give one draw of where the roundings fall. To see their spread, everything
is repeated with every weight (base and adapter) multiplied by 1 + 2^-7 e, e ~ N(0, 1) per
element, about one bf16 step: each seed rounds every weight differently while the model stays the
same within 0.8%; f32 is rerun on the same perturbed weights, along the same golden prefixes.

It prints the largest of each over the fixture and the seeds per setting, the logit bound b the
test uses (twice the largest cst value, rounded up to a multiple of 0.001) and what that b leaves
the test, from the fixture's f32 logits: the decisive steps, whose top-two margin is at least 2b,
and the tokens before the first near-tie of each generation. It ends with the errors of
deliberate mistakes, for scale (cst's rounding against the correct f32).

    python3 tools/python/measure_bf16_logit_drift.py [--seeds N]   (default 40)
"""
import argparse
import copy
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
CASES = ("mistral_gqa_window", "llama_tied", "llama3_rope_scaled")
# The generation files: each names its model (one of CASES) and adapter.
GENERATION_FILES = CASES + ("mistral_gqa_window_memorized",)
# The models transformers 4.42.4 runs (rope_scaling of type llama3 came with 4.43).
TRANSFORMERS_CASES = ("mistral_gqa_window", "llama_tied")
PERTURBATION = 2.0 ** -7
BOUND_FACTOR = 2.0


def generation_file(name):
    """A golden generation file, its model and adapter directories made absolute."""
    with open(os.path.join(GOLDEN, name + ".json")) as f:
        golden = json.load(f)
    for key in ("model_directory", "adapter_directory"):
        golden[key] = os.path.join(ROOT, golden[key])
    return golden


def load(name, adapter):
    """The model of a generation file (with its adapter) in transformers + PEFT, f32; None where
    transformers 4.42.4 cannot run it."""
    golden = generation_file(name)
    if os.path.basename(os.path.dirname(golden["model_directory"])) not in TRANSFORMERS_CASES:
        return None
    model = AutoModelForCausalLM.from_pretrained(golden["model_directory"], torch_dtype=torch.float32,
                                                 attn_implementation="eager")
    if adapter:
        model = PeftModel.from_pretrained(model, golden["adapter_directory"])
    return model.eval()


def rounded(x, bf16):
    return x.to(torch.bfloat16).to(x.dtype) if bf16 else x


def cst_parameters(case, adapter):
    """(config, weights, LoRA weights, LoRA scaling) of a fixture model, with its own adapter, in f32."""
    return parameters_of(os.path.join(MODELS, case, "hf"), os.path.join(MODELS, case, "adapter") if adapter else None)


def generation_parameters(name, adapter):
    """cst_parameters of a generation file's model and adapter."""
    golden = generation_file(name)
    return parameters_of(golden["model_directory"], golden["adapter_directory"] if adapter else None)


def parameters_of(hf, adapter_folder):
    """(config, weights, LoRA weights, LoRA scaling) of a model directory, and of an adapter
    directory unless None, in f32."""
    with open(os.path.join(hf, "config.json")) as f:
        config = json.load(f)
    weights = {k: v.float() for k, v in load_file(os.path.join(hf, "model.safetensors")).items()}
    lora, scaling = {}, 0.0
    if adapter_folder:
        with open(os.path.join(adapter_folder, "adapter_config.json")) as f:
            adapter_config = json.load(f)
        lora = {k: v.float() for k, v in load_file(os.path.join(adapter_folder, "adapter_model.safetensors")).items()}
        r, alpha = adapter_config["r"], adapter_config["lora_alpha"]
        scaling = alpha / math.sqrt(r) if adapter_config.get("use_rslora") else alpha / r
    return config, weights, lora, scaling


def perturbed(parameters, seed):
    """The parameters with every weight multiplied by 1 + 2^-7 e, e ~ N(0, 1), drawn from `seed`
    (names in sorted order, base before adapter); seed 0 leaves them as they are."""
    config, weights, lora, scaling = parameters
    if not seed:
        return parameters
    generator = torch.Generator().manual_seed(seed)

    def draw(tensors):
        return {name: tensors[name] * (1 + PERTURBATION * torch.randn(tensors[name].shape, generator=generator))
                for name in sorted(tensors)}

    return config, draw(weights), draw(lora), scaling


def rope_inverse_frequencies(config, dim):
    """RoPE's inverse frequencies (f32), unscaled or with rope_scaling of type llama3: wavelengths
    past original_max_position_embeddings / low_freq_factor are stretched by factor, those below
    it / high_freq_factor kept, those between interpolated."""
    frequencies = 1.0 / config.get("rope_theta", 10000.0) ** (torch.arange(0, dim, 2).double() / dim)
    scaling = config.get("rope_scaling")
    if scaling:
        assert scaling["rope_type"] == "llama3", scaling
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        context = scaling["original_max_position_embeddings"]
        wavelengths = 2 * math.pi / frequencies
        between = ((context / wavelengths - low) / (high - low)).clamp(0, 1)
        frequencies = torch.where(wavelengths > context / low, frequencies / factor,
                                  torch.where(wavelengths < context / high, frequencies,
                                              (1 - between) * frequencies / factor + between * frequencies))
    return frequencies.float()


def cst_forward(parameters, tokens, bf16, accumulate=torch.float32, positions=None):
    """The logits (f32) of `tokens` with cst's CUDA rounding points (bf16=True) or none, every sum
    in `accumulate`; RoPE at `positions` (default 0, 1, ...)."""
    config, weights, lora, scaling = parameters
    weights = {k: rounded(v, bf16).to(accumulate) for k, v in weights.items()}
    lora = {k: rounded(v, bf16).to(accumulate) for k, v in lora.items()}

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
    inverse_frequencies = rope_inverse_frequencies(config, dim)
    positions = torch.arange(n) if positions is None else torch.tensor(positions)
    angles = (positions.float()[:, None] * inverse_frequencies[None]).double()
    cos = torch.cos(angles).float().repeat(1, 2).to(accumulate)
    sin = torch.sin(angles).float().repeat(1, 2).to(accumulate)

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
    return (norm(h, "model.norm.weight") @ head.T).float()


def set_transformers_weights(model, parameters):
    """Copies cst's parameter dicts into the transformers (+ PEFT) model of the same fixture."""
    _, weights, lora, _ = parameters
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(lora[name.replace(".default", "")])
            else:
                parameter.copy_(weights[name.removeprefix("base_model.model.").replace(".base_layer", "")])


def generated_steps(prompt, generated):
    """The rows of a teacher-forced forward that chose each generated token."""
    return slice(len(prompt) - 1, len(prompt) - 1 + len(generated))


def transformers_logits(model, prompt, generated):
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + generated])).logits[0].float()
    return logits[generated_steps(prompt, generated)]


def cst_logits(parameters, prompt, generated, bf16, accumulate=torch.float32, positions=None):
    with torch.no_grad():
        logits = cst_forward(parameters, prompt + generated, bf16, accumulate, positions)
    return logits[generated_steps(prompt, generated)]


def largest_difference(a, b):
    return float((a - b).abs().max())


def golden_generations(name, adapter):
    """(prompt, golden tokens) of each generation of a generation file and adapter setting."""
    golden = generation_file(name)
    return list(zip(golden["prompts"], golden["adapter" if adapter else "base"]))


def measure(model, parameters, generations):
    """Per generation, {"transformers" (where model is not None), "cst", "summation order":
    largest logit difference} for one draw of the weights."""
    if model is not None:
        set_transformers_weights(model, parameters)
        bf16_model = copy.deepcopy(model).to(torch.bfloat16)
    results = []
    for prompt, generated in generations:
        bf16 = cst_logits(parameters, prompt, generated, True)
        result = {} if model is None else {
            "transformers": largest_difference(transformers_logits(bf16_model, prompt, generated),
                                               transformers_logits(model, prompt, generated))}
        result["cst"] = largest_difference(bf16, cst_logits(parameters, prompt, generated, False))
        result["summation order"] = largest_difference(
            bf16, cst_logits(parameters, prompt, generated, True, torch.float64))
        results.append(result)
    return results


def describe(numbers):
    return ", ".join(f"{name} {value:.4f}" for name, value in numbers.items())


def largest_of(results):
    return {name: max(result[name] for result in results) for name in results[0]}


def setting_name(name, adapter):
    return f"{name} {'with' if adapter else 'without'} the adapter"


def top_two_margin(logits):
    top = logits.topk(2).values
    return float(top[0] - top[1])


def margins_left(parameters, generations, bound):
    """(decisive steps, tokens before each generation's first near-tie) that a logit bound leaves
    the test, from the f32 logits; checks that the f32 argmax is the golden token where decisive."""
    decisive, guaranteed = 0, 0
    for prompt, generated in generations:
        logits = cst_logits(parameters, prompt, generated, False)
        near_tie_seen = False
        for step, row in enumerate(logits):
            if top_two_margin(row) < 2 * bound:
                near_tie_seen = True
                continue
            assert int(row.argmax()) == generated[step], (prompt, step)
            decisive += 1
            guaranteed += not near_tie_seen
    return decisive, guaranteed


def decoded_positions_one_too_far(prompt_length, length):
    """RoPE positions of a teacher-forced sequence whose decoded tokens sit one position too far."""
    return list(range(prompt_length)) + list(range(prompt_length + 1, length + 1))


def mistakes(parameters):
    """Deliberate mistakes that are mistakes for this model, for scale: (what, the wrong
    parameters, RoPE positions from the prompt's length and the sequence's, or None)."""
    config, weights, lora, scaling = parameters

    def changed(scaling_factor=1.0, **config_changes):
        return {**config, **config_changes}, weights, lora, scaling_factor * scaling

    wrong = []
    if lora:
        wrong += [("the LoRA term left out", changed(0.0), None), ("LoRA scaling 10% too large", changed(1.1), None)]
    if config.get("rope_theta", 10000.0) != 10000.0:
        wrong.append(("RoPE theta 10000 instead of the config's", changed(rope_theta=10000.0), None))
    if config.get("rope_scaling"):
        wrong.append(("RoPE scaling ignored", changed(rope_scaling=None), None))
    if config.get("sliding_window"):
        wrong.append(("sliding window ignored", changed(sliding_window=None), None))
    wrong.append(("decoded tokens' positions one too far", parameters, decoded_positions_one_too_far))
    return wrong


def measure_mistakes(parameters, generations):
    """{mistake: largest logit difference with cst's rounding from the correct f32} of a setting."""
    errors = {}
    for description, wrong, positions in mistakes(parameters):
        errors[description] = max(
            largest_difference(
                cst_logits(wrong, prompt, generated, True,
                           positions=positions(len(prompt), len(prompt) + len(generated)) if positions else None),
                cst_logits(parameters, prompt, generated, False))
            for prompt, generated in generations)
    return errors


def measure_setting(name, adapter, seeds):
    """Prints the fixture's and each seed's differences for one setting; returns the largest of
    each over all draws."""
    setting = setting_name(name, adapter)
    model, parameters = load(name, adapter), generation_parameters(name, adapter)
    generations = golden_generations(name, adapter)
    fixture = measure(model, parameters, generations)
    for (prompt, _), result in zip(generations, fixture):
        print(f"{setting}, prompt of {len(prompt)}, fixture: {describe(result)}")
    largest = largest_of(fixture)
    for seed in range(1, seeds + 1):
        result = largest_of(measure(model, perturbed(parameters, seed), generations))
        print(f"{setting}, seed {seed}: {describe(result)}")
        largest = {key: max(value, result[key]) for key, value in largest.items()}
    return largest


def check_f32_forward():
    """cst_forward in f32 gives the fixture's golden logits (transformers + PEFT, with and without
    the adapter): its model is the models' own."""
    for case in CASES:
        golden = load_file(os.path.join(MODELS, case, "golden.safetensors"))
        ids, boundaries = golden["input_ids"].tolist(), golden["cu_seqlens"].tolist()
        for adapter, name in ((False, "base_logits"), (True, "logits")):
            parameters = cst_parameters(case, adapter)
            with torch.no_grad():
                logits = torch.cat([cst_forward(parameters, ids[start:end], False)
                                    for start, end in zip(boundaries, boundaries[1:])])
            difference = largest_difference(logits, golden[name])
            assert difference < 1e-5, (case, name, difference)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=40, help="perturbed repetitions after the fixture itself")
    seeds = parser.parse_args().seeds
    check_f32_forward()
    settings = [(name, adapter) for name in GENERATION_FILES for adapter in (False, True)]
    largest = {setting: measure_setting(*setting, seeds) for setting in settings}
    print(f"\nlargest logit differences over the fixture's weights and {seeds} seeds; the bound b = "
          f"{BOUND_FACTOR:g} x cst's, rounded up to a multiple of 0.001, and what it leaves the test")
    for (name, adapter), numbers in largest.items():
        bound = math.ceil(BOUND_FACTOR * numbers["cst"] * 1000) / 1000
        decisive, guaranteed = margins_left(generation_parameters(name, adapter), golden_generations(name, adapter),
                                            bound)
        print(f"{setting_name(name, adapter)}: {describe(numbers)}; b {bound:.3f}: {decisive} decisive steps, "
              f"{guaranteed} tokens before the first near-ties")
    print()
    for name, adapter in settings:
        errors = measure_mistakes(generation_parameters(name, adapter), golden_generations(name, adapter))
        for description, error in errors.items():
            print(f"{setting_name(name, adapter)}, mistake, {description}: largest logit error {error:.4f}")


if __name__ == "__main__":
    main()
