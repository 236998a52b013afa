"""User-supplied homographies: reading them from JSON or .npy files.

Accepted files (all in pixel coordinates of the views, docs/design.md §3.1):

- JSON, dense:   {"neighbors": [[...], ...], "H": [[[[...]]]]} with H of shape (M, N, 3, 3);
                 what ViewHomographies.to_json writes (extra keys such as "image_size" and
                 "report" are read when present).
- JSON, mapping: {"0->1": [[...], [...], [...]], "1->0": ..., ...}, optionally wrapped as
                 {"pairs": {...}, "image_size": [h, w]}. Without a `neighbors` argument the
                 graph is every listed pair (row i: the listed j in increasing order, padded
                 with -1); with one, every pair of the graph must be listed (extra ones are
                 ignored).
- .npy:          an (M, N, 3, 3) array of per-slot matrices, or an (M, M, 3, 3) all-pairs array
                 ([i, j] maps view i to view j); both need the `neighbors` argument. When N == M
                 the array is read per slot.

Every matrix must be finite and invertible; it is normalised to H[2, 2] = 1. Errors name the
file and the offending key or pair.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from vsad.geometry.graphs import check_neighbors
from vsad.geometry.views import (
    ViewHomographies,
    _read_json,
    from_dense_dict,
    from_full_matrix,
    gather_slots,
    supplied_report,
)

PAIR_KEY = re.compile(r"^\s*(\d+)\s*->\s*(\d+)\s*$")


def _check_num_views(num_views) -> int:
    if isinstance(num_views, bool) or not isinstance(num_views, (int, np.integer)):
        raise ValueError(f"num_views: got {num_views!r}, expected an int >= 1")
    if num_views < 1:
        raise ValueError(f"num_views: got {num_views}, expected an int >= 1")
    return int(num_views)


def _from_mapping(data: dict, where: str, num_views: int, neighbors) -> ViewHomographies:
    image_size = None
    if "pairs" in data:
        image_size = data.get("image_size")
        data = data["pairs"]
        where = f'{where}, "pairs"'
        if not isinstance(data, dict):
            raise ValueError(f'{where}: expected an object of "i->j": 3x3 entries')
    matrices: dict[tuple[int, int], object] = {}
    for key, value in data.items():
        match = PAIR_KEY.match(str(key))
        if not match:
            raise ValueError(
                f'{where}: key {key!r} is not a pair of views, expected "i->j" (e.g. "0->1")'
            )
        i, j = int(match.group(1)), int(match.group(2))
        if i >= num_views or j >= num_views or i == j:
            raise ValueError(
                f"{where}: key {key!r} names views outside [0, {num_views}) or a view and "
                f"itself (num_views={num_views})"
            )
        matrices[(i, j)] = value
    if not matrices:
        raise ValueError(f'{where}: holds no "i->j" pair')
    if neighbors is None:
        rows = [sorted(j for (a, j) in matrices if a == i) for i in range(num_views)]
        width = max(len(r) for r in rows)
        neighbors = np.full((num_views, width), -1, dtype=np.int64)
        for i, row in enumerate(rows):
            neighbors[i, : len(row)] = row
    table = check_neighbors(neighbors, num_views)
    H = gather_slots(matrices, table, where)
    try:
        return ViewHomographies(H, table, image_size, supplied_report(table))
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def _from_npy(path: Path, num_views: int, neighbors) -> ViewHomographies:
    where = f"'{path}'"
    if neighbors is None:
        raise ValueError(
            f"neighbors: required to read {where} (an .npy file holds only the matrices)"
        )
    table = check_neighbors(neighbors, num_views)
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise ValueError(f"{where}: not a readable .npy array ({error})") from None
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{where}: expected a numeric array, got dtype {array.dtype}")
    M, N = table.shape
    if array.shape == (M, N, 3, 3):
        matrices = {(i, int(table[i, n])): array[i, n] for i in range(M) for n in range(N)}
        H = gather_slots(matrices, table, where)
        return ViewHomographies(H, table, None, supplied_report(table))
    if array.shape == (M, M, 3, 3):
        try:
            return from_full_matrix(array, table)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
    raise ValueError(
        f"{where}: array of shape {array.shape}, expected {(M, N, 3, 3)} (per neighbour slot) "
        f"or {(M, M, 3, 3)} (all pairs) for neighbors of shape {table.shape}"
    )


def load_homographies(
    path: str | os.PathLike, num_views: int, *, neighbors=None
) -> ViewHomographies:
    """Reads user-supplied homographies (formats in the module docstring).

    num_views: the number of views M of the category (checked against the file).
    neighbors: the (M, N) view graph; required for .npy files, optional for JSON (a JSON dense
               file must then carry the same graph; a mapping file must list all its pairs).
    """
    num_views = _check_num_views(num_views)
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".npy"):
        raise ValueError(f"path: '{path}' has suffix {suffix!r}, expected '.json' or '.npy'")
    if not path.is_file():
        raise FileNotFoundError(f"path: homography file '{path}' does not exist")
    if suffix == ".npy":
        return _from_npy(path, num_views, neighbors)
    data = _read_json(path)
    where = f"'{path}'"
    if isinstance(data, dict) and "H" in data:
        return from_dense_dict(data, where, num_views=num_views, neighbors=neighbors)
    if isinstance(data, dict):
        return _from_mapping(data, where, num_views, neighbors)
    raise ValueError(
        f'{where}: expected a JSON object ({{"neighbors", "H"}} or "i->j" pairs), got '
        f"{type(data).__name__}"
    )


__all__ = ["load_homographies"]
