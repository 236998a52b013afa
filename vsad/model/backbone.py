"""UNet and VAE construction: a tiny config trained from scratch (the default) or a local
Stable Diffusion 2 folder in diffusers layout. Nothing is ever downloaded."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from torch import nn

#: The embedded default: a 3-level UNet small enough to train on a CPU in minutes.
TINY_UNET = {
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 1,
    "block_out_channels": (32, 64, 64),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 8,
}

SD_PARTS = {"unet": "config.json", "vae": "config.json"}
# Plain (unsuffixed) weights, single-file or sharded; anything else is a variant like .fp16.
WEIGHT_FILES = tuple(
    f"diffusion_pytorch_model.{ext}" for ext in
    ("safetensors", "bin", "safetensors.index.json", "bin.index.json")
)  # fmt: skip


def build_tiny_unet(**overrides) -> nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**{**TINY_UNET, **overrides})


def load_stable_diffusion(folder: str | Path) -> tuple[nn.Module, nn.Module]:
    """(unet, vae) from a local Stable Diffusion 2 folder in diffusers layout
    (`<folder>/unet/config.json` + weights, `<folder>/vae/config.json` + weights)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(
            f"stable diffusion folder: {root} does not exist or is not a folder"
        )
    for part, marker in SD_PARTS.items():
        if not (root / part / marker).is_file():
            raise FileNotFoundError(
                f"stable diffusion folder: {root / part / marker} is missing; expected the "
                f"diffusers layout with subfolders {sorted(SD_PARTS)} (e.g. a local copy of "
                f"stabilityai/stable-diffusion-2-base saved with save_pretrained)"
            )
    # safetensors only: a pickled diffusion_pytorch_model.bin could run code when unpickled.
    kwargs = {"local_files_only": True, "use_safetensors": True}
    if importlib.util.find_spec("accelerate") is None:
        # Without accelerate diffusers warns on every load and falls back to this anyway.
        kwargs["low_cpu_mem_usage"] = False
    parts = {"unet": UNet2DConditionModel, "vae": AutoencoderKL}
    variants = {part: _weights_variant(root / part) for part in parts}
    for part, variant in variants.items():  # every file checked before anything is loaded
        _check_weights(root / part, variant)
    loaded = []
    for part, model_class in parts.items():
        variant = variants[part]
        try:
            loaded.append(
                model_class.from_pretrained(root, subfolder=part, variant=variant, **kwargs)
            )
        except (OSError, ValueError, RuntimeError, TypeError, KeyError) as err:
            from vsad.saved_files import SavedFileError

            raise SavedFileError(
                f"stable diffusion folder: '{root / part}' cannot be loaded as a diffusers "
                f"{model_class.__name__} ({type(err).__name__}: {str(err)[:300]}); expected "
                "a folder written by save_pretrained (config.json + safetensors weights)"
            ) from None
    unet, vae = loaded
    # Half-precision downloads are common; the CPU kernels compute in float32 anyway.
    unet, vae = unet.float(), vae.float()
    return unet, vae


def _check_weights(part: Path, variant: str | None) -> None:
    """The part's weights are safetensors with a readable header; pickled .bin weights are
    refused unread (unpickling can run arbitrary code), naming the file and the conversion."""
    from vsad.saved_files import SavedFileError, read_header

    stem = "diffusion_pytorch_model" + (f".{variant}" if variant else "")
    single = part / f"{stem}.safetensors"
    if single.is_file():
        read_header(single, remedy="restore the Stable Diffusion folder from its source")
        return
    if (part / f"{stem}.safetensors.index.json").is_file():
        return  # sharded: diffusers checks the shards it lists
    pickled = sorted(p.name for p in part.glob(f"{stem}.bin*"))
    if pickled:
        raise SavedFileError(
            f"stable diffusion folder: '{part / pickled[0]}' holds pickled weights, refused "
            "unread (unpickling can run arbitrary code); expected "
            f"{stem}.safetensors — convert it once where you trust the file (diffusers: "
            "from_pretrained(...).save_pretrained(folder, safe_serialization=True))"
        )


def _weights_variant(part: Path) -> str | None:
    """None when the folder holds the plain weights file (diffusion_pytorch_model.safetensors
    or .bin), else the variant of the only weights present (e.g. "fp16" for
    diffusion_pytorch_model.fp16.safetensors, as some Stable Diffusion copies ship)."""
    names = [p.name for p in part.glob("diffusion_pytorch_model*")]
    if any(name in names for name in WEIGHT_FILES):
        return None
    variants = sorted({name.split(".")[1] for name in names if name.count(".") == 2})
    if not variants:
        raise FileNotFoundError(
            f"stable diffusion folder: no weights in {part}; expected one of {WEIGHT_FILES} "
            f"(or a variant such as diffusion_pytorch_model.fp16.safetensors)"
        )
    return "fp32" if "fp32" in variants else variants[0]
