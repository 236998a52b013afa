"""What every memory-bank detector shares: reading training samples, building the multi-level
bank, scoring (eq. 12), batched prediction, and saving/loading a fitted detector atomically.

A subclass provides the features: `_fit_model` (train whatever needs training) and `_extract`
((B, M, 3, s, s) images -> one (B, M, D, h, w) tensor per level), plus its own state.
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vsad._atomic import atomic_directory
from vsad.detector import device as devices
from vsad.detector.alignment import MIN_INLIERS, ViewAligner
from vsad.detector.config import DetectorConfig
from vsad.detector.coverage import PoseCoverage, unit_descriptors
from vsad.detector.inputs import check_views, to_model_tensor, views_of
from vsad.memory.feature_banks import FeatureBanks
from vsad.model.scoring import combine_levels, gaussian_smooth, view_and_sample_scores

FORMAT_VERSION = 1
META_FILE = "detector.json"
WEIGHTS_FILE = "weights.safetensors"
BANK_FILE = "bank.safetensors"


@dataclass
class Prediction:
    """Anomaly maps and scores of one multi-view sample.

    maps:        (M, H, W) float32, one pixel map per view at the view's own size (eq. 12);
                 with normalization="position" (default) in units of the normal variation
                 of each view and cell (z-scores).
    view_scores: (M,) the maximum of each map.
    score:       the sample score, the maximum over views.
    ng:          the sample decision, score > the sample threshold (None: uncalibrated).
    view_ng:     (M,) bool, which cameras saw the defect of an NG sample: its views whose score
                 is above the view threshold (view_decisions); all False for an OK sample.
    thresholds:  the thresholds used ({"view", "sample", "source", "fpr", ...}) or None.
    pose_novelty: how far the unit is from the training units, all views at once
                 (vsad/detector/coverage.py): > 1 = outside what they covered, e.g. a unit
                 turned to a pose no training unit showed, whose scores and decision the
                 training units cannot vouch for; None for a model without coverage.
    """

    maps: np.ndarray
    view_scores: np.ndarray
    score: float
    sample_id: str | None = None
    view_ng: np.ndarray | None = None
    ng: bool | None = None
    thresholds: dict | None = None
    pose_novelty: float | None = None

    @property
    def pose_covered(self) -> bool | None:
        """Whether the training units covered this unit (pose_novelty <= 1); None: unknown."""
        return None if self.pose_novelty is None else self.pose_novelty <= 1.0

    @property
    def decision(self) -> str | None:
        """The sample decision, "NG" or "OK"; None when the model has no thresholds."""
        return None if self.ng is None else ("NG" if self.ng else "OK")

    @property
    def view_decisions(self) -> list[str] | None:
        """Per view "NG" or "OK" (which cameras saw a defect); None when uncalibrated."""
        return None if self.view_ng is None else ["NG" if v else "OK" for v in self.view_ng]


def view_decisions(view_scores: np.ndarray, thresholds: dict) -> np.ndarray:
    """NG views of one sample: only an NG sample has them (the unit's decision is the sample
    one — with a 5 % false-reject rate per view, a normal five-camera unit would otherwise
    show an NG camera about 1 time in 5 while passing); they are its views above the view
    threshold, and at least the view whose score made the sample NG."""
    view_scores = np.asarray(view_scores)
    if not float(view_scores.max()) > thresholds["sample"]:
        return np.zeros(view_scores.shape, bool)
    return view_scores > min(thresholds["view"], thresholds["sample"])


@contextmanager
def stage(timings: dict | None, name: str):
    """Adds the wall time of the block to timings[name] (no-op when timings is None)."""
    if timings is None:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


class BankDetector:
    """Base class of VSAD and PatchKNN (not used directly)."""

    config_class = DetectorConfig
    kind = "base"

    def __init__(self, config: DetectorConfig | dict | None = None) -> None:
        if config is None:
            config = self.config_class()
        elif isinstance(config, dict):
            config = self.config_class.from_dict(config)
        elif not isinstance(config, self.config_class):
            raise TypeError(
                f"config: got {type(config).__name__}, expected {self.config_class.__name__}"
            )
        self.config = config
        self.banks: FeatureBanks | None = None
        self.num_views: int | None = None
        # Decision thresholds (vsad/detector/thresholds.py) and the training samples' LOO
        # scores they were set from (kept so that `vsad calibrate` can move the target later).
        self.thresholds: dict | None = None
        self.normal_scores: dict | None = None
        self.view_size: tuple[int, int] | None = None
        self._device: torch.device | None = None  # config.device resolved (fit, load, to)
        self.aligner: ViewAligner | None = None  # config.align != "none": the reference views
        # fit's registration check (_check_registration): what fraction of the training views
        # registered, and whether registration was turned off for that reason.
        self.align_report: dict | None = None
        self._config_requested: DetectorConfig | None = None
        self.coverage: PoseCoverage | None = None  # fit: the training units' summaries

    # -- device ---------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where the model, the banks and every tensor of fit and predict live
        (config.device, checked against this machine on first use)."""
        if self._device is None:
            self._device = devices.resolve_device(self.config.device)
        return self._device

    def to(self, device: str) -> BankDetector:
        """Moves the fitted (or loaded) detector to `device` ("cpu", "cuda", "cuda:N") and
        sets config.device; returns self. Scores on another device may differ in the last
        bits (other kernels), not more."""
        resolved = devices.resolve_device(device)
        self.config.device, self._device = device, resolved
        if self.banks is not None:
            self.banks.to(resolved)
        if self.coverage is not None:
            self.coverage.to(resolved)
        self._move_to(resolved)
        return self

    # -- hooks for subclasses -------------------------------------------------------------
    def _fit_model(self, images: torch.Tensor, raw_views: list, *, progress, work_dir, **kw):
        """Trains the feature extractor on (S, M, 3, s, s) normal images (nothing by default)."""

    def _extract(self, images: torch.Tensor, timings: dict | None = None) -> list[torch.Tensor]:
        raise NotImplementedError

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def _load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Restores what _state_tensors saved."""

    def _extra_meta(self) -> dict:
        return {}

    def _move_to(self, device: torch.device) -> None:
        """Moves the subclass's modules and tensors to `device`."""

    # -- fitting --------------------------------------------------------------------------
    @devices.ieee_float32()
    def fit(
        self,
        train: Iterable,
        *,
        progress: bool = True,
        work_dir: str | Path | None = None,
        **kwargs,
    ):
        """Fits on normal multi-view samples (MultiViewSamples or sequences of M RGB images).

        work_dir: where training checkpoints go (a rerun with the same folder resumes).
        Returns self.
        """
        from tqdm.auto import tqdm

        self._device = None
        device = self.device  # checked before any data is read
        if self._config_requested is not None:  # an earlier fit turned registration off
            self.config, self._config_requested = self._config_requested, None
        torch.manual_seed(self.config.seed)
        keep_raw = self._raw_samples_needed()
        self.aligner = None
        # Read everything first: with align_frame="median" the frame the views are warped into
        # depends on every training unit's registration.
        read: list[tuple[torch.Tensor, list | None, tuple | None]] = []
        for index, sample in enumerate(tqdm(train, desc="read", disable=not progress)):
            where = f"train[{index}]"
            views = views_of(sample, where=where)
            check_views(views, self.num_views, self.view_size, where=where)
            self.num_views, self.view_size = len(views), tuple(views[0].shape[:2])
            if self.config.align != "none" and self.aligner is None:
                self.aligner = ViewAligner.from_views(views)  # the first sample: the reference
            tensor = to_model_tensor(views, self.config.image_size)
            registration = None
            if self.aligner is not None:
                registration = self.aligner.register(views, where=where, warn=False)
            read.append((tensor, views if len(read) < keep_raw else None, registration))
        if not read:
            raise ValueError("train: got no samples, expected at least one normal sample")
        self.align_report = None
        if self.aligner is not None:
            read = self._check_registration(read)
        if self.aligner is not None and self.config.align_frame == "median":
            self.aligner.centre_frame([registration for _, _, registration in read])
        images, raw_views = [], []
        for tensor, views, registration in read:
            if self.aligner is not None:
                matrices = self.aligner.in_frame(*registration)
                tensor = self.aligner.to_reference(tensor, matrices)
                if views is not None:
                    pairs = zip(views, matrices, strict=True)
                    views = [self.aligner.warp_view(v, a) for v, a in pairs]
            if views is not None:
                raw_views.append(views)
            images.append(tensor)
        stacked = torch.stack(images).to(device)
        self._fit_model(stacked, raw_views, progress=progress, work_dir=work_dir, **kwargs)
        self.banks = self._new_banks()
        batch = self.config.batch_size
        bar = tqdm(total=len(stacked), desc="memory bank", disable=not progress)
        # Samples this process keeps in its bank: all, or one rank's block (vsad.distributed);
        # batches keep their single-process boundaries, so the features are the same.
        first, last = self._bank_sample_range(len(stacked))
        summaries = []
        for start in range(0, len(stacked), batch):
            chunk = stacked[start : start + batch]
            lo, hi = max(first, start) - start, min(last, start + len(chunk)) - start
            if lo < hi:
                features = self._features(chunk)
                if (lo, hi) != (0, len(chunk)):
                    features = [f[lo:hi] for f in features]
                self.banks.add(features)
                summaries.append(unit_descriptors(features))
            bar.update(len(chunk))
        bar.close()
        # Coverage needs every training unit; a process holding one block of them (several
        # processes, vsad.distributed) fits none.
        whole = (first, last) == (0, len(stacked))
        self.coverage = PoseCoverage.fit(torch.cat(summaries)) if whole and summaries else None
        from vsad.detector.calibration import MIN_LOO_SAMPLES, calibrate_on_training

        keep_loo = self.config.threshold_fpr is not None and len(stacked) >= MIN_LOO_SAMPLES
        if self.config.threshold_fpr is not None and not keep_loo:
            warnings.warn(
                f"train: {len(stacked)} samples, fewer than the {MIN_LOO_SAMPLES} needed for "
                "decision thresholds from leave-one-out scores; the model makes no OK/NG "
                "decisions until `vsad calibrate` sets them",
                stacklevel=2,
            )
        self.banks.finalize(seed=self.config.seed, keep_loo=keep_loo)
        calibrate_on_training(self)
        return self

    def _check_registration(self, read: list) -> list:
        """Turns registration off when too few training views registered (the units vary in
        a way a similarity transform does not model, e.g. they turn: config
        `align_min_registered`); records what was measured in `align_report`."""
        registered = np.stack([registration[1] for _, _, registration in read])  # (S, M)
        fraction = float(registered.mean())
        minimum = self.config.align_min_registered
        self.align_report = {
            "registered_fraction": fraction,
            "registered_per_camera": registered.mean(axis=0).tolist(),
            "min_registered": minimum,
            "turned_off": fraction < minimum,
        }
        if fraction >= minimum:
            failed = [
                (s, np.flatnonzero(~r).tolist()) for s, r in enumerate(registered) if not r.all()
            ]
            if failed:
                shown = ", ".join(f"train[{s}] views {v}" for s, v in failed[:8])
                more = f" and {len(failed) - 8} more samples" if len(failed) > 8 else ""
                warnings.warn(
                    f"train: {int((~registered).sum())} of {registered.size} views could not be "
                    f"registered to their reference view (fewer than {MIN_INLIERS} consistent "
                    f"keypoint matches): {shown}{more}; scored unaligned",
                    stacklevel=3,
                )
            return read
        changes: dict = {"align": "none"}
        wider = self.config.unregistered_radius
        if self.config.bank_mode == "local" and wider is not None:
            changes["bank_radius"] = max(self.config.bank_radius, wider)
        warnings.warn(
            f"align: only {100 * fraction:.0f} % of the training views registered to their "
            f"camera's reference view (align_min_registered={minimum}): the units vary in a way "
            "a rotation, scale and shift does not undo (units that turn show other sides of "
            "themselves); views are scored unregistered (align='none', "
            f"bank_radius={changes.get('bank_radius', self.config.bank_radius)})",
            stacklevel=3,
        )
        self.aligner = None
        self._config_requested = self.config
        self.config = self.config.with_overrides(changes)
        return [(tensor, views, None) for tensor, views, _ in read]

    def _features(self, images: torch.Tensor, timings: dict | None = None) -> list[torch.Tensor]:
        """The subclass's features, each averaged over feature_pool² neighbouring cells: a
        cell's neighbourhood is more robust to sub-cell misplacement than the cell alone."""
        features = self._extract(images, timings)
        k = self.config.feature_pool
        if k == 1:
            return features
        pooled = []
        for feat in features:
            B, M = feat.shape[:2]
            flat = F.avg_pool2d(
                feat.flatten(0, 1), k, stride=1, padding=k // 2, count_include_pad=False
            )
            flat = flat[..., : feat.shape[-2], : feat.shape[-1]]  # even k pads one extra
            pooled.append(flat.reshape(B, M, *flat.shape[1:]))
        return pooled

    def _raw_samples_needed(self) -> int:
        return 0

    def _bank_sample_range(self, samples: int) -> tuple[int, int]:
        """The training samples [lo, hi) whose features this process adds to its bank (a
        hook for vsad.distributed.bank.fit_sharded)."""
        return 0, samples

    def _new_banks(self) -> FeatureBanks:
        c = self.config
        return FeatureBanks(
            c.bank_mode,
            radius=c.bank_radius,
            per_view=c.bank_per_view,
            dtype=getattr(torch, c.bank_dtype),
            coreset_ratio=c.coreset_ratio,
            normalization=c.normalization,
            device=self.device,
        )

    # -- prediction -----------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if self.banks is None:
            raise RuntimeError(
                f"{type(self).__name__} is not fitted: call fit() or load() a saved detector"
            )

    def predict(self, views, *, timings: dict | None = None) -> Prediction:
        """Anomaly maps and scores of one sample (a MultiViewSample or M RGB images).
        timings: if a dict is given, seconds per stage are added to it."""
        return next(self.iter_predict([views], progress=False, timings=timings))

    def predict_many(self, samples: Iterable, **kwargs) -> list[Prediction]:
        """predict for many samples, batch_size samples at a time (see iter_predict)."""
        return list(self.iter_predict(samples, **kwargs))

    def iter_predict(
        self,
        samples: Iterable,
        *,
        batch_size: int | None = None,
        progress: bool = True,
        timings: dict | None = None,
    ) -> Iterator[Prediction]:
        """Yields one Prediction per sample, in order, computing batch_size samples at once."""
        from tqdm.auto import tqdm

        self._check_fitted()
        batch_size = batch_size or self.config.batch_size
        total = len(samples) if hasattr(samples, "__len__") else None
        bar = tqdm(total=total, desc="predict", disable=not progress)
        pending: list[tuple[torch.Tensor, str | None, np.ndarray | None]] = []
        for index, sample in enumerate(samples):
            where = f"samples[{index}]" if total != 1 else "views"
            views = views_of(sample, where=where)
            check_views(views, self.num_views, self.view_size, where=where)
            with stage(timings, "resize"):
                tensor = to_model_tensor(views, self.config.image_size)
            matrices = None
            if self.aligner is not None:
                with stage(timings, "align"):
                    matrices = self.aligner.estimate(views, where=where)
                    tensor = self.aligner.to_reference(tensor, matrices)
            pending.append((tensor, getattr(sample, "sample_id", None), matrices))
            if len(pending) == batch_size:
                yield from self._predict_batch(pending, timings)
                bar.update(len(pending))
                pending = []
        if pending:
            yield from self._predict_batch(pending, timings)
            bar.update(len(pending))
        bar.close()

    @torch.no_grad()
    @devices.ieee_float32()
    def _predict_batch(self, pending, timings) -> list[Prediction]:
        images = torch.stack([p[0] for p in pending]).to(self.device)
        features = self._features(images, timings)
        novelty = None
        if self.coverage is not None:
            novelty = self.coverage.novelty(unit_descriptors(features)).cpu()
        with stage(timings, "bank_search"):
            distances = self.banks.search(features)
        with stage(timings, "scoring"):
            distances = self.banks.standardize(distances)
            maps = combine_levels(distances, self.config.level_weights, self.view_size)
            maps = gaussian_smooth(maps, self.config.smoothing_sigma)
            view_scores, scores = view_and_sample_scores(maps)
            if self.aligner is not None:
                # Scored in the reference frames, as the training samples' leave-one-out scores
                # that set the thresholds; the maps go back to the views' own frames.
                maps = self.aligner.to_view(maps, np.stack([p[2] for p in pending]))
            # Back to the CPU only here, for the Prediction (one transfer per batch).
            maps, view_scores, scores = maps.cpu(), view_scores.cpu(), scores.cpu()
        t = self.thresholds
        used = None if t is None else {k: t.get(k) for k in ("view", "sample", "source", "fpr")}
        return [
            Prediction(
                maps=maps[b].numpy(),
                view_scores=view_scores[b].numpy(),
                score=float(scores[b]),
                sample_id=pending[b][1],
                # NG iff above: the order-statistic threshold's guarantee is P(score > t) <= α.
                ng=None if t is None else bool(float(scores[b]) > t["sample"]),
                view_ng=None if t is None else view_decisions(view_scores[b].numpy(), t),
                thresholds=used,
                pose_novelty=None if novelty is None else float(novelty[b]),
            )
            for b in range(len(pending))
        ]

    # -- decisions ------------------------------------------------------------------------
    def calibrate(
        self,
        split=None,
        *,
        fpr: float | None = None,
        f1: bool = False,
        view_threshold: float | None = None,
        sample_threshold: float | None = None,
        progress: bool = True,
    ) -> dict:
        """Sets the decision thresholds and returns them.

        Without `split`: from the training samples' stored leave-one-out scores at target
        false-reject rate `fpr` (default config.threshold_fpr). With a labelled `split`: at
        target `fpr` from its normal samples, or F1-optimal with f1=True. view_threshold /
        sample_threshold override the level they name (checked against the scores seen)."""
        from vsad.detector import calibration as cal
        from vsad.detector import thresholds as thr

        self._check_fitted()
        manual = {"view": view_threshold, "sample": sample_threshold}
        manual = {k: v for k, v in manual.items() if v is not None}
        if f1 and fpr is not None:
            raise ValueError(f"fpr, f1: got fpr={fpr!r} and f1=True, expected one of them")
        if fpr is not None:
            thr.check_fpr(fpr)
        target = fpr if fpr is not None else (self.config.threshold_fpr or thr.DEFAULT_FPR)
        # Manual values alone keep the other level's current threshold.
        recompute = f1 or fpr is not None or not manual
        scores = None
        new = self.thresholds
        if split is not None:
            scores = cal.validation_scores(self, split, progress=progress)
            if recompute:
                new = cal.thresholds_from_validation(scores, fpr=None if f1 else target, f1=f1)
        elif f1:
            raise ValueError("f1: the F1-optimal threshold needs a labelled split with defects")
        elif recompute:
            new = cal.thresholds_from_stored(self, target)
        if manual:
            known = cal.known_scores(self, scores)
            checked = {k: thr.check_manual(v, k, known[k]) for k, v in manual.items()}
            new = thr.override(new, checked)
        self.thresholds = new
        return new

    def save_thresholds(self, directory: str | Path) -> Path:
        """Rewrites only the thresholds in a saved detector's detector.json (atomically)."""
        from vsad._atomic import atomic_write_json
        from vsad.eval.report import _sanitize
        from vsad.saved_files import read_json_object

        path = Path(directory) / META_FILE
        if not path.is_file():
            raise FileNotFoundError(f"directory: '{directory}' holds no {META_FILE}")
        meta = read_json_object(path, what="a detector description (JSON object)")
        meta["thresholds"] = _sanitize(self.thresholds)
        atomic_write_json(path, meta)
        return path

    # -- persistence ----------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Writes detector.json (config, versions), weights and bank (safetensors) into
        `directory`. Written into a temporary sibling folder and swapped in, so an interrupted
        save never leaves a half-written detector (a previous one stays intact)."""
        from safetensors.torch import save_file

        import vsad
        from vsad.output_paths import check_output_folder

        self._check_fitted()
        directory = check_output_folder(directory, "directory")
        # The device is the loading machine's choice (load(device=...)), not the model's.
        config = {k: v for k, v in self.config.to_dict().items() if k not in RUNTIME_KEYS}
        meta = {
            "format": FORMAT_VERSION,
            "detector": self.kind,
            "vsad_version": vsad.__version__,
            "config": config,
            "num_views": self.num_views,
            "view_size": list(self.view_size),
            "banks": self.banks.settings(),
            **self._extra_meta(),
        }
        if getattr(self, "align_report", None) is not None:
            meta["align_report"] = self.align_report
        if self.coverage is not None:
            meta["coverage"] = self.coverage.settings()
        if self.thresholds is not None:
            from vsad.eval.report import _sanitize

            meta["thresholds"] = _sanitize(self.thresholds)
            meta["normal_scores"] = self.normal_scores
        state = self._state_tensors()
        if self.aligner is not None:
            state = {**state, **self.aligner.tensors()}
        if self.coverage is not None:
            state = {**state, **self.coverage.tensors()}
        with atomic_directory(directory) as tmp:
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
            if state:
                weights = {k: v.detach().cpu().contiguous() for k, v in state.items()}
                save_file(weights, tmp / WEIGHTS_FILE)
            save_file(self.banks.tensors(), tmp / BANK_FILE)
        return directory

    @classmethod
    def load(cls, directory: str | Path, *, device: str = "cpu", banks_loader=None) -> BankDetector:
        """Loads what save() wrote onto `device` ("cpu" by default, "cuda", "cuda:N"; the
        device a model was fitted on is not saved). On the device it was saved from, scores
        are bit-identical to the saved detector's."""
        from vsad.detector import saved_detector as saved_checks
        from vsad.saved_files import fail, read_header, read_safetensors

        directory = Path(directory)
        meta_path = directory / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"directory: '{directory}' holds no {META_FILE}; expected a folder written by "
                "save() (or a `vsad train` run folder's model/)"
            )
        from vsad.saved_files import read_json_object

        meta = read_json_object(meta_path, what="a detector description (JSON object)")
        version = meta.get("format")
        if isinstance(version, bool) or version != FORMAT_VERSION:
            raise fail(meta_path, f"format {version!r:.40}, expected {FORMAT_VERSION}")
        kind = meta.get("detector")
        target = DETECTORS.get(kind) if isinstance(kind, str) else None
        if target is None:
            raise fail(meta_path, f"unknown detector {kind!r:.40}, expected one of "
                       f"{list(DETECTORS)}")  # fmt: skip
        if cls is not BankDetector and target is not cls:
            raise ValueError(f"{meta_path}: holds a {kind} detector, not a {cls.kind}")
        config_class = target.config_class
        legacy = copy.deepcopy(config_class.LEGACY_DEFAULTS)  # holds lists: never share them
        _check_meta(meta, meta_path)
        saved_checks.check_meta(meta, meta_path)
        # A "device" in a hand-edited detector.json is not the loading machine's: ignored.
        saved = {k: v for k, v in meta["config"].items() if k not in RUNTIME_KEYS}
        try:
            config = config_class.from_dict({**legacy, **saved, "device": device})
        except ValueError as err:
            if str(err).startswith("device:"):  # the caller's argument, not the file's
                raise
            raise fail(meta_path, f"its config is not valid ({err})") from None
        detector = target(config)
        resolved = detector.device  # a device this machine lacks fails here, before any reading
        detector.num_views, detector.view_size = meta["num_views"], tuple(meta["view_size"])
        weights = directory / WEIGHTS_FILE
        tensors = read_safetensors(weights)[0] if weights.exists() else {}
        if detector.config.align != "none":
            saved_checks.check_align_file(tensors, detector.num_views, detector.view_size,
                weights, align_frame=detector.config.align_frame)  # fmt: skip
            detector.aligner = ViewAligner.from_tensors(tensors)
        detector.coverage = PoseCoverage.from_tensors(meta.get("coverage"), tensors, weights,
                                                      meta_path)  # fmt: skip
        if detector.coverage is not None:
            detector.coverage.to(resolved)
        tensors = {k: v for k, v in tensors.items() if not k.startswith(("align.", "coverage."))}
        detector._weights_file = weights  # named by the subclass's checks of its tensors
        detector._load_state(tensors, meta)
        bank_path = directory / BANK_FILE
        if banks_loader is None:
            bank_tensors, specs, _ = read_safetensors(bank_path)
            saved_checks.check_bank_file(meta["banks"], specs, bank_path)
            saved_checks.check_bank_values(bank_tensors, bank_path)
            detector.banks = FeatureBanks.from_tensors(meta["banks"], bank_tensors, device=resolved)
        else:  # e.g. vsad.distributed.bank.sharded_banks_loader: (settings, path, device)
            saved_checks.check_bank_file(meta["banks"], read_header(bank_path)[0], bank_path)
            detector.banks = banks_loader(meta["banks"], bank_path, resolved)
        from vsad.detector.calibration import warn_uncalibrated
        from vsad.detector.thresholds import check_thresholds

        detector.thresholds = check_thresholds(meta.get("thresholds"), str(meta_path))
        detector.normal_scores = meta.get("normal_scores")
        detector.align_report = _checked_align_report(meta.get("align_report"),
                                                      detector.num_views, meta_path)  # fmt: skip
        if detector.thresholds is None:
            warn_uncalibrated(str(directory))
        return detector


DETECTORS: dict[str, type[BankDetector]] = {}
#: Config keys that describe the machine, not the model: never saved with a detector.
RUNTIME_KEYS = ("device",)


def _checked_align_report(report, num_views: int, path):
    """detector.json's `align_report` (BankDetector._check_registration), checked; None when
    absent (registration off, or a model saved before the check existed)."""
    from vsad.saved_files import fail

    if report is None:
        return None

    def fraction(value) -> bool:
        return not isinstance(value, bool) and isinstance(value, (int, float)) and 0 <= value <= 1

    keys = {"registered_fraction", "registered_per_camera", "min_registered", "turned_off"}
    per_camera = report.get("registered_per_camera") if isinstance(report, dict) else None
    if (
        not isinstance(report, dict)
        or set(report) != keys
        or not fraction(report["registered_fraction"])
        or not fraction(report["min_registered"])
        or not isinstance(report["turned_off"], bool)
        or not isinstance(per_camera, list)
        or len(per_camera) != num_views
        or not all(fraction(v) for v in per_camera)
    ):
        raise fail(path, f"align_report is {report!r:.120}, expected an object with "
                   f"{sorted(keys)} (fractions in [0, 1], one per camera of {num_views}, "
                   "turned_off a boolean) or absent")  # fmt: skip
    return report


def register_detector(cls: type[BankDetector]) -> type[BankDetector]:
    DETECTORS[cls.kind] = cls
    return cls


def _check_meta(meta: dict, path: Path) -> None:
    """The keys of detector.json that load() reads, with their types."""
    checks = (
        ("config", lambda v: isinstance(v, dict), "an object"),
        ("num_views", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
         "an integer >= 1"),
        ("view_size", lambda v: isinstance(v, list) and len(v) == 2
         and all(isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= 65535
                 for x in v), "[height, width] in pixels (1..65535)"),
        ("banks", lambda v: isinstance(v, dict), "an object"),
    )  # fmt: skip
    from vsad.saved_files import fail

    for key, ok, expected in checks:
        if key not in meta or not ok(meta[key]):
            raise fail(path, f"{key!r} is {meta.get(key)!r:.80}, expected {expected}")


def load_detector(directory: str | Path, *, device: str = "cpu") -> BankDetector:
    """Loads a saved VSAD, PatchKNN or PatchCore, whichever the folder holds, onto `device`
    ("cpu" by default, "cuda", "cuda:N")."""
    return BankDetector.load(directory, device=device)
