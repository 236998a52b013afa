"""One picture per multi-view sample (inputs above, overlays below) and writing it to disk.

A panel puts all M views of a sample side by side under one colour range, because a defect is
judged across views: the view that sees it should be visibly hotter than the others. Views of
different sizes are scaled to one display height; the ground truth is outlined after scaling
so that it stays one display pixel wide.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from vsad.data.imageio import resize_image, write_image
from vsad.viz._checks import check_number, check_range, check_scores, check_views
from vsad.viz.overlay import CONTOUR_COLOR, colormap_lut, overlay

MAX_TILE_HEIGHT = 512  # default display height cap: a 5-view panel of 2k images stays readable
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_BACKGROUND = (24, 24, 24)
_TEXT = (235, 235, 235)
_ABOVE = (255, 80, 80)  # score > threshold: NG
_BELOW = (90, 220, 90)  # score <= threshold: OK
_GAP = 4


def _resize_map(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if values.shape == size:
        return values
    shrinking = size[0] * size[1] < values.size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(values, (size[1], size[0]), interpolation=interpolation)


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Any defective pixel under a display pixel marks it, so a thin defect does not vanish
    when a large view is shrunk (nearest neighbour would drop it)."""
    if mask.shape == size:
        return mask
    shrinking = size[0] * size[1] < mask.size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_NEAREST
    return (
        cv2.resize(mask.astype(np.uint8) * 255, (size[1], size[0]), interpolation=interpolation) > 0
    )


def _text_box(width: int, texts: str | list[str], scale: float, color=_TEXT) -> np.ndarray:
    """A dark strip of the given width holding one line of text: the first of `texts` that
    fits (longest first, so narrow views get a shorter label), else the last one, clipped."""
    thickness = 2 if scale >= 0.9 else 1
    (_, text_h), baseline = cv2.getTextSize("Ag", _FONT, scale, thickness)
    height = text_h + baseline + 8
    box = np.full((height, max(width, 1), 3), _BACKGROUND, np.uint8)
    options = [texts] if isinstance(texts, str) else texts
    text = next(
        (t for t in options if cv2.getTextSize(t, _FONT, scale, thickness)[0][0] + 8 <= width),
        options[-1],
    )
    cv2.putText(box, text, (4, 4 + text_h), _FONT, scale, color, thickness, cv2.LINE_AA)
    return box


def _colorbar(height: int, low: float, high: float, colormap: str, scale: float) -> np.ndarray:
    """A vertical colour scale with its end values, so overlays can be read as scores."""
    labels = [f"{high:.4g}", f"{low:.4g}"]
    text_w = max(cv2.getTextSize(t, _FONT, scale, 1)[0][0] for t in labels)
    (_, text_h), baseline = cv2.getTextSize("0", _FONT, scale, 1)
    bar_w = 14
    strip = np.full((height, bar_w + text_w + 12, 3), _BACKGROUND, np.uint8)
    levels = np.linspace(255, 0, height).round().astype(np.uint8)
    strip[:, 2 : 2 + bar_w] = colormap_lut(colormap)[levels][:, None, :]
    x = bar_w + 6
    cv2.putText(strip, labels[0], (x, text_h + 2), _FONT, scale, _TEXT, 1, cv2.LINE_AA)
    cv2.putText(strip, labels[1], (x, height - baseline - 2), _FONT, scale, _TEXT, 1, cv2.LINE_AA)
    return strip


def _stack_rows(rows: list[np.ndarray], gap: int = _GAP) -> np.ndarray:
    """Stacks pictures vertically, left-aligned, on the background colour."""
    width = max(r.shape[1] for r in rows)
    height = sum(r.shape[0] for r in rows) + gap * (len(rows) - 1)
    canvas = np.full((height, width, 3), _BACKGROUND, np.uint8)
    y = 0
    for r in rows:
        canvas[y : y + r.shape[0], : r.shape[1]] = r
        y += r.shape[0] + gap
    return canvas


def _join_columns(columns: list[np.ndarray], gap: int = _GAP) -> np.ndarray:
    """Places pictures side by side, top-aligned, on the background colour."""
    height = max(c.shape[0] for c in columns)
    width = sum(c.shape[1] for c in columns) + gap * (len(columns) - 1)
    canvas = np.full((height, width, 3), _BACKGROUND, np.uint8)
    x = 0
    for c in columns:
        canvas[: c.shape[0], x : x + c.shape[1]] = c
        x += c.shape[1] + gap
    return canvas


def _verdict(score: float, threshold: float | None) -> tuple[str, tuple[int, int, int]]:
    # NG iff above, as the detector decides (vsad/detector/thresholds.py).
    if threshold is None:
        return "", _TEXT
    if score > threshold:
        return " NG", _ABOVE
    return " OK", _BELOW


def view_panel(
    images,
    maps,
    *,
    masks=None,
    view_scores=None,
    sample_score=None,
    threshold=None,
    sample_threshold=None,
    vmin=None,
    vmax=None,
    title=None,
    alpha: float = 0.5,
    colormap: str = "jet",
    tile_height: int | None = None,
) -> np.ndarray:
    """One (H, W, 3) uint8 RGB picture of a sample: the M input views on the top row, their
    overlays (ground truth outlined) on the bottom row, each labelled with its view index and
    score, a colour scale on the right, and a header with the title and sample score.

    Args:
        images, maps, masks: M views (lists, or stacked arrays with a leading view axis); each
            map and mask has its own image's size; masks (or single entries) may be None.
        view_scores: M scores to print; default the maximum of each map (the model's view score).
        sample_score: printed in the header when given.
        threshold: the view threshold; when given, views are labelled NG (red) or OK (green)
            as the detector decides them: with a sample score and threshold, a view is NG only
            in an NG sample (vsad.detector.base.view_decisions), else iff score > threshold.
        sample_threshold: the same for the sample score in the header (default: threshold).
        vmin, vmax: the colour range; default the min / max over all M maps, so the views of one
            sample are comparable. Pass one range for all samples to compare samples.
        tile_height: display height of every view; default the tallest view, capped at 512.
    """
    images, maps, masks = check_views(images, maps, masks)
    count = len(images)
    scores = check_scores(
        [float(m.max()) for m in maps] if view_scores is None else view_scores,
        "view_scores",
        count,
    )
    low, high = check_range(vmin, vmax, maps)
    if threshold is not None:
        threshold = check_number(threshold, "threshold")
    if sample_threshold is None:
        sample_threshold = threshold
    else:
        sample_threshold = check_number(sample_threshold, "sample_threshold")
    view_threshold = threshold
    if threshold is not None and sample_threshold is not None and sample_score is not None:
        # As the detector decides (vsad.detector.base.view_decisions): NG views only in an NG
        # sample, and at least the view that made it NG.
        ng_sample = check_number(sample_score, "sample_score") > sample_threshold
        view_threshold = min(threshold, sample_threshold) if ng_sample else float("inf")
    if tile_height is None:
        tile_height = min(max(image.shape[0] for image in images), MAX_TILE_HEIGHT)
    elif not isinstance(tile_height, (int, np.integer)) or not 16 <= tile_height <= 8192:
        raise ValueError(f"tile_height: got {tile_height!r}, expected an int in [16, 8192]")
    tile_height = int(tile_height)
    scale = float(np.clip(tile_height / 400, 0.4, 1.0))

    columns = []
    for k, (image, values, mask) in enumerate(zip(images, maps, masks, strict=True)):
        height, width = image.shape[:2]
        size = (tile_height, max(1, round(width * tile_height / height)))
        shown = resize_image(image, size)
        heat = overlay(
            shown,
            _resize_map(values, size),
            mask=None if mask is None else _resize_mask(mask, size),
            vmin=low,
            vmax=high,
            alpha=alpha,
            colormap=colormap,
            contour_color=CONTOUR_COLOR,
        )
        word, color = _verdict(scores[k], view_threshold)  # inf (OK sample): every view OK
        top = _text_box(size[1], [f"view {k}  {height}x{width}", f"view {k}"], scale)
        label = f"view {k}: {scores[k]:.4g}"
        bottom = _text_box(size[1], [label + word, label, f"{k}: {scores[k]:.3g}"], scale, color)
        columns.append(_stack_rows([top, shown, heat, bottom], gap=0))
    top_height = columns[0].shape[0] - tile_height - _text_box(1, "", scale).shape[0]
    bar = _colorbar(tile_height, low, high, colormap, scale)
    bar_column = np.full((top_height, bar.shape[1], 3), _BACKGROUND, np.uint8)
    columns.append(_stack_rows([bar_column, bar], gap=0))
    body = _join_columns(columns)

    header = [] if title is None else [str(title)]
    if sample_score is not None:
        score = check_number(sample_score, "sample_score")
        word, color = _verdict(score, sample_threshold)
        header.append(
            f"score {score:.4g}"
            + ("" if sample_threshold is None else f" (thr {sample_threshold:.4g})")
        )
        header[-1] += word
    else:
        color = _TEXT
    if not header:
        return body
    return _stack_rows([_text_box(body.shape[1], "   ".join(header), scale, color), body], gap=0)


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_READABLE = re.compile(r"[A-Za-z0-9._\-/\\ ]*")
MAX_NAME_LENGTH = 120


def safe_name(sample_id) -> str:
    """A flat file name for a sample id: "NG/HS/S0002" -> "NG_HS_S0002".

    Path separators and spaces become "_", leading dots are dropped (no hidden files, no ".."),
    so every name stays inside the output folder. Ids with other characters (non-ASCII, ":",
    ...) would lose information that way, so they get a short hash of the full id appended,
    as do names longer than MAX_NAME_LENGTH, keeping distinct ids apart.
    """
    text = str(sample_id)
    if not text:
        raise ValueError("sample_id: got an empty id, expected a non-empty string")
    name = _SAFE.sub("_", text).lstrip("._")
    lossy = not _READABLE.fullmatch(text) or not name or len(name) > MAX_NAME_LENGTH
    if lossy:
        digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]
        name = f"{name[:MAX_NAME_LENGTH]}-{digest}" if name else f"sample-{digest}"
    return name


def save_overlays(
    out_dir: str | os.PathLike,
    sample_id,
    images,
    maps,
    masks=None,
    *,
    view_scores=None,
    sample_score=None,
    threshold=None,
    sample_threshold=None,
    vmin=None,
    vmax=None,
    title=None,
    per_view: bool | Sequence[int] = True,
    alpha: float = 0.5,
    colormap: str = "jet",
    tile_height: int | None = None,
) -> list[Path]:
    """Writes the panel of a sample as <out_dir>/<safe id>_panel.png and, with per_view, each
    view's full-resolution overlay as <safe id>_view<k>.png (see safe_name); per_view may
    also list the views to write (e.g. the NG views). Returns the paths,
    panel first.

    Every file is written to a temporary name and renamed into place, so a viewer or a crash
    never leaves a truncated PNG; everything is checked before the first file is written. The
    colour range defaults to the min / max over the sample's maps and is the same in the panel
    and the per-view pictures; title defaults to the sample id. Other arguments: view_panel.
    """
    name = safe_name(sample_id)
    images, maps, masks = check_views(images, maps, masks)
    low, high = check_range(vmin, vmax, maps)
    panel = view_panel(
        images,
        maps,
        masks=masks,
        view_scores=view_scores,
        sample_score=sample_score,
        threshold=threshold,
        sample_threshold=sample_threshold,
        vmin=low,
        vmax=high,
        title=str(sample_id) if title is None else title,
        alpha=alpha,
        colormap=colormap,
        tile_height=tile_height,
    )
    if per_view is True or per_view is False:
        chosen = list(range(len(images))) if per_view else []
    else:
        chosen = sorted({int(k) for k in per_view})
        if any(not 0 <= k < len(images) for k in chosen):
            raise ValueError(
                f"per_view: got view indices {chosen}, expected indices in 0..{len(images) - 1}"
            )
    views = []
    for k in chosen:
        picture = overlay(
            images[k], maps[k], mask=masks[k], vmin=low, vmax=high, alpha=alpha, colormap=colormap
        )
        views.append((k, picture))
    out = Path(out_dir)
    paths = [out / f"{name}_panel.png"]
    write_image(paths[0], panel)
    for k, picture in views:
        paths.append(out / f"{name}_view{k}.png")
        write_image(paths[-1], picture)
    return paths


__all__ = ["MAX_TILE_HEIGHT", "safe_name", "save_overlays", "view_panel"]
