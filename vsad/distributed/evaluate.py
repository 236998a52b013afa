"""Evaluation with the test samples sharded over the ranks; metrics identical to one process.

The samples are cut into the single-process prediction batches (`batch_size`, default the
detector's), and batch j goes to rank j mod world, so every rank predicts whole batches exactly
as `iter_predict` would (same batch composition: same maps, bit for bit). After every round of
`world` batches the results (maps, masks, labels, scores) are gathered on rank 0, which feeds its
one `Evaluator` in the global sample order. The Evaluator's state is therefore the
single-process state — the sample and view scores, the exact pixel store and, beyond its budget,
the dyadic histogram, whose grid and float64 region-weight sums depend on the order the pixels
arrive in: merging per-rank histograms afterwards could not reproduce them bit for bit, streaming
in order does. Rank 0 holds the accumulator (bounded, as in one process: the exact budget, then
2²⁰ bins; computing it adds ~50 MB) plus one round of maps; the other ranks hold no metric state
at all, so every rank's peak is its bank share plus a batch's working set (BENCHMARKS.md).

With a sharded bank (`vsad.distributed.bank`) the search is collective, so a rank without a batch
in the last round still joins it (`banks.search(None)`).
"""

from __future__ import annotations

import torch.distributed as dist

from vsad.distributed.bank import ShardedFeatureBanks
from vsad.distributed.launch import rank_and_world
from vsad.eval import Evaluator
from vsad.eval.pixel import DEFAULT_EXACT_BUDGET, DEFAULT_NUM_BINS

#: Bytes gathered on rank 0 by the last evaluate_distributed call of this process (rank 0's
#: own results are not sent): maps and masks, for the communication-volume projection.
COMM_STATS = {"bytes_to_rank0": 0}


def _record(sample, prediction) -> tuple:
    return (
        prediction.maps,
        sample.masks,
        sample.view_labels,
        prediction.view_scores,
        prediction.score,
        sample.sample_id,
        sample.defect_type,
    )


def _rounds(detector, samples, size: int, group, make):
    """The single-process prediction batches of `samples`, batch j predicted by rank j mod
    world; after every round of `world` batches, `make(sample, prediction)` of every sample
    gathered on rank 0. Yields, per round, the per-rank lists in rank order (= sample order)
    on rank 0 and None on the other ranks. Collective."""
    rank, world = rank_and_world(group)
    n = len(samples)
    batches = [range(s, min(s + size, n)) for s in range(0, n, size)]
    sharded = isinstance(detector.banks, ShardedFeatureBanks) and world > 1
    for first in range(0, len(batches), world):
        j = first + rank
        records = []
        if j < len(batches):
            chosen = [samples[i] for i in batches[j]]
            predictions = detector.iter_predict(chosen, batch_size=size, progress=False)
            records = [make(s, p) for s, p in zip(chosen, predictions, strict=True)]
        elif sharded:
            detector.banks.search(None)  # join the collective search of this round
        if world > 1:
            gathered = [None] * world if rank == 0 else None
            dist.gather_object(records, gathered, dst=0, group=group)
        else:
            gathered = [records]
        yield gathered


def _batch_size(detector, batch_size, samples) -> int:
    if len(samples) < 1:
        raise ValueError("samples: got an empty split, expected at least one test sample")
    size = batch_size or detector.config.batch_size
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"batch_size: got {size!r}, expected an integer >= 1")
    return size


def iter_sharded_predictions(
    detector, samples, *, group=None, batch_size: int | None = None, progress: bool = False
):
    """(sample, Prediction) pairs of `samples` (an indexable split, the same on every rank) in
    sample order on rank 0 — predicted by all ranks of `group`, batch by batch as one process
    would — and nothing on the other ranks, which predict their batches and send them (with
    their samples, so rank 0 reads no image twice). Every rank must run it to the end; feed
    rank 0's pairs to `vsad.detector.evaluate.evaluate_detector(predictions=...)`."""
    from tqdm.auto import tqdm

    rank, _ = rank_and_world(group)
    size = _batch_size(detector, batch_size, samples)
    bar = tqdm(total=len(samples), desc="predict", disable=not progress or rank != 0)
    for gathered in _rounds(detector, samples, size, group, lambda s, p: (s, p)):
        if rank == 0:
            for part in gathered:
                bar.update(len(part))
                yield from part
    bar.close()


def evaluate_distributed(
    detector,
    samples,
    *,
    group=None,
    batch_size: int | None = None,
    pixel: bool = True,
    num_bins: int = DEFAULT_NUM_BINS,
    exact_budget: int = DEFAULT_EXACT_BUDGET,
    max_fpr: float = 0.3,
) -> dict:
    """`Evaluator.details()` (metrics, error bounds, counts) of `detector` on `samples` (an
    indexable split, the same on every rank), computed by all ranks of `group` together and
    returned on every rank. Collective: every rank calls it with the same arguments."""
    rank, world = rank_and_world(group)
    size = _batch_size(detector, batch_size, samples)
    evaluator = (
        Evaluator(pixel=pixel, num_bins=num_bins, exact_budget=exact_budget, max_fpr=max_fpr)
        if rank == 0
        else None
    )
    COMM_STATS["bytes_to_rank0"] = 0
    for gathered in _rounds(detector, samples, size, group, _record):
        if rank == 0:
            for r, part in enumerate(gathered):  # rank order = batch order = sample order
                for maps, masks, labels, view_scores, score, sample_id, defect in part:
                    if r:
                        COMM_STATS["bytes_to_rank0"] += maps.nbytes + sum(
                            getattr(m, "nbytes", 0) for m in (masks if masks is not None else [])
                        )
                    evaluator.update(
                        maps, masks, labels, view_scores=view_scores, sample_score=score,
                        sample_id=sample_id, defect_type=defect,
                    )  # fmt: skip
    details = [evaluator.details() if rank == 0 else None]
    if world > 1:
        dist.broadcast_object_list(details, src=0, group=group)
    return details[0]
