"""Accuracy ablations on the synthetic multi-view category of `vsad demo` (paper Tables 3 and 5):
the default VSAD ("resnet") vs "w/o MVAM" vs "w/o FRM" vs the previous block placement ("full")
vs PatchKNN by default; with --variants also the latent level (latent, latent_no_mvam), the MVAM
window R sweep (resnet_R1, ...), longer training (resnet_steps600, ...) and, with the block
placement as measured then, "w/o cross-view fusion", its R sweep and scoring switches; over
several seeds of the generator (mean ± standard deviation).

Not a pytest file (each variant trains a model: ~1–2 minutes on 2 cores). Run:
    python bench/ablation.py [--seeds 0,1,2] [--variants full,no_mvam,...] [--out ablation.json]
Prints Markdown tables (the ones in BENCHMARKS.md). Results are written to --out after every
variant (atomically) and a rerun with the same --out skips what it already holds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from vsad._atomic import atomic_write_json
from vsad.data import make_category
from vsad.detector import VSAD, PatchKNN, PatchKNNConfig, VSADConfig
from vsad.detector.evaluate import evaluate_detector

# name -> (detector, config overrides)
# Rows measured before view fusion became the default (BENCHMARKS.md says which) keep it off
# so that they reproduce; likewise every row measured before placement="resnet" became the
# default runs with placement="block" (added below unless a variant names its placement).
_BEFORE_FUSION = {"view_fusion": 0.0}

VARIANTS = {
    # The current default (placement="resnet") and its ablations.
    "resnet": ("VSAD", {"placement": "resnet"}),
    "resnet_no_mvam": ("VSAD", {"placement": "resnet", "use_mvam": False}),
    "resnet_no_frm": ("VSAD", {"placement": "resnet", "use_frm": False}),
    # Which features: with "resnet" every ResBlock is a level; [-3, -1] reads the last ResBlock
    # of the two finest decoder blocks, close to what "block" reads.
    "resnet_levels_3_1": ("VSAD", {"placement": "resnet", "feature_levels": [-3, -1]}),
    # The encoder's latent (the pixel patches PatchKNN scores) as a third level.
    "latent": ("VSAD", {"placement": "resnet", "latent_level": True}),
    "latent_no_mvam": ("VSAD", {"placement": "resnet", "latent_level": True, "use_mvam": False}),
    # The MVAM window R sweep (paper Table 5) with the current default; R=3 is "resnet".
    "resnet_R1": ("VSAD", {"placement": "resnet", "window": 1}),
    "resnet_R2": ("VSAD", {"placement": "resnet", "window": 2}),
    "resnet_R4": ("VSAD", {"placement": "resnet", "window": 4}),
    # Six times the default training (600 steps, ~6 minutes): does MVAM matter with more?
    "resnet_steps600": ("VSAD", {"placement": "resnet", "train.steps": 600}),
    "resnet_steps600_no_mvam": (
        "VSAD",
        {"placement": "resnet", "train.steps": 600, "use_mvam": False},
    ),
    # The block placement (the previous default, "full") and the rows measured with it.
    "full": ("VSAD", {}),
    "no_mvam": ("VSAD", {"use_mvam": False}),
    "no_frm": ("VSAD", {"use_frm": False}),
    "R1": ("VSAD", {"window": 1}),
    "R2": ("VSAD", {"window": 2}),
    "R4": ("VSAD", {"window": 4}),
    "patchknn": ("PatchKNN", {}),
    # Cross-view feature fusion at scoring time (vsad.model.view_fusion) off, and its weight.
    "no_fusion": ("VSAD", {"view_fusion": 0.0}),
    "no_mvam_no_fusion": ("VSAD", {"use_mvam": False, "view_fusion": 0.0}),
    "fusion1": ("VSAD", {"view_fusion": 1.0}),
    "no_mvam_fusion1": ("VSAD", {"use_mvam": False, "view_fusion": 1.0}),
    # Scoring switches (DEVELOPERS.md): raw distances instead of per-position z-scores.
    "full_raw": ("VSAD", {"normalization": "none", "feature_pool": 1, **_BEFORE_FUSION}),
    "patchknn_raw": ("PatchKNN", {"normalization": "none"}),
    "inversion0": ("VSAD", {"inversion_steps": 0, **_BEFORE_FUSION}),
    # Feature levels: only the finest decoder level (32² at the default size).
    "finest": ("VSAD", {"feature_levels": [-1], **_BEFORE_FUSION}),
    # A 10× weight on L_refine (λ = 1): more pull towards cross-view-consistent features.
    "refine1": ("VSAD", {"train.refine_weight": 1.0, **_BEFORE_FUSION}),
    "refine1_no_mvam": (
        "VSAD",
        {"train.refine_weight": 1.0, "use_mvam": False, **_BEFORE_FUSION},
    ),
    # Per-view noise levels in training (a reason for MVAM to read the neighbours).
    "indep_t": ("VSAD", {"train.view_timesteps": "independent", **_BEFORE_FUSION}),
    "indep_t_no_mvam": (
        "VSAD",
        {"train.view_timesteps": "independent", "use_mvam": False, **_BEFORE_FUSION},
    ),
    # The same with cross-view fusion (the current default scoring).
    "indep_t_fusion": ("VSAD", {"train.view_timesteps": "independent"}),
    "indep_t_fusion_no_mvam": ("VSAD", {"train.view_timesteps": "independent", "use_mvam": False}),
    # Training length (not in the default list: steps500 alone trains ~5 minutes).
    "steps1": ("VSAD", {"train.steps": 1, **_BEFORE_FUSION}),
    "steps20": ("VSAD", {"train.steps": 20, **_BEFORE_FUSION}),
    "steps300": ("VSAD", {"train.steps": 300, **_BEFORE_FUSION}),
    "steps500": ("VSAD", {"train.steps": 500, **_BEFORE_FUSION}),
}
VARIANTS = {
    name: (kind, overrides if kind != "VSAD" else {"placement": "block", **overrides})
    for name, (kind, overrides) in VARIANTS.items()
}
DEFAULT_VARIANTS = ("resnet", "resnet_no_mvam", "resnet_no_frm", "full", "patchknn")
SHOWN = ("S-AUROC", "V-AUROC", "P-AUROC", "AUPRO", "S-AP", "V-AP", "P-AP")


def run_variant(name: str, category) -> dict:
    kind, overrides = VARIANTS[name]
    if kind == "PatchKNN":
        detector = PatchKNN(PatchKNNConfig().with_overrides(overrides))
        detector.fit(category.train, progress=False)
    else:
        detector = VSAD(VSADConfig().with_overrides(overrides))
        detector.fit(category.train, homographies=category.homographies, progress=False)
    return evaluate_detector(detector, category.test, progress=False)


def summary_table(results: dict, names: list[str], seeds: list[int]) -> str:
    """Mean ± standard deviation over seeds (percent) per variant."""
    lines = ["| variant | " + " | ".join(SHOWN) + " |", "|---|" + "---|" * len(SHOWN)]
    for name in names:
        runs = [results[str(s)][name] for s in seeds if name in results.get(str(s), {})]
        if not runs:
            continue
        cells = []
        for key in SHOWN:
            values = [100 * r[key] for r in runs]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.1f} ± {spread:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\nMean ± standard deviation over seeds {seeds} (values in %).\n"


def _save(path: Path, data: dict) -> None:
    atomic_write_json(path, data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="ablation.json")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {unknown}; known: {sorted(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    data = json.loads(out.read_text()) if out.is_file() else {"metrics": {}, "seconds": {}}
    for seed in seeds:
        category = make_category(n_train=40, n_test=40, seed=seed, name="demo")
        done = data["metrics"].setdefault(str(seed), {})
        for name in names:
            if name in done:
                continue
            start = time.perf_counter()
            done[name] = run_variant(name, category)
            data["seconds"].setdefault(str(seed), {})[name] = time.perf_counter() - start
            _save(out, data)
            shown = {k: round(done[name][k], 3) for k in SHOWN[:4]}
            print(f"seed {seed} {name} {shown}", flush=True)
    print(summary_table(data["metrics"], names, seeds))


if __name__ == "__main__":
    main()
