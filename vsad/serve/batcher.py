"""One thread owns the detector; requests wait in a bounded queue and are predicted together.

Micro-batching without a delay: the worker takes everything waiting (up to `max_batch`
samples) the moment it is free and runs one `predict_many` over them. A lone request is
therefore never held back waiting for company (latency at concurrency 1 is the detector's own),
and requests that arrive while a batch runs are predicted together in the next one. The queue
holds at most `max_queue` waiting samples; `submit` refuses more (`QueueFull`, the service's
503 with Retry-After) instead of letting latency and memory grow. `close()` stops accepting
and lets the worker finish everything already accepted.
"""

from __future__ import annotations

import asyncio
import collections
import re
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

_WHERE = re.compile(r"^samples\[(\d+)\]")


class QueueFull(Exception):
    """The queue holds max_queue samples already."""


class ShuttingDown(Exception):
    """The service is draining: accepted work finishes, new work is refused."""


@dataclass
class Job:
    views: list
    sample_id: str | None
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)
    started: float = 0.0
    batch_size: int = 0


@dataclass
class Outcome:
    prediction: object
    warnings: list[str]
    queue_s: float
    predict_s: float
    batch_size: int


class Batcher:
    """predict(list of samples) -> list of Predictions, called on one worker thread."""

    def __init__(self, predict: Callable[[list], list], *, max_batch: int, max_queue: int):
        if max_batch < 1 or max_queue < 1:
            raise ValueError(f"max_batch, max_queue: got {max_batch}, {max_queue}, expected >= 1")
        self._predict = predict
        self.max_batch, self.max_queue = max_batch, max_queue
        self._queue: collections.deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self._closing = False
        self._running = 0  # samples in the batch being predicted
        self.batches = 0
        self.samples = 0
        self.batch_seconds = 0.0  # exponential moving average of one batch's time
        self._thread = threading.Thread(target=self._run, name="vsad-predict", daemon=True)
        self._thread.start()

    # -- the event loop's side ------------------------------------------------------------
    def submit(self, views: list, sample_id: str | None) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        job = Job(views, sample_id, loop, loop.create_future())
        with self._cv:
            if self._closing:
                raise ShuttingDown()
            if len(self._queue) >= self.max_queue:
                raise QueueFull()
            self._queue.append(job)
            self._cv.notify()
        return job.future

    def retry_after(self) -> int:
        """Seconds until the queue has room, estimated from the recent batch time (>= 1)."""
        with self._cv:
            waiting = len(self._queue)
        batches = -(-waiting // self.max_batch) + 1
        return max(1, round(batches * (self.batch_seconds or 1.0)))

    def depth(self) -> tuple[int, int]:
        """(waiting, being predicted)."""
        with self._cv:
            return len(self._queue), self._running

    def close(self, timeout: float | None = None) -> bool:
        """Refuses new work, finishes what was accepted; True if the worker ended in time."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- the worker -----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closing:
                    self._cv.wait()
                if not self._queue:
                    return  # closing and drained
                batch = [
                    self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))
                ]
                self._running = len(batch)
            try:
                self._predict_batch(batch)
            finally:
                with self._cv:
                    self._running = 0

    def _predict_batch(self, batch: list[Job]) -> None:
        start = time.perf_counter()
        for job in batch:
            job.started, job.batch_size = start, len(batch)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                predictions = self._predict([job.views for job in batch])
        except Exception as err:  # noqa: BLE001 - handed to the requests, never kills the worker
            if len(batch) > 1:  # one bad sample must not fail the others: one at a time
                for job in batch:
                    self._predict_batch([job])
                return
            self._finish(batch[0], error=err)
            return
        elapsed = time.perf_counter() - start
        self.batches += 1
        self.samples += len(batch)
        self.batch_seconds = (
            elapsed if self.batches == 1 else 0.8 * self.batch_seconds + 0.2 * elapsed
        )
        per_sample: list[list[str]] = [[] for _ in batch]
        for w in caught:
            text = str(w.message)
            match = _WHERE.match(text)
            if len(batch) > 1 and match and int(match.group(1)) < len(batch):
                index = int(match.group(1))
                per_sample[index].append(_WHERE.sub("views", text))
            else:
                for messages in per_sample:
                    messages.append(text)
        for job, prediction, messages in zip(batch, predictions, per_sample, strict=True):
            self._finish(
                job,
                result=Outcome(
                    prediction, messages, job.started - job.enqueued, elapsed, len(batch)
                ),
            )

    @staticmethod
    def _finish(job: Job, *, result=None, error: BaseException | None = None) -> None:
        def settle() -> None:
            if job.future.done():  # the client went away and the request was cancelled
                return
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(result)

        try:
            job.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the event loop is closed (shutdown after a timeout)
            pass


def choose_max_batch(
    predict,
    views: list,
    limit: int,
    *,
    margin: float = 0.1,
    rounds: int = 3,
    clock=time.perf_counter,
) -> tuple[int, dict]:
    """The batch size the service uses: starting from 1, the next size (2, 4, ...) <= limit is
    taken while its time per sample beats the current size's by more than `margin` (batching
    must pay for the latency it adds). Two sizes are compared by timing `predict` on copies of
    `views` in turn, `rounds` times each, and taking the best of each (a shared machine's load
    drifts; in turn, both see it). Returns (size, {size: s per sample}). On 2 cores the
    default VSAD is slower per sample in batches (its 384² backbone activations outgrow the
    caches), raw-pixel PatchKNN faster (BENCHMARKS.md, "Serving")."""

    def per_sample(size: int) -> float:
        start = clock()
        predict([views] * size)
        return (clock() - start) / size

    timings: dict[int, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predict([views])  # warm-up
        chosen = 1
        while 2 * chosen <= limit:
            bigger = 2 * chosen
            runs: dict[int, list[float]] = {chosen: [], bigger: []}
            for _ in range(rounds):
                for size in runs:
                    runs[size].append(per_sample(size))
            timings[chosen] = min(timings.get(chosen, float("inf")), *runs[chosen])
            timings[bigger] = min(runs[bigger])
            if not timings[bigger] < timings[chosen] * (1 - margin):
                break
            chosen = bigger
    return chosen, timings
