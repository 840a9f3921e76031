"""Merging concurrent requests into one model call.

Gradio runs up to ``concurrency`` handlers in parallel; each hands its image or text to a
:class:`MicroBatcher`, which merges whatever is waiting into one forward pass.
"""

from __future__ import annotations

import collections
import concurrent.futures
import queue
import threading
import time
from typing import Any, Callable, Sequence

from align_hf.demo.limits import DEFAULT_MAX_BATCH_SIZE

_STOP = object()


class MicroBatcher:
    """Run ``fn`` on lists of items submitted by concurrent callers.

    A worker thread takes the oldest waiting item plus everything else already queued (waiting at
    most ``max_wait_s`` for more) and calls ``fn`` once on the list; each caller blocks until its own
    result is ready. While one batch runs, new requests pile up and go together in the next one,
    so under load the model sees full batches and nobody waits for a queue of single calls.

    Args:
        fn: maps a list of ``n`` items to a sequence of ``n`` results (same order).
        max_batch_size: most items per call.
        max_wait_s: how long the worker waits for company once it has one item.
    """

    def __init__(
        self,
        fn: Callable[[list[Any]], Sequence[Any]],
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        max_wait_s: float = 0.005,
        name: str = "batcher",
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.fn = fn
        self.max_batch_size = int(max_batch_size)
        self.max_wait_s = float(max_wait_s)
        self.name = name
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=1000)  # recent batch sizes
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def __call__(self, item: Any) -> Any:
        """Submit one item and wait for its result (exceptions of ``fn`` are re-raised here)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.name} is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self._queue.put((item, future))
        return future.result()

    def pending(self) -> int:
        """Items queued and not yet picked up by the worker."""
        return self._queue.qsize()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            thread = self._thread
            self._queue.put((_STOP, None))
        if thread is not None:
            thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first[0] is _STOP:
                return
            batch = [first]
            stop = False
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch_size:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt[0] is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            self._execute(batch)
            if stop:
                return

    def _execute(self, batch: list[tuple[Any, concurrent.futures.Future]]) -> None:
        self.batch_sizes.append(len(batch))
        try:
            results = self.fn([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{self.name}: got {len(results)} results for {len(batch)} items")
        except BaseException as err:  # every waiting caller must hear about the failure
            for _, future in batch:
                future.set_exception(err)
            return
        for (_, future), result in zip(batch, results):
            future.set_result(result)


__all__ = ["MicroBatcher"]
