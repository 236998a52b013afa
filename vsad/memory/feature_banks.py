"""The multi-level memory bank of a multi-view detector: one bank per feature level and per view.

Per-view banks beat one pooled bank on a fixed station (DESIGN.md §4): a camera always sees the
same part of the object, so its own normal features are the right comparison. Two search modes:

- "local": a query at cell (y, x) of view v is compared with the bank entries of view v within
  ±radius cells of (y, x) in every training sample (`min_l2_local`). Fast, and on aligned
  stations as good as or better than global search.
- "global": every entry of the view's bank (`MemoryBank`, optional greedy coreset).

Optional "position" normalisation turns each distance into a z-score against the normal
variation at its own view and cell: d' = (d − μ[v, y, x]) / σ[v, y, x], with μ and σ the mean and
standard deviation of leave-one-out distances of the training samples (sample s searched against
the bank without sample s). Some cells vary a lot between normal samples (edges, specular
highlights) and some views differ in scale; raw distances rank those above a real defect in a
quiet cell. Measured on the synthetic category (BENCHMARKS.md, 3 seeds, with 3×3 feature
pooling): VSAD V-AUROC 0.84 → 0.92, P-AUROC 0.96 → 0.99. In global mode the statistics come from
the full banks of the other samples, before any coreset.
"""

from __future__ import annotations

import torch

from vsad.memory.bank import BANK_DTYPES, MemoryBank
from vsad.ops.min_l2 import bank_sq_norms, min_l2, min_l2_local

BANK_MODES = ("local", "global")
NORMALIZATIONS = ("none", "position")
#: Samples whose leave-one-out distances estimate μ and σ: all of them up to this many (the
#: global-mode cost grows with samples × bank size), evenly spaced beyond.
MAX_STAT_SAMPLES = 64


class FeatureBanks:
    """Banks of features (B, M, D, h, w) per level; `search` returns distance maps per level.

    Args:
        mode: "local" or "global" (see the module docstring).
        radius: ρ of the local search, in cells of each level's grid.
        per_view: one bank per view (default) or one bank pooled over the views.
        dtype: storage dtype (float32, float16, bfloat16); search accumulates in float32.
        coreset_ratio: global mode only — keep this fraction of each bank (greedy k-center).
        normalization: "none" (raw distances) or "position" (z-scores per view and cell, see
            the module docstring; needs at least 2 training samples).
    """

    def __init__(
        self,
        mode: str = "local",
        *,
        radius: int = 2,
        per_view: bool = True,
        dtype: torch.dtype = torch.float32,
        coreset_ratio: float | None = None,
        precision: str = "fp32",
        normalization: str = "none",
    ) -> None:
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization: got {normalization!r}, expected one of {NORMALIZATIONS}"
            )
        if mode not in BANK_MODES:
            raise ValueError(f"mode: got {mode!r}, expected one of {BANK_MODES}")
        if not isinstance(radius, int) or radius < 0:
            raise ValueError(f"radius: got {radius!r}, expected an integer >= 0")
        if dtype not in BANK_DTYPES:
            raise ValueError(f"dtype: got {dtype}, expected one of {list(BANK_DTYPES)}")
        if coreset_ratio is not None:
            if not 0 < coreset_ratio <= 1:
                raise ValueError(f"coreset_ratio: got {coreset_ratio}, expected in (0, 1]")
            if mode == "local":
                raise ValueError(
                    "coreset_ratio: a coreset drops positions, so it only applies to "
                    "mode='global'; got mode='local'"
                )
        self.mode, self.radius, self.per_view = mode, radius, per_view
        self.dtype, self.coreset_ratio, self.precision = dtype, coreset_ratio, precision
        self.normalization = normalization
        self._stats: list[tuple[torch.Tensor, torch.Tensor]] = []  # per level: μ, σ (M, h, w)
        self._chunks: dict[tuple[int, int], list[torch.Tensor]] = {}
        self._local: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._global: dict[tuple[int, int], MemoryBank] = {}
        self.shapes: list[tuple[int, int, int]] = []  # (D, h, w) per level
        self.num_views: int | None = None

    # -- building -------------------------------------------------------------------------
    def add(self, features: list[torch.Tensor]) -> None:
        """Adds the features of a batch of normal samples: one (B, M, D, h, w) tensor per
        level."""
        shapes = [tuple(f.shape[2:]) for f in features]
        if self.num_views is None:
            self.shapes, self.num_views = shapes, features[0].shape[1]
        elif shapes != self.shapes or features[0].shape[1] != self.num_views:
            raise ValueError(
                f"features: got levels {shapes} with {features[0].shape[1]} views, expected "
                f"{self.shapes} with {self.num_views} views as in earlier batches"
            )
        for level, feat in enumerate(features):
            cells = feat.detach().permute(0, 1, 3, 4, 2)  # (B, M, h, w, D)
            for view in range(self._bank_views()):
                part = cells[:, view] if self.per_view else cells.flatten(0, 1)
                chunk = part.to(device="cpu", dtype=self.dtype).contiguous()
                self._chunks.setdefault((level, view), []).append(chunk)
        self._local.clear()
        self._global.clear()
        self._stats = []

    def finalize(self, *, seed: int = 0) -> None:
        """Concatenates the added batches, estimates the normalisation statistics and reduces
        global banks to their coreset."""
        if not self._chunks:
            raise ValueError("memory bank is empty: add() the features of normal samples first")
        stacked = {
            key: torch.cat(chunks) if len(chunks) > 1 else chunks[0]
            for key, chunks in self._chunks.items()
        }
        if self.normalization == "position":
            self._stats = [
                self._position_stats(level, stacked) for level in range(len(self.shapes))
            ]
        for key, features in stacked.items():
            self._set(key, features, seed=seed)
        self._chunks = {key: [self._stored(key)] for key in self._chunks}

    def _position_stats(self, level: int, stacked: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """μ and σ (M, h, w) of the leave-one-out distances of the training samples."""
        group = 1 if self.per_view else self.num_views  # bank rows per training sample
        samples = stacked[(level, 0)].shape[0] // group
        if samples < 2:
            raise ValueError(
                f"normalization: 'position' needs at least 2 training samples to estimate the "
                f"normal variation, got {samples}; add samples or use normalization='none'"
            )
        chosen = torch.linspace(0, samples - 1, min(samples, MAX_STAT_SAMPLES)).round().long()
        per_view = []
        for view in range(self.num_views):
            bank = stacked[(level, view if self.per_view else 0)]
            norms = bank_sq_norms(bank.reshape(-1, bank.shape[-1]))  # once, sliced per search
            row_of_view = 0 if self.per_view else view
            loo = [
                self._search_without(bank, norms, s * group + row_of_view, s * group, group)
                for s in chosen.tolist()
            ]
            per_view.append(torch.stack(loo))
        distances = torch.stack(per_view, dim=1)  # (samples, M, h, w)
        mean, std = distances.mean(0), distances.std(0)
        # A floor keeps cells with almost no normal variation from dividing by ~0.
        floor = 0.1 * std.mean() + 1e-6 * mean.abs().mean() + 1e-12
        return mean.contiguous(), std.clamp_min(floor).contiguous()

    def _search_without(
        self, bank: torch.Tensor, norms: torch.Tensor, row: int, start: int, count: int
    ) -> torch.Tensor:
        """(h, w) distances of bank[row] to the bank without rows start..start+count−1 (the
        query's own training sample); norms = bank_sq_norms of the flattened bank."""
        query = bank[row : row + 1].float()
        cells = bank[0, ..., 0].numel()  # flattened rows per bank entry
        best = None
        for lo, hi in ((0, start), (start + count, bank.shape[0])):
            if lo == hi:
                continue
            part, part_norms = bank[lo:hi], norms[lo * cells : hi * cells]
            if self.mode == "local":
                dist, _ = min_l2_local(query, part, radius=self.radius, bank_sq_norms=part_norms)
                dist = dist[0]
            else:
                flat = part.reshape(-1, part.shape[-1])
                dist, _ = min_l2(query.reshape(-1, query.shape[-1]), flat, bank_sq_norms=part_norms)
                dist = dist.reshape(query.shape[1:3])
            best = dist if best is None else torch.minimum(best, dist)
        return best

    def _set(self, key: tuple[int, int], stacked: torch.Tensor, *, seed: int) -> None:
        if self.mode == "local":
            D = stacked.shape[-1]
            self._local[key] = (stacked, bank_sq_norms(stacked.reshape(-1, D)))
            return
        bank = MemoryBank(stacked.shape[-1], dtype=self.dtype)
        bank.add(stacked)
        if self.coreset_ratio is not None and self.coreset_ratio < 1:
            bank.coreset(max(1, round(self.coreset_ratio * len(bank))), seed=seed)
        self._global[key] = bank

    def _stored(self, key: tuple[int, int]) -> torch.Tensor:
        return self._local[key][0] if self.mode == "local" else self._global[key].features

    def _bank_views(self) -> int:
        return self.num_views if self.per_view else 1

    def __len__(self) -> int:
        """Prototypes per (level, view) bank summed over all banks."""
        return sum(self._stored(key).reshape(-1, self._stored(key).shape[-1]).shape[0]
                   for key in self._keys())  # fmt: skip

    def _keys(self) -> list[tuple[int, int]]:
        keys = list(self._local) if self.mode == "local" else list(self._global)
        if not keys:
            raise ValueError("memory bank is empty: add() features and finalize() first")
        return keys

    # -- searching ------------------------------------------------------------------------
    @torch.no_grad()
    def search(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Nearest-prototype distances: one (B, M, h, w) float32 map per level."""
        self._keys()
        if [tuple(f.shape[2:]) for f in features] != self.shapes:
            raise ValueError(
                f"features: got levels {[tuple(f.shape[2:]) for f in features]}, expected "
                f"{self.shapes} as in the bank"
            )
        if features[0].shape[1] != self.num_views:
            raise ValueError(
                f"features: got {features[0].shape[1]} views, expected {self.num_views}"
            )
        maps = []
        for level, feat in enumerate(features):
            cells = feat.permute(0, 1, 3, 4, 2).float()  # (B, M, h, w, D)
            views = []
            for view in range(self.num_views):
                key = (level, view if self.per_view else 0)
                queries = cells[:, view].contiguous()
                if self.mode == "local":
                    bank, norms = self._local[key]
                    dist, _ = min_l2_local(queries, bank, radius=self.radius, bank_sq_norms=norms)
                else:
                    dist, _ = self._global[key].search(queries, precision=self.precision)
                views.append(dist)
            maps.append(torch.stack(views, dim=1))
        return maps

    def standardize(self, distances: list[torch.Tensor]) -> list[torch.Tensor]:
        """search() maps (B, M, h, w) per level -> z-scores against the normal variation of each
        view and cell (unchanged when normalization is "none")."""
        if self.normalization == "none":
            return distances
        if len(distances) != len(self._stats):
            raise ValueError(f"distances: got {len(distances)} levels, expected {len(self._stats)}")
        return [(d - mean) / std for d, (mean, std) in zip(distances, self._stats, strict=True)]

    # -- persistence ----------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        """Every bank as a named tensor (for safetensors)."""
        tensors = {f"level{level}.view{view}": self._stored((level, view)).contiguous()
                   for level, view in self._keys()}  # fmt: skip
        for level, (mean, std) in enumerate(self._stats):
            tensors[f"stats.level{level}.mean"] = mean
            tensors[f"stats.level{level}.std"] = std
        return tensors

    def settings(self) -> dict:
        return {
            "mode": self.mode,
            "radius": self.radius,
            "per_view": self.per_view,
            "dtype": str(self.dtype).removeprefix("torch."),
            "coreset_ratio": self.coreset_ratio,
            "precision": self.precision,
            "normalization": self.normalization,
            "shapes": [list(s) for s in self.shapes],
            "num_views": self.num_views,
        }

    @classmethod
    def from_tensors(cls, settings: dict, tensors: dict[str, torch.Tensor]) -> FeatureBanks:
        banks = cls(
            settings["mode"],
            radius=settings["radius"],
            per_view=settings["per_view"],
            dtype=getattr(torch, settings["dtype"]),
            precision=settings.get("precision", "fp32"),
            normalization=settings.get("normalization", "none"),
        )
        banks.coreset_ratio = settings["coreset_ratio"]  # already applied to the stored banks
        banks.shapes = [tuple(s) for s in settings["shapes"]]
        banks.num_views = settings["num_views"]
        for level in range(len(banks.shapes)):
            for view in range(banks._bank_views()):
                name = f"level{level}.view{view}"
                if name not in tensors:
                    raise ValueError(f"bank file: tensor {name!r} is missing")
                key = (level, view)
                if banks.mode == "local":
                    stored = tensors[name]
                    banks._local[key] = (
                        stored,
                        bank_sq_norms(stored.reshape(-1, stored.shape[-1])),
                    )
                else:
                    bank = MemoryBank(tensors[name].shape[-1], dtype=banks.dtype)
                    bank.add(tensors[name])
                    banks._global[key] = bank
                banks._chunks[key] = [tensors[name]]
        if banks.normalization == "position":
            for level in range(len(banks.shapes)):
                names = (f"stats.level{level}.mean", f"stats.level{level}.std")
                missing = [n for n in names if n not in tensors]
                if missing:
                    raise ValueError(f"bank file: tensor(s) {missing} are missing")
                banks._stats.append((tensors[names[0]], tensors[names[1]]))
        return banks
