#!/usr/bin/env python3
"""Writes the quickstart's task: ISO dates (1967-10-28) written out in words (October 28, 1967).

    python3 scripts/make_quickstart_data.py        # rewrites configs/data/dates_{train,eval}.jsonl

Deterministic (fixed seed, standard library only). Every row has `prompt` and `completion` (what
`lapidary train` trains on, format prompt_completion) and `answer` (what `lapidary eval --metric exact_match`
compares the generation with: the completion without its leading space). The eval dates never occur in the
training rows, so the eval split measures the rule, not memorised rows.
"""
import calendar
import json
import random
from pathlib import Path

# Written out here rather than taken from `calendar.month_name`, which follows the locale.
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
N_TRAIN, N_EVAL, SEED = 240, 24, 20261123


def row(y: int, m: int, d: int) -> dict:
    answer = f"{MONTHS[m - 1]} {d}, {y}"
    return {"prompt": f"Date: {y:04d}-{m:02d}-{d:02d}\nWritten out:", "completion": f" {answer}", "answer": answer}


def main() -> None:
    rng = random.Random(SEED)
    dates: list[tuple[int, int, int]] = []
    seen = set()
    while len(dates) < N_TRAIN + N_EVAL:
        y, m = rng.randint(1900, 2099), rng.randint(1, 12)
        d = rng.randint(1, calendar.monthrange(y, m)[1])
        if (y, m, d) not in seen:
            seen.add((y, m, d))
            dates.append((y, m, d))
    out = Path(__file__).resolve().parent.parent / "configs" / "data"
    out.mkdir(parents=True, exist_ok=True)
    for name, part in [("dates_train.jsonl", dates[:N_TRAIN]), ("dates_eval.jsonl", dates[N_TRAIN:])]:
        with open(out / name, "w", encoding="utf-8") as f:
            for y, m, d in part:
                f.write(json.dumps(row(y, m, d)) + "\n")
        print(f"{out / name}: {len(part)} rows")


if __name__ == "__main__":
    main()
