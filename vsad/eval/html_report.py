"""The report of `vsad test`: one self-contained HTML file (report.html) an engineer opens in a
browser — metrics at the stored thresholds beside the threshold-free ones, confusion matrices,
ROC and precision-recall curves, the score histogram with the threshold, the worst false
rejects and escapes with their overlays, and the run's configuration.

Self-contained: every picture is a PNG embedded as a base64 data URI, the style sheet is
inline, there is no JavaScript and nothing is fetched, so the file can be mailed, archived or
opened on a machine without network. Every text is HTML-escaped.

Sections carry ids (REPORT_SECTIONS) so tests and links can find them.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vsad._atomic import atomic_write_text
from vsad.eval.evaluator import METRIC_KEYS

REPORT_SECTIONS = (
    "summary",
    "metrics",
    "confusion",
    "curves",
    "histogram",
    "false-rejects",
    "escapes",
    "config",
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1180px;
       color: #1d1d1d; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 28px;
     border-bottom: 1px solid #ddd; padding-bottom: 4px; }
table { border-collapse: collapse; margin: 8px 0; } td, th { border: 1px solid #ccc;
     padding: 3px 8px; text-align: right; } th { background: #f3f3f3; }
td.name, th.name { text-align: left; }
.ng { color: #b3261e; font-weight: 600; } .ok { color: #1e7b34; font-weight: 600; }
.muted { color: #666; } figure { margin: 10px 0 18px; } figcaption { color: #444; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
pre { background: #f6f6f6; padding: 10px; overflow-x: auto; font-size: 12px; }
.cases { display: flex; flex-direction: column; gap: 8px; }
"""


@dataclass
class Case:
    """One sample shown with its overlay panel (PNG bytes)."""

    sample_id: str
    label: int
    score: float
    decision: str | None
    view_scores: Sequence[float]
    png: bytes
    defect_type: str = ""


def data_uri(png: bytes) -> str:
    """A data URI of PNG bytes (checked: a report must never hold a broken picture)."""
    if not isinstance(png, (bytes, bytearray)) or not bytes(png).startswith(PNG_SIGNATURE):
        raise ValueError("png: expected the bytes of a PNG file (missing PNG signature)")
    return "data:image/png;base64," + base64.b64encode(bytes(png)).decode("ascii")


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _pct(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * float(value):.2f}"


def _num(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{float(value):.4g}"


def _img(png: bytes, alt: str) -> str:
    return f'<img src="{data_uri(png)}" alt="{_esc(alt)}">'


def _summary(title_info: Mapping, decisions: Mapping | None) -> str:
    rows = [f"<tr><th class='name'>{_esc(k)}</th><td class='name'>{_esc(v)}</td></tr>"
            for k, v in title_info.items()]  # fmt: skip
    parts = ["<section id='summary'><h2>Summary</h2><table>", *rows, "</table>"]
    if decisions is None:
        parts.append(
            "<p class='muted'>The model has no decision thresholds (uncalibrated): only "
            "threshold-free metrics. Run <code>vsad calibrate</code> to set them.</p>"
        )
    else:
        t = decisions["thresholds"]
        s = decisions["sample"]
        parts.append(
            "<p>Thresholds: sample <b>{}</b>, view <b>{}</b> — source <b>{}</b>{}{}. "
            "A sample or view is NG when its score is above its threshold.</p>".format(
                _num(t["sample"]),
                _num(t["view"]),
                _esc(t.get("source")),
                f", target false-reject rate {_pct(t['fpr'])} %" if t.get("fpr") else "",
                f", backed by {_esc(t['n_normal'])} normal samples" if t.get("n_normal") else "",
            )
        )
        interval = t.get("levels", {}).get("sample", {}).get("frr_interval")
        if interval:
            parts.append(
                "<p class='muted'>With that many normal samples the false-reject rate this "
                f"sample threshold achieves lies in {_pct(interval[0])} – {_pct(interval[1])} % "
                "(95 %).</p>"
            )
        parts.append(
            f"<p>On this split: <b>{s['confusion']['fp']}</b> of {s['n_normal']} normal samples "
            f"rejected (false-reject rate {_pct(s['frr'])} %), <b>{s['confusion']['fn']}</b> of "
            f"{s['n_defective']} defective samples escaped (escape rate "
            f"{_pct(s['escape_rate'])} %).</p>"
        )
    parts.append("</section>")
    return "\n".join(parts)


def _metrics_table(metrics: Mapping, decisions: Mapping | None) -> str:
    head = "".join(f"<th>{_esc(k)}</th>" for k in METRIC_KEYS)
    cells = "".join(f"<td>{_pct(metrics.get(k))}</td>" for k in METRIC_KEYS)
    parts = [
        "<section id='metrics'><h2>Metrics</h2>",
        "<p class='muted'>Threshold-free (values in %):</p>",
        f"<table><tr>{head}</tr><tr>{cells}</tr></table>",
    ]
    if decisions is not None:
        parts.append("<p class='muted'>At the stored thresholds (values in %):</p><table>")
        parts.append(
            "<tr><th class='name'>level</th><th>threshold</th><th>false-reject rate</th>"
            "<th>escape rate</th><th>precision</th><th>recall</th><th>accuracy</th>"
            "<th>normal</th><th>defective</th></tr>"
        )
        for level in ("sample", "view"):
            e = decisions[level]
            parts.append(
                f"<tr><td class='name'>{level}</td><td>{_num(e['threshold'])}</td>"
                f"<td>{_pct(e['frr'])}</td><td>{_pct(e['escape_rate'])}</td>"
                f"<td>{_pct(e['precision'])}</td><td>{_pct(e['recall'])}</td>"
                f"<td>{_pct(e['accuracy'])}</td><td>{e['n_normal']}</td>"
                f"<td>{e['n_defective']}</td></tr>"
            )
        parts.append("</table>")
    parts.append("</section>")
    return "\n".join(parts)


def _confusion(decisions: Mapping | None) -> str:
    parts = ["<section id='confusion'><h2>Confusion matrices</h2>"]
    if decisions is None:
        parts.append("<p class='muted'>No thresholds, no decisions.</p></section>")
        return "\n".join(parts)
    entries = [("sample", decisions["sample"]), ("all views", decisions["view"])]
    entries += [(f"camera {e['view']}", e) for e in decisions.get("per_view", [])]
    parts.append(
        "<table><tr><th class='name'></th><th>defective → NG (TP)</th>"
        "<th>defective → OK (escape)</th><th>normal → NG (false reject)</th>"
        "<th>normal → OK (TN)</th><th>false-reject rate %</th><th>escape rate %</th></tr>"
    )
    for name, e in entries:
        c = e["confusion"]
        parts.append(
            f"<tr><td class='name'>{_esc(name)}</td><td>{c['tp']}</td><td>{c['fn']}</td>"
            f"<td>{c['fp']}</td><td>{c['tn']}</td><td>{_pct(e['frr'])}</td>"
            f"<td>{_pct(e['escape_rate'])}</td></tr>"
        )
    parts.append("</table></section>")
    return "\n".join(parts)


def _figure(section: str, heading: str, png: bytes | None, caption: str) -> str:
    body = (
        f"<figure>{_img(png, heading)}<figcaption>{_esc(caption)}</figcaption></figure>"
        if png is not None
        else "<p class='muted'>Not available (one class only in this split).</p>"
    )
    return f"<section id='{section}'><h2>{_esc(heading)}</h2>{body}</section>"


def _cases(
    section: str, heading: str, cases: Sequence[Case], bad: str, none: str, note: str
) -> str:
    """Cases, worst first; `bad` is the decision that makes a case an error ("NG" for a
    normal sample, "OK" for a defective one); `none` is said when no case has it."""
    parts = [f"<section id='{section}'><h2>{_esc(heading)}</h2>", f"<p class='muted'>{note}</p>"]
    if not cases:
        parts.append("<p>No such samples in this split.</p>")
    elif all(c.decision is not None and c.decision != bad for c in cases):
        parts.append(f"<p>{_esc(none)} The closest calls:</p>")
    parts.append("<div class='cases'>")
    for case in cases:
        css = {"NG": "ng", "OK": "ok"}.get(case.decision or "", "muted")
        kind = "defective" if case.label else "normal"
        if case.defect_type:
            kind += f" ({case.defect_type})"
        views = ", ".join(f"{s:.3g}" for s in case.view_scores)
        caption = (
            f"<b>{_esc(case.sample_id)}</b> — {_esc(kind)}, score {_num(case.score)}, "
            f"decision <span class='{css}'>{_esc(case.decision or 'n/a')}</span>; "
            f"view scores {_esc(views)}"
        )
        parts.append(f"<figure>{_img(case.png, case.sample_id)}<figcaption>{caption}"
                     "</figcaption></figure>")  # fmt: skip
    parts.append("</div></section>")
    return "\n".join(parts)


def render_report(
    *,
    title: str,
    info: Mapping,
    metrics: Mapping,
    decisions: Mapping | None,
    curves_png: bytes | None,
    histogram_png: bytes | None,
    false_rejects: Sequence[Case],
    escapes: Sequence[Case],
    config: Mapping | None,
) -> str:
    """The report as one HTML string (see the module docstring)."""
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    sections = [
        _summary(info, decisions),
        _metrics_table(metrics, decisions),
        _confusion(decisions),
        _figure(
            "curves",
            "ROC and precision-recall curves",
            curves_png,
            "Sample and view level; AUROC and AP in the legends.",
        ),  # fmt: skip
        _figure(
            "histogram",
            "Score histogram",
            histogram_png,
            "Normal vs defective scores; the dashed line is the threshold.",
        ),  # fmt: skip
        _cases(
            "false-rejects",
            "Worst false rejects",
            false_rejects,
            "NG",
            "No normal sample was rejected.",
            "Normal samples with the highest scores (NG ones are false rejects).",
        ),  # fmt: skip
        _cases(
            "escapes",
            "Worst escapes",
            escapes,
            "OK",
            "No defective sample escaped.",
            "Defective samples with the lowest scores (OK ones are escapes).",
        ),  # fmt: skip
        "<section id='config'><h2>Run configuration</h2><pre>"
        + _esc(json.dumps(config or {}, indent=2, default=str))
        + "</pre></section>",
    ]
    return "\n".join(
        [
            "<!DOCTYPE html>",
            "<html lang='en'><head><meta charset='utf-8'>",
            "<meta name='viewport' content='width=device-width, initial-scale=1'>",
            f"<title>{_esc(title)}</title><style>{_STYLE}</style></head><body>",
            f"<h1>{_esc(title)}</h1><p class='muted'>vsad report, {_esc(stamp)}</p>",
            *sections,
            "</body></html>",
            "",
        ]
    )


def write_report(path, **kwargs) -> None:
    """render_report(**kwargs) written atomically to path."""
    atomic_write_text(path, render_report(**kwargs))


__all__ = ["PNG_SIGNATURE", "REPORT_SECTIONS", "Case", "data_uri", "render_report", "write_report"]
