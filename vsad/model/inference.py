"""Feature extraction for scoring: DDIM inversion of the clean latents, then one pass through the
view-aligned UNet that reads the refined features F(l) (paper §3.6, docs/design.md §4)."""

from __future__ import annotations

import torch

from vsad.model.training import NOISE_SCHEDULE
from vsad.model.view_aligned_unet import ViewAlignedUNet


def ddim_inverse_scheduler(num_train_timesteps: int = 1000):
    """diffusers' DDIMInverseScheduler with the training noise schedule."""
    from diffusers import DDIMInverseScheduler

    return DDIMInverseScheduler(
        num_train_timesteps=num_train_timesteps,
        clip_sample=False,
        timestep_spacing="leading",
        **NOISE_SCHEDULE,
    )


@torch.no_grad()
def extract_features(
    model: ViewAlignedUNet,
    latents: torch.Tensor,
    text: torch.Tensor,
    *,
    homography: torch.Tensor,
    neighbors: torch.Tensor,
    inversion_steps: int = 4,
    t_end: int = 200,
    num_train_timesteps: int = 1000,
) -> tuple[list[torch.Tensor], int]:
    """Inverts clean latents (B, M, C, h, w) with `inversion_steps` DDIM steps up to timestep
    t_end, then returns the refined features of every decoder level at that timestep
    ([(B, M, C_l, H_l, W_l)], t) — deterministic, unlike adding random noise (which measured
    worse, docs/design.md §4). inversion_steps=0 reads the features of the clean latents at t=0.
    """
    if latents.dim() != 5:
        raise ValueError(f"latents: got shape {tuple(latents.shape)}, expected (B, M, C, h, w)")
    if inversion_steps < 0:
        raise ValueError(f"inversion_steps: got {inversion_steps}, expected >= 0")
    if inversion_steps and not 0 < t_end < num_train_timesteps:
        raise ValueError(f"t_end: got {t_end}, expected in (0, {num_train_timesteps})")
    model.eval()
    B, M = latents.shape[:2]
    z = latents.flatten(0, 1)
    cond = text.expand(B * M, -1, -1)

    def run(sample, t):
        timesteps = torch.full((B * M,), int(t), dtype=torch.long, device=z.device)
        return model(sample, timesteps, cond, views=M, homography=homography, neighbors=neighbors)

    t = 0
    if inversion_steps:
        ratio = max(t_end // inversion_steps, 1)
        scheduler = ddim_inverse_scheduler(num_train_timesteps)
        scheduler.set_timesteps(num_train_timesteps // ratio)
        # Leading spacing: timesteps 0, r, 2r, ...; step(ε, t_k, z) moves z from t_k − r to t_k.
        for t in scheduler.timesteps[1 : inversion_steps + 1].tolist():
            noise, _ = run(z, t)
            z = scheduler.step(noise, t, z).prev_sample
    _, features = run(z, t)
    return features, int(t)
