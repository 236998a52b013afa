"""Writing metrics: metrics.json, metrics.csv and metrics.md (a Markdown table), atomically."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from vsad._atomic import atomic_write_text
from vsad.eval.evaluator import METRIC_KEYS

FORMATS = ("json", "csv", "md")


def _rows(results: Mapping) -> dict[str, dict[str, float]]:
    """{"name": metrics} as given, or a single metrics dict as one row named "all"."""
    if results and all(isinstance(v, Mapping) for v in results.values()):
        return {str(k): dict(v) for k, v in results.items()}
    return {"all": dict(results)}


def _columns(rows: dict[str, dict[str, float]]) -> list[str]:
    keys = [k for k in METRIC_KEYS if any(k in r for r in rows.values())]
    extra = sorted({k for r in rows.values() for k in r} - set(keys))
    return keys + extra


def _clean(value) -> float | None:
    """NaN -> None (JSON has no NaN; a level without positives has no AUROC)."""
    value = float(value)
    return None if math.isnan(value) else value


def mean_row(rows: dict[str, dict[str, float]]) -> dict[str, float]:
    """Column means over rows, ignoring NaN (as papers average over categories)."""
    out = {}
    for key in _columns(rows):
        values = [float(r[key]) for r in rows.values() if key in r and not math.isnan(r[key])]
        out[key] = sum(values) / len(values) if values else float("nan")
    return out


def metrics_table(
    results: Mapping, *, percent: bool = True, digits: int = 2, mean: bool = True
) -> str:
    """A Markdown table: one row per name (plus a mean row when there are several rows and
    `mean` — right for categories, wrong for rows that are different methods)."""
    rows = _rows(results)
    columns = _columns(rows)
    if mean and len(rows) > 1:
        rows = {**rows, "mean": mean_row(rows)}
    scale = 100.0 if percent else 1.0
    lines = [
        "| " + " | ".join(["", *columns]) + " |",
        "|" + "---|" * (len(columns) + 1),
    ]
    for name, row in rows.items():
        cells = []
        for key in columns:
            value = row.get(key, float("nan"))
            cells.append("n/a" if math.isnan(value) else f"{value * scale:.{digits}f}")
        lines.append("| " + " | ".join([name, *cells]) + " |")
    unit = "Values in %." if percent else "Values are fractions."
    return "\n".join(lines) + f"\n\n{unit}\n"


def write_metrics(
    results: Mapping,
    out_dir: str | os.PathLike,
    *,
    name: str = "metrics",
    formats: Sequence[str] = FORMATS,
    details: Mapping | None = None,
    mean: bool = True,
    extra: Mapping | None = None,
) -> list[Path]:
    """Writes <out_dir>/<name>.json, .csv and .md; returns the paths.

    results: a metrics dict (as Evaluator.compute() returns) or {row name: metrics dict}
    (e.g. one row per category). JSON and CSV hold fractions (NaN as null / empty); the
    Markdown table shows percentages. details (e.g. Evaluator.details(), or {row name:
    details}) goes into the JSON only, as do the top-level keys of `extra` (e.g.
    {"decisions": ...}, the metrics at the stored thresholds).
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"formats: got {list(formats)}, expected a subset of {list(FORMATS)}")
    out_dir = Path(out_dir)
    rows = _rows(results)
    columns = _columns(rows)
    written = []
    if "json" in formats:
        payload = {"metrics": {k: {c: _clean(v) for c, v in r.items()} for k, r in rows.items()}}
        if mean and len(rows) > 1:
            payload["mean"] = {c: _clean(v) for c, v in mean_row(rows).items()}
        if details is not None:
            payload["details"] = _sanitize(details)
        for key, value in (extra or {}).items():
            payload[str(key)] = _sanitize(value)
        path = out_dir / f"{name}.json"
        atomic_write_text(path, json.dumps(payload, indent=2, allow_nan=False) + "\n")
        written.append(path)
    if "csv" in formats:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["name", *columns])
        for row_name, row in rows.items():
            cells = [_clean(row.get(c, float("nan"))) for c in columns]
            writer.writerow([row_name, *("" if v is None else repr(v) for v in cells)])
        path = out_dir / f"{name}.csv"
        atomic_write_text(path, buffer.getvalue())
        written.append(path)
    if "md" in formats:
        path = out_dir / f"{name}.md"
        atomic_write_text(path, metrics_table(results, mean=mean))
        written.append(path)
    return written


def _sanitize(value):
    """JSON-ready copy: numpy values to Python, NaN and Inf to None."""
    if isinstance(value, Mapping):
        return {str(k): _sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_sanitize(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return _sanitize(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"details: cannot write a {type(value).__name__} to JSON")


def write_sample_scores(rows: Sequence[Mapping], path: str | os.PathLike) -> Path:
    """Per-sample scores (Evaluator.rows) as CSV: sample_id, label, score, defect_type, then
    view_scores and view_labels joined by ';'. Written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["sample_id", "label", "score", "defect_type", "view_scores", "view_labels"])
    for row in rows:
        writer.writerow(
            [
                row["sample_id"],
                row["label"],
                repr(float(row["score"])),
                row.get("defect_type", ""),
                ";".join(repr(float(s)) for s in row["view_scores"]),
                ";".join(str(int(v)) for v in row["view_labels"]),
            ]
        )
    path = Path(path)
    atomic_write_text(path, buffer.getvalue())
    return path


__all__ = ["metrics_table", "mean_row", "write_metrics", "write_sample_scores"]
