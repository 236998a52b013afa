"""Accuracy ablations on the synthetic multi-view category of `vsad demo` (paper Tables 3 and 5):
full VSAD vs "w/o MVAM" vs "w/o FRM" vs PatchKNN, and the MVAM window R sweep.

Not a pytest file (each variant trains a model: ~1–2 minutes on 2 cores). Run:
    python bench/ablation.py [--out ablation.json] [--variants full,no_mvam,...]
Prints a Markdown table (the one in BENCHMARKS.md) and writes the metrics as JSON.
"""

from __future__ import annotations

import argparse
import json
import time

from vsad.data import make_category
from vsad.detector import VSAD, PatchKNN, VSADConfig
from vsad.detector.evaluate import evaluate_detector
from vsad.eval import metrics_table

VARIANTS = {
    "full": {},
    "no_mvam": {"use_mvam": False},
    "no_frm": {"use_frm": False},
    "R1": {"window": 1},
    "R2": {"window": 2},
    "R4": {"window": 4},
    "patchknn": None,
    # Training length (not in the default list: steps500 alone trains ~5 minutes).
    "steps1": {"train.steps": 1},
    "steps20": {"train.steps": 20},
    "steps500": {"train.steps": 500},
}
DEFAULT_VARIANTS = ("full", "no_mvam", "no_frm", "R1", "R2", "R4", "patchknn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="ablation.json")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    category = make_category(n_train=40, n_test=40, seed=args.seed, name="demo")
    results, seconds = {}, {}
    for name in args.variants.split(","):
        start = time.perf_counter()
        overrides = VARIANTS[name]
        if overrides is None:
            detector = PatchKNN().fit(category.train, progress=False)
        else:
            config = VSADConfig().with_overrides(overrides)
            detector = VSAD(config).fit(
                category.train, homographies=category.homographies, progress=False
            )
        results[name] = evaluate_detector(detector, category.test, progress=False)
        seconds[name] = time.perf_counter() - start
        print(name, {k: round(v, 3) for k, v in results[name].items()}, flush=True)
    print(metrics_table(results, mean=False))
    with open(args.out, "w") as f:
        json.dump({"metrics": results, "seconds": seconds, "seed": args.seed}, f, indent=2)


if __name__ == "__main__":
    main()
