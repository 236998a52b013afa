"""Pictures of anomaly maps (overlay, panel, files on disk) and metric curves (points, plots)."""

from __future__ import annotations

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from vsad.data import read_image
from vsad.eval import auroc, average_precision
from vsad.viz import (
    COLORMAPS,
    colorize,
    overlay,
    plot_metric_curves,
    plot_roc_curves,
    pr_points,
    roc_points,
    safe_name,
    save_overlays,
    thin_curve,
    view_panel,
)
from vsad.viz.overlay import colormap_lut

# np.trapz was renamed in numpy 2.0; the project supports numpy >= 1.24.
trapezoid = getattr(np, "trapezoid", None) or getattr(np, "trapz")  # noqa: B009


@pytest.fixture
def nrng() -> np.random.Generator:
    """A numpy generator with a fresh seed per test; the seed is printed (shown on failure)."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"numpy seed = {seed}")
    return np.random.default_rng(seed)


def random_image(rng, height, width) -> np.ndarray:
    return rng.integers(20, 236, (height, width, 3), dtype=np.uint8)


def random_map(rng, height, width) -> np.ndarray:
    """Smooth positive scores with one clear maximum, like a real anomaly map."""
    noise = rng.random((height, width)).astype(np.float32) + 0.1
    values = cv2.GaussianBlur(noise, (0, 0), 2.0)
    y, x = rng.integers(0, height), rng.integers(0, width)
    values[y, x] = values.max() + 0.5 + float(rng.random())
    return values


def random_mask(rng, height, width) -> np.ndarray:
    """A few ellipses (some may touch the border) plus speckles: regions with holes."""
    mask = np.zeros((height, width), np.uint8)
    for _ in range(int(rng.integers(1, 5))):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(2, max(3, width // 4))), int(rng.integers(2, max(3, height // 4))))
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    mask[rng.random(mask.shape) < 0.01] ^= 1
    if not mask.any():
        mask[height // 2, width // 2] = 1
    return mask.astype(bool)


def inner_boundary(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask (the image border counts as outside)."""
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    eroded = cv2.erode(
        mask.astype(np.uint8), cross, borderType=cv2.BORDER_CONSTANT, borderValue=0
    ).astype(bool)
    return mask & ~eroded


def random_sample(rng, sizes):
    images = [random_image(rng, h, w) for h, w in sizes]
    maps = [random_map(rng, h, w) for h, w in sizes]
    masks = [random_mask(rng, h, w) for h, w in sizes]
    return images, maps, masks


# ------------------------------------------------------------------------------ overlay


def test_overlay_shape_dtype_and_inputs_untouched(nrng):
    height, width = int(nrng.integers(8, 200)), int(nrng.integers(8, 200))
    image, values = random_image(nrng, height, width), random_map(nrng, height, width)
    image_before, values_before = image.copy(), values.copy()
    out = overlay(image, values, mask=random_mask(nrng, height, width))
    assert out.shape == (height, width, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(image, image_before)
    np.testing.assert_array_equal(values, values_before)
    # Grey images, float64 and torch maps are accepted and give the same picture.
    grey = image[:, :, 0]
    np.testing.assert_array_equal(
        overlay(grey, values), overlay(np.repeat(grey[:, :, None], 3, axis=2), values)
    )
    np.testing.assert_array_equal(overlay(image, torch.from_numpy(values)), overlay(image, values))
    np.testing.assert_array_equal(overlay(image, values.astype(np.float64)), overlay(image, values))


@pytest.mark.parametrize("color", [(255, 255, 255), (0, 255, 0)])
def test_overlay_contour_is_exactly_the_mask_boundary(nrng, color):
    height, width = int(nrng.integers(24, 160)), int(nrng.integers(24, 160))
    image, values = random_image(nrng, height, width), random_map(nrng, height, width)
    mask = random_mask(nrng, height, width)
    plain = overlay(image, values, vmin=0.0, vmax=2.0)
    outlined = overlay(image, values, mask=mask, vmin=0.0, vmax=2.0, contour_color=color)
    boundary = inner_boundary(mask)
    assert boundary.any()
    # Every boundary pixel, and nothing else, is painted in the contour colour.
    assert np.all(outlined[boundary] == np.array(color, np.uint8))
    np.testing.assert_array_equal(outlined[~boundary], plain[~boundary])
    # An empty mask draws nothing.
    np.testing.assert_array_equal(
        overlay(image, values, mask=np.zeros_like(mask)), overlay(image, values)
    )


@pytest.mark.parametrize("colormap", ["jet", "turbo", "inferno"])
def test_hottest_region_is_the_top_of_the_colormap(nrng, colormap):
    height, width = int(nrng.integers(16, 120)), int(nrng.integers(16, 120))
    image, values = random_image(nrng, height, width), random_map(nrng, height, width)
    hottest = np.unravel_index(np.argmax(values), values.shape)
    coldest = np.unravel_index(np.argmin(values), values.shape)
    code = getattr(cv2, f"COLORMAP_{colormap.upper()}")
    top = cv2.applyColorMap(np.array([[255]], np.uint8), code)[0, 0, ::-1]
    bottom = cv2.applyColorMap(np.array([[0]], np.uint8), code)[0, 0, ::-1]

    heat_only = overlay(image, values, alpha=1.0, colormap=colormap)
    np.testing.assert_array_equal(heat_only[hottest], top)
    np.testing.assert_array_equal(heat_only[coldest], bottom)
    np.testing.assert_array_equal(heat_only, colorize(values, colormap=colormap))

    blended = overlay(image, values, alpha=0.5, colormap=colormap).astype(int)
    expected = 0.5 * image[hottest].astype(float) + 0.5 * top.astype(float)
    assert np.all(np.abs(blended[hottest] - expected) <= 1)
    np.testing.assert_array_equal(overlay(image, values, alpha=0.0), image)


def test_shared_range_gives_equal_colours_for_equal_values(nrng):
    height, width = int(nrng.integers(16, 120)), int(nrng.integers(16, 120))
    image, first = random_image(nrng, height, width), random_map(nrng, height, width)
    second = first.copy()
    region = np.zeros((height, width), bool)
    region[: height // 3, : width // 3] = True
    second[region] = first.max() * 3 + 1  # a much hotter defect elsewhere
    low, high = 0.0, float(second.max())
    a = overlay(image, first, vmin=low, vmax=high)
    b = overlay(image, second, vmin=low, vmax=high)
    np.testing.assert_array_equal(a[~region], b[~region])
    # Each map's own range would make the same values look different.
    assert not np.array_equal(overlay(image, first)[~region], overlay(image, second)[~region])
    # Values outside the range are clipped to the ends of the colormap.
    lut = colormap_lut("jet")
    below = colorize(first, vmin=float(first.max()) + 1, vmax=float(first.max()) + 2)
    above = colorize(first, vmin=-2.0, vmax=-1.0)
    assert np.all(below == lut[0]) and np.all(above == lut[255])
    # A constant map under its own range shows no hot spot.
    assert np.all(colorize(np.full((5, 7), 0.3, np.float32)) == lut[0])


def _bad_overlay_calls(rng):
    image, values = random_image(rng, 20, 30), random_map(rng, 20, 30)
    nan_map = values.copy()
    nan_map[3, 4] = np.nan
    return [
        (dict(image=image, anomaly_map=values.T), "anomaly_map.*\\(30, 20\\).*\\(20, 30\\)"),
        (dict(image=image, anomaly_map=nan_map), "anomaly_map.*NaN"),
        (dict(image=image, anomaly_map=values[None]), "anomaly_map.*\\(1, 20, 30\\)"),
        (dict(image=image, anomaly_map=values, mask=np.ones((20, 31), bool)), "mask.*\\(20, 31\\)"),
        (dict(image=image.astype(np.float32), anomaly_map=values), "image.*float32.*uint8"),
        (dict(image=image[:, :, :2], anomaly_map=values), "image.*\\(20, 30, 2\\)"),
        (dict(image=image, anomaly_map=values, vmin=2.0, vmax=1.0), "vmin.*vmax"),
        (dict(image=image, anomaly_map=values, vmin=float("inf")), "vmin.*finite"),
        (dict(image=image, anomaly_map=values, alpha=1.5), "alpha.*1.5"),
        (dict(image=image, anomaly_map=values, colormap="nope"), "colormap.*'nope'"),
        (dict(image=image, anomaly_map=values, contour_color=(0, 0, 300)), "contour_color"),
    ]


def test_overlay_rejects_bad_inputs_naming_the_argument(nrng):
    for kwargs, pattern in _bad_overlay_calls(nrng):
        with pytest.raises(ValueError, match=pattern):
            overlay(**kwargs)
    assert "jet" in COLORMAPS


# -------------------------------------------------------------------------------- panel


def test_view_panel_size(nrng):
    views = int(nrng.integers(2, 6))
    images, maps, masks = random_sample(nrng, [(256, 256)] * views)
    scores = [float(m.max()) for m in maps]
    panel = view_panel(
        images,
        maps,
        masks=masks,
        view_scores=scores,
        sample_score=max(scores),
        threshold=1.0,
        title="NG/HS/S0002",
    )
    assert panel.dtype == np.uint8 and panel.ndim == 3 and panel.shape[2] == 3
    tiles = views * 256 + (views - 1) * 4
    assert tiles < panel.shape[1] < tiles + 200  # plus the colour scale
    assert 2 * 256 < panel.shape[0] < 2 * 256 + 150  # plus captions and header

    # The colour lookup table is built once per colour map, not per panel (its speed is
    # measured in bench/test_viz_panel.py, never asserted here).
    from vsad.viz.overlay import _lut

    before = _lut.cache_info()
    view_panel(images, maps, masks=masks)
    view_panel(images, maps, masks=masks)
    after = _lut.cache_info()
    assert after.misses - before.misses <= 1 and after.hits > before.hits


def test_view_panel_scales_views_of_different_sizes(nrng):
    sizes = [(int(nrng.integers(40, 300)), int(nrng.integers(40, 300))) for _ in range(3)]
    images, maps, masks = random_sample(nrng, sizes)
    masks[1] = None  # a view without ground truth
    panel = view_panel(images, maps, masks=masks, tile_height=100)
    widths = [max(1, round(w * 100 / h)) for h, w in sizes]
    tiles = sum(widths) + 2 * 4
    assert tiles < panel.shape[1] < tiles + 200
    assert 200 < panel.shape[0] < 300  # no header without title / score
    default = view_panel(images, maps)
    tallest = max(h for h, _ in sizes)
    assert 2 * tallest < default.shape[0] < 2 * tallest + 100


def test_view_panel_rejects_bad_inputs(nrng):
    images, maps, masks = random_sample(nrng, [(32, 48), (40, 40)])
    with pytest.raises(ValueError, match="maps: got 1 maps for 2 images"):
        view_panel(images, maps[:1])
    with pytest.raises(ValueError, match="masks: got 1 masks for 2 images"):
        view_panel(images, maps, masks=masks[:1])
    with pytest.raises(ValueError, match="view_scores: got 3 scores for 2 views"):
        view_panel(images, maps, view_scores=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"maps\[1\].*\(40, 41\).*images\[1\]"):
        view_panel(images, [maps[0], np.ones((40, 41), np.float32)])
    with pytest.raises(ValueError, match="sample_score.*finite"):
        view_panel(images, maps, sample_score=float("nan"))
    with pytest.raises(ValueError, match="tile_height"):
        view_panel(images, maps, tile_height=3)


# ------------------------------------------------------------------------------- files


def test_save_overlays_writes_readable_pngs_atomically(nrng, tmp_path):
    sizes = [(int(nrng.integers(30, 120)), int(nrng.integers(30, 120))) for _ in range(3)]
    images, maps, masks = random_sample(nrng, sizes)
    out = tmp_path / "overlays"
    vmin, vmax = 0.0, float(max(m.max() for m in maps))
    scores = [float(m.max()) for m in maps]
    paths = save_overlays(
        out,
        "NG/HS/S0002",
        images,
        maps,
        masks,
        view_scores=scores,
        sample_score=max(scores),
        vmin=vmin,
        vmax=vmax,
    )
    names = ["NG_HS_S0002_panel.png"] + [f"NG_HS_S0002_view{k}.png" for k in range(3)]
    assert [p.name for p in paths] == names
    assert sorted(os.listdir(out)) == sorted(names)  # no temporary files left behind
    panel = view_panel(
        images,
        maps,
        masks=masks,
        view_scores=scores,
        sample_score=max(scores),
        vmin=vmin,
        vmax=vmax,
        title="NG/HS/S0002",
    )
    np.testing.assert_array_equal(read_image(paths[0]), panel)
    for k in range(3):
        expected = overlay(images[k], maps[k], mask=masks[k], vmin=vmin, vmax=vmax)
        np.testing.assert_array_equal(read_image(paths[k + 1]), expected)

    only_panel = save_overlays(tmp_path / "panel_only", "OK/S0001", images, maps, per_view=False)
    assert [p.name for p in only_panel] == ["OK_S0001_panel.png"]
    assert os.listdir(tmp_path / "panel_only") == ["OK_S0001_panel.png"]


def test_save_overlays_checks_everything_before_writing(nrng, tmp_path):
    images, maps, _ = random_sample(nrng, [(30, 40), (30, 40)])
    maps[1] = maps[1][:, :-1]
    with pytest.raises(ValueError, match=r"maps\[1\]"):
        save_overlays(tmp_path / "out", "a", images, maps)
    assert not (tmp_path / "out").exists()


def test_safe_name_is_flat_and_keeps_ids_apart():
    assert safe_name("NG/HS/S0002") == "NG_HS_S0002"
    assert safe_name("sample0001") == "sample0001"
    ids = ["../../etc/passwd", ".hidden", "a:b", "a?b", "样本1", "样本2", "x" * 300, "C:\\v\\s"]
    names = [safe_name(i) for i in ids]
    assert len(set(names)) == len(names)
    for name in names:
        assert name and len(name) < 140 and not name.startswith(".")
        assert all(c.isascii() and (c.isalnum() or c in "._-") for c in name), name
    with pytest.raises(ValueError, match="sample_id"):
        safe_name("")


# ------------------------------------------------------------------------------ curves


def _brute_force_roc(scores, labels):
    points = {(0.0, 0.0)}
    for t in np.unique(scores):
        above = scores >= t
        points.add((above[~labels].mean(), above[labels].mean()))
    return sorted(points)


def test_roc_points_match_brute_force_and_eval(nrng):
    n = int(nrng.integers(50, 300))
    labels = nrng.random(n) < 0.3
    labels[:2] = [True, False]
    scores = np.round(nrng.normal(size=n) + labels, 1)  # ties included
    curve = roc_points(scores, labels)
    assert curve.auc == auroc(scores, labels)
    assert (curve.fpr[0], curve.tpr[0], curve.fpr[-1], curve.tpr[-1]) == (0, 0, 1, 1)
    assert np.all(np.diff(curve.fpr) >= 0) and np.all(np.diff(curve.tpr) >= 0)
    got = sorted(zip(curve.fpr.tolist(), curve.tpr.tolist(), strict=True))
    np.testing.assert_allclose(got, _brute_force_roc(scores, labels), atol=1e-12)
    # The area under the drawn points is the AUROC (ties are diagonal segments).
    assert trapezoid(curve.tpr, curve.fpr) == pytest.approx(curve.auc, abs=1e-12)

    pr = pr_points(scores, labels)
    assert pr.ap == average_precision(scores, labels)
    assert (pr.recall[0], pr.precision[0], pr.recall[-1]) == (0, 1, 1)
    assert np.all(np.diff(pr.recall) >= 0)


def test_pixel_roc_is_thinned_and_binned_close_to_exact(nrng):
    views, height, width = 3, 160, 200
    maps = [random_map(nrng, height, width) for _ in range(views)]
    masks = [random_mask(nrng, height, width) for _ in range(views)]
    maps = [m + 0.3 * k for k, m in zip(masks, maps, strict=True)]
    exact = roc_points(maps, masks)
    assert exact.fpr.size <= 2000
    assert exact.auc == pytest.approx(
        auroc(
            np.concatenate([m.ravel() for m in maps]), np.concatenate([k.ravel() for k in masks])
        ),
        abs=1e-12,
    )
    assert trapezoid(exact.tpr, exact.fpr) == pytest.approx(exact.auc, abs=2e-3)
    binned = roc_points(maps, masks, max_points=500, exact_budget=1000)
    assert 2 <= binned.fpr.size <= 500
    assert binned.auc == pytest.approx(exact.auc, abs=1e-4)
    stacked = roc_points(np.stack(maps), np.stack(masks))  # same pixels, one array
    assert stacked.auc == exact.auc
    with pytest.raises(ValueError, match="scores.*labels.*shapes"):
        roc_points(maps[0], masks[0].T[:, :height])


def test_thin_curve_keeps_ends_and_corners(nrng):
    steps = int(nrng.integers(5000, 20000))
    # A jump to 0.9 at fpr 0, then a fine staircase: the corner (0, 0.9) must survive.
    x = np.concatenate([[0.0, 0.0], np.repeat(np.linspace(0, 1, steps), 2)[1:]])
    y = np.concatenate([[0.0], np.repeat(np.linspace(0.9, 1, steps), 2)[:-1], [1.0]])
    tx, ty = thin_curve(x, y, 200)
    assert tx.size <= 200
    assert (tx[0], ty[0], tx[-1], ty[-1]) == (x[0], y[0], x[-1], y[-1])
    assert np.any((tx == 0) & np.isclose(ty, 0.9))
    assert trapezoid(ty, tx) == pytest.approx(trapezoid(y, x), abs=0.01)
    with pytest.raises(ValueError, match="max_points"):
        thin_curve(x, y, 1)


def test_roc_points_rejects_bad_inputs():
    with pytest.raises(ValueError, match="labels: got 0 positives"):
        roc_points([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="scores.*NaN"):
        roc_points([0.1, np.nan], [0, 1])
    with pytest.raises(ValueError, match="3 scores and 2 labels"):
        roc_points([0.1, 0.2, 0.3], [0, 1])


def _is_png(path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_roc_curves_writes_png_without_touching_pyplot(nrng, tmp_path):
    import matplotlib
    import matplotlib.pyplot as plt

    backend, figures = matplotlib.get_backend(), plt.get_fignums()
    labels = nrng.random(200) < 0.4
    labels[:2] = [True, False]
    scores = nrng.normal(size=200) + labels
    view_labels = nrng.random(600) < 0.2
    view_labels[:2] = [True, False]
    curves = {
        "sample": roc_points(scores, labels),
        "view": roc_points(nrng.normal(size=600) + view_labels, view_labels),
    }
    path = plot_roc_curves(curves, tmp_path / "roc.png", title="ROC")
    assert path == tmp_path / "roc.png" and _is_png(path)
    picture = cv2.imread(str(path))
    assert picture is not None and min(picture.shape[:2]) > 300
    assert os.listdir(tmp_path) == ["roc.png"]
    assert matplotlib.get_backend() == backend and plt.get_fignums() == figures

    with pytest.raises(ValueError, match="curves"):
        plot_roc_curves({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"curves\['a'\].*2 and 3"):
        plot_roc_curves({"a": ([0, 1], [0, 0.5, 1], 0.5)}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="path.*'.jpg'"):
        plot_roc_curves(curves, tmp_path / "x.jpg")


def test_plotting_never_imports_pyplot_nor_switches_backend(tmp_path):
    script = (
        "import sys, matplotlib, numpy as np\n"
        "matplotlib.use('svg')\n"
        "from vsad.viz import plot_metric_curves, plot_roc_curves, roc_points\n"
        "s = np.arange(10.0); l = s % 3 == 0\n"
        f"plot_roc_curves({{'sample': roc_points(s, l)}}, {str(tmp_path / 'a.png')!r})\n"
        f"plot_metric_curves({str(tmp_path / 'b.png')!r}, sample=(s, l))\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
        "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()\n"
    )
    env = {**os.environ, "MPLBACKEND": "svg"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert _is_png(tmp_path / "a.png") and _is_png(tmp_path / "b.png")


def test_plot_metric_curves_all_levels(nrng, tmp_path):
    labels = nrng.random(60) < 0.5
    labels[:2] = [True, False]
    sample = (nrng.normal(size=60) + labels, labels)
    view = (nrng.normal(size=180), np.zeros(180, bool))  # one class: no curve, named in title
    maps = [random_map(nrng, 64, 80) for _ in range(3)]
    masks = [random_mask(nrng, 64, 80) for _ in range(3)]
    path = plot_metric_curves(
        tmp_path / "curves.png", sample=sample, view=view, pixel=(maps, masks), title="demo"
    )
    picture = cv2.imread(str(path))
    assert picture is not None and picture.shape[1] > picture.shape[0]
    assert os.listdir(tmp_path) == ["curves.png"]
    with pytest.raises(ValueError, match="no level with both"):
        plot_metric_curves(tmp_path / "none.png", view=view)
    with pytest.raises(ValueError, match="pixel.*NaN"):
        plot_metric_curves(
            tmp_path / "nan.png", pixel=(np.full((4, 4), np.nan), np.eye(4, dtype=bool))
        )
    assert sorted(os.listdir(tmp_path)) == ["curves.png"]
