"""Scale-out on torch.distributed (gloo on CPU, NCCL on GPU; no home-made RPC).

- `bank`: a memory bank sharded over the ranks (each holds 1/world of every (level, view) bank);
  a search is the local fused min-L2 plus an all-reduce of (distance, global index), identical
  (bit for bit, index included) to the single-process search.
- `evaluate`: test samples sharded over the ranks, their results streamed to rank 0 in the
  single-process order, so every metric is identical to one process.
- `training`: VALDM training with gradient all-reduce, deterministic batch sharding and rank-0
  atomic checkpoints (resumable by any world size).
- `launch`: process-group set-up from the torchrun environment, free ports, and a bounded
  spawner for tests and benchmarks.
"""

from vsad.distributed.launch import (
    free_port,
    init_from_env,
    is_distributed,
    rank_and_world,
    run_workers,
    shard_range,
)

__all__ = [
    "free_port",
    "init_from_env",
    "is_distributed",
    "rank_and_world",
    "run_workers",
    "shard_range",
]
