"""VALDM training: the loss falls, checkpoints resume exactly, refine loss semantics."""

from __future__ import annotations

import pytest
import torch
from window_attention_cases import random_homographies, ring_neighbors

from vsad.model.backbone import build_tiny_unet
from vsad.model.losses import refine_loss, warp_to_view
from vsad.model.training import TrainConfig, VALDMTrainer
from vsad.model.view_aligned_unet import ViewAlignedUNet

pytest.importorskip("diffusers", reason="diffusers is a runtime dependency of the model")

M = 3


def make_trainer(rng, **cfg):
    torch.manual_seed(0)
    model = ViewAlignedUNet(build_tiny_unet())
    hom = random_homographies((M, 2), rng, shift=1.0, perspective=0.001)
    config = TrainConfig(**{"steps": 4, "batch_size": 2, "lr": 1e-3, **cfg})
    return VALDMTrainer(model, config, homography=hom, neighbors=ring_neighbors(M, 2))


def test_training_lowers_the_loss_on_a_tiny_set(rng):
    trainer = make_trainer(rng, steps=15)
    latents = torch.randn(2, M, 4, 16, 16, generator=rng)

    def fixed_loss():
        with torch.no_grad():
            return float(trainer.losses(latents, torch.Generator().manual_seed(7))[0])

    before = fixed_loss()
    trainer.fit(latents, progress=False)
    assert fixed_loss() < before


def test_checkpoint_resume_is_exact(rng, tmp_path):
    latents = torch.randn(3, M, 4, 16, 16, generator=rng)
    straight = make_trainer(torch.Generator().manual_seed(1), steps=4)
    straight.fit(latents, progress=False)

    first = make_trainer(torch.Generator().manual_seed(1), steps=2, checkpoint_every=2)
    first.fit(latents, tmp_path, progress=False)
    assert (tmp_path / "checkpoint.safetensors").is_file()
    assert not list(tmp_path.glob(".*tmp*")), "temporary checkpoint file left behind"
    resumed = make_trainer(torch.Generator().manual_seed(1), steps=4)
    resumed.fit(latents, tmp_path, progress=False)
    assert resumed.step == 4
    for (name, a), b in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_checkpoint_round_trip_restores_every_state(rng, tmp_path):
    latents = torch.randn(2, M, 4, 16, 16, generator=rng)
    trainer = make_trainer(torch.Generator().manual_seed(2), steps=2)
    trainer.fit(latents, progress=False)
    trainer.save_checkpoint(tmp_path / "c.safetensors")
    fresh = make_trainer(torch.Generator().manual_seed(2), steps=2)
    fresh.load_checkpoint(tmp_path / "c.safetensors")
    assert fresh.step == 2
    assert torch.equal(fresh.null_text, trainer.null_text)
    assert torch.equal(fresh.generator.get_state(), trainer.generator.get_state())
    want, got = trainer.optimizer.state_dict(), fresh.optimizer.state_dict()
    assert got["param_groups"] == want["param_groups"]
    assert got["state"].keys() == want["state"].keys()
    for index, values in want["state"].items():
        for key, value in values.items():
            assert torch.equal(got["state"][index][key], value), (index, key)


class _RunsCode:
    """Unpickling this object creates a file: proof that a loader executed pickled code."""

    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _pickled_checkpoint(path, marker):
    _RunsCode.marker = marker
    torch.save({"model": {}, "step": 1, "payload": _RunsCode()}, path)


def test_a_pickle_checkpoint_is_refused_unread(rng, tmp_path):
    marker = tmp_path / "code-ran"
    _pickled_checkpoint(tmp_path / "evil.safetensors", marker)
    trainer = make_trainer(rng)
    with pytest.raises(ValueError, match="not a vsad safetensors checkpoint.*refused"):
        trainer.load_checkpoint(tmp_path / "evil.safetensors")
    # An old-style checkpoint.pt in a run folder: an error naming it, never a silent restart.
    run = tmp_path / "run"
    run.mkdir()
    _pickled_checkpoint(run / "checkpoint.pt", marker)
    with pytest.raises(ValueError, match=r"checkpoint\.pt.*unpickling can run arbitrary code"):
        trainer.fit(torch.randn(2, M, 4, 16, 16, generator=rng), run, progress=False)
    assert not marker.exists(), "loading a checkpoint executed pickled code"
    assert trainer.step == 0


def test_a_safetensors_file_without_training_state_is_refused(rng, tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="no 'vsad_checkpoint' header entry"):
        make_trainer(rng).load_checkpoint(tmp_path / "other.safetensors")
    save_file(
        {"x": torch.zeros(2)}, tmp_path / "v9.safetensors", {"vsad_checkpoint": '{"format": 9}'}
    )
    with pytest.raises(ValueError, match="format 9, expected 1"):
        make_trainer(rng).load_checkpoint(tmp_path / "v9.safetensors")


def test_warp_to_view_recovers_a_translated_image(rng):
    source = torch.randn(1, 2, 6, 8, generator=rng, dtype=torch.float64)
    hom = torch.eye(3, dtype=torch.float64)[None].clone()
    hom[0, 0, 2] = 2.0  # target pixel x reads source pixel x + 2
    warped, valid = warp_to_view(source, hom)
    torch.testing.assert_close(warped[..., :6], source[..., 2:])
    assert valid[0, 0, :, :6].all() and not valid[0, 0, :, 6:].any()


def test_refine_loss_is_zero_for_consistent_views_only_in_warped_mode(rng):
    # View 1 sees view 0's content shifted by one pixel; the warped loss sees them as consistent.
    base = torch.randn(1, 1, 4, 6, 10, generator=rng)
    feat = torch.cat([base, torch.roll(base, shifts=-1, dims=-1)], dim=1)  # (1, 2, 4, 6, 10)
    hom = torch.eye(3, dtype=torch.float64).repeat(2, 1, 1, 1)
    hom[0, 0, 0, 2] = -1.0  # view 0 pixel x -> view 1 pixel x - 1
    hom[1, 0, 0, 2] = 1.0
    neighbors = torch.tensor([[1], [0]])
    warped = refine_loss([feat], hom, neighbors, latent_height=6, mode="warped")
    literal = refine_loss([feat], hom, neighbors, latent_height=6, mode="literal")
    assert float(warped) < 1e-10
    assert float(literal) > 0.1
    with pytest.raises(ValueError, match="mode: got 'exact'"):
        refine_loss([feat], hom, neighbors, 6, mode="exact")


@pytest.mark.parametrize("mode", ["shared", "independent"])
def test_view_timesteps_shared_or_per_view(mode, rng):
    trainer = make_trainer(rng, view_timesteps=mode)
    seen = []
    trainer.model.register_forward_pre_hook(lambda module, args: seen.append(args[1].clone()))
    B = 64
    trainer.losses(torch.randn(B, M, 4, 8, 8, generator=rng), torch.Generator().manual_seed(3))
    (t,) = seen
    per_sample = t.reshape(B, M)
    # Views drawn independently from 1000 levels coincide by chance with probability ~1e-6.
    shared_samples = int((per_sample == per_sample[:, :1]).all(dim=1).sum())
    assert shared_samples == (B if mode == "shared" else 0)
    assert len(set(per_sample[:, 0].tolist())) > B // 2, "samples must get different levels"


def test_bad_config():
    with pytest.raises(ValueError, match="steps: got 0"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="refine_mode: got 'x'"):
        TrainConfig(refine_mode="x")
    with pytest.raises(ValueError, match="view_timesteps: got 'per_pixel'"):
        TrainConfig(view_timesteps="per_pixel")


def test_feature_extraction_by_ddim_inversion(rng):
    from vsad.model.inference import extract_features

    trainer = make_trainer(rng)
    latents = torch.randn(2, M, 4, 16, 16, generator=rng)
    kwargs = {"homography": trainer.homography, "neighbors": trainer.neighbors}
    feats, t = extract_features(
        trainer.model, latents, trainer.null_text, inversion_steps=4, **kwargs
    )
    assert t == 200
    assert [tuple(f.shape) for f in feats] == [
        (2, M, 64, 8, 8),
        (2, M, 64, 16, 16),
        (2, M, 32, 16, 16),
    ]
    again, _ = extract_features(
        trainer.model, latents, trainer.null_text, inversion_steps=4, **kwargs
    )
    for a, b in zip(feats, again, strict=True):
        assert torch.equal(a, b), "inversion must be deterministic"
    clean, t0 = extract_features(
        trainer.model, latents, trainer.null_text, inversion_steps=0, **kwargs
    )
    assert t0 == 0 and not torch.allclose(clean[-1], feats[-1])
    with pytest.raises(ValueError, match="t_end: got 1000"):
        extract_features(trainer.model, latents, trainer.null_text, t_end=1000, **kwargs)
