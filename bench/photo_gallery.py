"""Pictures of the real-photo benchmark (docs/images/photo_benchmark*.jpg): normal units of each
preset side by side, and close-ups of every defect family and strength (clean | defective |
mask). Look at these before trusting a number measured on the benchmark.

    python bench/photo_gallery.py [--data ../shared/data/multiview] [--out docs/images]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from vsad.data import make_photo_category
from vsad.data.photo.defects import PHOTO_DEFECT_TYPES, STRENGTHS

REPO = Path(__file__).resolve().parents[1]
SIDE = 160  # thumbnail side of a view


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    tile = tile.copy()
    cv2.putText(tile, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(tile, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 0), 1, cv2.LINE_AA)
    return tile


def units(data: Path, obj: str) -> np.ndarray:
    """Rows: presets; columns: view 0 of four normal units, then all views of one unit."""
    rows = []
    for preset in ("easy", "placement", "realistic"):
        category = make_photo_category(data / obj, preset, n_train=4, n_test=0, seed=0)
        thumbs = [
            cv2.resize(category.train[i].images[2], (SIDE, SIDE), interpolation=cv2.INTER_AREA)
            for i in range(4)
        ]
        thumbs[0] = _label(thumbs[0], f"{preset}: units 0-3, view 2")
        rows.append(np.hstack(thumbs))
    return np.vstack(rows)


def closeups(data: Path, obj: str) -> np.ndarray:
    """One close-up (64² view pixels, 3× enlarged) per family × strength: clean | defective |
    mask."""
    category = make_photo_category(data / obj, "realistic", n_train=0, n_test=80, seed=0)
    found: dict[tuple[str, str], np.ndarray] = {}
    for i, plan in enumerate(category.test.plans):
        if plan.kind is None or (plan.kind, plan.strength) in found:
            continue
        bad, clean = category.test.render(i), category.test.render(i, with_defects=False)
        k = int(np.argmax([m.sum() for m in bad.masks]))
        ys, xs = np.nonzero(bad.masks[k])
        y0 = int(np.clip(ys.mean() - 32, 0, bad.masks[k].shape[0] - 64))
        x0 = int(np.clip(xs.mean() - 32, 0, bad.masks[k].shape[1] - 64))
        crop = np.s_[y0 : y0 + 64, x0 : x0 + 64]
        mask = np.repeat(bad.masks[k][crop][..., None] * 255, 3, axis=2).astype(np.uint8)
        tile = np.hstack([clean.images[k][crop], bad.images[k][crop], mask])
        tile = cv2.resize(tile, None, fx=2.5, fy=2.5, interpolation=cv2.INTER_NEAREST)
        found[(plan.kind, plan.strength)] = _label(tile, f"{plan.strength} {plan.kind}")
    tiles = [found[(k, s)] for k in PHOTO_DEFECT_TYPES for s in STRENGTHS if (k, s) in found]
    rows = [np.hstack(tiles[i : i + 2]) for i in range(0, len(tiles) - 1, 2)]
    return np.vstack(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "multiview"))
    parser.add_argument("--out", default=str(REPO / "docs" / "images"))
    args = parser.parse_args()
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, picture in (
        ("photo_benchmark_units.jpg", np.hstack([units(data, "kermit"), units(data, "et")])),
        ("photo_benchmark_defects.jpg", closeups(data, "kermit")),
    ):
        cv2.imwrite(str(out / name), picture[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 85])
        print(out / name, picture.shape)


if __name__ == "__main__":
    main()
