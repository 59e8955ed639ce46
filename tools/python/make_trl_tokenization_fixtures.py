#!/usr/bin/env python3
"""Golden fixtures for cst's pair tokenization (data/pair_tokenizer.cpp), made by trl 0.9.6 itself.

Rerun from the repository root (needs the versions in tools/python/requirements.txt):

    python tools/python/make_trl_tokenization_fixtures.py

It reads the ChatML tokenizer directory tests/fixtures/tokenizer/chatml/ (made by
make_tokenizer_fixtures.py) and the dataset ../shared/data/configurable-system-prompt-multitask.json
(override both with --tokenizer / --dataset), and writes tests/fixtures/trl_tokenization/:

  dataset_rows.json  every dataset row tokenized with the seed's recipe (ChatML rendering,
                     max_length 512, max_prompt_length 128, keep_end): per row a hash and lengths,
                     plus the full ids and labels of a few chosen rows (truncated ones, ones near
                     the length limits, short ones).
  synthetic.json     small hand-made rows stored in full: short limits (64/32, 48/16), keep_start and
                     keep_end, BOS/EOS already present, empty prompt or answer, and raw texts whose
                     last prompt token merges with the answer (trl's build_tokenized_answer rule).
  llama3.json        the Llama 3 style byte-level tokenizer (tests/fixtures/tokenizer/byte_level/llama3,
                     made by make_byte_level_tokenizer_fixtures.py) with the llama3 chat template
                     (tests/fixtures/tokenizer/chat_templates/llama3.jinja): ten dataset rows, hand-made
                     and multi-turn rows, each at the seed's limits (512/128, keep_end) and at 64/24 with
                     keep_end and keep_start; the short keep_end limits once more with the base model's
                     eos_token <|end_of_text|>, which trl appends after the template's <|eot_id|>.
                     Rendered as cst renders llama3 (the template puts BOS before the first turn
                     only): prompt = apply_chat_template([system] + turns), answer = the text the
                     assistant turn adds to it. --llama3_only writes this file alone.

The tokenization is trl's own DPOTrainer.tokenize_row, called on a trainer object that carries only
the attributes tokenize_row reads (building a full DPOTrainer needs a model and changes nothing in
tokenize_row). The prompt and answers are rendered the way the seed did:
prompt = apply_chat_template([system, user]), answer = apply_chat_template([assistant: text]).

Hash (also documented in tests/test_pair_tokenizer.cpp): 64-bit FNV-1a (offset basis
0xcbf29ce484222325, prime 0x100000001b3) over the bytes of four integer sequences in this order:
chosen_input_ids, chosen_labels, rejected_input_ids, rejected_labels. Each sequence contributes its
length as 8 bytes little-endian, then every value as a 4-byte little-endian two's-complement int32
(labels are -100 on prompt tokens, as trl writes them).

--benchmark additionally times the Python path the seed ran (datasets json load, chat template map,
DPOTrainer.tokenize_row map, then one epoch through a DataLoader with trl's padding collator) and
prints the seconds; it writes nothing.
"""
import argparse
import json
import os
import struct
import sys
import time

import transformers
import trl
from transformers import AutoTokenizer
from trl import DPOTrainer

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_TOKENIZER = os.path.join(REPO, "tests", "fixtures", "tokenizer", "chatml")
DEFAULT_DATASET = os.path.join(REPO, "..", "shared", "data", "configurable-system-prompt-multitask.json")
OUTPUT_DIR = os.path.join(REPO, "tests", "fixtures", "trl_tokenization")

LABEL_PAD = -100
FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
MASK64 = (1 << 64) - 1


def fnv1a64(sequences):
    value = FNV_OFFSET
    for sequence in sequences:
        data = struct.pack("<q", len(sequence)) + struct.pack(f"<{len(sequence)}i", *sequence)
        for byte in data:
            value = ((value ^ byte) * FNV_PRIME) & MASK64
    return value


def make_trl_tokenizer_object(tokenizer, max_length, max_prompt_length, truncation_mode):
    """A DPOTrainer carrying only what tokenize_row reads (see dpo_trainer.py __init__)."""
    trainer = DPOTrainer.__new__(DPOTrainer)
    trainer.tokenizer = tokenizer
    trainer.is_encoder_decoder = False
    trainer.is_vision_model = False
    trainer.max_length = max_length
    trainer.max_prompt_length = max_prompt_length
    trainer.truncation_mode = truncation_mode
    trainer.label_pad_token_id = LABEL_PAD
    return trainer


def render(tokenizer, system, user, chosen, rejected):
    """The seed's layout: prompt from [system, user], each answer as its own assistant turn."""
    prompt = tokenizer.apply_chat_template(
        [{"role": "system", "content": system}, {"role": "user", "content": user}],
        tokenize=False, add_generation_prompt=False)
    def answer(text):
        return tokenizer.apply_chat_template([{"role": "assistant", "content": text}], tokenize=False)
    return {"prompt": prompt, "chosen": answer(chosen), "rejected": answer(rejected)}


def sequences_of(tokenized):
    return [tokenized["chosen_input_ids"], tokenized["chosen_labels"],
            tokenized["rejected_input_ids"], tokenized["rejected_labels"]]


def full_record(tokenized):
    return {
        "prompt_input_ids": tokenized["prompt_input_ids"],
        "chosen_input_ids": tokenized["chosen_input_ids"],
        "chosen_labels": tokenized["chosen_labels"],
        "rejected_input_ids": tokenized["rejected_input_ids"],
        "rejected_labels": tokenized["rejected_labels"],
    }


def is_truncated(untruncated_trainer, feature, tokenized):
    """trl has no flag for it: a row is truncated when the unlimited tokenization is longer."""
    unlimited = untruncated_trainer.tokenize_row(feature)
    return (len(unlimited["chosen_input_ids"]) != len(tokenized["chosen_input_ids"])
            or len(unlimited["rejected_input_ids"]) != len(tokenized["rejected_input_ids"]))


def pick_full_rows(summaries, max_prompt_length):
    """About 30 rows worth storing in full: every kind of truncation and the length edges."""
    def total(row):
        return max(row["chosen_length"], row["rejected_length"])
    picked = []
    def take(candidates, count):
        for row in candidates:
            if count == 0:
                break
            if row["row"] not in picked:
                picked.append(row["row"])
                count -= 1
    untruncated = [r for r in summaries if not r["truncated"]]
    truncated = [r for r in summaries if r["truncated"]]
    # Longest sequences that still fit, and the shortest ones that did not.
    take(sorted(untruncated, key=total, reverse=True), 6)
    take(sorted(truncated, key=total), 4)
    # Truncated rows whose prompt was cut to max_prompt_length, and whose prompt was kept whole.
    take([r for r in truncated if r["prompt_length"] == max_prompt_length], 4)
    take([r for r in truncated if r["prompt_length"] < max_prompt_length], 4)
    # Prompts just around max_prompt_length without truncation.
    take(sorted(untruncated, key=lambda r: abs(r["prompt_length"] - max_prompt_length)), 4)
    # The shortest rows, and a spread over the file.
    take(sorted(summaries, key=total), 3)
    take(summaries[:: max(1, len(summaries) // 6)], 6)
    return sorted(picked)


def make_dataset_fixture(tokenizer, dataset_path, max_length=512, max_prompt_length=128):
    with open(dataset_path) as file:
        rows = json.load(file)
    trainer = make_trl_tokenizer_object(tokenizer, max_length, max_prompt_length, "keep_end")
    unlimited = make_trl_tokenizer_object(tokenizer, 10**9, 10**9 - 1, "keep_end")
    summaries, full = [], {}
    for index, row in enumerate(rows):
        feature = render(tokenizer, row["system"], row["prompt"], row["chosen"], row["rejected"])
        tokenized = trainer.tokenize_row(feature)
        summaries.append({
            "row": index,
            "hash": f"{fnv1a64(sequences_of(tokenized)):016x}",
            "prompt_length": len(tokenized["prompt_input_ids"]),
            "chosen_length": len(tokenized["chosen_input_ids"]),
            "rejected_length": len(tokenized["rejected_input_ids"]),
            "truncated": is_truncated(unlimited, feature, tokenized),
        })
        full[index] = tokenized
    picked = pick_full_rows(summaries, max_prompt_length)
    return {
        "generated_by": "tools/python/make_trl_tokenization_fixtures.py",
        "trl_version": trl.__version__,
        "transformers_version": transformers.__version__,
        "dataset": os.path.basename(dataset_path),
        "max_length": max_length,
        "max_prompt_length": max_prompt_length,
        "truncation_mode": "keep_end",
        "hash": "fnv1a64 over chosen_input_ids, chosen_labels, rejected_input_ids, rejected_labels",
        "truncated_rows": sum(r["truncated"] for r in summaries),
        # One line per row: [row, hash, prompt_length, chosen_length, rejected_length, truncated].
        "rows": [[r["row"], r["hash"], r["prompt_length"], r["chosen_length"], r["rejected_length"],
                  r["truncated"]] for r in summaries],
        "full_rows": [dict(row=index, **full_record(full[index])) for index in picked],
    }


LONG_ANSWER = ("Sure. First, gather the ingredients: flour, water, salt and yeast. Mix them slowly, "
               "knead for ten minutes, let the dough rest for an hour, then bake at 230 degrees.")
LONG_SYSTEM = ("You are a careful assistant. You answer briefly, you cite sources when you can, and "
               "you refuse to help with anything that could hurt someone.")

# (name, limits, and either a chat-rendered row or raw texts given to tokenize_row as they are)
SYNTHETIC = [
    ("chatml_short_limits_keep_end", 64, 32, "keep_end",
     {"system": LONG_SYSTEM, "user": "How do I bake bread?", "chosen": LONG_ANSWER, "rejected": "No."}),
    ("chatml_short_limits_keep_start", 64, 32, "keep_start",
     {"system": LONG_SYSTEM, "user": "How do I bake bread?", "chosen": LONG_ANSWER, "rejected": "No."}),
    ("chatml_prompt_fits_answers_cut", 64, 32, "keep_end",
     {"system": "Be brief.", "user": "Bread?", "chosen": LONG_ANSWER, "rejected": LONG_ANSWER[::-1]}),
    ("chatml_long_prompt_short_answers", 64, 32, "keep_end",
     {"system": LONG_SYSTEM, "user": "Bread?", "chosen": "Yes.", "rejected": "No."}),
    ("chatml_fits_exactly_untouched", 512, 128, "keep_end",
     {"system": "Be brief.", "user": "Bread?", "chosen": "Flour, water, salt. 🍞", "rejected": "Non, merci."}),
    ("chatml_tight_48_16_keep_start", 48, 16, "keep_start",
     {"system": "Système: réponds en français.", "user": "Pourquoi le ciel est-il bleu ? 天空",
      "chosen": LONG_ANSWER, "rejected": "Parce que."}),
    ("chatml_empty_answers", 64, 32, "keep_end",
     {"system": "Be brief.", "user": "Say nothing.", "chosen": "", "rejected": " "}),
    ("raw_merge_on_chosen_only", 512, 128, "keep_end",
     {"prompt": "The answer is: wor", "chosen": "ld peace", "rejected": " nothing"}),
    ("raw_merge_on_both", 64, 8, "keep_end",
     {"prompt": "The answer is: wor", "chosen": "ld peace and more words " * 6, "rejected": "ds"}),
    ("raw_bos_already_there", 512, 128, "keep_end",
     {"prompt": "<s> Question: why?", "chosen": " Because.", "rejected": " No idea."}),
    ("raw_eos_already_there", 512, 128, "keep_end",
     {"prompt": "Question: why?", "chosen": " Because.<|im_end|>", "rejected": " No idea."}),
    ("raw_empty_prompt", 512, 128, "keep_end",
     {"prompt": "", "chosen": "Yes.", "rejected": "No."}),
    ("raw_empty_prompt_and_answer", 512, 128, "keep_end",
     {"prompt": "", "chosen": "", "rejected": "No."}),
    ("raw_prompt_truncated_keep_start", 40, 10, "keep_start",
     {"prompt": "one two three four five six seven eight nine ten eleven twelve thirteen",
      "chosen": " fourteen fifteen sixteen seventeen eighteen nineteen twenty", "rejected": " no"}),
]


LLAMA3_TOKENIZER = os.path.join(REPO, "tests", "fixtures", "tokenizer", "byte_level", "llama3")
LLAMA3_TEMPLATE = os.path.join(REPO, "tests", "fixtures", "tokenizer", "chat_templates", "llama3.jinja")
LLAMA3_DATASET_ROWS = 10
LLAMA3_ANSWER_CHARS = 800
# (name, max_length, max_prompt_length, truncation_mode, eos_token or None for the config's <|eot_id|>)
LLAMA3_LIMITS = [
    ("seed", 512, 128, "keep_end", None),
    ("short_keep_end", 64, 24, "keep_end", None),
    ("short_keep_start", 64, 24, "keep_start", None),
    ("short_keep_end_base_eos", 64, 24, "keep_end", "<|end_of_text|>"),
]
# Hand-made conversations: whitespace the template trims, non-ASCII text, empty texts, an answer
# that already ends with the template's end of turn, an empty system prompt, and earlier turns.
LLAMA3_ROWS = [
    {"system": "  Be brief. ", "turns": [{"role": "user", "content": "\n Bread? \n"}],
     "chosen": "  Flour, water, salt.\n", "rejected": " No. "},
    {"system": "Système : réponds en français.", "turns": [{"role": "user", "content": "Pourquoi le ciel est-il bleu ? 天空"}],
     "chosen": "Parce que la lumière bleue est diffusée. 🌍🍞", "rejected": "Je ne sais pas."},
    {"system": "Be brief.", "turns": [{"role": "user", "content": "Say nothing."}], "chosen": "", "rejected": " "},
    {"system": "Be brief.", "turns": [{"role": "user", "content": "Done?"}], "chosen": "Done.<|eot_id|>",
     "rejected": "Not yet.<|end_of_text|>"},
    {"system": "", "turns": [{"role": "user", "content": "How do I bake bread?"}], "chosen": LONG_ANSWER, "rejected": "No."},
    {"system": LONG_SYSTEM,
     "turns": [{"role": "user", "content": "How do I bake bread?"}, {"role": "assistant", "content": LONG_ANSWER},
               {"role": "user", "content": "And without yeast?"}],
     "chosen": "Use baking soda and buttermilk, and bake it right away.", "rejected": "You cannot."},
    {"system": LONG_SYSTEM, "turns": [{"role": "user", "content": "Bake bread, step by step, six times."}],
     "chosen": " ".join([LONG_ANSWER] * 6), "rejected": "No."},
]


def llama3_rows(dataset_path):
    """The hand-made rows, then dataset rows spread evenly over the file: from each tenth, the first
    row whose answers are both under LLAMA3_ANSWER_CHARS characters, to keep the fixture small."""
    with open(dataset_path) as file:
        dataset = json.load(file)
    def short(row):
        return max(len(row["chosen"]), len(row["rejected"])) < LLAMA3_ANSWER_CHARS
    step = len(dataset) // LLAMA3_DATASET_ROWS
    picked = [next(i for i in range(start, len(dataset)) if short(dataset[i]))
              for start in range(0, step * LLAMA3_DATASET_ROWS, step)]
    return LLAMA3_ROWS + [dict(row=index, system=dataset[index]["system"],
                               turns=[{"role": "user", "content": dataset[index]["prompt"]}],
                               chosen=dataset[index]["chosen"], rejected=dataset[index]["rejected"])
                          for index in picked]


def render_conversation(tokenizer, template, system, turns, chosen, rejected):
    """cst's llama3 layout: prompt = the conversation so far, answer = what the assistant turn adds."""
    prompt_messages = [{"role": "system", "content": system}] + turns
    def render(messages):
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=False)
    prompt = render(prompt_messages)
    def answer(text):
        whole = render(prompt_messages + [{"role": "assistant", "content": text}])
        assert whole.startswith(prompt), "the llama3 template must render the prompt as a prefix"
        return whole[len(prompt):]
    return {"prompt": prompt, "chosen": answer(chosen), "rejected": answer(rejected)}


def compact_record(tokenized):
    """Ids in full; labels as the number of leading -100s (checked: the rest equals the ids)."""
    record = {"prompt_length": len(tokenized["prompt_input_ids"])}
    for key in ("chosen", "rejected"):
        ids, labels = tokenized[f"{key}_input_ids"], tokenized[f"{key}_labels"]
        masked = next((i for i, label in enumerate(labels) if label != LABEL_PAD), len(labels))
        assert labels[masked:] == ids[masked:], "trl's labels copy the ids after the prompt"
        record[f"{key}_input_ids"] = ids
        record[f"{key}_prompt_length"] = masked
    return record


def make_llama3_fixture(dataset_path):
    with open(LLAMA3_TEMPLATE) as file:
        template = file.read()
    tokenizers = {}
    for _, _, _, _, eos in LLAMA3_LIMITS:
        if eos not in tokenizers:
            extra = {} if eos is None else {"eos_token": eos}
            tokenizers[eos] = AutoTokenizer.from_pretrained(LLAMA3_TOKENIZER, **extra)
    rows = []
    for row in llama3_rows(dataset_path):
        rendered = render_conversation(tokenizers[None], template, row["system"], row["turns"],
                                       row["chosen"], row["rejected"])
        trl_records = []
        for _, max_length, max_prompt_length, mode, eos in LLAMA3_LIMITS:
            trainer = make_trl_tokenizer_object(tokenizers[eos], max_length, max_prompt_length, mode)
            trl_records.append(compact_record(trainer.tokenize_row(dict(rendered))))
        # The rendered strings of dataset rows are left out for size: equal ids imply equal strings.
        rows.append(dict(row, trl=trl_records) if "row" in row else dict(row, rendered=rendered, trl=trl_records))
    return {"generated_by": "tools/python/make_trl_tokenization_fixtures.py",
            "trl_version": trl.__version__, "transformers_version": transformers.__version__,
            "dataset": os.path.basename(dataset_path),
            "limits": [{"name": name, "max_length": max_length, "max_prompt_length": max_prompt_length,
                        "truncation_mode": mode, "eos_token": eos}
                       for name, max_length, max_prompt_length, mode, eos in LLAMA3_LIMITS],
            "rows": rows}


def write_compact_rows(path, fixture):
    """One line per row, so that a changed row shows as a changed line."""
    head = {key: value for key, value in fixture.items() if key != "rows"}
    lines = [json.dumps(row, ensure_ascii=False, separators=(",", ":")) for row in fixture["rows"]]
    with open(path, "w") as file:
        file.write(json.dumps(head, ensure_ascii=False)[:-1] + ', "rows": [\n' + ",\n".join(lines) + "\n]}\n")


def make_synthetic_fixture(tokenizer):
    cases = []
    for name, max_length, max_prompt_length, mode, row in SYNTHETIC:
        trainer = make_trl_tokenizer_object(tokenizer, max_length, max_prompt_length, mode)
        if "system" in row:
            feature = render(tokenizer, row["system"], row["user"], row["chosen"], row["rejected"])
        else:
            feature = dict(row)
        case = {"name": name, "max_length": max_length, "max_prompt_length": max_prompt_length,
                "truncation_mode": mode, "input": row, "rendered": feature}
        case.update(full_record(trainer.tokenize_row(feature)))
        cases.append(case)
    return {"generated_by": "tools/python/make_trl_tokenization_fixtures.py",
            "trl_version": trl.__version__, "transformers_version": transformers.__version__,
            "cases": cases}


def benchmark(tokenizer, dataset_path):
    """The seed's Python data path, timed end to end: load, render, tokenize, one epoch of batches."""
    import datasets
    import torch
    from trl.trainer.utils import DPODataCollatorWithPadding

    datasets.disable_caching()
    trainer = make_trl_tokenizer_object(tokenizer, 512, 128, "keep_end")
    start, cpu_start = time.perf_counter(), time.process_time()
    dataset = datasets.load_dataset("json", data_files=dataset_path, split="train")
    loaded = time.perf_counter()
    dataset = dataset.map(lambda row: render(tokenizer, row["system"], row["prompt"], row["chosen"],
                                             row["rejected"]), remove_columns=["system", "task"])
    dataset = dataset.map(trainer.tokenize_row, writer_batch_size=10)
    tokenized = time.perf_counter()
    columns = [c for c in dataset.column_names if c.endswith(("_input_ids", "_attention_mask", "_labels"))]
    collator = DPODataCollatorWithPadding(pad_token_id=tokenizer.eos_token_id, label_pad_token_id=LABEL_PAD)
    loader = torch.utils.data.DataLoader(dataset.select_columns(columns), batch_size=2, shuffle=True,
                                         collate_fn=collator, generator=torch.Generator().manual_seed(42))
    batches = sum(1 for _ in loader)
    finished, cpu_finished = time.perf_counter(), time.process_time()
    print(f"python (datasets + trl 0.9.6): load {loaded - start:.3f} s, render+tokenize "
          f"{tokenized - loaded:.3f} s, {batches} padded batches {finished - tokenized:.3f} s, "
          f"total {finished - start:.3f} s wall, {cpu_finished - cpu_start:.3f} s CPU "
          f"for {len(dataset)} rows")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokenizer", default=DEFAULT_TOKENIZER)
    parser.add_argument("--dataset", default=DEFAULT_DATASET)
    parser.add_argument("--benchmark", action="store_true")
    parser.add_argument("--llama3_only", action="store_true", help="write llama3.json alone")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    if tokenizer.chat_template is None:
        sys.exit(f"{args.tokenizer} has no chat_template in tokenizer_config.json")
    if args.benchmark:
        benchmark(tokenizer, args.dataset)
        return
    os.makedirs(OUTPUT_DIR, exist_ok=True)
    llama3 = make_llama3_fixture(args.dataset)
    write_compact_rows(os.path.join(OUTPUT_DIR, "llama3.json"), llama3)
    print(f"wrote llama3.json: {len(llama3['rows'])} rows at {len(LLAMA3_LIMITS)} limits")
    if args.llama3_only:
        return
    with open(os.path.join(OUTPUT_DIR, "synthetic.json"), "w") as file:
        json.dump(make_synthetic_fixture(tokenizer), file, ensure_ascii=False, indent=1)
    dataset_fixture = make_dataset_fixture(tokenizer, args.dataset)
    with open(os.path.join(OUTPUT_DIR, "dataset_rows.json"), "w") as file:
        json.dump(dataset_fixture, file, separators=(",", ":"))
    print(f"wrote {OUTPUT_DIR}: {len(dataset_fixture['rows'])} rows "
          f"({dataset_fixture['truncated_rows']} truncated), {len(dataset_fixture['full_rows'])} in full, "
          f"{len(SYNTHETIC)} synthetic cases")


if __name__ == "__main__":
    main()
