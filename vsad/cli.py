"""The `vsad` command: info, train, test, calibrate, predict, export, serve, demo.

A run folder (`--out RUN` of `vsad train`) holds:
    RUN/run.json           config, data source, versions, backends, machine, timings, losses
    RUN/model/             the fitted detector (detector.json + safetensors), see VSAD.save
    RUN/checkpoints/       training checkpoints (a rerun with the same --out resumes)
    RUN/test/<category>/   what `vsad test` writes: report.html, metrics.{json,csv,md} (the
                           decisions at the stored thresholds under "decisions" in the JSON),
                           scores.csv, roc.png, curves.png, scores_hist.png, overlays/
    RUN/predictions/       what `vsad predict` writes: decisions.{csv,json}, predictions.json,
                           overlays (panels; full-size overlays of the NG views)
`vsad calibrate` rewrites the thresholds in RUN/model/detector.json (vsad/cli_decisions.py).
Everything is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

import vsad
from vsad._atomic import atomic_path, atomic_write_json
from vsad.cli_decisions import (
    add_calibrate_parser,
    decision_record,
    evaluation_line,
    sample_line,
    total_line,
    write_decisions,
)
from vsad.data.sample import MAX_READ_SIZE
from vsad.output_paths import check_input_file, check_output_folder

MODELS = {"vsad": "VSAD", "patchknn": "PatchKNN", "patchcore": "PatchCore"}


# -- helpers ------------------------------------------------------------------------------
def _versions() -> dict:
    import cv2
    import diffusers
    import numpy

    return {
        "vsad": vsad.__version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "numpy": numpy.__version__,
        "opencv": cv2.__version__,
        "python": platform.python_version(),
    }


def _machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }


def _write_json(path: Path, payload: dict) -> None:
    atomic_write_json(path, payload, default=str)


def _detector_class(name: str):
    from vsad import detector

    return getattr(detector, MODELS[name])


def _open(args, split: str, category: str | None = None):
    from vsad.data import open_dataset

    category = category or args.category
    options = {}
    if getattr(args, "image_size", None) is not None:
        options["image_size"] = args.image_size
    if getattr(args, "allow_outside_root", False):
        options["allow_outside_root"] = True
    return open_dataset(args.data, category, split, format=args.format, **options)


def _add_device_argument(parser: argparse.ArgumentParser, what: str, default: str = "cpu") -> None:
    parser.add_argument(
        "--device",
        default=None,
        help=f"where {what} runs: cpu, cuda (the current GPU) or cuda:N (default: {default})",
    )


def _int_in(lo: int, hi: int | None):
    """An argparse type: an integer in [lo, hi] (hi None: no upper bound), else a usage error
    that names the value and the range."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"got {text!r}, expected an integer") from None
        if value < lo or (hi is not None and value > hi):
            upper = f" and <= {hi}" if hi is not None else ""
            raise argparse.ArgumentTypeError(f"got {value}, expected an integer >= {lo}{upper}")
        return value

    return parse


def _check_homographies_option(args: argparse.Namespace, detector) -> None:
    """--homographies must name a file, and one the model reads: only a VSAD with UNet levels
    uses homographies (MVAM and cross-view fusion); any other model would ignore it."""
    if args.homographies is None:
        return
    check_input_file(args.homographies, "--homographies")
    if not getattr(detector, "uses_unet", False):
        raise ValueError(
            f"--homographies: given {args.homographies!r}, but this {type(detector).__name__} "
            "does not use homographies (only a VSAD with UNet feature_levels does); drop the "
            "option"
        )


def _load(path: Path, args: argparse.Namespace):
    """The saved detector at `path`, on --device (default cpu: a model fitted on a GPU loads
    on any machine)."""
    from vsad.detector import load_detector

    return load_detector(path, device=args.device or "cpu")


def _add_data_arguments(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument("--data", required=required, help="dataset root folder")
    parser.add_argument(
        "--format",
        default="auto",
        choices=["auto", "realiad", "manta", "folder"],
        help="dataset layout (default: detected)",
    )
    parser.add_argument("--category", required=required, help="category (object class) name")
    parser.add_argument(
        "--image-size",
        type=_int_in(1, MAX_READ_SIZE),
        default=None,
        help="resize every view to this size² on load (1 to "
        f"{MAX_READ_SIZE}; default: native size)",
    )
    parser.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="Real-IAD: read image/mask paths of the dataset json that lead outside the "
        "dataset root (absolute or ../); refused by default",
    )


# -- commands ------------------------------------------------------------------------------
def _info(args: argparse.Namespace) -> int:
    info = {
        "vsad": vsad.__version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "backends": vsad.backends(),
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    b = info["backends"]
    print(f"vsad {info['vsad']} (torch {info['torch']}, {info['threads']} threads)")
    cpp = f"yes, {b['cpu_isa']} kernels" if b["cpp"] else "no (vsad._C missing)"
    print(f"  cpp backend:       {cpp}")
    print(f"  triton backend:    {'installed' if b['triton'] else 'not installed'}")
    print("  reference backend: yes")
    return 0


def _relaunch(args: argparse.Namespace) -> int | None:
    """`--nproc N` (N > 1) outside torchrun: the command's exit status after running it on N
    local processes under torchrun; None when this process should do the work itself."""
    if args.nproc is not None and args.nproc < 1:
        raise ValueError(f"--nproc: got {args.nproc}, expected an integer >= 1")
    if args.nproc is not None and args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        from vsad.distributed.launch import relaunch_with_torchrun

        return relaunch_with_torchrun(args.nproc, args.argv)
    return None


def _train(args: argparse.Namespace) -> int:
    status = _relaunch(args)
    if status is not None:
        return status
    cls = _detector_class(args.model)
    config = cls.config_class.from_file(args.config) if args.config else cls.config_class()
    config = config.with_overrides(args.overrides)
    if args.device is not None:  # the same as the override device=...
        config = config.with_overrides({"device": args.device})
    detector = cls(config)
    detector.device  # noqa: B018 - a device this machine lacks fails before anything is read
    for folder in (args.out, Path(args.out) / "model", Path(args.out) / "checkpoints"):
        check_output_folder(folder, "--out")  # all of it before training, not at the save
    _check_homographies_option(args, detector)
    if "WORLD_SIZE" in os.environ:  # under torchrun (or --nproc): vsad.distributed
        return _train_distributed(args, cls, config, detector)
    train = _open(args, "train")
    if len(train) == 0:
        raise SystemExit(
            f"vsad train: the train split of {args.category!r} in {args.data} is empty"
        )
    if args.max_train is not None:
        from torch.utils.data import Subset

        train = Subset(train, range(min(args.max_train, len(train))))
    run = Path(args.out)
    run.mkdir(parents=True, exist_ok=True)
    print(f"training {cls.kind} on {len(train)} samples of {args.category!r} -> {run}")
    start = time.perf_counter()
    fit_args = {"progress": not args.quiet}
    if cls.kind == "VSAD":
        fit_args.update(work_dir=run / "checkpoints", homographies=args.homographies)
    detector.fit(train, **fit_args)
    seconds = time.perf_counter() - start
    homographies = getattr(detector, "homographies", None)
    if homographies is not None:
        print(homographies.summary())
    detector.save(run / "model")
    _write_json(
        run / "run.json",
        {
            "command": sys.argv,
            "detector": cls.kind,
            "config": config.to_dict(),
            "data": {
                "root": str(Path(args.data).resolve()),
                "format": args.format,
                "category": args.category,
                "image_size": args.image_size,
                "train_samples": len(train),
            },
            "fit_seconds": seconds,
            "view_pairs": None
            if homographies is None
            else {
                "summary": homographies.summary(),
                "pairs": [r.to_dict() for r in homographies.report],
            },
            "losses": getattr(detector, "history", [])[-1:],
            "versions": _versions(),
            "backends": vsad.backends(),
            "machine": _machine(),
        },
    )
    print(f"fitted in {seconds:.0f} s; model saved to {run / 'model'}")
    return 0


def _train_distributed(args, cls, config, detector) -> int:
    """`vsad train` on every rank of a torchrun job: DDP training of the UNet, the memory bank
    built sharded (each rank extracts its block of the training samples), rank 0 writes the
    single-process run folder (model/, run.json; checkpoints/ resumable by any world size)."""
    import torch.distributed as dist

    from vsad.distributed.bank import fit_sharded, save_sharded_detector
    from vsad.distributed.launch import init_from_env
    from vsad.distributed.training import DistributedVALDMTrainer

    rank, world = init_from_env(device=config.device)
    try:
        train = _open(args, "train")
        if len(train) == 0:
            raise SystemExit(
                f"vsad train: the train split of {args.category!r} in {args.data} is empty"
            )
        if args.max_train is not None:
            from torch.utils.data import Subset

            train = Subset(train, range(min(args.max_train, len(train))))
        run = Path(args.out)
        if rank == 0:
            run.mkdir(parents=True, exist_ok=True)
            print(f"training {cls.kind} on {len(train)} samples of {args.category!r} -> {run} "
                  f"on {world} processes")  # fmt: skip
        dist.barrier()
        start = time.perf_counter()
        fit_args = {"progress": not args.quiet and rank == 0}
        if cls.kind == "VSAD":
            detector.trainer_class = DistributedVALDMTrainer
            fit_args.update(work_dir=run / "checkpoints", homographies=args.homographies)
        fit_sharded(detector, train, **fit_args)
        seconds = time.perf_counter() - start
        save_sharded_detector(detector, run / "model")
        if rank == 0:
            _write_json(
                run / "run.json",
                {
                    "command": sys.argv,
                    "detector": cls.kind,
                    "config": config.to_dict(),
                    "data": {
                        "root": str(Path(args.data).resolve()),
                        "format": args.format,
                        "category": args.category,
                        "image_size": args.image_size,
                        "train_samples": len(train),
                    },
                    "fit_seconds": seconds,
                    "world_size": world,
                    "losses": getattr(detector, "history", [])[-1:],
                    "versions": _versions(),
                    "backends": vsad.backends(),
                    "machine": _machine(),
                },
            )
            print(f"fitted in {seconds:.0f} s on {world} processes; model saved to {run / 'model'}")
        dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def _run_info(run: Path) -> dict:
    """run.json of a `vsad train` folder, checked for what the commands read from it."""
    from vsad.saved_files import read_run_info

    path = run / "run.json"
    if not path.exists():
        raise SystemExit(f"vsad: --run {run}: no run.json there; expected a `vsad train` folder")
    return read_run_info(path)


def _test(args: argparse.Namespace) -> int:
    run = Path(args.run)
    info = _run_info(run)
    data = info["data"]
    args.data = args.data or data.get("root")
    args.format = args.format if args.format != "auto" else data.get("format", "auto")
    args.category = args.category or data.get("category")
    if not args.data or not args.category:
        raise ValueError(
            f"--run: {run / 'run.json'} names no data root or category; pass --data and --category"
        )
    if args.image_size is None:
        args.image_size = data.get("image_size")
    status = _relaunch(args)  # after the checks above, which are the same on every rank
    if status is not None:
        return status
    check_output_folder(args.out or run / "test" / args.category, "--out")
    if "WORLD_SIZE" in os.environ:  # under torchrun (or --nproc): vsad.distributed
        return _test_distributed(args, run, info)
    detector = _load(run / "model", args)
    test = _open(args, "test")
    start = time.perf_counter()
    _evaluate_and_report(args, run, info, detector, test, start)
    return 0


def _evaluate_and_report(args, run: Path, info: dict, detector, test, start, predictions=None):
    from vsad.detector.evaluate import evaluate_detector, print_table

    out = Path(args.out) if args.out else run / "test" / args.category
    decisions: dict = {}
    metrics = evaluate_detector(
        detector,
        test,
        out,
        overlays=args.overlays,
        progress=not args.quiet,
        timings={},
        decisions=decisions,
        worst=args.worst,
        run_config=info,
        title=f"{args.category} — {type(detector).__name__} ({run})",
        predictions=predictions,
    )
    print_table(metrics, args.category)
    print(evaluation_line(decisions or None))
    print(
        f"{len(test)} samples in {time.perf_counter() - start:.0f} s; results in {out} "
        "(report.html, metrics.json, metrics.csv, metrics.md, scores.csv, roc.png, curves.png, "
        "scores_hist.png, overlays/)"
    )


def _test_distributed(args: argparse.Namespace, run: Path, info: dict) -> int:
    """`vsad test` on every rank of a torchrun job: each rank loads its slice of the memory
    bank, the test batches are spread over the ranks (searches collective), and rank 0
    evaluates them in sample order and writes the single-process results folder."""
    import torch.distributed as dist

    from vsad.distributed.bank import load_sharded_detector
    from vsad.distributed.evaluate import iter_sharded_predictions
    from vsad.distributed.launch import init_from_env

    device = args.device or "cpu"
    rank, world = init_from_env(device=device)
    try:
        detector = load_sharded_detector(run / "model", device=device)
        test = _open(args, "test")
        start = time.perf_counter()
        stream = iter_sharded_predictions(detector, test, progress=not args.quiet)
        if rank == 0:
            print(f"testing {len(test)} samples on {world} processes")
            _evaluate_and_report(args, run, info, detector, test, start, predictions=stream)
        else:
            for _ in stream:  # this rank's batches, sent to rank 0
                pass
        dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def _without_masks(files: list[Path]) -> list[Path]:
    """A Real-IAD sample folder keeps each defect mask beside its view: `<stem>.png` next to
    `<stem>.jpg`, or `<stem>_mask.png` (vsad.data.write_realiad with PNG images). Those are
    not views."""
    stems = {p.stem for p in files if p.suffix.lower() != ".png"}
    names = {p.stem for p in files}
    return [
        p
        for p in files
        if not (p.suffix.lower() == ".png" and p.stem in stems)
        and not (p.stem.endswith("_mask") and p.stem[: -len("_mask")] in names)
    ]


def _group(paths: list[Path], views: int) -> list[tuple[str, list[Path]]]:
    """(sample name, view files): a folder is one sample (its images in natural order); loose
    files are taken `views` at a time."""
    from vsad.data.imageio import IMAGE_EXTENSIONS
    from vsad.data.sample import natural_key

    files: list[Path] = []
    groups: list[tuple[str, list[Path]]] = []
    for path in paths:
        if path.is_dir():
            inside = sorted(
                (p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS),
                key=lambda p: natural_key(p.name),
            )
            groups.append((path.name, _without_masks(inside)))
        elif not path.is_file():
            raise FileNotFoundError(f"images: '{path}' does not exist")
        else:
            files.append(path)
    if len(files) % views:
        raise ValueError(
            f"images: got {len(files)} image files, expected a multiple of the detector's "
            f"{views} views (one sample = {views} consecutive files)"
        )
    for i in range(0, len(files), views):
        groups.append((f"sample{i // views:04d}", files[i : i + views]))
    return groups


def _predict(args: argparse.Namespace) -> int:
    import numpy as np

    from vsad.data import read_image
    from vsad.data.imageio import resize_image
    from vsad.viz import save_overlays

    run = Path(args.run)
    out = check_output_folder(args.out or run / "predictions", "--out")
    detector = _load(run / "model" if (run / "model").is_dir() else run, args)
    groups = _group([Path(p) for p in args.images], detector.num_views)
    results, records = [], []
    for sample_id, group in groups:
        images = [read_image(p) for p in group]
        if images and images[0].shape[:2] != tuple(detector.view_size):
            # The run's data were resized on load (--image-size): do the same here.
            images = [resize_image(im, tuple(detector.view_size)) for im in images]
        prediction = detector.predict(images)
        t = prediction.thresholds
        save_overlays(
            out,
            sample_id,
            images,
            prediction.maps,
            view_scores=prediction.view_scores,
            sample_score=prediction.score,
            threshold=None if t is None else t["view"],
            sample_threshold=None if t is None else t["sample"],
            # Full-size overlays of the views that need a look (all of them when uncalibrated).
            per_view=True if prediction.view_ng is None else np.flatnonzero(prediction.view_ng),
        )
        if args.save_maps:
            from vsad.viz import safe_name

            with atomic_path(out / f"{safe_name(sample_id)}_maps.npy") as tmp:
                np.save(tmp, prediction.maps)
        results.append(
            {
                "sample": sample_id,
                "views": [str(p) for p in group],
                "score": prediction.score,
                "view_scores": [float(s) for s in prediction.view_scores],
            }
        )
        records.append(decision_record(sample_id, [str(p) for p in group], prediction))
        print(sample_line(sample_id, prediction))
    _write_json(out / "predictions.json", {"predictions": results})
    write_decisions(out, records, detector.thresholds)
    print(total_line([r["decision"] for r in records], detector.thresholds))
    print(f"overlays, decisions.csv, decisions.json and predictions.json in {out}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from vsad.demo import run_demo

    check_output_folder(args.out, "--out")
    run_demo(
        Path(args.out),
        photos=args.photos,
        preset=args.preset,
        overrides=args.overrides,
        steps=args.steps,
        n_train=args.train_samples,
        n_test=args.test_samples,
        baseline=not args.no_baseline,
        progress=not args.quiet,
    )
    return 0


# -- parser -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vsad",
        description="ViewSense-AD: unsupervised multi-view visual anomaly detection.",
    )
    parser.add_argument("--version", action="version", version=f"vsad {vsad.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="show the installed backends and instruction set")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    info.set_defaults(func=_info)

    train = sub.add_parser(
        "train",
        help="fit a detector on the normal training samples of a category",
        description="Fit VSAD (default), the PatchKNN baseline or PatchCore and save it in a "
        "run folder. "
        "Trailing key=value arguments override the config, e.g. train.steps=300 "
        "bank_mode=global feature_levels=[-1].",
    )
    _add_data_arguments(train, required=True)
    train.add_argument("--out", required=True, help="run folder to create (or resume)")
    train.add_argument("--config", help="JSON file with a config (see VSADConfig)")
    train.add_argument("--model", default="vsad", choices=sorted(MODELS), help="detector")
    train.add_argument("--homographies", help="file with the views' homographies (else estimated)")
    train.add_argument(
        "--max-train",
        type=_int_in(1, None),
        help="use only the first N >= 1 training samples (default: all)",
    )
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.add_argument(
        "--nproc",
        type=int,
        help="train on N local processes (starts torchrun; under torchrun itself not needed)",
    )
    _add_device_argument(train, "training", "the config's device, cpu")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    train.set_defaults(func=_train)

    test = sub.add_parser(
        "test",
        help="evaluate a run on a test split: metrics, scores, ROC curves, overlays",
        description="Writes metrics.json/.csv/.md (S-AUROC, V-AUROC, P-AUROC, AUPRO, AP, "
        "F1-max; false-reject and escape rates, precision, recall and confusion matrices at "
        "the stored thresholds), scores.csv, roc.png, curves.png, scores_hist.png, overlay "
        "pictures and report.html. Data options default to the run's.",
    )
    test.add_argument("--run", required=True, help="run folder written by `vsad train`")
    _add_data_arguments(test, required=False)
    test.add_argument("--out", help="output folder (default RUN/test/<category>)")
    test.add_argument(
        "--overlays", type=_int_in(0, None), default=16, help="overlay panels to draw (0: none)"
    )
    test.add_argument(
        "--worst",
        type=_int_in(0, None),
        default=4,
        help="worst false rejects and escapes in report.html (0: none)",
    )
    test.add_argument("--quiet", action="store_true", help="no progress bars")
    test.add_argument(
        "--nproc",
        type=int,
        help="evaluate on N local processes, the memory bank sharded over them (starts "
        "torchrun; under torchrun itself not needed)",
    )
    _add_device_argument(test, "the evaluation")
    test.set_defaults(func=_test)

    add_calibrate_parser(sub, _add_data_arguments)
    _add_device_argument(sub.choices["calibrate"], "the scoring of a split")

    predict = sub.add_parser(
        "predict",
        help="anomaly maps and scores for new samples",
        description="IMAGES are sample folders (their image files, in natural order, are the "
        "views) or image files taken M at a time, M = the run's number of views.",
    )
    predict.add_argument("--run", required=True, help="run folder (or a saved model folder)")
    predict.add_argument("images", nargs="+", help="sample folders or image files")
    predict.add_argument("--out", help="output folder (default RUN/predictions)")
    predict.add_argument("--save-maps", action="store_true", help="also save maps as .npy")
    _add_device_argument(predict, "prediction")
    predict.set_defaults(func=_predict)

    from vsad.cli_serve import add_serve_parsers

    add_serve_parsers(sub)  # vsad export, vsad serve

    demo = sub.add_parser(
        "demo",
        help="fit, evaluate and draw the default model on a synthetic category from the "
        "packaged texture (~2 min), or on your photographs of one object (--photos)",
    )
    demo.add_argument("--out", default="vsad-demo", help="output folder (default ./vsad-demo)")
    demo.add_argument(
        "--photos",
        default=None,
        help="folder of >= 5 photographs of one object, one per camera (name order): a "
        "real-photo category with made normal variation and defects instead",
    )
    demo.add_argument(
        "--preset",
        default="realistic",
        choices=("easy", "placement", "realistic"),
        help="difficulty of the real-photo category (docs/photo-benchmark.md)",
    )
    demo.add_argument(
        "--steps",
        type=_int_in(1, 1_000_000),
        default=None,
        help="UNet training steps (UNet pipeline only)",
    )
    demo.add_argument("--train-samples", type=_int_in(1, 10_000), default=40)
    demo.add_argument("--test-samples", type=_int_in(1, 10_000), default=40)
    demo.add_argument("--no-baseline", action="store_true", help="skip the PatchKNN comparison")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.add_argument("overrides", nargs="*", metavar="key=value", help="VSAD config overrides")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for `vsad train --nproc N`
    try:
        return args.func(args)
    except (ValueError, OSError) as err:
        # ValueError: bad input (vsad's own errors: DatasetError, SavedFileError,
        # OutputPathError, ... subclass it); OSError: a file the system refused to read or
        # write (missing, permissions, a full disk), named by its message.
        print(f"vsad {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
