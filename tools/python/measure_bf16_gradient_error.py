#!/usr/bin/env python3
"""How far bf16 moves the log-probs and LoRA gradients of the CUDA model test's two batches.

tests/test_cuda_model.cpp (CudaModel.ForwardBackward*) runs a batch forward and backward on the
CUDA backend (bf16 weights, adapter copies and activations, f32 accumulation, f32 LoRA gradients)
and on the f32 CPU backend, with d loss / d (token log-prob) = 1 for every labelled token (each
token labelled with the next one of its sequence), and bounds three relative errors (Frobenius
norms): of the per-token log-prob vector, of the worst LoRA gradient tensor, and of the whole
gradient (every LoRA gradient laid end to end). Its two batches, on the weights and adapter of
tests/fixtures/model/mistral_gqa_window:
  - fixture: the golden batch (sequences of 13, 9 and 1 tokens) under the fixture's config;
  - long: sequences of 37, 64 and 90 tokens, token i of the batch (counted across the sequences)
    being (7 i^2 + 3 i + 1) mod 509 mod the vocabulary size, under the fixture's config with RoPE
    theta 1e6 (Mistral-7B-v0.2's), a sliding window of 48 and room for 128 positions. The
    fixture's theta is transformers' default, 10000, so a GPU path that ignored the config's theta
    would go unseen there; and its window of 5 shows RoPE only the distances 0 to 4.
This script measures the same three quantities, bf16 against f32, for
  - transformers + PEFT, model and adapter cast to bf16 (torch on the CPU accumulates bf16
    products in f32, as the tensor cores do);
  - cst's CUDA rounding points: measure_bf16_logit_drift.cst_forward, differentiated by autograd,
    whose backward rounds each activation gradient to bf16 where the forward rounds the
    activation, as the CUDA backward stores its activation gradients in bf16.
Both round each LoRA gradient to bf16 once at the end, where cst keeps f32: at most 2^-9 relative
per element, so the errors below may exceed cst's by that much. It also prints how much bf16
moves the whole gradient's norm (the training tests bound the gradient norm).

The fixture's weights give one draw of the rounding errors. To see their spread, the measurement is
repeated with every weight (base and adapter) multiplied by 1 + 2^-7 e, e ~ N(0, 1) per element,
about one bf16 step: each seed rounds every weight differently while the model stays the same
within 0.8%; f32 is rerun on the same perturbed weights. For scale, it ends with the errors of
deliberate mistakes (with cst's rounding, against the correct f32), and shows that a constant
position offset per sequence (positions that do not restart at each sequence of a packed batch)
moves the f32 results by rounding only: RoPE's attention scores depend only on the distance between
two positions, so no comparison of outputs can see such an offset, and it changes nothing the model
computes.

    python3 tools/python/measure_bf16_gradient_error.py [--seeds N]   (default 40)
"""
import argparse
import copy
import os

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from measure_bf16_logit_drift import MODELS, cst_forward, cst_parameters

CASE = "mistral_gqa_window"
PERTURBATION = 2.0 ** -7
LONG_LENGTHS = (37, 64, 90)
LONG_CONFIG = {"rope_theta": 1e6, "sliding_window": 48, "max_position_embeddings": 128}


def golden_sequences():
    """The sequences of the golden batch, and their per-token log-probs as transformers gave them."""
    golden = load_file(os.path.join(MODELS, CASE, "golden.safetensors"))
    ids, boundaries = golden["input_ids"].long(), golden["cu_seqlens"].tolist()
    return [ids[start:end] for start, end in zip(boundaries, boundaries[1:])], golden["logps"]


def long_sequences(vocab_size):
    """The long batch's sequences, by the formula the test uses (integers, the same in C++)."""
    ids = torch.tensor([(7 * i * i + 3 * i + 1) % 509 % vocab_size for i in range(sum(LONG_LENGTHS))])
    return list(ids.split(LONG_LENGTHS))


def next_token_logps(logits, ids):
    """log softmax(logits)[next token] per position, 0 at the last one (it has no label)."""
    logps = torch.zeros(len(ids))
    if len(ids) > 1:
        logps = torch.cat([torch.log_softmax(logits[:-1].float(), -1).gather(1, ids[1:, None])[:, 0],
                           torch.zeros(1)])
    return logps


def peft_model(seed, config_changes):
    """The fixture's model (config.json with config_changes applied) and its adapter in f32,
    perturbed unless seed is 0; LoRA trainable."""
    model = AutoModelForCausalLM.from_pretrained(os.path.join(MODELS, CASE, "hf"), torch_dtype=torch.float32,
                                                 attn_implementation="eager", **config_changes)
    model = PeftModel.from_pretrained(model, os.path.join(MODELS, CASE, "adapter")).eval()
    generator = torch.Generator().manual_seed(seed)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_("lora_" in name)
        if seed:
            with torch.no_grad():
                parameter.mul_(1 + PERTURBATION * torch.randn(parameter.shape, generator=generator))
    return model


def peft_name(name):
    """PEFT's saved name of a parameter: ...lora_A.default.weight -> ...lora_A.weight."""
    return name.replace(".default", "")


def transformers_run(model, sequences, position_offsets=None):
    """Per-token log-probs and LoRA gradients of sum(log-probs), each sequence a batch of one whose
    positions start at 0, or at its position_offsets entry."""
    model.zero_grad()
    logps = []
    for index, ids in enumerate(sequences):
        start = position_offsets[index] if position_offsets else 0
        positions = torch.arange(start, start + len(ids))[None]
        logits = model(input_ids=ids[None], position_ids=positions, use_cache=False).logits[0]
        logps.append(next_token_logps(logits, ids))
    logps = torch.cat(logps)
    logps.sum().backward()
    gradients = {peft_name(name): parameter.grad.float()
                 for name, parameter in model.named_parameters() if parameter.requires_grad}
    return logps.detach(), gradients


# Deliberate mistakes, for scale: what the errors look like when something is wrong.
MISTAKES = {
    "RoPE theta 10000 (transformers' default) instead of the config's":
        lambda config, scaling: ({**config, "rope_theta": 10000.0}, scaling),
    "RoPE theta twice the config's":
        lambda config, scaling: ({**config, "rope_theta": 2 * config["rope_theta"]}, scaling),
    "sliding window ignored": lambda config, scaling: ({**config, "sliding_window": None}, scaling),
    "LoRA scaling 10% too large": lambda config, scaling: (config, 1.1 * scaling),
}


def cst_run(model, sequences, config_changes, bf16, mistake=None):
    """The same with cst's rounding points (bf16=True) or none, on the PEFT model's weights."""
    config, _, _, scaling = cst_parameters(CASE, True)
    config = {**config, **config_changes}
    if mistake:
        config, scaling = mistake(config, scaling)
    weights, lora = {}, {}
    for name, parameter in model.named_parameters():
        if "lora_" in name:
            lora[peft_name(name)] = parameter.detach().clone().requires_grad_()
        else:
            weights[name.removeprefix("base_model.model.").replace(".base_layer", "")] = parameter.detach()
    logps = torch.cat([next_token_logps(cst_forward((config, weights, lora, scaling), ids.tolist(), bf16), ids)
                       for ids in sequences])
    logps.sum().backward()
    return logps.detach(), {name: tensor.grad for name, tensor in lora.items()}


def relative_error(actual, expected):
    actual, expected = actual.double(), expected.double()
    return float((actual - expected).norm() / expected.norm())


def whole_gradient(gradients):
    """Every LoRA gradient laid end to end, in one order for any run."""
    return torch.cat([gradients[name].double().flatten() for name in sorted(gradients)])


def compare(run, f32):
    """The errors of a run against f32: {"log-probs", "whole gradient", "gradient norm": relative
    error}, and {LoRA tensor: gradient relative error}."""
    run_gradient, f32_gradient = whole_gradient(run[1]), whole_gradient(f32[1])
    return ({"log-probs": relative_error(run[0], f32[0]),
             "whole gradient": relative_error(run_gradient, f32_gradient),
             "gradient norm": float(abs(run_gradient.norm() - f32_gradient.norm()) / f32_gradient.norm())},
            {name: relative_error(run[1][name], f32[1][name]) for name in f32[1]})


def check_f32_runs(batches, golden_logps):
    """Both f32 runs agree on the log-probs and gradients of each batch (the variant config of the
    long batch included), and reproduce the fixture's log-probs: the batches are the test's."""
    for name, (config_changes, sequences) in batches.items():
        model = peft_model(0, config_changes)
        transformers_logps, transformers_gradients = transformers_run(model, sequences)
        cst_logps, cst_gradients = cst_run(model, sequences, config_changes, False)
        assert relative_error(cst_logps, transformers_logps) < 1e-5, (name, relative_error(cst_logps, transformers_logps))
        if name == "fixture":
            assert relative_error(transformers_logps, golden_logps) < 1e-5, relative_error(transformers_logps,
                                                                                           golden_logps)
        for tensor, gradient in cst_gradients.items():
            assert relative_error(gradient, transformers_gradients[tensor]) < 1e-5, (name, tensor)


def measure(seed, config_changes, sequences):
    """{"transformers": comparison, "cst": comparison} of one batch for one perturbation seed (0: none)."""
    model = peft_model(seed, config_changes)
    bf16_model = copy.deepcopy(model).to(torch.bfloat16)
    return {"transformers": compare(transformers_run(bf16_model, sequences), transformers_run(model, sequences)),
            "cst": compare(cst_run(model, sequences, config_changes, True),
                           cst_run(model, sequences, config_changes, False))}


def short_name(name):
    return name.removeprefix("base_model.model.model.").removesuffix(".weight")


def summary(comparison):
    """The comparison's numbers by name, the worst LoRA tensor's included, and that tensor's name."""
    errors, tensor_errors = comparison
    worst = max(tensor_errors, key=tensor_errors.get)
    return {**errors, "worst LoRA gradient": tensor_errors[worst]}, short_name(worst)


def describe(numbers):
    return ", ".join(f"{name} {value:.2e}" for name, value in numbers.items())


def measure_spread(name, config_changes, sequences, seeds):
    """Prints each seed's errors of one batch and returns the largest of each, per rounding."""
    fixture = measure(0, config_changes, sequences)
    print(f"\n{name} batch ({[len(s) for s in sequences]} tokens), bf16 vs f32 relative errors")
    print(f"{'LoRA gradient':42s} {'transformers':>12s} {'cst rounding':>12s}")
    for tensor, error in fixture["transformers"][1].items():
        print(f"{short_name(tensor):42s} {error:12.2e} {fixture['cst'][1][tensor]:12.2e}")
    largest = {}
    for seed in range(seeds + 1):
        result = fixture if seed == 0 else measure(seed, config_changes, sequences)
        line = []
        for rounding, comparison in result.items():
            numbers, worst = summary(comparison)
            largest[rounding] = {key: max(value, largest.get(rounding, {}).get(key, 0.0))
                                 for key, value in numbers.items()}
            line.append(f"{rounding}: {describe(numbers)} ({worst})")
        print(f"{'fixture' if seed == 0 else f'seed {seed}':8s} " + "; ".join(line))
    return largest


def measure_mistakes(name, config_changes, sequences):
    """Prints the errors of each deliberate mistake on one batch, and of a position offset per sequence."""
    model = peft_model(0, config_changes)
    f32 = cst_run(model, sequences, config_changes, False)
    for description, mistake in MISTAKES.items():
        numbers, _ = summary(compare(cst_run(model, sequences, config_changes, True, mistake), f32))
        print(f"{name} batch, mistake, {description}, cst rounding: {describe(numbers)}")
    offsets = torch.tensor([0] + [len(ids) for ids in sequences[:-1]]).cumsum(0).tolist()
    numbers, _ = summary(compare(transformers_run(model, sequences, offsets), transformers_run(model, sequences)))
    print(f"{name} batch, positions not restarting at each sequence, f32 against f32: {describe(numbers)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=40, help="perturbed repetitions after the fixture itself")
    seeds = parser.parse_args().seeds
    sequences, golden_logps = golden_sequences()
    vocab_size = cst_parameters(CASE, False)[0]["vocab_size"]
    batches = {"fixture": ({}, sequences), "long": (LONG_CONFIG, long_sequences(vocab_size))}
    check_f32_runs(batches, golden_logps)
    largest = {name: measure_spread(name, *batch, seeds) for name, batch in batches.items()}
    print()
    for name, by_rounding in largest.items():
        for rounding, numbers in by_rounding.items():
            print(f"{name} batch, largest over the fixture's weights and {seeds} seeds, {rounding}: "
                  f"{describe(numbers)}")
    print()
    for name, batch in batches.items():
        measure_mistakes(name, *batch)


if __name__ == "__main__":
    main()
