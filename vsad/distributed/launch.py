"""Process groups: set-up from the torchrun environment, and a spawner with a time limit.

`run_workers(fn, world_size, *args, timeout=...)` starts `world_size` fresh processes on the
loopback interface (gloo, a free MASTER_PORT), runs `fn(*args)` in each after
`init_process_group`, and returns the per-rank results in rank order. Whatever happens, it
returns or raises within `timeout` seconds: survivors are terminated, then killed.
"""

from __future__ import annotations

import os
import pickle
import socket
import time
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """The contiguous block [lo, hi) of n items that `rank` of `world` holds (sizes differ by at
    most one; lower ranks hold the lower indices, so global order = rank order)."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank, world: got {rank}, {world}, expected 0 <= rank < world")
    if n < 0:
        raise ValueError(f"n: got {n}, expected >= 0")
    return n * rank // world, n * (rank + 1) // world


def is_distributed() -> bool:
    """Whether a default process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world(group=None) -> tuple[int, int]:
    """(rank, world size) in `group`, or (0, 1) without an initialised process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_backend(device: str | torch.device = "cpu") -> str:
    """NCCL for CUDA devices when available, gloo otherwise."""
    if torch.device(device).type == "cuda" and dist.is_nccl_available():
        return "nccl"
    return "gloo"


def init_from_env(
    *, backend: str | None = None, device: str = "cpu", timeout_s: float = 1800
) -> tuple[int, int]:
    """Initialises the default process group from torchrun's environment (RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT) if WORLD_SIZE is set and no group exists; returns (rank, world).
    Without WORLD_SIZE nothing is initialised and (0, 1) is returned."""
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if "WORLD_SIZE" not in os.environ:
        return 0, 1
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise RuntimeError(
                f"environment: WORLD_SIZE is set but {name} is not; start the processes with "
                "torchrun (or set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT)"
            )
    dist.init_process_group(
        backend or default_backend(device), timeout=timedelta(seconds=timeout_s)
    )
    return dist.get_rank(), dist.get_world_size()


def _worker(rank, world, port, threads, timeout_s, fn, args, queue) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world)
    )
    torch.set_num_threads(threads)
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=timeout_s),
        )
        try:
            result = fn(*args)
        finally:
            dist.destroy_process_group()
        # Plain pickle bytes: a tensor sent through the queue as is would live in shared
        # memory that disappears with this process.
        queue.put((rank, True, pickle.dumps(result)))
    except BaseException:  # reported to the parent, which raises
        queue.put((rank, False, traceback.format_exc()))


def run_workers(fn, world_size: int, *args, timeout: float = 60, threads: int | None = None):
    """fn(*args) in `world_size` spawned processes joined by a gloo group on loopback; the
    results (picklable) in rank order. Raises RuntimeError naming the rank on an error, and
    TimeoutError after `timeout` seconds (every process is stopped either way). `fn` must be
    importable (a module-level function)."""
    import queue as queue_module

    import torch.multiprocessing as mp

    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size: got {world_size!r}, expected an integer >= 1")
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // world_size)
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(
            target=_worker,
            args=(rank, world_size, port, threads, timeout, fn, args, results),
            daemon=True,
        )
        for rank in range(world_size)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    got: dict[int, object] = {}
    try:
        while len(got) < world_size:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"run_workers: {world_size - len(got)} of {world_size} ranks did not finish "
                    f"within timeout={timeout} s"
                )
            try:
                rank, ok, value = results.get(timeout=min(left, 1.0))
            except queue_module.Empty:
                dead = [
                    r for r, p in enumerate(procs) if r not in got and p.exitcode not in (None, 0)
                ]
                if dead:
                    raise RuntimeError(
                        f"run_workers: rank {dead[0]} exited with code {procs[dead[0]].exitcode}"
                    ) from None
                continue
            if not ok:
                raise RuntimeError(f"run_workers: rank {rank} failed:\n{value}")
            got[rank] = pickle.loads(value)  # from the ranks this call started
    finally:
        for p in procs:
            p.join(timeout=max(0.1, min(5.0, deadline - time.monotonic())))
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=2)
            if p.is_alive():
                p.kill()
                p.join(timeout=2)
    return [got[r] for r in range(world_size)]


def torchrun_command(nproc: int, vsad_args: list[str]) -> list[str]:
    """`python -m torch.distributed.run --standalone --nproc-per-node N -m vsad -- ARGS`.

    The `--`: torchrun's parser reads options after the script too, and takes an abbreviation
    of its own (vsad test's `--run` is ambiguous with its `--run-path`); after `--` it does not
    (and drops the `--`)."""
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc: got {nproc!r}, expected an integer >= 1")
    import sys

    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={nproc}", "-m", "vsad", "--", *vsad_args,
    ]  # fmt: skip


def relaunch_with_torchrun(nproc: int, vsad_args: list[str]) -> int:
    """Runs `vsad ARGS` on `nproc` local processes under torchrun; its exit status."""
    import subprocess

    # The children find WORLD_SIZE in their environment instead (and torchrun's own parser
    # would read "--nproc" as an abbreviation of its "--nproc-per-node").
    forwarded, skip = [], False
    for arg in vsad_args:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            forwarded.append(arg)
    return subprocess.call(torchrun_command(nproc, forwarded))
