"""Real-IAD reader.

Layout (as distributed)::

    <root>/realiad_jsons/<obj>.json
    <root>/realiad_<res>/<obj>/OK/S0001/<obj>_0001_OK_C1_<timestamp>.jpg
    <root>/realiad_<res>/<obj>/NG/HS/S0002/<obj>_0002_NG_HS_C1_<timestamp>.jpg   (+ .png mask)

with <res> one of 1024, 512, 256 or raw (`realiad_raw`). The json is
``{"meta": {"prefix": "<obj>/", "normal_class": "OK", ...}, "train": [...], "test": [...]}``
and each entry is ``{"category", "anomaly_class", "image_path", "mask_path"}``; an image file is
``<root>/realiad_<res>/`` + prefix + image_path. Some archives unpack to a doubled
``<obj>/<obj>/`` folder; both are accepted.

Views of one sample share the sample folder (``NG/HS/S0002/``) and their file names end
``_C<k>_<timestamp>``: views are grouped by folder and ordered by k. Labels are per view: inside
an NG sample, a view without the defect has ``anomaly_class == normal_class`` and
``mask_path: null``. Class names may contain double underscores (``audiojack__0064_NG_HS_C1_…``);
nothing here parses them, only the folder and the trailing ``_C<k>_<timestamp>``.
"""

from __future__ import annotations

import json
import posixpath
import re
from pathlib import Path, PurePosixPath, PureWindowsPath

from vsad.data.errors import DatasetError, MissingFileError
from vsad.data.sample import (
    NORMAL,
    MultiViewDataset,
    MultiViewSample,
    SampleRecord,
    check_split,
    load_record_views,
    natural_key,
    normalize_image_size,
)

RESOLUTION_PREFERENCE = ("1024", "512", "256", "raw")
# Real-IAD's defect codes (folder names under NG/), for display.
REALIAD_DEFECT_CODES = {
    "AK": "pit",
    "BX": "deformation",
    "CH": "abrasion",
    "HS": "scratch",
    "PS": "damage",
    "QS": "missing parts",
    "YW": "foreign objects",
    "ZW": "contamination",
}
_CAMERA = re.compile(r"_C(\d+)_[^_]*$")

ROOT_PROBES = 16  # entries probed to find the image folder


def camera_index(image_path: str) -> int:
    """k of a Real-IAD file name ending ``_C<k>_<timestamp>.<ext>``."""
    match = _CAMERA.search(PurePosixPath(image_path).stem)
    if match is None:
        raise DatasetError(
            f"image_path '{image_path}': file name does not end with _C<k>_<timestamp>, so its "
            "camera index is unknown"
        )
    return int(match.group(1))


def realiad_categories(root: str | Path, json_dir: str = "realiad_jsons") -> list[str]:
    """Names of the categories that have a json file under <root>/<json_dir>."""
    folder = Path(root) / json_dir
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.json"))


def _image_folders(root: Path, resolution: int | str | None) -> list[Path]:
    if resolution is not None:
        folder = root / f"realiad_{resolution}"
        if not folder.is_dir():
            present = sorted(p.name for p in root.glob("realiad_*") if p.is_dir())
            raise MissingFileError(
                f"resolution={resolution!r}: image folder '{folder}' does not exist "
                f"(folders present: {present})"
            )
        return [folder]
    preferred = [root / f"realiad_{r}" for r in RESOLUTION_PREFERENCE]
    others = sorted(
        p
        for p in root.glob("realiad_*")
        if p.is_dir() and not p.name.startswith("realiad_jsons") and p not in preferred
    )
    return [p for p in preferred if p.is_dir()] + others


class RealIADDataset(MultiViewDataset):
    """One split of one Real-IAD category.

    Args:
        root: folder holding realiad_jsons/ and realiad_<res>/.
        category: object name (the json file stem, e.g. "audiojack").
        split: "train" or "test".
        resolution: which realiad_<res> folder to read (1024, 512, 256, "raw"); None takes the
            first present in that order.
        num_views: views per sample; None (default) accepts any count shared by all samples,
            with the same camera indices in every sample — Real-IAD as published has 5
            (C1–C5), and `write_realiad` writes a category's own M, so a 3-view category it
            wrote reads back. Pass 5 to insist on the published count.
        image_size: resize views (and masks, nearest) to this size on load; None keeps it.
        load_masks: read ground-truth masks (default: for the test split only).
        check_files: check at construction that every referenced file exists, so a missing
            file fails at once with its path rather than midway through an evaluation.
        json_dir: name of the json folder (Real-IAD ships variants such as realiad_jsons_sv).
        allow_outside_root: read image and mask paths of the json that lead outside the
            dataset root (absolute, or climbing out with ../). Refused by default: a dataset
            json is data, and must not make the reader open arbitrary files.
    """

    def __init__(
        self,
        root: str | Path,
        category: str,
        split: str = "test",
        *,
        resolution: int | str | None = None,
        num_views: int | None = None,
        image_size: int | tuple[int, int] | None = None,
        load_masks: bool | None = None,
        check_files: bool = True,
        json_dir: str = "realiad_jsons",
        allow_outside_root: bool = False,
    ) -> None:
        self.root = Path(root)
        self.allow_outside_root = bool(allow_outside_root)
        self.category = category
        self.split = check_split(split)
        self.image_size = normalize_image_size(image_size)
        self.load_masks = (split == "test") if load_masks is None else bool(load_masks)
        if not self.root.is_dir():
            raise MissingFileError(f"root: Real-IAD folder '{self.root}' does not exist")
        self.json_path = self.root / json_dir / f"{category}.json"
        data = self._read_json()
        self.meta: dict = data.get("meta", {})
        if not isinstance(self.meta, dict):
            raise DatasetError(
                f"'{self.json_path}': \"meta\" is a {type(self.meta).__name__}, expected an "
                "object (keys prefix, normal_class, ...)"
            )
        for key in ("prefix", "normal_class"):
            if key in self.meta and not isinstance(self.meta[key], str):
                raise DatasetError(
                    f"'{self.json_path}': meta[{key!r}] is {self.meta[key]!r}, expected a string"
                )
        entries = data.get(split)
        if not isinstance(entries, list):
            raise DatasetError(f"'{self.json_path}' has no list named {split!r}")
        if not entries:
            raise DatasetError(
                f"the {split} split of '{self.json_path}' is empty: a {split} split needs at "
                "least one sample"
            )
        self.normal_class = str(self.meta.get("normal_class", "OK"))
        prefix = str(self.meta.get("prefix", f"{category}/"))
        self._prefix = prefix
        self._check_inside(prefix, "meta['prefix']", under_prefix=False)
        self.image_root = self._find_image_root(resolution, prefix, entries)
        self.records = self._group(entries)
        self.num_views = self._check_view_counts(num_views)
        if check_files:
            self._check_files()

    def _read_json(self) -> dict:
        if not self.json_path.is_file():
            known = realiad_categories(self.root, self.json_path.parent.name)
            raise MissingFileError(
                f"category: unknown category {self.category!r}: '{self.json_path}' does not "
                f"exist (categories present: {known})"
            )
        try:
            data = json.loads(self.json_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"'{self.json_path}' is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise DatasetError(f"'{self.json_path}': expected a JSON object at the top level")
        return data

    def _find_image_root(self, resolution, prefix: str, entries: list) -> Path:
        """The folder image_path is relative to: realiad_<res>/<prefix>, or the doubled
        realiad_<res>/<obj>/<obj>/ that some unpackers produce. Probes the first few entries,
        so one missing file does not hide the folder (it is reported later, by path)."""
        probes = [
            self._entry_field(entry, "image_path", k)
            for k, entry in enumerate(entries[:ROOT_PROBES])
        ]
        obj = prefix.strip("/")
        tried = []
        for folder in _image_folders(self.root, resolution):
            for base in (folder / prefix, folder / prefix / obj):
                tried.append(base / probes[0])
                if any((base / probe).is_file() for probe in probes):
                    return base
        raise MissingFileError(
            f"cannot find the images of category {self.category!r} (json '{self.json_path}'): "
            f"tried {[str(p) for p in tried] or 'no realiad_<res> folder under ' + str(self.root)}"
        )

    def _entry_field(self, entry, key: str, index: int, *, optional: bool = False):
        """entry[key] as a string (None for an absent or null optional field), or a
        DatasetError naming the file, the entry, the key and the value."""
        if not isinstance(entry, dict) or (key not in entry and not optional):
            raise DatasetError(
                f"'{self.json_path}': entry {index} of the {self.split} split has no {key!r} "
                f"(got {entry!r})"
            )
        value = entry.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value:
            raise DatasetError(
                f"'{self.json_path}': entry {index} of the {self.split} split has {key!r} = "
                f"{value!r}, expected a non-empty string" + (" or null" if optional else "")
            )
        if key.endswith("_path"):
            self._check_inside(value, f"entry {index} of the {self.split} split: {key!r}")
        return value

    def _check_inside(self, value: str, what: str, *, under_prefix: bool = True) -> None:
        """A path of the json (below realiad_<res>/ and the prefix) stays inside the dataset
        root, unless allow_outside_root: not absolute, no ../ that climbs out (checked on the
        text, so a symlinked image folder is fine)."""
        if self.allow_outside_root:
            return
        text = value.replace("\\", "/")
        parts = ["realiad_res", self._prefix, text] if under_prefix else ["realiad_res", text]
        normal = posixpath.normpath(posixpath.join(*parts))
        if posixpath.isabs(normal) or PureWindowsPath(value).drive or normal.startswith(".."):
            raise DatasetError(
                f"'{self.json_path}': {what} is {value!r}, a path that leads outside the "
                f"dataset root '{self.root}'; expected a path inside it (pass "
                "allow_outside_root=True, or --allow-outside-root, to read it)"
            )

    def _group(self, entries: list) -> list[SampleRecord]:
        folders: dict[str, list[tuple[int, dict]]] = {}
        self._cameras: dict[str, list[int]] = {}
        for i, entry in enumerate(entries):
            image_path = self._entry_field(entry, "image_path", i)
            self._entry_field(entry, "anomaly_class", i)
            self._entry_field(entry, "mask_path", i, optional=True)
            folder = str(PurePosixPath(image_path).parent)
            folders.setdefault(folder, []).append((camera_index(image_path), entry))
        records = []
        for folder, views in folders.items():
            views.sort(key=lambda kv: kv[0])
            cams = [k for k, _ in views]
            self._cameras[folder] = cams
            if len(set(cams)) != len(cams):
                raise DatasetError(
                    f"sample folder '{self.image_root / folder}' lists camera indices {cams} in "
                    f"'{self.json_path}': each camera must appear once"
                )
            view_labels = tuple(int(e["anomaly_class"] != self.normal_class) for _, e in views)
            defects = [
                e["anomaly_class"] for _, e in views if e["anomaly_class"] != self.normal_class
            ]
            records.append(
                SampleRecord(
                    sample_id=folder,
                    image_paths=tuple(self.image_root / e["image_path"] for _, e in views),
                    mask_paths=tuple(
                        self.image_root / e["mask_path"] if e.get("mask_path") else None
                        for _, e in views
                    ),
                    label=int(any(view_labels)),
                    defect_type=defects[0] if defects else NORMAL,
                    view_labels=view_labels,
                )
            )
        # By sample number (S0002 < S0004 whatever the defect folder), as Real-IAD numbers the
        # samples of a category uniquely.
        records.sort(key=lambda r: (natural_key(PurePosixPath(r.sample_id).name), r.sample_id))
        return records

    def _check_view_counts(self, num_views: int | None) -> int:
        counts = {len(r.image_paths) for r in self.records}
        expected = num_views if num_views is not None else len(self.records[0].image_paths)
        for record in self.records:
            if len(record.image_paths) != expected:
                raise DatasetError(
                    f"sample folder '{self.image_root / record.sample_id}' has "
                    f"{len(record.image_paths)} views in '{self.json_path}', expected {expected} "
                    f"(view counts seen: {sorted(counts)})"
                )
        # View k of every sample must be the same camera: models keep one bank per view.
        first = self.records[0]
        cameras = self._cameras[first.sample_id]
        for record in self.records:
            if self._cameras[record.sample_id] != cameras:
                raise DatasetError(
                    f"sample folder '{self.image_root / record.sample_id}' has cameras "
                    f"{self._cameras[record.sample_id]} in '{self.json_path}', but "
                    f"'{self.image_root / first.sample_id}' has {cameras}: every sample needs "
                    "the same cameras (view k of each sample is one camera)"
                )
        return expected

    def _check_files(self) -> None:
        for record in self.records:
            for path in record.image_paths:
                if not path.is_file():
                    raise MissingFileError(f"image file not found: '{path}'")
            if self.load_masks:
                for path in record.mask_paths:
                    if path is not None and not path.is_file():
                        raise MissingFileError(f"mask file not found: '{path}'")

    def _load(self, record: SampleRecord) -> MultiViewSample:
        return load_record_views(record, image_size=self.image_size, load_masks=self.load_masks)


__all__ = ["REALIAD_DEFECT_CODES", "RealIADDataset", "camera_index", "realiad_categories"]
