"""Pose coverage: is a unit like the training units, judged from all its views at once?

A unit that turns on the station shows every camera another side of itself; the cell-level
scores of a detector cannot tell such a unit from a defective one, and no threshold set on the
training units holds for it (BENCHMARKS.md, "Units that turn"). What a unit's pose does is
shared by all its cameras, so the evidence of all views together says whether the training
units covered it: each unit is summarised by its features averaged over a GRID × GRID grid of
every view (coarse, so that a local defect barely moves it; every view, so that the pose
counts and not one camera's noise), and its distance to the nearest training unit is compared
with the largest leave-one-out nearest distance among the training units.

    novelty = d(unit, nearest training unit) / max_s d(training unit s, nearest other one)

A normal unit drawn like the training units has novelty > 1 with probability ≤ 1/(n + 1)
(exchangeability: it is the largest of n + 1 such distances); on the real turntable every
test unit at a pose halfway between the training poses had novelty > 1, and 0–3 % of the units
at the training poses (seed 100: BENCHMARKS.md). `Prediction.pose_covered` is novelty <= 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Cells per side of each view's summary.
GRID = 2
DESCRIPTORS_KEY, RADIUS_KEY = "coverage.descriptors", "coverage.radius"


def unit_descriptors(features: list[torch.Tensor]) -> torch.Tensor:
    """(B, M·D·GRID²) float32 summaries of a batch, from the first level's (B, M, D, h, w)
    features."""
    first = features[0]
    B, M, D = first.shape[:3]
    pooled = F.adaptive_avg_pool2d(first.flatten(0, 1).float(), GRID)
    return pooled.reshape(B, M * D * GRID * GRID)


class PoseCoverage:
    """The training units' summaries and their largest leave-one-out nearest distance."""

    def __init__(self, descriptors: torch.Tensor, radius: float) -> None:
        self.descriptors, self.radius = descriptors, float(radius)

    @classmethod
    def fit(cls, descriptors: torch.Tensor) -> PoseCoverage | None:
        """From (S, dim) training summaries; None for fewer than 2 units (no leave-one-out)."""
        if descriptors.shape[0] < 2:
            return None
        distances = torch.cdist(descriptors.double(), descriptors.double())
        distances.fill_diagonal_(float("inf"))
        radius = float(distances.min(dim=1).values.max())
        # Identical training units: any other unit is new (a zero radius would divide by 0).
        return cls(descriptors.float().contiguous(), max(radius, 1e-12))

    def novelty(self, descriptors: torch.Tensor) -> torch.Tensor:
        """(B,) float32: distance to the nearest training unit over the radius (> 1: outside
        what the training units covered)."""
        bank = self.descriptors.to(descriptors.device)
        nearest = torch.cdist(descriptors.double(), bank.double()).min(dim=1).values
        return (nearest / self.radius).float()

    def to(self, device: torch.device | str) -> PoseCoverage:
        self.descriptors = self.descriptors.to(device)
        return self

    def tensors(self) -> dict[str, torch.Tensor]:
        return {DESCRIPTORS_KEY: self.descriptors,
                RADIUS_KEY: torch.tensor([self.radius], dtype=torch.float64)}  # fmt: skip

    def settings(self) -> dict:
        """What detector.json records (load checks the tensors against it)."""
        return {"units": int(self.descriptors.shape[0]), "dim": int(self.descriptors.shape[1]),
                "grid": GRID}  # fmt: skip

    @classmethod
    def from_tensors(
        cls, settings, tensors: dict[str, torch.Tensor], path, meta_path
    ) -> PoseCoverage | None:
        """What tensors() wrote, checked against detector.json's `coverage` (`settings`);
        None when it has none (a model saved before coverage existed). A damaged entry or
        tensor is a SavedFileError naming its file."""
        from vsad.saved_files import fail

        if settings is None:
            return None
        keys = ("units", "dim", "grid")
        if not isinstance(settings, dict) or any(
            isinstance(settings.get(k), bool) or not isinstance(settings.get(k), int) for k in keys
        ):
            raise fail(meta_path, f"coverage is {settings!r:.80}, expected an object with "
                       "integer units, dim and grid")  # fmt: skip
        if settings["grid"] != GRID or settings["units"] < 2 or settings["dim"] < 1:
            raise fail(meta_path, f"coverage {settings} is not what this version writes "
                       f"(grid {GRID}, units >= 2, dim >= 1)")  # fmt: skip
        for key in (DESCRIPTORS_KEY, RADIUS_KEY):
            if key not in tensors:
                raise fail(path, f"'{key}' is missing (detector.json records coverage)")
        descriptors, radius = tensors[DESCRIPTORS_KEY], tensors[RADIUS_KEY]
        want = (settings["units"], settings["dim"])
        if tuple(descriptors.shape) != want or descriptors.dtype != torch.float32:
            raise fail(path, f"'{DESCRIPTORS_KEY}' is {descriptors.dtype} of shape "
                       f"{tuple(descriptors.shape)}, expected float32 {want}")  # fmt: skip
        if radius.dtype != torch.float64:
            raise fail(path, f"'{RADIUS_KEY}' is {radius.dtype}, expected float64")
        if radius.shape != (1,) or not bool(torch.isfinite(radius).all()) or float(radius) <= 0:
            raise fail(path, f"'{RADIUS_KEY}' must hold one finite value > 0, got "
                       f"shape {tuple(radius.shape)}")  # fmt: skip
        if not bool(torch.isfinite(descriptors).all()):
            raise fail(path, f"'{DESCRIPTORS_KEY}' holds non-finite values")
        return cls(descriptors.contiguous(), float(radius))


__all__ = ["GRID", "PoseCoverage", "unit_descriptors"]
