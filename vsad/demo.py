"""`vsad demo`: the whole method on a fresh machine with no data of the user's.

Builds a synthetic five-view category from the texture shipped with the package
(vsad/data/assets, provenance beside it), estimates the homographies from the training views,
trains the default VSAD, evaluates it (and the PatchKNN baseline) and writes metrics and
overlay pictures.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from vsad._atomic import atomic_write_json

DEMO_SEED = 0


def homography_corner_error(estimated: np.ndarray, exact: np.ndarray, size) -> float:
    """Mean distance (pixels) between the view corners mapped by the two homographies."""
    h, w = size
    corners = np.array([[0, 0, 1], [w - 1, 0, 1], [0, h - 1, 1], [w - 1, h - 1, 1]], float).T

    def project(H):
        p = H @ corners
        return p[:2] / p[2]

    return float(np.linalg.norm(project(estimated) - project(exact), axis=0).mean())


def run_demo(
    out: str | Path,
    *,
    steps: int | None = None,
    n_train: int = 40,
    n_test: int = 40,
    baseline: bool = True,
    progress: bool = True,
) -> dict:
    """Runs the demo into `out`; returns {"VSAD": metrics, "PatchKNN": metrics}."""
    from vsad.data import make_category
    from vsad.detector import VSAD, PatchKNN, VSADConfig
    from vsad.detector.evaluate import evaluate_detector
    from vsad.eval import metrics_table, write_metrics

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    category = make_category(n_train=n_train, n_test=n_test, seed=DEMO_SEED, name="demo")
    print(
        f"synthetic category: {n_train} normal training samples, {n_test} test samples "
        f"({int(category.test.labels.sum())} with a defect), {category.num_views} views of "
        f"{category.image_size[0]}x{category.image_size[1]}"
    )
    config = VSADConfig()
    if steps is not None:
        config = config.with_overrides({"train.steps": steps})
    results, seconds = {}, {}

    start = time.perf_counter()
    detector = VSAD(config).fit(category.train, work_dir=out / "checkpoints", progress=progress)
    seconds["VSAD fit"] = time.perf_counter() - start
    errors = [
        homography_corner_error(
            detector.homographies.H[i, n], category.homographies[i, j], category.image_size
        )
        for i, row in enumerate(detector.homographies.neighbors)
        for n, j in enumerate(row)
        if j >= 0
    ]
    print(
        f"homographies estimated from the training views: mean corner error "
        f"{np.mean(errors):.2f} px against the generator's exact ones (max {np.max(errors):.2f})"
    )
    detector.save(out / "model")
    start = time.perf_counter()
    results["VSAD"] = evaluate_detector(
        detector, category.test, out / "vsad", overlays=12, progress=progress
    )
    seconds["VSAD test"] = time.perf_counter() - start

    if baseline:
        start = time.perf_counter()
        knn = PatchKNN().fit(category.train, progress=progress)
        results["PatchKNN"] = evaluate_detector(
            knn, category.test, out / "patchknn", overlays=0, progress=progress
        )
        seconds["PatchKNN fit+test"] = time.perf_counter() - start

    write_metrics(results, out, name="metrics", mean=False)
    summary = {
        "metrics": results,
        "seconds": seconds,
        "homography_corner_error_px": {
            "mean": float(np.mean(errors)),
            "max": float(np.max(errors)),
        },
        "config": config.to_dict(),
    }
    atomic_write_json(out / "summary.json", summary, default=float)
    print()
    print(metrics_table(results, mean=False))
    print(", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    print(f"metrics, overlays (vsad/overlays/) and ROC curves (vsad/roc.png) in {out}")
    return results
