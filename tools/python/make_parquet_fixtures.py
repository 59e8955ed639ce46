# Writes the golden fixtures for the dataset readers (data/parquet, data/json_rows) into
# tests/fixtures/parquet/. Rerun from the repository root:
#     python3 tools/python/make_parquet_fixtures.py
# Every <name>.parquet gets a <name>.expected.json holding every cell as pyarrow reads it back
# (nulls as null), which tests/test_parquet.cpp compares cell by cell; hf_datasets.jsonl and
# rows_array.json get the cells HF datasets reads back from them, for tests/test_json_rows.cpp.
# The rows are drawn from a fixed seed, so rerunning rewrites identical data (the file bytes may
# change with pyarrow's version). Needs pyarrow and datasets (tools/python/requirements.txt).
# The folder is rewritten from scratch, so the message-list fixtures of make_message_fixtures.py
# are written again at the end.
import json
import os
import random
import shutil

import pyarrow as pa
import pyarrow.parquet as pq

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "parquet")

WORDS = ["safe", "unsafe", "refuse", "comply", "café", "naïve", "Ærøskøbing", "日本語", "安全",
         "모델", "🙂", "🚀✨", "", " ", "tab\there", "line\nbreak", "quote\"d", "back\\slash"]
LABELS = ["harmless", "harmful", "ünïcödé", "中文", "🙂"]


def random_text(rng, max_words, words=WORDS):
    return " ".join(rng.choice(words) for _ in range(rng.randint(0, max_words)))


def long_text(rng, chars, words=WORDS):
    # Mixed 1-4 byte UTF-8 so the long value also crosses page and buffer boundaries oddly.
    pieces = []
    while sum(len(p) for p in pieces) < chars:
        pieces.append(rng.choice(words) or "x")
        pieces.append(str(rng.randint(0, 10**9)))
    return "".join(pieces)


def make_rows(num_rows, seed, nullable=True, long_rows=1):
    """Columns: id (int64), small (int32), text (string), label (low-cardinality string)."""
    rng = random.Random(seed)
    ids, smalls, texts, labels = [], [], [], []
    for row in range(num_rows):
        ids.append(rng.choice([row, -row, 2**62 + row, -(2**40) - row, 0]))
        smalls.append(None if nullable and rng.random() < 0.2 else rng.randint(-2**31, 2**31 - 1))
        if row < long_rows:
            texts.append(long_text(rng, 10_500))
        elif nullable and rng.random() < 0.15:
            texts.append(None)
        elif rng.random() < 0.1:
            texts.append("")
        else:
            texts.append(f"{row}: " + random_text(rng, 8))
        labels.append(None if nullable and rng.random() < 0.1 else rng.choice(LABELS))
    return {"id": ids, "small": smalls, "text": texts, "label": labels}


def make_table(rows, nullable=True, string_type=pa.string()):
    schema = pa.schema([
        pa.field("id", pa.int64(), nullable=nullable),
        pa.field("small", pa.int32(), nullable=nullable),
        pa.field("text", string_type, nullable=nullable),
        pa.field("label", string_type, nullable=nullable),
    ])
    return pa.Table.from_pydict(rows, schema=schema)


def expected_cells(table):
    """Every cell of a pyarrow table, with each column's kind, for the C++ tests to compare."""
    columns = [{"name": field.name,
                "kind": "integer" if pa.types.is_integer(field.type) else "string",
                "values": table.column(field.name).to_pylist()} for field in table.schema]
    return {"num_rows": table.num_rows, "columns": columns}


def save_json(path, value):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, ensure_ascii=False, indent=0)


def write_expected(parquet_path, columns=None):
    """Reads the file back with pyarrow and stores its cells, so the C++ test has a real reference."""
    table = pq.read_table(parquet_path, columns=columns)
    save_json(parquet_path.replace(".parquet", ".expected.json"), expected_cells(table))


def write(name, table, **options):
    path = os.path.join(OUT, name + ".parquet")
    pq.write_table(table, path, **options)
    write_expected(path)
    return path


def describe_pages(path):
    """Prints row groups and encodings so a reader of the log can see what each fixture covers."""
    meta = pq.ParquetFile(path).metadata
    encodings = sorted({e for g in range(meta.num_row_groups) for c in range(meta.num_columns)
                        for e in meta.row_group(g).column(c).encodings})
    codecs = sorted({meta.row_group(g).column(c).compression for g in range(meta.num_row_groups)
                     for c in range(meta.num_columns)})
    print(f"{os.path.basename(path)}: {meta.num_rows} rows, {meta.num_row_groups} row groups, "
          f"codecs {codecs}, encodings {encodings}, {os.path.getsize(path)} bytes")


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    # Small pages and row groups so every fixture has many of both.
    small_pages = dict(row_group_size=120, data_page_size=256, write_batch_size=16)
    paths = []

    rows = make_rows(300, seed=1)
    paths.append(write("plain_uncompressed_v1", make_table(rows), compression="none",
                       use_dictionary=False, data_page_version="1.0", **small_pages))
    paths.append(write("dictionary_snappy_v1", make_table(rows), compression="snappy",
                       use_dictionary=True, data_page_version="1.0", **small_pages))
    rows = make_rows(300, seed=2)
    paths.append(write("dictionary_gzip_v2", make_table(rows), compression="gzip",
                       use_dictionary=True, data_page_version="2.0", **small_pages))
    paths.append(write("plain_zstd_v2", make_table(rows), compression="zstd",
                       use_dictionary=False, data_page_version="2.0", **small_pages))
    # pyarrow's defaults: snappy, dictionary, page v1, one row group.
    paths.append(write("pyarrow_defaults", make_table(make_rows(200, seed=3))))

    # Many distinct strings and a tiny dictionary page limit: chunks start dictionary-encoded and
    # fall back to PLAIN pages midway.
    rows = make_rows(400, seed=4, long_rows=0)
    rows["text"] = [None if t is None else f"distinct {i} {t}" for i, t in enumerate(rows["text"])]
    paths.append(write("dictionary_fallback", make_table(rows), compression="snappy",
                       use_dictionary=True, dictionary_pagesize_limit=512, row_group_size=400,
                       data_page_size=512, write_batch_size=16))

    rows = make_rows(250, seed=5)
    paths.append(write("delta_encodings_v1", make_table(rows), compression="zstd",
                       use_dictionary=False, data_page_version="1.0",
                       column_encoding={"text": "DELTA_LENGTH_BYTE_ARRAY",
                                        "label": "DELTA_BYTE_ARRAY",
                                        "id": "DELTA_BINARY_PACKED",
                                        "small": "DELTA_BINARY_PACKED"}, **small_pages))
    paths.append(write("delta_encodings_v2", make_table(rows), compression="snappy",
                       use_dictionary=False, data_page_version="2.0",
                       column_encoding={"text": "DELTA_LENGTH_BYTE_ARRAY",
                                        "label": "DELTA_BYTE_ARRAY",
                                        "id": "DELTA_BINARY_PACKED",
                                        "small": "DELTA_BINARY_PACKED"}, **small_pages))

    # Non-nullable schema (REQUIRED columns, no definition levels) with large_string columns.
    rows = make_rows(200, seed=6, nullable=False)
    paths.append(write("required_large_string", make_table(rows, nullable=False,
                                                           string_type=pa.large_string()),
                       compression="gzip", use_dictionary=True, data_page_version="1.0",
                       **small_pages))

    # Unsigned and narrow integers: uint32 is stored as INT32 annotated UINT_32, so values above
    # 2^31 must be read back unsigned.
    unsigned = pa.table({
        "u32": pa.array([0, 1, 2**31, 2**32 - 1, None], pa.uint32()),
        "i8": pa.array([-128, 127, 0, None, 5], pa.int8()),
        "u16": pa.array([0, 65535, 1, 2, None], pa.uint16()),
    })
    paths.append(write("unsigned_integers", unsigned, compression="none"))

    # Edge shapes: every value null, and a file with zero rows.
    all_null = pa.table({"text": pa.array([None] * 7, pa.string()),
                         "count": pa.array([None] * 7, pa.int64())})
    paths.append(write("all_null", all_null, compression="snappy"))
    empty = pa.table({"text": pa.array([], pa.string()), "count": pa.array([], pa.int64())})
    paths.append(write("zero_rows", empty, compression="snappy"))

    # What Hugging Face datasets writes (Dataset.to_parquet), system/prompt/chosen/rejected style.
    from datasets import Dataset
    rng = random.Random(7)
    preference = {
        "system": [rng.choice(["You are a helpful assistant.", "Sé útil. 有用。", None])
                   for _ in range(60)],
        "prompt": [f"question {i}: " + random_text(rng, 6) for i in range(60)],
        "chosen": [random_text(rng, 12) for _ in range(60)],
        "rejected": [random_text(rng, 12) for _ in range(60)],
        "task": [rng.randint(0, 3) for _ in range(60)],
    }
    hf_path = os.path.join(OUT, "hf_datasets.parquet")
    Dataset.from_dict(preference).to_parquet(hf_path)
    write_expected(hf_path)
    paths.append(hf_path)
    # The same rows as JSON for data/json_rows: JSON lines from HF datasets' to_json, and a JSON
    # array of row objects. Their expected cells are what HF datasets reads back from each.
    dataset = Dataset.from_dict(preference)
    jsonl_path = os.path.join(OUT, "hf_datasets.jsonl")
    dataset.to_json(jsonl_path, force_ascii=False)
    array_path = os.path.join(OUT, "rows_array.json")
    save_json(array_path, dataset.to_list())
    for path in (jsonl_path, array_path):
        readback = Dataset.from_json(path, keep_in_memory=True).data.table
        save_json(os.path.splitext(path)[0] + ".expected.json", expected_cells(readback))

    # A two-shard directory as HF datasets lays out a split.
    shards = os.path.join(OUT, "shards")
    os.makedirs(shards)
    rows = make_rows(90, seed=8, long_rows=0)
    first = {k: v[:50] for k, v in rows.items()}
    second = {k: v[50:] for k, v in rows.items()}
    pq.write_table(make_table(first), os.path.join(shards, "train-00000-of-00002.parquet"),
                   row_group_size=20)
    pq.write_table(make_table(second), os.path.join(shards, "train-00001-of-00002.parquet"),
                   compression="zstd", data_page_version="2.0")
    # pyarrow reads a directory in name order too.
    save_json(os.path.join(OUT, "shards.expected.json"), expected_cells(pq.read_table(shards)))

    # Files the reader must refuse with a clear message.
    small = make_table(make_rows(20, seed=9, long_rows=0))
    pq.write_table(small, os.path.join(OUT, "lz4.parquet"), compression="lz4")
    chat_type = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    chat = pa.table({
        "prompt": pa.array(["hi", "hello", None], pa.string()),
        "messages": pa.array([[{"role": "user", "content": "hi"}],
                              [{"role": "user", "content": "hello"},
                               {"role": "assistant", "content": "hey"}], None], chat_type),
        "score": pa.array([1.5, 2.5, None], pa.float64()),
    })
    nested_path = os.path.join(OUT, "nested_chat.parquet")
    pq.write_table(chat, nested_path)
    write_expected(nested_path, columns=["prompt"])
    # Column 'text' of this file has its chunk bytes zeroed: reading only 'id' must still work,
    # which shows the reader touches the requested columns' chunks only.
    other = os.path.join(OUT, "corrupt_text_chunk.parquet")
    pq.write_table(small, other, compression="none", use_dictionary=False)
    meta = pq.ParquetFile(other).metadata
    column = [meta.schema.column(i).name for i in range(meta.num_columns)].index("text")
    chunk = meta.row_group(0).column(column)
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    with open(other, "r+b") as f:
        f.seek(start)
        f.write(b"\0" * chunk.total_compressed_size)
    write_expected(other, columns=["id", "small", "label"])
    with open(os.path.join(OUT, "git_lfs_pointer.parquet"), "w") as f:
        f.write("version https://git-lfs.github.com/spec/v1\n"
                "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
                "size 12345\n")

    for path in paths:
        describe_pages(path)
    import make_message_fixtures
    make_message_fixtures.main()
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(OUT) for f in fs)
    print(f"total fixture bytes: {total}")


if __name__ == "__main__":
    main()
