"""Geometry between camera views: homography estimation, view graphs, grid scaling, file I/O.

MVAM (docs/design.md §3.1) looks for the counterpart of a pixel of view i near its projection into
each neighbour view j, so it needs H[i -> j] for every edge of a view graph. This subpackage
estimates those homographies from normal training images (SIFT + ratio test + RANSAC + robust
refinement + guided matching, pooled over many samples), reads user-supplied ones, builds the
standard view graphs and re-expresses homographies on coarser feature grids::

    from vsad.geometry import estimate_view_homographies, view_graph, scale_homography

    neighbors = view_graph("ring", 5)                       # (5, 2): views i-1, i+1
    homs = estimate_view_homographies(train_split, neighbors, max_samples=32)
    homs.to_json("homographies.json")                       # atomic; exact round trip
    H_level = scale_homography(homs.H, 8)                   # on a grid 8x coarser

Convention everywhere: x = column, y = row, pixel centres at integer coordinates; H maps
source view pixel coordinates to destination view pixel coordinates, [x', y', 1] ~ H [x, y, 1],
normalised so that H[2, 2] = 1. See docs/geometry.md.
"""

from __future__ import annotations

from vsad.geometry.errors import HomographyError
from vsad.geometry.estimate import estimate_homography, match_homography
from vsad.geometry.features import Features, detect_features
from vsad.geometry.fitting import HomographyEstimate, corner_error, project
from vsad.geometry.graphs import GRAPH_KINDS, check_neighbors, view_graph
from vsad.geometry.io import load_homographies
from vsad.geometry.pooled import FALLBACKS, estimate_view_homographies
from vsad.geometry.scaling import grid_matrix, scale_homography
from vsad.geometry.views import PairReport, ViewHomographies, from_full_matrix

__all__ = [
    "FALLBACKS",
    "GRAPH_KINDS",
    "Features",
    "HomographyError",
    "HomographyEstimate",
    "PairReport",
    "ViewHomographies",
    "check_neighbors",
    "corner_error",
    "detect_features",
    "estimate_homography",
    "estimate_view_homographies",
    "from_full_matrix",
    "grid_matrix",
    "load_homographies",
    "match_homography",
    "project",
    "scale_homography",
    "view_graph",
]
