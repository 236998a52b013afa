"""MANTA-Tiny reader: five views tiled side by side in one PNG, masks tiled the same way."""

from __future__ import annotations

import os
import re

import cv2
import numpy as np
import pytest

from vsad.data import DatasetError, MantaTinyDataset, MissingFileError, open_dataset

H, TILE, M = 12, 16, 5


@pytest.fixture
def np_rng() -> np.random.Generator:
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"numpy seed = {seed}")
    return np.random.default_rng(seed)


def _write(path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    assert cv2.imwrite(str(path), array)


def build_manta(root, rng, *, domain="electronics", cls="resistor", mask_suffix=""):
    """A class with 2 train, 1 good + 2 defect test images; returns {sample_id: (tiles, masks)}."""
    base = root / domain / cls
    expected = {}

    def image(path, defect_views=()):
        full = rng.integers(0, 256, (H, TILE * M, 3), dtype=np.uint8)
        _write(path, full)
        mask = np.zeros((H, TILE * M), bool)
        for k in defect_views:
            y = rng.integers(0, H - 3)
            mask[y : y + 3, k * TILE + 2 : k * TILE + 7] = True
        tiles = [full[:, k * TILE : (k + 1) * TILE] for k in range(M)]
        masks = [mask[:, k * TILE : (k + 1) * TILE] for k in range(M)]
        return mask, tiles, masks

    for name in ("000", "001"):
        _, tiles, masks = image(base / "train" / "good" / f"{name}.png")
        expected[f"good/{name}"] = (tiles, masks)
    _, tiles, masks = image(base / "test" / "good" / "000.png")
    expected["good/000"] = (tiles, masks)
    for defect, name, views in (("crack", "003", (1, 3)), ("missing_pin", "004", (4,))):
        mask, tiles, masks = image(base / "test" / defect / f"{name}.png", views)
        _write(
            base / "ground_truth" / defect / f"{name}{mask_suffix}.png", mask.astype(np.uint8) * 255
        )
        expected[f"{defect}/{name}"] = (tiles, masks)
    return expected


@pytest.mark.parametrize("mask_suffix", ["", "_mask"])
def test_reads_tiles_masks_and_view_labels(tmp_path, np_rng, mask_suffix):
    expected = build_manta(tmp_path, np_rng, mask_suffix=mask_suffix)
    test = MantaTinyDataset(tmp_path, "resistor", "test")
    assert test.category == "electronics/resistor" and test.num_views == M
    assert test.sample_ids == ["good/000", "crack/003", "missing_pin/004"]
    assert test.labels.tolist() == [0, 1, 1]
    labels = {"good/000": [0] * 5, "crack/003": [0, 1, 0, 1, 0], "missing_pin/004": [0, 0, 0, 0, 1]}
    for sample in test:
        tiles, masks = expected[sample.sample_id]
        assert sample.view_labels == labels[sample.sample_id]
        assert sample.label == int(any(sample.view_labels))
        for got, want in zip(sample.images, tiles, strict=True):
            assert got.shape == (H, TILE, 3)
            np.testing.assert_array_equal(got, want)
        for got, want in zip(sample.masks, masks, strict=True):
            np.testing.assert_array_equal(got, want)
    assert test[1].defect_type == "crack"
    train = MantaTinyDataset(tmp_path, "electronics/resistor", "train")
    assert len(train) == 2 and train[0].masks is None
    np.testing.assert_array_equal(train[1].images[4], expected["good/001"][0][4])


def test_resize_and_open_dataset(tmp_path, np_rng):
    build_manta(tmp_path, np_rng)
    ds = open_dataset(tmp_path, "resistor", "test", image_size=8)
    assert isinstance(ds, MantaTinyDataset)
    sample = ds[1]
    assert sample.images[0].shape == (8, 8, 3) and sample.masks[1].shape == (8, 8)
    assert sample.view_labels == [0, 1, 0, 1, 0]


def test_class_name_in_two_domains_is_ambiguous(tmp_path, np_rng):
    build_manta(tmp_path, np_rng, domain="electronics")
    build_manta(tmp_path, np_rng, domain="mechanics")
    with pytest.raises(DatasetError, match="mechanics/resistor"):
        MantaTinyDataset(tmp_path, "resistor")
    assert MantaTinyDataset(tmp_path, "mechanics/resistor").category == "mechanics/resistor"


# ------------------------------------------------------------------ bad input


def test_unknown_category(tmp_path, np_rng):
    build_manta(tmp_path, np_rng)
    with pytest.raises(MissingFileError, match=re.escape(str(tmp_path / "capacitor"))) as info:
        MantaTinyDataset(tmp_path, "capacitor")
    assert "electronics/resistor" in str(info.value)


def test_width_not_divisible_into_views(tmp_path, np_rng):
    build_manta(tmp_path, np_rng)
    path = tmp_path / "electronics" / "resistor" / "test" / "good" / "000.png"
    _write(path, np_rng.integers(0, 256, (H, TILE * M + 3, 3), dtype=np.uint8))
    ds = MantaTinyDataset(tmp_path, "resistor")
    with pytest.raises(DatasetError, match=re.escape(str(path))):
        ds[0]
    with pytest.raises(DatasetError, match="num_views=4"):
        MantaTinyDataset(tmp_path, "resistor", num_views=4)[0]


def test_missing_and_mismatched_masks(tmp_path, np_rng):
    build_manta(tmp_path, np_rng)
    mask = tmp_path / "electronics" / "resistor" / "ground_truth" / "crack" / "003.png"
    _write(mask, np.full((H, TILE * M - 5), 255, np.uint8))
    ds = MantaTinyDataset(tmp_path, "resistor")
    with pytest.raises(DatasetError, match=re.escape(str(mask))):
        ds[1]
    _write(mask, np.zeros((H, TILE * M), np.uint8))
    with pytest.raises(DatasetError, match=re.escape(str(mask))) as info:
        ds[1]
    assert "empty" in str(info.value)
    mask.unlink()
    with pytest.raises(MissingFileError, match=re.escape(str(mask))):
        MantaTinyDataset(tmp_path, "resistor")


def test_missing_and_corrupt_images(tmp_path, np_rng):
    build_manta(tmp_path, np_rng)
    path = tmp_path / "electronics" / "resistor" / "test" / "crack" / "003.png"
    ds = MantaTinyDataset(tmp_path, "resistor")
    path.write_bytes(b"GIF89a garbage")
    with pytest.raises(DatasetError, match=re.escape(str(path))):
        ds[1]
    path.unlink()
    with pytest.raises(MissingFileError, match=re.escape(str(path))):
        ds[1]


def test_empty_training_split(tmp_path, np_rng):
    build_manta(tmp_path, np_rng)
    good = tmp_path / "electronics" / "resistor" / "train" / "good"
    for f in good.iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "electronics" / "resistor"))):
        MantaTinyDataset(tmp_path, "resistor", "train")
    good.rmdir()
    with pytest.raises(MissingFileError, match=re.escape(str(good))):
        MantaTinyDataset(tmp_path, "resistor", "train")


def test_bad_num_views(tmp_path, np_rng):
    build_manta(tmp_path, np_rng)
    with pytest.raises(ValueError, match="num_views"):
        MantaTinyDataset(tmp_path, "resistor", num_views=0)
