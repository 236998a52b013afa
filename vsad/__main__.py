"""`python -m vsad` (what `torchrun ... -m vsad train ...` starts on every rank)."""

import sys

from vsad.cli import main

if __name__ == "__main__":
    sys.exit(main())
