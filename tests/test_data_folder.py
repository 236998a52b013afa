"""Generic folder layout, format detection, and image/mask file handling."""

from __future__ import annotations

import os
import re

import cv2
import numpy as np
import pytest

from vsad.data import (
    DatasetError,
    FolderDataset,
    MissingFileError,
    detect_format,
    list_categories,
    open_dataset,
    read_image,
    read_mask,
    write_image,
    write_mask,
)

H, W = 14, 18


@pytest.fixture
def np_rng() -> np.random.Generator:
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"numpy seed = {seed}")
    return np.random.default_rng(seed)


def _png(path, array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    assert cv2.imwrite(str(path), array)


def build_folder(root, rng, *, views=("cam1", "cam2", "cam10")):
    """Category "bracket": 2 train, 1 good + 2 defect test samples (cam10 sorts last)."""
    base = root / "bracket"
    expected = {}

    def sample(split, group, name, defect_views=()):
        images, masks = [], []
        for k, view in enumerate(views):
            image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
            _png(base / split / group / name / f"{view}.png", image)
            mask = np.zeros((H, W), bool)
            if k in defect_views:
                mask[rng.integers(0, H - 3) :][:3, 4:8] = True
                _png(
                    base / "ground_truth" / group / name / f"{view}.png",
                    mask.astype(np.uint8) * 255,
                )
            images.append(image)
            masks.append(mask)
        expected[f"{group}/{name}"] = (
            images,
            masks,
            [int(k in defect_views) for k in range(len(views))],
        )

    sample("train", "good", "0001")
    sample("train", "good", "0002")
    sample("test", "good", "0101")
    sample("test", "dent", "0102", defect_views=(1,))
    sample("test", "scratch", "0103", defect_views=(0, 2))
    return expected


def test_reads_generic_layout(tmp_path, np_rng):
    expected = build_folder(tmp_path, np_rng)
    test = FolderDataset(tmp_path, "bracket", "test")
    assert test.num_views == 3 and test.category == "bracket"
    assert test.sample_ids == ["good/0101", "dent/0102", "scratch/0103"]
    for sample in test:
        images, masks, labels = expected[sample.sample_id]
        assert sample.view_labels == labels and sample.label == int(any(labels))
        assert [os.path.basename(p) for p in sample.paths] == ["cam1.png", "cam2.png", "cam10.png"]
        for got, want in zip(sample.images, images, strict=True):
            np.testing.assert_array_equal(got, want)
        for got, want in zip(sample.masks, masks, strict=True):
            np.testing.assert_array_equal(got, want)
    assert test[2].defect_type == "scratch"
    # root may also be the category folder itself
    train = FolderDataset(tmp_path / "bracket", None, "train")
    assert len(train) == 2 and train[0].masks is None


def test_detection_and_listing(tmp_path, np_rng):
    build_folder(tmp_path, np_rng)
    assert detect_format(tmp_path) == "folder"
    assert list_categories(tmp_path) == ["bracket"]
    ds = open_dataset(tmp_path, "bracket", "test", image_size=(7, 9))
    assert isinstance(ds, FolderDataset) and ds[1].masks[1].shape == (7, 9)
    with pytest.raises(ValueError, match="format"):
        open_dataset(tmp_path, "bracket", format="mvtec")
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "bracket" / "train"))):
        detect_format(tmp_path / "bracket" / "train")


# ------------------------------------------------------------------ bad input


def test_wrong_number_of_views(tmp_path, np_rng):
    build_folder(tmp_path, np_rng)
    extra = tmp_path / "bracket" / "test" / "dent" / "0102" / "cam3.png"
    _png(extra, np_rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    with pytest.raises(DatasetError, match=re.escape(str(extra.parent))):
        FolderDataset(tmp_path, "bracket", "test")
    with pytest.raises(
        DatasetError, match=re.escape(str(tmp_path / "bracket" / "train" / "good" / "0001"))
    ):
        FolderDataset(tmp_path, "bracket", "train", num_views=4)


def test_defect_sample_without_any_mask(tmp_path, np_rng):
    build_folder(tmp_path, np_rng)
    mask = tmp_path / "bracket" / "ground_truth" / "dent" / "0102" / "cam2.png"
    mask.unlink()
    with pytest.raises(MissingFileError, match=re.escape(str(mask.parent))):
        FolderDataset(tmp_path, "bracket", "test")


def test_mask_size_mismatch_and_corrupt_image(tmp_path, np_rng):
    build_folder(tmp_path, np_rng)
    mask = tmp_path / "bracket" / "ground_truth" / "dent" / "0102" / "cam2.png"
    _png(mask, np.full((H, W + 2), 255, np.uint8))
    ds = FolderDataset(tmp_path, "bracket", "test")
    with pytest.raises(DatasetError, match=re.escape(str(mask))):
        ds[1]
    image = tmp_path / "bracket" / "test" / "good" / "0101" / "cam10.png"
    image.write_bytes(os.urandom(64))
    with pytest.raises(DatasetError, match=re.escape(str(image))):
        ds[0]


def test_empty_training_split_and_unknown_category(tmp_path, np_rng):
    build_folder(tmp_path, np_rng)
    with pytest.raises(MissingFileError, match=re.escape(str(tmp_path / "hinge"))) as info:
        FolderDataset(tmp_path, "hinge")
    assert "bracket" in str(info.value)
    for sample in (tmp_path / "bracket" / "train" / "good").iterdir():
        for f in sample.iterdir():
            f.unlink()
        sample.rmdir()
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "bracket" / "train"))):
        FolderDataset(tmp_path, "bracket", "train")


def test_empty_sample_folder(tmp_path, np_rng):
    build_folder(tmp_path, np_rng)
    empty = tmp_path / "bracket" / "test" / "good" / "0200"
    empty.mkdir()
    with pytest.raises(DatasetError, match=re.escape(str(empty))):
        FolderDataset(tmp_path, "bracket", "test")


# ------------------------------------------------------------------ image files


def test_read_image_converts_grey_alpha_and_16_bit(tmp_path, np_rng):
    grey = np_rng.integers(0, 256, (H, W), dtype=np.uint8)
    _png(tmp_path / "grey.png", grey)
    np.testing.assert_array_equal(
        read_image(tmp_path / "grey.png"), np.repeat(grey[..., None], 3, 2)
    )
    bgra = np_rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
    assert cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), bgra[..., 2::-1])
    deep = np_rng.integers(0, 65536, (H, W, 3), dtype=np.uint16)
    assert cv2.imwrite(str(tmp_path / "deep.png"), deep)
    np.testing.assert_array_equal(
        read_image(tmp_path / "deep.png"), (deep[..., ::-1] >> 8).astype(np.uint8)
    )


def test_read_mask_accepts_binary_masks_and_rejects_grey_ones(tmp_path, np_rng):
    for on in (1, 255):  # 0/1 palette and 0/255 greyscale
        values = (np_rng.random((H, W)) < 0.3).astype(np.uint8) * on
        _png(tmp_path / f"m{on}.png", values)
        np.testing.assert_array_equal(read_mask(tmp_path / f"m{on}.png"), values > 0)
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[2:4, 3:5, 1] = 200  # one flat colour per defect is fine
    rgb[5:7, 3:5, 0] = 255
    _png(tmp_path / "rgb.png", rgb)
    np.testing.assert_array_equal(read_mask(tmp_path / "rgb.png"), rgb.any(axis=2))
    # A blurred (or JPEG-compressed) mask and a class-index map are not binary masks.
    grey = np.zeros((H, W), np.uint8)
    grey[4:8, 4:8], grey[3, 4:8] = 255, 128
    _png(tmp_path / "grey.png", grey)
    with pytest.raises(DatasetError, match=r"grey\.png' holds the values 0, 128, 255"):
        read_mask(tmp_path / "grey.png")
    _png(tmp_path / "classes.png", np_rng.integers(0, 3, (H, W)).astype(np.uint8))
    with pytest.raises(DatasetError, match="classes.png"):
        read_mask(tmp_path / "classes.png")
    edge = rgb.copy()
    edge[4, 3:5, 1] = 90  # an anti-aliased edge of the green defect
    _png(tmp_path / "edge.png", edge)
    with pytest.raises(DatasetError, match="edge.png"):
        read_mask(tmp_path / "edge.png")


def test_write_roundtrip_is_atomic_and_validates(tmp_path, np_rng):
    image = np_rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    write_image(tmp_path / "a" / "x.png", image)
    np.testing.assert_array_equal(read_image(tmp_path / "a" / "x.png"), image)
    mask = np_rng.random((H, W)) < 0.3
    write_mask(tmp_path / "a" / "x_mask.png", mask)
    np.testing.assert_array_equal(read_mask(tmp_path / "a" / "x_mask.png"), mask)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["x.png", "x_mask.png"]
    with pytest.raises(ValueError, match="image"):
        write_image(tmp_path / "y.png", image.astype(np.float32))
    with pytest.raises(ValueError, match="path"):
        write_image(tmp_path / "y.xyz", image)
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".y*"))


def test_missing_file_is_also_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope.png"))):
        read_image(tmp_path / "nope.png")
    with pytest.raises(MissingFileError, match=re.escape(str(tmp_path / "nope.png"))):
        read_mask(tmp_path / "nope.png")
