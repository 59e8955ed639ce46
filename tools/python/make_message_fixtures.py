# Writes the golden fixtures for message-list columns (list<struct<role, content>>, trl's
# "conversational" format) into tests/fixtures/parquet/messages_*. Rerun from the repository root:
#     python3 tools/python/make_message_fixtures.py
# (make_parquet_fixtures.py, which rewrites the whole folder, also calls it at its end.)
# Every messages_*.parquet gets a .expected.json holding every cell as pyarrow reads it back, a
# message-list cell as null or a list of {"role", "content"} (either may be null; extra struct
# fields are left out because cst ignores them). messages_hf.jsonl and messages_array.json hold
# the same rows for the JSON reader, with the cells HF datasets reads back from them.
# The preference_* files hold one set of rows three ways (trl's conversational format, the
# ultrafeedback_binarized format and plain strings) for tests/test_preference.cpp, which checks
# that all three give the same preference examples and token ids.
# The preference_multiturn_* files hold conversations of one to three user turns (see
# write_multiturn_preference_fixtures), with the examples, rendered prompts and trl's token ids
# that tests/test_preference.cpp and tests/test_pair_tokenizer.cpp compare cst with.
# Rows come from a fixed seed. Needs pyarrow and datasets, and for the multi-turn expectations
# transformers and trl (tools/python/requirements.txt) and the tokenizer fixtures of
# make_tokenizer_fixtures.py.
import json
import os
import random

import pyarrow as pa
import pyarrow.parquet as pq

import make_parquet_fixtures as parquet_fixtures
import make_tokenizer_fixtures as tokenizer_fixtures
import make_trl_tokenization_fixtures as trl_fixtures

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "parquet")

WORDS = ["safe", "refuse", "comply", "café", "naïve", "日本語", "안전", "🙂", "🚀✨", "", " ",
         "tab\there", "line\nbreak", "quote\"d", "back\\slash"]
ROLES = ["system", "user", "assistant", "tool", "ünïcödé"]

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES = pa.list_(MESSAGE)


def random_text(rng, max_words):
    return parquet_fixtures.random_text(rng, max_words, WORDS)


def long_text(rng, chars):
    return parquet_fixtures.long_text(rng, chars, WORDS)


def random_messages(rng, row, nullable):
    """A message list with every shape a reader meets: null, empty, null fields."""
    draw = rng.random()
    if nullable and draw < 0.1:
        return None
    if draw < 0.18:
        return []
    messages = []
    for _ in range(rng.randint(1, 4)):
        role = rng.choice(ROLES)
        content = f"{row}: " + random_text(rng, 6)
        if nullable and rng.random() < 0.05:
            role = None
        if nullable and rng.random() < 0.05:
            content = None
        messages.append({"role": role, "content": content})
    return messages


def make_rows(num_rows, seed, nullable=True):
    """Columns: id (int64), prompt/chosen (message lists), title (string)."""
    rng = random.Random(seed)
    rows = {"id": [], "prompt": [], "chosen": [], "title": []}
    for row in range(num_rows):
        rows["id"].append(row)
        rows["prompt"].append(random_messages(rng, row, nullable))
        rows["chosen"].append(random_messages(rng, row, nullable))
        rows["title"].append(None if nullable and rng.random() < 0.1 else random_text(rng, 3))
    # The first row holds a message long enough to span several pages.
    rows["chosen"][0] = [{"role": "assistant", "content": long_text(rng, 6000)}]
    return rows


def make_table(rows, nullable=True):
    message = pa.struct([pa.field("role", pa.string(), nullable=nullable),
                         pa.field("content", pa.string(), nullable=nullable)])
    messages = pa.list_(pa.field("element", message, nullable=nullable))
    schema = pa.schema([pa.field("id", pa.int64(), nullable=nullable),
                        pa.field("prompt", messages, nullable=nullable),
                        pa.field("chosen", messages, nullable=nullable),
                        pa.field("title", pa.string(), nullable=nullable)])
    return pa.Table.from_pydict(rows, schema=schema)


def is_message_list(arrow_type):
    return pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)


def message_cell(cell):
    if cell is None:
        return None
    return [{"role": m.get("role"), "content": m.get("content")} for m in cell]


def expected_cells(table):
    """Every cell of a pyarrow table, with each column's kind, for the C++ tests to compare."""
    columns = []
    for field in table.schema:
        values = table.column(field.name).to_pylist()
        if is_message_list(field.type):
            kind, values = "messages", [message_cell(cell) for cell in values]
        elif pa.types.is_integer(field.type):
            kind = "integer"
        else:
            kind = "string"
        columns.append({"name": field.name, "kind": kind, "values": values})
    return {"num_rows": table.num_rows, "columns": columns}


def save_json(path, value):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, ensure_ascii=False, indent=0)


def write_expected(parquet_path):
    """Reads the file back with pyarrow and stores its cells: the C++ test's reference."""
    save_json(parquet_path.replace(".parquet", ".expected.json"),
              expected_cells(pq.read_table(parquet_path)))


def write(name, table, **options):
    path = os.path.join(OUT, name + ".parquet")
    pq.write_table(table, path, **options)
    write_expected(path)
    meta = pq.ParquetFile(path).metadata
    print(f"{name}.parquet: {meta.num_rows} rows, {meta.num_row_groups} row groups, "
          f"{os.path.getsize(path)} bytes")


def write_reader_fixtures():
    small_pages = dict(row_group_size=40, data_page_size=512, write_batch_size=16)
    rows = make_rows(100, seed=11)
    write("messages_dictionary_v1", make_table(rows), compression="snappy", use_dictionary=True,
          data_page_version="1.0", **small_pages)
    write("messages_plain_v2", make_table(rows), compression="zstd", use_dictionary=False,
          data_page_version="2.0", **small_pages)
    # REQUIRED at every level, and the older "item" name for list elements.
    write("messages_required", make_table(make_rows(60, seed=12, nullable=False), nullable=False),
          compression="gzip", use_compliant_nested_type=False, data_page_version="2.0",
          **small_pages)
    # Struct fields in another order, with an extra field that cst ignores.
    tagged = pa.list_(pa.struct([("content", pa.string()), ("name", pa.string()),
                                 ("role", pa.string())]))
    extra = pa.table({"messages": pa.array([
        [{"content": "hi", "name": "ann", "role": "user"}],
        None,
        [],
        [{"content": "a", "name": None, "role": "user"},
         {"content": None, "name": "bob", "role": "assistant"}],
    ], tagged)})
    write("messages_extra_field", extra, compression="none")
    # Nested columns of other shapes, which cst must refuse by name; 'title' reads beside them.
    other = pa.table({
        "title": pa.array(["a", None], pa.string()),
        "tags": pa.array([["x", "y"], None], pa.list_(pa.string())),
        "pair": pa.array([{"role": "user", "weight": 1}, None],
                         pa.struct([("role", pa.string()), ("weight", pa.int64())])),
        "numbered": pa.array([[{"role": 1, "content": "c"}], []],
                             pa.list_(pa.struct([("role", pa.int64()), ("content", pa.string())]))),
        "no_content": pa.array([[{"role": "user"}], None],
                               pa.list_(pa.struct([("role", pa.string())]))),
    })
    other_path = os.path.join(OUT, "messages_other_nested.parquet")
    pq.write_table(other, other_path)
    save_json(other_path.replace(".parquet", ".expected.json"),
              expected_cells(pq.read_table(other_path, columns=["title"])))

    # HF datasets: Dataset.from_list(...).to_parquet, and the same rows as JSON lines and as a
    # JSON array. HF datasets orders the struct fields by name (content before role).
    from datasets import Dataset
    rng = random.Random(13)
    records = []
    for row in range(40):
        user = {"role": "user", "content": f"question {row}: " + random_text(rng, 5)}
        records.append({
            "prompt": user["content"],
            "chosen": [user, {"role": "assistant", "content": random_text(rng, 8)}],
            "rejected": None if row == 7 else
            [user, {"role": "assistant", "content": random_text(rng, 8)}],
            "messages": [] if row % 9 == 4 else
            [{"role": "system", "content": "Sé útil 🙂"}, user],
            "score": row,
        })
    dataset = Dataset.from_list(records)
    hf_path = os.path.join(OUT, "messages_hf.parquet")
    dataset.to_parquet(hf_path)
    write_expected(hf_path)
    jsonl_path = os.path.join(OUT, "messages_hf.jsonl")
    dataset.to_json(jsonl_path, force_ascii=False)
    array_path = os.path.join(OUT, "messages_array.json")
    save_json(array_path, records)
    for path in (jsonl_path, array_path):
        readback = Dataset.from_json(path, keep_in_memory=True).data.table
        save_json(os.path.splitext(path)[0] + ".expected.json", expected_cells(readback))


def write_preference_fixtures():
    """One set of (system, user, chosen, rejected) rows, written three ways."""
    rng = random.Random(14)
    systems = ["You are a helpful assistant.", "Réponds en français. 🙂", ""]
    rows = [{"system": systems[row % 3],
             "user": f"question {row}: " + random_text(rng, 6),
             "chosen": random_text(rng, 10),
             "rejected": random_text(rng, 10)} for row in range(24)]

    def message(role, content):
        return {"role": role, "content": content}

    # trl's conversational format: prompt = [system, user], answers = [assistant].
    trl_style = [{"prompt": [message("system", r["system"]), message("user", r["user"])],
                  "chosen": [message("assistant", r["chosen"])],
                  "rejected": [message("assistant", r["rejected"])]} for r in rows]
    # ultrafeedback_binarized: a string prompt; each answer repeats the user turn.
    ultrafeedback = [{"prompt": r["user"],
                      "chosen": [message("user", r["user"]), message("assistant", r["chosen"])],
                      "rejected": [message("user", r["user"]),
                                   message("assistant", r["rejected"])]} for r in rows]
    strings = [{"system": r["system"], "prompt": r["user"], "chosen": r["chosen"],
                "rejected": r["rejected"]} for r in rows]
    from datasets import Dataset
    Dataset.from_list(trl_style).to_parquet(os.path.join(OUT, "preference_trl_messages.parquet"))
    Dataset.from_list(ultrafeedback).to_json(
        os.path.join(OUT, "preference_ultrafeedback.jsonl"), force_ascii=False)
    Dataset.from_list(strings).to_parquet(os.path.join(OUT, "preference_strings.parquet"))


# --- Multi-turn preference rows. ---------------------------------------------------------------------
#
# Each row is (system, turns, chosen, rejected): turns alternate user/assistant from a user turn to
# a user turn, and the answers reply to the last. Written two ways:
#   preference_multiturn_trl.parquet    trl's explicit-prompt format: prompt = [system] + turns,
#                                       chosen = [assistant], rejected = [assistant]
#   preference_multiturn_implicit.jsonl no system message; chosen and rejected each hold the whole
#                                       conversation (turns + their answer), as trl >= 0.12's
#                                       maybe_extract_prompt takes the shared prefix for the prompt;
#                                       plus a string prompt column holding the last user message
# preference_multiturn.expected.json holds the preference examples these rows must give (by
# construction: system, the turns before the last user message as history, that message as the
# prompt, the answers' texts), the parquet rows as they are and the jsonl rows under CST's two
# system prompts. Per example and chat template (every template for the parquet rows, chatml for
# the jsonl rows) it holds the seed's rendering (trl 0.9.6's recipe on the whole conversation:
# prompt = apply_chat_template([system] + turns), each answer the text its assistant turn adds;
# make_tokenizer_fixtures.render_conversation) and trl 0.9.6's DPOTrainer.tokenize_row on those
# strings with the ChatML tokenizer fixture, at trl's default limits and, for chatml, at short
# limits that cut the multi-turn prompts (keep_end, keep_start). trl's output is stored compactly:
# the input ids, and the number of leading positions its labels mask (-100; the generator checks
# that the labels are exactly that prefix masked and the ids after it), and the length of
# prompt_input_ids.

CST_SYSTEM_PROMPTS = ["You are a helpful yet harmless assistant.", "You are a completely uncensored assistant."]
MULTITURN_LIMITS = [(512, 128, "keep_end"), (96, 40, "keep_end"), (96, 40, "keep_start")]
LABEL_PAD = trl_fixtures.LABEL_PAD


def multiturn_rows():
    rng = random.Random(15)
    systems = ["You are a helpful assistant.", "", "Réponds en français. 🙂", "  padded system \n"]
    rows = []
    for row in range(6):
        turns = []
        for turn in range(1 + row % 3):  # one, two or three user turns
            if turn:
                turns.append(("assistant", random_text(rng, 8)))
            turns.append(("user", f"question {row}.{turn}: " + random_text(rng, 8)))
        rows.append({"system": systems[row % len(systems)], "turns": turns,
                     "chosen": random_text(rng, 10), "rejected": random_text(rng, 10)})
    # Contents with surrounding whitespace (llama2 and mistral_v3 strip them).
    rows[4]["turns"] = [("user", "  padded question \n"), ("assistant", "\t padded reply  "),
                        ("user", "\u3000second padded question ")]
    for r in rows:
        assert r["chosen"] != r["rejected"]
    return rows


def expected_example(system, row, source_row, flipped=False):
    return {"system": system, "history": [list(t) for t in row["turns"][:-1]],
            "prompt": row["turns"][-1][1],
            "chosen": row["rejected"] if flipped else row["chosen"],
            "rejected": row["chosen"] if flipped else row["rejected"], "source_row": source_row}


def compact_trl_record(tokenized):
    record = {"prompt_length": len(tokenized["prompt_input_ids"])}
    for answer in ("chosen", "rejected"):
        ids, labels = tokenized[answer + "_input_ids"], tokenized[answer + "_labels"]
        masked = sum(1 for label in labels if label == LABEL_PAD)
        assert labels == [LABEL_PAD] * masked + ids[masked:], (ids, labels)
        record[answer + "_input_ids"] = ids
        record[answer + "_prompt_length"] = masked
    return record


def tokenized_example(example, renderers, trl_trainers):
    """Per chat template: the rendered strings and trl's tokenize_row output (per limit for chatml)."""
    turns = [{"role": r, "content": c} for r, c in example["history"]]
    turns.append({"role": "user", "content": example["prompt"]})
    result = {}
    for name, tokenizer in renderers.items():
        rendered = {"prompt": tokenizer_fixtures.render_conversation(
            tokenizer, name, example["system"], turns, example["chosen"])["prompt"]}
        for key in ("chosen", "rejected"):
            rendered[key] = tokenizer_fixtures.render_conversation(
                tokenizer, name, example["system"], turns, example[key])["answer"]
        limits = MULTITURN_LIMITS if name == "chatml" else MULTITURN_LIMITS[:1]
        rendered["trl"] = [compact_trl_record(trl_trainers[limit].tokenize_row(dict(rendered)))
                           for limit in limits]
        result[name] = rendered
    return result


def write_multiturn_preference_fixtures():
    from datasets import Dataset
    rows = multiturn_rows()

    def message(role, content):
        return {"role": role, "content": content}

    explicit = [{"prompt": [message("system", r["system"])] + [message(*t) for t in r["turns"]],
                 "chosen": [message("assistant", r["chosen"])],
                 "rejected": [message("assistant", r["rejected"])]} for r in rows]
    implicit = [{"prompt": r["turns"][-1][1],
                 "chosen": [message(*t) for t in r["turns"]] + [message("assistant", r["chosen"])],
                 "rejected": [message(*t) for t in r["turns"]] + [message("assistant", r["rejected"])]}
                for r in rows]
    Dataset.from_list(explicit).to_parquet(os.path.join(OUT, "preference_multiturn_trl.parquet"))
    Dataset.from_list(implicit).to_json(os.path.join(OUT, "preference_multiturn_implicit.jsonl"),
                                        force_ascii=False)

    # As make_tokenizer_fixtures renders its golden: ChatML with its own tokens, the other templates
    # with the Llama/Mistral <s> and </s>; tokenized by trl with the ChatML tokenizer, as the C++
    # test tokenizes every template's text.
    chatml = tokenizer_fixtures.load_variant("chatml")
    llama_tokens = tokenizer_fixtures.load_variant("chatml", eos_token="</s>")
    renderers = {name: chatml if name == "chatml" else llama_tokens
                 for name in tokenizer_fixtures.CHAT_TEMPLATES}
    trl_trainers = {limit: trl_fixtures.make_trl_tokenizer_object(chatml, *limit) for limit in MULTITURN_LIMITS}
    trl_examples = [expected_example(r["system"], r, i) for i, r in enumerate(rows)]
    cst_examples = [expected_example(system, r, i, flipped=k == 1)
                    for i, r in enumerate(rows) for k, system in enumerate(CST_SYSTEM_PROMPTS)]
    for example in trl_examples:
        example["rendered"] = tokenized_example(example, renderers, trl_trainers)
    for example in cst_examples:
        example["rendered"] = tokenized_example(example, {"chatml": chatml}, trl_trainers)
    cut = [e for e in trl_examples if e["rendered"]["chatml"]["trl"][1]["prompt_length"] == MULTITURN_LIMITS[1][1]]
    assert len(cut) >= 2, "too few multi-turn prompts cut to the short max_prompt_length"
    expected = {
        "generated_by": "tools/python/make_message_fixtures.py",
        "trl_version": trl_fixtures.trl.__version__,
        "transformers_version": trl_fixtures.transformers.__version__,
        "cst_system_prompts": CST_SYSTEM_PROMPTS,
        "limits": [{"max_length": m, "max_prompt_length": p, "truncation_mode": t}
                   for m, p, t in MULTITURN_LIMITS],
        "trl_examples": trl_examples,
        "cst_examples": cst_examples,
    }
    with open(os.path.join(OUT, "preference_multiturn.expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, separators=(",", ":"))


def main():
    os.makedirs(OUT, exist_ok=True)
    write_reader_fixtures()
    write_preference_fixtures()
    write_multiturn_preference_fixtures()
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT)
                if f.startswith(("messages_", "preference_")))
    print(f"message fixture bytes: {total}")


if __name__ == "__main__":
    main()
