"""Hardening, round 2 (issue 32), one generated test per class of fault: output paths, CLI
values that used to be accepted silently, the API's readers and inputs, Real-IAD paths that
leave the dataset root, the writer/reader view count, run.json, training checkpoints and the
Stable Diffusion folder. Each case must end in an error naming the option, key, file or value
— a non-zero exit without a traceback at the CLI — or have a documented meaning. (Damaged
saved detectors: tests/test_damaged_files.py; config fields: tests/test_bad_inputs.py.)
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from vsad.cli import main
from vsad.data import DatasetError, RealIADDataset
from vsad.saved_files import SavedFileError


class RunsCode:
    """Unpickling this object creates a file: proof that a loader executed pickled code."""

    marker = ""

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _run(args, capsys):
    """(exit status, what was printed); argparse usage errors exit 2 too."""
    try:
        code = main(args)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.err + captured.out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A Real-IAD tree of a 3-view category and a `vsad train` run of PatchKNN on it."""
    from vsad.data import make_category, write_realiad

    root = tmp_path_factory.mktemp("tiny")
    category = make_category(n_train=4, n_test=2, n_views=3, image_size=32, seed=4)
    write_realiad(category, root / "data", "toy")
    run = root / "run"
    args = ["train", "--data", str(root / "data"), "--category", "toy", "--out", str(run)]
    with pytest.warns(UserWarning):
        assert main([*args, "--model", "patchknn", "--quiet", "image_size=32"]) == 0
    views = sorted(str(p) for p in (root / "data").rglob("*_C*_*.jpg"))[:3]
    return root / "data", run, views


# -- output paths -------------------------------------------------------------------------------
def _commands(data, run, views, out):
    return {
        "train": ["train", "--data", str(data), "--category", "toy", "--model", "patchknn",
                  "--out", str(out), "--quiet", "image_size=32"],
        "test": ["test", "--run", str(run), "--out", str(out), "--quiet"],
        "predict": ["predict", "--run", str(run), *views, "--out", str(out)],
        "demo": ["demo", "--out", str(out), "--quiet"],
    }  # fmt: skip


@pytest.mark.parametrize("command", ["train", "test", "predict", "demo"])
@pytest.mark.parametrize("where", ["a-file", "under-a-file"])
def test_an_output_path_that_cannot_be_a_folder_is_refused_first(command, where, tiny, tmp_path,
                                                                  capsys):  # fmt: skip
    data, run, views = tiny
    blocker = tmp_path / "taken.txt"
    blocker.write_text("keep me")
    out = blocker if where == "a-file" else blocker / "results"
    code, output = _run(_commands(data, run, views, out)[command], capsys)
    assert code == 2 and "--out" in output and str(blocker) in output, output
    assert "Traceback" not in output and blocker.read_text() == "keep me"
    assert "training" not in output and "samples in" not in output, "work started first"


def test_saving_a_detector_onto_a_file_is_refused(tiny, tmp_path):
    from vsad.detector import load_detector

    _, run, _ = tiny
    detector = load_detector(run / "model")
    target = tmp_path / "model.bin"
    target.write_text("x")
    with pytest.raises(ValueError, match=r"directory: .*model\.bin' is a file"):
        detector.save(target)
    assert target.read_text() == "x"


def test_a_config_folder_is_refused(tiny, tmp_path, capsys):
    data, _, _ = tiny
    args = ["train", "--data", str(data), "--category", "toy", "--out", str(tmp_path / "r")]
    code, output = _run([*args, "--config", str(tmp_path)], capsys)
    assert code == 2 and "is a folder" in output and "Traceback" not in output, output


# -- CLI values that used to be accepted silently ------------------------------------------------
CLI_VALUES = [
    # (command, option, value, text the message must hold)
    ("train", "--max-train", "0", "--max-train"),
    ("train", "--max-train", "-2", "--max-train"),
    ("train", "--max-train", "many", "--max-train"),
    ("train", "--image-size", "0", "--image-size"),
    ("train", "--image-size", "-8", "--image-size"),
    ("train", "--image-size", str(10**21), "--image-size"),
    ("test", "--overlays", "-1", "--overlays"),
    ("test", "--worst", "-1", "--worst"),
    ("test", "--image-size", "0", "--image-size"),
    ("calibrate", "--image-size", "0", "--image-size"),
    ("demo", "--train-samples", "0", "--train-samples"),
    ("demo", "--test-samples", "-1", "--test-samples"),
    ("demo", "--steps", "0", "--steps"),
]


@pytest.mark.parametrize(("command", "option", "value", "needle"), CLI_VALUES)
def test_cli_values_out_of_range_are_refused(command, option, value, needle, tiny, tmp_path,
                                             capsys):  # fmt: skip
    data, run, _ = tiny
    base = {
        "train": ["train", "--data", str(data), "--category", "toy", "--out", str(tmp_path / "r"),
                  "--model", "patchknn", "--quiet"],
        "test": ["test", "--run", str(run), "--out", str(tmp_path / "t"), "--quiet"],
        "calibrate": ["calibrate", "--run", str(run), "--split", "test", "--quiet"],
        "demo": ["demo", "--out", str(tmp_path / "t"), "--quiet"],
    }[command]  # fmt: skip
    code, output = _run([*base, f"{option}={value}"], capsys)
    assert code == 2 and needle in output and value in output, output
    assert "Traceback" not in output
    assert not (tmp_path / "r").exists() and not (tmp_path / "t").exists()


@pytest.mark.parametrize(("model", "exists"), [("patchknn", True), ("vsad", False),
                                               ("patchknn", False)])  # fmt: skip
def test_homographies_must_exist_and_be_used(model, exists, tiny, tmp_path, capsys):
    data, _, _ = tiny
    path = tmp_path / "rig.json"
    if exists:
        path.write_text("{}")
    args = ["train", "--data", str(data), "--category", "toy", "--out", str(tmp_path / "r"),
            "--model", model, "--quiet", "--homographies", str(path)]  # fmt: skip
    code, output = _run(args, capsys)
    assert code == 2 and "--homographies" in output and "Traceback" not in output, output
    assert ("does not exist" in output) != exists and not (tmp_path / "r").exists()


def test_max_train_takes_that_many_samples(tiny, tmp_path, capsys):
    data, _, _ = tiny
    args = ["train", "--data", str(data), "--category", "toy", "--out", str(tmp_path / "r"),
            "--model", "patchknn", "--quiet", "--max-train", "3", "image_size=32"]  # fmt: skip
    with pytest.warns(UserWarning, match="got 3"):  # 3 samples back a 5 % target loosely
        assert main(args) == 0
    assert json.loads((tmp_path / "r" / "run.json").read_text())["data"]["train_samples"] == 3


# -- the API ------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", ["abc", True, 0, -4, 1.5, [0, 5], [8], [8, "x"], 10**21])
def test_reader_image_size_is_typed(size, tiny):
    data, _, _ = tiny
    with pytest.raises(ValueError, match="image_size: got"):
        RealIADDataset(data, "toy", "train", image_size=size)


@pytest.mark.parametrize("shape", [(0, 32, 3), (32, 0, 3), (0, 0, 3)])
def test_views_of_size_zero_are_refused(shape, tiny):
    from vsad.detector import load_detector

    _, run, _ = tiny
    detector = load_detector(run / "model")
    views = [np.zeros((32, 32, 3), np.uint8) for _ in range(3)]
    views[1] = np.zeros(shape, np.uint8)
    with pytest.raises(ValueError, match=r"views\[1\]: got an empty image"):
        detector.predict(views)


@pytest.mark.parametrize("kind", ["arrays", "list-of-views", "dicts"])
def test_calibrating_on_unlabelled_samples_is_refused(kind, tiny):
    from vsad.detector import load_detector

    _, run, _ = tiny
    detector = load_detector(run / "model")
    views = [np.zeros((32, 32, 3), np.uint8) for _ in range(3)]
    split = {"arrays": [np.stack(views)], "list-of-views": [views], "dicts": [{"images": views}]}
    with pytest.raises(ValueError, match=r"split\[0\]: got .*expected a labelled"):
        detector.calibrate(split[kind], progress=False)


# -- Real-IAD: paths inside the root; any consistent view count ---------------------------------
def _edit_first(data_root, key, value, split="train"):
    path = data_root / "realiad_jsons" / "toy.json"
    original = path.read_text()
    data = json.loads(original)
    if key == "prefix":
        data["meta"]["prefix"] = value
    else:
        data[split][0][key] = value
    path.write_text(json.dumps(data))
    return path, original


OUTSIDE = {
    "absolute": lambda inside: "/etc/hostname",
    "dot-dot": lambda inside: "../../../../etc/hostname",
    # realiad_<res>/toy/OK/../../../.. is one level above the root
    "dot-dot-inside-name": lambda inside: f"OK/../../../../{inside}",
}


@pytest.mark.parametrize("key", ["image_path", "mask_path", "prefix"])
@pytest.mark.parametrize("escape", sorted(OUTSIDE))
def test_realiad_paths_must_stay_inside_the_root(key, escape, tiny):
    data, _, _ = tiny
    inside = json.loads((data / "realiad_jsons" / "toy.json").read_text())["test"][0]
    path, original = _edit_first(data, key, OUTSIDE[escape](inside["image_path"]), split="test")
    try:
        with pytest.raises(DatasetError, match=rf"{key}.*outside the dataset root"):
            RealIADDataset(data, "toy", "test")
    finally:
        path.write_text(original)


def test_allow_outside_root_reads_files_elsewhere(tiny, tmp_path):
    """A sample whose views live outside the root (absolute paths) is refused by default and
    read with allow_outside_root=True."""
    import shutil

    data, _, _ = tiny
    path = data / "realiad_jsons" / "toy.json"
    original = path.read_text()
    entries = json.loads(original)
    folder = entries["train"][0]["image_path"].rsplit("/", 1)[0]
    moved = []
    for entry in entries["train"]:
        if entry["image_path"].rsplit("/", 1)[0] == folder:
            target = tmp_path / "elsewhere" / entry["image_path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(data / "realiad_32" / "toy" / entry["image_path"], target)
            entry["image_path"] = str(target)
            moved.append(target)
    path.write_text(json.dumps(entries))
    try:
        with pytest.raises(DatasetError, match="image_path.*outside the dataset root"):
            RealIADDataset(data, "toy", "train")
        split = RealIADDataset(data, "toy", "train", allow_outside_root=True)
        read = {p for r in split.records for p in r.image_paths}
        assert set(moved) <= read and len(split[0].images) == 3
    finally:
        path.write_text(original)


def test_write_realiad_and_the_reader_agree_on_the_view_count(tiny):
    """write_realiad writes the category's own M (3 here); the reader takes any count shared by
    all samples (Real-IAD as published has 5, which num_views=5 insists on)."""
    data, _, _ = tiny
    split = RealIADDataset(data, "toy", "test")
    assert split.num_views == 3 and len(split[0].images) == 3
    with pytest.raises(DatasetError, match="has 3 views .*expected 5"):
        RealIADDataset(data, "toy", "test", num_views=5)


def test_samples_with_other_cameras_are_refused(tiny):
    data, _, _ = tiny
    entries = json.loads((data / "realiad_jsons" / "toy.json").read_text())["train"]
    last = max(entries, key=lambda e: e["image_path"])  # a view of the last sample
    renamed = last["image_path"].replace("_C3_", "_C7_")
    path = data / "realiad_jsons" / "toy.json"
    original = path.read_text()
    path.write_text(original.replace(last["image_path"], renamed))
    try:
        with pytest.raises(DatasetError, match=r"has cameras \[1, 2, 7\].*every sample needs"):
            RealIADDataset(data, "toy", "train", check_files=False)
    finally:
        path.write_text(original)


# -- run.json -------------------------------------------------------------------------------------
RUN_JSON = {
    "a-list": "[1, 2]",
    "a-string": '"run"',
    "a-number": "5",
    "empty": "",
    "not-json": "{oops",
    "no-data": '{"detector": "PatchKNN"}',
    "data-a-list": '{"data": [1]}',
    "root-a-number": '{"data": {"root": 5, "category": "toy"}}',
    "category-a-list": '{"data": {"root": "x", "category": ["toy"]}}',
    "image_size-a-string": '{"data": {"root": "x", "category": "toy", "image_size": "big"}}',
    "image_size-zero": '{"data": {"root": "x", "category": "toy", "image_size": 0}}',
    "a-folder": None,
}


@pytest.mark.parametrize("command", ["test", "calibrate"])
@pytest.mark.parametrize("damage", sorted(RUN_JSON))
def test_a_damaged_run_json_is_named(command, damage, tiny, tmp_path, capsys):
    import shutil

    _, run, _ = tiny
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "run.json").unlink()
    if RUN_JSON[damage] is None:
        (copy / "run.json").mkdir()
    else:
        (copy / "run.json").write_text(RUN_JSON[damage])
    args = {
        "test": ["test", "--run", str(copy), "--quiet"],
        "calibrate": ["calibrate", "--run", str(copy), "--split", "test", "--quiet"],
    }
    code, output = _run(args[command], capsys)
    assert code == 2 and "run.json" in output and "Traceback" not in output, output


# -- training checkpoints -----------------------------------------------------------------------
def _trainer(**cfg):
    from window_attention_cases import random_homographies, ring_neighbors

    from vsad.model.backbone import build_tiny_unet
    from vsad.model.training import TrainConfig, VALDMTrainer
    from vsad.model.view_aligned_unet import ViewAlignedUNet

    torch.manual_seed(0)
    model = ViewAlignedUNet(build_tiny_unet())
    hom = random_homographies((3, 2), torch.Generator().manual_seed(0), shift=1.0,
                              perspective=0.001)  # fmt: skip
    config = TrainConfig(**{"steps": 1, "batch_size": 2, "lr": 1e-3, **cfg})
    return VALDMTrainer(model, config, homography=hom, neighbors=ring_neighbors(3, 2))


def _edit_checkpoint(edit):
    def apply(path):
        from safetensors import safe_open
        from safetensors.torch import save_file

        with safe_open(str(path), framework="pt") as f:
            meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        edit(tensors, meta)
        save_file(tensors, str(path), metadata=meta)

    return apply


def _first_model_tensor(tensors):
    return next(k for k in sorted(tensors) if k.startswith("model."))


def _meta_edit(change):
    def edit(tensors, meta):
        from vsad.model.training import METADATA_KEY

        data = json.loads(meta[METADATA_KEY])
        change(data)
        meta[METADATA_KEY] = json.dumps(data)

    return edit


CHECKPOINT_DAMAGE = {
    "zero-byte": lambda p: p.write_bytes(b""),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "header-only": lambda p: p.write_bytes(p.read_bytes()[: 8 + int.from_bytes(
        p.read_bytes()[:8], "little")]),
    "text": lambda p: p.write_text("step=3\n"),
    "pickle": lambda p: p.write_bytes(pickle.dumps({"model": RunsCode()})),
    "torch-save": lambda p: torch.save({"payload": RunsCode()}, p),
    "drop-model-tensor": _edit_checkpoint(lambda t, m: t.pop(_first_model_tensor(t))),
    "reshape-model-tensor": _edit_checkpoint(
        lambda t, m: t.__setitem__(_first_model_tensor(t), torch.zeros(3))),
    "retype-model-tensor": _edit_checkpoint(
        lambda t, m: t.__setitem__(_first_model_tensor(t), t[_first_model_tensor(t)].double())),
    "extra-model-tensor": _edit_checkpoint(
        lambda t, m: t.__setitem__("model.bogus", torch.zeros(1))),
    "drop-exp-avg": _edit_checkpoint(lambda t, m: t.pop(next(
        k for k in sorted(t) if k.endswith(".exp_avg")))),
    "null-text-shape": _edit_checkpoint(lambda t, m: t.__setitem__("null_text", torch.zeros(1, 5))),
    "generator-shape": _edit_checkpoint(lambda t, m: t.__setitem__("generator", torch.zeros(3))),
    "step-a-string": _edit_checkpoint(_meta_edit(lambda d: d.__setitem__("step", "3"))),
    "optimizer-a-list": _edit_checkpoint(_meta_edit(lambda d: d.__setitem__("optimizer", [1]))),
    "state-index-out-of-range": _edit_checkpoint(_meta_edit(
        lambda d: d["optimizer"].__setitem__("state_indices", [10**6]))),
}  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.safetensors"
    trainer = _trainer()
    trainer.fit(torch.randn(2, 3, 4, 16, 16, generator=torch.Generator().manual_seed(1)),
                progress=False)  # fmt: skip
    trainer.save_checkpoint(path)
    return path


@pytest.mark.parametrize("damage", sorted(CHECKPOINT_DAMAGE))
def test_a_damaged_checkpoint_is_refused_naming_it(damage, checkpoint, tmp_path):
    import shutil

    path = tmp_path / "checkpoint.safetensors"
    shutil.copy(checkpoint, path)
    RunsCode.marker = str(tmp_path / "code-ran")
    CHECKPOINT_DAMAGE[damage](path)
    trainer = _trainer()
    with pytest.raises(SavedFileError, match=r"checkpoint\.safetensors"):
        trainer.load_checkpoint(path)
    assert not (tmp_path / "code-ran").exists(), "a pickled payload ran"
    assert trainer.step == 0


def test_the_undamaged_checkpoint_loads(checkpoint):
    trainer = _trainer()
    trainer.load_checkpoint(checkpoint)
    assert trainer.step == 1


# -- the Stable Diffusion folder ------------------------------------------------------------------
@pytest.mark.parametrize("part", ["unet", "vae"])
@pytest.mark.parametrize("damage", ["pickle-bin", "zero-byte", "text"])
def test_stable_diffusion_weights_are_checked_unpickled(part, damage, tmp_path):
    from vsad.model.backbone import load_stable_diffusion

    RunsCode.marker = str(tmp_path / "code-ran")
    for name in ("unet", "vae"):
        (tmp_path / "sd" / name).mkdir(parents=True)
        (tmp_path / "sd" / name / "config.json").write_text("{}")
        (tmp_path / "sd" / name / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    folder = tmp_path / "sd" / part
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    if damage == "pickle-bin":
        bad = folder / "diffusion_pytorch_model.bin"
        bad.write_bytes(pickle.dumps({"weight": RunsCode()}))
    else:
        bad = folder / "diffusion_pytorch_model.safetensors"
        bad.write_bytes(b"" if damage == "zero-byte" else b"not tensors at all\n")
    if part == "vae":  # a readable UNet file: the VAE's is the one at fault
        from safetensors.torch import save_file

        save_file({}, str(tmp_path / "sd" / "unet" / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(SavedFileError, match=str(bad).replace(".", r"\.")):
        load_stable_diffusion(tmp_path / "sd")
    assert not (tmp_path / "code-ran").exists(), "a pickled payload ran"


@pytest.mark.parametrize("damage", ["zero-byte", "truncated", "pickle", "drop-model-tensor"])
def test_vsad_train_names_a_damaged_checkpoint_of_its_run(damage, tiny, tmp_path, capsys):
    """A rerun of `vsad train --out RUN` resumes from RUN/checkpoints: a damaged checkpoint
    there ends the rerun with the file named and the remedy, not a traceback or a silent
    restart."""
    data, _, _ = tiny
    run = tmp_path / "run"
    args = ["train", "--data", str(data), "--category", "toy", "--out", str(run), "--quiet",
            "encoder=unshuffle", "feature_levels=[-1]", "latent_level=false", "image_size=64",
            "inversion_steps=1", "train.steps=1", "train.checkpoint_every=1"]  # fmt: skip
    with pytest.warns(UserWarning):
        assert main(args) == 0
    checkpoint = run / "checkpoints" / "checkpoint.safetensors"
    assert checkpoint.is_file()
    RunsCode.marker = str(tmp_path / "code-ran")
    CHECKPOINT_DAMAGE[damage](checkpoint)
    capsys.readouterr()
    code, output = _run(args, capsys)
    assert code == 2 and "checkpoint.safetensors" in output and "Traceback" not in output, output
    assert "delete the checkpoint" in output
    assert not (tmp_path / "code-ran").exists()
