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
import math
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


def _bank_mb(banks) -> float:
    """MB of this rank's shard of a ShardedFeatureBanks (local and global banks)."""
    shard = banks.shard
    rows = [t for t, _ in shard._local.values()] + [b.features for b in shard._global.values()]
    return sum(t.numel() * t.element_size() for t in rows) / 2**20


def _warm_up(views: int, D: int, cells: int, mode: str) -> float:
    """Peak RSS after a one-sample bank was built and searched in this process: what every
    process pays whatever the bank (the first custom-op call imports torch._dynamo, ~150 MB;
    the kernels' thread pools), so peak − this is what the bank itself costs."""
    from vsad.memory.feature_banks import FeatureBanks

    banks = FeatureBanks(mode, radius=2, normalization="none")
    banks.add([_sample_features(0, views, D, cells, cells)])
    banks.finalize()
    banks.search([_sample_features(1, views, D, cells, cells)])
    return _peak_rss_mb()


def bank_worker(samples: int, views: int, D: int, cells: int, tests: int, batch: int, mode: str):
    from vsad.distributed import rank_and_world, shard_range
    from vsad.distributed.bank import ShardedFeatureBanks

    rank, world = rank_and_world()
    before = _peak_rss_mb()
    warm = _warm_up(views, D, cells, mode)
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
    bank_mb = _bank_mb(banks)
    # Exchanged per test sample: its queries to every other rank (all_gather) and the float32
    # distance maps in the MIN all-reduce (ring: ~2·(w−1)/w of the buffer per rank).
    q_bytes = views * cells * cells * D * 4
    d_bytes = views * cells * cells * 4
    return {
        "rank": rank, "world": world, "build_s": build, "search_s": search,
        "bank_shard_mb": bank_mb, "peak_rss_mb": _peak_rss_mb(), "rss_at_start_mb": before,
        "rss_warm_mb": warm, "peak_above_warm_mb": _peak_rss_mb() - warm,
        "sent_per_test_sample_bytes": (world - 1) * q_bytes + 2 * (world - 1) / world * d_bytes,
    }  # fmt: skip


def coreset_worker(samples: int, views: int, D: int, cells: int, ratio: float):
    """A global per-view bank reduced to its greedy k-center coreset, selected collectively:
    build time, peak RSS and an order-sensitive checksum of the kept rows (the same for every
    world size when the selection is the one process's)."""
    from vsad.distributed import rank_and_world, shard_range
    from vsad.distributed.bank import ShardedFeatureBanks

    rank, world = rank_and_world()
    before = _peak_rss_mb()
    banks = ShardedFeatureBanks("global", coreset_ratio=ratio, normalization="none")
    lo, hi = shard_range(samples, rank, world)
    for s in range(lo, hi):
        banks.add([_sample_features(s, views, D, cells, cells)])
    start = time.perf_counter()
    banks.finalize()
    build = time.perf_counter() - start
    checksum, kept = 0.0, 0
    for key, bank in banks.shard._global.items():
        rows = bank.features.double()
        position = banks._offset[key] + torch.arange(1, rows.shape[0] + 1, dtype=torch.float64)
        checksum += float((rows.sum(1) * position).sum())
        kept += rows.shape[0]
    return {
        "rank": rank, "world": world, "coreset_build_s": build, "kept_rows": kept,
        "checksum": checksum, "peak_rss_mb": _peak_rss_mb(), "rss_at_start_mb": before,
    }  # fmt: skip


def fit_worker(model_dir: str, warm_dir: str, category: dict, warm_samples: int) -> dict:
    """Fits and saves the evaluated model and the warm-up one (on `warm_samples` samples: one
    per rank at least, so its bank can be sharded too)."""
    from vsad.data.synthetic import make_category
    from vsad.detector import PatchKNN, PatchKNNConfig

    config = PatchKNNConfig(image_size=64, batch_size=4)
    train = make_category(**category).train
    PatchKNN(config).fit(train, progress=False).save(model_dir)
    PatchKNN(config).fit([train[i] for i in range(warm_samples)], progress=False).save(warm_dir)
    return {}


def eval_worker(model_dir: str, warm_dir: str, category: dict):
    """Distributed evaluation of the saved model in `model_dir` with its bank sharded over the
    ranks. `warm_dir` holds the same kind of model fitted on two samples: evaluating it first
    pays what every process pays whatever the bank (imports, thread pools, the first custom-op
    call), so peak − that is what the bank and the evaluation cost."""
    from vsad.data.synthetic import make_category
    from vsad.distributed import rank_and_world
    from vsad.distributed.bank import load_sharded_detector
    from vsad.distributed.evaluate import COMM_STATS, evaluate_distributed

    rank, world = rank_and_world()
    test = make_category(**category).test
    evaluate_distributed(load_sharded_detector(warm_dir), [test[0], test[len(test) - 1]])
    warm = _peak_rss_mb()
    detector = load_sharded_detector(model_dir)
    loaded = _peak_rss_mb()
    bank_mb = _bank_mb(detector.banks)
    start = time.perf_counter()
    details = evaluate_distributed(detector, test)
    return {
        "rank": rank, "world": world, "eval_s": time.perf_counter() - start,
        "bank_shard_mb": bank_mb, "peak_rss_mb": _peak_rss_mb(), "rss_warm_mb": warm,
        "peak_above_warm_mb": _peak_rss_mb() - warm, "loaded_above_warm_mb": loaded - warm,
        "bytes_to_rank0": COMM_STATS["bytes_to_rank0"],
        "S-AUROC": details["metrics"]["S-AUROC"], "P-AUROC": details["metrics"]["P-AUROC"],
    }  # fmt: skip


BENCHES = ("bank_search", "coreset", "evaluate")


def run(
    samples: int,
    ranks: list[int],
    tests: int,
    eval_samples: int,
    coreset_samples: int,
    eval_bank_samples: int | None = None,
    benches: tuple[str, ...] = BENCHES,
) -> list[dict]:
    """The benchmarks named for every world size; one dict per rank, printed as JSON lines."""
    import tempfile

    from vsad.distributed import run_workers

    rows = []

    def record(bench: str, size: int, out: list[dict]) -> None:
        for r in out:
            rows.append({"bench": bench, "samples": size, **r})
            print(json.dumps(rows[-1]), flush=True)

    for world in ranks if "bank_search" in benches else []:
        out = run_workers(bank_worker, world, samples, 5, 64, 16, tests, 4, "local", timeout=600)
        record("bank_search", samples, out)
    for world in ranks if "coreset" in benches else []:
        out = run_workers(coreset_worker, world, coreset_samples, 5, 64, 16, 0.1, timeout=1800)
        record("coreset", coreset_samples, out)
    if "evaluate" not in benches:
        return rows
    train_samples = eval_bank_samples or eval_samples
    category = dict(n_train=train_samples, n_test=eval_samples, n_views=5, image_size=96, seed=2)
    with tempfile.TemporaryDirectory() as tmp:
        model, warm = Path(tmp) / "model", Path(tmp) / "warm"
        # Fitted in a child process: workers forked from a parent holding the fitted bank
        # would count its pages in their RSS.
        run_workers(fit_worker, 1, str(model), str(warm), category, max(ranks), timeout=900)
        for world in ranks:
            out = run_workers(eval_worker, world, str(model), str(warm), category, timeout=900)
            record("evaluate", train_samples, out)
    return rows


def _per_world(rows: list[dict], bench: str, key: str, *, rank0: bool = False) -> dict:
    """{world: `key` summed over that world's ranks (or rank 0's)} of one benchmark."""
    out: dict[int, float] = {}
    for r in rows:
        if r["bench"] == bench and (not rank0 or r["rank"] == 0):
            out[r["world"]] = out.get(r["world"], 0.0) + r[key]
    return out


def test_distributed_scaling_smoke():
    rows = run(samples=24, ranks=[1, 2], tests=8, eval_samples=6, coreset_samples=6)
    assert {r["world"] for r in rows} == {1, 2}
    # Correctness before any figure: the same coreset and the same metrics for every world.
    kept = _per_world(rows, "coreset", "kept_rows")
    assert kept[1] == kept[2]
    # Summed over ranks in another order: equal to rounding; another selection is far off.
    checksum = _per_world(rows, "coreset", "checksum")
    assert math.isclose(checksum[1], checksum[2], rel_tol=1e-12)
    for key in ("S-AUROC", "P-AUROC"):
        got = _per_world(rows, "evaluate", key, rank0=True)
        assert got[1] == got[2], key


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1000, help="five-view bank samples")
    parser.add_argument("--tests", type=int, default=48, help="test samples searched")
    parser.add_argument("--eval-samples", type=int, default=24, help="test samples evaluated")
    parser.add_argument(
        "--eval-bank-samples", type=int, default=1000, help="training samples in its bank"
    )
    parser.add_argument("--coreset-samples", type=int, default=200)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--benches", nargs="+", default=list(BENCHES), choices=BENCHES)
    args = parser.parse_args()
    run(args.samples, args.ranks, args.tests, args.eval_samples, args.coreset_samples,
        args.eval_bank_samples, tuple(args.benches))  # fmt: skip
