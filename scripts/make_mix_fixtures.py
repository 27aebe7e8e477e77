#!/usr/bin/env python3
"""Reference mixtures for data/tests/mix.rs: what `datasets.interleave_datasets` gives for weighted sources.

    python scripts/make_mix_fixtures.py      # needs datasets and numpy (scripts/requirements.txt)

Writes tests/fixtures/data/mix/:
- a.jsonl, b.jsonl, c.jsonl   three small text datasets (5, 3 and 8 rows; each row's text names its source and row)
- interleave.json             per case: the sources, the weights, the seed, the stopping strategy, the
                              probabilities handed to `interleave_datasets` (weights / their sum, in order, as the
                              Rust side computes them) and the texts of the rows it returned, in order; plus the
                              versions of datasets and numpy
"""

import json
from pathlib import Path

import datasets
import numpy as np

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "data" / "mix"
SIZES = {"a": 5, "b": 3, "c": 8}

CASES = [
    # (sources, weights, seed, stopping_strategy)
    (["a", "b"], [1.0, 1.0], 0, "first_exhausted"),
    (["a", "b"], [3.0, 1.0], 42, "first_exhausted"),
    (["a", "b", "c"], [0.2, 0.3, 0.5], 7, "first_exhausted"),
    (["a", "b"], [1.0, 1.0], 0, "all_exhausted"),
    (["a", "b", "c"], [2.0, 1.0, 5.0], 123456789012, "all_exhausted"),
    (["b", "c"], [0.9, 0.1], 3, "all_exhausted"),
]


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for name, n in SIZES.items():
        with open(OUT / f"{name}.jsonl", "w") as f:
            for i in range(n):
                f.write(json.dumps({"text": f"{name}{i}"}) + "\n")
    cases = []
    for names, weights, seed, stopping in CASES:
        dsets = [datasets.Dataset.from_list([json.loads(l) for l in open(OUT / f"{n}.jsonl")]) for n in names]
        total = sum(weights)
        p = [w / total for w in weights]
        mixed = datasets.interleave_datasets(dsets, probabilities=p, seed=seed, stopping_strategy=stopping)
        cases.append(
            {
                "sources": [f"{n}.jsonl" for n in names],
                "weights": weights,
                "seed": seed,
                "stopping_strategy": stopping,
                "probabilities": p,
                "texts": list(mixed["text"]),
            }
        )
    doc = {"datasets": datasets.__version__, "numpy": np.__version__, "cases": cases}
    (OUT / "interleave.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {OUT / 'interleave.json'}")


if __name__ == "__main__":
    main()
