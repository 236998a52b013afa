"""`vsad demo`: the whole method on a fresh machine with no data of the user's.

Builds a five-view category — by default a synthetic one from the texture shipped with the
package (vsad/data/assets, provenance beside it); with `photos` a real-photo one
(`vsad.data.make_photo_category`) from a folder of photographs of one object — fits the default
VSAD (and the PatchKNN baseline), evaluates both and writes metrics, report and overlays.
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
    photos: str | Path | None = None,
    preset: str = "realistic",
    overrides: list[str] | dict | None = None,
    steps: int | None = None,
    n_train: int = 40,
    n_test: int = 40,
    baseline: bool = True,
    progress: bool = True,
) -> dict:
    """Runs the demo into `out`; returns {"VSAD": metrics, "PatchKNN": metrics}.

    photos: a folder of >= 5 photographs of one object (one per camera, in name order) for a
    real-photo category of `preset`; None = the synthetic category. overrides: VSADConfig
    `key=value` changes (e.g. the paper's UNet pipeline, `vsad.detector.UNET_PIPELINE`);
    steps: training steps of the UNet (ignored by the default, which trains no UNet)."""
    from vsad.data import make_category, make_photo_category
    from vsad.detector import VSAD, PatchKNN, VSADConfig
    from vsad.detector.evaluate import evaluate_detector
    from vsad.eval import metrics_table, write_metrics

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if photos is None:
        category = make_category(n_train=n_train, n_test=n_test, seed=DEMO_SEED, name="demo")
        what = "synthetic category"
    else:
        category = make_photo_category(
            photos, preset, n_train=n_train, n_test=n_test, seed=DEMO_SEED
        )
        what = f"real-photo category ({Path(photos).name}, preset {preset!r})"
    print(
        f"{what}: {n_train} normal training samples, {n_test} test samples "
        f"({int(category.test.labels.sum())} with a defect), {category.num_views} views of "
        f"{category.image_size[0]}x{category.image_size[1]}"
    )
    config = VSADConfig().with_overrides(overrides or [])
    if steps is not None:
        config = config.with_overrides({"train.steps": steps})
    results, seconds = {}, {}

    start = time.perf_counter()
    detector = VSAD(config).fit(category.train, work_dir=out / "checkpoints", progress=progress)
    seconds["VSAD fit"] = time.perf_counter() - start
    errors = _homography_errors(detector, category)
    if errors:
        print(
            f"homographies estimated from the training views: mean corner error "
            f"{np.mean(errors):.2f} px against the generator's exact ones "
            f"(max {np.max(errors):.2f})"
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
        "data": what,
        "metrics": results,
        "seconds": seconds,
        "config": config.to_dict(),
    }
    if errors:
        summary["homography_corner_error_px"] = {
            "mean": float(np.mean(errors)),
            "max": float(np.max(errors)),
        }
    atomic_write_json(out / "summary.json", summary, default=float)
    print()
    print(metrics_table(results, mean=False))
    print(", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    print(f"report (vsad/report.html), overlays (vsad/overlays/) and metrics in {out}")
    return results


def _homography_errors(detector, category) -> list[float]:
    """Corner errors of the estimated homographies against the synthetic generator's exact
    ones; empty when the detector estimated none (no UNet) or the data has none (photos)."""
    exact = getattr(category, "homographies", None)
    if detector.homographies is None or exact is None:
        return []
    return [
        homography_corner_error(detector.homographies.H[i, n], exact[i, j], category.image_size)
        for i, row in enumerate(detector.homographies.neighbors)
        for n, j in enumerate(row)
        if j >= 0
    ]
