"""VALDM training on several processes (torchrun / DDP semantics, gloo on CPU, NCCL on GPU).

Every rank holds the whole model and the same training latents, and makes the same random
draws as a single process (the generator is seeded identically): the micro-batch's sample
indices, noise and timesteps. Rank r then computes the loss of its block of the micro-batch
(`shard_range(batch_size, r, world)` — deterministic sharding), weighted by its share of the
samples, and the gradients are all-reduced (one SUM over a flat buffer, as DDP's buckets do)
before the identical AdamW step on every rank. The gradient is the single-process gradient up to
float summation order, so training equals single-process training within rounding (measured on
the tiny UNet: parameters within 1e-5 after a few steps; tests/test_distributed.py).

Checkpoints are the single-process format, written by rank 0 only (atomically, `vsad._atomic`),
followed by a barrier; every rank resumes from the same file, so a run may resume with another
world size (or in one process).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from vsad.distributed.launch import rank_and_world, shard_range
from vsad.model.training import VALDMTrainer


class DistributedVALDMTrainer(VALDMTrainer):
    """`VALDMTrainer` whose micro-batches are split over the ranks of `group` (the default
    group unless given); without a process group it is the single-process trainer."""

    def __init__(self, *args, group=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.group = group
        self.rank, self.world = rank_and_world(group)
        if self.config.batch_size < self.world:
            raise ValueError(
                f"train.batch_size: got {self.config.batch_size}, expected >= the world size "
                f"{self.world} (each rank trains on its block of every micro-batch)"
            )
        if self.scaler is not None:
            raise ValueError(
                "autocast: 'fp16' needs a gradient scaler, which distributed training does not "
                "synchronise; expected autocast 'none' or 'bf16'"
            )
        if self.world > 1:  # identical starting weights, whatever the ranks' seeds did
            for tensor in self._params():
                dist.broadcast(tensor.data, src=0, group=group)

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def train_step(self, latents: torch.Tensor) -> dict[str, float]:
        if self.world == 1:
            return super().train_step(latents)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        cfg = self.config
        B = cfg.batch_size
        lo, hi = shard_range(B, self.rank, self.world)
        share = (hi - lo) / B
        logs = {"loss": 0.0, "denoise": 0.0, "refine": 0.0}
        latents = latents.to(self.device)
        for _ in range(cfg.grad_accumulation):
            # The single-process draws, on every rank; then this rank's samples of them.
            idx = torch.randint(
                0, latents.shape[0], (B,), generator=self.generator, device=self.device
            )
            batch = latents[idx]
            noise, t = self.draw_noise(batch, self.generator)
            t = t.reshape(B, -1)[lo:hi].reshape(-1)
            total, denoise, refine = self.loss_terms(batch[lo:hi], noise[lo:hi], t)
            (total * (share / cfg.grad_accumulation)).backward()
            values = torch.stack([total.detach(), denoise.detach(), refine.detach()]) * share
            dist.all_reduce(values, group=self.group)
            for key, value in zip(logs, values.tolist(), strict=True):
                logs[key] += value / cfg.grad_accumulation
        self._all_reduce_gradients()
        self.optimizer.step()
        self.step += 1
        return logs

    def _all_reduce_gradients(self) -> None:
        """SUM of the ranks' (share-weighted) gradients = the micro-batch gradient."""
        params = [p for p in self._params() if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, group=self.group)
        offset = 0
        for p, g in zip(params, grads, strict=True):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def fit(self, latents: torch.Tensor, out_dir: str | Path | None = None, *, progress=True):
        return super().fit(latents, out_dir, progress=progress and self.rank == 0)

    def save_checkpoint(self, path: str | Path) -> None:
        """Rank 0 writes (atomically); every rank waits for the file."""
        if self.rank == 0:
            super().save_checkpoint(path)
        if self.world > 1:
            dist.barrier(group=self.group)
