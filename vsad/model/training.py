"""VALDM training: DDIM noise schedule, L = L_denoise + λ·L_refine, AdamW, gradient
accumulation, atomic checkpoints and resume (paper §3.4–3.5)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vsad.model.losses import REFINE_MODES, refine_loss
from vsad.model.view_aligned_unet import ViewAlignedUNet

VIEW_TIMESTEPS = ("shared", "independent")


@dataclass
class TrainConfig:
    steps: int = 500
    batch_size: int = 2  # samples (of M views each) per micro-batch
    grad_accumulation: int = 1
    lr: float = 1e-4  # paper: AdamW, lr 1e-4, weight decay 1e-2
    weight_decay: float = 1e-2
    refine_weight: float = 0.1  # λ
    refine_mode: str = "warped"
    num_train_timesteps: int = 1000
    checkpoint_every: int = 100
    seed: int = 0
    # "shared": one noise level per sample for all its views (the paper's setting, one scene);
    # "independent": one per view, so a noisy view can learn from a cleaner neighbour via MVAM
    # (measured: MVAM then helps on every seed, but the model is less accurate overall; BENCHMARKS).
    view_timesteps: str = "shared"

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accumulation", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: got {getattr(self, name)}, expected >= 1")
        if self.view_timesteps not in VIEW_TIMESTEPS:
            raise ValueError(
                f"view_timesteps: got {self.view_timesteps!r}, expected one of {VIEW_TIMESTEPS}"
            )
        if self.refine_mode not in REFINE_MODES:
            raise ValueError(
                f"refine_mode: got {self.refine_mode!r}, expected one of {REFINE_MODES}"
            )


#: Stable Diffusion's noise schedule, shared by training and DDIM inversion.
NOISE_SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def ddim_scheduler(num_train_timesteps: int = 1000):
    """The training noise schedule in a diffusers DDIMScheduler."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=num_train_timesteps,
        clip_sample=False,
        set_alpha_to_one=False,
        **NOISE_SCHEDULE,
    )


class VALDMTrainer:
    """Trains a ViewAlignedUNet on clean multi-view latents (S, M, C, h, w)."""

    CHECKPOINT = "checkpoint.pt"

    def __init__(
        self,
        model: ViewAlignedUNet,
        config: TrainConfig,
        *,
        homography: torch.Tensor,
        neighbors: torch.Tensor,
    ) -> None:
        self.model, self.config = model, config
        self.homography, self.neighbors = homography, neighbors
        self.scheduler = ddim_scheduler(config.num_train_timesteps)
        cross_dim = model.unet.config.cross_attention_dim
        # The learned null text embedding the UNet is conditioned on (no text encoder).
        self.null_text = nn.Parameter(
            torch.randn(1, 1, cross_dim, generator=self._seeded(1)) * 0.02
        )
        params = [*model.parameters(), self.null_text]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.generator = self._seeded(0)
        self.step = 0

    def _seeded(self, offset: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.config.seed * 1000 + offset)

    def losses(
        self, latents: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(total, denoise, refine) for clean latents (B, M, C, h, w)."""
        B, M = latents.shape[:2]
        noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype)
        T = self.config.num_train_timesteps
        if self.config.view_timesteps == "shared":  # the views are noised as one scene
            t = torch.randint(0, T, (B,), generator=generator).repeat_interleave(M)
        else:
            t = torch.randint(0, T, (B * M,), generator=generator)
        noisy = self.scheduler.add_noise(latents.flatten(0, 1), noise.flatten(0, 1), t)
        text = self.null_text.expand(B * M, -1, -1)
        pred, features = self.model(
            noisy, t, text, views=M, homography=self.homography, neighbors=self.neighbors
        )
        denoise = F.mse_loss(pred, noise.flatten(0, 1))  # eq. 8
        refine = refine_loss(
            features,
            self.homography,
            self.neighbors,
            latents.shape[-2],
            mode=self.config.refine_mode,
        )  # eq. 11
        return denoise + self.config.refine_weight * refine, denoise, refine

    def train_step(self, latents: torch.Tensor) -> dict[str, float]:
        """One optimiser step over grad_accumulation micro-batches drawn from `latents`."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        cfg = self.config
        logs = {"loss": 0.0, "denoise": 0.0, "refine": 0.0}
        for _ in range(cfg.grad_accumulation):
            idx = torch.randint(0, latents.shape[0], (cfg.batch_size,), generator=self.generator)
            total, denoise, refine = self.losses(latents[idx], self.generator)
            (total / cfg.grad_accumulation).backward()
            for key, value in zip(logs, (total, denoise, refine), strict=True):
                logs[key] += value.detach().item() / cfg.grad_accumulation
        self.optimizer.step()
        self.step += 1
        return logs

    def fit(self, latents: torch.Tensor, out_dir: str | Path | None = None, *, progress=True):
        """Trains to config.steps, resuming from out_dir's checkpoint if there is one, and
        writing a checkpoint every checkpoint_every steps and at the end."""
        from tqdm.auto import tqdm

        if latents.dim() != 5 or latents.shape[0] < 1:
            raise ValueError(
                f"latents: got shape {tuple(latents.shape)}, expected (S>=1, M, C, h, w)"
            )
        out = Path(out_dir) if out_dir is not None else None
        if out is not None and (out / self.CHECKPOINT).is_file():
            self.load_checkpoint(out / self.CHECKPOINT)
        history = []
        bar = tqdm(total=self.config.steps, initial=self.step, disable=not progress, desc="train")
        while self.step < self.config.steps:
            logs = self.train_step(latents)
            history.append(logs)
            bar.update(1)
            bar.set_postfix(loss=f"{logs['loss']:.4f}")
            if out is not None and (
                self.step % self.config.checkpoint_every == 0 or self.step == self.config.steps
            ):
                self.save_checkpoint(out / self.CHECKPOINT)
        bar.close()
        return history

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "null_text": self.null_text.detach().clone(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "step": self.step,
            "config": asdict(self.config),
        }

    def save_checkpoint(self, path: str | Path) -> None:
        """Written to a temporary file in the same folder, then renamed: a crash mid-write
        leaves the previous checkpoint intact."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)

    def load_checkpoint(self, path: str | Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.model.load_state_dict(state["model"])
        with torch.no_grad():
            self.null_text.copy_(state["null_text"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.step = int(state["step"])
