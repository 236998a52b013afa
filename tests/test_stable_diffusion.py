"""The Stable Diffusion 2 path: a local folder in diffusers layout (here a miniature with SD2's
structure — 4 levels, linear projections, 1024-wide cross-attention, per-level head dims — and
random weights, since no real weights may be downloaded) drives the whole fit/predict/save/load
cycle with its VAE as the latent encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vsad.data import make_category
from vsad.detector import VSAD, VSADConfig
from vsad.model.backbone import load_stable_diffusion


def _mini_sd2(folder, *, variant=None):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32, 32, 32),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=1024,
        attention_head_dim=(2, 4, 4, 4),
        use_linear_projection=True,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        latent_channels=4,
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=8,
        scaling_factor=0.18215,
    )
    if variant == "fp16":
        unet, vae = unet.half(), vae.half()
    unet.save_pretrained(folder / "unet", variant=variant)
    vae.save_pretrained(folder / "vae", variant=variant)
    return folder


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return _mini_sd2(tmp_path_factory.mktemp("sd2"))


def test_fit_predict_save_load_with_a_local_stable_diffusion_folder(sd_folder, tmp_path):
    category = make_category(n_train=3, n_test=2, n_views=3, image_size=96, seed=5)
    config = VSADConfig(
        stable_diffusion=str(sd_folder),
        encoder="vae",
        image_size=64,
        feature_levels=[-2, -1],
        latent_level=False,
    )
    detector = VSAD(config.with_overrides(["train.steps=2"]))
    detector.fit(category.train, homographies=category.homographies, progress=False)
    # The SD UNet (4 decoder blocks, 1024-wide text conditioning) is the one that was trained;
    # MVAM + FRM follow each of its decoder ResBlocks (2 per block in this miniature, 3 in SD2).
    assert detector.model.num_levels == 4 * len(detector.model.unet.up_blocks[0].resnets) == 8
    assert detector.null_text.shape == (1, 1, 1024)
    assert detector.encoder.stride == 8 and detector.encoder.latent_channels == 4
    result = detector.predict(category.test[0])
    assert result.maps.shape == (3, 96, 96) and np.isfinite(result.maps).all()

    detector.save(tmp_path / "model")
    again = VSAD.load(tmp_path / "model").predict(category.test[0])
    np.testing.assert_array_equal(again.maps, result.maps)
    assert again.score == result.score


def test_half_precision_variant_loads_as_float32(tmp_path):
    folder = _mini_sd2(tmp_path / "sd2_fp16", variant="fp16")
    unet, vae = load_stable_diffusion(folder)
    assert {p.dtype for p in [*unet.parameters(), *vae.parameters()]} == {torch.float32}


def test_folder_without_weights_is_named(sd_folder, tmp_path):
    broken = tmp_path / "sd2_noweights"
    for part in ("unet", "vae"):
        (broken / part).mkdir(parents=True)
        (broken / part / "config.json").write_text((sd_folder / part / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match=r"no weights in .*unet"):
        load_stable_diffusion(broken)


def test_stable_diffusion_needs_decoder_levels(sd_folder):
    with pytest.raises(ValueError, match="feature_levels: got \\[\\] with stable_diffusion"):
        VSADConfig(stable_diffusion=str(sd_folder), encoder="vae")


def test_tiny_unet_overrides_are_refused_with_stable_diffusion(sd_folder):
    config = VSADConfig(
        stable_diffusion=str(sd_folder),
        encoder="vae",
        unet={"layers_per_block": 2},
        feature_levels=[-1],
    )
    category = make_category(n_train=2, n_test=1, n_views=3, image_size=64, seed=1)
    with pytest.raises(ValueError, match="unet: overrides of the tiny UNet config"):
        VSAD(config).fit(category.train, homographies=category.homographies, progress=False)
