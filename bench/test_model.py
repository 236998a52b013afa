"""Latency of the paper's UNet pipeline (`UNET_PIPELINE`: tiny UNet, MVAM + FRM after each
decoder ResBlock): predict of one five-view 256² sample (with a breakdown into encoder, UNet,
MVAM, cross-view fusion, bank search, scoring), with and without the fusion and with the block
placement of MVAM + FRM, and one training step. The default model (pretrained level, no UNet)
is timed in bench/test_backbone.py.

Weights do not change the cost, so the model is fitted with 2 steps. Run:
    pytest bench/test_model.py --benchmark-json=model.json; python bench/report.py model.json
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vsad.data import make_category
from vsad.detector import UNET_PIPELINE, VSAD, PatchKNN, VSADConfig
from vsad.model.training import VALDMTrainer


@pytest.fixture(scope="module")
def category():
    return make_category(n_train=40, n_test=4, seed=0)


def _fit(category, **overrides):
    config = VSADConfig.from_dict(UNET_PIPELINE).with_overrides({"train.steps": 2, **overrides})
    return VSAD(config).fit(category.train, homographies=category.homographies, progress=False)


@pytest.fixture(scope="module")
def fitted(category):
    return _fit(category)


@pytest.fixture(scope="module")
def fitted_block(category):
    return _fit(category, placement="block")


# The pipeline fuses the views' features (view_fusion=0.5); 0.0 is the paper's pipeline, and
# placement="block" the earlier placement (MVAM + FRM after each decoder block, not each
# ResBlock): both timed in the same run as baselines of what the default costs.
@pytest.mark.parametrize(
    ("variant", "view_fusion"),
    [("default", 0.5), ("default", 0.0), ("block", 0.5)],
    ids=["fusion", "no_fusion", "block_placement"],
)
def test_predict_one_sample(benchmark, request, category, machine, variant, view_fusion):
    detector = request.getfixturevalue("fitted" if variant == "default" else "fitted_block")
    detector.config.view_fusion = view_fusion
    sample = category.test[0]
    result = detector.predict(sample)
    assert result.maps.shape == (5, 256, 256) and np.isfinite(result.maps).all()
    timings: dict = {}
    runs = 5
    for _ in range(runs):
        detector.predict(sample, timings=timings)
    breakdown = {k: v / runs for k, v in timings.items()}
    breakdown.update(fused_op_seconds(detector, sample, runs))
    benchmark.extra_info.update(machine=machine, breakdown_seconds=breakdown)
    benchmark.pedantic(detector.predict, args=(sample,), rounds=9, iterations=1)


FUSED_OPS = ("vsad::window_attention_forward", "vsad::min_l2_local")


def fused_op_seconds(detector, sample, runs: int) -> dict[str, float]:
    """Seconds per predict inside the fused ops themselves (torch.profiler events; the "mvam"
    stage also counts MVAM's 1×1 projections, "bank_search" the tensor reshuffling around)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            detector.predict(sample)
    totals = {e.key: e.cpu_time_total for e in prof.key_averages() if e.key in FUSED_OPS}
    assert set(totals) == set(FUSED_OPS), f"profiler saw {sorted(totals)}"
    return {f"op {name}": us * 1e-6 / runs for name, us in totals.items()}


def test_patchknn_predict_one_sample(benchmark, category, machine):
    knn = PatchKNN().fit(category.train, progress=False)
    assert np.isfinite(knn.predict(category.test[0]).score)
    benchmark.extra_info.update(machine=machine)
    benchmark.pedantic(knn.predict, args=(category.test[0],), rounds=5, iterations=1)


def test_training_step(benchmark, fitted, machine):
    c = fitted.config
    hom, neighbors = fitted._latent_homography((32, 32))
    trainer = VALDMTrainer(fitted.model, c.train, homography=hom, neighbors=neighbors)
    latents = torch.randn(8, 5, 48, 32, 32, generator=torch.Generator().manual_seed(0))
    assert np.isfinite(trainer.train_step(latents)["loss"])
    benchmark.extra_info.update(machine=machine, batch_samples=c.train.batch_size)
    benchmark.pedantic(trainer.train_step, args=(latents,), rounds=5, iterations=1)
