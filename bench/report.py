"""Turns a pytest-benchmark JSON file into the Markdown tables of BENCHMARKS.md.

    python bench/report.py bench.json [more.json ...]

One table per benchmark group: median and interquartile range per provider, and the speed-up
against the group's baseline provider (extra_info["baseline"], measured in the same run).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def fmt_time(seconds: float) -> str:
    for unit, scale in (("s", 1), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e9:.3g} ns"


EXTRA_COLUMNS = {
    "attention_gflops_per_s": ("GFLOP/s", "{:.1f}"),
    "gflops_per_s": ("GFLOP/s", "{:.1f}"),
    "peak_extra_mib": ("peak extra MiB", "{:.0f}"),
    "peak_rss_mib": ("peak RSS MiB", "{:.0f}"),
}


def main(paths: list[str]) -> None:
    groups: dict[str, list[dict]] = defaultdict(list)
    machine = None
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        for bench in data["benchmarks"]:
            groups[bench["group"] or bench["name"]].append(bench)
            machine = machine or bench.get("extra_info", {})
    if machine:
        keys = ("cpu", "cores", "threads", "cpu_isa", "torch", "fp32_gemm_gflops_per_s")
        print(
            "Machine: "
            + ", ".join(
                f"{k}={machine[k]:.4g}"
                if isinstance(machine.get(k), float)
                else f"{k}={machine.get(k)}"
                for k in keys
                if k in machine
            )
        )
        print()
    for group, benches in groups.items():
        baseline_name = benches[0].get("extra_info", {}).get("baseline")
        by_provider = {b["extra_info"].get("provider", b["name"]): b for b in benches}
        base = by_provider.get(baseline_name)
        extras = [k for k in EXTRA_COLUMNS if any(k in b["extra_info"] for b in benches)]
        header = ["provider", "median", "IQR", f"× {baseline_name}" if base else "×"]
        header += [EXTRA_COLUMNS[k][0] for k in extras]
        print(f"### {group}\n")
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for provider, b in by_provider.items():
            st = b["stats"]
            ratio = base["stats"]["median"] / st["median"] if base else float("nan")
            row = [provider, fmt_time(st["median"]), fmt_time(st["iqr"]), f"{ratio:.1f}×"]
            for k in extras:
                v = b["extra_info"].get(k)
                row.append(EXTRA_COLUMNS[k][1].format(v) if v is not None else "")
            print("| " + " | ".join(row) + " |")
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
