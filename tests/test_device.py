"""The `device` of a detector (issue 16): config and CLI checks, the device not saved with a
model, and device-cleanliness shown without a GPU — whole fits and predictions on a stand-in
device (tests/stand_in_device.py) on which any op that mixes devices fails, as it would on a
GPU. The `cuda` tier runs the same on a real GPU and is skipped without one."""

from __future__ import annotations

import json
import warnings
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from stand_in_device import CrossDeviceError, StandInDevice, is_on, unwrap

import vsad.detector.device as devices
import vsad.model.training as training
from vsad.data import make_category
from vsad.detector import (
    UNET_PIPELINE,
    VSAD,
    DetectorConfig,
    PatchCore,
    PatchCoreConfig,
    PatchKNN,
    PatchKNNConfig,
    VSADConfig,
    load_detector,
)

TINY_UNET = {
    **UNET_PIPELINE,
    "image_size": 64,
    "train": {"steps": 2, "batch_size": 1, "checkpoint_every": 100},
    "inversion_steps": 1,
    "batch_size": 2,
    "smoothing_sigma": 2.0,
}
GPU = torch.device("cuda", 0)
# The stand-in GPU is labelled "meta": a PyTorch build without CUDA has device guards for the
# CPU and meta only, and autograd, indexing and .item() ask for one (stand_in_device.py).
STAND_IN = torch.device("meta")


@pytest.fixture(scope="module")
def category():
    return make_category(n_train=4, n_test=2, n_views=3, image_size=64, seed=5, defect_rate=0.5)


def _detectors() -> dict:
    return {
        "default": lambda **c: VSAD(VSADConfig(image_size=64, **c)),
        "patchknn": lambda **c: PatchKNN(PatchKNNConfig(image_size=32, smoothing_sigma=2.0, **c)),
        "patchcore": lambda **c: PatchCore(PatchCoreConfig(image_size=64, **c)),
    }


def _fit(detector, category):
    extra = {"homographies": category.homographies} if isinstance(detector, VSAD) else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few samples: the threshold warnings
        return detector.fit(category.train, progress=False, **extra)


def _maps(detector, samples) -> np.ndarray:
    return np.stack([p.maps for p in detector.predict_many(samples, progress=False)])


@contextmanager
def stand_in(monkeypatch, device: torch.device):
    """config device "cuda" runs on the stand-in `device` (see stand_in_device.py)."""
    mode = StandInDevice(device)
    monkeypatch.setattr(devices, "cuda_device", lambda index, *, name, key="device": mode.device)
    monkeypatch.setattr(torch.cuda, "_lazy_init", lambda: None)
    monkeypatch.setattr(training, "make_generator", mode.generator_for)
    # The stand-in's tensors hold CPU memory: keep the ops on their PyTorch reference.
    monkeypatch.setenv("VSAD_BACKEND", "reference")
    with mode:
        yield mode


# -- the config field, the CLI flag, errors ---------------------------------------------------
def test_device_field_is_validated_with_the_key_the_value_and_what_is_expected():
    assert DetectorConfig().device == "cpu" and VSADConfig().device == "cpu"
    for good in ("cpu", "cuda", "cuda:0", "cuda:3"):
        assert PatchKNNConfig(device=good).device == good  # checked against the GPUs at fit
    for bad in ("gpu", "CUDA", "cuda:", "cuda:x", "cuda0", "mps", ""):
        with pytest.raises(ValueError, match=r"^device: got .*, expected 'cpu', 'cuda' or"):
            VSADConfig(device=bad)
    with pytest.raises(ValueError, match="^device: got 0, expected a string"):
        VSADConfig(device=0)
    assert VSADConfig().with_overrides(["device=cuda:1"]).device == "cuda:1"
    with pytest.raises(ValueError, match="^autocast: got 'fp8', expected one of"):
        VSADConfig(autocast="fp8")
    assert VSADConfig().autocast == "none"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error_at_fit_load_and_on_the_cli(category, tmp_path, capsys):
    from vsad.cli import main

    expected = r"^device: got 'cuda', but CUDA is not available"
    with pytest.raises(ValueError, match=expected):
        PatchKNN(PatchKNNConfig(image_size=32, device="cuda")).fit(category.train, progress=False)
    fitted = _fit(PatchKNN(PatchKNNConfig(image_size=32)), category)
    fitted.save(tmp_path / "model")
    with pytest.raises(ValueError, match=expected.replace("'cuda'", "'cuda:1'")):
        load_detector(tmp_path / "model", device="cuda:1")
    with pytest.raises(ValueError, match=r"^device: got 'gpu', expected"):
        load_detector(tmp_path / "model", device="gpu")
    with pytest.raises(ValueError, match=expected):
        fitted.to("cuda")
    views = tmp_path / "sample"
    views.mkdir()
    from vsad.data.imageio import write_image

    for k, view in enumerate(category.test[0].images):
        write_image(views / f"{k}.png", view)
    assert main(["predict", "--run", str(tmp_path / "model"), str(views), "--device", "cuda"]) == 2
    assert "vsad predict: error: device: got 'cuda', but CUDA is not available" in (
        capsys.readouterr().err
    )
    run = tmp_path / "run"
    args = ["train", "--data", str(tmp_path), "--category", "x", "--out", str(run)]
    assert main([*args, "--model", "patchknn", "--device", "cuda"]) == 2
    assert "vsad train: error: device: got 'cuda'" in capsys.readouterr().err
    assert not run.exists()  # refused before the run folder was made


def test_cli_device_flag_is_the_device_override(monkeypatch):
    from vsad import cli

    parser = cli.build_parser()
    for command in (
        ["train", "--data", "d", "--category", "c", "--out", "o"],
        ["test", "--run", "r"],
        ["predict", "--run", "r", "x.png"],
        ["calibrate", "--run", "r"],
    ):
        assert parser.parse_args([*command, "--device", "cuda:1"]).device == "cuda:1"
        assert parser.parse_args(command).device is None
    seen = {}

    class Stop(Exception):
        pass

    def fake_open(args, split):
        raise Stop

    monkeypatch.setattr(cli, "_open", fake_open)
    monkeypatch.setattr(devices, "cuda_device", lambda index, *, name, key="device": GPU)
    real_init = PatchKNN.__init__

    def spy(self, config=None):
        real_init(self, config)
        seen["device"] = self.config.device

    monkeypatch.setattr(PatchKNN, "__init__", spy)
    args = ["train", "--data", "d", "--category", "c", "--out", "o", "--model", "patchknn"]
    with pytest.raises(Stop):
        cli.main([*args, "--device", "cuda:0", "device=cpu"])
    assert seen["device"] == "cuda:0"  # --device wins over an override, as documented
    with pytest.raises(Stop):
        cli.main([*args, "device=cuda"])
    assert seen["device"] == "cuda"


def test_fit_and_predict_run_convolutions_and_matmuls_in_ieee_float32(category, monkeypatch):
    """cuDNN's default TF32 for float32 convolutions (Ampere and newer) would make GPU scores
    differ from CPU scores beyond rounding: fit and predict switch it off, whatever the user's
    global setting, and restore that setting afterwards."""
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = conv.fp32_precision, matmul.fp32_precision
    detector = PatchKNN(PatchKNNConfig(image_size=32, smoothing_sigma=2.0))
    seen = []
    extract = detector._extract

    def recording(*args, **kwargs):
        seen.append((conv.fp32_precision, matmul.fp32_precision))
        return extract(*args, **kwargs)

    monkeypatch.setattr(detector, "_extract", recording)
    try:
        conv.fp32_precision = matmul.fp32_precision = "tf32"  # a user's global choice
        _fit(detector, category)
        fitted = len(seen)
        detector.predict(category.test[0])
        after = conv.fp32_precision, matmul.fp32_precision
    finally:
        conv.fp32_precision, matmul.fp32_precision = before
    assert fitted >= 1 and len(seen) > fitted  # both fit and predict were observed
    assert set(seen) == {("ieee", "ieee")}
    assert after == ("tf32", "tf32")


def test_the_device_is_not_saved_and_a_cpu_model_stays_bit_identical(category, tmp_path):
    """device="cpu" (the default) moves nothing: a detector built with it, one moved to the CPU
    with .to() and one loaded give bit-identical maps, on plain CPU tensors; the device is left
    out of detector.json, and one written there by hand is ignored on load."""
    fitted = _fit(VSAD(VSADConfig(image_size=64, device="cpu")), category)
    assert fitted.device == torch.device("cpu")
    assert all(type(t) is torch.Tensor for t in fitted.banks.tensors().values())
    reference = _maps(fitted, category.test)
    default = _fit(VSAD(VSADConfig(image_size=64)), category)
    assert np.array_equal(_maps(default, category.test), reference)
    assert np.array_equal(_maps(fitted.to("cpu"), category.test), reference)
    fitted.save(tmp_path / "model")
    meta = json.loads((tmp_path / "model" / "detector.json").read_text())
    assert "device" not in meta["config"]
    meta["config"]["device"] = "cuda:7"  # hand-edited: not the loading machine's choice
    (tmp_path / "model" / "detector.json").write_text(json.dumps(meta))
    loaded = load_detector(tmp_path / "model")
    assert loaded.config.device == "cpu" and loaded.device == torch.device("cpu")
    assert np.array_equal(_maps(loaded, category.test), reference)


# -- the stand-in device: the checks can fail ---------------------------------------------------
def test_the_stand_in_device_refuses_what_a_gpu_refuses(monkeypatch):
    with stand_in(monkeypatch, STAND_IN) as mode:
        x = torch.ones(3, 4, device=STAND_IN)
        assert x.device == STAND_IN and is_on(x, STAND_IN)
        assert is_on(torch.ones(3, 4).to(STAND_IN) + x, STAND_IN)
        assert float((x * torch.tensor(2.0)).sum()) == 24.0  # a CPU scalar mixes, as on CUDA
        assert is_on(x[torch.tensor([0, 2])], STAND_IN)  # CPU indices are allowed, as on CUDA
        with pytest.raises(CrossDeviceError, match="same device"):
            x + torch.ones(3, 4)
        with pytest.raises(CrossDeviceError, match="same device"):
            torch.nn.functional.conv2d(x[None, None], torch.ones(1, 1, 1, 1))
        with pytest.raises(TypeError, match="numpy"):
            x.numpy()
        with pytest.raises(TypeError, match="numpy"):
            np.asarray(x.sum(0))
        assert type(x.cpu()) is torch.Tensor and x.cpu().numpy().sum() == 12
        cpu_generator = torch.Generator().manual_seed(0)
        with pytest.raises(CrossDeviceError, match="generator"):
            torch.randn(3, generator=cpu_generator, device=STAND_IN)
        device_generator = mode.generator_for(STAND_IN).manual_seed(0)
        assert is_on(torch.randn(3, generator=device_generator, device=STAND_IN), STAND_IN)
        with pytest.raises(CrossDeviceError, match="generator"):
            torch.randn(3, generator=device_generator)
        assert mode.ops > 0


# -- whole pipelines on the stand-in device ------------------------------------------------------
@pytest.mark.parametrize("name", sorted(_detectors()))
def test_fit_predict_save_load_on_a_stand_in_gpu(name, category, tmp_path, monkeypatch):
    """Fit, calibration, predict, save and load with device="cuda" on a stand-in STAND_IN: every
    tensor the pipeline makes is on it (an op that mixes in a CPU tensor would fail), the
    results come back as numpy, and the scores are those of the CPU run; saved on the STAND_IN,
    the model loads on the CPU with the same scores."""
    make = _detectors()[name]
    monkeypatch.setenv("VSAD_BACKEND", "reference")
    cpu_maps = _maps(_fit(make(), category), category.test)
    with stand_in(monkeypatch, STAND_IN) as mode:
        detector = make(device="cuda")
        real_features = detector._features

        def features(images, timings=None):
            assert is_on(images, STAND_IN)
            out = real_features(images, timings)
            assert all(is_on(f, STAND_IN) for f in out)
            return out

        monkeypatch.setattr(detector, "_features", features)
        _fit(detector, category)
        assert detector.device == STAND_IN
        banks = detector.banks
        stored = [t for pair in banks._local.values() for t in pair] or [
            b.features for b in banks._global.values()
        ]
        assert stored and all(is_on(t, STAND_IN) for t in stored)
        assert all(is_on(t, STAND_IN) for pair in banks._stats for t in pair)
        module = detector.encoder if name == "default" else detector.backbone()
        if module is not None:
            assert all(is_on(t, STAND_IN) for t in [*module.parameters(), *module.buffers()])
        predictions = detector.predict_many(category.test, progress=False)
        assert all(type(p.maps) is np.ndarray and p.maps.dtype == np.float32 for p in predictions)
        gpu_maps = np.stack([p.maps for p in predictions])
        detector.save(tmp_path / "model")
        reloaded = _maps(load_detector(tmp_path / "model", device="cuda"), category.test)
        assert mode.ops > 100
    np.testing.assert_allclose(gpu_maps, cpu_maps, rtol=1e-5, atol=1e-5)
    assert np.array_equal(reloaded, gpu_maps)
    on_cpu = load_detector(tmp_path / "model")  # saved "on the STAND_IN", loaded without one
    assert on_cpu.device == torch.device("cpu")
    assert all(type(t) is torch.Tensor for t in on_cpu.banks.tensors().values())
    np.testing.assert_allclose(_maps(on_cpu, category.test), gpu_maps, rtol=1e-5, atol=1e-5)


def test_unet_pipeline_trains_and_predicts_on_a_stand_in_device(category, monkeypatch):
    """The paper's pipeline — homographies, UNet with MVAM + FRM trained with L_denoise +
    λ·L_refine (backward and AdamW on the device, noise from a device generator), DDIM
    inversion, fusion, banks — on the stand-in device."""
    monkeypatch.setenv("VSAD_BACKEND", "reference")
    cpu = _fit(VSAD(VSADConfig.from_dict(TINY_UNET)), category)
    cpu_maps = _maps(cpu, category.test)
    device = STAND_IN
    with stand_in(monkeypatch, device) as mode:
        detector = _fit(VSAD(VSADConfig.from_dict({**TINY_UNET, "device": "cuda"})), category)
        assert all(is_on(p, device) for p in detector.model.parameters())
        assert is_on(detector.null_text, device)
        with torch.no_grad():
            maps = _maps(detector, category.test)
        history = detector.history
        assert mode.ops > 1000
    assert [h["loss"] for h in history] == pytest.approx([h["loss"] for h in cpu.history])
    for (name, p), q in zip(detector.model.named_parameters(), cpu.model.parameters(), strict=True):
        torch.testing.assert_close(unwrap(p).detach(), q.detach(), msg=name)
    np.testing.assert_allclose(maps, cpu_maps, rtol=1e-4, atol=1e-4)


def test_a_checkpoint_resumes_only_on_its_device_type(category, tmp_path, monkeypatch):
    """A generator's state restores only a generator of the same device type: resuming CPU
    training on a GPU is refused with an error that names both."""
    _fit(VSAD(VSADConfig.from_dict(TINY_UNET)), category)  # no work_dir: nothing written
    config = VSADConfig.from_dict({**TINY_UNET, "train": {**TINY_UNET["train"], "steps": 1}})
    VSAD(config).fit(
        category.train, homographies=category.homographies, progress=False, work_dir=tmp_path
    )
    meta_path = tmp_path / training.VALDMTrainer.CHECKPOINT
    header, _ = training._read_checkpoint(meta_path)
    assert header["generator_device"] == "cpu" and header["grad_scaler"] is None
    with stand_in(monkeypatch, STAND_IN):
        detector = VSAD(VSADConfig.from_dict({**TINY_UNET, "device": "cuda"}))
        with pytest.raises(ValueError, match=r"written training on cpu, expected meta"):
            detector.fit(
                category.train, homographies=category.homographies, progress=False,
                work_dir=tmp_path,
            )  # fmt: skip


# -- mixed precision --------------------------------------------------------------------------
@pytest.mark.parametrize("autocast", ["bf16", "fp16"])
def test_unet_autocast_trains_and_reads_float32_features(autocast, category):
    """autocast runs the UNet in half precision (here on the CPU): it trains (fp16 with a
    gradient scaler), the features read for the bank are float32, and the scores are close to
    float32's but not equal (the autocast took effect)."""
    fp32 = _fit(VSAD(VSADConfig.from_dict(TINY_UNET)), category)
    half = _fit(VSAD(VSADConfig.from_dict({**TINY_UNET, "autocast": autocast})), category)
    assert half.model.autocast == autocast
    images = torch.rand(1, 3, 3, 64, 64)
    features = half._features(images)
    assert all(f.dtype == torch.float32 for f in features)
    fp32_maps, half_maps = _maps(fp32, category.test), _maps(half, category.test)
    assert np.isfinite(half_maps).all()
    assert not np.array_equal(fp32_maps, half_maps)
    assert np.corrcoef(fp32_maps.ravel(), half_maps.ravel())[0, 1] > 0.9


# -- the CUDA tier ----------------------------------------------------------------------------
CUDA_REASON = "needs a CUDA GPU: " + (
    f"this PyTorch build ({torch.__version__}) has no CUDA support"
    if torch.version.cuda is None
    else "none is visible"
)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_REASON)
@pytest.mark.parametrize("name", ["default", "patchcore", "unet"])
def test_cuda_fit_predict_and_save_on_cuda_load_on_cpu(name, category, tmp_path):
    make = {**_detectors(), "unet": lambda **c: VSAD(VSADConfig.from_dict({**TINY_UNET, **c}))}
    detector = _fit(make[name](device="cuda"), category)
    assert detector.device.type == "cuda"
    assert not detector.banks._stats or all(t.is_cuda for t in detector.banks._stats[0])
    gpu_maps = _maps(detector, category.test)
    detector.save(tmp_path / "model")
    again = load_detector(tmp_path / "model", device="cuda")
    assert np.array_equal(_maps(again, category.test), gpu_maps)
    on_cpu = load_detector(tmp_path / "model")
    assert on_cpu.device == torch.device("cpu")
    np.testing.assert_allclose(_maps(on_cpu, category.test), gpu_maps, rtol=1e-3, atol=1e-3)
    cpu_maps = _maps(_fit(make[name](), category), category.test)
    if name != "unet":  # nothing trained: the same features up to the kernels' rounding
        np.testing.assert_allclose(gpu_maps, cpu_maps, rtol=1e-3, atol=1e-3)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_REASON)
@pytest.mark.parametrize("autocast", ["bf16", "fp16"])
def test_cuda_unet_autocast(autocast, category):
    config = VSADConfig.from_dict({**TINY_UNET, "device": "cuda", "autocast": autocast})
    maps = _maps(_fit(VSAD(config), category), category.test)
    assert np.isfinite(maps).all()
