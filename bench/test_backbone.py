"""The pretrained EfficientNet-Lite0 backbone: forward of one five-view 256² sample per
precision and layout, and the detectors built on it against the tiny UNet pipeline (the
default before the real-photo benchmark).

- backbone providers (stages 2 + 4, 152 channels at 32²): `fp32_nchw` — the library's modules
  as loaded (batch norms separate, NCHW; the baseline); `fp32_channels_last_unfolded` — the
  same modules channels-last; `fp32_channels_last` — batch norms folded into the convolutions
  and channels-last (PretrainedFeatures' default); `bf16_channels_last` — the same under bf16
  autocast (only where oneDNN has bf16 kernels). Each is checked against the baseline first;
  the feature error is recorded.
- bf16 and the scores: PatchCore fitted with float32 and with bf16 features on the same data;
  the sample scores' largest relative change, rank agreement and S-AUROC are recorded.
- predict of one five-view sample (views 256², batch 1): the VSAD default (pretrained level
  alone, 384² input, no UNet), VSAD's UNet pipeline on pretrained features (256², two decoder
  levels + the pretrained level), the tiny UNet pipeline (`UNET_PIPELINE`, 128²; the baseline),
  PatchCore and PatchKNN, one run.
- fit on 40 five-view samples (100 training steps where a UNet is trained, exact
  homographies): one round each.

Run: pytest bench/test_backbone.py --benchmark-json=backbone.json
then python bench/report.py backbone.json for the BENCHMARKS.md tables.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vsad.data import make_category
from vsad.detector import UNET_PIPELINE, VSAD, PatchCore, PatchCoreConfig, PatchKNN, VSADConfig
from vsad.model.pretrained import (
    PretrainedFeatures,
    bf16_supported,
    load_efficientnet_lite,
    normalize_input,
)

NAME, STAGES = "efficientnet-lite0", (2, 4)
PROVIDERS = (
    "fp32_nchw",
    "fp32_channels_last_unfolded",
    "fp32_channels_last",
    "bf16_channels_last",
)


@pytest.fixture(scope="module")
def views():
    return torch.rand(5, 3, 256, 256, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def unfolded():
    """The library's network as loaded, run block by block in NCHW (no folding)."""
    net = load_efficientnet_lite(NAME)
    ends = PretrainedFeatures(NAME, STAGES).stage_ends

    @torch.no_grad()
    def run(images):
        x = net._swish(net._bn0(net._conv_stem(normalize_input(images))))
        outputs = []
        for index, block in enumerate(net._blocks[: ends[-1]]):
            x = block(x)
            if index + 1 in ends:
                outputs.append(x)
        up = F.interpolate(outputs[1], outputs[0].shape[-2:], mode="bilinear")
        return torch.cat([outputs[0], up], 1)

    return run


def _provider(name: str, unfolded):
    if name == "fp32_nchw":
        return unfolded
    if name == "fp32_channels_last_unfolded":
        net = load_efficientnet_lite(NAME).to(memory_format=torch.channels_last)
        ends = PretrainedFeatures(NAME, STAGES).stage_ends

        @torch.no_grad()
        def run(images):
            x = normalize_input(images).contiguous(memory_format=torch.channels_last)
            x = net._swish(net._bn0(net._conv_stem(x)))
            outputs = []
            for index, block in enumerate(net._blocks[: ends[-1]]):
                x = block(x)
                if index + 1 in ends:
                    outputs.append(x)
            up = F.interpolate(outputs[1], outputs[0].shape[-2:], mode="bilinear")
            return torch.cat([outputs[0], up], 1).contiguous()

        return run
    if name == "bf16_channels_last":
        return PretrainedFeatures(NAME, STAGES, precision="bf16")
    return PretrainedFeatures(NAME, STAGES)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_backbone_forward(benchmark, machine, views, unfolded, provider):
    if provider.startswith("bf16") and not bf16_supported():
        pytest.skip("no bf16 kernels on this CPU (oneDNN reports none)")
    run = _provider(provider, unfolded)
    want, got = unfolded(views), run(views)
    assert got.shape == (5, 152, 32, 32) and got.dtype == torch.float32
    rel = float((got - want).norm() / want.norm())
    max_rel = float((got - want).abs().max() / want.abs().max())
    assert rel < (0.1 if provider.startswith("bf16") else 1e-5), rel
    benchmark.group = f"{NAME} stages {STAGES} forward, 5 views 256²"
    benchmark.pedantic(run, args=(views,), rounds=15, warmup_rounds=2, iterations=1)
    benchmark.extra_info.update(
        machine, provider=provider, baseline="fp32_nchw", rel_l2_error=rel, max_rel_error=max_rel
    )


@pytest.fixture(scope="module")
def category():
    return make_category(n_train=40, n_test=20, seed=0)


def test_bf16_features_and_patchcore_scores(category, machine):
    """Not timed: how much bf16 features move PatchCore's scores on the same data."""
    if not bf16_supported():
        pytest.skip("no bf16 kernels on this CPU")
    from vsad.eval.curves import auroc

    scores, labels = {}, [s.label for s in category.test]
    for precision in ("fp32", "bf16"):
        detector = PatchCore()
        detector._backbone = PretrainedFeatures(NAME, STAGES, precision=precision)
        detector.fit(category.train, progress=False)
        scores[precision] = np.array(
            [p.score for p in detector.predict_many(category.test, progress=False)]
        )
    a, b = scores["fp32"], scores["bf16"]
    rank_a, rank_b = a.argsort().argsort(), b.argsort().argsort()
    spearman = float(np.corrcoef(rank_a, rank_b)[0, 1])
    # Printed (run with -s): this test is not a benchmark, so it has no extra_info.
    print(
        f"\nbf16 vs fp32 PatchCore sample scores ({len(a)} samples): max rel change "
        f"{np.max(np.abs(b - a) / np.abs(a)):.4f}, Spearman {spearman:.4f}, S-AUROC "
        f"{auroc(a, labels):.4f} vs {auroc(b, labels):.4f}"
    )
    assert spearman > 0.5


def _fit_vsad(category, config: dict, steps=2):
    config = VSADConfig.from_dict(config).with_overrides({"train.steps": steps})
    return VSAD(config).fit(category.train, homographies=category.homographies, progress=False)


VSAD_CONFIGS = {
    "vsad_default": {},
    "vsad_default_unaligned": {"align": "none"},  # what view registration costs
    "vsad_unet_lite0": {"image_size": 256, "feature_levels": [-2, -1], "feature_pool": 3},
    "vsad_unet_tiny": UNET_PIPELINE,  # the baseline
}
BASELINE = "vsad_unet_tiny"


@pytest.fixture(scope="module")
def detectors(category):
    fitted = {name: _fit_vsad(category, config) for name, config in VSAD_CONFIGS.items()}
    fitted["patchcore"] = PatchCore().fit(category.train, progress=False)
    fitted["patchknn"] = PatchKNN().fit(category.train, progress=False)
    return fitted


@pytest.mark.parametrize("provider", [*VSAD_CONFIGS, "patchcore", "patchknn"])
def test_predict_one_sample(benchmark, machine, category, detectors, provider):
    detector = detectors[provider]
    sample = category.test[0]
    result = detector.predict(sample)
    assert result.maps.shape == (5, 256, 256) and np.isfinite(result.maps).all()
    timings: dict = {}
    for _ in range(3):
        detector.predict(sample, timings=timings)
    benchmark.group = "predict one five-view sample (views 256²)"
    benchmark.pedantic(detector.predict, args=(sample,), rounds=9, iterations=1)
    benchmark.extra_info.update(
        machine,
        provider=provider,
        baseline=BASELINE,
        breakdown_seconds={k: v / 3 for k, v in timings.items()},
    )


@pytest.mark.parametrize("provider", [*VSAD_CONFIGS, "patchcore"])
def test_fit_40_samples(benchmark, machine, category, provider):
    """One round each (100 training steps where a UNet is trained)."""

    def fit():
        start = time.perf_counter()
        if provider == "patchcore":
            PatchCore().fit(category.train, progress=False)
        else:
            _fit_vsad(category, VSAD_CONFIGS[provider], steps=100)
        return time.perf_counter() - start

    benchmark.group = "fit on 40 five-view samples (views 256²)"
    benchmark.pedantic(fit, rounds=1, iterations=1)
    benchmark.extra_info.update(machine, provider=provider, baseline=BASELINE)


# Predict on the GPU (issue 16's target: a five-view predict with the tiny model <= 50 ms). The
# whole call is timed: views to the device, the model, the search, scoring, and the maps back to
# the CPU in the Prediction. Skipped without CUDA (bench/gpu_check.sh runs them).
CUDA_CONFIGS = {
    "vsad_default-cuda": {},
    "vsad_unet_tiny-cuda": UNET_PIPELINE,
    "vsad_unet_tiny_bf16-cuda": {**UNET_PIPELINE, "autocast": "bf16"},
}


@pytest.fixture(scope="module")
def cuda_detectors(category):
    return {
        name: _fit_vsad(category, {**config, "device": "cuda"})
        for name, config in CUDA_CONFIGS.items()
    }


@pytest.mark.parametrize("provider", [*CUDA_CONFIGS, "patchcore-cuda"])
def test_predict_one_sample_cuda(benchmark, machine, category, provider, request):
    if provider == "patchcore-cuda":
        detector = PatchCore(PatchCoreConfig(device="cuda"))
        detector.fit(category.train, progress=False)
    else:
        detector = request.getfixturevalue("cuda_detectors")[provider]
    sample = category.test[0]
    result = detector.predict(sample)
    assert result.maps.shape == (5, 256, 256) and np.isfinite(result.maps).all()
    # (GPU maps against CPU maps: tests/test_device.py's cuda tier, run by gpu_check.sh first.)
    timings: dict = {}
    for _ in range(3):
        detector.predict(sample, timings=timings)
    benchmark.group = "predict one five-view sample (views 256²) cuda"
    benchmark.pedantic(detector.predict, args=(sample,), rounds=20, warmup_rounds=3, iterations=1)
    benchmark.extra_info.update(
        machine,
        provider=provider,
        baseline="vsad_unet_tiny-cuda",
        breakdown_seconds={k: v / 3 for k, v in timings.items()},
    )
