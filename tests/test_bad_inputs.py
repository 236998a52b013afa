"""The bad-input matrix: every config field given a value of the wrong type or out of range, bad
`--config` and run files, malformed Real-IAD json — through the CLI and the API. Each must end in
an error that names the key (or file) and the value, never a traceback, never silent acceptance.
"""

from __future__ import annotations

import dataclasses
import json
import typing

import pytest

from vsad.cli import main
from vsad.data import DatasetError, RealIADDataset
from vsad.detector import PatchCoreConfig, PatchKNNConfig, VSADConfig
from vsad.detector.config import RANGE_CHECKED_ELSEWHERE
from vsad.model.training import TrainConfig
from vsad.validation import describe

CONFIGS = {"vsad": VSADConfig, "patchknn": PatchKNNConfig, "patchcore": PatchCoreConfig}


def _wrong_values(tp) -> list[str]:
    """JSON texts of values that do not have type `tp` (as `key=value` overrides)."""
    text = describe(tp)
    wrong = ['"abc"', "true", "[1, 2]", '{"a": 1}']
    if "integer" in text and "list" not in text:
        wrong.append("1.5")
    if "finite number" in text and "list" not in text:
        wrong += ["NaN", "Infinity"]
    if "string" in text and "list" not in text:
        wrong = [w for w in wrong if w != '"abc"'] + ["5"]
    if "true or false" in text:
        wrong = [w for w in wrong if w != "true"] + ["1"]
    if "list of" in text:
        wrong = [w for w in wrong if w != "[1, 2]"] + ["3", '["x"]']
    if text.startswith("an object"):
        wrong = [w for w in wrong if not w.startswith("{")]
    return wrong


def _type_cases():
    for model, config_class in CONFIGS.items():
        hints = typing.get_type_hints(config_class)
        for f in dataclasses.fields(config_class):
            if f.name == "train":
                continue
            for value in _wrong_values(hints[f.name]):
                yield model, f"{f.name}={value}", f.name
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        for value in _wrong_values(hints[f.name]):
            yield "vsad", f"train.{f.name}={value}", f"train.{f.name}"


RANGE_CASES = [
    # (model, override, key named in the message)
    ("vsad", "image_size=0", "image_size"),
    ("vsad", ("encoder=unshuffle", "feature_levels=[-1]", "image_size=100"), "image_size"),
    ("vsad", "bank_radius=-1", "bank_radius"),
    ("vsad", "bank_mode=nearest", "bank_mode"),
    ("vsad", "bank_dtype=int8", "bank_dtype"),
    ("vsad", "normalization=zscore", "normalization"),
    ("vsad", "feature_pool=0", "feature_pool"),
    ("vsad", "smoothing_sigma=-1", "smoothing_sigma"),
    ("vsad", "batch_size=0", "batch_size"),
    ("vsad", "seed=-3", "seed"),
    ("vsad", "level_weights=[1, -1]", "level_weights"),
    ("vsad", "level_weights=[0, 0]", "level_weights"),
    ("vsad", "level_weights=[1, 1]", "level_weights"),  # one level (the latent) by default
    ("vsad", "level_weights=[]", "level_weights"),
    ("vsad", "coreset_ratio=0.5", "coreset_ratio"),  # local bank
    ("vsad", "encoder=resnet50", "encoder"),
    ("vsad", "encoder=vae", "encoder"),  # needs stable_diffusion
    ("vsad", "unshuffle_factor=0", "unshuffle_factor"),
    (
        "vsad",
        ("encoder=unshuffle", "feature_levels=[-1]", "image_size=128", "unshuffle_factor=3"),
        "image_size",
    ),
    ("vsad", ("feature_levels=[-1]", "image_size=96"), "image_size"),  # 64 × k with a UNet
    ("vsad", "encoder_stages=[9]", "encoder_stages"),
    ("vsad", "encoder_channels=0", "encoder_channels"),
    ("vsad", "window=0", "window"),
    ("vsad", "head_dim=0", "head_dim"),
    ("vsad", "head_dim=7", "head_dim"),
    ("vsad", "head_dim=48", "head_dim"),
    ("vsad", "placement=middle", "placement"),
    ("vsad", "view_graph=star", "view_graph"),
    ("vsad", "view_graph=explicit", "view_graph"),  # explicit graphs go into `neighbors`
    ("vsad", "neighbors_per_view=0", "neighbors_per_view"),
    ("vsad", "homography_samples=0", "homography_samples"),
    ("vsad", "homography_fallback=skip", "homography_fallback"),
    ("vsad", "inversion_steps=-1", "inversion_steps"),
    ("vsad", "t_end=0", "t_end"),
    ("vsad", "t_end=1000", "t_end"),
    ("vsad", ("feature_levels=[]", "latent_level=false"), "feature_levels"),  # nothing to score
    ("vsad", "view_fusion=-0.5", "view_fusion"),
    ("vsad", "train.steps=0", "train.steps"),
    ("vsad", "train.batch_size=0", "train.batch_size"),
    ("vsad", "train.grad_accumulation=0", "train.grad_accumulation"),
    ("vsad", "train.lr=0", "train.lr"),
    ("vsad", "train.lr=-1e-4", "train.lr"),
    ("vsad", "train.weight_decay=-1", "train.weight_decay"),
    ("vsad", "train.refine_weight=-1", "train.refine_weight"),
    ("vsad", "train.refine_mode=exact", "train.refine_mode"),
    ("vsad", "train.num_train_timesteps=1", "train.num_train_timesteps"),
    ("vsad", "train.checkpoint_every=0", "train.checkpoint_every"),
    ("vsad", "train.view_timesteps=all", "train.view_timesteps"),
    ("vsad", "train.nope=1", "train.nope"),
    ("vsad", "nope=1", "nope"),
    ("vsad", "steps=1", "steps"),  # a training key outside its section
    ("patchknn", "patch_size=0", "patch_size"),
    ("patchknn", "patch_size=5", "image_size"),  # 128 is no multiple of 5
    ("patchknn", "backbone=vgg", "backbone"),
    ("patchknn", "backbone_stages=[9]", "backbone_stages"),  # checked even while unused
    ("patchknn", ("backbone=efficientnet-lite0", "backbone_stages=[3,2]"), "backbone_stages"),
    ("patchcore", "coreset_ratio=0", "coreset_ratio"),
    ("patchcore", "coreset_ratio=1.5", "coreset_ratio"),
]


def _run(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.err + captured.out


@pytest.mark.parametrize(
    ("model", "override", "key"), [*_type_cases(), *RANGE_CASES], ids=lambda x: str(x)
)
def test_cli_override_is_refused_with_its_key(model, override, key, tmp_path, capsys):
    args = ["train", "--data", str(tmp_path / "data"), "--category", "c", "--model", model]
    overrides = override if isinstance(override, tuple) else (override,)
    code, output = _run([*args, "--out", str(tmp_path / "run"), *overrides], capsys)
    assert code == 2, output
    assert f"{key}" in output and "Traceback" not in output, output
    assert not (tmp_path / "run").exists(), "nothing may be written for a refused config"


@pytest.mark.parametrize(("model", "override", "key"), list(_type_cases())[::7])
def test_api_refuses_the_same_values(model, override, key):
    config_class = CONFIGS[model]
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        config_class().with_overrides([override])


@pytest.mark.parametrize(
    ("content", "key"),
    [
        ("[1, 2, 3]", "config"),
        ('"image_size=256"', "config"),
        ('{"train": 5}', "train"),
        ('{"train": {"steps": "x"}}', "train.steps"),
        ('{"train": {"wobble": 1}}', "wobble"),
        ('{"image_size": "big"}', "image_size"),
        ('{"nope": 1}', "nope"),
        ("{not json", "not valid JSON"),
        ('{"config": [1]}', "config"),
    ],
)
def test_bad_config_files_are_refused(content, key, tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(content)
    args = ["train", "--data", str(tmp_path), "--category", "c", "--out", str(tmp_path / "r")]
    code, output = _run([*args, "--config", str(path)], capsys)
    assert code == 2 and key in output and "Traceback" not in output, output


def test_missing_config_file_is_named(tmp_path, capsys):
    args = ["train", "--data", str(tmp_path), "--category", "c", "--out", str(tmp_path / "r")]
    code, output = _run([*args, "--config", str(tmp_path / "absent.json")], capsys)
    assert code == 2 and "absent.json" in output


@pytest.mark.parametrize(
    ("run_json", "needle"),
    [
        ({"detector": "VSAD"}, '"data"'),
        ({"data": [1]}, '"data"'),
        ({"data": {"root": 5, "category": "c"}}, "root"),
        ({"data": {"root": "x", "category": 3}}, "category"),
        ({"data": {"root": "x", "category": "c", "image_size": "big"}}, "image_size"),
        ([1, 2], '"data"'),
    ],
)
def test_bad_run_json_is_refused(run_json, needle, tmp_path, capsys):
    (tmp_path / "run.json").write_text(json.dumps(run_json))
    code, output = _run(["test", "--run", str(tmp_path)], capsys)
    assert code == 2 and needle in output and "Traceback" not in output, output


@pytest.mark.parametrize(
    ("meta", "needle"),
    [
        ("{broken", "not valid JSON"),
        ('{"format": 1, "detector": "PatchKNN"}', "config"),
        ('{"format": 1, "detector": "PatchKNN", "config": {}, "num_views": "5"}', "num_views"),
        ('{"format": 1, "detector": "Nope"}', "unknown detector"),
        ('{"format": 7, "detector": "VSAD"}', "format"),
    ],
)
def test_bad_detector_folder_is_refused(meta, needle, tmp_path, capsys):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "detector.json").write_text(meta)
    image = tmp_path / "a.png"
    image.write_bytes(b"")
    code, output = _run(["predict", "--run", str(tmp_path), str(image)], capsys)
    assert code == 2 and needle in output and "Traceback" not in output, output


def _realiad(tmp_path, entry_changes=None, meta=None, split_value=None):
    import cv2
    import numpy as np

    root = tmp_path / "ri"
    stem = "OK/S0001/toy_0001_OK_C1_20240101000000"
    image = root / "realiad_256" / "toy" / f"{stem}.png"
    image.parent.mkdir(parents=True)
    cv2.imwrite(str(image), np.full((8, 8, 3), 128, np.uint8))
    entry = {"category": "toy", "anomaly_class": "OK", "image_path": f"{stem}.png",
             "mask_path": None, **(entry_changes or {})}  # fmt: skip
    data = {"meta": {"prefix": "toy/", "normal_class": "OK"} if meta is None else meta,
            "train": [entry] if split_value is None else split_value, "test": [entry]}  # fmt: skip
    (root / "realiad_jsons").mkdir()
    (root / "realiad_jsons" / "toy.json").write_text(json.dumps(data))
    return root


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"entry_changes": {"image_path": 17}}, "image_path"),
        ({"entry_changes": {"image_path": ""}}, "image_path"),
        ({"entry_changes": {"mask_path": 3}}, "mask_path"),
        ({"entry_changes": {"mask_path": ["a.png"]}}, "mask_path"),
        ({"entry_changes": {"anomaly_class": ["HS"]}}, "anomaly_class"),
        ({"entry_changes": {"anomaly_class": None}}, "anomaly_class"),
        ({"meta": [1, 2]}, "meta"),
        ({"meta": {"prefix": 5}}, "prefix"),
        ({"meta": {"normal_class": ["OK"]}}, "normal_class"),
        ({"split_value": {"a": 1}}, "train"),
        ({"split_value": [5]}, "entry 0"),
        ({"split_value": []}, "empty"),
    ],
)
def test_malformed_realiad_json_is_refused(kwargs, needle, tmp_path):
    root = _realiad(tmp_path, **kwargs)
    with pytest.raises(DatasetError, match=needle):
        RealIADDataset(root, "toy", "train", num_views=1)


def test_a_well_formed_tree_reads(tmp_path):
    """The fixture of the cases above is valid as written: each case breaks one thing."""
    assert len(RealIADDataset(_realiad(tmp_path), "toy", "train", num_views=1)) == 1


def test_valid_edge_values_are_accepted():
    """Values at the edge of their range are meant to be valid, not silently wrong ones."""
    VSADConfig(window=2)  # even R: half-integer offsets (docs/design.md §3.1; the paper's Table 5)
    VSADConfig(head_dim=64)  # wider than the narrowest level: one head there
    VSADConfig(inversion_steps=0, t_end=5000)  # t_end is unused without inversion
    VSADConfig(level_weights=[0.0, 1.0], feature_levels=[-1], smoothing_sigma=0.0, view_fusion=0)
    VSADConfig(train={"steps": 3})  # a nested section as a dict
    PatchKNNConfig(bank_mode="global", coreset_ratio=1.0)


# -- upper bounds (issue 32) ---------------------------------------------------------------------
def _merged_bounds(config_class) -> dict:
    bounds = {}
    for klass in reversed(config_class.__mro__):
        bounds.update(vars(klass).get("BOUNDS", {}))
    return bounds


def _numeric_fields(config_class):
    hints = typing.get_type_hints(config_class)
    for f in dataclasses.fields(config_class):
        text = describe(hints[f.name])
        if "integer" in text or "finite number" in text:
            yield f.name, "integer" in text


def test_every_numeric_field_has_an_upper_bound():
    """A run stays feasible only if no number can be arbitrarily large (1e21 used to end in
    cv2 / custom-op / overflow errors deep inside fit)."""
    for config_class in (*CONFIGS.values(), TrainConfig):
        bounds = TrainConfig.BOUNDS if config_class is TrainConfig else _merged_bounds(config_class)
        for name, _ in _numeric_fields(config_class):
            if name in RANGE_CHECKED_ELSEWHERE:
                continue
            assert name in bounds and bounds[name].hi is not None, (config_class.__name__, name)


def _upper_cases():
    for model, config_class in CONFIGS.items():
        bounds = _merged_bounds(config_class)
        for name, integer in _numeric_fields(config_class):
            hi = RANGE_CHECKED_ELSEWHERE.get(name) or bounds[name].hi
            for value in {int(hi) + 1 if integer else hi * 1.5 + 1, 10**21 if integer else 1e300}:
                is_list = name in ("level_weights", "neighbors", "feature_levels",
                                   "encoder_stages", "backbone_stages")  # fmt: skip
                text = json.dumps([[0, value]] if name == "neighbors" else
                                  [value] if is_list else value)  # fmt: skip
                yield model, f"{name}={text}", name
    for name, integer in _numeric_fields(TrainConfig):
        hi = TrainConfig.BOUNDS[name].hi
        yield "vsad", f"train.{name}={int(hi) + 1 if integer else hi * 1.5 + 1}", f"train.{name}"


@pytest.mark.parametrize(("model", "override", "key"), list(_upper_cases()), ids=str)
def test_values_above_the_upper_bound_are_refused(model, override, key, tmp_path, capsys):
    args = ["train", "--data", str(tmp_path / "data"), "--category", "c", "--model", model]
    code, output = _run([*args, "--out", str(tmp_path / "run"), override], capsys)
    assert code == 2 and key in output and "Traceback" not in output, output
    assert not (tmp_path / "run").exists()


UNET_CASES = [
    ('unet={"block_out_channels": "wide"}', "unet.block_out_channels"),
    ('unet={"block_out_channels": 64}', "unet.block_out_channels"),
    ('unet={"block_out_channels": [32, 64, 65]}', "unet.block_out_channels"),  # groups of 8
    ('unet={"block_out_channels": [32, 64, 64, 64, 64]}', "unet.block_out_channels"),
    ('unet={"block_out_channels": [32, 64]}', "unet.down_block_types"),  # one type per width
    ('unet={"layers_per_block": "two"}', "unet.layers_per_block"),
    ('unet={"layers_per_block": 0}', "unet.layers_per_block"),
    ('unet={"layers_per_block": 1e21}', "unet.layers_per_block"),
    ('unet={"norm_num_groups": 0}', "unet.norm_num_groups"),
    ('unet={"cross_attention_dim": true}', "unet.cross_attention_dim"),
    ('unet={"attention_head_dim": "8"}', "unet.attention_head_dim"),
    ('unet={"sample_size": -1}', "unet.sample_size"),
    (
        'unet={"down_block_types": ["Nope2D", "DownBlock2D", "DownBlock2D"]}',
        "unet.down_block_types",
    ),
    ('unet={"up_block_types": "UpBlock2D"}', "unet.up_block_types"),
    ('unet={"in_channels": 3}', "unet.in_channels"),
    ('unet={"dropout": 0.1}', "dropout"),
    ('unet={"wobble": 1}', "wobble"),
]


@pytest.mark.parametrize(("override", "key"), UNET_CASES)
def test_nested_unet_settings_are_validated(override, key, tmp_path, capsys):
    args = ["train", "--data", str(tmp_path / "data"), "--category", "c", "--out",
            str(tmp_path / "run"), "feature_levels=[-1]", "encoder=unshuffle"]  # fmt: skip
    code, output = _run([*args, override], capsys)
    assert code == 2 and key in output and "Traceback" not in output, output
    with pytest.raises(ValueError, match=key):
        VSADConfig().with_overrides([override])


def test_valid_unet_overrides_are_accepted():
    VSADConfig(unet={"layers_per_block": 2, "block_out_channels": [16, 32, 32]})
    VSADConfig(unet={"block_out_channels": [32, 64], "down_block_types": ["DownBlock2D"] * 2,
                     "up_block_types": ["UpBlock2D"] * 2})  # fmt: skip
