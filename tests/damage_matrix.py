"""The damaged-run-folder matrix (issue 32): tiny saved detectors of every kind, and generated
damage to each file they hold — safetensors files emptied, truncated, cut after the header,
replaced by text, a pickle or a torch.save zip; each tensor dropped, reshaped, retyped, an
unexpected one added; each detector.json key dropped or given values of the wrong type or
range. Every case is fed through `load_detector` + `predict` and through `vsad predict`, and
must end in one message naming the file (a vsad error, exit status 2), never a traceback, never
silent acceptance. A few edits are harmless by design and must load (their meaning is
documented in docs/design.md §5.5): those cases say so.

`python tests/damage_matrix.py` runs the whole matrix and prints the counts per outcome.
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
import traceback
import warnings
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REFUSED, ACCEPTED, TRACEBACK = "refused", "accepted", "traceback"


class RunsCode:
    """Unpickling this object creates a file: proof that a loader executed pickled code."""

    marker = ""

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@dataclass
class Case:
    detector: str  # which tiny saved detector
    file: str  # the file damaged (relative to the model folder)
    damage: str  # what was done
    apply: Callable[[Path], None]  # damages the copied model folder
    expect: str = REFUSED  # or ACCEPTED: a harmless edit with a documented meaning

    @property
    def id(self) -> str:
        return f"{self.detector}:{self.file}:{self.damage}"


# -- the tiny detectors ----------------------------------------------------------------------------
def build_detectors(root: Path) -> dict[str, Path]:
    """Saves four tiny fitted detectors under root and returns their folders (~15 s)."""
    from vsad.data import make_category
    from vsad.detector import VSAD, PatchCore, PatchKNN

    small = make_category(n_train=4, n_test=1, n_views=3, image_size=32, seed=1)
    larger = make_category(n_train=4, n_test=1, n_views=3, image_size=64, seed=1)
    detectors = {
        "patchknn": (PatchKNN({"image_size": 32}), small, {}),
        "patchcore": (PatchCore({"image_size": 32, "coreset_ratio": 0.5}), small, {}),
        "vsad": (VSAD({"image_size": 64}), larger, {}),  # the default: Lite0 level, aligned
        "vsad-unet": (
            VSAD({"encoder": "unshuffle", "feature_levels": [-1], "latent_level": False,
                  "image_size": 64, "train": {"steps": 1}, "inversion_steps": 1,
                  "align": "none"}),
            larger,
            {"homographies": larger.homographies},
        ),
    }  # fmt: skip
    folders = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, (detector, category, kwargs) in detectors.items():
            detector.fit(category.train, progress=False, **kwargs)
            folder = root / name / "model"
            detector.save(folder)
            views = [np.ascontiguousarray(v) for v in category.test[0].images]
            np.save(root / name / "views.npy", np.stack(views))
            _write_views(root / name, views)
            folders[name] = folder
    return folders


def _write_views(folder: Path, views) -> None:
    import cv2

    for k, view in enumerate(views):
        cv2.imwrite(str(folder / f"view{k}.png"), view[..., ::-1])


# -- damage ---------------------------------------------------------------------------------------
def _bytes(transform):
    def apply(path: Path) -> None:
        path.write_bytes(transform(path.read_bytes()))

    return apply


def _header_only(data: bytes) -> bytes:
    length = int.from_bytes(data[:8], "little")
    return data[: 8 + length]


def _pickle_payload(marker: Path):
    def apply(path: Path) -> None:
        RunsCode.marker = str(marker)
        path.write_bytes(pickle.dumps({"weights": RunsCode()}))

    return apply


def _torch_save(marker: Path):
    def apply(path: Path) -> None:
        RunsCode.marker = str(marker)
        torch.save({"weights": torch.zeros(2), "payload": RunsCode()}, path)

    return apply


def _tensors(edit):
    def apply(path: Path) -> None:
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(path))
        edit(tensors)
        save_file(tensors, str(path))

    return apply


def _drop(name):
    return _tensors(lambda t: t.pop(name))


def _reshape(name):
    def edit(t):
        value = t[name]
        t[name] = (
            torch.zeros((*value.shape, 2), dtype=value.dtype)
            if value.dim() < 3
            else (value.flatten())
        )

    return _tensors(edit)


def _retype(name):
    def edit(t):
        value = t[name]
        t[name] = value.to(torch.float64 if value.dtype != torch.float64 else torch.float32)

    return _tensors(edit)


def _extra(name):
    return _tensors(lambda t: t.__setitem__(name, torch.zeros(3)))


def _nan(name):
    def edit(t):
        t[name] = t[name].clone()
        t[name].view(-1)[0] = float("nan")

    return _tensors(edit)


def _json(edit):
    def apply(path: Path) -> None:
        data = json.loads(path.read_text())
        data = edit(data)
        path.write_text(json.dumps(data))

    return apply


def _set(*keys, value):
    def edit(data):
        target = data
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
        return data

    return _json(edit)


def _delete(*keys):
    def edit(data):
        target = data
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]
        return data

    return _json(edit)


def _text(text):
    return lambda path: path.write_text(text)


WRONG_VALUES = {"a string": "x", "a list": [1, 2], "an object": {"a": 1}, "null": None,
                "negative": -3, "a float": 2.5, "true": True, "huge": 10**21}  # fmt: skip


def _safetensors_cases(name: str, file: str, tensor_names: list[str], marker: Path):
    yield Case(name, file, "zero-byte", _bytes(lambda b: b""))
    yield Case(name, file, "truncated", _bytes(lambda b: b[: len(b) // 2]))
    yield Case(name, file, "header-only", _bytes(_header_only))
    yield Case(name, file, "cut-in-header", _bytes(lambda b: b[:20]))
    yield Case(name, file, "text", _text("these are not the weights you are looking for\n"))
    yield Case(name, file, "json-text", _text('{"level0.view0": [1, 2, 3]}'))
    yield Case(name, file, "pickle", _pickle_payload(marker))
    yield Case(name, file, "torch-save", _torch_save(marker))
    yield Case(
        name,
        file,
        "garbage-header",
        _bytes(lambda b: (40).to_bytes(8, "little") + b"\xff" * 40 + b[48:]),
    )
    yield Case(name, file, "a-folder", lambda p: (p.unlink(), p.mkdir()))
    for tensor in tensor_names:
        yield Case(name, file, f"drop:{tensor}", _drop(tensor))
        yield Case(name, file, f"shape:{tensor}", _reshape(tensor))
        yield Case(name, file, f"dtype:{tensor}", _retype(tensor))
        if tensor.startswith("stats.") or tensor in ("null_text", "homography.H"):
            yield Case(name, file, f"nan:{tensor}", _nan(tensor))


def _sampled(names: list[str], prefix: str, every: int) -> list[str]:
    """Every tensor without `prefix`, every `every`-th with it (the UNet has ~100)."""
    inside = [n for n in names if n.startswith(prefix)]
    return [n for n in names if not n.startswith(prefix)] + inside[::every] + inside[-1:]


def _json_cases(name: str, meta: dict):
    file = "detector.json"
    yield Case(name, file, "not-json", _text("{broken"))
    yield Case(name, file, "empty", _text(""))
    yield Case(name, file, "a-list", _text("[1, 2, 3]"))
    yield Case(name, file, "a-folder", lambda p: (p.unlink(), p.mkdir()))
    optional = {"vsad_version", "thresholds", "normal_scores", "homography_report"}
    for key in meta:
        # Documented: vsad_version is informational; a model without thresholds (or without
        # the stored training scores) loads uncalibrated with a warning; no homography report
        # = no pairs left out by fallbacks.
        yield Case(name, file, f"drop:{key}", _delete(key),
                   ACCEPTED if key in optional else REFUSED)  # fmt: skip
        if key == "vsad_version":
            continue
        for label, value in WRONG_VALUES.items():
            if value is None and key in optional:
                continue  # null means "none" for these (documented)
            if key == "view_size" and label == "a list":
                continue  # [1, 2] is a well-formed size: trusted (docs/design.md §5.5)
            yield Case(name, file, f"{key}={label}", _set(key, value=value))
    for key in meta["banks"]:
        # Banks saved before these existed: fp32 search, raw distances.
        absent_ok = key == "precision" or (key == "normalization" and meta["banks"][key] == "none")
        yield Case(name, file, f"drop:banks.{key}", _delete("banks", key),
                   ACCEPTED if absent_ok else REFUSED)  # fmt: skip
        for label, value in WRONG_VALUES.items():
            if key == "coreset_ratio" and value is None and meta["banks"][key] is None:
                continue
            if (key == "precision" and isinstance(value, str)) or value == meta["banks"][key]:
                continue  # not wrong
            yield Case(name, file, f"banks.{key}={label}", _set("banks", key, value=value))
    yield Case(name, file, "num_views-off-by-one", _set("num_views", value=meta["num_views"] + 1))
    yield Case(name, file, "banks.per_view-flipped",
               _set("banks", "per_view", value=not meta["banks"]["per_view"]))  # fmt: skip
    yield Case(name, file, "config.image_size=huge", _set("config", "image_size", value=10**21))
    yield Case(name, file, "config.bank_radius=huge", _set("config", "bank_radius", value=10**21))
    yield Case(name, file, "config.smoothing_sigma=1e300",
               _set("config", "smoothing_sigma", value=1e300))  # fmt: skip
    yield Case(name, file, "config.nope=1", _set("config", "nope", value=1))
    yield Case(name, file, "config.bank_mode-flipped", _set("config", "bank_mode", value=(
        "global" if meta["config"]["bank_mode"] == "local" else "local")))  # fmt: skip
    if "thresholds" in meta:
        for level in ("sample", "view"):
            for label in ("a string", "null", "a list"):
                yield Case(name, file, f"thresholds.{level}={label}",
                           _set("thresholds", level, value=WRONG_VALUES[label]))  # fmt: skip
        yield Case(name, file, "thresholds.levels=a-list", _set("thresholds", "levels", value=[1]))
        yield Case(name, file, "normal_scores.sample-shortened", _json(_shorten("sample")))
        yield Case(name, file, "normal_scores.view-shortened", _json(_shorten("view")))
        yield Case(name, file, "normal_scores.view-row-shortened", _json(_shorten_row))
        yield Case(name, file, "normal_scores-both-shortened",
                   _json(lambda d: _shorten("view")(_shorten("sample")(d))))  # fmt: skip
        yield Case(name, file, "normal_scores.sample=a-string",
                   _set("normal_scores", "sample", value="0.5"))  # fmt: skip
        yield Case(name, file, "normal_scores.sample-nan", _json(_nan_score))
        yield Case(name, file, "normal_scores.view-missing", _delete("normal_scores", "view"))
    yield Case(name, file, "homography_report=5", _set("homography_report", value=5))
    yield Case(name, file, "homography_report=[5]", _set("homography_report", value=[5]))


def _shorten(key):
    def edit(data):
        data["normal_scores"][key] = data["normal_scores"][key][:-1]
        return data

    return edit


def _shorten_row(data):
    data["normal_scores"]["view"][0] = data["normal_scores"]["view"][0][:-1]
    return data


def _nan_score(data):
    data["normal_scores"]["sample"][0] = float("nan")
    return data


def generate_cases(folders: dict[str, Path], marker: Path) -> list[Case]:
    from safetensors.torch import load_file

    cases = []
    for name, folder in folders.items():
        for file in ("weights.safetensors", "bank.safetensors"):
            if not (folder / file).exists():
                continue
            names = sorted(load_file(str(folder / file)))
            cases += _safetensors_cases(name, file, _sampled(names, "model.", 25), marker)
            if file == "weights.safetensors" and any(n.startswith("model.") for n in names):
                cases.append(Case(name, file, "extra:model.bogus", _extra("model.bogus")))
            if file == "weights.safetensors" and any(n.startswith("encoder.") for n in names):
                cases.append(Case(name, file, "extra:encoder.bogus", _extra("encoder.bogus")))
        meta = json.loads((folder / "detector.json").read_text())
        cases += _json_cases(name, meta)
        cases.append(Case(name, "bank.safetensors", "missing",
                          lambda p: p.unlink()))  # fmt: skip
        if (folder / "weights.safetensors").exists():
            cases.append(Case(name, "weights.safetensors", "missing", lambda p: p.unlink()))
    return cases


# -- running ---------------------------------------------------------------------------------------
def damaged_copy(case: Case, folders: dict[str, Path], work: Path) -> Path:
    source = folders[case.detector].parent
    target = work / case.id.replace(":", "_").replace("/", "_")
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    case.apply(target / "model" / case.file)
    return target


def through_api(run: Path) -> tuple[str, str, BaseException | None]:
    from vsad.detector import load_detector

    views = list(np.load(run / "views.npy"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_detector(run / "model").predict(views)
    except (ValueError, FileNotFoundError) as err:
        return REFUSED, str(err), err
    except Exception as err:  # noqa: BLE001 - what the matrix counts
        return TRACEBACK, traceback.format_exc(), err
    return ACCEPTED, "", None


def through_cli(run: Path) -> tuple[str, str]:
    from vsad.cli import main

    views = sorted(str(p) for p in run.glob("view*.png"))
    out, err = io.StringIO(), io.StringIO()
    try:
        with warnings.catch_warnings(), redirect_stdout(out), redirect_stderr(err):
            warnings.simplefilter("ignore")
            code = main(["predict", "--run", str(run), *views, "--out", str(run / "pred")])
    except SystemExit as exc:
        code = exc.code
    except Exception:  # noqa: BLE001 - what the matrix counts
        return TRACEBACK, traceback.format_exc()
    text = err.getvalue() + out.getvalue()
    if "Traceback" in text:
        return TRACEBACK, text
    return (ACCEPTED if code == 0 else REFUSED), text


def main() -> None:
    import tempfile
    from collections import Counter

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folders = build_detectors(tmp / "detectors")
        marker = tmp / "pickle-code-ran"
        cases = generate_cases(folders, marker)
        counts, bad = Counter(), []
        for case in cases:
            run = damaged_copy(case, folders, tmp / "work")
            api, api_text, _ = through_api(run)
            cli, cli_text = through_cli(run)
            for path, (got, text) in (("api", (api, api_text)), ("cli", (cli, cli_text))):
                ok = got == case.expect and (got != REFUSED or case.file in text)
                counts[(path, got, "ok" if ok else "WRONG")] += 1
                if not ok:
                    bad.append(
                        f"{path} {case.id}: expected {case.expect}, got {got}: {text[-300:]}"
                    )
            shutil.rmtree(run)
        print(f"{len(cases)} cases x 2 paths; pickle executed: {marker.exists()}")
        for key, n in sorted(counts.items()):
            print(" ", *key, n)
        for line in bad:
            print(line)


if __name__ == "__main__":
    main()
