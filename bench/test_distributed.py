"""Scale-out benchmark: sharded bank search and distributed evaluation vs the number of ranks
(gloo on loopback, one machine), with the peak RSS of every rank and the bytes exchanged.

    OMP_NUM_THREADS=1 python bench/test_distributed.py [--samples 1000] [--ranks 1 2 3]
    pytest bench/test_distributed.py          # a small size, as a smoke run

Every rank generates only its own block of the bank (seeded by sample index), so the peak RSS
shows what one rank needs. Results are JSON lines on stdout.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _sample_features(index: int, M: int, D: int, h: int, w: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1000 + index)
    return torch.randn(1, M, D, h, w, generator=gen)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bank_worker(samples: int, views: int, D: int, cells: int, tests: int, batch: int, mode: str):
    from vsad.distributed import rank_and_world, shard_range
    from vsad.distributed.bank import ShardedFeatureBanks

    rank, world = rank_and_world()
    before = _peak_rss_mb()
    banks = ShardedFeatureBanks(mode, radius=2, normalization="none")
    lo, hi = shard_range(samples, rank, world)
    for s in range(lo, hi):
        banks.add([_sample_features(s, views, D, cells, cells)])
    start = time.perf_counter()
    banks.finalize()
    build = time.perf_counter() - start
    # This rank's test batches: batch j of the test set goes to rank j mod world.
    n_batches = -(-tests // batch)
    rounds = -(-n_batches // world)
    start = time.perf_counter()
    for k in range(rounds):
        j = k * world + rank
        if j < n_batches:
            feats = [
                torch.cat(
                    [_sample_features(10**6 + i, views, D, cells, cells)
                     for i in range(j * batch, min((j + 1) * batch, tests))]
                )
            ]  # fmt: skip
            banks.search(feats)
        else:
            banks.search(None)
    search = time.perf_counter() - start
    bank_mb = sum(t.numel() * t.element_size() for t, _ in banks.shard._local.values()) / 2**20
    # Exchanged per test sample: its queries to every other rank (all_gather) and the float32
    # distance maps in the MIN all-reduce (ring: ~2·(w−1)/w of the buffer per rank).
    q_bytes = views * cells * cells * D * 4
    d_bytes = views * cells * cells * 4
    return {
        "rank": rank, "world": world, "build_s": build, "search_s": search,
        "bank_shard_mb": bank_mb, "peak_rss_mb": _peak_rss_mb(), "rss_at_start_mb": before,
        "sent_per_test_sample_bytes": (world - 1) * q_bytes + 2 * (world - 1) / world * d_bytes,
    }  # fmt: skip


def eval_worker(model_dir: str, category: dict):
    from vsad.data.synthetic import make_category
    from vsad.distributed import rank_and_world
    from vsad.distributed.bank import load_sharded_detector
    from vsad.distributed.evaluate import COMM_STATS, evaluate_distributed

    rank, world = rank_and_world()
    detector = load_sharded_detector(model_dir)
    test = make_category(**category).test
    start = time.perf_counter()
    details = evaluate_distributed(detector, test)
    return {
        "rank": rank, "world": world, "eval_s": time.perf_counter() - start,
        "peak_rss_mb": _peak_rss_mb(), "bytes_to_rank0": COMM_STATS["bytes_to_rank0"],
        "S-AUROC": details["metrics"]["S-AUROC"], "P-AUROC": details["metrics"]["P-AUROC"],
    }  # fmt: skip


def run(samples: int, ranks: list[int], tests: int, eval_samples: int) -> list[dict]:
    from vsad.distributed import run_workers

    rows = []
    for world in ranks:
        out = run_workers(bank_worker, world, samples, 5, 64, 16, tests, 4, "local", timeout=600)
        for r in out:
            print(json.dumps({"bench": "bank_search", "samples": samples, **r}), flush=True)
        rows += out
    import tempfile

    from vsad.data.synthetic import make_category
    from vsad.detector import PatchKNN, PatchKNNConfig

    category = dict(n_train=eval_samples, n_test=eval_samples, n_views=5, image_size=96, seed=2)
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        config = PatchKNNConfig(image_size=64, batch_size=4)
        PatchKNN(config).fit(make_category(**category).train, progress=False).save(model)
        for world in ranks:
            out = run_workers(eval_worker, world, str(model), category, timeout=600)
            for r in out:
                print(json.dumps({"bench": "evaluate", "samples": eval_samples, **r}), flush=True)
            rows += out
    return rows


def test_distributed_scaling_smoke():
    rows = run(samples=24, ranks=[1, 2], tests=8, eval_samples=6)
    assert {r["world"] for r in rows} == {1, 2}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1000, help="five-view bank samples")
    parser.add_argument("--tests", type=int, default=48, help="test samples searched")
    parser.add_argument("--eval-samples", type=int, default=24)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    run(args.samples, args.ranks, args.tests, args.eval_samples)
