"""What `load_detector` checks in a saved detector folder before using it: every key of
detector.json that the loader reads (types and ranges, the bank settings, the thresholds, the
stored normal scores, the homography report), and every tensor of bank.safetensors and
weights.safetensors against the shapes and dtypes that detector.json and the rebuilt model
imply. A damaged file is refused with a `vsad.saved_files.SavedFileError` naming the file,
what is wrong and what to do (docs/design.md §5.5, §8.3).

The tensor checks ask for what the loaders read (per level and view of the bank settings, the
rebuilt modules' state_dict()); tensors nobody asks for are not looked at, so a new saved
field only needs its loader to ask for it.
"""

from __future__ import annotations

from collections.abc import Mapping

from vsad.saved_files import (
    check_field,
    check_module_state,
    check_number_list,
    check_specs,
    dtype_code,
    fail,
    is_int,
    is_number,
)

BANK_DTYPES = ("float32", "float16", "bfloat16")


def _bank_modes():
    from vsad.memory.feature_banks import BANK_MODES, NORMALIZATIONS

    return BANK_MODES, NORMALIZATIONS


def check_bank_settings(settings: Mapping, num_views: int, path) -> None:
    """detector.json's "banks" object: each setting the bank loader reads."""
    modes, normalizations = _bank_modes()
    where = "banks: "

    def check(key, ok, expected, optional=False):
        check_field(settings, key, ok, expected, path, where=where, optional=optional)

    check("mode", lambda v: v in modes, f"one of {list(modes)}")
    check("radius", lambda v: is_int(v) and v >= 0, "an integer >= 0")
    check("per_view", lambda v: isinstance(v, bool), "true or false")
    check("dtype", lambda v: v in BANK_DTYPES, f"one of {list(BANK_DTYPES)}")
    check(
        "coreset_ratio",
        lambda v: v is None or (is_number(v) and 0 < v <= 1),
        "null or a number in (0, 1]",
    )
    check("precision", lambda v: isinstance(v, str), "a string", optional=True)
    check(
        "normalization",
        lambda v: v in normalizations,
        f"one of {list(normalizations)}",
        optional=True,
    )
    check(
        "shapes",
        lambda v: (
            isinstance(v, list)
            and len(v) >= 1
            and all(
                isinstance(s, list) and len(s) == 3 and all(is_int(n) and n >= 1 for n in s)
                for s in v
            )
        ),
        "a non-empty list of [channels, height, width] (positive integers)",
    )
    check("num_views", lambda v: v == num_views, f"{num_views} (detector.json's num_views)")


#: Config keys whose value the bank settings repeat (bank key, value when the bank lacks it).
CONFIG_BANK_KEYS = {
    "bank_mode": ("mode", None),
    "bank_radius": ("radius", None),
    "bank_per_view": ("per_view", None),
    "bank_dtype": ("dtype", None),
    "coreset_ratio": ("coreset_ratio", None),
    "normalization": ("normalization", "none"),  # banks saved before it existed: raw
}


def check_config_matches_banks(config: Mapping, banks: Mapping, path) -> None:
    """The saved config and the bank settings were written together from one detector: a
    disagreement means one of them was edited or damaged."""
    for key, (bank_key, absent) in CONFIG_BANK_KEYS.items():
        if key in config and config[key] != banks.get(bank_key, absent):
            raise fail(
                path,
                f"config[{key!r}] is {config[key]!r} but banks[{bank_key!r}] is "
                f"{banks.get(bank_key, absent)!r}: the two were saved together and must "
                "agree (an edited or damaged file)",
            )


def bank_expectations(settings: Mapping) -> dict[str, tuple]:
    """{tensor name: (dtype, shape)} of what FeatureBanks.from_tensors reads."""
    dtype = dtype_code(settings["dtype"])
    views = settings["num_views"] if settings["per_view"] else 1
    expected = {}
    for level, (D, h, w) in enumerate(settings["shapes"]):
        for view in range(views):
            shape = (None, h, w, D) if settings["mode"] == "local" else (None, D)
            expected[f"level{level}.view{view}"] = (dtype, shape)
        if settings.get("normalization", "none") == "position":
            for stat in ("mean", "std"):
                expected[f"stats.level{level}.{stat}"] = ("F32", (settings["num_views"], h, w))
    return expected


def check_bank_file(settings: Mapping, specs: Mapping, path) -> None:
    """bank.safetensors against the bank settings of detector.json (header only)."""
    why = " (as detector.json's bank settings imply)"
    expected = bank_expectations(settings)
    check_specs(specs, expected, path, why=why)
    for name in expected:
        if name.startswith("level") and specs[name].shape[0] < 1:
            raise fail(
                path, f"tensor {name!r} holds no prototypes (shape {list(specs[name].shape)})"
            )
    if settings["mode"] == "local":  # every (level, view) bank holds the same training samples
        counts = {n: specs[n].shape[0] for n in expected if n.startswith("level")}
        if len(set(counts.values())) > 1:
            raise fail(path, f"the local banks hold different sample counts {counts}")


def check_bank_values(tensors: Mapping, path) -> None:
    """The normalisation statistics are finite, σ > 0 (small tensors: read in full)."""
    for name, tensor in tensors.items():
        if not name.startswith("stats."):
            continue
        if not bool(tensor.isfinite().all()):
            raise fail(path, f"tensor {name!r} holds NaN or Inf")
        if name.endswith(".std") and not bool((tensor > 0).all()):
            raise fail(path, f"tensor {name!r} holds a standard deviation <= 0")


def check_align_file(specs: Mapping, num_views: int, view_size, path, *, align_frame: str) -> None:
    """The registration's reference views (and frame) in weights.safetensors."""
    if align_frame != "first" and "align.frame" not in specs:
        raise fail(path, f"'align.frame' is missing, expected with align_frame={align_frame!r} "
                   "(the frame the model was fitted in)")  # fmt: skip
    why = " (a model fitted with align='similarity' keeps its reference views)"
    expected = {"align.references": ("U8", (num_views, *view_size))}
    if "align.frame" in specs:
        expected["align.frame"] = ("F64", (num_views, 2, 3))
    check_specs(specs, expected, path, why=why)


def check_meta(meta: Mapping, path) -> None:
    """The keys of detector.json beyond config/num_views/view_size/banks' presence (those
    come first, in BankDetector.load): bank settings, thresholds, normal scores, report."""
    check_bank_settings(meta["banks"], meta["num_views"], path)
    check_config_matches_banks(meta["config"], meta["banks"], path)
    thresholds = meta.get("thresholds")
    if thresholds is not None:
        check_thresholds(thresholds, path)
    normal = meta.get("normal_scores")
    if normal is not None:
        check_normal_scores(normal, thresholds, meta["num_views"], path)
    check_field(
        meta,
        "homography_report",
        lambda v: v is None or (isinstance(v, list) and all(isinstance(r, dict) for r in v)),
        "null or a list of pair reports (objects)",
        path,
        optional=True,
    )


def check_thresholds(t, path) -> None:
    from vsad.detector.thresholds import LEVELS

    if not isinstance(t, dict):
        raise fail(path, f"'thresholds' is {t!r:.80}, expected an object or null")
    for level in LEVELS:
        check_field(t, level, is_number, "a finite number", path, where="thresholds: ")
    check_field(
        t,
        "fpr",
        lambda v: v is None or (is_number(v) and 0 < v < 1),
        "null or a number in (0, 1)",
        path,
        where="thresholds: ",
        optional=True,
    )
    check_field(
        t,
        "n_normal",
        lambda v: v is None or (is_int(v) and v >= 1),
        "null or an integer >= 1",
        path,
        where="thresholds: ",
        optional=True,
    )
    levels = t.get("levels")
    if levels is None:
        return
    if not isinstance(levels, dict):
        raise fail(path, f"thresholds: 'levels' is {levels!r:.80}, expected an object")
    for level, details in levels.items():
        where = f"thresholds.levels[{level!r}]: "
        if not isinstance(details, dict):
            raise fail(path, f"{where[:-2]} is {details!r:.80}, expected an object")
        check_field(
            details,
            "n_normal",
            lambda v: is_int(v) and v >= 1,
            "an integer >= 1",
            path,
            where=where,
            optional=True,
        )
        check_field(
            details,
            "source",
            lambda v: isinstance(v, str),
            "a string",
            path,
            where=where,
            optional=True,
        )


def check_normal_scores(normal, thresholds, num_views: int, path) -> None:
    """{"sample": n scores, "view": n lists of M scores}; n as the train-loo thresholds say."""
    if not isinstance(normal, dict):
        raise fail(path, f"'normal_scores' is {normal!r:.80}, expected an object or null")
    for key in ("sample", "view"):
        if key not in normal:
            raise fail(path, f"normal_scores[{key!r}] is missing")
    samples, views = normal["sample"], normal["view"]
    check_number_list(samples, path, "normal_scores['sample']")
    n = len(samples)
    if n < 1:
        raise fail(path, "normal_scores['sample'] is empty, expected one score per training sample")
    if not isinstance(views, list) or len(views) != n:
        got = len(views) if isinstance(views, list) else views
        raise fail(
            path,
            f"normal_scores['view'] has {got!r:.40} rows, expected {n} (one per "
            "training sample, as normal_scores['sample'])",
        )
    for i, row in enumerate(views):
        check_number_list(row, path, f"normal_scores['view'][{i}]", length=num_views)
    levels = (thresholds or {}).get("levels") or {}
    for level, count in (("sample", n), ("view", n * num_views)):
        details = levels.get(level) or {}
        stated = details.get("n_normal")
        if details.get("source") == "train-loo" and stated is not None and stated != count:
            raise fail(
                path,
                f"normal_scores holds {count} {level} scores but the {level} "
                f"threshold was set from {stated} (thresholds.levels[{level!r}].n_normal):"
                " the list was shortened or edited",
            )


def check_vsad_weights(detector, tensors: Mapping, path) -> None:
    """weights.safetensors of a VSAD against the rebuilt encoder and UNet: the same tensor
    names, shapes and dtypes; null_text and the homographies shaped for the saved views."""
    check_module_state(
        detector._encoder_state(),
        tensors,
        path,
        prefix="encoder.",
        what=f"encoder {detector.config.encoder!r}",
    )
    if detector.model is None:
        return
    check_module_state(detector.model.state_dict(), tensors, path, prefix="model.", what="UNet")
    M = detector.num_views
    cross = detector.model.unet.config.cross_attention_dim
    check_specs(
        tensors,
        {
            "null_text": ("F32", (1, 1, cross)),
            "homography.H": ("F64", (M, None, 3, 3)),
            "homography.neighbors": ("I64", (M, None)),
        },
        path,
        why=f" (a UNet model of {M} views)",
    )
    for name in ("null_text", "homography.H"):
        if not bool(tensors[name].isfinite().all()):
            raise fail(path, f"tensor {name!r} holds NaN or Inf")


def homographies_from(tensors: Mapping, report: list, view_size, path):
    """ViewHomographies from the saved tensors and report; its own checks (neighbour indices,
    the pair reports) name the file."""
    from vsad import geometry

    try:
        return geometry.ViewHomographies(
            H=tensors["homography.H"].numpy(),
            neighbors=tensors["homography.neighbors"].numpy(),
            image_size=view_size,
            report=[geometry.PairReport.from_dict(r, "homography_report") for r in report],
        )
    except (ValueError, TypeError) as err:
        raise fail(path, f"the saved homographies are not usable ({err})") from None


__all__ = [
    "bank_expectations",
    "check_align_file",
    "check_bank_file",
    "check_bank_settings",
    "check_bank_values",
    "check_meta",
    "check_normal_scores",
    "check_thresholds",
    "check_vsad_weights",
    "homographies_from",
]
