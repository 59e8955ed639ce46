#!/usr/bin/env python3
"""Golden greedy generations: transformers' generate() on the tiny model fixtures, with and without
their PEFT adapters (KV cache, sliding window and GQA as transformers runs them).

Rerun from the repository root after tools/python/make_model_fixtures.py:
    python3 tools/python/make_generate_fixtures.py
Writes tests/fixtures/generate/<case>.json: prompts and the new token ids of each generation.
"""
import json
import os

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
MODELS = os.path.join(ROOT, "tests", "fixtures", "model")
OUT = os.path.join(ROOT, "tests", "fixtures", "generate")
NEW_TOKENS = 24


def generate(model, prompt):
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False,
                             pad_token_id=0)  # stops at the config's eos_token_id
    return out[0, len(prompt):].tolist()


def main():
    os.makedirs(OUT, exist_ok=True)
    generator = torch.Generator().manual_seed(5)
    for case in ("mistral_gqa_window", "llama_tied"):
        base = AutoModelForCausalLM.from_pretrained(os.path.join(MODELS, case, "hf"),
                                                    attn_implementation="eager").eval()
        prompts = [torch.randint(3, base.config.vocab_size, (n,), generator=generator).tolist() for n in (1, 7)]
        record = {"max_new_tokens": NEW_TOKENS, "prompts": prompts,
                  "base": [generate(base, p) for p in prompts]}
        adapted = PeftModel.from_pretrained(base, os.path.join(MODELS, case, "adapter")).eval()
        record["adapter"] = [generate(adapted, p) for p in prompts]
        with open(os.path.join(OUT, case + ".json"), "w") as f:
            json.dump(record, f)
        print(case, record)


if __name__ == "__main__":
    main()
