"""Writing a generated category (synthetic or real-photo) in the Real-IAD layout (read back by
RealIADDataset)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from vsad._atomic import atomic_write_bytes
from vsad.data.imageio import write_image, write_mask
from vsad.data.realiad import REALIAD_DEFECT_CODES

if TYPE_CHECKING:
    from vsad.data.photo import PhotoCategory
    from vsad.data.synthetic import SyntheticCategory

# Our defect kinds as Real-IAD defect codes (a dent is a deformation, BX).
KIND_TO_CODE = {"scratch": "HS", "stain": "ZW", "missing": "QS", "particle": "YW", "dent": "BX"}
assert set(KIND_TO_CODE.values()) <= set(REALIAD_DEFECT_CODES)


def write_realiad(
    category: SyntheticCategory | PhotoCategory,
    root: str | os.PathLike,
    name: str | None = None,
    *,
    image_format: str = "jpg",
    jpeg_quality: int = 95,
) -> Path:
    """Renders every sample of `category` and writes it as a Real-IAD category `name`.

    Files: ``<root>/realiad_jsons/<name>.json`` and
    ``<root>/realiad_<size>/<name>/{OK/S0001, NG/<code>/S0002}/<name>_<n>_..._C<k>_<ts>.<ext>``
    (<size> is the view height), masks as PNG beside the images (``_mask.png`` when the images
    are PNG too). The json's meta also records the generator's settings (and, for a synthetic
    category, the exact homographies) under "vsad_synthetic" or "vsad_photo". Every file is
    written atomically; returns the json path.
    """
    name = name or category.name
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format: got {image_format!r}, expected 'jpg' or 'png'")
    root = Path(root)
    image_root = root / f"realiad_{category.image_size[0]}" / name
    splits: dict[str, list[dict]] = {"train": [], "test": []}
    number = 0
    for split_name, split in (("train", category.train), ("test", category.test)):
        for sample in split:
            number += 1
            timestamp = 20240101000000 + number
            code = KIND_TO_CODE[sample.defect_type] if sample.label else "OK"
            folder = f"OK/S{number:04d}" if not sample.label else f"NG/{code}/S{number:04d}"
            status = "OK" if not sample.label else f"NG_{code}"
            for k, (image, mask, bad) in enumerate(
                zip(sample.images, sample.masks, sample.view_labels, strict=True), start=1
            ):
                stem = f"{folder}/{name}_{number:04d}_{status}_C{k}_{timestamp}"
                image_path = f"{stem}.{image_format}"
                write_image(image_root / image_path, image, jpeg_quality=jpeg_quality)
                mask_path = None
                if bad:
                    mask_path = f"{stem}_mask.png" if image_format == "png" else f"{stem}.png"
                    write_mask(image_root / mask_path, mask)
                splits[split_name].append(
                    {
                        "category": name,
                        "anomaly_class": code if bad else "OK",
                        "image_path": image_path,
                        "mask_path": mask_path,
                    }
                )
    generator = {
        **category.settings,
        "image_size": list(category.image_size),
        "num_views": category.num_views,
    }
    if category.homographies is not None:
        generator["homographies"] = category.homographies.tolist()
    meta = {
        "prefix": f"{name}/",
        "normal_class": "OK",
        "pixel_anomaly_classes": sorted(set(KIND_TO_CODE.values())),
        "vsad_synthetic" if category.homographies is not None else "vsad_photo": generator,
    }
    json_path = root / "realiad_jsons" / f"{name}.json"
    text = json.dumps({"meta": meta, **splits}, indent=1)
    atomic_write_bytes(json_path, text.encode("utf-8"))
    return json_path


__all__ = ["KIND_TO_CODE", "write_realiad"]
