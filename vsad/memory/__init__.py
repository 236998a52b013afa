"""Memory banks of normal prototypes (paper §3.6)."""

from vsad.memory.bank import MemoryBank

__all__ = ["MemoryBank"]
