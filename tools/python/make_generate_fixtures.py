#!/usr/bin/env python3
"""Golden greedy generations: transformers' generate() on the tiny model fixtures, with and without
their PEFT adapters (KV cache, sliding window and GQA as transformers runs them).

Rerun from the repository root after tools/python/make_model_fixtures.py:
    python3 tools/python/make_generate_fixtures.py
Writes tests/fixtures/generate/<case>.json: prompts and the new token ids of each generation.

The Llama 3.1-style model (tests/fixtures/model/llama3_rope_scaled: RoPE type llama3, EOS ids
[2, 3, 4]) needs a transformers that knows RoPE type llama3 (4.43 or later; made with 4.57.6 and
peft 0.11.1), as its model fixture does, so it is made apart, with that transformers installed:
    python3 tools/python/make_generate_fixtures.py --llama3
which writes tests/fixtures/generate/llama3_rope_scaled.json. A random tiny model seldom emits an
EOS id, so its prompts are chosen: seeded random prompts are tried in order, and each case of
llama3_cases() takes the first prompt whose generations do what it asks (one stop at each EOS id of
the list, one run to max_new_tokens). The file adds the EOS list, each case's description, and
"stopped_by": the EOS id that ended each generation, or null where it ran to max_new_tokens.
(Without the adapter this model repeats the prompt's last token, so those generations stop only
where a prompt ends with an EOS id.)

The fixture adapters are random, so the top two logits of their generations lie close together
(0.2 to 0.4 apart): too close for a bf16 forward to be sure of the argmax. The default run also
makes mistral_gqa_window_memorized: an adapter of mistral_gqa_window trained (Adam, next-token
loss) until greedy decoding continues each of three seeded random prompts with its own seeded
random 24 tokens, with top-two margins of 0.57 to 1.23 (written beside the generations, in
tests/fixtures/generate/mistral_gqa_window_memorized_adapter/).

Every file names the model and adapter directories its generations come from ("model_directory",
"adapter_directory", relative to the repository root).
"""
import json
import os
import sys

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
MODELS = os.path.join(ROOT, "tests", "fixtures", "model")
OUT = os.path.join(ROOT, "tests", "fixtures", "generate")
NEW_TOKENS = 24
LLAMA3_MODEL = "llama3_rope_scaled"
CANDIDATE_PROMPTS = 5000  # the search gives up after this many prompts (the committed cases: 697)
# A stop counts only after this many new tokens, so that it comes from a decode step with the KV
# cache, not from the prompt's prefill.
MIN_TOKENS_BEFORE_STOP = 3


def generate(model, prompt):
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False,
                             pad_token_id=0)  # stops at every EOS id of the generation config
    return out[0, len(prompt):].tolist()


def load(case):
    return AutoModelForCausalLM.from_pretrained(os.path.join(MODELS, case, "hf"),
                                                attn_implementation="eager").eval()


def relative_to_root(path):
    return os.path.relpath(path, ROOT)


def write(case, record, model_case, adapter_directory):
    """Writes a case's generations, with the directories of its model and adapter."""
    record = {"model_directory": relative_to_root(os.path.join(MODELS, model_case, "hf")),
              "adapter_directory": relative_to_root(adapter_directory), **record}
    with open(os.path.join(OUT, case + ".json"), "w") as f:
        json.dump(record, f)
    print(case, record)


def fixture_adapter(case):
    return os.path.join(MODELS, case, "adapter")


def make_random_prompt_cases():
    generator = torch.Generator().manual_seed(5)
    for case in ("mistral_gqa_window", "llama_tied"):
        base = load(case)
        prompts = [torch.randint(3, base.config.vocab_size, (n,), generator=generator).tolist() for n in (1, 7)]
        record = {"max_new_tokens": NEW_TOKENS, "prompts": prompts,
                  "base": [generate(base, p) for p in prompts]}
        adapted = PeftModel.from_pretrained(base, fixture_adapter(case)).eval()
        record["adapter"] = [generate(adapted, p) for p in prompts]
        write(case, record, case, fixture_adapter(case))


def stop_of(new_tokens, eos_ids):
    """The EOS id that ended a generation, or None where it ran to max_new_tokens."""
    return new_tokens[-1] if new_tokens and new_tokens[-1] in eos_ids else None


def llama3_cases(eos_ids):
    """(description, test of prompt, base generation, adapter generation) for each chosen prompt."""
    def adapter_stops_at(eos):
        return lambda prompt, base, adapter: stop_of(adapter, eos_ids) == eos and len(adapter) >= MIN_TOKENS_BEFORE_STOP
    cases = [(f"with the adapter, stops at EOS id {eos} (entry {i} of the list)", adapter_stops_at(eos))
             for i, eos in enumerate(eos_ids)]
    # As a Llama 3 conversation holds <|eot_id|> after each earlier turn: EOS ids in a prompt do not stop.
    cases.append(("runs to max_new_tokens with and without the adapter; the prompt holds a later EOS id",
                  lambda prompt, base, adapter: stop_of(base, eos_ids) is None and stop_of(adapter, eos_ids) is None
                  and any(token in eos_ids[1:] for token in prompt[:-1])))
    return cases


def choose_llama3_prompts(adapted, eos_ids):
    """The first seeded random prompt (1 to 12 ids, neither pad 0 nor BOS 1) that passes each case."""
    cases = llama3_cases(eos_ids)
    chosen = [None] * len(cases)
    generator = torch.Generator().manual_seed(31)
    for tried in range(1, CANDIDATE_PROMPTS + 1):
        length = int(torch.randint(1, 13, (1,), generator=generator))
        prompt = torch.randint(2, adapted.config.vocab_size, (length,), generator=generator).tolist()
        with adapted.disable_adapter():
            base = generate(adapted, prompt)
        adapter = generate(adapted, prompt)
        for i, (_, passes) in enumerate(cases):
            if chosen[i] is None and passes(prompt, base, adapter):
                chosen[i] = (prompt, base, adapter)
                break
        if all(chosen):
            print(f"{LLAMA3_MODEL}: cases found among the first {tried} prompts")
            return [description for description, _ in cases], chosen
    missing = [description for (description, _), found in zip(cases, chosen) if found is None]
    sys.exit(f"{LLAMA3_MODEL}: no prompt among {CANDIDATE_PROMPTS} for: {missing}")


def make_llama3_case():
    base = load(LLAMA3_MODEL)
    eos_ids = base.generation_config.eos_token_id
    assert isinstance(eos_ids, list) and len(eos_ids) >= 3, eos_ids
    adapted = PeftModel.from_pretrained(base, fixture_adapter(LLAMA3_MODEL)).eval()
    descriptions, chosen = choose_llama3_prompts(adapted, eos_ids)
    record = {"max_new_tokens": NEW_TOKENS, "eos_token_id": eos_ids, "cases": descriptions,
              "prompts": [prompt for prompt, _, _ in chosen],
              "base": [without for _, without, _ in chosen],
              "adapter": [with_adapter for _, _, with_adapter in chosen]}
    record["stopped_by"] = {kind: [stop_of(tokens, eos_ids) for tokens in record[kind]] for kind in ("base", "adapter")}
    write(LLAMA3_MODEL, record, LLAMA3_MODEL, fixture_adapter(LLAMA3_MODEL))


MEMORIZED_MODEL = "mistral_gqa_window"
MEMORIZED_CASE = MEMORIZED_MODEL + "_memorized"
MEMORIZING_STEPS = 300


def train_memorizing_adapter(base, prompts, continuations):
    """A LoRA adapter (r 4, alpha 8, every projection) of `base`, trained on the next-token loss of
    each continuation after its prompt."""
    torch.manual_seed(17)  # LoRA's initial A
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM",
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(base, config)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(MEMORIZING_STEPS):
        loss = sum(model(input_ids=torch.tensor([prompt + continuation]),
                         labels=torch.tensor([[-100] * len(prompt) + continuation])).loss
                   for prompt, continuation in zip(prompts, continuations))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def make_memorized_case():
    base = load(MEMORIZED_MODEL)
    generator = torch.Generator().manual_seed(11)
    vocab = base.config.vocab_size
    prompts = [torch.randint(3, vocab, (n,), generator=generator).tolist() for n in (1, 4, 9)]
    continuations = [torch.randint(3, vocab, (NEW_TOKENS,), generator=generator).tolist() for _ in prompts]
    record = {"max_new_tokens": NEW_TOKENS, "prompts": prompts, "base": [generate(base, p) for p in prompts]}
    adapted = train_memorizing_adapter(base, prompts, continuations)
    record["adapter"] = [generate(adapted, p) for p in prompts]
    if record["adapter"] != continuations:
        sys.exit(f"{MEMORIZED_CASE}: the trained adapter does not reproduce its continuations")
    adapter_directory = os.path.join(OUT, MEMORIZED_CASE + "_adapter")
    adapted.peft_config["default"].base_model_name_or_path = ""  # not this machine's path
    adapted.save_pretrained(adapter_directory)
    os.remove(os.path.join(adapter_directory, "README.md"))  # PEFT's model card template
    write(MEMORIZED_CASE, record, MEMORIZED_MODEL, adapter_directory)


def main():
    os.makedirs(OUT, exist_ok=True)
    if sys.argv[1:] == ["--llama3"]:
        make_llama3_case()
    else:
        make_random_prompt_cases()
        make_memorized_case()


if __name__ == "__main__":
    main()
