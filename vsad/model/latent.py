"""Image ↔ latent space of the diffusion model.

Two encoders share one interface (`encode(images) -> latents`, `latent_channels`, `stride`):

- `PixelUnshuffleEncoder` — the embedded default. Each f×f patch of the image becomes 3·f²
  channels of one latent cell: lossless, free, and nothing to train. A KL autoencoder trained
  from scratch on a CPU would cost minutes of the training budget and blur exactly the small
  defects we look for; the measured start (docs/design.md §4) used this encoding for that reason.
  Latents are divided by the standard deviation of the training latents (`fit_scaling`), the
  role Stable Diffusion's `scaling_factor` plays for its VAE: the noise schedule assumes data of
  roughly unit variance.
- `VAEEncoder` — a pretrained `diffusers.AutoencoderKL` (from a local Stable Diffusion 2
  folder): the posterior mean times the VAE's own scaling factor, deterministic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PixelUnshuffleEncoder(nn.Module):
    """(B, 3, H, W) images in [0, 1] -> (B, 3·f², H/f, W/f) latents of about unit variance."""

    def __init__(self, factor: int = 4) -> None:
        super().__init__()
        if not isinstance(factor, int) or factor < 1:
            raise ValueError(f"factor: got {factor!r}, expected an integer >= 1")
        self.factor = factor
        self.register_buffer("scaling", torch.ones(()))

    @property
    def latent_channels(self) -> int:
        return 3 * self.factor**2

    @property
    def stride(self) -> int:
        return self.factor

    @torch.no_grad()
    def fit_scaling(self, images: torch.Tensor) -> None:
        """Sets the scaling from training images so that latents have unit standard deviation."""
        raw = F.pixel_unshuffle(images * 2 - 1, self.factor)
        self.scaling.fill_(float(raw.std().clamp(min=1e-3)))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        _check_divisible(images, self.factor)
        return F.pixel_unshuffle(images * 2 - 1, self.factor) / self.scaling


class VAEEncoder(nn.Module):
    """Latents of a pretrained AutoencoderKL: posterior mean × scaling_factor (deterministic)."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        self._stride = 2 ** (len(vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def stride(self) -> int:
        return self._stride

    def fit_scaling(self, images: torch.Tensor) -> None:
        """Nothing to fit: the pretrained VAE carries its own scaling factor."""

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        _check_divisible(images, self._stride)
        posterior = self.vae.encode(images * 2 - 1).latent_dist
        return posterior.mean * float(self.vae.config.scaling_factor)


def _check_divisible(images: torch.Tensor, stride: int) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images: got shape {tuple(images.shape)}, expected (B, 3, H, W)")
    h, w = images.shape[-2:]
    if h % stride or w % stride:
        raise ValueError(
            f"images: got {h}x{w}, expected a height and width divisible by the encoder's "
            f"stride {stride}"
        )
