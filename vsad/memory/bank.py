"""One memory bank of normal feature vectors (one per feature level and, usually, per view)."""

from __future__ import annotations

from pathlib import Path

import torch

from vsad.ops.coreset import kcenter_greedy
from vsad.ops.min_l2 import BANK_DTYPES, bank_sq_norms, min_l2

FORMAT_VERSION = "1"
QUERY_CHUNK = 16384


def coreset_projection_dim(projection_dim: int | None, dim: int) -> int | None:
    """The projection a coreset of `dim`-dimensional rows uses: none where it would not reduce
    the dimension (projecting up would only cost time)."""
    return None if projection_dim is not None and projection_dim >= dim else projection_dim


class MemoryBank:
    """Normal prototypes of one feature level: add features incrementally, optionally reduce
    them to a greedy coreset, and search the nearest prototype of any number of queries.

    Args:
        dim: feature dimension D (taken from the first `add` if None).
        dtype: storage dtype — float32, float16 or bfloat16 (search accumulates in float32).
        device: where the prototypes are stored and searched (queries are moved there).
    """

    def __init__(
        self,
        dim: int | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if dtype not in BANK_DTYPES:
            raise ValueError(f"dtype: got {dtype}, expected one of {list(BANK_DTYPES)}")
        if dim is not None and dim < 1:
            raise ValueError(f"dim: got {dim}, expected >= 1")
        self.dim, self.dtype, self.device = dim, dtype, torch.device(device)
        self._chunks: list[torch.Tensor] = []
        self._features: torch.Tensor | None = None
        self._norms: torch.Tensor | None = None

    def __len__(self) -> int:
        return sum(c.shape[0] for c in self._chunks)

    def add(self, features: torch.Tensor) -> None:
        """Appends features (..., D): every leading dimension is flattened into rows."""
        if not isinstance(features, torch.Tensor) or features.dim() < 1:
            raise TypeError("features: expected a tensor of shape (..., D)")
        D = features.shape[-1]
        if self.dim is None:
            self.dim = D
        elif D != self.dim:
            raise ValueError(
                f"features: dimension {D} does not match the bank's dimension {self.dim}"
            )
        rows = features.detach().reshape(-1, D)
        if rows.shape[0] == 0:
            return
        if not bool(torch.isfinite(rows).all()):
            raise ValueError("features: contain NaN or Inf; a bank must hold finite features only")
        self._chunks.append(rows.to(device=self.device, dtype=self.dtype).contiguous())
        self._features = self._norms = None

    def to(self, device: torch.device | str) -> MemoryBank:
        """Moves the prototypes (and their cached norms) to `device`; returns self."""
        self.device = torch.device(device)
        self._chunks = [c.to(self.device) for c in self._chunks]
        if self._features is not None:
            self._features = self._chunks[0] if len(self._chunks) == 1 else None
        if self._norms is not None:
            self._norms = self._norms.to(self.device)
        return self

    @property
    def features(self) -> torch.Tensor:
        """All prototypes (N, D) in the storage dtype."""
        if self._features is None:
            if not self._chunks:
                raise ValueError("memory bank is empty: add() normal features before using it")
            self._features = torch.cat(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
            self._chunks = [self._features]
        return self._features

    def coreset(
        self,
        n: int,
        *,
        seed: int = 0,
        projection_dim: int | None = 128,
        tile: int = 65536,
    ) -> torch.Tensor:
        """Keeps only a greedy k-center coreset of n prototypes; returns the kept indices.
        tile: rows per matrix product (`kcenter_greedy`)."""
        projection_dim = coreset_projection_dim(projection_dim, self.features.shape[1])
        keep = kcenter_greedy(
            self.features, min(n, len(self)), seed=seed, projection_dim=projection_dim, tile=tile
        )
        keep = keep.to(self.features.device)
        self._chunks = [self.features[keep].contiguous()]
        self._features = self._norms = None
        return keep

    def search(self, queries: torch.Tensor, *, precision: str = "fp32", backend: str | None = None):
        """(dist, index) of the nearest prototype for queries (..., D); shapes (...).
        precision: "fp32" or "mixed" (identical results, faster on AVX512-BF16 CPUs)."""
        if queries.shape[-1] != (self.dim or queries.shape[-1]):
            raise ValueError(
                f"queries: dimension {queries.shape[-1]} does not match the bank's "
                f"dimension {self.dim}"
            )
        bank = self.features
        if self._norms is None:
            self._norms = bank_sq_norms(bank)
        lead = queries.shape[:-1]
        flat = queries.reshape(-1, queries.shape[-1])
        if flat.shape[0] == 0:
            empty = {"device": bank.device}
            return torch.empty(lead, **empty), torch.empty(lead, dtype=torch.int64, **empty)
        # Chunks of queries keep memory bounded for any number of queries (the mixed-precision
        # kernel keeps O(D) bytes of state per query).
        parts = [
            min_l2(
                chunk.to(bank.device),
                bank,
                bank_sq_norms=self._norms,
                precision=precision,
                backend=backend,
            )
            for chunk in flat.split(QUERY_CHUNK)
        ]
        dist = torch.cat([p[0] for p in parts])
        index = torch.cat([p[1] for p in parts])
        return dist.reshape(lead), index.reshape(lead)

    def save(self, path: str | Path) -> None:
        """safetensors file, written to a temporary name and renamed into place (atomic)."""
        from safetensors.torch import save_file

        from vsad._atomic import atomic_path

        meta = {"format": FORMAT_VERSION, "dtype": BANK_DTYPES[self.dtype], "dim": str(self.dim)}
        with atomic_path(path) as tmp:
            save_file({"features": self.features.cpu()}, tmp, metadata=meta)

    @classmethod
    def load(cls, path: str | Path, *, device: torch.device | str = "cpu") -> MemoryBank:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"memory bank file: {path} does not exist")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT_VERSION or "features" not in f.keys():
                raise ValueError(
                    f"memory bank file: {path} is not a vsad memory bank "
                    f"(format {meta.get('format')!r})"
                )
            features = f.get_tensor("features")
        bank = cls(features.shape[1], dtype=features.dtype, device=device)
        bank._chunks = [features.to(bank.device)]
        return bank
