"""View graphs: which neighbour views each view attends to (the `neighbors` argument of MVAM).

A view graph is an (M, N) int64 array: row i lists the N neighbour views of view i, with -1 in
empty slots. Every row has the same width N so that the graph and the (M, N, 3, 3) homographies
can be passed to the fused kernels as dense arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

GRAPH_KINDS = ("ring", "chain", "all", "explicit")


def _offsets(count: int) -> list[int]:
    """-1, +1, -2, +2, ...: the nearest views first, the previous one before the next one."""
    out: list[int] = []
    step = 1
    while len(out) < count:
        out += [-step, step]
        step += 1
    return out[:count]


def _check_count(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: got {value!r}, expected an int >= {minimum}")
    return int(value)


def view_graph(
    kind: str,
    num_views: int,
    *,
    neighbors_per_view: int = 2,
    pairs: Sequence[Sequence[int]] | None = None,
) -> np.ndarray:
    """The (M, N) int64 neighbour table of a standard camera layout.

    kind:
        "ring":     cameras on a circle; view i sees i-1, i+1 (mod M), then i-2, i+2, ... up to
                    `neighbors_per_view` views (N = min(neighbors_per_view, M - 1), all distinct).
        "chain":    cameras on a line; the same offsets without wrapping, -1 where the line
                    ends (N = min(neighbors_per_view, 2 (M - 1))).
        "all":      every other view (N = M - 1); `neighbors_per_view` is ignored.
        "explicit": `pairs[i]` lists the neighbours of view i; rows are padded with -1 to the
                    longest list.
    """
    if kind not in GRAPH_KINDS:
        raise ValueError(f"kind: got {kind!r}, expected one of {GRAPH_KINDS}")
    if kind != "explicit" and pairs is not None:
        raise ValueError(f"pairs: only used with kind='explicit', got kind={kind!r}")
    if kind == "explicit":
        return _explicit(pairs, num_views)
    num_views = _check_count(num_views, "num_views", 2)
    if kind == "all":
        return np.array(
            [[j for j in range(num_views) if j != i] for i in range(num_views)], dtype=np.int64
        )
    k = _check_count(neighbors_per_view, "neighbors_per_view", 1)
    # Slot n always holds the same offset (-1, +1, -2, +2, ...), so a kernel's slot-specific
    # terms (positional embeddings) mean the same thing for every view. On a ring, at most M - 1
    # offsets are distinct; on a chain, a view at an end has -1 where the line stops.
    offsets = _offsets(min(k, num_views - 1) if kind == "ring" else min(k, 2 * (num_views - 1)))
    i = np.arange(num_views)[:, None]
    j = i + np.array(offsets)[None, :]
    if kind == "ring":
        return (j % num_views).astype(np.int64)
    return np.where((j >= 0) & (j < num_views), j, -1).astype(np.int64)


def _explicit(pairs, num_views) -> np.ndarray:
    if pairs is None:
        raise ValueError(
            "pairs: required with kind='explicit' (a list of per-view neighbour lists)"
        )
    num_views = _check_count(num_views, "num_views", 1)
    rows = [list(row) for row in pairs]
    if len(rows) != num_views:
        raise ValueError(
            f"pairs: got {len(rows)} neighbour lists, expected one per view (num_views={num_views})"
        )
    width = max((len(row) for row in rows), default=0)
    table = np.full((num_views, width), -1, dtype=np.int64)
    for i, row in enumerate(rows):
        for j in row:
            if isinstance(j, bool) or not isinstance(j, (int, np.integer)):
                raise ValueError(f"pairs[{i}]: got {j!r}, expected view indices (int)")
        table[i, : len(row)] = row
    return check_neighbors(table, num_views, name="pairs")


def check_neighbors(neighbors, num_views: int | None = None, *, name: str = "neighbors"):
    """`neighbors` as an (M, N) int64 array; raises ValueError naming `name` when it is not 2-D,
    holds an index outside [-1, M), a self-loop or a view listed twice in one row."""
    array = np.asarray(neighbors.cpu() if hasattr(neighbors, "cpu") else neighbors)
    if array.ndim != 2 or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
        raise ValueError(
            f"{name}: expected an (M, N) integer array of view indices, got {array.dtype} "
            f"{array.shape}"
        )
    array = array.astype(np.int64)
    M = array.shape[0]
    if num_views is not None and M != num_views:
        raise ValueError(f"{name}: has {M} rows, expected one per view (num_views={num_views})")
    if M < 1:
        raise ValueError(f"{name}: has no rows, expected one per view")
    bad = np.argwhere((array < -1) | (array >= M))
    if len(bad):
        i, n = bad[0]
        raise ValueError(
            f"{name}[{i}, {n}] = {array[i, n]} is out of range, expected a view index in "
            f"[0, {M}) or -1 for an empty slot"
        )
    for i, row in enumerate(array):
        used = row[row >= 0]
        if (used == i).any():
            raise ValueError(f"{name}[{i}] lists view {i} itself, expected other views only")
        if len(np.unique(used)) != len(used):
            raise ValueError(f"{name}[{i}] = {row.tolist()} lists a view twice")
    return array


__all__ = ["GRAPH_KINDS", "check_neighbors", "view_graph"]
