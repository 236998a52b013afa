"""Image features for homography estimation: SIFT keypoints, Lowe's ratio test, and guided
matching once a first homography is known.

SIFT is in OpenCV's main module since 4.4 (the package requires opencv >= 4.8), so there is no
ORB/AKAZE fallback to maintain: SIFT's scale and rotation invariance and its float descriptors
give markedly more correct matches under the viewpoint changes of a multi-camera station.

Pixel convention (docs/design.md §3.1): keypoints are (x, y) = (column, row) with pixel centres at
integer coordinates, which is OpenCV's own convention.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from vsad.geometry.fitting import project

COLORS = ("bgr", "rgb")
DEFAULT_MAX_FEATURES = 4000
# Guided matching accepts the best candidate within the window when it is below GUIDED_RATIO x
# the second best in that window. The window already removes most of the ambiguity (distant
# look-alike texture), so this ratio can be looser than the global one.
GUIDED_RATIO = 0.8


@dataclass(frozen=True)
class Features:
    """Keypoints of one image: points (K, 2) float64 (x, y) and descriptors (K, 128) uint8.

    OpenCV's SIFT descriptors are integers in 0..255, so uint8 storage is lossless; it keeps
    the pooled estimator, which holds the features of every sample, at ~150 bytes per keypoint.
    """

    points: np.ndarray
    descriptors: np.ndarray
    image_size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.points)


def to_gray(image, *, color: str = "bgr", name: str = "image") -> np.ndarray:
    """A uint8 (H, W) or (H, W, 3) image (channel order `color`) as a contiguous grey image."""
    if color not in COLORS:
        raise ValueError(f"color: got {color!r}, expected one of {COLORS}")
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"{name}: expected a uint8 image, got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        gray = array
    elif array.ndim == 3 and array.shape[2] == 3:
        code = cv2.COLOR_BGR2GRAY if color == "bgr" else cv2.COLOR_RGB2GRAY
        gray = cv2.cvtColor(np.ascontiguousarray(array), code)
    else:
        raise ValueError(f"{name}: expected an (H, W) or (H, W, 3) image, got shape {array.shape}")
    if min(gray.shape) < 8:
        raise ValueError(f"{name}: image is {gray.shape[0]}x{gray.shape[1]}, expected >= 8x8")
    return np.ascontiguousarray(gray)


def detect_features(
    image,
    *,
    color: str = "bgr",
    max_features: int = DEFAULT_MAX_FEATURES,
    name: str = "image",
) -> Features:
    """SIFT keypoints (the `max_features` strongest; 0 = all) and descriptors of `image`."""
    if isinstance(max_features, bool) or not isinstance(max_features, (int, np.integer)):
        raise ValueError(f"max_features: got {max_features!r}, expected an int >= 0")
    if max_features < 0:
        raise ValueError(f"max_features: got {max_features}, expected an int >= 0")
    gray = to_gray(image, color=color, name=name)
    keypoints, descriptors = cv2.SIFT_create(nfeatures=int(max_features)).detectAndCompute(
        gray, None
    )
    if descriptors is None or not keypoints:
        return Features(np.zeros((0, 2)), np.zeros((0, 128), np.uint8), gray.shape)
    points = np.array([kp.pt for kp in keypoints], dtype=np.float64)
    return Features(points, np.clip(descriptors, 0, 255).astype(np.uint8), gray.shape)


def ratio_matches(a: Features, b: Features, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices (ia, ib) of the matches a[ia] <-> b[ib] that pass Lowe's ratio test."""
    empty = np.zeros(0, dtype=np.int64)
    if len(a) == 0 or len(b) < 2:
        return empty, empty
    knn = cv2.BFMatcher(cv2.NORM_L2).knnMatch(
        a.descriptors.astype(np.float32), b.descriptors.astype(np.float32), k=2
    )
    pairs = [(m[0].queryIdx, m[0].trainIdx) for m in knn if len(m) == 2]
    dist = np.array([(m[0].distance, m[1].distance) for m in knn if len(m) == 2])
    if not pairs:
        return empty, empty
    keep = dist[:, 0] < ratio * dist[:, 1]
    index = np.array(pairs, dtype=np.int64)[keep]
    return index[:, 0], index[:, 1]


def _pairs_within(points_a: np.ndarray, points_b: np.ndarray, radius: float):
    """All (ia, ib) with |points_a[ia] - points_b[ib]| <= radius, by bucketing points_b into a
    grid of `radius`-sized cells and looking at the 3 x 3 cells around each point of a: cost
    linear in the number of candidate pairs instead of quadratic in the keypoint counts."""
    low = points_b.min(axis=0) - 2 * radius
    high = points_b.max(axis=0) + 2 * radius
    cells_b = np.floor((points_b - low) / radius).astype(np.int64)
    cells_a = np.floor((np.clip(points_a, low, high) - low) / radius).astype(np.int64)
    stride = int(cells_b[:, 1].max()) + 3
    keys_b = cells_b[:, 0] * stride + cells_b[:, 1]
    order = np.argsort(keys_b, kind="stable")
    sorted_keys = keys_b[order]
    rows, cols = [], []
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            keys = (cells_a[:, 0] + dx) * stride + (cells_a[:, 1] + dy)
            lo = np.searchsorted(sorted_keys, keys, side="left")
            hi = np.searchsorted(sorted_keys, keys, side="right")
            counts = hi - lo
            total = int(counts.sum())
            if not total:
                continue
            row = np.repeat(np.arange(len(points_a)), counts)
            starts = np.repeat(lo - np.cumsum(counts) + counts, counts)
            rows.append(row)
            cols.append(order[starts + np.arange(total)])
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    close = ((points_a[rows] - points_b[cols]) ** 2).sum(axis=1) <= radius * radius
    return rows[close], cols[close]


def guided_matches(
    a: Features, b: Features, H: np.ndarray, *, radius: float, ratio: float = GUIDED_RATIO
) -> tuple[np.ndarray, np.ndarray]:
    """Matches a[ia] <-> b[ib] where b's keypoint lies within `radius` px of H(a's keypoint) and
    is the best descriptor match among such candidates (ratio test within the window), one
    match per keypoint of b."""
    empty = np.zeros(0, dtype=np.int64)
    if len(a) == 0 or len(b) == 0:
        return empty, empty
    predicted, valid = project(H, a.points)
    index_a = np.flatnonzero(valid)
    r, c = _pairs_within(predicted[index_a], b.points, radius)
    if not len(r):
        return empty, empty
    r = index_a[r]
    diff = a.descriptors[r].astype(np.float32) - b.descriptors[c].astype(np.float32)
    dist = np.einsum("ij,ij->i", diff, diff)
    order = np.lexsort((dist, r))
    r, c, dist = r[order], c[order], dist[order]
    first = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
    has_second = np.r_[first[1:], len(r)] - first > 1
    second = np.where(has_second, dist[np.minimum(first + 1, len(r) - 1)], np.inf)
    keep = dist[first] < (ratio * ratio) * second
    ia, ib, d = r[first][keep], c[first][keep], dist[first][keep]
    # One match per keypoint of b: keep the closest descriptor.
    order = np.lexsort((d, ib))
    ia, ib = ia[order], ib[order]
    first = np.r_[True, ib[1:] != ib[:-1]]
    return ia[first], ib[first]


__all__ = [
    "COLORS",
    "DEFAULT_MAX_FEATURES",
    "Features",
    "detect_features",
    "guided_matches",
    "ratio_matches",
    "to_gray",
]
