"""Registering every view to its camera's reference frame before feature extraction (`align`).

Units placed by hand sit a few degrees and a few per cent differently on the station every
time; each camera then sees the unit rotated, shifted and scaled in its image, and a cell's
features are compared with normal features of another part of the unit. Registration undoes
that: per camera, the view of the first training sample is the reference; every view (training
and test) is matched to it (SIFT keypoints, Lowe's ratio test, `vsad.geometry.features`) and a
similarity transform (rotation, uniform scale, translation; `cv2.estimateAffinePartial2D` with
RANSAC) maps it onto the reference. Features, the memory bank and the scores live in the
camera's reference frame; the anomaly maps of a prediction are warped back into the view's own
frame.

Which frame (`align_frame`): "median" (default) places the frame at the training units' median
placement — the reference view's transform composed with the inverse of the median of all
training transforms (`ViewAligner.centre_frame`); "first" is the reference view's own frame.
Why: a warp moves part of the view out of the frame and fills the strip it leaves with
replicated border pixels, and those strips score as anomalies wherever few training units had
one. Relative to the first unit, whose placement is as random as any other's, the strips are as
large as the spread of placements and all on the side away from it; about the median unit they
are about half that and spread over all sides (real-photo benchmark, tuning seeds:
BENCHMARKS.md, "Centring the registration frame").

A view whose transform cannot be estimated (too few matches or inliers, or an implausible
scale) stays where it is, with a warning naming it. Warps run on the model's tensors with
`torch.nn.functional.grid_sample`, so they run on the detector's device; only the keypoints are
computed on the CPU from the uint8 views.
"""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from vsad.geometry.features import Features, detect_features, ratio_matches

ALIGN_MODES = ("none", "similarity")
#: Where a camera's reference frame sits: the training units' median placement, or the first
#: training unit's placement (the only frame before "median" existed; models saved then load
#: with it).
ALIGN_FRAMES = ("median", "first")
#: Matches that must agree with the transform (RANSAC inliers) before it is trusted.
MIN_INLIERS = 12
RANSAC_SEED = 20261208
#: Lowe's ratio for matching a view to its reference.
RATIO = 0.75
#: RANSAC reprojection threshold, view pixels.
RANSAC_PX = 3.0
#: Keypoints per view: the strongest 1,000 register as well as all (photos of the real-photo
#: benchmark have 200–650 at 256², so the cap does not bind there) and keep a heavily textured
#: view's detection and matching bounded (305 → 162 ms per five-view sample on the synthetic
#: category).
MAX_KEYPOINTS = 1000
#: Scales outside this range are not a unit moved on a station: the estimate is refused.
SCALE_RANGE = (0.67, 1.5)


class ViewAligner:
    """Per camera, the reference view's keypoints and the frame; estimates and applies the
    registrations."""

    def __init__(self, references: list[np.ndarray], frame: np.ndarray | None = None) -> None:
        """references: one (H, W) uint8 grey image per camera (the reference views).
        frame: (M, 2, 3) similarity transforms reference view -> reference frame (default the
        identity: the frame of the reference views themselves)."""
        if not references:
            raise ValueError("references: got no views, expected one grey image per camera")
        self.references = [np.ascontiguousarray(r, dtype=np.uint8) for r in references]
        self.features: list[Features] = [
            detect_features(r, max_features=MAX_KEYPOINTS, name="reference")
            for r in self.references
        ]
        self.size = self.references[0].shape[:2]
        identity = np.stack([np.eye(2, 3)] * len(self.references))
        self.frame = identity if frame is None else _check_frame(frame, len(self.references))

    @classmethod
    def from_views(cls, views: list[np.ndarray]) -> ViewAligner:
        """The references from one sample's (H, W, 3) uint8 RGB views."""
        return cls([cv2.cvtColor(v, cv2.COLOR_RGB2GRAY) for v in views])

    # -- estimation -----------------------------------------------------------------------
    def estimate(self, views: list[np.ndarray], *, where: str = "views") -> np.ndarray:
        """(M, 2, 3) float64 similarity transforms, view pixels -> reference-frame pixels
        (OpenCV's convention: pixel centres at integers); the identity where registration
        failed, with a warning naming `where`[view]."""
        return self.in_frame(*self.register(views, where=where))

    def register(
        self, views: list[np.ndarray], *, where: str = "views", warn: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """(M, 2, 3) transforms view pixels -> reference-view pixels and (M,) bool, whether
        each view registered (the identity where not, with a warning naming `where`[view]
        unless warn=False: fit sums the training units' failures up in one warning)."""
        if len(views) != len(self.references):
            raise ValueError(
                f"{where}: got {len(views)} views, expected {len(self.references)} (one per "
                "reference view)"
            )
        out = np.zeros((len(views), 2, 3))
        registered = np.ones(len(views), bool)
        for m, view in enumerate(views):
            matrix = self._estimate_one(m, view)
            if matrix is None:
                registered[m] = False
                matrix = np.eye(2, 3)
            out[m] = matrix
        if warn and not registered.all():
            warnings.warn(
                f"{where}: views {np.flatnonzero(~registered).tolist()} could not be registered "
                f"to their reference view (fewer than {MIN_INLIERS} consistent keypoint "
                "matches); scored unaligned",
                stacklevel=3,
            )
        return out, registered

    def in_frame(self, matrices: np.ndarray, registered: np.ndarray) -> np.ndarray:
        """register()'s transforms continued into the reference frame (frame ∘ matrix); a view
        that did not register stays where it is (the identity)."""
        out = np.stack([np.eye(2, 3)] * len(matrices))
        for m in np.flatnonzero(registered):
            out[m] = _compose(self.frame[m], matrices[m])
        return out

    def centre_frame(self, registrations: list[tuple[np.ndarray, np.ndarray]]) -> None:
        """Puts each camera's reference frame at the median placement of the training units
        (`registrations`: register()'s results for every training sample): frame = the
        inverse of the median transform, per parameter (log-scale, angle, and the shift of the
        view centre). A camera none of whose views registered keeps its frame."""
        centre = np.array([(self.size[1] - 1) / 2, (self.size[0] - 1) / 2])
        frames = self.frame.copy()
        for m in range(len(self.references)):
            placements = [
                _similarity_parameters(matrices[m], centre)
                for matrices, registered in registrations
                if registered[m]
            ]
            if placements:
                median = _similarity_from(*np.median(np.array(placements), axis=0), centre)
                frames[m] = cv2.invertAffineTransform(median)
        self.frame = frames

    def _estimate_one(self, m: int, view: np.ndarray) -> np.ndarray | None:
        found = detect_features(view, color="rgb", max_features=MAX_KEYPOINTS, name=f"view {m}")
        ia, ib = ratio_matches(self.features[m], found, RATIO)
        if len(ia) < MIN_INLIERS:
            return None
        # RANSAC draws from OpenCV's per-thread generator, whose state depends on whatever ran
        # in the process before; reseeded, a view registers the same in every process, as a
        # saved or exported model must to score alike when loaded elsewhere (a view with few,
        # chance matches would otherwise register differently).
        cv2.setRNGSeed(RANSAC_SEED)
        matrix, inliers = cv2.estimateAffinePartial2D(
            found.points[ib], self.features[m].points[ia], method=cv2.RANSAC,
            ransacReprojThreshold=RANSAC_PX, maxIters=2000, confidence=0.995,
        )  # fmt: skip
        if matrix is None or int(inliers.sum()) < MIN_INLIERS:
            return None
        scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
        if not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]:
            return None
        return matrix

    # -- warps ----------------------------------------------------------------------------
    def to_reference(self, images: torch.Tensor, matrices: np.ndarray) -> torch.Tensor:
        """(M, C, s, s) views (any resolution of the (H, W) views) warped into the reference
        frames; borders replicated."""
        return _warp(images, _theta(matrices, self.size, inverse=True))

    def to_view(self, maps: torch.Tensor, matrices: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(N, M, H, W) maps in the reference frames back into their views' frames
        (matrices (N, M, 2, 3), as `estimate` returns per sample)."""
        N, M = maps.shape[:2]
        theta = _theta(np.asarray(matrices).reshape(N * M, 2, 3), self.size, inverse=False)
        return _warp(maps.reshape(N * M, 1, *maps.shape[2:]), theta).reshape(maps.shape)

    def warp_view(self, view: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        """One (H, W, 3) uint8 view in its reference frame (for the homography estimation)."""
        h, w = view.shape[:2]
        return cv2.warpAffine(
            view, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )

    # -- persistence ----------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "align.references": torch.from_numpy(np.stack(self.references)),
            "align.frame": torch.from_numpy(np.ascontiguousarray(self.frame, np.float64)),
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> ViewAligner:
        """The aligner that tensors() saved; without "align.frame" (a model saved before
        align_frame existed) the frame is the reference views' own."""
        if "align.references" not in tensors:
            raise ValueError(
                "weights: 'align.references' is missing (a model fitted with align="
                "'similarity' keeps its reference views)"
            )
        refs = tensors["align.references"]
        if refs.dtype != torch.uint8 or refs.dim() != 3:
            raise ValueError(
                f"weights: 'align.references' is {refs.dtype} {tuple(refs.shape)}, expected "
                "uint8 (M, H, W)"
            )
        frame = tensors.get("align.frame")
        if frame is not None:
            if frame.dtype != torch.float64 or tuple(frame.shape) != (refs.shape[0], 2, 3):
                raise ValueError(
                    f"weights: 'align.frame' is {frame.dtype} {tuple(frame.shape)}, expected "
                    f"float64 ({refs.shape[0]}, 2, 3)"
                )
            frame = frame.numpy()
        return cls(list(refs.numpy()), frame)


def _check_frame(frame: np.ndarray, cameras: int) -> np.ndarray:
    frame = np.asarray(frame, dtype=np.float64)
    if frame.shape != (cameras, 2, 3) or not np.isfinite(frame).all():
        raise ValueError(
            f"frame: got an array of shape {frame.shape}, expected finite ({cameras}, 2, 3) "
            "similarity transforms (one per camera)"
        )
    return frame.copy()


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The 2×3 transform `outer` ∘ `inner` (inner applied first)."""
    linear = outer[:, :2] @ inner[:, :2]
    shift = outer[:, :2] @ inner[:, 2] + outer[:, 2]
    return np.hstack([linear, shift[:, None]])


def _similarity_parameters(matrix: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """(log-scale, angle, dx, dy) of a 2×3 similarity: it scales by e^log-scale and turns by
    angle about `centre`, then moves the centre by (dx, dy). Parameters about the view centre
    (not the pixel origin) make their median a placement in the middle of the others."""
    scale = np.sqrt(abs(np.linalg.det(matrix[:, :2])))
    angle = np.arctan2(matrix[1, 0], matrix[0, 0])
    shift = matrix[:, :2] @ centre + matrix[:, 2] - centre
    return np.array([np.log(scale), angle, shift[0], shift[1]])


def _similarity_from(log_scale, angle, dx, dy, centre: np.ndarray) -> np.ndarray:
    """The 2×3 similarity with _similarity_parameters (log_scale, angle, dx, dy)."""
    scale = np.exp(log_scale)
    linear = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return np.hstack([linear, (centre + np.array([dx, dy]) - linear @ centre)[:, None]])


def _normalizer(size: tuple[int, int]) -> np.ndarray:
    """Pixel (x, y) -> grid_sample's normalised coordinates (align_corners=False)."""
    h, w = size
    return np.array([[2 / w, 0, 1 / w - 1], [0, 2 / h, 1 / h - 1], [0, 0, 1]])


def _theta(matrices: np.ndarray, size: tuple[int, int], *, inverse: bool) -> torch.Tensor:
    """affine_grid's θ (output normalised -> input normalised) for every 2×3 pixel transform
    view -> reference: into the reference frame the grid samples the view at A⁻¹·p
    (inverse=True); back into the view frame the reference map at A·p."""
    norm = _normalizer(size)
    out = []
    for matrix in matrices:
        full = np.vstack([matrix, [0, 0, 1]])
        if inverse:
            full = np.linalg.inv(full)
        out.append((norm @ full @ np.linalg.inv(norm))[:2])
    return torch.tensor(np.stack(out), dtype=torch.float32)


def _warp(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    theta = theta.to(images.device, images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
