"""The `vsad` command."""

from __future__ import annotations

import argparse
import json
import sys

import torch

import vsad


def _info(args: argparse.Namespace) -> int:
    info = {
        "vsad": vsad.__version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "backends": vsad.backends(),
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    b = info["backends"]
    print(f"vsad {info['vsad']} (torch {info['torch']}, {info['threads']} threads)")
    cpp = f"yes, {b['cpu_isa']} kernels" if b["cpp"] else "no (vsad._C missing)"
    print(f"  cpp backend:       {cpp}")
    print(f"  triton backend:    {'installed' if b['triton'] else 'not installed'}")
    print("  reference backend: yes")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vsad",
        description="ViewSense-AD: unsupervised multi-view visual anomaly detection.",
    )
    parser.add_argument("--version", action="version", version=f"vsad {vsad.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="show the installed backends and instruction set")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    info.set_defaults(func=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
