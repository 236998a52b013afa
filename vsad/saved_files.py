"""Checks for the files vsad reads back: a saved detector's `detector.json` and safetensors
files, training checkpoints, a run folder's `run.json` and a Stable Diffusion folder.

A run folder is the commonest thing to break at a line — a disk that filled, a copy that
stopped — so every file is checked before it is used, and a damaged one is refused with one
`SavedFileError` that names the file, says what is wrong and what to do, instead of a
traceback from safetensors, `load_state_dict` or a shape mismatch deep in the scoring.

The tensor checks are data-driven: a safetensors header is parsed here (without reading the
data), and each tensor a loader expects is compared with the shape and dtype that the config,
detector.json or the rebuilt module implies (`check_specs`, `check_module_state`). Tensors a
loader does not ask for are left alone, so a new saved field needs no change here.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

#: What to do about a damaged saved detector (the default remedy of the messages).
RETRAIN = "retrain it (`vsad train`, or fit() and save()) or restore the folder from a copy"
#: ... about a damaged training checkpoint.
CHECKPOINT_REMEDY = (
    "delete the checkpoint to train from scratch, or restore the run folder from a copy"
)
#: A safetensors header larger than this is not one vsad wrote (the header of a detector with
#: thousands of tensors is a few hundred kB); refusing it keeps a corrupt length from making
#: the reader allocate gigabytes.
MAX_HEADER_BYTES = 100 * 2**20
PICKLE_MAGIC = tuple(bytes([0x80, p]) for p in range(2, 6))  # pickle protocols 2-5
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's zip format (a pickle inside)
#: torch dtype names -> safetensors dtype codes.
DTYPE_CODES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}
_ITEM_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "U16": 2,
    "U32": 4,
    "U64": 8,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}


class SavedFileError(ValueError):
    """A file vsad saved (detector, checkpoint, run.json) or reads as a model (a Stable
    Diffusion folder) is missing, damaged or not what its loader expects. The message names
    the file, what is wrong and what to do. A ValueError, so callers that handle bad input
    generically still catch it."""


def fail(path, problem: str, remedy: str = RETRAIN) -> SavedFileError:
    return SavedFileError(f"'{path}': {problem}; {remedy}")


# -- safetensors -------------------------------------------------------------------------------
class TensorSpec(tuple):
    """(dtype code, shape) of one tensor as a safetensors header describes it."""

    @property
    def dtype(self) -> str:
        return self[0]

    @property
    def shape(self) -> tuple[int, ...]:
        return self[1]


def dtype_code(dtype) -> str:
    """The safetensors code of a torch dtype (torch.float32 -> "F32")."""
    return DTYPE_CODES.get(str(dtype).removeprefix("torch."), str(dtype))


def read_header(path, *, remedy: str = RETRAIN) -> tuple[dict[str, TensorSpec], dict]:
    """({name: (dtype, shape)}, metadata) of a safetensors file, checked without reading its
    data: present, not empty, not a pickle, a readable header, data that fit the file."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "is missing"
        raise fail(path, f"{what}, expected a safetensors file", remedy)
    size = path.stat().st_size
    if size == 0:
        raise fail(path, "is empty (0 bytes: the write that made it did not finish)", remedy)
    with path.open("rb") as f:
        head = f.read(8)
        if head.startswith(PICKLE_MAGIC) or head.startswith(ZIP_MAGIC):
            raise fail(
                path,
                "is a pickle (torch.save) file, not safetensors: refused unread (unpickling "
                "can run arbitrary code)",
                remedy,
            )
        if len(head) < 8:
            raise fail(
                path, f"is truncated ({size} bytes, shorter than a safetensors header)", remedy
            )
        (length,) = struct.unpack("<Q", head)
        if length > min(size - 8, MAX_HEADER_BYTES):
            kind = "a text file" if _looks_like_text(head) else "truncated or not safetensors"
            raise fail(
                path,
                f"is {kind} (its first 8 bytes give a header of {length} bytes, the file has "
                f"{size})",
                remedy,
            )
        raw = f.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise fail(path, f"has an unreadable safetensors header ({err})", remedy) from None
    if not isinstance(header, dict):
        raise fail(path, "has a safetensors header that is not a JSON object", remedy)
    metadata = header.pop("__metadata__", None) or {}
    specs: dict[str, TensorSpec] = {}
    end = 0
    for name, entry in header.items():
        try:
            dtype, shape, (lo, hi) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
            ok = isinstance(dtype, str) and all(isinstance(n, int) and n >= 0 for n in shape)
            ok = ok and isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise fail(
                path, f"has a malformed header entry for tensor {name!r}: {entry!r:.120}", remedy
            )
        item = _ITEM_BYTES.get(dtype)
        if item is not None and hi - lo != item * math.prod(shape):
            raise fail(
                path,
                f"tensor {name!r}: {hi - lo} bytes of data for a {dtype} "
                f"{list(shape)} tensor (expected {item * math.prod(shape)})",
                remedy,
            )
        specs[name] = TensorSpec((dtype, shape))
        end = max(end, hi)
    if 8 + length + end > size:
        raise fail(
            path,
            f"is truncated: its header describes {8 + length + end} bytes, the file has {size}",
            remedy,
        )
    return specs, metadata


def _looks_like_text(head: bytes) -> bool:
    return all(32 <= b < 127 or b in (9, 10, 13) for b in head)


def read_safetensors(path, *, remedy: str = RETRAIN):
    """(tensors, specs, metadata) of a safetensors file checked by read_header; any error of
    the reader itself is refused with the file's name."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    specs, metadata = read_header(path, remedy=remedy)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise fail(path, f"cannot be read as safetensors ({err})", remedy) from None
    return tensors, specs, metadata


def check_specs(
    specs: Mapping[str, TensorSpec],
    expected: Mapping[str, tuple],
    path,
    *,
    remedy: str = RETRAIN,
    why: str = "",
) -> None:
    """Each expected tensor present with its dtype and shape. `expected` maps a name to
    (dtype code or tuple of codes or None, shape with None for any size, or None for any
    shape). Names not in `expected` are not looked at."""
    for name, (dtype, shape) in expected.items():
        spec = _as_spec(specs.get(name))
        if spec is None:
            raise fail(path, f"tensor {name!r} is missing{why}", remedy)
        dtypes = (dtype,) if isinstance(dtype, str) else dtype
        if dtypes is not None and spec.dtype not in dtypes:
            raise fail(
                path,
                f"tensor {name!r} is {spec.dtype}, expected {' or '.join(dtypes)}{why}",
                remedy,
            )
        if shape is not None and (
            len(shape) != len(spec.shape)
            or any(
                want is not None and want != got
                for want, got in zip(shape, spec.shape, strict=True)
            )
        ):
            wanted = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
            raise fail(
                path,
                f"tensor {name!r} has shape {list(spec.shape)}, expected {wanted}{why}",
                remedy,
            )


def _as_spec(value) -> TensorSpec | None:
    """A TensorSpec as it is, or the spec of a loaded tensor."""
    if value is None or isinstance(value, TensorSpec):
        return value
    return TensorSpec((dtype_code(value.dtype), tuple(value.shape)))


def module_expectations(state: Mapping, prefix: str = "") -> dict[str, tuple]:
    """What a module's state_dict() implies for its saved tensors: {prefix+key: (dtype,
    shape)}."""
    return {prefix + k: (dtype_code(v.dtype), tuple(v.shape)) for k, v in state.items()}


def check_module_state(
    state: Mapping,
    specs: Mapping[str, TensorSpec],
    path,
    *,
    prefix: str,
    what: str,
    remedy: str = RETRAIN,
) -> None:
    """The saved tensors under `prefix` are exactly those of the rebuilt module (`state`, its
    state_dict()), with the same shapes and dtypes — checked before load_state_dict, whose
    errors name neither the file nor the fix."""
    saved = {k for k in specs if k.startswith(prefix)}
    wanted = set(module_expectations(state, prefix))
    unexpected = sorted(saved - wanted)
    if unexpected:
        shown = ", ".join(repr(k) for k in unexpected[:5])
        more = f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""
        raise fail(
            path,
            f"holds tensor(s) {shown}{more} that the {what} built from its config "
            "does not have (saved by another config or version?)",
            remedy,
        )
    check_specs(
        specs,
        module_expectations(state, prefix),
        path,
        remedy=remedy,
        why=f" (the {what} built from the saved config)",
    )


# -- JSON --------------------------------------------------------------------------------------
def read_json_object(path, *, remedy: str = RETRAIN, what: str = "a JSON object") -> dict:
    """The JSON object in `path`, or a SavedFileError naming it (missing, a folder, empty, not
    UTF-8 or JSON, not an object)."""
    path = Path(path)
    if path.is_dir():
        raise fail(path, f"is a folder, expected a file holding {what}", remedy)
    if not path.is_file():
        raise fail(path, f"is missing, expected {what}", remedy)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        empty = " (the file is empty)" if path.stat().st_size == 0 else ""
        raise fail(path, f"is not valid JSON{empty} ({err})", remedy) from None
    if not isinstance(data, dict):
        raise fail(path, f"holds a JSON {type(data).__name__}, expected {what}", remedy)
    return data


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_field(
    data: Mapping,
    key: str,
    ok,
    expected: str,
    path,
    *,
    where: str = "",
    optional: bool = False,
    remedy: str = RETRAIN,
) -> None:
    """data[key] passes `ok` (absent is fine when optional), else a SavedFileError naming the
    key, the value and what was expected."""
    if key not in data:
        if optional:
            return
        raise fail(path, f"{where}{key!r} is missing, expected {expected}", remedy)
    if not ok(data[key]):
        raise fail(path, f"{where}{key!r} is {data[key]!r:.120}, expected {expected}", remedy)


def check_number_list(
    values, path, key: str, *, length: int | None = None, remedy: str = RETRAIN
) -> None:
    if not isinstance(values, list) or not all(is_number(v) for v in values):
        raise fail(path, f"{key} is {values!r:.80}, expected a list of finite numbers", remedy)
    if length is not None and len(values) != length:
        raise fail(path, f"{key} holds {len(values)} numbers, expected {length}", remedy)


def is_sequence_of(values, kind) -> bool:
    return (
        isinstance(values, Sequence)
        and not isinstance(values, str)
        and all(isinstance(v, kind) for v in values)
    )


# -- run folders ---------------------------------------------------------------------------------
RUN_REMEDY = "expected the run.json `vsad train` writes (restore it, or pass --data and --category)"


def read_run_info(path) -> dict:
    """A run folder's run.json, checked for what the commands read from it: an object whose
    "data" object holds root/category/format strings and an integer or null image_size."""
    what = 'the run\'s description (a JSON object with a "data" object)'
    info = read_json_object(path, remedy=RUN_REMEDY, what=what)
    data = info.get("data")
    if not isinstance(data, dict):
        raise fail(path, f'has no "data" object (got {data!r:.80})', RUN_REMEDY)
    for key, ok, expected in (
        ("root", lambda v: isinstance(v, str) and v, "a non-empty string"),
        ("category", lambda v: isinstance(v, str) and v, "a non-empty string"),
        ("format", lambda v: isinstance(v, str), "a string"),
        ("image_size", lambda v: v is None or (is_int(v) and v >= 1), "null or an integer >= 1"),
    ):
        check_field(data, key, ok, expected, path, where="data: ", optional=True, remedy=RUN_REMEDY)
    return info


__all__ = [
    "CHECKPOINT_REMEDY",
    "RETRAIN",
    "SavedFileError",
    "TensorSpec",
    "check_field",
    "check_module_state",
    "check_number_list",
    "check_specs",
    "dtype_code",
    "fail",
    "module_expectations",
    "read_header",
    "read_json_object",
    "read_run_info",
    "read_safetensors",
]
