"""What every memory-bank detector shares: reading training samples, building the multi-level
bank, scoring (eq. 12), batched prediction, and saving/loading a fitted detector atomically.

A subclass provides the features: `_fit_model` (train whatever needs training) and `_extract`
((B, M, 3, s, s) images -> one (B, M, D, h, w) tensor per level), plus its own state.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vsad.detector.config import DetectorConfig
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
    """

    maps: np.ndarray
    view_scores: np.ndarray
    score: float
    sample_id: str | None = None


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
        self.view_size: tuple[int, int] | None = None

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

    # -- fitting --------------------------------------------------------------------------
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

        torch.manual_seed(self.config.seed)
        images, raw_views = [], []
        keep_raw = self._raw_samples_needed()
        for index, sample in enumerate(tqdm(train, desc="read", disable=not progress)):
            where = f"train[{index}]"
            views = views_of(sample, where=where)
            check_views(views, self.num_views, self.view_size, where=where)
            self.num_views, self.view_size = len(views), tuple(views[0].shape[:2])
            if len(raw_views) < keep_raw:
                raw_views.append(views)
            images.append(to_model_tensor(views, self.config.image_size))
        if not images:
            raise ValueError("train: got no samples, expected at least one normal sample")
        stacked = torch.stack(images)
        self._fit_model(stacked, raw_views, progress=progress, work_dir=work_dir, **kwargs)
        self.banks = self._new_banks()
        batch = self.config.batch_size
        bar = tqdm(total=len(stacked), desc="memory bank", disable=not progress)
        for start in range(0, len(stacked), batch):
            chunk = stacked[start : start + batch]
            self.banks.add(self._features(chunk))
            bar.update(len(chunk))
        bar.close()
        self.banks.finalize(seed=self.config.seed)
        return self

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

    def _new_banks(self) -> FeatureBanks:
        c = self.config
        return FeatureBanks(
            c.bank_mode,
            radius=c.bank_radius,
            per_view=c.bank_per_view,
            dtype=getattr(torch, c.bank_dtype),
            coreset_ratio=c.coreset_ratio,
            normalization=c.normalization,
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
        pending: list[tuple[torch.Tensor, str | None]] = []
        for index, sample in enumerate(samples):
            where = f"samples[{index}]" if total != 1 else "views"
            views = views_of(sample, where=where)
            check_views(views, self.num_views, self.view_size, where=where)
            with stage(timings, "resize"):
                tensor = to_model_tensor(views, self.config.image_size)
            pending.append((tensor, getattr(sample, "sample_id", None)))
            if len(pending) == batch_size:
                yield from self._predict_batch(pending, timings)
                bar.update(len(pending))
                pending = []
        if pending:
            yield from self._predict_batch(pending, timings)
            bar.update(len(pending))
        bar.close()

    @torch.no_grad()
    def _predict_batch(self, pending, timings) -> list[Prediction]:
        images = torch.stack([p[0] for p in pending])
        features = self._features(images, timings)
        with stage(timings, "bank_search"):
            distances = self.banks.search(features)
        with stage(timings, "scoring"):
            distances = self.banks.standardize(distances)
            maps = combine_levels(distances, self.config.level_weights, self.view_size)
            maps = gaussian_smooth(maps, self.config.smoothing_sigma)
            view_scores, scores = view_and_sample_scores(maps)
        return [
            Prediction(
                maps=maps[b].numpy(),
                view_scores=view_scores[b].numpy(),
                score=float(scores[b]),
                sample_id=pending[b][1],
            )
            for b in range(len(pending))
        ]

    # -- persistence ----------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Writes detector.json (config, versions), weights and bank (safetensors) into
        `directory`. Written into a temporary sibling folder and swapped in, so an interrupted
        save never leaves a half-written detector (a previous one stays intact)."""
        from safetensors.torch import save_file

        import vsad

        self._check_fitted()
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        meta = {
            "format": FORMAT_VERSION,
            "detector": self.kind,
            "vsad_version": vsad.__version__,
            "config": self.config.to_dict(),
            "num_views": self.num_views,
            "view_size": list(self.view_size),
            "banks": self.banks.settings(),
            **self._extra_meta(),
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        state = self._state_tensors()
        if state:
            save_file({k: v.detach().contiguous() for k, v in state.items()}, tmp / WEIGHTS_FILE)
        save_file(self.banks.tensors(), tmp / BANK_FILE)
        _swap_into_place(tmp, directory)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> BankDetector:
        """Loads what save() wrote; scores are bit-identical to the saved detector's."""
        from safetensors.torch import load_file

        directory = Path(directory)
        meta_path = directory / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"directory: '{directory}' holds no {META_FILE}; expected a folder written by "
                "save() (or a `vsad train` run folder's model/)"
            )
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(
                f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT_VERSION}"
            )
        kind = meta.get("detector")
        target = DETECTORS.get(kind)
        if target is None:
            raise ValueError(f"{meta_path}: unknown detector {kind!r}, expected {list(DETECTORS)}")
        if cls is not BankDetector and target is not cls:
            raise ValueError(f"{meta_path}: holds a {kind} detector, not a {cls.kind}")
        config_class = target.config_class
        detector = target(
            config_class.from_dict({**config_class.LEGACY_DEFAULTS, **meta["config"]})
        )
        detector.num_views, detector.view_size = meta["num_views"], tuple(meta["view_size"])
        weights = directory / WEIGHTS_FILE
        detector._load_state(load_file(weights) if weights.is_file() else {}, meta)
        detector.banks = FeatureBanks.from_tensors(meta["banks"], load_file(directory / BANK_FILE))
        return detector


DETECTORS: dict[str, type[BankDetector]] = {}


def register_detector(cls: type[BankDetector]) -> type[BankDetector]:
    DETECTORS[cls.kind] = cls
    return cls


def load_detector(directory: str | Path) -> BankDetector:
    """Loads a saved VSAD or PatchKNN, whichever the folder holds."""
    return BankDetector.load(directory)


def _swap_into_place(tmp: Path, directory: Path) -> None:
    if not directory.exists():
        os.replace(tmp, directory)
        return
    old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
    os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)
