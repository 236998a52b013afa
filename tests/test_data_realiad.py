"""Real-IAD reader on small fixture trees with the real layout's quirks."""

from __future__ import annotations

import json
import re
import shutil

import cv2
import numpy as np
import pytest
from conftest import fresh_seed

from vsad.data import DatasetError, MissingFileError, RealIADDataset, open_dataset

H, W = 20, 28
OBJ = "audiojack"
STAMP = "20231021130209"


@pytest.fixture
def np_rng() -> np.random.Generator:
    seed = fresh_seed()
    print(f"numpy seed = {seed}")
    return np.random.default_rng(seed)


def _png(path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _mask_png(path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), mask.astype(np.uint8) * 255)


# (sample folder, file name before _C<k>_, per-view defect class or None, split)
SAMPLES = [
    ("OK/S0001", f"{OBJ}_0001_OK", [None] * 5, "train"),
    ("OK/S0003", f"{OBJ}_0003_OK", [None] * 5, "train"),
    ("OK/S0004", f"{OBJ}_0004_OK", [None] * 5, "test"),
    # Double underscore in the file names, as in part of the real audiojack class.
    ("NG/HS/S0002", f"{OBJ}__0002_NG_HS", [None, "HS", None, "HS", None], "test"),
    ("NG/AK/S0005", f"{OBJ}_0005_NG_AK", [None, None, None, None, "AK"], "test"),
]


def build_realiad(root, rng, *, image_dir="realiad_256", doubled=False):
    """Writes a Real-IAD tree; returns {sample folder: (images, masks, view labels)}."""
    base = root / image_dir / OBJ / (OBJ if doubled else "")
    entries = {"train": [], "test": []}
    expected = {}
    for folder, name, classes, split in SAMPLES:
        images, masks = [], []
        for k, cls in enumerate(classes, start=1):
            stem = f"{folder}/{name}_C{k}_{STAMP}"
            image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
            _png(base / f"{stem}.png", image)
            mask = np.zeros((H, W), bool)
            mask_path = None
            if cls is not None:
                mask[rng.integers(0, H - 4) :][:4, 3:9] = True
                mask_path = f"{stem}_mask.png"
                _mask_png(base / mask_path, mask)
            images.append(image)
            masks.append(mask)
            entries[split].append(
                {
                    "category": OBJ,
                    "anomaly_class": cls or "OK",
                    "image_path": f"{stem}.png",
                    "mask_path": mask_path,
                }
            )
        expected[folder] = (images, masks, [int(c is not None) for c in classes])
    # Views listed out of camera order, samples interleaved: the reader must regroup them.
    for split in entries:
        order = rng.permutation(len(entries[split]))
        entries[split] = [entries[split][i] for i in order]
    meta = {"prefix": f"{OBJ}/", "normal_class": "OK"}
    json_dir = root / "realiad_jsons"
    json_dir.mkdir(parents=True, exist_ok=True)
    (json_dir / f"{OBJ}.json").write_text(json.dumps({"meta": meta, **entries}))
    return expected


def _json_path(root):
    return root / "realiad_jsons" / f"{OBJ}.json"


def _edit_json(root, edit) -> None:
    path = _json_path(root)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("layout", ["plain", "doubled", "raw"])
def test_reads_samples_grouped_and_ordered(tmp_path, np_rng, layout):
    image_dir = "realiad_raw" if layout == "raw" else "realiad_256"
    expected = build_realiad(tmp_path, np_rng, image_dir=image_dir, doubled=layout == "doubled")
    test = RealIADDataset(tmp_path, OBJ, "test")
    assert test.num_views == 5 and test.split == "test" and test.category == OBJ
    assert test.sample_ids == ["NG/HS/S0002", "OK/S0004", "NG/AK/S0005"]  # by sample number
    assert test.labels.tolist() == [1, 0, 1]
    for sample in test:
        images, masks, view_labels = expected[sample.sample_id]
        assert sample.view_labels == view_labels
        assert sample.label == int(any(view_labels))
        for got, want in zip(sample.images, images, strict=True):
            assert got.dtype == np.uint8 and got.shape == (H, W, 3)
            np.testing.assert_array_equal(got, want)  # RGB, camera order
        for got, want in zip(sample.masks, masks, strict=True):
            assert got.dtype == bool
            np.testing.assert_array_equal(got, want)
        assert [re.search(r"_C(\d)_", p).group(1) for p in sample.paths] == list("12345")
    assert test[0].defect_type == "HS" and test[1].defect_type == "good"
    assert f"{OBJ}__0002_NG_HS_C1_" in test[0].paths[0]  # the double-underscore sample
    train = RealIADDataset(tmp_path, OBJ, "train")
    assert len(train) == 2 and train[0].masks is None  # no ground truth loaded for training


def test_resolution_choice_and_resize(tmp_path, np_rng):
    build_realiad(tmp_path, np_rng, image_dir="realiad_256")
    shutil.copytree(tmp_path / "realiad_256", tmp_path / "realiad_512")
    assert RealIADDataset(tmp_path, OBJ).image_root.parent.name == "realiad_512"
    ds = RealIADDataset(tmp_path, OBJ, resolution=256, image_size=(10, 14))
    assert ds.image_root.parent.name == "realiad_256"
    sample = ds[0]
    assert sample.images[0].shape == (10, 14, 3) and sample.masks[1].shape == (10, 14)
    assert sample.masks[1].any() and not sample.masks[0].any()
    with pytest.raises(MissingFileError, match=re.escape(str(tmp_path / "realiad_1024"))):
        RealIADDataset(tmp_path, OBJ, resolution=1024)


def test_open_dataset_detects_realiad(tmp_path, np_rng):
    build_realiad(tmp_path, np_rng)
    ds = open_dataset(tmp_path, OBJ, "test", image_size=16)
    assert isinstance(ds, RealIADDataset) and ds[0].images[0].shape == (16, 16, 3)


def test_negative_index_and_out_of_range(tmp_path, np_rng):
    build_realiad(tmp_path, np_rng)
    ds = RealIADDataset(tmp_path, OBJ)
    assert ds[-1].sample_id == ds.sample_ids[-1]
    with pytest.raises(IndexError, match="index"):
        ds[3]


# ------------------------------------------------------------------ bad input


def test_unknown_category_names_json_path(tmp_path, np_rng):
    build_realiad(tmp_path, np_rng)
    expected = tmp_path / "realiad_jsons" / "zipper.json"
    with pytest.raises(MissingFileError, match=re.escape(str(expected))) as info:
        RealIADDataset(tmp_path, "zipper")
    assert "audiojack" in str(info.value)  # lists what is there


def test_missing_image_file(tmp_path, np_rng):
    build_realiad(tmp_path, np_rng)
    victim = next((tmp_path / "realiad_256" / OBJ / "NG" / "HS" / "S0002").glob("*_C3_*.png"))
    victim.unlink()
    with pytest.raises(MissingFileError, match=re.escape(str(victim))):
        RealIADDataset(tmp_path, OBJ, "test")
    lazy = RealIADDataset(tmp_path, OBJ, "test", check_files=False)
    with pytest.raises(FileNotFoundError, match=re.escape(str(victim))):
        lazy[0]


def test_corrupt_image_file(tmp_path, np_rng):
    build_realiad(tmp_path, np_rng)
    victim = next((tmp_path / "realiad_256" / OBJ / "OK" / "S0004").glob("*_C2_*.png"))
    victim.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    ds = RealIADDataset(tmp_path, OBJ, "test")
    with pytest.raises(DatasetError, match=re.escape(str(victim))):
        ds[1]
    victim.write_bytes(b"")
    with pytest.raises(DatasetError, match=re.escape(str(victim))):
        ds[1]


def test_wrong_number_of_views(tmp_path, np_rng):
    build_realiad(tmp_path, np_rng)
    _edit_json(
        tmp_path,
        lambda d: d.__setitem__(
            "test",
            [
                e
                for e in d["test"]
                if not ("S0004" in e["image_path"] and "_C5_" in e["image_path"])
            ],
        ),
    )
    with pytest.raises(
        DatasetError, match=re.escape(str(tmp_path / "realiad_256" / OBJ / "OK/S0004"))
    ):
        RealIADDataset(tmp_path, OBJ, "test")
    ds = RealIADDataset(tmp_path, OBJ, "train", num_views=None)  # train split is intact
    assert ds.num_views == 5


def test_mask_size_mismatch(tmp_path, np_rng):
    build_realiad(tmp_path, np_rng)
    folder = tmp_path / "realiad_256" / OBJ / "NG" / "HS" / "S0002"
    mask = next(folder.glob("*_C2_*_mask.png"))
    _mask_png(mask, np.ones((H + 3, W), bool))
    ds = RealIADDataset(tmp_path, OBJ, "test")
    with pytest.raises(DatasetError, match=re.escape(str(mask))) as info:
        ds[0]
    assert f"{H + 3}x{W}" in str(info.value) and f"{H}x{W}" in str(info.value)


def test_empty_training_split(tmp_path, np_rng):
    build_realiad(tmp_path, np_rng)
    _edit_json(tmp_path, lambda d: d.__setitem__("train", []))
    with pytest.raises(DatasetError, match=re.escape(str(_json_path(tmp_path)))) as info:
        RealIADDataset(tmp_path, OBJ, "train")
    assert "train split" in str(info.value)


def test_invalid_json_and_missing_camera_index(tmp_path, np_rng):
    build_realiad(tmp_path, np_rng)
    _edit_json(tmp_path, lambda d: d["test"][0].__setitem__("image_path", "OK/S0004/no_camera.png"))
    with pytest.raises(DatasetError, match="OK/S0004/no_camera.png"):
        RealIADDataset(tmp_path, OBJ, "test", check_files=False)
    _json_path(tmp_path).write_text("{not json")
    with pytest.raises(DatasetError, match=re.escape(str(_json_path(tmp_path)))):
        RealIADDataset(tmp_path, OBJ, "test")


def test_bad_arguments_name_themselves(tmp_path, np_rng):
    build_realiad(tmp_path, np_rng)
    with pytest.raises(ValueError, match="split"):
        RealIADDataset(tmp_path, OBJ, "val")
    with pytest.raises(ValueError, match="image_size"):
        RealIADDataset(tmp_path, OBJ, image_size=(0, 4))
    with pytest.raises(MissingFileError, match=re.escape(str(tmp_path / "nowhere"))):
        RealIADDataset(tmp_path / "nowhere", OBJ)
