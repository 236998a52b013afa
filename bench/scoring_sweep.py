"""Scoring choices of VSAD on the real-photo benchmark, one trained model per cell: which feature
levels (decoder levels, the pretrained/latent level), their weights, cross-view fusion, pooling,
bank radius, normalisation and smoothing are scored from features extracted once.

Each cell (object × preset × seed) trains one VSAD model (`--model key=value ...` overrides of
VSADConfig), extracts the unfused features of the decoder levels and the latent level for the
training and test samples, and then scores every variant of VARIANTS from them — a variant costs
a bank build and a search, not a training run. This is how the scoring defaults were chosen
(on the tuning seeds 100, 101; BENCHMARKS.md); bench/accuracy.py then measures the chosen
defaults end to end on the report seeds.

    python bench/scoring_sweep.py --seeds 100,101 --out sweep.json [--model train.steps=100]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vsad._atomic import atomic_write_json
from vsad.data import make_photo_category
from vsad.detector import VSAD, VSADConfig
from vsad.detector.inputs import to_model_tensor
from vsad.eval import Evaluator
from vsad.memory.feature_banks import FeatureBanks
from vsad.model.inference import extract_features
from vsad.model.scoring import combine_levels, gaussian_smooth, view_and_sample_scores
from vsad.model.view_fusion import fuse_views

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "multiview"
SHOWN = ("S-AUROC", "V-AUROC", "P-AUROC", "AUPRO", "P-AP")

#: name -> scoring choices. levels: "d0", "d1" (the configured feature_levels, in order) and
#: "latent"; weights per level (None = equal); fusion: weight of the neighbours (decoder
#: levels; "latent_fusion" for the latent level); pool, radius, normalization, sigma as in
#: DetectorConfig.
BASE = {
    "levels": ("d0", "d1", "latent"),
    "weights": None,
    "fusion": 0.5,
    "latent_fusion": 0.0,
    "pool": 3,
    "radius": 2,
    "normalization": "position",
    "sigma": 4.0,
}
VARIANTS = {
    "all": {},
    "latent_only": {"levels": ("latent",)},
    "decoder_only": {"levels": ("d0", "d1")},
    "all_no_fusion": {"fusion": 0.0},
    "latent_fused": {"levels": ("latent",), "latent_fusion": 0.5},
    "all_latent_fused": {"latent_fusion": 0.5},
    "latent_w2": {"weights": (0.25, 0.25, 0.5)},
    "latent_w4": {"weights": (1 / 6, 1 / 6, 2 / 3)},
    "latent_pool1": {"levels": ("latent",), "pool": 1},
    "latent_pool5": {"levels": ("latent",), "pool": 5},
    "all_pool1": {"pool": 1},
    "all_radius1": {"radius": 1},
    "all_radius3": {"radius": 3},
    "latent_radius3": {"levels": ("latent",), "radius": 3},
    "all_raw": {"normalization": "none"},
    "latent_raw": {"levels": ("latent",), "normalization": "none"},
    "all_sigma2": {"sigma": 2.0},
    "all_sigma8": {"sigma": 8.0},
}


@torch.no_grad()
def unfused_levels(detector: VSAD, images: torch.Tensor) -> tuple[list, torch.Tensor, torch.Tensor]:
    """Decoder levels (configured feature_levels) before fusion, the latent level, and the
    latent-grid homographies / neighbours — what VSAD._extract computes, split open."""
    B, M = images.shape[:2]
    latents, latent_level = detector._encode(images.flatten(0, 1))
    latents = latents.reshape(B, M, *latents.shape[1:])
    hom, neighbors = detector._latent_homography(latents.shape[-2:])
    features, _ = extract_features(
        detector.model,
        latents,
        detector.null_text,
        homography=hom,
        neighbors=neighbors,
        inversion_steps=detector.config.inversion_steps,
        t_end=detector.config.t_end,
        num_train_timesteps=detector.config.train.num_train_timesteps,
    )
    chosen = [features[level] for level in detector._levels()]
    return chosen + [latent_level.reshape(B, M, *latent_level.shape[1:])], hom, neighbors


def extract_split(detector: VSAD, split, batch: int = 4):
    levels, samples = None, []
    pending = []
    for sample in split:
        samples.append(sample)
        pending.append(to_model_tensor(sample.images, detector.config.image_size))
        if len(pending) == batch:
            levels = _append(levels, unfused_levels(detector, torch.stack(pending))[0])
            pending = []
    if pending:
        levels = _append(levels, unfused_levels(detector, torch.stack(pending))[0])
    return [torch.cat(chunks) for chunks in levels], samples


def _append(store, new):
    if store is None:
        return [[n] for n in new]
    for chunks, n in zip(store, new, strict=True):
        chunks.append(n)
    return store


def _pool(feat: torch.Tensor, k: int) -> torch.Tensor:
    if k == 1:
        return feat
    B, M = feat.shape[:2]
    flat = F.avg_pool2d(feat.flatten(0, 1), k, stride=1, padding=k // 2, count_include_pad=False)
    return flat[..., : feat.shape[-2], : feat.shape[-1]].reshape(B, M, *flat.shape[1:])


def score_variant(
    variant: dict, train_levels, test_levels, test_samples, hom, neighbors, view_size
):
    names = [f"d{i}" for i in range(len(train_levels) - 1)] + ["latent"]
    index = [names.index(n) for n in variant["levels"]]

    def prepare(levels):
        out = []
        for i in index:
            feat = levels[i]
            w = variant["latent_fusion"] if names[i] == "latent" else variant["fusion"]
            if w > 0:
                feat = torch.cat(
                    [
                        fuse_views(c, hom, neighbors, latent_height=hom_height, weight=w)
                        for c in feat.split(8)
                    ]
                )
            out.append(_pool(feat, variant["pool"]))
        return out

    hom_height = test_levels[-1].shape[-2]
    banks = FeatureBanks("local", radius=variant["radius"], normalization=variant["normalization"])
    train = prepare(train_levels)
    for start in range(0, train[0].shape[0], 8):
        banks.add([t[start : start + 8] for t in train])
    banks.finalize()
    test = prepare(test_levels)
    evaluator = Evaluator()
    for start in range(0, test[0].shape[0], 8):
        distances = banks.standardize(banks.search([t[start : start + 8] for t in test]))
        maps = gaussian_smooth(
            combine_levels(distances, variant["weights"], view_size), variant["sigma"]
        )
        view_scores, scores = view_and_sample_scores(maps)
        for b in range(maps.shape[0]):
            sample = test_samples[start + b]
            evaluator.add(
                sample,
                maps[b].numpy(),
                view_scores=view_scores[b].numpy(),
                sample_score=float(scores[b]),
            )
    return evaluator.compute()


def run_cell(category, model_overrides: list[str], variants: list[str]) -> dict:
    config = VSADConfig().with_overrides(model_overrides + ["latent_level=true"])
    detector = VSAD(config)
    start = time.perf_counter()
    detector.fit(category.train, progress=False)
    fit_s = time.perf_counter() - start
    train_levels, _ = extract_split(detector, category.train)
    test_levels, test_samples = extract_split(detector, category.test)
    _, hom, neighbors = unfused_levels(
        detector, to_model_tensor(category.test[0].images, config.image_size)[None]
    )
    neighbors = detector._fusion_neighbors(neighbors)
    out = {"fit_s": fit_s, "variants": {}}
    for name in variants:
        variant = {**BASE, **VARIANTS[name]}
        out["variants"][name] = score_variant(
            variant, train_levels, test_levels, test_samples, hom, neighbors, detector.view_size
        )
    return out


def summary(data: dict, variants: list[str], presets: list[str]) -> str:
    lines = []
    for preset in presets:
        cells = [v for k, v in data.items() if f"/{preset}/" in k]
        if not cells:
            continue
        lines += [
            f"\n**{preset}** ({len(cells)} cells)\n",
            "| variant | " + " | ".join(SHOWN) + " |",
            "|---|" + "---|" * len(SHOWN),
        ]
        for name in variants:
            runs = [c["variants"][name] for c in cells if name in c["variants"]]
            if not runs:
                continue
            row = []
            for metric in SHOWN:
                values = [100 * r[metric] for r in runs]
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                row.append(f"{statistics.mean(values):.1f} ± {sd:.1f}")
            lines.append(f"| {name} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--objects", default="kermit,et")
    parser.add_argument("--presets", default="easy,placement,realistic")
    parser.add_argument("--seeds", default="100,101")
    parser.add_argument("--model", nargs="*", default=[], help="VSADConfig key=value overrides")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--n-train", type=int, default=40)
    parser.add_argument("--n-test", type=int, default=60)
    parser.add_argument("--out", default="sweep.json")
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {unknown}; known {sorted(VARIANTS)}")
    out = Path(args.out)
    data = json.loads(out.read_text()) if out.is_file() else {}
    tag = " ".join(args.model) or "defaults"
    for preset in args.presets.split(","):
        for obj in args.objects.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                key = f"{tag}/{obj}/{preset}/seed{seed}"
                if key in data and all(v in data[key]["variants"] for v in variants):
                    continue
                category = make_photo_category(
                    Path(args.data) / obj,
                    preset,
                    seed=seed,
                    n_train=args.n_train,
                    n_test=args.n_test,
                )
                data[key] = run_cell(category, args.model, variants)
                atomic_write_json(out, data, indent=1)
                best = max(variants, key=lambda v: data[key]["variants"][v]["S-AUROC"])
                print(
                    f"{key}: fit {data[key]['fit_s']:.0f}s; "
                    + "; ".join(
                        f"{v} S {100 * data[key]['variants'][v]['S-AUROC']:.1f} "
                        f"V {100 * data[key]['variants'][v]['V-AUROC']:.1f}"
                        for v in variants
                    )
                    + f" | best S: {best}",
                    flush=True,
                )
    print(
        summary(
            {k: v for k, v in data.items() if k.startswith(tag + "/")},
            variants,
            args.presets.split(","),
        )
    )


if __name__ == "__main__":
    sys.exit(main())
