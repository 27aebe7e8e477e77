#!/usr/bin/env python3
"""Build the fixtures of the `lapidary-data` tests in tests/fixtures/data/.

Run from anywhere with a Python that has datasets, pyarrow, jinja2 and transformers
(scripts/requirements.txt):

    python scripts/make_data_fixtures.py

What it writes (all small, all deterministic):
- rows.jsonl                the reference rows, one format mix: text, prompt/completion, messages, alpaca, tokens
- rows.parquet              the same rows as one Parquet file (row groups of 4 rows, so several batches)
- rows_shards/              the same rows as two Parquet shards (part-00000, part-00001)
- rows.arrow                the same rows as an Arrow IPC *file* (ARROW1 magic)
- rows.stream.arrow         the same rows as an Arrow IPC *stream*
- rows_disk/                `datasets.Dataset.save_to_disk` of the same rows (two data-*.arrow stream shards)
- rows_dict/                `datasets.DatasetDict({"train": ...}).save_to_disk` (the reader must refuse it clearly)
- bad.jsonl, missing.jsonl, notobject.jsonl   malformed inputs for the error tests
- chat_template.json        the Gemma 3 chat template and transformers' `apply_chat_template(tokenize=False)` output
                            for each conversation case

The Arrow schema is the union of all columns, so a row has nulls in the columns of the other formats; the
Rust reader treats a null like an absent field, which is what makes the streams identical to rows.jsonl.
"""

import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import datasets  # noqa: E402
import jinja2  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "data"
TINY = ROOT / "tests" / "fixtures" / "tiny"

# The chat template of the instruction-tuned Gemma 3 checkpoints (google/gemma-3-270m-it, -1b-it, ...), the
# `chat_template` of their tokenizer_config.json, verbatim. The 270M GGUF used by the model tests carries no
# chat template, so the string lives here. Note what it does: the system message is *not* trimmed and is
# followed by "\n\n"; every turn's content is trimmed (jinja `trim` = Python `str.strip()`); `assistant`
# becomes `model`; roles must alternate user/model starting with user.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\\n'}}\n"
    "{%- endif -%}\n"
)

CHAT_CASES = [
    ("single_turn", [{"role": "user", "content": "Hello"}], False),
    ("single_turn_generation_prompt", [{"role": "user", "content": "Hello"}], True),
    (
        "multi_turn",
        [
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4."},
            {"role": "user", "content": "And 3+3?"},
            {"role": "assistant", "content": "6."},
        ],
        False,
    ),
    (
        "system_prompt",
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name a fruit."},
            {"role": "assistant", "content": "Apple."},
        ],
        False,
    ),
    (
        "system_prompt_generation_prompt",
        [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello"}],
        True,
    ),
    ("model_role", [{"role": "user", "content": "Hi"}, {"role": "model", "content": "Hi there!"}], False),
    (
        "whitespace",
        [
            {"role": "system", "content": "  Keep the spaces of the system prompt.\n"},
            {"role": "user", "content": "  \n padded question \t\n"},
            {"role": "assistant", "content": "\n\n answer with trailing space  "},
            {"role": "user", "content": "inner  double\n\nnewlines stay"},
        ],
        True,
    ),
    (
        "content_parts",
        [
            {"role": "user", "content": [{"type": "text", "text": " first part "}, {"type": "text", "text": "second"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "ok "}]},
        ],
        False,
    ),
    ("unicode", [{"role": "user", "content": "héllo — 你好 🙂"}, {"role": "assistant", "content": "¡hola!"}], False),
    ("system_only", [{"role": "system", "content": "Nobody speaks."}], True),
]

# The reference rows: every row format, in one stream. Nulls in Arrow stand for the absent keys here.
ROWS = [
    {"text": "The river ran quietly past the old mill."},
    {"prompt": "Question: what turns the wheel?\nAnswer:", "completion": " The water."},
    {"messages": [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "Hello! How can I help?"}]},
    {"instruction": "Name a colour.", "input": "", "output": "Blue."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    {"input_ids": [2, 40, 41, 42, 1]},
    {"input_ids": [2, 50, 51, 52, 53], "labels": [-100, -100, 51, 52, 53]},
    {
        "messages": [
            {"role": "system", "content": "You are a miller."},
            {"role": "user", "content": "How many sacks?"},
            {"role": "assistant", "content": "Twelve sacks."},
            {"role": "user", "content": "And tomorrow?"},
            {"role": "assistant", "content": "Twelve more."},
        ]
    },
    {"text": "Every morning she counted the sacks of grain and wrote the numbers in a small book."},
    {"prompt": "Say yes.", "completion": "Yes"},
    {"messages": [{"role": "user", "content": "Ping"}, {"role": "model", "content": "Pong"}]},
    {"text": "Short."},
]

COLUMNS = ["text", "prompt", "completion", "messages", "instruction", "input", "output", "input_ids", "labels"]
SCHEMA = pa.schema(
    [
        ("text", pa.string()),
        ("prompt", pa.string()),
        ("completion", pa.string()),
        ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("instruction", pa.string()),
        ("input", pa.string()),
        ("output", pa.string()),
        ("input_ids", pa.list_(pa.int64())),
        ("labels", pa.list_(pa.int64())),
    ]
)


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def table(rows):
    return pa.Table.from_pylist([{c: r.get(c) for c in COLUMNS} for r in rows], schema=SCHEMA)


def chat_fixture():
    tok = AutoTokenizer.from_pretrained(str(TINY))
    tok.chat_template = GEMMA3_CHAT_TEMPLATE
    cases = []
    for name, messages, gen in CHAT_CASES:
        rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        # The same template rendered by plain jinja2 must agree (guards against a transformers-side rewrite).
        env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        direct = env.from_string(GEMMA3_CHAT_TEMPLATE).render(
            messages=messages, bos_token="<bos>", add_generation_prompt=gen, raise_exception=None
        )
        assert rendered == direct, (name, rendered, direct)
        cases.append({"name": name, "messages": messages, "add_generation_prompt": gen, "rendered": rendered})
    return {
        "source": "google/gemma-3-*-it tokenizer_config.json chat_template; rendered with "
        f"transformers {transformers.__version__} apply_chat_template(tokenize=False), bos_token '<bos>'",
        "template": GEMMA3_CHAT_TEMPLATE,
        "cases": cases,
    }


def main():
    if not (TINY / "tokenizer.json").exists():
        sys.exit(f"missing {TINY / 'tokenizer.json'}: run scripts/make_fixtures.py first")
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)

    write_jsonl(OUT / "rows.jsonl", ROWS)
    t = table(ROWS)
    pq.write_table(t, OUT / "rows.parquet", row_group_size=4)
    (OUT / "rows_shards").mkdir()
    pq.write_table(table(ROWS[:7]), OUT / "rows_shards" / "part-00000.parquet")
    pq.write_table(table(ROWS[7:]), OUT / "rows_shards" / "part-00001.parquet")
    with pa.OSFile(str(OUT / "rows.arrow"), "wb") as sink, pa.ipc.new_file(sink, SCHEMA) as w:
        for b in t.to_batches(max_chunksize=5):
            w.write_batch(b)
    with pa.OSFile(str(OUT / "rows.stream.arrow"), "wb") as sink, pa.ipc.new_stream(sink, SCHEMA) as w:
        for b in t.to_batches(max_chunksize=5):
            w.write_batch(b)

    features = datasets.Features.from_arrow_schema(SCHEMA)
    ds = datasets.Dataset.from_dict({c: [r.get(c) for r in ROWS] for c in COLUMNS}, features=features)
    ds.save_to_disk(str(OUT / "rows_disk"), num_shards=2)
    datasets.DatasetDict({"train": ds}).save_to_disk(str(OUT / "rows_dict"))

    with open(OUT / "bad.jsonl", "w", encoding="utf-8") as f:
        f.write('{"text": "fine"}\n\n{"text": "broken"\n{"text": "after"}\n')
    with open(OUT / "missing.jsonl", "w", encoding="utf-8") as f:
        f.write('{"prompt": "a", "completion": "b"}\n{"prompt": "no completion here"}\n')
    with open(OUT / "notobject.jsonl", "w", encoding="utf-8") as f:
        f.write('{"text": "fine"}\n[1, 2, 3]\n')

    with open(OUT / "chat_template.json", "w", encoding="utf-8") as f:
        json.dump(chat_fixture(), f, ensure_ascii=False, indent=1)
        f.write("\n")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({total} bytes); datasets {datasets.__version__}, pyarrow {pa.__version__}")


if __name__ == "__main__":
    main()
