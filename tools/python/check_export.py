#!/usr/bin/env python3
"""Checks cst's exports in the real libraries: the PEFT adapter loads with PeftModel.from_pretrained
and the merged directory with AutoModelForCausalLM, and both reproduce the fixture's HF logits.

    build/cst_tests --gtest_filter='Export.*'      # writes the exports to $TMPDIR/cst_test_export_*
    python3 tools/python/check_export.py [TMPDIR]
"""
import os
import sys
import tempfile

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "model", "mistral_gqa_window")


def logits_of(model, golden):
    ids, cu = golden["input_ids"].long(), golden["cu_seqlens"].tolist()
    with torch.no_grad():
        return torch.cat([model(input_ids=ids[a:b][None]).logits[0] for a, b in zip(cu[:-1], cu[1:])])


def main():
    scratch = sys.argv[1] if len(sys.argv) > 1 else tempfile.gettempdir()
    golden = load_file(os.path.join(FIXTURE, "golden.safetensors"))
    base = AutoModelForCausalLM.from_pretrained(os.path.join(FIXTURE, "hf"), attn_implementation="eager")
    adapted = PeftModel.from_pretrained(base, os.path.join(scratch, "cst_test_export_adapter"))
    diff = (logits_of(adapted, golden) - golden["logits"]).abs().max().item()
    print(f"PEFT loads cst's adapter: max |logits diff| {diff:.2e}")
    merged = AutoModelForCausalLM.from_pretrained(os.path.join(scratch, "cst_test_export_merged"),
                                                  attn_implementation="eager")
    merged_diff = (logits_of(merged, golden) - golden["logits"]).abs().max().item()
    print(f"transformers loads cst's merged model: max |logits diff| {merged_diff:.2e}")
    sys.exit(0 if max(diff, merged_diff) < 1e-4 else 1)


if __name__ == "__main__":
    main()
