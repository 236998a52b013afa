"""MVAM + FRM attached to a diffusers UNet decoder (paper eq. 7, docs/design.md §4)."""

from __future__ import annotations

import pytest
import torch
from window_attention_cases import random_homographies, ring_neighbors

from vsad.model import FRM
from vsad.model.backbone import build_tiny_unet, load_stable_diffusion
from vsad.model.view_aligned_unet import ViewAlignedUNet, feature_grid_homography

pytest.importorskip("diffusers", reason="diffusers is a runtime dependency of the model")

M = 3


def inputs(rng, B=2):
    latents = torch.randn(B * M, 4, 16, 16, generator=rng)
    t = torch.full((B * M,), 500)
    text = torch.randn(B * M, 1, 32, generator=rng)
    hom = random_homographies((M, 2), rng, shift=1.0, perspective=0.001)
    return latents, t, text, hom, ring_neighbors(M, 2)


@pytest.mark.parametrize("placement", ["block", "resnet"])
def test_untrained_modules_leave_the_unet_unchanged(placement, rng):
    torch.manual_seed(0)
    unet = build_tiny_unet().eval()
    model = ViewAlignedUNet(unet, placement=placement).eval()
    latents, t, text, hom, nbr = inputs(rng)
    with torch.no_grad():
        plain = unet(latents, t, encoder_hidden_states=text).sample
        aligned, features = model(latents, t, text, views=M, homography=hom, neighbors=nbr)
    assert torch.equal(aligned, plain)
    assert len(features) == model.num_levels


def test_feature_levels_have_the_decoder_shapes(rng):
    model = ViewAlignedUNet(build_tiny_unet())
    latents, t, text, hom, nbr = inputs(rng, B=2)
    _, features = model(latents, t, text, views=M, homography=hom, neighbors=nbr)
    shapes = [tuple(f.shape) for f in features]
    # Tiny UNet: latents 16² -> bottleneck 4²; up blocks give 8², 16², 16².
    assert shapes == [(2, M, 64, 8, 8), (2, M, 64, 16, 16), (2, M, 32, 16, 16)]


def test_trained_modules_change_the_output_and_get_gradients(rng):
    model = ViewAlignedUNet(build_tiny_unet())
    with torch.no_grad():
        for mvam in model.mvam:
            mvam.proj_out.weight.normal_(std=0.1)
        for frm in model.frm:
            frm.conv2.weight.normal_(std=0.1)
    latents, t, text, hom, nbr = inputs(rng)
    out, _ = model(latents, t, text, views=M, homography=hom, neighbors=nbr)
    plain = model.unet(latents, t, encoder_hidden_states=text).sample
    assert not torch.allclose(out, plain)
    out.square().mean().backward()
    for name, p in model.named_parameters():
        if name.startswith(("mvam", "frm")):
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_ablation_switches_remove_the_modules(rng):
    model = ViewAlignedUNet(build_tiny_unet(), use_mvam=False, use_frm=False)
    assert not any(isinstance(m, FRM) for m in model.modules())
    latents, t, text, hom, nbr = inputs(rng)
    out, features = model(latents, t, text, views=M, homography=hom, neighbors=nbr)
    assert torch.equal(out, model.unet(latents, t, encoder_hidden_states=text).sample)
    assert len(features) == 3


def test_feature_grid_homography_maps_cell_centres():
    # A translation by 4 latent pixels is a translation by 1 cell on a 4× coarser grid.
    hom = torch.eye(3, dtype=torch.float64)
    hom[0, 2] = 4.0
    coarse = feature_grid_homography(hom, 4)
    torch.testing.assert_close(coarse @ torch.tensor([2.0, 3.0, 1.0], dtype=torch.float64),
                               torch.tensor([3.0, 3.0, 1.0], dtype=torch.float64))  # fmt: skip
    # A scaling about the origin of latent pixel centres: cell centres map consistently.
    hom = torch.diag(torch.tensor([2.0, 2.0, 1.0], dtype=torch.float64))
    coarse = feature_grid_homography(hom, 2)
    cell = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)  # covers latent pixels 2..3
    latent_centre = 2 * cell[:2] + 0.5
    mapped_latent = 2 * latent_centre
    torch.testing.assert_close((coarse @ cell)[:2], (mapped_latent - 0.5) / 2)


def test_bad_input(rng, tmp_path):
    model = ViewAlignedUNet(build_tiny_unet())
    latents, t, text, hom, nbr = inputs(rng)
    with pytest.raises(ValueError, match=r"sample: got shape \(5, 4, 16, 16\), expected \(B\*M"):
        model(latents[:5], t[:5], text[:5], views=M, homography=hom, neighbors=nbr)
    with pytest.raises(ValueError, match="placement: got 'middle'"):
        ViewAlignedUNet(build_tiny_unet(), placement="middle")
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"vae/config.json is missing"):
        load_stable_diffusion(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_stable_diffusion(tmp_path / "nope")
