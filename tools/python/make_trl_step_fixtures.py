#!/usr/bin/env python3
"""Golden data for one DPO step through trl 0.9.6's real DPOTrainer (the seed's era).

Rerun from the repository root (needs tools/python/requirements.txt and the model fixtures of
tools/python/make_model_fixtures.py):
    python3 tools/python/make_trl_step_fixtures.py
Uses tests/fixtures/model/mistral_gqa_window (tiny HF model + PEFT adapter with non-zero A and B).
The batch (3 pairs of random token ids, prompt tokens masked) goes straight into
DPOTrainer.get_batch_loss_metrics, so trl's own padding, log-prob gathering, reference pass
(adapter disabled) and loss run; loss.backward() gives the LoRA gradients.
Writes tests/fixtures/trl_step/<loss_type>.safetensors:
    input_ids i32 (N,), cu_seqlens i32 (2P+1,) with sequence 2i = pair i chosen, 2i+1 rejected,
    completion_mask i32 (N,) (1 on answer tokens), grad.<peft name> f32,
and <loss_type>.json with trl's loss and metrics.
"""
import json
import os

import torch
from datasets import Dataset
from peft import PeftModel
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
MODEL = os.path.join(ROOT, "tests", "fixtures", "model", "mistral_gqa_window")
# Only needed so DPOTrainer can tokenize its (unused) dataset at construction.
TOKENIZER = os.path.join(ROOT, "tests", "fixtures", "tokenizer", "chatml")
OUT = os.path.join(ROOT, "tests", "fixtures", "trl_step")
PAD = 0  # padding_value for input ids (masked out by the attention mask and labels)
# Every loss type of trl 0.9.6's DPOTrainer (it refuses kto_pair). The pairs of each come from one
# generator in this order, so appending types leaves the earlier fixtures unchanged. exo_pair runs
# with label_smoothing 0, which trl turns into 1e-3; bco_pair's running reward mean starts afresh,
# so after this one step it is the step's own mean reward.
LOSSES = {"sigmoid": dict(beta=0.1), "ipo": dict(beta=0.1), "hinge": dict(beta=0.1),
          "robust": dict(beta=0.1, label_smoothing=0.1), "exo_pair": dict(beta=0.1),
          "sppo_hard": dict(beta=0.1), "nca_pair": dict(beta=0.1), "bco_pair": dict(beta=0.1),
          "aot": dict(beta=0.1, label_smoothing=0.1), "aot_pair": dict(beta=0.1)}


def make_pairs(vocab, generator):
    """(prompt, chosen answer, rejected answer) token lists of varied lengths."""
    pairs = []
    for prompt_length, chosen_length, rejected_length in [(4, 6, 3), (7, 2, 5), (3, 5, 9)]:
        draw = lambda n: torch.randint(1, vocab, (n,), generator=generator).tolist()
        pairs.append((draw(prompt_length), draw(chosen_length), draw(rejected_length)))
    return pairs


def padded(rows, value):
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows])


def trl_batch(pairs):
    batch = {}
    for side, index in (("chosen", 1), ("rejected", 2)):
        ids = [p[0] + p[index] for p in pairs]
        labels = [[-100] * len(p[0]) + p[index] for p in pairs]
        batch[f"{side}_input_ids"] = padded(ids, PAD)
        batch[f"{side}_attention_mask"] = padded([[1] * len(r) for r in ids], 0)
        batch[f"{side}_labels"] = padded(labels, -100)
    return batch


def main():
    os.makedirs(OUT, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    generator = torch.Generator().manual_seed(99)
    for loss_type, loss_args in LOSSES.items():
        base = AutoModelForCausalLM.from_pretrained(os.path.join(MODEL, "hf"), attn_implementation="eager").float()
        model = PeftModel.from_pretrained(base, os.path.join(MODEL, "adapter"), is_trainable=True)
        dataset = Dataset.from_dict({"prompt": ["a"], "chosen": ["b"], "rejected": ["c"]})
        args = DPOConfig(output_dir="/tmp/cst_trl_step", loss_type=loss_type, report_to=[],
                         per_device_train_batch_size=3, remove_unused_columns=False, **loss_args)
        trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=dataset, tokenizer=tokenizer,
                             padding_value=PAD)  # trl 0.9.6 reads the argument, not DPOConfig's
        pairs = make_pairs(base.config.vocab_size, generator)
        model.zero_grad()
        loss, metrics = trainer.get_batch_loss_metrics(trainer.model, trl_batch(pairs))
        loss.backward()

        ids, mask, cu_seqlens = [], [], [0]
        for prompt, chosen, rejected in pairs:
            for answer in (chosen, rejected):
                ids += prompt + answer
                mask += [0] * len(prompt) + [1] * len(answer)
                cu_seqlens.append(len(ids))
        tensors = {"input_ids": torch.tensor(ids, dtype=torch.int32),
                   "cu_seqlens": torch.tensor(cu_seqlens, dtype=torch.int32),
                   "completion_mask": torch.tensor(mask, dtype=torch.int32)}
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                tensors["grad." + name.replace(".default", "")] = parameter.grad.detach().contiguous()
        save_file(tensors, os.path.join(OUT, f"{loss_type}.safetensors"), metadata={"format": "pt"})
        record = {"loss_type": loss_type, **loss_args, "loss": float(loss),
                  **{k: float(v) for k, v in metrics.items()}}
        with open(os.path.join(OUT, f"{loss_type}.json"), "w") as f:
            json.dump(record, f, indent=2)
        print(loss_type, record)


if __name__ == "__main__":
    main()
