#!/usr/bin/env python3
# Golden fixtures for model/config, model/safetensors and model/model_file.
#
# Rerun from the repository root (needs torch, transformers 4.42, safetensors, sentencepiece):
#   python3 tools/python/make_safetensors_fixtures.py
# It rewrites tests/fixtures/config/ and tests/fixtures/safetensors/. Everything the C++ tests
# compare against comes from transformers and Python's safetensors here, never from cst.
import io
import json
import os
import shutil
import tempfile

import sentencepiece
import torch
from safetensors.torch import save_file
from transformers import (AutoConfig, LlamaConfig, LlamaTokenizerFast, MistralConfig,
                          MistralForCausalLM)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_DIR = os.path.join(ROOT, "tests", "fixtures", "config")
SAFETENSORS_DIR = os.path.join(ROOT, "tests", "fixtures", "safetensors")


# --- config.json of real checkpoints, from the values their model cards publish -------------

def real_configs():
    mistral_7b = MistralConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
        rms_norm_eps=1e-5, rope_theta=10000.0, sliding_window=4096, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, torch_dtype="bfloat16",
        architectures=["MistralForCausalLM"])
    # teknium/OpenHermes-2.5-Mistral-7B: Mistral-7B plus two ChatML tokens, eos = <|im_end|>.
    openhermes = MistralConfig(
        vocab_size=32002, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
        rms_norm_eps=1e-5, rope_theta=10000.0, sliding_window=4096, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=32000, torch_dtype="bfloat16", use_cache=False,
        architectures=["MistralForCausalLM"])
    # upstage/SOLAR-10.7B-v1.0: Llama architecture, 48 layers (depth up-scaled Mistral widths).
    solar = LlamaConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=48,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096,
        rms_norm_eps=1e-5, rope_theta=10000.0, rope_scaling=None, pretraining_tp=1,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, torch_dtype="float16",
        architectures=["LlamaForCausalLM"])
    # Meta-Llama-3-8B-Instruct widths; eos as the list later Llama-3 configs write.
    llama3 = LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
        bos_token_id=128000, eos_token_id=[128001, 128009], torch_dtype="bfloat16",
        architectures=["LlamaForCausalLM"])
    return {"mistral_7b_v0.1": mistral_7b, "openhermes_2.5_mistral_7b": openhermes,
            "solar_10.7b": solar, "llama3_8b_instruct": llama3}


def expected_values(config):
    """What transformers itself derives from config.json, in cst's field names."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    eos = config.eos_token_id
    eos_list = eos if isinstance(eos, list) else ([] if eos is None else [eos])
    window = getattr(config, "sliding_window", None) if config.model_type == "mistral" else None
    return {
        "architecture": config.architectures[0],
        "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size, "num_layers": config.num_hidden_layers,
        "num_heads": config.num_attention_heads, "num_kv_heads": config.num_key_value_heads,
        "head_dim": head_dim, "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta, "sliding_window": window or 0,
        "max_position_embeddings": config.max_position_embeddings,
        "tie_word_embeddings": config.tie_word_embeddings,
        "bos_token_id": -1 if config.bos_token_id is None else config.bos_token_id,
        "eos_token_ids": eos_list, "torch_dtype": str(config.torch_dtype).replace("torch.", ""),
    }


def write_configs():
    os.makedirs(CONFIG_DIR, exist_ok=True)
    expected = {}
    for name, config in real_configs().items():
        path = os.path.join(CONFIG_DIR, name + ".json")
        config.to_json_file(path)
        # Read back the way from_pretrained does, so the expectations are transformers' view.
        expected[name] = expected_values(AutoConfig.from_pretrained(path))
    with open(os.path.join(CONFIG_DIR, "expected.json"), "w") as f:
        json.dump(expected, f, indent=2, sort_keys=True)
        f.write("\n")


# --- safetensors files written by Python's safetensors ---------------------------------------

def golden_tensors():
    generator = torch.Generator().manual_seed(1234)
    return {
        "scalar_f32": torch.tensor(3.5, dtype=torch.float32),
        "matrix_f32": torch.randn(2, 3, generator=generator),
        "vector_bf16": torch.randn(5, generator=generator).to(torch.bfloat16),
        "cube_f16": torch.randn(2, 2, 2, generator=generator).to(torch.float16),
        "empty_f32": torch.zeros(0, dtype=torch.float32),
        "empty_middle_bf16": torch.zeros(2, 0, 3, dtype=torch.bfloat16),
        "ints_i32": torch.tensor([-7, 0, 42, 2147483647], dtype=torch.int32),
        "bytes_u8": torch.tensor([0, 1, 127, 128, 254, 255], dtype=torch.uint8),
        "tiny_bf16": torch.tensor([1e-38, -0.0, 65504.0, -3.0e38], dtype=torch.bfloat16),
    }


DTYPE_NAMES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16",
               torch.int32: "I32", torch.uint8: "U8"}


def write_golden_files():
    tensors = golden_tensors()
    save_file(tensors, os.path.join(SAFETENSORS_DIR, "dtypes.safetensors"),
              metadata={"format": "pt", "note": "golden fixture"})
    # Only {"format": "pt"}: with one metadata key Python's bytes are deterministic, so the C++
    # writer can be checked byte for byte against them.
    save_file(tensors, os.path.join(SAFETENSORS_DIR, "python_written.safetensors"),
              metadata={"format": "pt"})
    save_file({"doubles": torch.arange(3, dtype=torch.float64)},
              os.path.join(SAFETENSORS_DIR, "f64.safetensors"), metadata={"format": "pt"})
    expected = {
        "metadata": {"format": "pt", "note": "golden fixture"},
        "tensors": {name: {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                           "values": t.flatten().to(torch.float64).tolist()}
                    for name, t in tensors.items()},
    }
    with open(os.path.join(SAFETENSORS_DIR, "dtypes_expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write("\n")


# --- a tiny Mistral checkpoint saved by transformers, sharded, with tokenizer files ----------

def train_tiny_tokenizer(model_path):
    """A 100-piece BPE sentencepiece model, trained from memory so no temporary path ends up
    in its trainer spec (the bytes then depend only on this script)."""
    sentences = []
    for i in range(200):
        sentences.append(f"The safe answer number {i} refuses; the other answer complies.")
        sentences.append("Configurable safety tuning flips the pair with the system prompt.")
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=100, model_type="bpe",
        character_coverage=1.0, num_threads=1, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        normalization_rule_name="identity")
    with open(model_path, "wb") as f:
        f.write(model.getvalue())
    return model_path


def write_tiny_hf():
    directory = os.path.join(SAFETENSORS_DIR, "tiny_hf")
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    with tempfile.TemporaryDirectory() as scratch:
        vocab_file = train_tiny_tokenizer(os.path.join(scratch, "tokenizer.model"))
        tokenizer = LlamaTokenizerFast(vocab_file=vocab_file, legacy=False)
        tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_end|>", "<|im_start|>"]})
        tokenizer.save_pretrained(directory)
    config = MistralConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        rms_norm_eps=1e-5, rope_theta=10000.0, sliding_window=16, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = MistralForCausalLM(config).to(torch.bfloat16)
    # Small shards so the fixture exercises model.safetensors.index.json as save_pretrained writes it.
    model.save_pretrained(directory, max_shard_size="40KB", safe_serialization=True)
    shards = [n for n in os.listdir(directory) if n.startswith("model-")]
    assert len(shards) == 2, shards
    # Every tensor's float64 sum and sum of squares (all values enter the check) and its first
    # values exactly; storing all values would make the fixture larger than the model.
    expected = {}
    for name, tensor in model.state_dict().items():
        values = tensor.to(torch.float64).flatten()
        expected[name] = {"dtype": DTYPE_NAMES[tensor.dtype], "shape": list(tensor.shape),
                          "sum": values.sum().item(), "sum_of_squares": (values ** 2).sum().item(),
                          "first_values": values[:8].tolist()}
    with open(os.path.join(SAFETENSORS_DIR, "tiny_hf_expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write("\n")


def main():
    os.makedirs(SAFETENSORS_DIR, exist_ok=True)
    write_configs()
    write_golden_files()
    write_tiny_hf()


if __name__ == "__main__":
    main()
