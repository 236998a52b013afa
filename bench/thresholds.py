"""Decision thresholds from normal training samples only, checked on the real-photo benchmark:
the false-reject rate (FRR) on held-out normal test samples and the escape rate on defective
ones at the thresholds `fit` sets (threshold_fpr), against the target.

Three sources of normal scores are compared (DEVELOPERS.md, "Decision thresholds"):
- loo:        what fit does — leave-one-out scores, each sample standardised without itself;
- loo-biased: the same LOO distances standardised with the μ, σ that include the sample;
- held-out:   fit on the first 30 training samples, thresholds from the other 10.

Not a pytest file. From the repository root:
    python bench/thresholds.py --seeds 0,1,2 --out thresholds.json
    python bench/thresholds.py --detector vsad --seeds 0 --objects kermit
Results go to --out after every cell (atomically); a rerun skips the cells already there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import numpy as np

from vsad._atomic import atomic_write_json
from vsad.data import make_photo_category
from vsad.detector import VSAD, PatchCore, PatchCoreConfig, PatchKNN, PatchKNNConfig, VSADConfig
from vsad.detector import thresholds as thr
from vsad.detector.calibration import loo_normal_scores
from vsad.model.scoring import combine_levels, gaussian_smooth, view_and_sample_scores

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "multiview"
DETECTORS = {
    # The cheap configuration: frozen EfficientNet-Lite0 stages 2 + 4, local bank, z-scores.
    "patchknn_lite0": lambda fpr: PatchKNN(
        PatchKNNConfig(backbone="efficientnet-lite0", image_size=256, threshold_fpr=fpr)
    ),
    "vsad": lambda fpr: VSAD(VSADConfig(threshold_fpr=fpr)),
    # Raw distances, global bank thinned to 10 %: LOO against the other samples' coreset rows
    # ("loo-biased" equals "loo" here: nothing is standardised).
    "patchcore": lambda fpr: PatchCore(PatchCoreConfig(threshold_fpr=fpr)),
}


def biased_loo_scores(detector) -> tuple[np.ndarray, np.ndarray]:
    """LOO scores standardised with the μ, σ that include the sample itself (the naive way)."""
    banks = detector.banks
    z = banks.standardize(banks.loo_distances)
    maps = combine_levels(z, detector.config.level_weights, detector.view_size)
    maps = gaussian_smooth(maps, detector.config.smoothing_sigma)
    views, samples = view_and_sample_scores(maps)
    return samples.double().numpy(), views.double().numpy()


def rates(thresholds: dict, scores: dict) -> dict:
    """FRR and escape rate at sample and view level of test scores at `thresholds`."""
    out = {}
    for level in ("sample", "view"):
        values, labels = scores[level]
        ng = values > thresholds[level]
        out[f"{level}_frr"] = float(ng[~labels].mean())
        out[f"{level}_escape"] = float((~ng[labels]).mean())
    return out


def test_scores(detector, split) -> dict:
    preds = detector.predict_many(split, progress=False)
    return {
        "sample": (np.array([p.score for p in preds]), np.array([s.label for s in split], bool)),
        "view": (
            np.concatenate([p.view_scores for p in preds]),
            np.concatenate([np.asarray(s.view_labels, bool) for s in split]),
        ),
    }


def cell(detector_name: str, root: Path, obj: str, seed: int, fpr: float, quick: bool) -> dict:
    category = make_photo_category(root / obj, "realistic", seed=seed)
    train = [category.train[i] for i in range(len(category.train))]
    test = [category.test[i] for i in range(len(category.test))]
    result = {"object": obj, "seed": seed, "fpr": fpr, "n_train": len(train)}

    if not quick:
        plain = DETECTORS[detector_name](None)
        start = time.perf_counter()
        plain.fit(train, progress=False)
        result["fit_seconds_without"] = time.perf_counter() - start
        del plain

    detector = DETECTORS[detector_name](fpr)
    start = time.perf_counter()
    detector.fit(train, progress=False)
    result["fit_seconds"] = time.perf_counter() - start
    scores = test_scores(detector, test)
    result["n_test_normal"] = int((~scores["sample"][1]).sum())
    result["n_test_defective"] = int(scores["sample"][1].sum())

    variants = {"loo": loo_normal_scores(detector), "loo-biased": biased_loo_scores(detector)}
    for name, (samples, views) in variants.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = thr.from_normal_scores(samples, views, fpr, source="train-loo")
        result[name] = {"sample": t["sample"], "view": t["view"], **rates(t, scores)}
    assert np.isclose(result["loo"]["sample"], detector.thresholds["sample"])
    if quick:
        return result

    # Held-out: a bank of 30, thresholds from the other 10's scores (they were never searched).
    held = DETECTORS[detector_name](None).fit(train[:30], progress=False)
    held_scores = test_scores(held, train[30:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = thr.from_normal_scores(held_scores["sample"][0], held_scores["view"][0], fpr,
                                   source="validation")  # fmt: skip
    result["held-out"] = {
        "sample": t["sample"],
        "view": t["view"],
        **rates(t, test_scores(held, test)),
    }
    return result


def summarise(cells: list[dict]) -> str:
    lines = [
        "| normal scores | S-FRR (%) | S-escape (%) | V-FRR (%) | V-escape (%) |",
        "|---|---|---|---|---|",
    ]
    for name in ("loo", "loo-biased", "held-out"):
        if not all(name in c for c in cells):
            continue
        row = []
        for key in ("sample_frr", "sample_escape", "view_frr", "view_escape"):
            values = [100 * c[name][key] for c in cells]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            row.append(f"{statistics.mean(values):.1f} ± {sd:.1f}")
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    fit = [c["fit_seconds"] / c["fit_seconds_without"] for c in cells if "fit_seconds_without" in c]
    if fit:
        lines.append(f"\nfit time with / without thresholds: {statistics.mean(fit):.3f}× (mean)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--detector", default="patchknn_lite0", choices=sorted(DETECTORS))
    parser.add_argument("--objects", default="kermit,et")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--fpr", type=float, default=0.05)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--out", default="thresholds.json")
    parser.add_argument(
        "--quick", action="store_true", help="skip the fit without thresholds and the held-out fit"
    )
    args = parser.parse_args()
    out = Path(args.out)
    cells = json.loads(out.read_text())["cells"] if out.is_file() else []
    for obj in args.objects.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            key = (args.detector, obj, seed, args.fpr)
            if any((c["detector"], c["object"], c["seed"], c["fpr"]) == key for c in cells):
                continue
            result = {
                "detector": args.detector,
                **cell(args.detector, Path(args.data), obj, seed, args.fpr, args.quick),
            }
            cells.append(result)
            atomic_write_json(out, {"cells": cells})
            print(json.dumps(result), flush=True)
    for name in DETECTORS:
        chosen = [c for c in cells if c["detector"] == name and c["fpr"] == args.fpr]
        if chosen:
            print(f"\n{name}, threshold_fpr={args.fpr}, {len(chosen)} cells")
            print(summarise(chosen))


if __name__ == "__main__":
    main()
