"""The OK/NG side of the `vsad` command: `vsad calibrate`, the decision files and summary
lines of `vsad predict`, and the decision line of `vsad test` (vsad/cli.py calls these).

`vsad predict` writes, beside the overlays:
    decisions.csv   sample, decision, score, sample_threshold, ng_views, view_scores,
                    view_decisions, view_threshold (one row per sample; views joined by ';')
    decisions.json  {"thresholds": ..., "summary": {"samples", "NG", "OK", "undecided"},
                     "samples": [{"sample", "views", "decision", "score", "view_scores",
                                  "view_decisions", "ng_views"}, ...]}
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

from vsad._atomic import atomic_write_json, atomic_write_text
from vsad.detector import thresholds as thr


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def sample_line(sample_id: str, prediction) -> str:
    """One line per predicted sample: its decision, score against the threshold, NG views."""
    scores = prediction.view_scores
    if prediction.ng is None:
        views = " ".join(_fmt(s) for s in scores)
        return f"{sample_id}: n/a (uncalibrated)  score {_fmt(prediction.score)}  views {views}"
    t = prediction.thresholds
    relation = ">" if prediction.ng else "<="
    marked = " ".join(
        _fmt(s) + ("*" if ng else "") for s, ng in zip(scores, prediction.view_ng, strict=True)
    )
    ng_views = [str(k) for k, ng in enumerate(prediction.view_ng) if ng]
    legend = f" (* NG: > {_fmt(min(t['view'], t['sample']))})" if ng_views else ""
    return (
        f"{sample_id}: {prediction.decision}  score {_fmt(prediction.score)} {relation} "
        f"{_fmt(t['sample'])}  NG views: {','.join(ng_views) or 'none'}  "
        f"view scores {marked}{legend}{_coverage_note(prediction)}"
    )


def _coverage_note(prediction) -> str:
    """A unit unlike every training unit (vsad/detector/coverage.py): the thresholds cannot
    vouch for its decision, and the line should know why."""
    if getattr(prediction, "pose_covered", None) is not False:
        return ""
    return (f"  [unlike every training unit: pose novelty {prediction.pose_novelty:.2f} > 1; "
            "train on units at this pose]")  # fmt: skip


def total_line(decisions: list[str | None], thresholds: dict | None) -> str:
    ng, ok = decisions.count("NG"), decisions.count("OK")
    undecided = len(decisions) - ng - ok
    counts = f"{len(decisions)} samples: {ng} NG, {ok} OK"
    if undecided:
        counts += f", {undecided} undecided"
    return f"{counts} — {thr.summary(thresholds)}"


def write_decisions(out: Path, records: list[dict], thresholds: dict | None) -> None:
    """decisions.csv and decisions.json (see the module docstring)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["sample", "decision", "score", "sample_threshold", "ng_views",
                     "view_scores", "view_decisions", "view_threshold"])  # fmt: skip
    for r in records:
        writer.writerow(
            [
                r["sample"],
                r["decision"] or "",
                repr(r["score"]),
                "" if thresholds is None else repr(thresholds["sample"]),
                ";".join(str(k) for k in r["ng_views"]),
                ";".join(repr(s) for s in r["view_scores"]),
                ";".join(r["view_decisions"] or []),
                "" if thresholds is None else repr(thresholds["view"]),
            ]
        )
    atomic_write_text(out / "decisions.csv", buffer.getvalue())
    decided = [r["decision"] for r in records]
    summary = {
        "samples": len(records),
        "NG": decided.count("NG"),
        "OK": decided.count("OK"),
        "undecided": decided.count(None),
    }
    atomic_write_json(
        out / "decisions.json",
        {"thresholds": thresholds, "summary": summary, "samples": records},
        default=str,
    )


def decision_record(sample_id: str, views: list[str], prediction) -> dict:
    view_ng = prediction.view_ng
    return {
        "sample": sample_id,
        "views": views,
        "decision": prediction.decision,
        "score": float(prediction.score),
        "view_scores": [float(s) for s in prediction.view_scores],
        "view_decisions": prediction.view_decisions,
        "ng_views": [] if view_ng is None else [k for k, ng in enumerate(view_ng) if ng],
        "pose_novelty": getattr(prediction, "pose_novelty", None),
    }


def evaluation_line(decisions: dict | None) -> str:
    """The decision line of `vsad test`."""
    if not decisions:
        return "decisions: none (uncalibrated model: run `vsad calibrate`)"
    parts = []
    for level in ("sample", "view"):
        e = decisions[level]
        rates = [
            ("false-reject rate", e["frr"]),
            ("escape rate", e["escape_rate"]),
            ("precision", e["precision"]),
            ("recall", e["recall"]),
        ]
        text = ", ".join(f"{k} {'n/a' if v is None else f'{100 * v:.1f} %'}" for k, v in rates)
        parts.append(f"{level}s: {text}")
    return (
        f"at the stored thresholds — {'; '.join(parts)}\n  {thr.summary(decisions['thresholds'])}"
    )


# -- vsad calibrate ---------------------------------------------------------------------------
def add_calibrate_parser(sub, add_data_arguments) -> None:
    parser = sub.add_parser(
        "calibrate",
        help="set the OK/NG thresholds of a run (target false-reject rate, F1 or manual)",
        description="Rewrites the decision thresholds stored with a run's model. Without data "
        "options: from the training samples' leave-one-out scores stored at fit, at --fpr. "
        "With --data or --split: from that labelled split (data options default to the "
        "run's), at --fpr from its normal samples or F1-optimal with --f1. --view-threshold / "
        "--sample-threshold set a level by hand and override both.",
    )
    parser.add_argument("--run", required=True, help="run folder (or a saved model folder)")
    add_data_arguments(parser, required=False)
    parser.add_argument("--split", default=None, help="labelled split to calibrate on")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--fpr", type=float, help="target false-reject rate in (0, 1)")
    target.add_argument("--f1", action="store_true", help="F1-optimal (needs defects)")
    parser.add_argument("--view-threshold", type=float, help="manual view threshold")
    parser.add_argument("--sample-threshold", type=float, help="manual sample threshold")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=calibrate)


def _model_dir(run: Path) -> Path:
    return run / "model" if (run / "model").is_dir() else run


def calibrate(args: argparse.Namespace) -> int:
    from vsad.data import open_dataset
    from vsad.detector import load_detector

    run = Path(args.run)
    model_dir = _model_dir(run)
    detector = load_detector(model_dir, device=getattr(args, "device", None) or "cpu")
    split = None
    if args.data or args.split or args.category:
        from vsad.saved_files import read_run_info

        data = {}
        if (run / "run.json").exists():  # a run folder (else a model folder: data options)
            data = read_run_info(run / "run.json")["data"]
        root = args.data or data.get("root")
        category = args.category or data.get("category")
        if not root or not category:
            raise ValueError(
                f"--data, --category: got {root!r} and {category!r}; the run names no data, "
                "expected both to calibrate on a split"
            )
        fmt = args.format if args.format != "auto" else data.get("format", "auto")
        size = args.image_size if args.image_size is not None else data.get("image_size")
        options = {"image_size": size} if size else {}
        name = args.split or "test"
        split = open_dataset(root, category, name, format=fmt, **options)
        if len(split) == 0:
            raise ValueError(f"--split: the {name!r} split of {category!r} in {root} is empty")
        print(f"calibrating on {len(split)} samples of {category!r}/{name}")
        if name == "test":
            print("  note: thresholds set on the test split make its later metrics optimistic")
    thresholds = detector.calibrate(
        split,
        fpr=args.fpr,
        f1=args.f1,
        view_threshold=args.view_threshold,
        sample_threshold=args.sample_threshold,
        progress=not args.quiet,
    )
    path = detector.save_thresholds(model_dir)
    print(thr.summary(thresholds))
    for level in thr.LEVELS:
        entry = thresholds["levels"][level]
        interval = entry.get("frr_interval")
        if interval:
            print(
                f"  {level}: {entry['n_normal']} normal scores, rank {entry['rank']}, expected "
                f"false-reject rate {100 * entry['expected_frr']:.1f} % (95 %: "
                f"{100 * interval[0]:.1f} – {100 * interval[1]:.1f} %)"
            )
    print(f"thresholds written to {path}")
    return 0
