"""Peak memory and time of the exact pixel metrics at the default exact budget: the shipped
`PixelMetricAccumulator.compute` (`sorted_exact_groups`: normal scores sorted in place,
normal-only runs merged) against its reference twin (`exact_counts`: one group per distinct
value via np.unique, every group handed to the metrics).

    python bench/test_eval_memory.py [--pixels 4194304]
    pytest bench/test_eval_memory.py         # a small size, as a smoke run

Each provider runs in a fresh process on the same accumulator (seeded), so the peak RSS above
the accumulator's own state is what computing the metrics costs. Correctness first: the two
give the same P-AUROC / P-AP / P-F1max bit for bit and AUPRO to 1e-13.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time

import numpy as np


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _accumulator(pixels: int):
    from vsad.eval.pixel import PixelMetricAccumulator

    rng = np.random.default_rng(0)
    acc = PixelMetricAccumulator(exact_budget=pixels)
    side = 256
    for i in range(max(1, pixels // (side * side))):
        scores = rng.random((side, side)).astype(np.float32)
        mask = np.zeros((side, side), bool)
        if i % 2:
            mask[100:140, 60:120] = True  # a defect on every other map: 1.8 % of the pixels
            scores[mask] += 0.3
        acc.update(scores, mask)
    assert acc.exact
    return acc


def _metrics(provider: str, acc) -> dict:
    """The four pixel metrics: `acc.compute()` (shipped) or the reference twin's groups."""
    if provider == "shipped":
        result = acc.compute()
        binary, aupro = result.binary, result.aupro
    else:
        from vsad.eval.curves import aupro_from_counts, binary_metrics_from_counts, exact_counts

        neg = np.concatenate(acc._neg_parts)
        pos = np.concatenate(acc._pos_parts)
        labels = np.r_[np.zeros(neg.size, bool), np.ones(pos.size, bool)]
        weights = np.concatenate(acc._weight_parts)
        values, pos_count, neg_count, weight = exact_counts(
            np.concatenate([neg, pos]), labels, weights
        )
        del neg, pos, labels
        binary = binary_metrics_from_counts(pos_count, neg_count, values, binned=False)
        aupro, _ = aupro_from_counts(weight, neg_count, acc.num_regions, acc.max_fpr, binned=False)
    return {"P-AUROC": binary.auroc, "P-AP": binary.ap, "P-F1max": binary.f1_max, "AUPRO": aupro}


def _run(provider: str, pixels: int, queue) -> None:
    acc = _accumulator(pixels)
    state = _peak_mb()
    start = time.perf_counter()
    result = _metrics(provider, acc)
    seconds = time.perf_counter() - start
    queue.put({"provider": provider, "pixels": acc.num_pixels, "seconds": seconds,
               "peak_above_state_mb": _peak_mb() - state, **result})  # fmt: skip


def measure(pixels: int) -> list[dict]:
    ctx = mp.get_context("spawn")
    rows = []
    for provider in ("reference", "shipped"):
        queue = ctx.Queue()
        process = ctx.Process(target=_run, args=(provider, pixels, queue))
        process.start()
        rows.append(queue.get(timeout=600))
        process.join()
    reference, fast = rows
    for key in ("P-AUROC", "P-AP", "P-F1max"):
        assert fast[key] == reference[key], key
    assert abs(fast["AUPRO"] - reference["AUPRO"]) < 1e-13
    return rows


def test_eval_memory_smoke():
    rows = measure(1 << 18)  # four maps, two with a defect; measure() compares the providers
    assert all(0.5 < row["P-AUROC"] <= 1 for row in rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pixels", type=int, default=1 << 22, help="the default exact budget")
    for row in measure(parser.parse_args().pixels):
        print(json.dumps(row))
