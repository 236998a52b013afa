"""Configurations of the detectors: plain dataclasses that round-trip through JSON, with
`key=value` overrides for the command line (`train.steps=300 bank_mode=global`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from vsad.memory.feature_banks import BANK_MODES, NORMALIZATIONS
from vsad.model.training import TrainConfig
from vsad.model.view_aligned_unet import PLACEMENTS

ENCODERS = ("unshuffle", "vae")
BANK_DTYPE_NAMES = ("float32", "float16", "bfloat16")


@dataclass
class DetectorConfig:
    """What every detector shares: input size, the memory bank and scoring (eq. 12)."""

    #: Keys added after models were first saved, with the value that reproduces a saved model
    #: that lacks them (BankDetector.load); user config files get the current defaults.
    LEGACY_DEFAULTS: ClassVar[dict[str, Any]] = {}

    image_size: int = 128  # every view is resized to image_size² before feature extraction
    bank_mode: str = "local"  # "local" (±bank_radius cells) or "global"
    bank_radius: int = 2
    bank_per_view: bool = True
    bank_dtype: str = "float32"
    coreset_ratio: float | None = None  # global mode only
    level_weights: list[float] | None = None  # w_l of eq. 12; None = equal weights
    # "position": each level's distances become z-scores against the normal variation of their
    # view and cell (leave-one-out over the training samples) before eq. 12; "none": raw.
    normalization: str = "position"
    feature_pool: int = 3  # average features over pool×pool cells before the bank (PatchCore)
    smoothing_sigma: float = 4.0  # Gaussian σ of the final maps, in view pixels; 0 = off
    batch_size: int = 4  # samples per inference batch
    seed: int = 0

    def __post_init__(self) -> None:
        _positive(self, "image_size", "batch_size", "feature_pool")
        _choice(self, "bank_mode", BANK_MODES)
        _choice(self, "bank_dtype", BANK_DTYPE_NAMES)
        _choice(self, "normalization", NORMALIZATIONS)
        if not isinstance(self.bank_radius, int) or self.bank_radius < 0:
            raise ValueError(f"bank_radius: got {self.bank_radius!r}, expected an integer >= 0")
        if self.coreset_ratio is not None and self.bank_mode == "local":
            raise ValueError(
                f"coreset_ratio: got {self.coreset_ratio}, but a coreset only applies to "
                "bank_mode='global' (local search needs every position)"
            )
        if self.smoothing_sigma < 0:
            raise ValueError(f"smoothing_sigma: got {self.smoothing_sigma}, expected >= 0")

    # -- serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DetectorConfig:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(
                f"config: unknown key(s) {unknown} for {cls.__name__}; known keys: {sorted(known)}"
            )
        values = dict(data)
        if "train" in values and isinstance(values["train"], dict):
            values["train"] = TrainConfig(**values["train"])
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | Path) -> DetectorConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"config: file '{path}' does not exist") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"config: '{path}' is not valid JSON ({err})") from None
        return cls.from_dict(data.get("config", data))

    def with_overrides(self, overrides: list[str] | dict) -> DetectorConfig:
        """A copy with `key=value` strings (values parsed as JSON when they parse, else kept as
        strings; `train.steps=300` reaches the nested training config) applied."""
        data = self.to_dict()
        items = overrides.items() if isinstance(overrides, dict) else map(_split, overrides)
        for key, value in items:
            target, leaf = data, key
            if "." in key:
                head, leaf = key.split(".", 1)
                if not isinstance(data.get(head), dict):
                    raise ValueError(f"override {key!r}: {head!r} is not a section of the config")
                target = data[head]
            if leaf not in target:
                raise ValueError(f"override {key!r}: unknown key; known keys: {sorted(target)}")
            target[leaf] = _parse(value) if isinstance(value, str) else value
        return type(self).from_dict(data)


@dataclass
class VSADConfig(DetectorConfig):
    """ViewSense-AD: latent encoder, UNet with MVAM + FRM, training and feature extraction.

    The default is the embedded tiny model (trains from scratch on a CPU); set
    `stable_diffusion` to a local Stable Diffusion 2 folder (diffusers layout) to start from its
    UNet (and VAE with encoder="vae")."""

    LEGACY_DEFAULTS: ClassVar[dict[str, Any]] = {"view_fusion": 0.0}

    encoder: str = "unshuffle"  # "unshuffle" (lossless f×f patches) or "vae"
    unshuffle_factor: int = 4
    stable_diffusion: str | None = None
    unet: dict = field(default_factory=dict)  # overrides of the tiny UNet config
    window: int = 3  # R of MVAM
    head_dim: int = 32
    use_mvam: bool = True
    use_frm: bool = True
    # "resnet": MVAM + FRM after each decoder ResBlock (the paper's Fig. 2 iii), and every
    # ResBlock is a feature level; "block": after each decoder block. "resnet" with the two
    # finest levels scored better on the demo data: AUPRO on all five seeds, S-AUROC on four
    # (the fifth tied at 1.0; BENCHMARKS.md).
    placement: str = "resnet"
    view_graph: str = "ring"  # "ring", "chain", "all"
    neighbors_per_view: int = 2
    neighbors: list[list[int]] | None = None  # explicit view graph (overrides view_graph)
    homography_samples: int = 20  # training samples pooled to estimate the homographies
    homography_fallback: str = "error"  # or "identity" for a pair that cannot be estimated
    # 100 steps: on the synthetic category longer training lowered S-AUROC (BENCHMARKS.md).
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=100))
    inversion_steps: int = 4  # DDIM inversion steps before reading the features
    t_end: int = 200  # timestep the inversion reaches
    # Levels read for the bank, in decoder order (-1 = finest). With placement "resnet" the
    # default is the two ResBlocks of the finest decoder block (full latent resolution).
    feature_levels: list[int] = field(default_factory=lambda: [-2, -1])
    # Weight of the neighbours' homography-warped features in each view's scored features
    # (vsad.model.view_fusion; beyond the paper, measured in BENCHMARKS.md); 0 = off.
    view_fusion: float = 0.5
    # Also score the encoder's latent as one more level, after the decoder levels and without
    # fusion: with the unshuffle encoder these are the f×f pixel patches PatchKNN scores, which
    # localise sharply where the UNet features are smooth (beyond the paper). Off by default: on
    # the demo data (5 seeds, BENCHMARKS.md) it raised P-AP by 10.6 points on every seed, left
    # S-, V-AUROC and AUPRO equal within noise, and lowered all three on one held-out seed.
    latent_level: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.latent_level, bool):
            raise ValueError(f"latent_level: got {self.latent_level!r}, expected true or false")
        _choice(self, "encoder", ENCODERS)
        _choice(self, "placement", PLACEMENTS)
        _choice(self, "homography_fallback", ("error", "identity"))
        if self.encoder == "vae" and not self.stable_diffusion:
            raise ValueError(
                "encoder: 'vae' needs stable_diffusion=<local Stable Diffusion 2 folder> (the "
                "tiny default uses encoder='unshuffle')"
            )
        if not isinstance(self.train, TrainConfig):
            raise ValueError(f"train: got {type(self.train).__name__}, expected a TrainConfig")
        if not self.feature_levels:
            raise ValueError("feature_levels: got an empty list, expected decoder level indices")
        levels = len(self.feature_levels) + self.latent_level
        if self.level_weights is not None and len(self.level_weights) != levels:
            latent = ", then one for the latent level" if self.latent_level else ""
            raise ValueError(
                f"level_weights: got {len(self.level_weights)} weights, expected {levels} (one "
                f"per entry of feature_levels{latent})"
            )
        if (
            isinstance(self.view_fusion, bool)
            or not isinstance(self.view_fusion, (int, float))
            or not 0 <= self.view_fusion < float("inf")
        ):
            raise ValueError(f"view_fusion: got {self.view_fusion!r}, expected a number >= 0")
        if self.inversion_steps < 0:
            raise ValueError(f"inversion_steps: got {self.inversion_steps}, expected >= 0")
        if self.image_size % (8 * self.unshuffle_factor) and self.encoder == "unshuffle":
            raise ValueError(
                f"image_size: got {self.image_size}, expected a multiple of "
                f"{8 * self.unshuffle_factor} (unshuffle_factor × the UNet's 8× downsampling)"
            )


@dataclass
class PatchKNNConfig(DetectorConfig):
    """The raw-pixel baseline: f×f pixel patches (pixel-unshuffle), averaged over a
    feature_pool² neighbourhood as PatchCore does, through the same bank, search and scoring."""

    patch_size: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive(self, "patch_size")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size: got {self.image_size}, expected a multiple of patch_size "
                f"{self.patch_size}"
            )


def _positive(config, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: got {value!r}, expected an integer >= 1")


def _choice(config, name: str, allowed: tuple) -> None:
    value = getattr(config, name)
    if value not in allowed:
        raise ValueError(f"{name}: got {value!r}, expected one of {allowed}")


def _split(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ValueError(f"override {item!r}: expected key=value")
    key, value = item.split("=", 1)
    return key.strip(), value.strip()


def _parse(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value
