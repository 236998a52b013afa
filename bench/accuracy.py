"""Accuracy on real photographs: detectors × objects × presets × seeds of the real-photo benchmark
(`vsad.data.make_photo_category`, docs/photo-benchmark.md), mean ± sd of S-, V-, P-AUROC, AUPRO
and P-AP, with fit and test times.

Not a pytest file (every cell trains a model). Run, from the repository root:
    python bench/accuracy.py                                  # the report table (seeds 0-2)
    python bench/accuracy.py --seeds 100,101 --out tune.json  # the tuning seeds
    python bench/accuracy.py --detectors vsad,patchcore --presets realistic --objects kermit

Seeds: defaults were chosen on seeds 100 and 101 (all presets, both objects) and on nothing
else; seeds 0, 1 and 2 are the reported ones and were not looked at while tuning. A second,
held-out station per object (`--stations held-out`: other photographs of the same objects) is a
check on data no choice was made on.

Units that turn (issue 31): `--presets pose,pose-covered --objects dinosaur` builds the
categories from the real turntable (`../shared/data/turntable/dinosaur`,
vsad.data.photo.turntable): five cameras 20° apart, training units at poses 0°, 20°, 40°
(`pose`) or at every pose the test units take (`pose-covered`), test units at 0°–40° in 10°
steps; every row is then split into the poses the training units showed (`seen`) and the ones
between them (`unseen`). Development station: photographs 0, 2, .., 8; held-out: 18, 20, .., 26.

Results go to --out after every cell (atomically); a rerun skips cells whose detector config is
unchanged, so the table can be grown a few cells at a time.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

from vsad._atomic import atomic_write_json
from vsad.data import make_photo_category
from vsad.data.photo.turntable import COVERED_POSES, TEST_POSES, make_turntable_category
from vsad.detector.base import DETECTORS
from vsad.detector.evaluate import evaluate_detector

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "multiview"
TURNTABLE_DATA = REPO.parent / "shared" / "data" / "turntable"
#: Presets built from the turntable: name -> (photo preset, training poses).
TURNTABLE_PRESETS = {"pose": ("pose", (0, 2, 4)), "pose-covered": ("pose", COVERED_POSES)}

#: Five consecutive photographs per object make a station: the development stations, and the
#: held-out ones (other viewpoints of the same objects; kermit 5-9 has a pair of neighbouring
#: views that do not match, et 4-8 has four cameras turned by 90°).
STATIONS = {
    "dev": {"kermit": 0, "et": 0, "dinosaur": 0},
    "held-out": {"kermit": 5, "et": 4, "dinosaur": 18},
}

#: name -> (detector kind, config overrides on top of that detector's defaults)
DETECTORS_UNDER_TEST = {
    "vsad": ("VSAD", {}),
    "patchknn": ("PatchKNN", {}),
    # The best raw-pixel configuration found on the tuning seeds (the knn_* grid below:
    # knn_px256_p1_r2, S-AUROC 0.708 placement / 0.651 realistic, the best mean of the grid).
    "patchknn_best": ("PatchKNN", {"image_size": 256, "feature_pool": 1}),
    "patchcore": ("PatchCore", {}),
    # The paper's pipeline on pretrained latents: UNet with MVAM + FRM trained and inverted in
    # the Lite0 feature space, its two finest decoder levels fused across views, plus the
    # pretrained level (the configuration the scoring sweep started from).
    "vsad_unet": (
        "VSAD",
        {
            "encoder": "efficientnet-lite0",
            "image_size": 256,
            "feature_levels": [-2, -1],
            "latent_level": True,
            "feature_pool": 3,
            "view_fusion": 0.5,
        },
    ),  # fmt: skip
    # The raw-pixel baseline with VSAD's pretrained features: PatchKNN on the same backbone,
    # resolution and scoring as the VSAD default, unstandardised features.
    "patchknn_lite0": (
        "PatchKNN",
        {"backbone": "efficientnet-lite0", "image_size": 384, "feature_pool": 1},
    ),
    # The default before views were registered to their camera's reference view.
    "vsad_unaligned": ("VSAD", {"align": "none"}),
    # The default before the registration frame was centred on the training units' median
    # placement: the first training unit's frame.
    "vsad_first_frame": ("VSAD", {"align_frame": "first"}),
    # The default before fit checked that the training views register (issue 31): views
    # always registered, however few did.
    "vsad_always_registered": ("VSAD", {"align_min_registered": 0.0}),
    # Registration turned off when too few views register, without widening the search.
    "vsad_unregistered_r2": ("VSAD", {"unregistered_radius": None}),
    "patchknn_lite0_aligned": (
        "PatchKNN",
        {
            "backbone": "efficientnet-lite0",
            "image_size": 384,
            "feature_pool": 1,
            "align": "similarity",
        },
    ),  # fmt: skip
    # What vsad shipped before the real-photo benchmark existed (for the record).
    "vsad_tiny128": (
        "VSAD",
        {
            "encoder": "unshuffle",
            "image_size": 128,
            "feature_pool": 3,
            "latent_level": False,
            "feature_levels": [-2, -1],
        },
    ),  # fmt: skip
}
# Tuning grid of the raw-pixel baseline: input size × pooling × local radius (patch 4 px).
for _size in (128, 256):
    for _pool in (1, 3):
        for _radius in (2, 4):
            DETECTORS_UNDER_TEST[f"knn_px{_size}_p{_pool}_r{_radius}"] = (
                "PatchKNN",
                {"image_size": _size, "feature_pool": _pool, "bank_radius": _radius},
            )
# The pretrained level alone (VSAD without UNet levels) and its scoring choices.
_LEVEL = {"encoder": "efficientnet-lite0", "image_size": 256, "feature_levels": [],
          "latent_level": True}  # fmt: skip
for _name, _changes in {
    "": {},
    "_pool1": {"feature_pool": 1},
    "_pool5": {"feature_pool": 5},
    "_r3": {"bank_radius": 3},
    "_r4": {"bank_radius": 4},
    "_s320": {"image_size": 320},
    "_s384": {"image_size": 384},
    "_st234": {"encoder_stages": [2, 3, 4]},
    "_st124": {"encoder_stages": [1, 2, 4]},
    "_st245": {"encoder_stages": [2, 4, 5]},
    "_lite1": {"encoder": "efficientnet-lite1"},
    "_lite2": {"encoder": "efficientnet-lite2"},
    "_sigma2": {"smoothing_sigma": 2.0},
    "_sigma8": {"smoothing_sigma": 8.0},
    "_raw": {"normalization": "none"},
    # Round 2: combinations of what helped in round 1 (seed 100).
    "_s320_pool1": {"image_size": 320, "feature_pool": 1},
    "_s384_pool1": {"image_size": 384, "feature_pool": 1},
    "_s384_pool1_r3": {"image_size": 384, "feature_pool": 1, "bank_radius": 3},
    "_s448_pool1": {"image_size": 448, "feature_pool": 1},
    "_s384_pool1_st124": {"image_size": 384, "feature_pool": 1, "encoder_stages": [1, 2, 4]},
    "_s384_pool1_lite2": {"image_size": 384, "feature_pool": 1, "encoder": "efficientnet-lite2"},
}.items():
    DETECTORS_UNDER_TEST[f"level{_name}"] = ("VSAD", {**_LEVEL, **_changes})
SHOWN = ("S-AUROC", "V-AUROC", "P-AUROC", "AUPRO", "P-AP")


def resolve(name: str):
    if name not in DETECTORS_UNDER_TEST:
        raise SystemExit(f"--detectors: unknown {name!r}; known: {sorted(DETECTORS_UNDER_TEST)}")
    kind, overrides = DETECTORS_UNDER_TEST[name]
    cls = DETECTORS[kind]
    return cls, cls.config_class().with_overrides(overrides)


def fingerprint(config) -> str:
    return hashlib.sha1(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


def run_cell(name: str, category) -> dict:
    cls, config = resolve(name)
    detector = cls(config)
    start = time.perf_counter()
    detector.fit(category.train, progress=False)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    decisions: dict = {}
    pairs = list(_predictions(detector, category.test))
    test_s = time.perf_counter() - start
    metrics = evaluate_detector(detector, category.test, decisions=decisions, predictions=pairs)
    by_pose = None
    if category.stations:  # a turntable category: split into seen and unseen poses
        by_pose = {}
        poses = category.test.poses
        for part in ("seen", "unseen"):
            chosen = [pair for pair, pose in zip(pairs, poses, strict=True)
                      if (pose in category.seen_poses) == (part == "seen")]  # fmt: skip
            if not chosen or len({s.label for s, _ in chosen}) < 2:
                continue
            found: dict = {}
            part_metrics = evaluate_detector(
                detector, category.test, decisions=found, predictions=chosen
            )
            uncovered = [p.pose_covered is False for _, p in chosen]
            by_pose[part] = {"metrics": part_metrics, "decisions": found or None,
                             "samples": len(chosen),
                             # flagged as outside what the training units covered
                             "uncovered": sum(uncovered) / len(chosen)}  # fmt: skip
    report = getattr(detector, "homographies", None)
    pairs = [f"{r.i}->{r.j}:{r.status}" for r in getattr(report, "report", []) if r.status != "ok"]
    return {
        "metrics": metrics,
        "fit_s": fit_s,
        "test_s": test_s,
        "test_samples": len(category.test),
        "config": fingerprint(config),
        "pairs_not_ok": pairs,
        # At the thresholds fit set from the training samples (issue 21's false-reject rate).
        "decisions": decisions or None,
        "by_pose": by_pose,
    }


def _predictions(detector, split):
    """(sample, Prediction) pairs of the split, predicted in the detector's batches."""
    samples = list(split)
    return zip(samples, detector.predict_many(samples, progress=False), strict=True)


def make_category(data: Path, obj: str, preset: str, seed: int, first_view: int, args):
    if preset in TURNTABLE_PRESETS:
        photo_preset, train_poses = TURNTABLE_PRESETS[preset]
        return make_turntable_category(
            TURNTABLE_DATA / obj,
            photo_preset,
            n_train=args.n_train,
            n_test=args.n_test_pose,
            first_view=first_view,
            train_poses=train_poses,
            test_poses=TEST_POSES,
            seed=seed,
            name=f"{obj}_{preset}",
        )
    return make_photo_category(
        data / obj,
        preset,
        n_train=args.n_train,
        n_test=args.n_test,
        first_view=first_view,
        seed=seed,
    )


def cell_key(obj: str, preset: str, seed: int, first_view: int) -> str:
    return f"{obj}/views{first_view}-{first_view + 4}/{preset}/seed{seed}"


def summary(results: dict, names: list[str], presets: list[str], keys_of) -> str:
    lines = []
    for preset in presets:
        lines += [
            f"\n**{preset}**\n",
            f"| detector | {' | '.join(SHOWN)} | FRR | escape | fit s | test s/sample | cells |",
            "|---|" + "---|" * (len(SHOWN) + 5),
        ]
        for name in names:
            cells = [results[k][name] for k in keys_of(preset) if name in results.get(k, {})]
            if not cells:
                continue
            lines.append(_row(name, cells))
            parts_shown = [c.get("by_pose") or {} for c in cells]
            if not any("unseen" in p for p in parts_shown):
                continue  # every test pose was a training pose: the row says it all
            for part in ("seen", "unseen"):
                parts = [c["by_pose"][part] | {"fit_s": c["fit_s"], "test_s": c["test_s"],
                         "test_samples": c["test_samples"]}
                         for c in cells if (c.get("by_pose") or {}).get(part)]  # fmt: skip
                if parts:
                    lines.append(_row(f"{name} ({part} poses)", parts))
    return "\n".join(lines) + "\n"


def _row(name: str, cells: list[dict]) -> str:
    """One table row: mean ± sd over the cells, the decisions at the stored thresholds
    (false-reject and escape rate of the samples, pooled over the cells), median times."""
    row = []
    for metric in SHOWN:
        values = [100 * c["metrics"][metric] for c in cells]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        row.append(f"{statistics.mean(values):.1f} ± {sd:.1f}")
    rates = []
    for key, count in (("frr", "n_normal"), ("escape_rate", "n_defective")):
        entries = [c["decisions"]["sample"] for c in cells if c.get("decisions")]
        total = sum(e[count] for e in entries)
        wrong = sum(e[key] * e[count] for e in entries if e[key] is not None)
        rates.append(f"{100 * wrong / total:.1f}" if total else "–")
    fit = statistics.median(c["fit_s"] for c in cells)
    test = statistics.median(c["test_s"] / c["test_samples"] for c in cells)
    return (
        f"| {name} | " + " | ".join(row) + " | " + " | ".join(rates)
        + f" | {fit:.0f} | {test:.2f} | {len(cells)} |"
    )  # fmt: skip


def _save(path: Path, data: dict) -> None:
    atomic_write_json(path, data, indent=1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="folder of photo sequences")
    parser.add_argument("--objects", default="kermit,et")
    parser.add_argument("--presets", default="easy,placement,realistic")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--stations", default="dev", choices=sorted(STATIONS))
    parser.add_argument(
        "--detectors",
        default="vsad,patchknn,patchknn_best,patchcore",
        help="comma-separated names or patterns (e.g. 'knn_*') of DETECTORS_UNDER_TEST",
    )
    parser.add_argument("--n-train", type=int, default=40)
    parser.add_argument("--n-test", type=int, default=60)
    parser.add_argument("--n-test-pose", type=int, default=100, help="test units, turntable")
    parser.add_argument("--out", default="accuracy.json")
    parser.add_argument("--table-only", action="store_true", help="print the table, run nothing")
    args = parser.parse_args(argv)
    objects, presets = args.objects.split(","), args.presets.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    names = [
        n
        for pattern in args.detectors.split(",")
        for n in (fnmatch.filter(DETECTORS_UNDER_TEST, pattern) or [pattern])
    ]
    for name in names:
        resolve(name)
    out = Path(args.out)
    data = json.loads(out.read_text()) if out.is_file() else {}
    stations = STATIONS[args.stations]

    def keys_of(preset):
        return [cell_key(o, preset, s, stations[o]) for o in objects for s in seeds]

    if not args.table_only:
        for preset in presets:
            for obj in objects:
                for seed in seeds:
                    key = cell_key(obj, preset, seed, stations[obj])
                    done = data.setdefault(key, {})
                    todo = [
                        n
                        for n in names
                        if done.get(n, {}).get("config") != fingerprint(resolve(n)[1])
                    ]
                    if not todo:
                        continue
                    category = make_category(
                        Path(args.data), obj, preset, seed, stations[obj], args
                    )
                    for name in todo:
                        done[name] = run_cell(name, category)
                        _save(out, data)
                        m = done[name]["metrics"]
                        shown = " ".join(f"{k} {100 * m[k]:.1f}" for k in SHOWN)
                        print(
                            f"{key} {name}: {shown} fit {done[name]['fit_s']:.0f}s "
                            f"test {done[name]['test_s']:.0f}s {done[name]['pairs_not_ok']}",
                            flush=True,
                        )
    print(
        f"Objects {objects}, stations {args.stations}, seeds {seeds}; mean ± sd over "
        f"objects × seeds (values in %); times are medians.\n"
        + summary(data, names, presets, keys_of)
    )


if __name__ == "__main__":
    sys.exit(main())
