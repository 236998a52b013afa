"""The homographies of one category's camera rig, in the layout the model consumes.

`ViewHomographies.H[i, n]` maps view i pixel coordinates to the pixel coordinates of view
`neighbors[i, n]` (docs/design.md §3.1: x = column, y = row, pixel centres at integers,
H[2, 2] = 1);
empty slots (neighbour -1) hold the identity so the array is always finite. The JSON file
written by `to_json` is also the dense format accepted by `load_homographies`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vsad._atomic import atomic_write_text
from vsad.geometry._validation import check_homography
from vsad.geometry.graphs import check_neighbors

FORMAT = "vsad-view-homographies"
VERSION = 1
CONVENTION = (
    "H[i][n] maps pixel coordinates of view i to those of view neighbors[i][n]: "
    "[x', y', 1] ~ H @ [x, y, 1], x = column, y = row, pixel centres at integers, H[2][2] = 1; "
    "neighbor -1 = empty slot (identity)"
)
STATUSES = ("ok", "fallback", "dropped", "supplied")


@dataclass(frozen=True)
class PairReport:
    """How the homography of one directed pair i -> j was obtained.

    status: "ok" (estimated), "fallback" (estimation failed, identity used; `reason` says
    why), "dropped" (estimation failed, the pair was left out of the view graph; `reason`
    says why) or "supplied" (given by the user or a generator; the match figures are 0 / NaN).
    reprojection_error_px: median transfer error over the inliers, in view j pixels.
    """

    i: int
    j: int
    inliers: int
    matches: int
    samples_used: int
    reprojection_error_px: float
    status: str
    reason: str = ""

    def to_dict(self) -> dict:
        out = asdict(self)
        error = self.reprojection_error_px
        out["reprojection_error_px"] = None if not math.isfinite(error) else error
        return out

    @classmethod
    def from_dict(cls, data: dict, where: str) -> PairReport:
        try:
            error = data["reprojection_error_px"]
            report = cls(
                i=int(data["i"]),
                j=int(data["j"]),
                inliers=int(data["inliers"]),
                matches=int(data["matches"]),
                samples_used=int(data["samples_used"]),
                reprojection_error_px=float("nan") if error is None else float(error),
                status=str(data["status"]),
                reason=str(data.get("reason", "")),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{where}: malformed pair report {data!r} ({error!r})") from None
        if report.status not in STATUSES:
            raise ValueError(f"{where}: status {report.status!r}, expected one of {STATUSES}")
        return report


@dataclass
class ViewHomographies:
    """Homographies between each view and its neighbours.

    H:          (M, N, 3, 3) float64; H[i, n] maps view i pixels to view neighbors[i, n] pixels.
    neighbors:  (M, N) int64 neighbour views, -1 = empty slot (identity in H).
    image_size: (height, width) of the views the homographies are expressed in, or None when
                unknown (scale with scale_homography before using them at another size).
    report:     one PairReport per non-empty slot, in row-major slot order.
    """

    H: np.ndarray
    neighbors: np.ndarray
    image_size: tuple[int, int] | None = None
    report: list[PairReport] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.neighbors = check_neighbors(self.neighbors)
        H = np.asarray(self.H, dtype=np.float64)
        M, N = self.neighbors.shape
        if H.shape != (M, N, 3, 3):
            raise ValueError(
                f"H: expected shape {(M, N, 3, 3)} to match neighbors {self.neighbors.shape}, "
                f"got {H.shape}"
            )
        if not np.isfinite(H).all():
            raise ValueError("H: has non-finite entries")
        self.H = H
        if self.image_size is not None:
            size = tuple(int(s) for s in self.image_size)
            if len(size) != 2 or min(size) < 1:
                raise ValueError(
                    f"image_size: got {self.image_size!r}, expected (height, width) >= 1"
                )
            self.image_size = size

    @property
    def num_views(self) -> int:
        return self.neighbors.shape[0]

    def pair(self, i: int, j: int) -> np.ndarray:
        """The homography mapping view i pixels to view j pixels (j must be a neighbour of i)."""
        inside = 0 <= i < self.num_views and j >= 0
        slots = np.flatnonzero(self.neighbors[i] == j) if inside else []
        if not len(slots):
            raise KeyError(f"pair {i}->{j}: view {j} is not a neighbour of view {i}")
        return self.H[i, slots[0]]

    def failed_pairs(self) -> list[PairReport]:
        """Reports of the pairs that fell back to the identity."""
        return [r for r in self.report if r.status == "fallback"]

    def dropped_pairs(self) -> list[PairReport]:
        """Reports of the pairs left out of the view graph (their slots are -1)."""
        return [r for r in self.report if r.status == "dropped"]

    def summary(self) -> str:
        """One line: which directed pairs are used and which were left out, and why."""
        used = [f"{r.i}->{r.j}" for r in self.report if r.status in ("ok", "supplied")]
        lines = [f"view pairs used: {len(used)} ({', '.join(used) or 'none'})"]
        for r in self.report:
            if r.status in ("fallback", "dropped") and r.i < r.j:
                what = "left out" if r.status == "dropped" else "identity fallback"
                lines.append(f"{r.i}<->{r.j} {what}: {r.reason}")
        return "; ".join(lines)

    def to_json(self, path: str | os.PathLike) -> Path:
        """Writes the homographies, the graph and the report to `path` (atomically: a
        temporary file in the same folder, then os.replace). Floats round-trip exactly."""
        data = {
            "format": FORMAT,
            "version": VERSION,
            "convention": CONVENTION,
            "image_size": None if self.image_size is None else list(self.image_size),
            "neighbors": self.neighbors.tolist(),
            "H": self.H.tolist(),
            "report": [r.to_dict() for r in self.report],
        }
        return atomic_write_text(path, json.dumps(data, indent=1) + "\n")

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> ViewHomographies:
        """Reads a file written by to_json (any file in the dense format of load_homographies)."""
        path = Path(path)
        return from_dense_dict(_read_json(path), f"'{path}'")


def _read_json(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"path: homography file '{path}' does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"'{path}': not valid JSON ({error})") from None


def gather_slots(
    matrices: dict[tuple[int, int], np.ndarray], neighbors: np.ndarray, where: str
) -> np.ndarray:
    """(M, N, 3, 3) array with the validated matrix of every non-empty slot, identity elsewhere."""
    M, N = neighbors.shape
    H = np.broadcast_to(np.eye(3), (M, N, 3, 3)).copy()
    for i in range(M):
        for n in range(N):
            j = int(neighbors[i, n])
            if j < 0:
                continue
            if (i, j) not in matrices:
                raise ValueError(
                    f'{where}: no homography for pair "{i}->{j}" (neighbors[{i}, {n}])'
                )
            H[i, n] = check_homography(matrices[(i, j)], f'{where}, pair "{i}->{j}"')
    return H


def supplied_report(neighbors: np.ndarray) -> list[PairReport]:
    return [
        PairReport(i, int(j), 0, 0, 0, float("nan"), "supplied")
        for i, row in enumerate(neighbors)
        for j in row
        if j >= 0
    ]


def from_dense_dict(
    data, where: str, *, num_views: int | None = None, neighbors=None
) -> ViewHomographies:
    """ViewHomographies from {"neighbors": (M, N), "H": (M, N, 3, 3), optional "image_size",
    "report"}; `where` names the source in error messages."""
    if not isinstance(data, dict) or "H" not in data or "neighbors" not in data:
        raise ValueError(f'{where}: expected an object with keys "neighbors" and "H"')
    try:
        table = check_neighbors(np.asarray(data["neighbors"]), num_views, name="neighbors")
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    if neighbors is not None and not np.array_equal(check_neighbors(neighbors, num_views), table):
        raise ValueError(
            f"neighbors: the argument {np.asarray(neighbors).tolist()} differs from the graph in "
            f"{where}: {table.tolist()}"
        )
    try:
        H = np.asarray(data["H"], dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f'{where}: key "H" is not an array of numbers ({error})') from None
    M, N = table.shape
    if H.shape != (M, N, 3, 3):
        raise ValueError(
            f'{where}: key "H" has shape {H.shape}, expected {(M, N, 3, 3)} to match '
            f'"neighbors" {table.shape}'
        )
    matrices = {(i, int(table[i, n])): H[i, n] for i in range(M) for n in range(N)}
    H = gather_slots(matrices, table, where)
    report_data = data.get("report")
    if report_data is None:
        report = supplied_report(table)
    elif isinstance(report_data, list):
        report = [PairReport.from_dict(r, f'{where}, "report"') for r in report_data]
    else:
        raise ValueError(f'{where}: key "report" must be a list, got {type(report_data).__name__}')
    image_size = data.get("image_size")
    try:
        return ViewHomographies(H, table, None if image_size is None else image_size, report)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def from_full_matrix(
    H_full, neighbors, *, image_size: tuple[int, int] | None = None
) -> ViewHomographies:
    """ViewHomographies from a dense all-pairs array H_full (M, M, 3, 3), H_full[i, j] mapping
    view i pixels to view j pixels (e.g. `make_category(...).homographies`), keeping the slots
    of the (M, N) `neighbors` graph. Entries are validated (finite, invertible) and normalised
    to H[2, 2] = 1; unused entries (the diagonal, pairs outside the graph) are ignored.
    """
    array = np.asarray(H_full.cpu() if hasattr(H_full, "cpu") else H_full, dtype=np.float64)
    if array.ndim != 4 or array.shape[0] != array.shape[1] or array.shape[2:] != (3, 3):
        raise ValueError(f"H_full: expected shape (M, M, 3, 3), got {array.shape}")
    table = check_neighbors(neighbors, array.shape[0])
    M = array.shape[0]
    matrices = {(i, j): array[i, j] for i in range(M) for j in range(M)}
    H = gather_slots(matrices, table, "H_full")
    return ViewHomographies(H, table, image_size, supplied_report(table))


__all__ = ["PairReport", "ViewHomographies", "from_full_matrix"]
