"""Model components: MVAM (window attention across views), FRM, the view-aligned UNet."""

from vsad.model.frm import FRM
from vsad.model.mvam import MVAM
from vsad.model.offset_embedding import sinusoidal_offset_embedding, window_offsets

__all__ = ["FRM", "MVAM", "sinusoidal_offset_embedding", "window_offsets"]
