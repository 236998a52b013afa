"""Model components: MVAM (window attention across views), offset embedding."""

from vsad.model.mvam import MVAM
from vsad.model.offset_embedding import sinusoidal_offset_embedding, window_offsets

__all__ = ["MVAM", "sinusoidal_offset_embedding", "window_offsets"]
