"""VALDM training: DDIM noise schedule, L = L_denoise + λ·L_refine, AdamW, gradient
accumulation, atomic checkpoints and resume (paper §3.4–3.5).

Checkpoints are one safetensors file: every tensor (model, null text, AdamW moments and step
counts, the generator state as uint8) plus a JSON header entry for the rest (step, config,
optimizer hyper-parameters). Nothing is unpickled on load, so a checkpoint from an untrusted run
folder cannot execute code; the file is renamed into place, so a kill mid-write leaves the
previous checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from vsad.model.losses import REFINE_MODES, refine_loss
from vsad.model.view_aligned_unet import ViewAlignedUNet
from vsad.saved_files import (
    CHECKPOINT_REMEDY,
    check_field,
    check_module_state,
    check_specs,
    dtype_code,
    fail,
    is_int,
    read_header,
)
from vsad.validation import between, check_fields

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

    #: Ranges that keep a run feasible (a larger value is a typo); why each upper bound:
    BOUNDS: ClassVar[dict] = {
        # At ~0.25 s per step on a CPU, 10⁶ steps are three days.
        "steps": between(1, 1_000_000),
        # Samples (of M views) per micro-batch / micro-batches per step: memory and time.
        "batch_size": between(1, 1024),
        "grad_accumulation": between(1, 1024),
        # AdamW moves each parameter by ~lr per step: beyond 1 training diverges at once.
        "lr": between(0, 1, lo_open=True),
        # AdamW scales the weights by (1 − lr·wd) per step.
        "weight_decay": between(0, 1),
        # λ of L_refine against L_noise (0.1 by default).
        "refine_weight": between(0, 1000),
        # The noise schedule's length (Stable Diffusion: 1000).
        "num_train_timesteps": between(2, 10_000),
        "checkpoint_every": between(1, 1_000_000),
        # Seeds of torch and NumPy generators are portable in 32 bits.
        "seed": between(0, 2**32 - 1),
    }

    def __post_init__(self) -> None:
        # Keys are named "train.<key>" by the detector config that holds this one.
        check_fields(self, self.BOUNDS)
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

    CHECKPOINT = "checkpoint.safetensors"
    #: What vsad < 0.2 wrote (a pickle); refused, never loaded.
    LEGACY_CHECKPOINT = "checkpoint.pt"

    def __init__(
        self,
        model: ViewAlignedUNet,
        config: TrainConfig,
        *,
        homography: torch.Tensor,
        neighbors: torch.Tensor,
    ) -> None:
        self.model, self.config = model, config
        # Everything lives on the model's device: the geometry, the null text, the noise.
        self.device = next(model.parameters()).device
        self.homography = homography.to(self.device)
        self.neighbors = neighbors.to(self.device)
        # The view pairs, read once (a device tensor would be synchronised on every step).
        self._has_pairs = bool((neighbors >= 0).any())
        self.scheduler = ddim_scheduler(config.num_train_timesteps)
        cross_dim = model.unet.config.cross_attention_dim
        # The learned null text embedding the UNet is conditioned on (no text encoder). Drawn
        # on the CPU, so that it starts the same on every device.
        init = torch.randn(1, 1, cross_dim, generator=self._seeded(1)) * 0.02
        self.null_text = nn.Parameter(init.to(self.device))
        params = [*model.parameters(), self.null_text]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        # The training draws (samples, timesteps, noise) come from a generator on the device.
        self.generator = self._seeded(0, self.device)
        # fp16 autocast needs loss scaling (its gradients underflow); bf16 and float32 do not.
        fp16 = getattr(model, "autocast", "none") == "fp16"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=fp16) if fp16 else None
        self.step = 0

    def _seeded(self, offset: int, device: torch.device | None = None) -> torch.Generator:
        return make_generator(device).manual_seed(self.config.seed * 1000 + offset)

    def losses(
        self, latents: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(total, denoise, refine) for clean latents (B, M, C, h, w)."""
        noise, t = self.draw_noise(latents, generator)
        return self.loss_terms(latents, noise, t)

    def draw_noise(
        self, latents: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The random draws of one micro-batch (B, M, C, h, w): noise shaped like it and the
        timesteps (B·M,), sample-major (vsad.distributed.training splits them by sample)."""
        B, M = latents.shape[:2]
        device = latents.device
        noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype, device=device)
        T = self.config.num_train_timesteps
        if self.config.view_timesteps == "shared":  # the views are noised as one scene
            t = torch.randint(0, T, (B,), generator=generator, device=device)
            t = t.repeat_interleave(M)
        else:
            t = torch.randint(0, T, (B * M,), generator=generator, device=device)
        return noise, t

    def loss_terms(
        self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(total, denoise, refine) for clean latents (B, M, C, h, w) with given draws."""
        B, M = latents.shape[:2]
        noisy = self.scheduler.add_noise(latents.flatten(0, 1), noise.flatten(0, 1), t)
        text = self.null_text.expand(B * M, -1, -1)
        pred, features = self.model(
            noisy, t, text, views=M, homography=self.homography, neighbors=self.neighbors
        )
        denoise = F.mse_loss(pred, noise.flatten(0, 1))  # eq. 8
        if self._has_pairs:
            refine = refine_loss(
                features,
                self.homography,
                self.neighbors,
                latents.shape[-2],
                mode=self.config.refine_mode,
            )  # eq. 11
        else:  # every view pair was left out of the graph: nothing to align across views
            refine = denoise.new_zeros(())
        return denoise + self.config.refine_weight * refine, denoise, refine

    def train_step(self, latents: torch.Tensor) -> dict[str, float]:
        """One optimiser step over grad_accumulation micro-batches drawn from `latents`."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        cfg = self.config
        logs = {"loss": 0.0, "denoise": 0.0, "refine": 0.0}
        latents = latents.to(self.device)
        for _ in range(cfg.grad_accumulation):
            idx = torch.randint(
                0, latents.shape[0], (cfg.batch_size,), generator=self.generator, device=self.device
            )
            total, denoise, refine = self.losses(latents[idx], self.generator)
            loss = total / cfg.grad_accumulation
            (loss if self.scaler is None else self.scaler.scale(loss)).backward()
            for key, value in zip(logs, (total, denoise, refine), strict=True):
                logs[key] += value.detach().item() / cfg.grad_accumulation
        if self.scaler is None:
            self.optimizer.step()
        else:  # skips the step when the scaled gradients overflowed, and adapts the scale
            self.scaler.step(self.optimizer)
            self.scaler.update()
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
        elif out is not None and (out / self.LEGACY_CHECKPOINT).is_file():
            raise ValueError(
                f"out_dir: '{out}' holds a pickle checkpoint ({self.LEGACY_CHECKPOINT}) from an "
                f"older vsad, expected {self.CHECKPOINT}; it is not loaded because unpickling "
                "can run arbitrary code. Delete it to train from scratch."
            )
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

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor of the training state, by name (model.*, null_text, optimizer.*,
        generator)."""
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors["null_text"] = self.null_text.detach()
        for index, values in self.optimizer.state_dict()["state"].items():
            for key, value in values.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optimizer.{index}.{key}"] = value
        tensors["generator"] = self.generator.get_state()
        # safetensors stores each tensor once: shared storage (tied weights) is copied apart.
        seen, out = set(), {}
        for name, value in tensors.items():
            value = value.detach().cpu().contiguous()  # written from the CPU
            if value.numel() and value.data_ptr() in seen:
                value = value.clone()
            seen.add(value.data_ptr())
            out[name] = value
        return out

    def checkpoint_metadata(self) -> dict:
        """The non-tensor part of the training state (JSON)."""
        optimizer = self.optimizer.state_dict()
        scalars = {
            str(index): {k: v for k, v in values.items() if not isinstance(v, torch.Tensor)}
            for index, values in optimizer["state"].items()
        }
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            # A generator's state only restores a generator of the same device type.
            "generator_device": self.device.type,
            "grad_scaler": None if self.scaler is None else self.scaler.state_dict(),
            "config": asdict(self.config),
            "optimizer": {
                "param_groups": optimizer["param_groups"],
                "state_indices": [int(i) for i in optimizer["state"]],
                "state_scalars": scalars,
            },
        }

    def save_checkpoint(self, path: str | Path) -> None:
        """Written to a temporary file in the same folder, then renamed: a crash mid-write
        leaves the previous checkpoint intact."""
        from safetensors.torch import save_file

        from vsad._atomic import atomic_path

        metadata = {METADATA_KEY: json.dumps(self.checkpoint_metadata())}
        with atomic_path(path) as tmp:
            save_file(self.checkpoint_tensors(), tmp, metadata=metadata)

    def load_checkpoint(self, path: str | Path) -> None:
        """Restores what save_checkpoint wrote; training then continues bit for bit as if it
        had never stopped. Anything but a vsad safetensors checkpoint is refused unread."""
        meta, tensors = _read_checkpoint(Path(path))
        saved_device = meta.get("generator_device", "cpu")  # older checkpoints: CPU training
        if saved_device != self.device.type:
            raise ValueError(
                f"checkpoint: '{path}' was written training on {saved_device}, expected "
                f"{self.device.type} (this run's device); resume on {saved_device}, or delete "
                "the checkpoint to train from scratch"
            )
        self._check_checkpoint(Path(path), meta, tensors)
        model = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
        self.model.load_state_dict(model)
        with torch.no_grad():
            self.null_text.copy_(tensors["null_text"])
        opt = meta["optimizer"]
        state = {}
        for index in opt["state_indices"]:
            prefix = f"optimizer.{index}."
            entry = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            entry.update(opt["state_scalars"].get(str(index), {}))
            state[index] = entry
        current = self.optimizer.state_dict()["param_groups"]
        if len(current) != len(opt["param_groups"]):
            raise ValueError(
                f"checkpoint '{path}': {len(opt['param_groups'])} optimizer parameter groups, "
                f"expected {len(current)}"
            )
        # JSON turned tuples (AdamW's betas) into lists; give them back their type.
        groups = [
            {k: tuple(v) if isinstance(now.get(k), tuple) else v for k, v in saved.items()}
            for saved, now in zip(opt["param_groups"], current, strict=True)
        ]
        try:
            self.optimizer.load_state_dict({"state": state, "param_groups": groups})
            self.generator.set_state(tensors["generator"])
        except (RuntimeError, ValueError, TypeError, KeyError) as err:
            raise fail(path, f"its optimizer or generator state does not restore ({err})",
                       CHECKPOINT_REMEDY) from None  # fmt: skip
        if self.scaler is not None and meta.get("grad_scaler"):
            self.scaler.load_state_dict(meta["grad_scaler"])
        self.step = int(meta["step"])

    def _check_checkpoint(self, path: Path, meta: dict, tensors: dict) -> None:
        """Every tensor and JSON field load_checkpoint reads, against this trainer's model and
        optimizer (names, shapes, dtypes, types): a damaged or foreign checkpoint is refused
        with a message naming it, not a load_state_dict traceback."""
        check_module_state(self.model.state_dict(), tensors, path, prefix="model.",
                           what="UNet", remedy=CHECKPOINT_REMEDY)  # fmt: skip
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        expected = {"null_text": (dtype_code(self.null_text.dtype), tuple(self.null_text.shape)),
                    "generator": ("U8", (None,))}  # fmt: skip
        check_field(meta, "step", lambda v: is_int(v) and v >= 0, "an integer >= 0", path,
                    remedy=CHECKPOINT_REMEDY)  # fmt: skip
        opt = meta.get("optimizer")
        ok = isinstance(opt, dict) and isinstance(opt.get("param_groups"), list)
        ok = ok and all(isinstance(g, dict) for g in opt["param_groups"])
        ok = ok and isinstance(opt.get("state_scalars"), dict)
        ok = ok and all(isinstance(v, dict) for v in opt["state_scalars"].values())
        indices = opt.get("state_indices") if ok else None
        if (
            not ok
            or not isinstance(indices, list)
            or not all(is_int(i) and 0 <= i < len(params) for i in indices)
        ):
            raise fail(path, f"its optimizer state {str(opt)[:120]!r} is not an object with "
                       f"param_groups, state_scalars and state_indices in 0..{len(params) - 1}",
                       CHECKPOINT_REMEDY)  # fmt: skip
        for index in indices:
            shape = tuple(params[index].shape)
            for key in ("exp_avg", "exp_avg_sq"):
                expected[f"optimizer.{index}.{key}"] = ("F32", shape)
        check_specs(tensors, expected, path, remedy=CHECKPOINT_REMEDY,
                    why=" (this run's model and optimizer)")  # fmt: skip


CHECKPOINT_FORMAT = 1
METADATA_KEY = "vsad_checkpoint"


def make_generator(device: torch.device | None = None) -> torch.Generator:
    """A torch.Generator on `device` (the CPU by default); the random draws of training use
    one on the model's device. (The device tests replace it: a stand-in device has none.)"""
    return torch.Generator() if device is None else torch.Generator(device=device)


def _read_checkpoint(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors) of a vsad checkpoint, or a ValueError that says what the file is."""
    from safetensors import SafetensorError, safe_open

    refused = (
        f"checkpoint: '{path}' is not a vsad safetensors checkpoint{{why}}; expected a file "
        "written by VALDMTrainer.save_checkpoint (pickle checkpoints, e.g. checkpoint.pt of older "
        "versions, are refused: unpickling can run arbitrary code)"
    )
    from vsad.saved_files import SavedFileError

    try:  # empty, truncated, text or pickle: refused unread, named
        read_header(path, remedy=CHECKPOINT_REMEDY)
    except SavedFileError as err:
        raise SavedFileError(
            f"checkpoint: {err} (not a vsad safetensors checkpoint; pickle checkpoints are "
            "refused: unpickling can run arbitrary code)"
        ) from None
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            if METADATA_KEY not in header:
                raise ValueError(refused.format(why=f" (no '{METADATA_KEY}' header entry)"))
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except SafetensorError as exc:
        raise ValueError(refused.format(why=f" ({exc})")) from None
    try:
        meta = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise ValueError(refused.format(why=f" (its header entry is not JSON: {exc})")) from None
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else meta
        raise ValueError(f"checkpoint: '{path}' has format {got!r}, expected {CHECKPOINT_FORMAT}")
    missing = [k for k in ("null_text", "generator") if k not in tensors]
    if missing:
        raise ValueError(refused.format(why=f" (tensors {missing} are missing)"))
    return meta, tensors
