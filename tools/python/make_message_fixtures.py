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
# messages_two_level*.parquet, messages_one_level.parquet and
# preference_trl_messages_two_level.parquet hold message lists in parquet's legacy two- and
# one-level list forms, which pyarrow reads but does not write (see write_legacy_list_fixtures).
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


# --- Two-level and one-level message lists (parquet's backward-compatibility list forms). --------
#
# Java writers (parquet-avro's old list structure, Hive, older Spark) store a list of structs in
# two levels, the repeated group being the element:
#     optional group prompt (LIST) { repeated group array { optional binary role; ... content } }
# and a bare repeated group (one level) is a required list of required structs:
#     repeated group messages { optional binary role; optional binary content }
# pyarrow reads both as list<struct<role, content>> but writes neither, so these fixtures are
# written by pyarrow in the three-level form with a *required* element (whose definition and
# repetition levels equal the legacy form's) and the footer's schema and column paths are then
# rewritten into the legacy form. The data pages are left as they are. pyarrow reads every
# rewritten file back and must see the same rows; its reading is the .expected.json.

# Thrift compact protocol: just enough to decode a parquet footer and encode it back unchanged.
# A struct is a list of [field id, type, value]; a list value is (element type, [values]).
T_TRUE, T_FALSE, T_BYTE, T_I16, T_I32, T_I64, T_DOUBLE, T_BINARY, T_LIST, T_SET, T_MAP, T_STRUCT = \
    range(1, 13)


class ThriftReader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, size):
        chunk = self.data[self.pos:self.pos + size]
        assert len(chunk) == size, "thrift data cut off"
        self.pos += size
        return chunk

    def varint(self):
        result = shift = 0
        while True:
            byte = self.take(1)[0]
            result |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return result

    def zigzag(self):
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def value(self, kind):
        if kind in (T_TRUE, T_FALSE):  # a struct field's bool lives in its type
            return kind == T_TRUE
        if kind == T_BYTE:
            return self.take(1)[0]
        if kind in (T_I16, T_I32, T_I64):
            return self.zigzag()
        if kind == T_DOUBLE:
            return self.take(8)
        if kind == T_BINARY:
            return self.take(self.varint())
        if kind in (T_LIST, T_SET):
            header = self.take(1)[0]
            size, element = header >> 4, header & 0x0F
            if size == 15:
                size = self.varint()
            # A bool inside a list is one byte of its own.
            read = self.take_byte if element in (T_TRUE, T_FALSE) else lambda: self.value(element)
            return (element, [read() for _ in range(size)])
        if kind == T_STRUCT:
            return self.struct()
        raise ValueError(f"thrift type {kind} is not used by parquet footers")

    def take_byte(self):
        return self.take(1)[0]

    def struct(self):
        fields, last_id = [], 0
        while True:
            header = self.take(1)[0]
            if header == 0:
                return fields
            delta, kind = header >> 4, header & 0x0F
            field_id = last_id + delta if delta else self.zigzag()
            fields.append([field_id, kind, self.value(kind)])
            last_id = field_id


def thrift_varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def thrift_zigzag(n):
    return thrift_varint((n << 1) ^ (n >> 63))


def thrift_value(kind, value):
    if kind == T_BYTE:
        return bytes([value])
    if kind in (T_I16, T_I32, T_I64):
        return thrift_zigzag(value)
    if kind == T_DOUBLE:
        return value
    if kind == T_BINARY:
        return thrift_varint(len(value)) + value
    if kind in (T_LIST, T_SET):
        element, items = value
        header = bytes([len(items) << 4 | element]) if len(items) < 15 else \
            bytes([0xF0 | element]) + thrift_varint(len(items))
        if element in (T_TRUE, T_FALSE):
            return header + bytes(items)
        return header + b"".join(thrift_value(element, item) for item in items)
    if kind == T_STRUCT:
        return thrift_struct(value)
    raise ValueError(f"thrift type {kind} is not used by parquet footers")


def thrift_struct(fields):
    out, last_id = bytearray(), 0
    for field_id, kind, value in fields:
        if kind in (T_TRUE, T_FALSE):
            kind, payload = (T_TRUE if value else T_FALSE), b""
        else:
            payload = thrift_value(kind, value)
        delta = field_id - last_id
        if 0 < delta <= 15:
            out += bytes([delta << 4 | kind])
        else:  # the long form: the type, then the id itself
            out += bytes([kind]) + thrift_zigzag(field_id)
        out += payload
        last_id = field_id
    return bytes(out + b"\x00")


def thrift_field(fields, field_id):
    return next((value for fid, _, value in fields if fid == field_id), None)


def set_thrift_field(fields, field_id, value):
    next(field for field in fields if field[0] == field_id)[2] = value


def drop_thrift_fields(fields, *field_ids):
    fields[:] = [field for field in fields if field[0] not in field_ids]


# parquet.thrift field ids used below.
FILE_SCHEMA, FILE_ROW_GROUPS, FILE_KEY_VALUE_METADATA = 2, 4, 5
SCHEMA_REPETITION, SCHEMA_NAME, SCHEMA_NUM_CHILDREN, SCHEMA_CONVERTED_TYPE, SCHEMA_LOGICAL_TYPE = \
    3, 4, 5, 6, 10
ROW_GROUP_COLUMNS, CHUNK_META_DATA, META_PATH_IN_SCHEMA = 1, 3, 3
REPEATED = 2


def read_footer(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data[-4:] == b"PAR1"
    size = int.from_bytes(data[-8:-4], "little")
    footer = data[-8 - size:-8]
    metadata = ThriftReader(footer).struct()
    assert thrift_struct(metadata) == footer, "the thrift codec does not reproduce the footer"
    return data[:-8 - size], metadata


def write_footer(path, body, metadata):
    footer = thrift_struct(metadata)
    with open(path, "wb") as f:
        f.write(body + footer + len(footer).to_bytes(4, "little") + b"PAR1")


def schema_names(metadata):
    schema = thrift_field(metadata, FILE_SCHEMA)[1]
    return [thrift_field(element, SCHEMA_NAME).decode() for element in schema]


def rewrite_list_column(metadata, column, form, repeated_name=None):
    """Rewrites the three-level list column `column` (written by pyarrow as
    <column> (LIST) { repeated group list { required group element { fields } } }) into:
      "two_level":  <column> (LIST) { repeated group <repeated_name> { fields } }
      "one_level":  repeated group <column> { fields }
      "renamed":    <column> (LIST) { repeated group <repeated_name> { element } }
      "unannotated": the same three levels without the LIST annotation.
    Fixes path_in_schema of every chunk to match."""
    schema = thrift_field(metadata, FILE_SCHEMA)[1]
    names = schema_names(metadata)
    at = names.index(column)
    assert names[at + 1:at + 3] == ["list", "element"], names
    outer, repeated, element = schema[at:at + 3]
    if form == "two_level":
        set_thrift_field(repeated, SCHEMA_NAME, repeated_name.encode())
        set_thrift_field(repeated, SCHEMA_NUM_CHILDREN, thrift_field(element, SCHEMA_NUM_CHILDREN))
        drop_thrift_fields(outer, SCHEMA_LOGICAL_TYPE)  # old Java writers: the converted type only
        del schema[at + 2]
        new_prefix = [column, repeated_name]
    elif form == "one_level":
        set_thrift_field(outer, SCHEMA_REPETITION, REPEATED)
        set_thrift_field(outer, SCHEMA_NUM_CHILDREN, thrift_field(element, SCHEMA_NUM_CHILDREN))
        drop_thrift_fields(outer, SCHEMA_CONVERTED_TYPE, SCHEMA_LOGICAL_TYPE)
        del schema[at + 1:at + 3]
        new_prefix = [column]
    elif form == "renamed":
        set_thrift_field(repeated, SCHEMA_NAME, repeated_name.encode())
        new_prefix = [column, repeated_name, "element"]
    else:
        assert form == "unannotated"
        drop_thrift_fields(outer, SCHEMA_CONVERTED_TYPE, SCHEMA_LOGICAL_TYPE)
        new_prefix = [column, "list", "element"]
    for row_group in thrift_field(metadata, FILE_ROW_GROUPS)[1]:
        for chunk in thrift_field(row_group, ROW_GROUP_COLUMNS)[1]:
            chunk_meta = thrift_field(chunk, CHUNK_META_DATA)
            element_type, path = thrift_field(chunk_meta, META_PATH_IN_SCHEMA)
            if path[:3] == [column.encode(), b"list", b"element"]:
                new_path = [part.encode() for part in new_prefix] + path[3:]
                set_thrift_field(chunk_meta, META_PATH_IN_SCHEMA, (element_type, new_path))


def write_legacy_list_file(name, table, forms, **options):
    """Writes `table` with pyarrow, then rewrites the columns of `forms`
    ({column: (form, repeated_name)}) into their legacy forms. pyarrow's stored arrow schema is
    dropped, so that readers see the parquet schema alone. Returns the path."""
    path = os.path.join(OUT, name + ".parquet")
    pq.write_table(table, path, **options)
    body, metadata = read_footer(path)
    drop_thrift_fields(metadata, FILE_KEY_VALUE_METADATA)
    for column, (form, repeated_name) in forms.items():
        rewrite_list_column(metadata, column, form, repeated_name)
    write_footer(path, body, metadata)
    print(f"{name}.parquet: {os.path.getsize(path)} bytes")
    return path


def legacy_list_table(columns, list_nullable):
    """A table of `columns` ({name: cells}), each typed by its cells: integers, strings or message
    lists. A message list gets a required element struct, as the legacy forms have (their
    elements cannot be null), and nullable role and content."""
    fields = []
    for name, cells in columns.items():
        sample = next(cell for cell in cells if cell is not None)
        if isinstance(sample, int):
            fields.append(pa.field(name, pa.int64(), nullable=False))
        elif isinstance(sample, list):
            element = pa.field("element", MESSAGE, nullable=False)
            fields.append(pa.field(name, pa.list_(element), nullable=list_nullable))
        else:
            fields.append(pa.field(name, pa.string()))
    return pa.Table.from_pydict(columns, schema=pa.schema(fields))


def expect_same_rows(path, table, columns):
    """pyarrow reads the rewritten columns back as lists of role/content structs, cell for cell."""
    readback = pq.read_table(path, columns=columns)
    for name in columns:
        arrow_type = readback.schema.field(name).type
        assert pa.types.is_list(arrow_type) and \
            [f.name for f in arrow_type.value_type] == ["role", "content"], (name, arrow_type)
        assert readback.column(name).to_pylist() == table.column(name).to_pylist(), name


def expect_list_of_wrapped_messages(path, column):
    """pyarrow reads `column` as a list of one-field structs that hold the message, which is not a
    message list: the repeated group, named "array" or "..._tuple", is the element."""
    arrow_type = pq.read_schema(path).field(column).type
    assert pa.types.is_list(arrow_type), (column, arrow_type)
    assert [f.name for f in arrow_type.value_type] == ["element"], (column, arrow_type)


def small_legacy_rows(num_rows, seed):
    """make_rows' rows with the long message cut to 1500 characters: still longer than a page."""
    rows = make_rows(num_rows, seed)
    long_message = rows["chosen"][0][0]
    long_message["content"] = long_message["content"][:1500]
    return rows


def write_legacy_list_fixtures():
    small_pages = dict(row_group_size=20, data_page_size=512, write_batch_size=16,
                       write_statistics=False)  # statistics would repeat the long message
    # Two levels, as parquet-avro writes them: the repeated group "array" is the message. Null and
    # empty lists, null role and content, two row groups and a message longer than a page.
    table = legacy_list_table(small_legacy_rows(36, seed=16), list_nullable=True)
    two_level = {"prompt": ("two_level", "array"), "chosen": ("two_level", "array")}
    path = write_legacy_list_file("messages_two_level", table, two_level, compression="snappy",
                                  use_dictionary=True, data_page_version="1.0", **small_pages)
    expect_same_rows(path, table, ["prompt", "chosen"])
    write_expected(path)

    # The repeated group's name matters when it has one field: "array" or "<list name>_tuple" is
    # the element itself (here a one-field struct around the message), another name wraps the
    # element (three levels; "bag" is Hive's). With two or more fields the repeated group is the
    # element whatever its name ("prompt_tuple" here). Without the LIST annotation the outer group
    # is a struct.
    rows = make_rows(12, seed=19)
    columns = {"id": rows["id"], "prompt": rows["prompt"],
               "legacy": make_rows(12, seed=20)["prompt"]}
    refused = {"wrapped": ("renamed", "array"), "nested": ("renamed", "nested_tuple"),
               "foreign": ("renamed", "turns_tuple"), "unannotated": ("unannotated", None)}
    columns.update({name: rows["prompt"] for name in refused})
    table = legacy_list_table(columns, list_nullable=True)
    path = write_legacy_list_file("messages_two_level_names", table,
                                  {"prompt": ("two_level", "prompt_tuple"),
                                   "legacy": ("renamed", "bag"), **refused},
                                  compression="snappy", **small_pages)
    expect_same_rows(path, table, ["prompt", "legacy"])
    for name in ("wrapped", "nested", "foreign"):
        expect_list_of_wrapped_messages(path, name)
    assert pa.types.is_struct(pq.read_schema(path).field("unannotated").type)
    save_json(path.replace(".parquet", ".expected.json"),
              expected_cells(pq.read_table(path, columns=["id", "prompt", "legacy"])))

    # One level: a bare repeated group at the top level, a required list of required messages.
    rows = small_legacy_rows(30, seed=17)
    for name in ("prompt", "chosen"):
        rows[name] = [cell or [] for cell in rows[name]]  # such a list cannot be null
    table = legacy_list_table(rows, list_nullable=False)
    path = write_legacy_list_file("messages_one_level", table,
                                  {"prompt": ("one_level", None), "chosen": ("one_level", None)},
                                  compression="zstd", use_dictionary=False, data_page_version="2.0",
                                  **small_pages)
    expect_same_rows(path, table, ["prompt", "chosen"])
    write_expected(path)

    # preference_trl_messages.parquet's rows with every message list in two levels.
    trl_rows = pq.read_table(os.path.join(OUT, "preference_trl_messages.parquet"))
    table = legacy_list_table(trl_rows.to_pydict(), list_nullable=True)
    path = write_legacy_list_file("preference_trl_messages_two_level", table,
                                  {name: ("two_level", "array") for name in table.column_names})
    expect_same_rows(path, table, table.column_names)
    assert table.to_pylist() == trl_rows.to_pylist()


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
    write_legacy_list_fixtures()
    write_multiturn_preference_fixtures()
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT)
                if f.startswith(("messages_", "preference_")))
    print(f"message fixture bytes: {total}")


if __name__ == "__main__":
    main()
