#!/usr/bin/env python3
"""Build the chat-template fixtures of the `lapidary-data` tests: checkpoint directories that ship a chat template
(in each layout transformers reads) and transformers' `apply_chat_template(tokenize=False)` of a set of
conversations for each.

    python scripts/make_chat_fixtures.py

Needs transformers (scripts/requirements.txt) and tests/fixtures/tiny/tokenizer.json (scripts/make_fixtures.py).
What it writes, under tests/fixtures/data/:

- chat/gemma2/tokenizer_config.json        the tiny tokenizer's config with `chat_template` as a string (the layout of
                                           google/gemma-2-2b-it and the Gemma 1 checkpoints)
- chat/gemma3/chat_template.jinja          a `chat_template.jinja` file beside a config without the key (the layout
  chat/gemma3/tokenizer_config.json        transformers >= 4.43 saves)
- chat/gemma3_named/tokenizer_config.json  `chat_template` as a list of {name, template}: `default` is Gemma 3's, and a
                                           second entry that must not be used
- chat/gemma4/chat_template.jinja          Gemma 4's template (an input of this script: it is not rewritten)
  chat/gemma4/tokenizer_config.json
- chat_templates.json                      for each directory, every conversation case with what transformers renders
                                           from that directory, or the error it raises; the same for a template that
                                           exercises transformers' Python extras (`pycompat`); Python's strftime and
                                           float repr of a few values

Where the templates come from:
- gemma2: google/gemma-2-2b-it's `chat_template`, as llama.cpp stores it (models/templates/google-gemma-2-2b-it.jinja,
  written by its scripts/get_chat_template.py from the Hub).
- gemma3: google/gemma-3-*-it's, the `template` of tests/fixtures/data/chat_template.json (scripts/make_data_fixtures.py).
- gemma4: the Gemma 4 instruction-tuned template as llama.cpp stores it (models/templates/gemma4.jinja), the template
  shipped in the Gemma 4 checkpoints and GGUFs at release. Google has revised the template on the Hub since (tool and
  reasoning handling); the turn format for plain conversations is the same. Not checked byte for byte against the Hub.

Each directory is loaded with `AutoTokenizer.from_pretrained` from a temporary copy that also holds the tiny
tokenizer's tokenizer.json, so the renderings are of the template transformers itself resolves from that layout.
"""

import datetime
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import transformers  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "fixtures" / "tiny"
DATA = ROOT / "tests" / "fixtures" / "data"
CHAT = DATA / "chat"

GEMMA2_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)


# Not a checkpoint's: one template using what transformers' environment offers beyond plain Jinja (Python str and
# dict methods, `tojson` with options, Python's printing of True/None/floats, namespace, break, trim_blocks and
# lstrip_blocks on indented block tags, raise_exception), rendered by transformers like the others.
PYCOMPAT_TEMPLATE = """{%- set ns = namespace(n=0) -%}
{% for m in messages %}
    {% if m.content is string and m.content.strip().startswith('stop') %}
        {% break %}
    {% endif %}
    {% set ns.n = ns.n + 1 %}
[{{ loop.index0 }}|{{ m.role | upper }}|{{ m.content | trim if m.content is string else 'parts' }}|{{ m.get('name', 'anon') }}|{{ m.content is string }}|{{ m.content.split(' ') | length if m.content is string else m.content | length }}]
{% endfor %}
n={{ ns.n }} gen={{ add_generation_prompt }} tools={{ tools }} bos={{ bos_token }} eos={{ eos_token }} half={{ 1 / 2 }} tiny={{ 1 / 100000 }} big={{ 1e20 }} whole={{ 4 / 2 }}
{% for k, v in messages[0].items() %}{{ k }}={{ v if v is string else 'list' }};{% endfor %}

{{ messages[0] | tojson }}
{{ {'b': 1, 'a': [true, none, 'x"y\\z', 0.5]} | tojson(indent=2, sort_keys=true) }}
{{ {'é': 'ü'} | tojson(ensure_ascii=true, separators=[',', ':']) }}
{{ messages | length }} {{ messages[-1].role }} {{ messages[1:] | map(attribute='role') | join(',') }} {{ 'a-b-c'.replace('-', '+') }} {{ 'Hello'.endswith('lo') }}
{% if messages[0].role == 'bad' %}{{ raise_exception('bad first role: ' + messages[0].role) }}{% endif %}
"""


# Python's own strftime (C locale) and float repr, for the Rust implementations of `strftime_now` and printing.
STRFTIME_TIMESTAMP = 1_780_000_000  # 2026-05-28, a Thursday
STRFTIME_FORMATS = ["%Y-%m-%d", "%d %B %Y", "%A %b %d %H:%M:%S", "%y %j %I %p %a", "%e %h %F %T", "100%% %Q"]
FLOATS = [0.5, 1.0, 0.1, 1e-05, 0.0001, 123456789.0, 1e16, 1.5e16, 9999999999999998.0, 2.5e-07, -3.0, 1e300, 0.0]


def user(c):
    return {"role": "user", "content": c}


def model(c):
    return {"role": "assistant", "content": c}


def system(c):
    return {"role": "system", "content": c}


def parts(role, *texts):
    return {"role": role, "content": [{"type": "text", "text": t} for t in texts]}


PYCOMPAT_CASES = [
    ("two_turns", [user("  hello world "), model("fine thanks")], True),
    ("break_at_stop", [user("x"), model(" stop here"), user("never shown")], False),
    ("parts", [parts("user", "a", "b"), model("c")], False),
    ("raises", [{"role": "bad", "content": "z"}, user("y")], False),
]

# (name, messages, add_generation_prompt). A template that raises on a case records the error instead.
CASES = [
    ("single_turn", [user("Hello")], False),
    ("single_turn_generation_prompt", [user("Hello")], True),
    ("multi_turn", [user("What is 2+2?"), model("4."), user("And 3+3?"), model("6.")], False),
    ("multi_turn_generation_prompt", [user("What is 2+2?"), model("4."), user("And 3+3?")], True),
    ("system_prompt", [system("You are terse."), user("Name a fruit."), model("Apple.")], False),
    ("system_prompt_generation_prompt", [system("Answer in French."), user("Hello")], True),
    (
        "system_multi_turn",
        [system("Be brief."), user("Hi"), model(" Hello. "), user("Bye"), {"role": "model", "content": "Bye."}],
        False,
    ),
    ("model_role", [user("Hi"), {"role": "model", "content": "Hi there!"}], False),
    (
        "whitespace",
        [
            system("  Keep the spaces of the system prompt.\n"),
            user("  \n padded question \t\n"),
            model("\n\n answer with trailing space  "),
            user("inner  double\n\nnewlines stay"),
        ],
        True,
    ),
    ("empty_model_turn", [user("Say nothing."), model(""), user("Thanks")], False),
    ("unicode", [user("héllo — 你好 🙂"), model("¡hola!")], False),
    ("thinking_in_model_turn", [user("2+2?"), model("<|channel>thought\nEasy.<channel|>4")], False),
    ("tool_role", [user("Look it up."), {"role": "tool", "content": "42"}], False),
    ("system_only", [system("Nobody speaks.")], True),
    # What some templates reject.
    ("roles_not_alternating", [user("a"), user("b")], False),
    ("model_first", [model("I speak first.")], False),
    ("system_then_model", [system("s"), user("a"), model("b"), model("c")], False),
    ("empty", [], False),
]

# Content as a list of text parts, for the templates that read parts there. Elsewhere a template prints the list's
# Python repr (Gemma 2 for every turn, Gemma 4 for the system turn), which the Rust renderer refuses to imitate.
CONTENT_PARTS = ("content_parts", [parts("user", " first part ", "second"), parts("assistant", "ok ")], False)
SYSTEM_PARTS = ("system_parts", [parts("system", "Be kind."), parts("user", "Hi")], True)
PART_CASES = {"gemma2": [], "gemma3": [CONTENT_PARTS, SYSTEM_PARTS], "gemma4": [CONTENT_PARTS]}


def load_via(layout_files, check):
    """Loads a tokenizer from a temporary directory holding the tiny tokenizer plus `layout_files`."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in ("tokenizer.json", "special_tokens_map.json"):
            shutil.copy(TINY / name, tmp / name)
        for name, text in layout_files.items():
            (tmp / name).write_text(text, encoding="utf-8")
        tok = AutoTokenizer.from_pretrained(str(tmp))
    assert check(tok.chat_template), f"transformers resolved another template: {tok.chat_template!r:.200}"
    return tok


def render_cases(tok, part_cases):
    out = []
    for name, messages, gen in CASES + part_cases:
        case = {"name": name, "messages": messages, "add_generation_prompt": gen}
        try:
            case["rendered"] = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        except Exception as e:  # the template's raise_exception (TemplateError) or transformers' own ValueError
            case["error"] = str(e)
            case["error_type"] = type(e).__name__
        out.append(case)
    return out


def main():
    if not (TINY / "tokenizer.json").exists():
        sys.exit(f"missing {TINY / 'tokenizer.json'}: run scripts/make_fixtures.py first")
    gemma3 = json.loads((DATA / "chat_template.json").read_text(encoding="utf-8"))["template"]
    gemma4_path = CHAT / "gemma4" / "chat_template.jinja"
    gemma4 = gemma4_path.read_text(encoding="utf-8")
    config = json.loads((TINY / "tokenizer_config.json").read_text(encoding="utf-8"))
    plain_config = json.dumps(config, indent=2, ensure_ascii=False) + "\n"

    dirs = {
        "gemma2": {"tokenizer_config.json": json.dumps({**config, "chat_template": GEMMA2_TEMPLATE}, indent=2) + "\n"},
        "gemma3": {"tokenizer_config.json": plain_config, "chat_template.jinja": gemma3},
        "gemma3_named": {
            "tokenizer_config.json": json.dumps(
                {
                    **config,
                    "chat_template": [
                        {"name": "tool_use", "template": "{{ raise_exception('not the default template') }}"},
                        {"name": "default", "template": gemma3},
                    ],
                },
                indent=2,
            )
            + "\n"
        },
        "gemma4": {"tokenizer_config.json": plain_config, "chat_template.jinja": gemma4},
    }
    expect = {"gemma2": GEMMA2_TEMPLATE, "gemma3": gemma3, "gemma3_named": gemma3, "gemma4": gemma4}
    sources = {
        "gemma2": "google/gemma-2-2b-it chat_template (llama.cpp models/templates/google-gemma-2-2b-it.jinja); "
        "tokenizer_config.json `chat_template` string",
        "gemma3": "google/gemma-3-*-it chat_template; chat_template.jinja file",
        "gemma3_named": "google/gemma-3-*-it chat_template as the `default` of a tokenizer_config.json "
        "`chat_template` list",
        "gemma4": "Gemma 4 -it chat_template at release (llama.cpp models/templates/gemma4.jinja); "
        "chat_template.jinja file",
    }

    fixture = {"transformers": transformers.__version__, "bos_token": "<bos>", "templates": []}
    for name, files in dirs.items():
        tok = load_via(files, lambda t, want=expect[name]: t == want or (isinstance(t, dict) and t.get("default") == want))
        out = CHAT / name
        if name != "gemma4" and out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        for file, text in files.items():
            if file == "chat_template.jinja" and name == "gemma4":
                continue  # the input itself
            (out / file).write_text(text, encoding="utf-8")
        fixture["templates"].append(
            {
                "name": name,
                "dir": f"chat/{name}",
                "source": sources[name],
                "cases": render_cases(tok, PART_CASES[name.removesuffix("_named")]),
            }
        )

    tok = load_via({"tokenizer_config.json": plain_config}, lambda t: t is None)
    tok.chat_template = PYCOMPAT_TEMPLATE
    pycompat = []
    for name, messages, gen in PYCOMPAT_CASES:
        case = {"name": name, "messages": messages, "add_generation_prompt": gen}
        try:
            case["rendered"] = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        except Exception as e:
            case["error"] = str(e)
            case["error_type"] = type(e).__name__
        pycompat.append(case)
    fixture["templates"].append(
        {"name": "pycompat", "template": PYCOMPAT_TEMPLATE, "source": "written for this test", "cases": pycompat}
    )
    when = datetime.datetime.fromtimestamp(STRFTIME_TIMESTAMP, datetime.timezone.utc)
    fixture["strftime"] = {"timestamp": STRFTIME_TIMESTAMP, "cases": {f: when.strftime(f) for f in STRFTIME_FORMATS}}
    fixture["floats"] = [[x, repr(x)] for x in FLOATS]

    with open(DATA / "chat_templates.json", "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, indent=1)
        f.write("\n")
    n = sum(len(t["cases"]) for t in fixture["templates"])
    print(f"wrote {CHAT} and chat_templates.json ({n} cases); transformers {transformers.__version__}")


if __name__ == "__main__":
    main()
