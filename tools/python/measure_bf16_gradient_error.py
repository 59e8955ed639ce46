#!/usr/bin/env python3
"""How far bf16 moves the log-probs and LoRA gradients of the CUDA model test's batch.

tests/test_cuda_model.cpp (CudaModel.ForwardBackwardMatchesTheCpuBackend) runs the golden batch of
tests/fixtures/model/mistral_gqa_window (its sequences laid end to end, each token labelled with
the next one of its sequence) forward and backward on the CUDA backend (bf16 weights, adapter
copies and activations, f32 accumulation, f32 LoRA gradients) and on the f32 CPU backend, with
d loss / d (token log-prob) = 1 for every labelled token, and bounds the relative error of the
per-token log-prob vector and the worst relative error of one LoRA gradient tensor (Frobenius
norms). This script measures the same two quantities, bf16 against f32, for
  - transformers + PEFT, model and adapter cast to bf16 (torch on the CPU accumulates bf16
    products in f32, as the tensor cores do);
  - cst's CUDA rounding points: measure_bf16_logit_drift.cst_forward, differentiated by autograd,
    whose backward rounds each activation gradient to bf16 where the forward rounds the
    activation, as the CUDA backward stores its activation gradients in bf16.
Both round each LoRA gradient to bf16 once at the end, where cst keeps f32: at most 2^-9 relative
per element, so the errors below may exceed cst's by that much.

The fixture's weights give one draw of the rounding errors. To see their spread, the measurement is
repeated with every weight (base and adapter) multiplied by 1 + 2^-7 e, e ~ N(0, 1) per element,
about one bf16 step: each seed rounds every weight differently while the model stays the same
within 0.8%; f32 is rerun on the same perturbed weights. For scale, it ends with the errors of two deliberate mistakes
(with cst's rounding, against the correct f32).

    python3 tools/python/measure_bf16_gradient_error.py [--seeds N]   (default 40)
"""
import argparse
import copy
import os

import torch
from safetensors.torch import load_file

from measure_bf16_logit_drift import MODELS, cst_forward, cst_parameters, load

CASE = "mistral_gqa_window"
PERTURBATION = 2.0 ** -7


def golden_sequences():
    """The sequences of the golden batch, and their per-token log-probs as transformers gave them."""
    golden = load_file(os.path.join(MODELS, CASE, "golden.safetensors"))
    ids, boundaries = golden["input_ids"].long(), golden["cu_seqlens"].tolist()
    return [ids[start:end] for start, end in zip(boundaries, boundaries[1:])], golden["logps"]


def next_token_logps(logits, ids):
    """log softmax(logits)[next token] per position, 0 at the last one (it has no label)."""
    logps = torch.zeros(len(ids))
    if len(ids) > 1:
        logps = torch.cat([torch.log_softmax(logits[:-1].float(), -1).gather(1, ids[1:, None])[:, 0],
                           torch.zeros(1)])
    return logps


def peft_model(seed):
    """The fixture's model with its adapter in f32, perturbed unless seed is 0; LoRA trainable."""
    model = load(CASE, True, torch.float32)
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


def transformers_run(model, sequences):
    """Per-token log-probs and LoRA gradients of sum(log-probs), each sequence a batch of one."""
    model.zero_grad()
    logps = torch.cat([next_token_logps(model(input_ids=ids[None], use_cache=False).logits[0], ids)
                       for ids in sequences])
    logps.sum().backward()
    gradients = {peft_name(name): parameter.grad.float()
                 for name, parameter in model.named_parameters() if parameter.requires_grad}
    return logps.detach(), gradients


# Deliberate mistakes, for scale: what the errors look like when something is wrong.
MISTAKES = {
    "sliding window ignored": lambda config, scaling: ({**config, "sliding_window": None}, scaling),
    "LoRA scaling 10% too large": lambda config, scaling: (config, 1.1 * scaling),
}


def cst_run(model, sequences, bf16, mistake=None):
    """The same with cst's rounding points (bf16=True) or none, on the PEFT model's weights."""
    config, _, _, scaling = cst_parameters(CASE, True)
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


def gradient_norm(gradients):
    return float(torch.cat([g.double().flatten() for g in gradients.values()]).norm())


def compare(bf16, f32):
    """(log-prob relative error, {LoRA tensor: gradient relative error}, gradient norm relative difference)."""
    norm = gradient_norm(f32[1])
    return (relative_error(bf16[0], f32[0]), {name: relative_error(bf16[1][name], f32[1][name]) for name in f32[1]},
            abs(gradient_norm(bf16[1]) - norm) / norm)


def check_f32_runs(sequences, golden_logps):
    """Both f32 runs reproduce the fixture's log-probs and agree on the gradients: the batch is the test's."""
    model = peft_model(0)
    transformers_logps, transformers_gradients = transformers_run(model, sequences)
    cst_logps, cst_gradients = cst_run(model, sequences, False)
    for logps in (transformers_logps, cst_logps):
        assert relative_error(logps, golden_logps) < 1e-5, relative_error(logps, golden_logps)
    for name, gradient in cst_gradients.items():
        assert relative_error(gradient, transformers_gradients[name]) < 1e-5, name


def measure(seed, sequences):
    """{"transformers": comparison, "cst": comparison} for one perturbation seed (0: none)."""
    model = peft_model(seed)
    bf16_model = copy.deepcopy(model).to(torch.bfloat16)
    return {"transformers": compare(transformers_run(bf16_model, sequences), transformers_run(model, sequences)),
            "cst": compare(cst_run(model, sequences, True), cst_run(model, sequences, False))}


def short_name(name):
    return name.removeprefix("base_model.model.model.").removesuffix(".weight")


def worst(gradient_errors):
    name = max(gradient_errors, key=gradient_errors.get)
    return gradient_errors[name], short_name(name)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=40, help="perturbed repetitions after the fixture itself")
    seeds = parser.parse_args().seeds
    sequences, golden_logps = golden_sequences()
    check_f32_runs(sequences, golden_logps)
    fixture = measure(0, sequences)
    print(f"{CASE}, the test's batch ({[len(s) for s in sequences]} tokens), bf16 vs f32 relative errors")
    print(f"{'LoRA gradient':42s} {'transformers':>12s} {'cst rounding':>12s}")
    for name, error in fixture["transformers"][1].items():
        print(f"{short_name(name):42s} {error:12.2e} {fixture['cst'][1][name]:12.2e}")
    largest = {"transformers": [0.0, 0.0, 0.0], "cst": [0.0, 0.0, 0.0]}
    for seed in range(seeds + 1):
        result = fixture if seed == 0 else measure(seed, sequences)
        line = []
        for rounding, (logps_error, gradient_errors, norm_difference) in result.items():
            gradient_error, name = worst(gradient_errors)
            largest[rounding] = [max(old, new) for old, new in
                                 zip(largest[rounding], (logps_error, gradient_error, norm_difference))]
            line.append(f"{rounding}: log-probs {logps_error:.2e}, worst LoRA gradient {gradient_error:.2e} "
                        f"({name}), gradient norm {norm_difference:.1e}")
        print(f"{'fixture' if seed == 0 else f'seed {seed}':8s} " + "; ".join(line))
    for rounding, (logps_error, gradient_error, norm_difference) in largest.items():
        print(f"largest over the fixture and {seeds} seeds, {rounding}: log-probs {logps_error:.2e}, "
              f"worst LoRA gradient {gradient_error:.2e}, gradient norm {norm_difference:.1e}")
    model = peft_model(0)
    f32 = cst_run(model, sequences, False)
    for description, mistake in MISTAKES.items():
        logps_error, gradient_errors, norm_difference = compare(cst_run(model, sequences, True, mistake), f32)
        print(f"mistake, {description}, cst rounding: log-probs {logps_error:.2e}, "
              f"worst LoRA gradient {worst(gradient_errors)[0]:.2e}, gradient norm {norm_difference:.1e}")


if __name__ == "__main__":
    main()
