"""Configurations of the detectors: plain dataclasses that round-trip through JSON, with
`key=value` overrides for the command line (`train.steps=300 bank_mode=global`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from vsad.detector.alignment import ALIGN_FRAMES, ALIGN_MODES
from vsad.detector.device import DEVICE_PATTERN
from vsad.geometry.graphs import GRAPH_KINDS
from vsad.geometry.pooled import FALLBACKS
from vsad.memory.feature_banks import BANK_MODES, NORMALIZATIONS
from vsad.model.backbone import TINY_UNET
from vsad.model.pretrained import (
    DEFAULT_STAGES,
    PRETRAINED_ENCODERS,
    check_stages,
    stages_channels,
    stages_stride,
)
from vsad.model.training import TrainConfig
from vsad.model.view_aligned_unet import AUTOCAST_DTYPES, PLACEMENTS
from vsad.validation import Bound, Pattern, between, check_fields, check_patterns

ENCODERS = ("unshuffle", "vae", *PRETRAINED_ENCODERS)
BACKBONES = ("pixels", *PRETRAINED_ENCODERS)
#: The downsampling of the UNet's encoder path (the input grid must divide by it).
UNET_DOWNSAMPLING = 8
BANK_DTYPE_NAMES = ("float32", "float16", "bfloat16")
#: Upper bounds shared by several fields (the BOUNDS tables say why each).
MAX_IMAGE_SIZE = 4096
MAX_CHANNELS = 4096
MAX_VIEWS = 64
MAX_SEED = 2**32 - 1
#: Numeric fields whose range a dedicated check enforces instead of BOUNDS: the stages of an
#: EfficientNet-Lite, 0–6, increasing (vsad.model.pretrained.check_stages).
RANGE_CHECKED_ELSEWHERE = {"encoder_stages": 6, "backbone_stages": 6}
VIEW_GRAPHS = tuple(k for k in GRAPH_KINDS if k != "explicit")  # explicit: set `neighbors`


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
    # Target false-reject rate of the OK/NG thresholds that fit sets from the training samples'
    # leave-one-out scores (vsad/detector/calibration.py); None = no thresholds. 0.05, not
    # 0.01: 40 normal samples resolve 5 % (the order statistic needs 19) but not 1 % (99).
    threshold_fpr: float | None = 0.05
    # Where the model, the banks and every tensor of fit and predict live: "cpu", "cuda" (the
    # current GPU) or "cuda:N". Not part of what is saved: load_detector(path, device=...)
    # (default "cpu") picks it on the machine that loads the model (vsad/detector/device.py).
    device: str = "cpu"
    # "similarity": every view is registered to its camera's reference view (the first training
    # sample's) by a rotation + scale + shift before features are read, undoing where the unit
    # sat on the station (vsad/detector/alignment.py); "none": views as they come.
    align: str = "none"
    # Where each camera's reference frame sits when views are registered: "median" = at the
    # training units' median placement (the strips a warp fills with replicated border pixels
    # are then smallest), "first" = at the first training unit's (vsad/detector/alignment.py).
    align_frame: str = "median"
    # Registration is a model of how a unit varies (placed a little differently in the plane);
    # fit turns it off (align="none", with a warning and `align_report` in detector.json) when
    # fewer than this fraction of the training views register to their reference: units that
    # turn on the station show their cameras other sides, which a similarity cannot map (real
    # turntable: 53-63 % registered, the 2-D presets of the real-photo benchmark: 100 %).
    align_min_registered: float = 0.9
    # When fit turns registration off for that reason, the local search widens to ±this many
    # cells (None: keep bank_radius): parts of a turned unit move further than a placed one's.
    # On the turntable's tuning seed, ±3 instead of ±2 raised S-AUROC at poses between the
    # training poses from 41 to 70 and kept it at the training poses (96.1 -> 96.7).
    unregistered_radius: int | None = 3

    #: Ranges of the numeric fields (types come from the annotations; vsad.validation). Every
    #: field has an upper bound that keeps a run feasible; a larger value is a typo (1e21 ended
    #: in cv2 / custom-op / overflow errors deep inside fit). Why each bound:
    BOUNDS: ClassVar[dict[str, Bound]] = {
        "threshold_fpr": between(0, 1, lo_open=True, hi_open=True),
        "align_min_registered": between(0, 1),  # a fraction of the training views
        "unregistered_radius": between(0, 64),  # as bank_radius
        # Views are resized to image_size² and every feature grid and bank grows with its
        # square: at 4096² one five-view sample is 1 GB of float32 input; OpenCV stops at 32767.
        "image_size": between(1, MAX_IMAGE_SIZE),
        # The local search compares (2ρ + 1)² cells per query: at 64 that is 16641, more than
        # a global search over a 128² grid (use bank_mode="global" then).
        "bank_radius": between(0, 64),
        "coreset_ratio": between(0, 1, lo_open=True),
        # Relative weights of eq. 12: 1e6 already hides every other level in float32.
        "level_weights": between(0, 1e6),
        # An average over pool² cells: at 64 it spans more than the 48-cell grid of 384².
        "feature_pool": between(1, 64),
        # In view pixels, the kernel is truncated at 4σ: 512 px flattens any map (1e300
        # overflowed the kernel size).
        "smoothing_sigma": between(0, 512),
        # Samples per inference batch: 1024 five-view samples at 384² are 9 GB of input.
        "batch_size": between(1, 1024),
        # Seeds of torch and NumPy generators are portable in 32 bits.
        "seed": between(0, MAX_SEED),
    }
    #: Fields that take one of a few values.
    CHOICES: ClassVar[dict[str, tuple]] = {
        "bank_mode": BANK_MODES,
        "bank_dtype": BANK_DTYPE_NAMES,
        "normalization": NORMALIZATIONS,
        "align": ALIGN_MODES,
        "align_frame": ALIGN_FRAMES,
    }
    #: String fields with a format (vsad.validation.Pattern).
    PATTERNS: ClassVar[dict[str, Pattern]] = {"device": DEVICE_PATTERN}

    def __post_init__(self) -> None:
        if isinstance(getattr(self, "train", None), dict):  # a nested section given as a dict
            self.train = _train_config(self.train)
        bounds, choices, patterns = {}, {}, {}
        for klass in reversed(type(self).__mro__):
            bounds.update(vars(klass).get("BOUNDS", {}))
            choices.update(vars(klass).get("CHOICES", {}))
            patterns.update(vars(klass).get("PATTERNS", {}))
        check_fields(self, bounds)
        check_patterns(self, patterns)
        for name, allowed in choices.items():
            _choice(self, name, allowed)
        if self.level_weights is not None and (
            not self.level_weights or sum(self.level_weights) <= 0
        ):
            raise ValueError(
                f"level_weights: got {self.level_weights!r}, expected null or non-negative "
                "weights that do not sum to 0"
            )
        if self.coreset_ratio is not None and self.bank_mode == "local":
            raise ValueError(
                f"coreset_ratio: got {self.coreset_ratio}, but a coreset only applies to "
                "bank_mode='global' (local search needs every position)"
            )

    # -- serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DetectorConfig:
        if not isinstance(data, dict):
            raise ValueError(
                f"config: got {type(data).__name__} {data!r:.80}, expected an object of "
                f"{cls.__name__} keys"
            )
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(
                f"config: unknown key(s) {unknown} for {cls.__name__}; known keys: {sorted(known)}"
            )
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path) -> DetectorConfig:
        path = Path(path)
        if path.is_dir():
            raise ValueError(f"config: '{path}' is a folder, expected a JSON file")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"config: file '{path}' does not exist") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"config: '{path}' is not valid JSON ({err})") from None
        if isinstance(data, dict) and isinstance(data.get("config"), dict):
            data = data["config"]  # a run.json or detector.json holds the config inside
        try:
            return cls.from_dict(data)
        except ValueError as err:
            raise ValueError(f"config file '{path}': {err}") from None

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

    Default (chosen on the real-photo benchmark, BENCHMARKS.md "Real-photo benchmark"): the
    frozen ImageNet EfficientNet-Lite0 level alone at 384² — no UNet is built or trained, since
    its decoder levels, MVAM, FRM and cross-view fusion each lowered S-AUROC there. The paper's
    pipeline is `feature_levels=[-2, -1]` (UNet decoder levels; `UNET_PIPELINE` gives the tiny
    from-scratch model that was the default before); `stable_diffusion` points at a local
    Stable Diffusion 2 folder (diffusers layout) to start from its UNet (and VAE with
    encoder="vae")."""

    LEGACY_DEFAULTS: ClassVar[dict[str, Any]] = {
        "view_fusion": 0.0,
        "latent_level": False,  # off when it was added; on since the real-photo benchmark
        "encoder_stages": list(DEFAULT_STAGES),
        "encoder_channels": None,
        "align": "none",  # views registered by default since the real-photo benchmark
        "align_frame": "first",  # the frame at the median placement since 2026-12-07
    }

    # Every view registered to its camera's reference view (vsad/detector/alignment.py): on
    # the real-photo benchmark's tuning seeds +6 S-AUROC on `placement` and `realistic`.
    align: str = "similarity"
    # Input size: 384² beat 256² and 320² on the real-photo benchmark (a denser feature grid;
    # 448² was no better and slower).
    image_size: int = 384
    # No averaging over neighbouring cells: the pretrained features are already spatially
    # smooth; 1 beat 3 and 5 on V-AUROC at 384².
    feature_pool: int = 1
    # A frozen ImageNet-pretrained "efficientnet-lite0" / "-lite1" / "-lite2"
    # (vsad.model.pretrained), "unshuffle" (lossless f×f pixel patches) or "vae" (a local SD2
    # folder's); with decoder levels the UNet is trained and inverted in that latent space.
    encoder: str = "efficientnet-lite0"
    unshuffle_factor: int = 4
    # Pretrained encoders only: the stages read (0–6; coarser ones upsampled to the finest
    # one's grid and concatenated; [2, 4] = 152 channels at stride 8 for Lite0), and an
    # optional PCA reduction of them to this many channels for the UNet (None = all). The
    # latent level (latent_level=True) always scores all channels.
    encoder_stages: list[int] = field(default_factory=lambda: list(DEFAULT_STAGES))
    encoder_channels: int | None = None
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
    # A view pair whose homography fails the quality check: "drop" leaves it out of the view
    # graph with a warning (each of its views is scored without that neighbour) — so a ring
    # graph also fits an open arc of cameras, whose ends do not overlap; "error" stops fit;
    # "identity" keeps the pair with an identity homography.
    homography_fallback: str = "drop"
    # 100 steps: on the synthetic category longer training lowered S-AUROC (BENCHMARKS.md).
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=100))
    inversion_steps: int = 4  # DDIM inversion steps before reading the features
    t_end: int = 200  # timestep the inversion reaches
    # UNet decoder levels read for the bank, in decoder order (-1 = finest; with placement
    # "resnet" [-2, -1] are the two ResBlocks of the finest decoder block). Empty by default:
    # only the encoder's latent level is scored and no UNet exists (BENCHMARKS.md).
    feature_levels: list[int] = field(default_factory=list)
    # Weight of the neighbours' homography-warped features in each view's scored features
    # (vsad.model.view_fusion; beyond the paper, measured in BENCHMARKS.md); 0 = off.
    view_fusion: float = 0.5
    # Score the encoder's latent as a level (after the decoder levels, not fused): the
    # standardised pretrained features, or with the unshuffle encoder the f×f pixel patches.
    latent_level: bool = True
    # Mixed precision of the UNet (with MVAM and FRM) in training and feature extraction:
    # "none" (float32, the default on every device), "bf16" or "fp16" autocast. Meant for CUDA
    # (fp16 trains with a gradient scaler); "bf16" also runs on CPUs, fast only where oneDNN
    # has bf16 kernels (AVX512-BF16 / AMX). The features read for the bank are float32.
    autocast: str = "none"

    BOUNDS: ClassVar[dict[str, Bound]] = {
        # f×f pixel patches give 3f² channels: 12288 at 64.
        "unshuffle_factor": between(1, 64),
        # Pretrained encoders check it against their stages' channels; 4096 for any encoder.
        "encoder_channels": between(1, MAX_CHANNELS),
        # MVAM attends to R² positions per neighbour and query (the paper uses 3–5).
        "window": between(1, 15),
        "head_dim": between(1, MAX_CHANNELS),
        # A view graph cannot have more neighbours than cameras; 64 cameras is beyond any rig.
        "neighbors_per_view": between(1, MAX_VIEWS - 1),
        # Pairs of view indices (checked against the cameras at fit).
        "neighbors": between(0, MAX_VIEWS - 1),
        # Raw training samples kept in memory for the pooled homography estimate.
        "homography_samples": between(1, 10_000),
        # Each inversion step is one UNet pass per predicted sample.
        "inversion_steps": between(0, 1000),
        "t_end": between(0, 10_000, lo_open=True),  # below train.num_train_timesteps
        # UNet decoder levels, counted from either end (checked against the UNet at build).
        "feature_levels": between(-64, 63),
        # Neighbours' weight against the view's own features: at 100 the own view is ~1 %.
        "view_fusion": between(0, 100),
    }
    CHOICES: ClassVar[dict[str, tuple]] = {
        "encoder": ENCODERS,
        "placement": PLACEMENTS,
        "view_graph": VIEW_GRAPHS,
        "homography_fallback": FALLBACKS,
        "autocast": tuple(AUTOCAST_DTYPES),
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        check_unet_overrides(self.unet)
        if self.stable_diffusion and not self.feature_levels:
            raise ValueError(
                f"feature_levels: got [] with stable_diffusion={self.stable_diffusion!r}; a "
                "Stable Diffusion UNet is only used through its decoder levels (e.g. "
                "feature_levels=[-2, -1])"
            )
        if self.encoder == "vae" and not self.stable_diffusion:
            raise ValueError(
                "encoder: 'vae' needs stable_diffusion=<local Stable Diffusion 2 folder> (the "
                "tiny default uses encoder='unshuffle')"
            )
        if self.inversion_steps and self.t_end >= self.train.num_train_timesteps:
            raise ValueError(
                f"t_end: got {self.t_end}, expected below train.num_train_timesteps "
                f"({self.train.num_train_timesteps})"
            )
        self._check_head_dim()
        if not self.feature_levels and not self.latent_level:
            raise ValueError(
                "feature_levels: got an empty list, expected decoder level indices (or "
                "latent_level=true to score the encoder's latent alone, without a UNet)"
            )
        levels = len(self.feature_levels) + self.latent_level
        if self.level_weights is not None and len(self.level_weights) != levels:
            latent = ", then one for the latent level" if self.latent_level else ""
            raise ValueError(
                f"level_weights: got {len(self.level_weights)} weights, expected {levels} (one "
                f"per entry of feature_levels{latent})"
            )
        if self.encoder in PRETRAINED_ENCODERS:
            self._check_pretrained_encoder()
        else:  # unused then, but a wrong value must not wait for the encoder to change
            check_stages(PRETRAINED_ENCODERS[0], self.encoder_stages, key="encoder_stages")
        if self.encoder == "unshuffle":
            self._check_divisible(
                self.unshuffle_factor, f"unshuffle_factor {self.unshuffle_factor}"
            )

    def _check_head_dim(self) -> None:
        """MVAM splits each decoder level's channels into heads of head_dim channels: it must
        divide them (a level narrower than head_dim gets one head). Known here for the tiny
        UNet; a Stable Diffusion UNet's widths are checked when it is built."""
        if self.stable_diffusion:
            return
        widths = sorted(set(self.unet.get("block_out_channels", TINY_UNET["block_out_channels"])))
        bad = [w for w in widths if w > self.head_dim and w % self.head_dim]
        if bad:
            raise ValueError(
                f"head_dim: got {self.head_dim}, expected a divisor of the decoder widths "
                f"{widths} (or at least the widest, for one head per level)"
            )

    def _check_pretrained_encoder(self) -> None:
        check_stages(self.encoder, self.encoder_stages, key="encoder_stages")
        full = stages_channels(self.encoder, self.encoder_stages)
        channels = self.encoder_channels
        if channels is not None and (
            not isinstance(channels, int) or isinstance(channels, bool) or not 0 < channels <= full
        ):
            raise ValueError(
                f"encoder_channels: got {channels!r}, expected None or an integer in 1..{full} "
                f"(the channels of {self.encoder} stages {list(self.encoder_stages)})"
            )
        if not self.feature_levels:
            return  # no UNet: the backbone pads TF-"SAME", any image size works
        stride = stages_stride(self.encoder, self.encoder_stages)
        first = min(self.encoder_stages)
        self._check_divisible(stride, f"{self.encoder}'s stride {stride} at stage {first}")

    def _check_divisible(self, stride: int, what: str) -> None:
        if self.image_size % (UNET_DOWNSAMPLING * stride):
            raise ValueError(
                f"image_size: got {self.image_size}, expected a multiple of "
                f"{UNET_DOWNSAMPLING * stride} ({what} × the UNet's {UNET_DOWNSAMPLING}× "
                "downsampling)"
            )


@dataclass
class PatchKNNConfig(DetectorConfig):
    """The raw-pixel baseline: f×f pixel patches (pixel-unshuffle), averaged over a
    feature_pool² neighbourhood as PatchCore does, through the same bank, search and scoring.
    With `backbone` set to a pretrained encoder the patches are its frozen features instead
    (the stages `backbone_stages`, raw, concatenated at the finest one's grid)."""

    LEGACY_DEFAULTS: ClassVar[dict[str, Any]] = {
        "backbone": "pixels",
        "backbone_stages": list(DEFAULT_STAGES),
        "align_frame": "first",
    }

    patch_size: int = 4  # backbone="pixels" only
    backbone: str = "pixels"  # or "efficientnet-lite0" / "-lite1" / "-lite2"
    backbone_stages: list[int] = field(default_factory=lambda: list(DEFAULT_STAGES))

    # f×f pixel patches give 3f² channels: 12288 at 64.
    BOUNDS: ClassVar[dict[str, Bound]] = {"patch_size": between(1, 64)}
    CHOICES: ClassVar[dict[str, tuple]] = {"backbone": BACKBONES}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.backbone != "pixels":
            # Any image size works: the backbone pads TF-"SAME" and its grid is ⌈size/stride⌉.
            check_stages(self.backbone, self.backbone_stages, key="backbone_stages")
            return
        check_stages(PRETRAINED_ENCODERS[0], self.backbone_stages, key="backbone_stages")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size: got {self.image_size}, expected a multiple of patch_size "
                f"{self.patch_size}"
            )


@dataclass
class PatchCoreConfig(PatchKNNConfig):
    """PatchCore (Roth et al., CVPR 2022) with its published settings on this package's bank:
    frozen ImageNet features of two mid-level stages (here EfficientNet-Lite0 stages 2 + 4, the
    counterpart of WideResNet-50's layers 2 + 3), 3×3 local averaging, one global bank per view
    reduced to 10 % by the greedy k-center coreset, raw nearest-neighbour distances, 256²
    input, Gaussian σ = 4 on the maps."""

    LEGACY_DEFAULTS: ClassVar[dict[str, Any]] = {"align_frame": "first"}

    image_size: int = 256
    backbone: str = "efficientnet-lite0"
    feature_pool: int = 3
    bank_mode: str = "global"
    coreset_ratio: float | None = 0.1
    normalization: str = "none"


#: The paper's pipeline on the embedded tiny UNet trained from scratch on pixel patches: the
#: default before the real-photo benchmark (`VSADConfig.from_dict({**UNET_PIPELINE, ...})`).
UNET_PIPELINE: dict[str, Any] = {
    "encoder": "unshuffle",
    "image_size": 128,
    "feature_levels": [-2, -1],
    "latent_level": False,
    "feature_pool": 3,
    "align": "none",
}


#: The keys of `unet` (overrides of the tiny UNet, vsad.model.backbone.TINY_UNET): what each
#: must be. Bounds keep a UNet trainable on one machine: widths up to 4096 channels, up to 4
#: blocks (the image-size checks assume the UNet's 8× downsampling), 8 layers per block.
UNET_BLOCKS = {
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
}
UNET_INTS = {
    "sample_size": (1, MAX_IMAGE_SIZE),
    "layers_per_block": (1, 8),
    "cross_attention_dim": (1, MAX_CHANNELS),
    "attention_head_dim": (1, MAX_CHANNELS),
    "norm_num_groups": (1, MAX_CHANNELS),
}
#: Set by the detector from the encoder's latent channels, never by the user.
UNET_DERIVED = ("in_channels", "out_channels")


def check_unet_overrides(unet: dict) -> None:
    """`unet` validated like the other fields: known keys only, integers in range, widths a
    list of 1–4 integers that the group norm divides, block types from diffusers' 2-D blocks,
    one per width — errors named "unet.<key>" instead of a TypeError from inside diffusers."""
    known = sorted([*UNET_INTS, "block_out_channels", *UNET_BLOCKS])
    for key in unet:
        if key in UNET_DERIVED:
            raise ValueError(
                f"unet.{key}: set from the encoder's latent channels, expected it left out"
            )
        if key not in known:
            raise ValueError(f"unet: unknown key {key!r}; known keys: {known}")
    merged = {**TINY_UNET, **unet}
    for key, (lo, hi) in UNET_INTS.items():
        value = merged[key]
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise ValueError(f"unet.{key}: got {value!r}, expected an integer in {lo}..{hi}")
    widths = merged["block_out_channels"]
    if (
        not isinstance(widths, (list, tuple))
        or not 1 <= len(widths) <= 4
        or not all(isinstance(w, int) and not isinstance(w, bool) for w in widths)
        or not all(1 <= w <= MAX_CHANNELS for w in widths)
    ):
        raise ValueError(
            f"unet.block_out_channels: got {widths!r}, expected a list of 1 to 4 integers in "
            f"1..{MAX_CHANNELS} (one width per UNet block)"
        )
    groups = merged["norm_num_groups"]
    if any(w % groups for w in widths):
        raise ValueError(
            f"unet.block_out_channels: got {list(widths)}, expected multiples of "
            f"unet.norm_num_groups ({groups}: group normalisation splits each width into groups)"
        )
    for key, allowed in UNET_BLOCKS.items():
        blocks = merged[key]
        if (
            not isinstance(blocks, (list, tuple))
            or len(blocks) != len(widths)
            or not all(isinstance(b, str) and b in allowed for b in blocks)
        ):
            raise ValueError(
                f"unet.{key}: got {blocks!r}, expected a list of {len(widths)} block names (one "
                f"per entry of block_out_channels), each one of {allowed}"
            )


def _train_config(section: dict) -> TrainConfig:
    """The nested training section, with its errors named "train.<key>"."""
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ValueError(f"train: unknown key(s) {unknown}; known keys: {sorted(known)}")
    try:
        return TrainConfig(**section)
    except ValueError as err:
        raise ValueError(f"train.{err}") from None


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
