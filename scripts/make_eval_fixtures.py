#!/usr/bin/env python3
"""Build the fixtures of `lapidary eval --metric choice|exact_match` (tests/eval_metrics.rs).

    python scripts/make_eval_fixtures.py    # from the repository root, any Python with scripts/requirements.txt

Uses the tiny random Gemma 3 of tests/fixtures/tiny/gemma3 (CPU, float32, eager attention) and writes
tests/fixtures/eval/:

- choice.jsonl + choice_reference.json: multiple-choice rows and, per choice, the continuation
  log-likelihood computed the way lm-evaluation-harness does it (HFLM, `_encode_pair`):
  the request is (context=prompt, continuation=" " + choice) (lm-eval's default target_delimiter);
  trailing whitespace of the context moves onto the continuation; context and context+continuation are
  each tokenized with BOS (lm-eval sets add_bos_token for Gemma); the continuation tokens are the tail of
  the whole encoding after len(context tokens); loglikelihood = sum of log-softmax of those tokens.
  acc = [argmax ll == gold], acc_norm = [argmax ll / len(choice) == gold] with len in characters of the
  choice as written (np.argmax: first index wins ties).
- exact_match.jsonl + exact_match_reference.json: a prompt whose greedy continuation (transformers'
  `generate`, do_sample=False) is clean text; one row's answer is that continuation written differently
  (case, spacing, a trailing period: equal after normalisation), one row's answer is wrong.
  Also a chat row (`messages`) whose greedy answer under the Gemma chat template is recorded.
Nothing here is hand-written; rerunning gives identical files.
"""

import json
import os
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

torch.set_num_threads(2)
ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "tests/fixtures/tiny/gemma3"
OUT = ROOT / "tests/fixtures/eval"

tok = AutoTokenizer.from_pretrained(MODEL)
model = AutoModelForCausalLM.from_pretrained(MODEL, torch_dtype=torch.float32, attn_implementation="eager").eval()


def encode_pair(context, continuation):
    """lm_eval.api.model.TemplateLM._encode_pair (causal branch), HFLM.tok_encode with add_bos_token=True."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok(context + continuation, add_special_tokens=True).input_ids
    ctx = tok(context, add_special_tokens=True).input_ids
    return ctx, whole[len(ctx):]


@torch.no_grad()
def loglikelihood(ctx, cont):
    ids = torch.tensor([(ctx + cont)[:-1]])
    logp = torch.log_softmax(model(ids).logits[0].double(), -1)
    return float(sum(logp[len(ctx) - 1 + i, t] for i, t in enumerate(cont)))


def score(row, delimiter=" "):
    lls, conts = [], []
    for c in row["choices"]:
        ctx, cont = encode_pair(row["prompt"], delimiter + c)
        conts.append(cont)
        lls.append(loglikelihood(ctx, cont))
    lens = np.array([float(len(c)) for c in row["choices"]])
    pred, pred_norm = int(np.argmax(lls)), int(np.argmax(np.array(lls) / lens))
    return {"lls": lls, "continuation_ids": conts, "pred": pred, "pred_norm": pred_norm,
            "acc": float(pred == row["answer"]), "acc_norm": float(pred_norm == row["answer"])}


def choice_fixtures():
    rows = [
        {"prompt": "The cat sat on the", "choices": ["wall.", "mat", "model"], "answer": 0},
        # Trailing space: lm-eval moves it onto the continuation (then "  wall" starts with two spaces).
        {"prompt": "Small models run quickly on a ", "choices": ["laptop", "cloud", "train"], "answer": 0},
        {"prompt": "Q: What is two plus two?\nA:", "choices": ["four", "five", "twenty two"], "answer": 0},
        {"prompt": "Tests stay fast because", "choices": ["the model is tiny", "yes"], "answer": 1},
    ]
    # The normalisation case: find a (short wrong, long right) pair where the long choice loses on total
    # log-likelihood but wins per character, so acc = 0 and acc_norm = 1 for that row.
    shorts = ["a", "no", "it", "the"]
    longs = ["the quick quantized model runs on a laptop", "small models run quickly and the tests stay fast",
             "morning light on the wall of the house"]
    norm_row = None
    for s in shorts:
        for lg in longs:
            r = {"prompt": "The answer is", "choices": [s, lg], "answer": 1}
            sc = score(r)
            if sc["pred"] == 0 and sc["pred_norm"] == 1:
                norm_row = r
                break
        if norm_row:
            break
    assert norm_row, "no row where acc and acc_norm differ; extend the candidates"
    rows.append(norm_row)
    refs = [score(r) for r in rows]
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "choice.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    json.dump({
        "model": "tiny/gemma3", "target_delimiter": " ", "rows": refs,
        "acc": float(np.mean([r["acc"] for r in refs])), "acc_norm": float(np.mean([r["acc_norm"] for r in refs])),
        "norm_row": len(rows) - 1,
    }, open(OUT / "choice_reference.json", "w"), indent=1)
    print("choice:", [[round(x, 4) for x in r["lls"]] for r in refs], [(r["acc"], r["acc_norm"]) for r in refs])


@torch.no_grad()
def greedy(ids, n, stop=(1, 5)):
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=list(stop),
                         pad_token_id=0)
    return out[0, len(ids):].tolist()


def exact_match_fixtures():
    candidates = [(n, p) for n in (4, 3, 2) for p in [
        "The cat sat on the", "Small models run", "A laptop is", "The tests", "Quantized weights",
        "In the morning", "The model", "The wall", "Fast tests", "Small models run quickly on a laptop"]]
    for n, prompt in candidates:
        ids = tok(prompt).input_ids
        new = greedy(ids, n)
        text = tok.decode(new, skip_special_tokens=True)
        if all(t >= 262 for t in new) and len(new) == n and text.strip() and "\n" not in text:
            break
    else:
        raise SystemExit("no prompt with a clean greedy continuation; extend the candidates")
    # Written differently but equal after normalisation: upper case, doubled inner spaces, a trailing period.
    variant = "  " + "  ".join(text.split()).upper() + ". "
    rows = [{"prompt": prompt, "answer": variant}, {"prompt": prompt, "answer": "definitely not " + text}]
    # A chat row: `<bos><start_of_turn>user\n{content}<end_of_turn>\n<start_of_turn>model\n`.
    content = "Say something"
    chat_ids = [2] + tok(f"<start_of_turn>user\n{content}<end_of_turn>\n<start_of_turn>model\n",
                         add_special_tokens=False).input_ids
    chat_new = greedy(chat_ids, n)
    with open(OUT / "exact_match.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    json.dump({
        "model": "tiny/gemma3", "max_new_tokens": n, "prompt_ids": ids, "new_ids": new, "text": text,
        "accuracy": 0.5, "chat": {"content": content, "prompt_ids": chat_ids, "new_ids": chat_new,
                                  "text": tok.decode(chat_new, skip_special_tokens=True)},
    }, open(OUT / "exact_match_reference.json", "w"), indent=1)
    print("exact_match:", prompt, "->", repr(text), "| chat ->", chat_new)


choice_fixtures()
exact_match_fixtures()
