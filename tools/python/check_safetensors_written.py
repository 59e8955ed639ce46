#!/usr/bin/env python3
# Checks that files written by cst's safetensors writer load in Python's safetensors and in
# transformers, with tensors, tokenizer and outputs identical to the checkpoint they came from.
#
# Run from the repository root after building (needs torch, transformers 4.42, safetensors):
#   python3 tools/python/check_safetensors_written.py build/cst_convert
# It converts tests/fixtures/safetensors/tiny_hf to model.bin and back (sharded and single-file)
# in a temporary directory, and exits non-zero on any difference.
import os
import subprocess
import sys
import tempfile

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_HF = os.path.join(ROOT, "tests", "fixtures", "safetensors", "tiny_hf")


def check_model_bin(path, original):
    with safe_open(path, framework="pt") as model_bin:
        metadata = model_bin.metadata()
        assert metadata["format"] == "pt" and metadata["cst.format_version"] == "1", metadata
        with open(os.path.join(TINY_HF, "config.json")) as f:
            assert metadata["cst.config_json"] == f.read()
        for name, tensor in original.state_dict().items():
            assert torch.equal(model_bin.get_tensor(name), tensor), name
        stored = bytes(model_bin.get_tensor("cst.tokenizer.tokenizer.model").tolist())
        with open(os.path.join(TINY_HF, "tokenizer.model"), "rb") as f:
            assert stored == f.read()
    print(f"ok: {path} opens with safetensors; metadata, weights and tokenizer.model match")


def check_hf_directory(directory, original, original_tokenizer):
    model = AutoModelForCausalLM.from_pretrained(directory, torch_dtype=torch.bfloat16)
    for name, tensor in original.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    tokenizer = AutoTokenizer.from_pretrained(directory)
    text = "The safe answer<|im_end|> refuses"
    ids = tokenizer(text, return_tensors="pt").input_ids
    assert ids.tolist() == original_tokenizer(text, return_tensors="pt").input_ids.tolist()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, original(ids).logits)
    print(f"ok: {directory} loads in transformers; weights, tokenizer and logits match")


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: check_safetensors_written.py <path to cst_convert>")
    cst_convert = sys.argv[1]
    original = AutoModelForCausalLM.from_pretrained(TINY_HF, torch_dtype=torch.bfloat16)
    original_tokenizer = AutoTokenizer.from_pretrained(TINY_HF)
    with tempfile.TemporaryDirectory() as scratch:
        model_bin = os.path.join(scratch, "model.bin")
        subprocess.run([cst_convert, TINY_HF, model_bin], check=True)
        check_model_bin(model_bin, original)
        for shard_size in ["30KB", "5GB"]:
            exported = os.path.join(scratch, "hf_" + shard_size)
            subprocess.run([cst_convert, "--to-hf", model_bin, exported,
                            "--max_shard_size", shard_size], check=True)
            check_hf_directory(exported, original, original_tokenizer)


if __name__ == "__main__":
    main()
