"""A diffusers UNet whose decoder is followed by MVAM + FRM at each level (paper eq. 7).

No fork of diffusers: the modules attach through forward hooks on `unet.up_blocks` (after each
decoder block) or on their ResNet blocks (after each ResBlock). The hooks act only inside
`ViewAlignedUNet.forward`, which knows how the batch splits into views and which homographies
relate them; calling the wrapped UNet directly gives the plain UNet.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from vsad.model.frm import FRM
from vsad.model.mvam import MVAM

PLACEMENTS = ("block", "resnet")
#: The `autocast` setting -> the dtype the UNet runs in under torch.autocast (None: float32).
AUTOCAST_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def feature_grid_homography(homography: torch.Tensor, stride: float) -> torch.Tensor:
    """Re-expresses a homography between latent grids on a grid `stride` times coarser.

    A feature cell x_f covers latent pixels centred at x = s·x_f + (s − 1)/2 (docs/design.md §4);
    one implementation of that convention: vsad.geometry.scale_homography.
    """
    from vsad.geometry import scale_homography

    return scale_homography(homography.to(torch.float64), float(stride))


@dataclass
class _ViewContext:
    views: int
    homography: torch.Tensor  # (B, M, N, 3, 3) or (M, N, 3, 3), latent pixel coordinates
    neighbors: torch.Tensor  # (M, N)
    latent_height: int


class ViewAlignedUNet(nn.Module):
    """Wraps a `diffusers.UNet2DConditionModel` with MVAM and FRM after each decoder level.

    Args:
        unet: the UNet (pretrained or built from a config).
        window: R, MVAM's search window.
        head_dim: channels per MVAM attention head (heads = channels // head_dim, at least 1).
        use_mvam, use_frm: ablation switches (the paper's "w/o MVAM" / "w/o FRM").
        placement: "block" (after each up block) or "resnet" (after each ResBlock of the decoder).
        autocast: "none" (float32), "bf16" or "fp16": the UNet runs under torch.autocast on the
            device of its input; the predicted noise and the features come back as float32.
    """

    def __init__(
        self,
        unet: nn.Module,
        *,
        window: int = 3,
        head_dim: int = 32,
        use_mvam: bool = True,
        use_frm: bool = True,
        placement: str = "block",
        backend: str | None = None,
        autocast: str = "none",
    ) -> None:
        super().__init__()
        if placement not in PLACEMENTS:
            raise ValueError(f"placement: got {placement!r}, expected one of {PLACEMENTS}")
        if autocast not in AUTOCAST_DTYPES:
            raise ValueError(
                f"autocast: got {autocast!r}, expected one of {tuple(AUTOCAST_DTYPES)}"
            )
        self.autocast = autocast
        self.unet = unet
        self.placement = placement
        targets = self._targets(unet, placement)
        mvams, frms = [], []
        for _, channels in targets:
            heads = max(channels // head_dim, 1)
            while channels % heads:
                heads -= 1
            mvams.append(MVAM(channels, heads, window, backend=backend) if use_mvam else None)
            frms.append(FRM(channels) if use_frm else None)
        self.mvam = nn.ModuleList([m if m is not None else nn.Identity() for m in mvams])
        self.frm = nn.ModuleList([f if f is not None else nn.Identity() for f in frms])
        self.use_mvam, self.use_frm = use_mvam, use_frm
        self._context: _ViewContext | None = None
        self._features: list[torch.Tensor] = []
        self._hooks = [
            module.register_forward_hook(self._make_hook(level))
            for level, (module, _) in enumerate(targets)
        ]

    @staticmethod
    def _targets(unet: nn.Module, placement: str) -> list[tuple[nn.Module, int]]:
        targets = []
        for block in unet.up_blocks:
            if placement == "block":
                targets.append((block, block.resnets[-1].out_channels))
            else:
                targets.extend((resnet, resnet.out_channels) for resnet in block.resnets)
        return targets

    @property
    def num_levels(self) -> int:
        return len(self.mvam)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int,
        encoder_hidden_states: torch.Tensor,
        *,
        views: int,
        homography: torch.Tensor,
        neighbors: torch.Tensor,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Runs the UNet on a batch of B·M latents (views of one sample are consecutive).

        Returns the predicted noise (B·M, C, h, w) and the refined features F(l) of every level,
        each (B, M, C_l, H_l, W_l), in decoder order (coarse to fine).
        """
        if sample.dim() != 4 or sample.shape[0] % views:
            raise ValueError(
                f"sample: got shape {tuple(sample.shape)}, expected (B*M, C, h, w) with M={views}"
            )
        self._context = _ViewContext(views, homography, neighbors, sample.shape[-2])
        self._features = []
        try:
            with self._autocast(sample.device):
                noise = self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states)
            noise = noise.sample.float()  # float32 already, unless autocast
        finally:
            self._context = None
        features, self._features = self._features, []
        return noise, features

    def _autocast(self, device: torch.device):
        dtype = AUTOCAST_DTYPES[self.autocast]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=dtype)

    def _make_hook(self, level: int):
        def hook(module, inputs, output):
            ctx = self._context
            if ctx is None:  # plain UNet call
                return output
            hidden = output[0] if isinstance(output, tuple) else output
            n, c, h, w = hidden.shape
            x = hidden.reshape(n // ctx.views, ctx.views, c, h, w)
            if self.use_mvam:
                stride = ctx.latent_height / h
                hom = feature_grid_homography(ctx.homography, stride)
                x = self.mvam[level](x, hom, ctx.neighbors)
            x = self.frm[level](x)
            self._features.append(x.float())  # float32 already, unless autocast
            refined = x.reshape(n, c, h, w)
            return (refined, *output[1:]) if isinstance(output, tuple) else refined

        return hook
