"""Golden data for the CPU ops from the real implementations.

Rerun from the repository root (needs torch, transformers 4.42.4, trl 0.9.6):
    python3 tools/python/make_ops_fixtures.py
It writes tests/fixtures/ops/*.json, read by tests/test_ops_golden.cpp:
  rope_transformers.json   cos/sin of transformers' MistralRotaryEmbedding (f32)
  adamw_torch.json         parameters after each torch.optim.AdamW step (f32)
  dpo_loss_trl.json        trl DPOTrainer.dpo_loss values and autograd gradients (f64), every loss type
  counter_uniform.json     the dropout hash of kernels/elementwise.h, written out in Python
"""
import json
import os
import types

import numpy as np
import torch

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "ops")


def f32_list(values):
    """Shortest decimal strings that read back as the same f32, as JSON numbers."""
    return [float(np.format_float_positional(np.float32(v), unique=True)) for v in np.ravel(values)]


def write(name, data):
    with open(os.path.join(OUT, name), "w") as f:
        json.dump(data, f, separators=(",", ":"))
        f.write("\n")


def rope_fixture():
    from transformers.models.mistral.modeling_mistral import MistralRotaryEmbedding

    cases = []
    for head_dim, theta in [(128, 10000.0), (64, 1000000.0), (10, 10000.0)]:
        rotary = MistralRotaryEmbedding(head_dim, max_position_embeddings=32768, base=theta)
        positions = [0, 1, 2, 3, 7, 100, 511, 4095, 4096, 8191, 20011, 32767]
        x = torch.zeros(1, dtype=torch.float32)
        cos, sin = rotary(x, torch.tensor([positions], dtype=torch.int64))
        half = head_dim // 2
        cases.append({
            "head_dim": head_dim, "theta": theta, "positions": positions,
            "cos": f32_list(cos[0, :, :half].numpy()), "sin": f32_list(sin[0, :, :half].numpy()),
        })
    write("rope_transformers.json", {"cases": cases})


def adamw_fixture():
    generator = torch.Generator().manual_seed(7)
    count, steps = 29, 5
    param = torch.nn.Parameter(torch.rand(count, generator=generator) * 2 - 1)
    initial = param.detach().clone()
    config = {"beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8, "weight_decay": 0.05}
    optimizer = torch.optim.AdamW([param], lr=1e-3, betas=(config["beta1"], config["beta2"]),
                                  eps=config["epsilon"], weight_decay=config["weight_decay"],
                                  foreach=False)
    records = []
    for step in range(1, steps + 1):
        grad = torch.rand(count, generator=generator) * 4 - 2
        learning_rate = 1e-3 * (1 - (step - 1) / steps)  # linear decay, as the trainer schedules
        grad_scale = 0.25 if step % 2 else 1.0              # clip_grad_norm_ scales in place
        for group in optimizer.param_groups:
            group["lr"] = learning_rate
        param.grad = grad * grad_scale
        optimizer.step()
        records.append({"grad": f32_list(grad.numpy()), "grad_scale": grad_scale,
                        "learning_rate": learning_rate, "param": f32_list(param.detach().numpy())})
    write("adamw_torch.json", {"config": config, "initial": f32_list(initial.numpy()),
                               "steps": records})


# The loss types of the first fixture version, then the rest of trl 0.9.6's (kto_pair it refuses).
# The draws continue one generator, so appending types leaves the earlier cases unchanged.
FIRST_LOSS_TYPES = ["sigmoid", "robust", "hinge", "ipo"]
LATER_LOSS_TYPES = ["exo_pair", "sppo_hard", "nca_pair", "bco_pair", "aot", "aot_pair"]
BCO_CALLS = 3  # bco_pair's running reward mean carries over from call to call


def dpo_logps(loss_type, generator):
    """Policy chosen, policy rejected, reference chosen, reference rejected log-probs of 6 pairs.

    The later types get log ratios (policy - reference) in [-4, 4], where beta times them stays
    in the curved part of their sigmoids; the first types keep their original draws."""
    if loss_type in FIRST_LOSS_TYPES:
        return (torch.rand(4, 6, generator=generator, dtype=torch.float64) * -80).tolist()
    policy = torch.rand(2, 6, generator=generator, dtype=torch.float64) * -80
    ratios = torch.rand(2, 6, generator=generator, dtype=torch.float64) * 8 - 4
    return torch.cat([policy, policy - ratios]).tolist()


def dpo_fixture():
    from trl import DPOTrainer
    from trl.trainer.utils import RunningMoments

    generator = torch.Generator().manual_seed(11)
    cases = []
    stream = 0
    for loss_type in FIRST_LOSS_TYPES + LATER_LOSS_TYPES:
        for beta, label_smoothing in [(0.1, 0.0), (0.5, 0.2), (2.0, 0.05)]:
            # A stand-in for the trainer with what dpo_loss reads of it.
            accelerator = types.SimpleNamespace(device="cpu", use_distributed=False)
            trainer = types.SimpleNamespace(
                accelerator=accelerator, reference_free=False,
                f_divergence_type="reverse_kl", f_divergence_params=None, loss_type=loss_type,
                beta=beta, label_smoothing=label_smoothing, running=RunningMoments(accelerator))
            stream += 1
            for _ in range(BCO_CALLS if loss_type == "bco_pair" else 1):
                logps = dpo_logps(loss_type, generator)
                policy_chosen = torch.tensor(logps[0], dtype=torch.float64, requires_grad=True)
                policy_rejected = torch.tensor(logps[1], dtype=torch.float64, requires_grad=True)
                losses, chosen_rewards, rejected_rewards = DPOTrainer.dpo_loss(
                    trainer, policy_chosen, policy_rejected,
                    torch.tensor(logps[2], dtype=torch.float64),
                    torch.tensor(logps[3], dtype=torch.float64))
                losses.sum().backward()  # 6 x the gradient of trl's loss, losses.mean()
                case = {
                    "loss_type": loss_type, "beta": beta, "label_smoothing": label_smoothing,
                    "policy_chosen": logps[0], "policy_rejected": logps[1],
                    "reference_chosen": logps[2], "reference_rejected": logps[3],
                    "loss": losses.tolist(), "dpolicy_chosen": policy_chosen.grad.tolist(),
                    "dpolicy_rejected": policy_rejected.grad.tolist(),
                    "reward_chosen": chosen_rewards.tolist(), "reward_rejected": rejected_rewards.tolist(),
                }
                if loss_type == "bco_pair":  # cases of one stream share one running mean, in order
                    case.update(stream=stream, running_mean=float(trainer.running.mean))
                cases.append(case)
    write("dpo_loss_trl.json", {"cases": cases})


MASK64 = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15


def mix64(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def counter_uniform(seed, stream, index):
    key = mix64(seed ^ mix64((stream + GAMMA) & MASK64))
    bits = mix64((key + (index + 1) * GAMMA) & MASK64)
    return (bits >> 40) / float(1 << 24)


def counter_uniform_fixture():
    draws = []
    for seed, stream in [(0, 0), (42, 3), (2**64 - 1, 7), (123456789, 2**40 + 5)]:
        for index in [0, 1, 2, 1000, 2**32 + 17, 2**64 - 2]:
            draws.append({"seed": str(seed), "stream": str(stream), "index": str(index),
                          "value": counter_uniform(seed, stream, index)})
    write("counter_uniform.json", {"draws": draws})


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    rope_fixture()
    adamw_fixture()
    dpo_fixture()
    counter_uniform_fixture()
