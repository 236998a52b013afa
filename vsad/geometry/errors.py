"""The error type of the geometry subpackage."""

from __future__ import annotations


class HomographyError(ValueError):
    """A homography could not be estimated (too few consistent matches, a degenerate fit) or a
    supplied one is unusable. The message names the pair of images or views and the reason.

    A ValueError, so callers that validate inputs generically still catch it.
    """


__all__ = ["HomographyError"]
