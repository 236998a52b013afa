"""vsad.geometry: homography estimation (real and synthetic images), pooling over samples,
fallbacks, grid scaling, view graphs and homography files."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from vsad.geometry import (
    HomographyError,
    PairReport,
    ViewHomographies,
    corner_error,
    estimate_homography,
    estimate_view_homographies,
    from_full_matrix,
    load_homographies,
    match_homography,
    project,
    scale_homography,
    view_graph,
)
from vsad.geometry.views import from_dense_dict

SIZE = (256, 256)


def shared_data() -> Path:
    """The shared data folder: $VSAD_SHARED_DATA, else ../shared/data beside the repository
    (CI clones the repository next to it)."""
    override = os.environ.get("VSAD_SHARED_DATA")
    return Path(override) if override else Path(__file__).resolve().parents[2] / "shared" / "data"


def require(folder: str) -> Path:
    path = shared_data() / folder
    if not path.is_dir():
        pytest.skip(f"shared data folder '{path}' is absent (set VSAD_SHARED_DATA to its path)")
    return path


@pytest.fixture
def np_rng() -> np.random.Generator:
    """A numpy generator with a fresh seed per test; the seed is printed (shown on failure)."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"numpy rng seed = {seed}")
    return np.random.default_rng(seed)


def random_perspective(rng: np.random.Generator, size, amount: float) -> np.ndarray:
    """A homography moving the four image corners by up to `amount` px each."""
    h, w = size
    corners = np.float32([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]])
    moved = corners + rng.uniform(-amount, amount, (4, 2)).astype(np.float32)
    H = cv2.getPerspectiveTransform(corners, moved).astype(np.float64)
    return H / H[2, 2]


def texture_crop(rng: np.random.Generator, side: int, *, rgb: bool = True) -> np.ndarray:
    files = sorted(require("textures").glob("*.png"))
    image = cv2.imread(str(files[rng.integers(len(files))]))
    y = rng.integers(0, image.shape[0] - side + 1)
    x = rng.integers(0, image.shape[1] - side + 1)
    crop = image[y : y + side, x : x + side]
    return cv2.cvtColor(crop, cv2.COLOR_BGR2RGB) if rgb else crop


def two_view_samples(rng, H, n, *, sigma, contrast, size=SIZE):
    """n samples of a textured plane seen by two views: view 0 is a crop of the plane, view 1
    its warp by H; each sample shows another part of the textures, with contrast loss and
    Gaussian noise of `sigma` grey levels."""
    G0 = np.array([[1.0, 0, -64], [0, 1, -64], [0, 0, 1]])  # plane -> view 0
    samples = []
    for _ in range(n):
        plane = texture_crop(rng, size[0] + 128)
        views = []
        for G in (G0, H @ G0):
            view = cv2.warpPerspective(plane, G, size[::-1], flags=cv2.INTER_LINEAR)
            view = (view.astype(np.float64) - 128) * contrast + 128
            view += rng.normal(0.0, sigma, view.shape)
            views.append(np.clip(view, 0, 255).astype(np.uint8))
        samples.append(views)
    return samples


# --- Single pair ------------------------------------------------------------------------------


@pytest.mark.parametrize("target, limit", [("graf2.png", 3.0), ("graf4.png", 6.0)])
def test_graf_ground_truth(target, limit):
    folder = require("homography")
    truth = json.loads((folder / "ground_truth.json").read_text())
    # README and the file's "convention": H maps graf1 pixels (x = column, y = row) to the
    # target file's pixels, at the resolution of these files: our convention exactly.
    H_true = np.array(truth["pairs"][f"graf1.png->{target}"])
    src = cv2.imread(str(folder / "graf1.png"))
    dst = cv2.imread(str(folder / target))
    estimate = match_homography(src, dst)
    assert estimate.ok, estimate.reason
    error = corner_error(estimate.H, H_true, src.shape[:2])
    print(f"graf1 -> {target}: corner error {error:.3f} px, {estimate.inliers} inliers")
    assert error <= limit
    assert estimate.inliers >= 12 and estimate.reprojection_error_px < 1.5
    H = estimate_homography(src, dst)
    assert H.dtype == np.float64 and H.shape == (3, 3) and H[2, 2] == 1.0
    np.testing.assert_array_equal(H, estimate.H)


def test_recovers_random_warp_of_real_texture(np_rng):
    src = texture_crop(np_rng, 320, rgb=False)
    H_true = random_perspective(np_rng, src.shape[:2], 40.0)
    dst = cv2.warpPerspective(src, H_true, src.shape[1::-1], flags=cv2.INTER_LINEAR)
    H = estimate_homography(src, dst)  # BGR, as read by cv2
    error = corner_error(H, H_true, src.shape[:2])
    print(f"corner error {error:.3f} px")
    assert error < 1.0
    # The same pixels as RGB with color="rgb", and as grey, give the same grey image.
    np.testing.assert_array_equal(
        H, estimate_homography(src[..., ::-1].copy(), dst[..., ::-1].copy(), color="rgb")
    )
    gray = [cv2.cvtColor(x, cv2.COLOR_BGR2GRAY) for x in (src, dst)]
    np.testing.assert_array_equal(H, estimate_homography(*gray))


def test_unrelated_images_fail_with_clear_message(np_rng):
    noise = [np_rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8) for _ in range(2)]
    estimate = match_homography(*noise)
    assert not estimate.ok and estimate.H is None and estimate.inliers < 12
    with pytest.raises(HomographyError, match=r"left.png -> right.png: .*RANSAC inliers.*"):
        estimate_homography(*noise, names=("left.png", "right.png"))
    with pytest.raises(HomographyError, match=r"min_inliers=12, ransac_threshold=3.0 px"):
        estimate_homography(*noise)


def test_single_pair_bad_input_names_the_argument(np_rng):
    image = np_rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="src: expected a uint8 image"):
        estimate_homography(image.astype(np.float32), image)
    with pytest.raises(ValueError, match=r"dst: expected an \(H, W\) or \(H, W, 3\) image"):
        estimate_homography(image, image[..., :2].copy())
    with pytest.raises(ValueError, match="color: got 'hsv'"):
        estimate_homography(image, image, color="hsv")
    with pytest.raises(ValueError, match="ratio: got 1.5"):
        estimate_homography(image, image, ratio=1.5)
    with pytest.raises(ValueError, match="min_inliers: got 3"):
        estimate_homography(image, image, min_inliers=3)
    with pytest.raises(ValueError, match="ransac_threshold: got -1"):
        estimate_homography(image, image, ransac_threshold=-1)


# --- Pooled over samples ----------------------------------------------------------------------


def test_pooled_beats_single_samples_on_noisy_views(np_rng):
    H_true = random_perspective(np_rng, SIZE, 40.0)
    samples = two_view_samples(np_rng, H_true, 6, sigma=15.0, contrast=0.55)
    single = []
    for views in samples:
        estimate = match_homography(views[0], views[1], color="rgb")
        single.append(corner_error(estimate.H, H_true, SIZE) if estimate.ok else math.inf)
    homs = estimate_view_homographies(samples, view_graph("all", 2), fallback="identity")
    pooled = corner_error(homs.H[0, 0], H_true, SIZE)
    print(f"single-sample corner errors {np.round(single, 2)}, pooled {pooled:.3f} px")
    assert homs.report[0].status == "ok" and homs.report[0].samples_used >= 4
    assert pooled <= np.median(single)
    assert pooled < 1.0
    # The reverse direction is the inverse of the forward one, exactly consistent.
    product = homs.H[1, 0] @ homs.H[0, 0]
    np.testing.assert_allclose(product / product[2, 2], np.eye(3), atol=1e-9)


def test_pooled_outvotes_a_sample_with_unrelated_views(np_rng):
    H_true = random_perspective(np_rng, SIZE, 30.0)
    samples = two_view_samples(np_rng, H_true, 4, sigma=3.0, contrast=1.0)
    # A sample whose second view shows another object (misplaced part, wrong file).
    samples.insert(2, [samples[0][0], texture_crop(np_rng, SIZE[0])])
    homs = estimate_view_homographies(samples, view_graph("all", 2), progress=True)
    error = corner_error(homs.H[0, 0], H_true, SIZE)
    print(f"corner error {error:.3f} px, report {homs.report[0]}")
    assert error < 1.0
    assert homs.report[0].samples_used == 4


def test_fallback_on_a_view_without_overlap(np_rng, caplog):
    H_true = random_perspective(np_rng, SIZE, 30.0)
    samples = [
        [*views, np_rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)]
        for views in two_view_samples(np_rng, H_true, 3, sigma=3.0, contrast=1.0)
    ]
    graph = view_graph("all", 3)
    with pytest.raises(HomographyError, match=r"views 0 -> 2: .*views 1 -> 2: ") as raised:
        estimate_view_homographies(samples, graph, fallback="error")
    assert "2 of 3 view pairs from 3 samples" in str(raised.value)
    assert "fallback='drop'" in str(raised.value) and "fallback='identity'" in str(raised.value)

    homs = estimate_view_homographies(samples, graph, fallback="identity")
    status = {(r.i, r.j): r.status for r in homs.report}
    assert status == {
        (0, 1): "ok", (0, 2): "fallback", (1, 0): "ok",
        (1, 2): "fallback", (2, 0): "fallback", (2, 1): "fallback",
    }  # fmt: skip
    assert all(r.reason for r in homs.failed_pairs())
    np.testing.assert_array_equal(homs.H[2], np.broadcast_to(np.eye(3), (2, 3, 3)))
    np.testing.assert_array_equal(homs.pair(0, 2), np.eye(3))
    assert corner_error(homs.pair(0, 1), H_true, SIZE) < 1.0
    assert "identity fallback" in caplog.text


def test_default_leaves_a_failing_pair_out_of_the_graph(np_rng):
    """An open arc of cameras under a ring graph: the two ends do not overlap. The pair is
    dropped with a warning naming it; the other pairs and the views stay."""
    H_true = random_perspective(np_rng, SIZE, 30.0)
    samples = [
        [*views, np_rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)]
        for views in two_view_samples(np_rng, H_true, 3, sigma=3.0, contrast=1.0)
    ]
    graph = view_graph("all", 3)
    with pytest.warns(UserWarning, match=r"homography 0 -> 2: left out of the view graph") as w:
        homs = estimate_view_homographies(samples, graph)
    assert len([m for m in w if "left out" in str(m.message)]) == 2  # one per unordered pair
    status = {(r.i, r.j): r.status for r in homs.report}
    assert status == {
        (0, 1): "ok", (0, 2): "dropped", (1, 0): "ok",
        (1, 2): "dropped", (2, 0): "dropped", (2, 1): "dropped",
    }  # fmt: skip
    np.testing.assert_array_equal(homs.neighbors, [[1, -1], [0, -1], [-1, -1]])
    np.testing.assert_array_equal(graph, view_graph("all", 3))  # the argument is not changed
    assert corner_error(homs.pair(0, 1), H_true, SIZE) < 1.0
    with pytest.raises(KeyError):
        homs.pair(0, 2)
    assert [(r.i, r.j) for r in homs.dropped_pairs()] == [(0, 2), (1, 2), (2, 0), (2, 1)]
    summary = homs.summary()
    assert "view pairs used: 2 (0->1, 1->0)" in summary
    assert "0<->2 left out" in summary and "1<->2 left out" in summary
    # The report survives the JSON round trip with its new status.
    restored = from_dense_dict(
        {"neighbors": homs.neighbors.tolist(), "H": homs.H.tolist(),
         "report": [r.to_dict() for r in homs.report]}, "test",
    )  # fmt: skip
    assert [r.status for r in restored.report] == [r.status for r in homs.report]


def test_synthetic_rig_recovers_exact_homographies():
    from vsad.data import make_category

    category = make_category(n_train=6, n_test=0, seed=0)
    graph = view_graph("ring", 5)
    homs = estimate_view_homographies(category.train, graph)
    assert homs.image_size == SIZE
    errors = {}
    for i in range(5):
        for n, j in enumerate(graph[i]):
            errors[(i, int(j))] = corner_error(homs.H[i, n], category.homographies[i, j], SIZE)
    print("corner errors (px):", {k: round(v, 3) for k, v in errors.items()})
    assert max(errors.values()) < 2.0
    assert all(r.status == "ok" and r.samples_used == 6 for r in homs.report)
    assert all(r.reprojection_error_px < 1.0 for r in homs.report)

    # max_samples spreads the chosen samples over the split; only views in the graph are used.
    pair_graph = view_graph("explicit", 5, pairs=[[1], [0], [], [], []])
    few = estimate_view_homographies(category.train, pair_graph, max_samples=2)
    assert [r.samples_used for r in few.report] == [2, 2]
    assert corner_error(few.pair(0, 1), category.homographies[0, 1], SIZE) < 2.0

    exact = from_full_matrix(category.homographies, graph, image_size=SIZE)
    np.testing.assert_array_equal(exact.H[0, 1], category.homographies[0, 1])
    assert all(r.status == "supplied" for r in exact.report)


def test_pooled_bad_input_names_the_argument(np_rng):
    image = np_rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    graph = view_graph("ring", 3)
    with pytest.raises(ValueError, match="samples: sample 0 has 2 views, expected 3"):
        estimate_view_homographies([[image, image]], graph)
    with pytest.raises(ValueError, match=r"samples: sample 0 view 1: image is 128x256"):
        estimate_view_homographies([[image, image[:128], image]], graph)
    with pytest.raises(ValueError, match="samples: got no samples"):
        estimate_view_homographies([], graph)
    with pytest.raises(ValueError, match="fallback: got 'zero'"):
        estimate_view_homographies([[image] * 3], graph, fallback="zero")
    with pytest.raises(ValueError, match="color: got 'bgra'"):
        estimate_view_homographies([], graph, color="bgra")
    with pytest.raises(ValueError, match="max_samples: got 0"):
        estimate_view_homographies([[image] * 3], graph, max_samples=0)
    with pytest.raises(ValueError, match=r"neighbors\[1\] lists view 1 itself"):
        estimate_view_homographies([[image] * 3], [[1], [1], [0]])
    with pytest.raises(ValueError, match=r"neighbors\[0, 0\] = 3 is out of range"):
        estimate_view_homographies([[image] * 3], [[3], [0], [0]])


# --- Scaling to feature grids -----------------------------------------------------------------


def test_scale_homography_maps_grid_points_like_image_points(np_rng):
    H = random_perspective(np_rng, SIZE, 40.0)
    for stride in (2, 8, (4.0, 2.5), (np_rng.uniform(1.2, 5), np_rng.uniform(1.2, 5))):
        sy, sx = (stride, stride) if np.isscalar(stride) else stride
        H_f = scale_homography(H, stride)
        grid = np_rng.uniform(0, 30, (50, 2))
        image = np.c_[sx * grid[:, 0] + (sx - 1) / 2, sy * grid[:, 1] + (sy - 1) / 2]
        mapped, _ = project(H, image)
        expected = np.c_[(mapped[:, 0] - (sx - 1) / 2) / sx, (mapped[:, 1] - (sy - 1) / 2) / sy]
        np.testing.assert_allclose(project(H_f, grid)[0], expected, atol=1e-9)
        assert H_f[2, 2] == pytest.approx(1.0)
    # "corner" offset and a destination grid of another size.
    grid = np_rng.uniform(0, 30, (20, 2))
    H_f = scale_homography(H, 4, offset="corner", dst_stride=(2, 3))
    mapped, _ = project(H, 4 * grid)
    np.testing.assert_allclose(project(H_f, grid)[0], mapped / [3, 2], atol=1e-9)


def test_scale_homography_torch_batches_match_numpy(np_rng):
    H = np.stack([random_perspective(np_rng, SIZE, 30.0) for _ in range(12)]).reshape(2, 3, 2, 3, 3)
    out = scale_homography(torch.from_numpy(H).float(), (4, 2))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64 and out.shape == H.shape
    np.testing.assert_allclose(out.numpy(), scale_homography(H.astype(np.float32), (4, 2)))
    np.testing.assert_allclose(out.numpy(), scale_homography(H, (4, 2)), rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match=r"H: expected shape \(\.\.\., 3, 3\)"):
        scale_homography(torch.zeros(3, 4), 2)
    with pytest.raises(ValueError, match="stride: got 0"):
        scale_homography(H, 0)
    with pytest.raises(ValueError, match="offset: got 'middle'"):
        scale_homography(H, 2, offset="middle")


def blob(center, size: int = 512, sigma: float = 5.0) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    return np.exp(-((x - center[0]) ** 2 + (y - center[1]) ** 2) / (2 * sigma**2)).astype(
        np.float32
    )


def centroid(image: np.ndarray) -> np.ndarray:
    y, x = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    weight = image / image.sum()
    return np.array([(weight * x).sum(), (weight * y).sum()])


@pytest.mark.parametrize("stride", [4, (2, 4)])
def test_scale_convention_matches_area_downsampling(np_rng, stride):
    """A blob downsampled with cv2.resize(INTER_AREA) in both views: its centroid in the
    downsampled source, mapped by the "centre" grid homography, lands on its centroid in the
    downsampled destination; the "corner" convention misses by (A - I) o / s, A the zoom."""
    zoom, angle = np_rng.uniform(0.5, 0.7), np_rng.uniform(-0.5, 0.5)
    c, s = zoom * np.cos(angle), zoom * np.sin(angle)
    H = np.array([[c, -s, 0], [s, c, 0], [*np_rng.uniform(-2e-4, 2e-4, 2), 1]])
    H = np.array([[1, 0, 255.5], [0, 1, 255.5], [0, 0, 1]]) @ H
    H = H @ np.array([[1, 0, -255.5], [0, 1, -255.5], [0, 0, 1]])
    sy, sx = (stride, stride) if np.isscalar(stride) else stride
    small = (int(512 / sx), int(512 / sy))  # cv2 size: (width, height)
    for _ in range(2):
        src = blob(np_rng.uniform(128, 384, 2))
        dst = cv2.warpPerspective(src, H, (512, 512), flags=cv2.INTER_LINEAR)
        in_src = centroid(cv2.resize(src, small, interpolation=cv2.INTER_AREA))
        in_dst = centroid(cv2.resize(dst, small, interpolation=cv2.INTER_AREA))
        miss = {
            offset: np.linalg.norm(
                project(scale_homography(H, stride, offset=offset), in_src[None])[0][0] - in_dst
            )
            for offset in ("centre", "corner")
        }
        print(f"zoom {zoom:.2f}: centroid miss in grid cells {miss}")
        assert miss["centre"] < 0.03
        assert miss["corner"] > 0.08


# --- View graphs ------------------------------------------------------------------------------


def test_view_graphs():
    np.testing.assert_array_equal(view_graph("ring", 4), [[3, 1], [0, 2], [1, 3], [2, 0]])
    np.testing.assert_array_equal(view_graph("chain", 3), [[-1, 1], [0, 2], [1, -1]])
    np.testing.assert_array_equal(view_graph("all", 3), [[1, 2], [0, 2], [0, 1]])
    np.testing.assert_array_equal(view_graph("ring", 2), [[1], [0]])
    np.testing.assert_array_equal(view_graph("ring", 5, neighbors_per_view=4)[0], [4, 1, 3, 2])
    explicit = view_graph("explicit", 3, pairs=[[1, 2], [0], []])
    np.testing.assert_array_equal(explicit, [[1, 2], [0, -1], [-1, -1]])
    for table in (view_graph("ring", 5), view_graph("chain", 6, neighbors_per_view=3)):
        assert table.dtype == np.int64


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kind="star", num_views=3), "kind: got 'star'"),
        (dict(kind="ring", num_views=1), "num_views: got 1, expected an int >= 2"),
        (dict(kind="ring", num_views=4, neighbors_per_view=0), "neighbors_per_view: got 0"),
        (dict(kind="explicit", num_views=2), "pairs: required with kind='explicit'"),
        (dict(kind="ring", num_views=3, pairs=[[1]]), "pairs: only used with kind='explicit'"),
        (dict(kind="explicit", num_views=2, pairs=[[1]]), "pairs: got 1 neighbour lists"),
        (dict(kind="explicit", num_views=2, pairs=[[2], [0]]), r"pairs\[0, 0\] = 2 is out of"),
        (dict(kind="explicit", num_views=2, pairs=[[1], [1]]), r"pairs\[1\] lists view 1 itself"),
        (dict(kind="explicit", num_views=3, pairs=[[1, 1], [0], [0]]), "lists a view twice"),
        (dict(kind="explicit", num_views=2, pairs=[[1.0], [0]]), r"pairs\[0\]: got 1.0"),
    ],
)
def test_view_graph_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        view_graph(**kwargs)


# --- Files ------------------------------------------------------------------------------------


def random_view_homographies(rng, graph) -> ViewHomographies:
    M, N = graph.shape
    H = np.broadcast_to(np.eye(3), (M, N, 3, 3)).copy()
    report = []
    for i in range(M):
        for n, j in enumerate(graph[i]):
            if j >= 0:
                H[i, n] = random_perspective(rng, SIZE, 30.0)
                failed = rng.random() < 0.3
                report.append(
                    PairReport(
                        i, int(j), int(rng.integers(100)), int(rng.integers(100, 200)), 3,
                        math.nan if failed else float(rng.random()),
                        "fallback" if failed else "ok", "no matches" if failed else "",
                    )
                )  # fmt: skip
    return ViewHomographies(H, graph, SIZE, report)


def same_reports(a, b) -> bool:
    return [r.to_dict() for r in a] == [r.to_dict() for r in b]


def test_json_round_trip_is_exact(np_rng, tmp_path):
    homs = random_view_homographies(np_rng, view_graph("chain", 4))
    path = homs.to_json(tmp_path / "sub" / "homographies.json")
    assert sorted(p.name for p in path.parent.iterdir()) == ["homographies.json"]  # no temp file
    back = ViewHomographies.from_json(path)
    np.testing.assert_array_equal(back.H, homs.H)
    np.testing.assert_array_equal(back.neighbors, homs.neighbors)
    assert back.image_size == SIZE and same_reports(back.report, homs.report)
    # Overwriting replaces the file; load_homographies reads the same dense format.
    homs.to_json(path)
    loaded = load_homographies(path, 4, neighbors=view_graph("chain", 4))
    np.testing.assert_array_equal(loaded.H, homs.H)


def test_load_mapping_and_npy(np_rng, tmp_path):
    H01, H10, H12 = (random_perspective(np_rng, SIZE, 30.0) for _ in range(3))
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps({"0->1": (2.5 * H01).tolist(), "1 -> 0": H10.tolist(),
                                "1->2": H12.tolist()}))  # fmt: skip
    homs = load_homographies(path, 3)
    np.testing.assert_array_equal(homs.neighbors, [[1, -1], [0, 2], [-1, -1]])
    np.testing.assert_allclose(homs.pair(0, 1), H01, rtol=1e-12)  # normalised to H[2, 2] = 1
    np.testing.assert_array_equal(homs.H[2], np.broadcast_to(np.eye(3), (2, 3, 3)))
    subset = load_homographies(path, 3, neighbors=[[1], [0], [-1]])
    np.testing.assert_array_equal(subset.pair(1, 0), H10)
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"pairs": {"0->1": H01.tolist()}, "image_size": [256, 256]}))
    assert load_homographies(wrapped, 2).image_size == SIZE

    graph = view_graph("ring", 3)
    full = np.stack([np.stack([random_perspective(np_rng, SIZE, 30.0) for _ in range(3)])] * 3)
    np.save(tmp_path / "full.npy", full)
    from_full = load_homographies(tmp_path / "full.npy", 3, neighbors=graph)
    np.testing.assert_array_equal(from_full.pair(0, 2), full[0, 2])
    np.save(tmp_path / "slots.npy", from_full.H)
    np.testing.assert_array_equal(
        load_homographies(tmp_path / "slots.npy", 3, neighbors=graph).H, from_full.H
    )


def test_view_homographies_validates_its_fields(np_rng):
    graph = view_graph("ring", 3)
    with pytest.raises(ValueError, match=r"H: expected shape \(3, 2, 3, 3\)"):
        ViewHomographies(np.zeros((3, 1, 3, 3)), graph)
    with pytest.raises(ValueError, match="H: has non-finite entries"):
        ViewHomographies(np.full((3, 2, 3, 3), np.nan), graph)
    with pytest.raises(ValueError, match="image_size: got"):
        ViewHomographies(np.zeros((3, 2, 3, 3)), graph, image_size=(0, 5))
    homs = random_view_homographies(np_rng, graph)
    with pytest.raises(KeyError, match="pair 0->0: view 0 is not a neighbour of view 0"):
        homs.pair(0, 0)
    assert issubclass(HomographyError, ValueError)


def test_load_errors_name_the_file_and_key(np_rng, tmp_path):
    H = random_perspective(np_rng, SIZE, 30.0).tolist()

    def write(name, text):
        path = tmp_path / name
        path.write_text(text)
        return path

    cases = [
        (write("key.json", json.dumps({"0-1": H})), 2, {}, r"key '0-1' is not a pair of views"),
        (write("range.json", json.dumps({"0->5": H})), 2, {}, r"key '0->5' names views outside"),
        (write("nan.json", '{"0->1": [[NaN, 0, 0], [0, 1, 0], [0, 0, 1]]}'), 2, {},
         r"pair \"0->1\": the matrix has non-finite entries"),
        (write("singular.json", json.dumps({"0->1": [[1, 2, 3], [2, 4, 6], [0, 0, 1]]})), 2, {},
         r"pair \"0->1\": the matrix is singular"),
        (write("shape.json", json.dumps({"0->1": [[1, 0], [0, 1]]})), 2, {},
         r"pair \"0->1\": expected a 3x3 matrix, got shape \(2, 2\)"),
        (write("missing.json", json.dumps({"0->1": H})), 2, {"neighbors": [[1], [0]]},
         r"no homography for pair \"1->0\" \(neighbors\[1, 0\]\)"),
        (write("dense.json", json.dumps({"neighbors": [[1], [0]], "H": [H]})), 2, {},
         r"key \"H\" has shape \(1, 3, 3\), expected \(2, 1, 3, 3\)"),
        (write("views.json", json.dumps({"neighbors": [[1], [0]], "H": [[H], [H]]})), 3, {},
         r"neighbors: has 2 rows, expected one per view \(num_views=3\)"),
        (write("broken.json", "{"), 2, {}, "not valid JSON"),
        (write("list.json", "[1, 2]"), 2, {}, "expected a JSON object"),
    ]  # fmt: skip
    for path, num_views, kwargs, message in cases:
        with pytest.raises(ValueError, match=message) as raised:
            load_homographies(path, num_views, **kwargs)
        assert path.name in str(raised.value)

    np.save(tmp_path / "h.npy", np.zeros((2, 1, 3, 3)))
    with pytest.raises(ValueError, match="neighbors: required to read"):
        load_homographies(tmp_path / "h.npy", 2)
    with pytest.raises(ValueError, match=r"h.npy', pair \"0->1\": the matrix is singular"):
        load_homographies(tmp_path / "h.npy", 2, neighbors=[[1], [0]])
    with pytest.raises(ValueError, match=r"array of shape \(2, 1, 3, 3\), expected \(3, 2"):
        load_homographies(tmp_path / "h.npy", 3, neighbors=view_graph("ring", 3))
    with pytest.raises(ValueError, match="path: .*'.txt', expected '.json' or '.npy'"):
        load_homographies(tmp_path / "h.txt", 2)
    with pytest.raises(FileNotFoundError, match="absent.json' does not exist"):
        load_homographies(tmp_path / "absent.json", 2)
    with pytest.raises(ValueError, match="num_views: got 0"):
        load_homographies(tmp_path / "h.npy", 0)
    with pytest.raises(ValueError, match=r"H_full: expected shape \(M, M, 3, 3\)"):
        from_full_matrix(np.zeros((2, 3, 3, 3)), [[1], [0]])
