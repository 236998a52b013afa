"""The multi-level memory bank of a multi-view detector: one bank per feature level and per view.

Per-view banks beat one pooled bank on a fixed station (docs/design.md §4): a camera always sees the
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


def _chosen_samples(samples: int) -> torch.Tensor:
    """The training samples whose leave-one-out distances are computed (MAX_STAT_SAMPLES)."""
    return torch.linspace(0, samples - 1, min(samples, MAX_STAT_SAMPLES)).round().long()


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
        device: where the banks, their statistics and the searches live (features are moved
            there; search returns maps on it).
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
        device: torch.device | str = "cpu",
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
        self.device = torch.device(device)
        self._stats: list[tuple[torch.Tensor, torch.Tensor]] = []  # per level: μ, σ (M, h, w)
        self.loo_distances: list[torch.Tensor] | None = None  # finalize(keep_loo=True)
        self._loo_stat_distances: list[torch.Tensor] | None = None
        self._kept: dict[tuple[int, int], torch.Tensor] = {}  # coreset rows kept per bank
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
                chunk = part.to(device=self.device, dtype=self.dtype).contiguous()
                self._chunks.setdefault((level, view), []).append(chunk)
        self._local.clear()
        self._global.clear()
        self._stats = []

    def finalize(self, *, seed: int = 0, keep_loo: bool = False) -> None:
        """Concatenates the added batches, estimates the normalisation statistics and reduces
        global banks to their coreset.

        keep_loo: keep the leave-one-out distance maps of the training samples in
        `loo_distances` (computed for "position" normalisation anyway; with "none" they cost
        one extra search per sample) — `loo_scored_distances` turns them into the normal
        samples' distances as a test sample would get them, for the decision thresholds."""
        if not self._chunks:
            raise ValueError("memory bank is empty: add() the features of normal samples first")
        stacked = {}
        for key, chunks in self._chunks.items():
            stacked[key] = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
            # The batches are dropped bank by bank, not after all banks are concatenated.
            self._chunks[key] = [stacked[key]]
        levels = range(len(self.shapes))
        self.loo_distances = self._loo_stat_distances = None
        stat_loo = None
        if self.normalization == "position":
            stat_loo = [self._loo_distances(level, stacked) for level in levels]
            self._stats = [self._position_stats(d) for d in stat_loo]
        self._kept = {}
        for key, features in stacked.items():
            self._set(key, features, seed=seed)
        if keep_loo:
            # As a test sample would search: with a coreset, against the coreset rows of the
            # other samples (the full bank would give smaller distances than a test sample
            # gets, and thresholds that reject too much); it is also 1/ratio times cheaper.
            if self._kept:
                self.loo_distances = [self._loo_coreset_distances(lv, stacked) for lv in levels]
            elif stat_loo is not None:
                self.loo_distances = stat_loo
            else:
                self.loo_distances = [self._loo_distances(level, stacked) for level in levels]
            self._loo_stat_distances = stat_loo
        self._chunks = {key: [self._stored(key)] for key in self._chunks}

    def _position_stats(self, distances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """μ and σ (M, h, w) of the leave-one-out distances (samples, M, h, w)."""
        mean, std = distances.mean(0), distances.std(0)
        return mean.contiguous(), std.clamp_min(self._std_floor(std, mean)).contiguous()

    @staticmethod
    def _std_floor(std: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        # A floor keeps cells with almost no normal variation from dividing by ~0.
        return 0.1 * std.mean() + 1e-6 * mean.abs().mean() + 1e-12

    def loo_scored_distances(self) -> list[torch.Tensor]:
        """The kept leave-one-out distances (samples, M, h, w) per level, as `standardize`
        would give them for a test sample: raw with normalization "none"; with "position",
        sample s standardised with μ₋ₛ, σ₋ₛ computed without s.

        Why without s: s's own distance is inside the μ, σ it would be standardised with,
        which pulls its z-score towards 0 (bounded by (n − 1)/√n), so its maximum — the score
        a threshold is set on — comes out systematically below a test sample's and the
        thresholds would reject more than their target. Leaving s out is a closed-form
        downdate of the mean and the sum of squared deviations (float64)."""
        if self.loo_distances is None:
            raise ValueError(
                "loo_scored_distances: no leave-one-out distances kept; call "
                "finalize(keep_loo=True)"
            )
        if self.normalization == "none":
            return list(self.loo_distances)
        out = []
        # The statistics hold s's full-bank LOO distance (`stat`); with a coreset, the distance
        # standardised (`d`) is s's distance to the other samples' coreset rows.
        for d, stat, (mean_all, std_all) in zip(
            self.loo_distances, self._loo_stat_distances, self._stats, strict=True
        ):
            n = d.shape[0]
            if n < 3:
                raise ValueError(
                    f"loo_scored_distances: standardising a sample without itself needs at "
                    f"least 3 training samples, got {n}"
                )
            s64 = stat.double()
            mean = s64.mean(0)
            ss = ((s64 - mean) ** 2).sum(0)
            mean_without = (n * mean - s64) / (n - 1)
            ss_without = (ss - (s64 - mean) ** 2 * (n / (n - 1))).clamp_min(0)
            std_without = (ss_without / (n - 2)).sqrt()
            floor = self._std_floor(std_all, mean_all).double()
            out.append(((d.double() - mean_without) / std_without.clamp_min(floor)).float())
        return out

    def _loo_distances(self, level: int, stacked: dict) -> torch.Tensor:
        """(samples, M, h, w) distances of (up to MAX_STAT_SAMPLES) training samples, each
        searched against the bank without its own sample."""
        group = 1 if self.per_view else self.num_views  # bank rows per training sample
        samples = stacked[(level, 0)].shape[0] // group
        if samples < 2:
            raise ValueError(
                f"normalization: 'position' needs at least 2 training samples to estimate the "
                f"normal variation, got {samples}; add samples or use normalization='none'"
            )
        chosen = _chosen_samples(samples)
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
        return torch.stack(per_view, dim=1)  # (samples, M, h, w)

    def _loo_coreset_distances(self, level: int, stacked: dict) -> torch.Tensor:
        """(samples, M, h, w) distances of the training samples chosen as in _loo_distances,
        each searched against the coreset rows that come from the other samples."""
        group = 1 if self.per_view else self.num_views
        samples = stacked[(level, 0)].shape[0] // group
        per_view = []
        for view in range(self.num_views):
            key = (level, view if self.per_view else 0)
            features, bank = stacked[key], self._global[key].features
            cells = features[0, ..., 0].numel()  # rows per bank entry (h·w)
            owner = self._kept[key] // (cells * group)  # the training sample of each kept row
            norms = bank_sq_norms(bank)
            row_of_view = 0 if self.per_view else view
            loo = []
            for s in _chosen_samples(samples).tolist():
                others = owner != s
                query = features[s * group + row_of_view].float()
                flat = query.reshape(-1, query.shape[-1])
                dist, _ = min_l2(flat, bank[others].contiguous(), bank_sq_norms=norms[others])
                loo.append(dist.reshape(query.shape[:2]))
            per_view.append(torch.stack(loo))
        return torch.stack(per_view, dim=1)

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
        bank = MemoryBank(stacked.shape[-1], dtype=self.dtype, device=self.device)
        bank.add(stacked)
        if self.coreset_ratio is not None and self.coreset_ratio < 1:
            # Tiles of one training sample's rows: a sharded bank (vsad.distributed) holds
            # whole samples, so it computes the same products and selects the same rows.
            keep = bank.coreset(
                max(1, round(self.coreset_ratio * len(bank))),
                seed=seed,
                tile=self._rows_per_sample(stacked),
            )
            self._kept[key] = keep
        self._global[key] = bank

    def _rows_per_sample(self, stacked: torch.Tensor) -> int:
        """Flat bank rows one training sample contributes to a (level, view) bank."""
        group = 1 if self.per_view else self.num_views
        return group * stacked[0, ..., 0].numel()

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
            cells = feat.permute(0, 1, 3, 4, 2).to(self.device, torch.float32)  # (B, M, h, w, D)
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

    # -- devices --------------------------------------------------------------------------
    def to(self, device: torch.device | str) -> FeatureBanks:
        """Moves every bank, its norms, the statistics and the kept leave-one-out maps to
        `device`; returns self."""
        device = torch.device(device)

        def move(t):
            return None if t is None else t.to(device)

        self.device = device
        self._stats = [(move(m), move(s)) for m, s in self._stats]
        self._local = {k: (move(b), move(n)) for k, (b, n) in self._local.items()}
        for bank in self._global.values():
            bank.to(device)
        self._kept = {k: move(v) for k, v in self._kept.items()}
        self._chunks = {k: [move(c) for c in v] for k, v in self._chunks.items()}
        if self.loo_distances is not None:
            self.loo_distances = [move(d) for d in self.loo_distances]
        if self._loo_stat_distances is not None:
            self._loo_stat_distances = [move(d) for d in self._loo_stat_distances]
        return self

    # -- persistence ----------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        """Every bank as a named tensor (for safetensors), on the CPU."""
        tensors = {f"level{level}.view{view}": self._stored((level, view)).contiguous()
                   for level, view in self._keys()}  # fmt: skip
        for level, (mean, std) in enumerate(self._stats):
            tensors[f"stats.level{level}.mean"] = mean
            tensors[f"stats.level{level}.std"] = std
        return {name: t.cpu() for name, t in tensors.items()}

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
    def from_tensors(
        cls,
        settings: dict,
        tensors: dict[str, torch.Tensor],
        *,
        device: torch.device | str = "cpu",
    ) -> FeatureBanks:
        """The banks that `settings()` and `tensors()` describe, on `device`."""
        device = torch.device(device)
        tensors = {name: t.to(device) for name, t in tensors.items()}
        banks = cls(
            settings["mode"],
            radius=settings["radius"],
            per_view=settings["per_view"],
            dtype=getattr(torch, settings["dtype"]),
            precision=settings.get("precision", "fp32"),
            normalization=settings.get("normalization", "none"),
            device=device,
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
                    bank = MemoryBank(tensors[name].shape[-1], dtype=banks.dtype, device=device)
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
