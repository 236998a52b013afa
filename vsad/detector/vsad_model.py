"""ViewSense-AD as a detector: homographies → latent encoder → VALDM training (UNet + MVAM + FRM)
→ DDIM-inversion features of chosen decoder levels → per-view memory banks → eq. 12 maps."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vsad.detector.base import BankDetector, register_detector, stage
from vsad.detector.config import VSADConfig
from vsad.model.backbone import build_tiny_unet, load_stable_diffusion
from vsad.model.inference import extract_features
from vsad.model.latent import PixelUnshuffleEncoder, VAEEncoder
from vsad.model.pretrained import PRETRAINED_ENCODERS, PretrainedEncoder
from vsad.model.training import VALDMTrainer
from vsad.model.view_aligned_unet import ViewAlignedUNet
from vsad.model.view_fusion import fuse_views

log = logging.getLogger(__name__)


def image_to_grid(homography: np.ndarray, view_size, grid_size) -> torch.Tensor:
    """Homographies between views in view pixels -> the same maps on a coarser grid.

    A grid cell x_g covers view pixels centred at x = s·x_g + (s − 1)/2 with s = view/grid
    (per axis, since views may be resized anisotropically to the square model input)."""
    from vsad.geometry import scale_homography

    stride = (view_size[0] / grid_size[0], view_size[1] / grid_size[1])
    return torch.as_tensor(scale_homography(np.asarray(homography, np.float64), stride))


@register_detector
class VSAD(BankDetector):
    """ViewSense-AD (paper §3): `VSAD(config).fit(train_samples)`, then `.predict(views)`.

    fit(train, homographies=None): homographies may be a vsad.geometry.ViewHomographies, a
    dense (M, M, 3, 3) array (H[i, j] maps view i pixels to view j pixels), or a path to a file
    `vsad.geometry.load_homographies` reads; None estimates them from the training samples.
    """

    config_class = VSADConfig
    kind = "VSAD"
    #: The UNet trainer (vsad.distributed.training.DistributedVALDMTrainer under torchrun).
    trainer_class = VALDMTrainer

    def __init__(self, config: VSADConfig | dict | None = None) -> None:
        super().__init__(config)
        self.encoder: nn.Module | None = None
        self.model: ViewAlignedUNet | None = None
        self.null_text: torch.Tensor | None = None
        self.homographies = None  # vsad.geometry.ViewHomographies, view pixel frame
        self.history: list[dict] = []

    # -- construction ---------------------------------------------------------------------
    def _build(self) -> None:
        """Encoder and view-aligned UNet from the config (weights random or from SD2)."""
        c = self.config
        torch.manual_seed(c.seed)
        vae = None
        if c.stable_diffusion:
            unet, vae = load_stable_diffusion(c.stable_diffusion)
            if c.unet:
                raise ValueError(
                    "unet: overrides of the tiny UNet config do not apply to a Stable Diffusion "
                    "UNet; leave `unet` empty"
                )
        if c.encoder in PRETRAINED_ENCODERS:
            self.encoder = PretrainedEncoder(c.encoder, c.encoder_stages, c.encoder_channels)
        elif c.encoder == "vae":
            self.encoder = VAEEncoder(vae)
        else:
            self.encoder = PixelUnshuffleEncoder(c.unshuffle_factor)
        self.encoder.to(self.device)
        if not self.uses_unet:
            self.model = None  # the encoder's latent level alone: nothing to train or invert
            return
        channels = self.encoder.latent_channels
        if not c.stable_diffusion:
            unet = build_tiny_unet(**{"in_channels": channels, "out_channels": channels, **c.unet})
        elif unet.config.in_channels != channels:
            raise ValueError(
                f"encoder: {c.encoder!r} gives {channels}-channel latents but the Stable "
                f"Diffusion UNet expects {unet.config.in_channels}; use encoder='vae'"
            )
        self.model = ViewAlignedUNet(
            unet,
            window=c.window,
            head_dim=c.head_dim,
            use_mvam=c.use_mvam,
            use_frm=c.use_frm,
            placement=c.placement,
            autocast=c.autocast,
        ).to(self.device)
        self._levels()  # validates feature_levels against the UNet

    @property
    def uses_unet(self) -> bool:
        """False when only the encoder's latent is scored (feature_levels=[], latent_level):
        then fit trains nothing, estimates no homographies and predict runs no UNet."""
        return bool(self.config.feature_levels)

    def _levels(self) -> list[int]:
        if self.model is None:
            return []
        n = self.model.num_levels
        levels = []
        for level in self.config.feature_levels:
            if not isinstance(level, int) or not -n <= level < n:
                raise ValueError(
                    f"feature_levels: got {self.config.feature_levels}, expected indices into "
                    f"the {n} feature levels (one per decoder "
                    f"{'ResBlock' if self.config.placement == 'resnet' else 'block'}; "
                    f"0 = coarsest, -1 = finest)"
                )
            levels.append(level % n)
        return levels

    def _neighbors(self) -> np.ndarray:
        from vsad.geometry import view_graph

        c = self.config
        if c.neighbors is not None:
            return view_graph("explicit", self.num_views, pairs=c.neighbors)
        return view_graph(c.view_graph, self.num_views, neighbors_per_view=c.neighbors_per_view)

    def _raw_samples_needed(self) -> int:
        return self.config.homography_samples if self.uses_unet else 0

    # -- homographies ---------------------------------------------------------------------
    def _resolve_homographies(self, given, raw_views, progress: bool):
        from vsad import geometry

        neighbors = self._neighbors()
        if given is None:
            return geometry.estimate_view_homographies(
                raw_views,
                neighbors,
                color="rgb",
                progress=progress,
                fallback=self.config.homography_fallback,
            )
        if isinstance(given, geometry.ViewHomographies):
            return given
        if isinstance(given, (str, Path)):
            return geometry.load_homographies(given, self.num_views)
        dense = np.asarray(given, dtype=np.float64)
        if dense.shape != (self.num_views, self.num_views, 3, 3):
            raise ValueError(
                f"homographies: got an array of shape {dense.shape}, expected "
                f"({self.num_views}, {self.num_views}, 3, 3) (H[i, j] maps view i to view j)"
            )
        return geometry.from_full_matrix(dense, neighbors, image_size=self.view_size)

    def _latent_homography(
        self, latent_size, device: torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(H on the latent grid, neighbours), on `device` (default: the detector's)."""
        device = self.device if device is None else device
        H = image_to_grid(self.homographies.H, self.view_size, latent_size)
        neighbors = torch.as_tensor(np.asarray(self.homographies.neighbors), dtype=torch.int64)
        return H.to(device), neighbors.to(device)

    # -- fitting --------------------------------------------------------------------------
    def _fit_model(self, images, raw_views, *, progress, work_dir, homographies=None):
        if not self.uses_unet:
            self._build()
            self.encoder.fit_scaling(images.flatten(0, 1))
            return
        self.homographies = self._resolve_homographies(homographies, raw_views, progress)
        if self.homographies.H.shape[0] != self.num_views:
            raise ValueError(
                f"homographies: cover {self.homographies.H.shape[0]} views, expected "
                f"{self.num_views}"
            )
        self._build()
        S, M = images.shape[:2]
        self.encoder.fit_scaling(images.flatten(0, 1))
        latents = torch.cat([self.encoder.encode(chunk.flatten(0, 1)) for chunk in images.split(8)])
        latents = latents.reshape(S, M, *latents.shape[1:])
        hom, neighbors = self._latent_homography(latents.shape[-2:])
        trainer = self.trainer_class(
            self.model, self.config.train, homography=hom, neighbors=neighbors
        )
        checkpoints = Path(work_dir) if work_dir is not None else None
        self.history = trainer.fit(latents, checkpoints, progress=progress)
        self.null_text = trainer.null_text.detach().clone()
        self.model.eval()

    def _extract(self, images: torch.Tensor, timings: dict | None = None) -> list[torch.Tensor]:
        B, M = images.shape[:2]
        with stage(timings, "encode"), torch.no_grad():
            latents, latent_level = self._encode(images.flatten(0, 1))
        latents = latents.reshape(B, M, *latents.shape[1:])
        if self.model is None:
            return [latent_level.reshape(B, M, *latent_level.shape[1:])]
        hom, neighbors = self._latent_homography(latents.shape[-2:])
        hooks = self._time_mvam(timings)
        try:
            with stage(timings, "unet"):
                features, _ = extract_features(
                    self.model,
                    latents,
                    self.null_text,
                    homography=hom,
                    neighbors=neighbors,
                    inversion_steps=self.config.inversion_steps,
                    t_end=self.config.t_end,
                    num_train_timesteps=self.config.train.num_train_timesteps,
                )
        finally:
            for hook in hooks:
                hook.remove()
        chosen = [features[level] for level in self._levels()]
        with stage(timings, "fusion"):
            fusion_neighbors = self._fusion_neighbors(neighbors.device)
            fused = [
                fuse_views(
                    feat,
                    hom,
                    fusion_neighbors,
                    latent_height=latents.shape[-2],
                    weight=self.config.view_fusion,
                )
                for feat in chosen
            ]
        if not self.config.latent_level:
            return fused
        # The latent level is not fused: averaging raw pixels across views did not help
        # PatchKNN (BENCHMARKS.md, "Cross-view fusion").
        return fused + [latent_level.reshape(B, M, *latent_level.shape[1:])]

    def _encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents for the UNet, features of the latent level). They differ only with a PCA
        reduction of pretrained features (encoder_channels): the UNet gets the reduced
        channels, the bank all standardised ones — the nearest-neighbour search loses nothing
        to the reduction (DEVELOPERS.md, "Decisions")."""
        if isinstance(self.encoder, PretrainedEncoder):
            full = self.encoder.standardized(images)
            return self.encoder.reduce(full), full
        latents = self.encoder.encode(images)
        return latents, latents

    def _fusion_neighbors(self, device: torch.device) -> torch.Tensor:
        """The view graph for cross-view fusion, on `device`: pairs whose homography fell back
        to the identity (homography_fallback="identity") are left out — their features are
        not aligned, and averaging them would blend another part of the object into the
        view. Made on the host from the (numpy) graph, then moved: one transfer."""
        rows = np.asarray(self.homographies.neighbors).tolist()
        failed = {(r.i, r.j) for r in self.homographies.failed_pairs()}
        kept = [[-1 if (i, j) in failed else j for j in row] for i, row in enumerate(rows)]
        return torch.as_tensor(kept, dtype=torch.int64).to(device)

    def _time_mvam(self, timings: dict | None) -> list:
        """Hooks that add the time spent inside MVAM modules to timings["mvam"] (this time is
        also part of timings["unet"])."""
        if timings is None or not self.config.use_mvam:
            return []
        import time

        starts: list[float] = []

        def before(module, args):
            starts.append(time.perf_counter())

        def after(module, args, output):
            timings["mvam"] = timings.get("mvam", 0.0) + time.perf_counter() - starts.pop()

        hooks = []
        for module in self.model.mvam:
            hooks.append(module.register_forward_pre_hook(before))
            hooks.append(module.register_forward_hook(after))
        return hooks

    def _move_to(self, device: torch.device) -> None:
        if self.encoder is not None:
            self.encoder.to(device)
        if self.model is not None:
            self.model.to(device)
        if self.null_text is not None:
            self.null_text = self.null_text.to(device)

    # -- persistence ----------------------------------------------------------------------
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        state = {f"encoder.{k}": v for k, v in self._encoder_state().items()}
        if self.model is None:
            return state
        state.update({f"model.{k}": v for k, v in self.model.state_dict().items()})
        state["null_text"] = self.null_text
        state["homography.H"] = torch.as_tensor(np.asarray(self.homographies.H, np.float64))
        state["homography.neighbors"] = torch.as_tensor(
            np.asarray(self.homographies.neighbors), dtype=torch.int64
        )
        return state

    def _encoder_state(self) -> dict[str, torch.Tensor]:
        """The encoder's state without its frozen pretrained part (a Stable Diffusion VAE, an
        ImageNet backbone): those are read again from their files on load."""
        return {
            k: v
            for k, v in self.encoder.state_dict().items()
            if not k.startswith(("vae.", "backbone."))
        }

    def _extra_meta(self) -> dict:
        report = getattr(self.homographies, "report", None)
        return {"homography_report": None if report is None else [r.to_dict() for r in report]}

    def _load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        from vsad.detector.saved_detector import check_vsad_weights, homographies_from

        self._build()
        weights = getattr(self, "_weights_file", "weights.safetensors")
        check_vsad_weights(self, tensors, weights)
        encoder_state = {k[8:]: v for k, v in tensors.items() if k.startswith("encoder.")}
        expected = set(self._encoder_state())
        if set(encoder_state) != expected:
            raise ValueError(
                f"weights: the encoder's saved tensors {sorted(encoder_state)} do not match "
                f"{sorted(expected)}, those of encoder={self.config.encoder!r} with this config"
            )
        # strict=False: the frozen pretrained parts were not saved; they were rebuilt from
        # their own files by _build.
        self.encoder.load_state_dict(encoder_state, strict=False)
        if self.model is None:
            return
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        self.null_text = tensors["null_text"].to(self.device)
        # The pair report decides which pairs cross-view fusion leaves out (fallbacks), so it
        # must come back with the matrices for the scores to be the saved detector's.
        report = meta.get("homography_report") or []  # a list (saved_detector.check_meta)
        self.homographies = homographies_from(tensors, report, self.view_size, weights)
        self.model.eval()
