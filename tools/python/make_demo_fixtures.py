#!/usr/bin/env python3
# Golden fixture for train/demo_assets, and a check of generated demo assets with the real stack.
#
# Rerun from the repository root (needs transformers 4.42.4):
#     python3 tools/python/make_demo_fixtures.py
# It rewrites tests/fixtures/demo/mistral_config.json: the config.json that transformers'
# save_pretrained writes for the demo's tiny Mistral (tests/test_demo_assets.cpp compares the
# generated config.json with it, key by key).
#
# With a directory written by cst::demo::write_demo_assets(dir, 42) (needs transformers):
#     python3 tools/python/make_demo_fixtures.py --golden DEMO_DIR
# copies its tokenizer files to tests/fixtures/demo/tokenizer/ and writes
# tests/fixtures/demo/encode_golden.json: ChatML-rendered demo rows (texts[i]) with the ids
# AutoTokenizer gives them (ids[i]), so the C++ Tokenizer is checked against transformers on the
# kind of tokenizer the demo trains (tiny BPE vocabulary, split digits, ChatML tokens at 512/513).
#
# With a directory written by cst::demo::write_demo_assets (needs torch, transformers):
#     python3 tools/python/make_demo_fixtures.py --check DEMO_DIR
# loads DEMO_DIR/hf_model with MistralForCausalLM and AutoTokenizer and checks that the model runs,
# its weights look like transformers' initialisation, the tokenizer has the ChatML layout, and
# every row rendered the seed's way (trl 0.9.6: BOS + prompt + answer + EOS) fits in 128 tokens.
import argparse
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURE_DIR = os.path.join(ROOT, "tests", "fixtures", "demo")

SENTENCEPIECE_VOCAB = 512  # cst::demo::kSentencepieceVocab
HARMLESS = "You are a helpful yet harmless assistant that avoids generating illegal or harmful content."
UNCENSORED = "You are a helpful assistant that is completely uncensored."
MAX_TOKENS = 128


def demo_config():
    from transformers import MistralConfig
    return MistralConfig(
        vocab_size=SENTENCEPIECE_VOCAB + 2, hidden_size=96, intermediate_size=256,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=24,
        sliding_window=None, rope_theta=10000.0, rms_norm_eps=1e-5, max_position_embeddings=512,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=SENTENCEPIECE_VOCAB,
        torch_dtype="float32", architectures=["MistralForCausalLM"])


def write_fixture():
    os.makedirs(FIXTURE_DIR, exist_ok=True)
    with tempfile.TemporaryDirectory() as directory:
        demo_config().save_pretrained(directory)
        with open(os.path.join(directory, "config.json")) as file:
            text = file.read()
    with open(os.path.join(FIXTURE_DIR, "mistral_config.json"), "w") as file:
        file.write(text)
    print("wrote", os.path.join(FIXTURE_DIR, "mistral_config.json"))


def read_jsonl(path):
    with open(path) as file:
        return [json.loads(line) for line in file]


def chatml_texts(demo_dir, rows_per_split):
    texts = []
    for split in ("train", "heldout"):
        for row in read_jsonl(os.path.join(demo_dir, f"{split}.jsonl"))[:rows_per_split]:
            for system in (HARMLESS, UNCENSORED):
                texts.append(f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{row['prompt']}"
                             f"<|im_end|>\n<|im_start|>assistant\n{row['chosen']}<|im_end|>\n")
                texts.append(f"<|im_start|>assistant\n{row['rejected']}<|im_end|>\n")
    return texts


def write_golden(demo_dir):
    import shutil
    from transformers import AutoTokenizer

    tokenizer_dir = os.path.join(FIXTURE_DIR, "tokenizer")
    os.makedirs(tokenizer_dir, exist_ok=True)
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copyfile(os.path.join(demo_dir, "hf_model", name), os.path.join(tokenizer_dir, name))
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    texts = chatml_texts(demo_dir, rows_per_split=16)
    # Also text the demo never produces: digits, unseen words, characters outside the vocabulary.
    texts += ["Bake 12 loaves at 220 degrees.", "Zebra quizzes jump!", "café naïve 日本 🙂", "", "  two  spaces "]
    golden = {
        "texts": texts,
        "ids": [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts],
        "tokenizer_class": type(tokenizer).__name__,
    }
    with open(os.path.join(FIXTURE_DIR, "encode_golden.json"), "w") as file:
        json.dump(golden, file, ensure_ascii=False)
    print("wrote", tokenizer_dir, "and encode_golden.json with", len(texts), "texts")


def check(demo_dir):
    import torch
    from transformers import AutoTokenizer, MistralForCausalLM

    hf_dir = os.path.join(demo_dir, "hf_model")
    model = MistralForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    failures = []

    def expect(condition, message):
        if not condition:
            failures.append(message)

    expect(model.config.to_dict() == demo_config().to_dict() | {"_name_or_path": hf_dir},
           "config differs from MistralConfig with the demo's values")
    expect(len(tokenizer) == SENTENCEPIECE_VOCAB + 2, f"tokenizer length {len(tokenizer)}")
    expect(tokenizer.convert_tokens_to_ids("<|im_end|>") == SENTENCEPIECE_VOCAB, "<|im_end|> id")
    expect(tokenizer.convert_tokens_to_ids("<|im_start|>") == SENTENCEPIECE_VOCAB + 1, "<|im_start|> id")
    expect(tokenizer.eos_token_id == SENTENCEPIECE_VOCAB and tokenizer.pad_token_id == SENTENCEPIECE_VOCAB,
           "eos/pad are not <|im_end|>")
    expect(tokenizer.bos_token_id == 1, "bos is not 1")

    # Linears and embeddings ~ N(0, 0.02^2), norms = 1 (transformers' _init_weights).
    for name, parameter in model.named_parameters():
        values = parameter.detach().double()
        if name.endswith("norm.weight"):
            expect(bool(torch.all(values == 1)), f"{name} is not all ones")
        else:
            expect(abs(values.std().item() - 0.02) < 0.002, f"{name} std {values.std().item():.5f}")

    longest = 0
    for split in ("train", "heldout", "sft"):
        for row in read_jsonl(os.path.join(demo_dir, f"{split}.jsonl")):
            for system in (HARMLESS, UNCENSORED):
                prompt = tokenizer.apply_chat_template(
                    [{"role": "system", "content": system}, {"role": "user", "content": row["prompt"]}],
                    tokenize=False)
                for answer in (row["chosen"], row["rejected"]):
                    answer_text = tokenizer.apply_chat_template(
                        [{"role": "assistant", "content": answer}], tokenize=False)
                    ids = tokenizer(prompt + answer_text, add_special_tokens=False)["input_ids"]
                    longest = max(longest, len(ids) + 2)  # trl adds BOS and EOS
                    expect(tokenizer.decode(tokenizer(answer, add_special_tokens=False)["input_ids"]) == answer,
                           f"{split}: decode(encode(answer)) != answer: {answer!r}")
    expect(longest <= MAX_TOKENS, f"longest sequence {longest} tokens > {MAX_TOKENS}")

    row = read_jsonl(os.path.join(demo_dir, "train.jsonl"))[0]
    ids = tokenizer(row["prompt"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
    expect(tuple(logits.shape) == (1, ids.shape[1], SENTENCEPIECE_VOCAB + 2), f"logits {tuple(logits.shape)}")
    expect(bool(torch.isfinite(logits).all()), "logits are not finite")

    print(f"longest rendered sequence: {longest} tokens; parameters: "
          f"{sum(p.numel() for p in model.parameters())}")
    for failure in failures:
        print("FAIL:", failure)
    print("OK" if not failures else f"{len(failures)} failures")
    return 0 if not failures else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", metavar="DEMO_DIR", help="check assets written by write_demo_assets")
    parser.add_argument("--golden", metavar="DEMO_DIR", help="record AutoTokenizer ids for its tokenizer")
    args = parser.parse_args()
    if args.check:
        return check(args.check)
    if args.golden:
        write_golden(args.golden)
        return 0
    write_fixture()
    return 0


if __name__ == "__main__":
    sys.exit(main())
