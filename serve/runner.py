"""Where a request's CPU work runs, and how much of it a worker takes on at once.

Work runs inline on the event loop when its body is small, on the worker's one inference
thread when it is large, so probes and small requests are answered while a large batch computes
(onnxruntime releases the GIL while it runs).

The cap counts requests at work: from the moment their whole body has arrived until their
answer is encoded. A request still waiting for its body does no work and holds no slot, so slow
or stalled uploads cannot fill the cap and deny service to others; those are bounded by the
transport's timeouts instead (serve/body.py, serve/worker.py).
"""

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from serve.errors import Overloaded
from serve.metrics import Metrics

T = TypeVar("T")


class BatchRunner:
    def __init__(self, offload_bytes: int, max_working: int, metrics: Metrics):
        self._offload_bytes = offload_bytes
        self._max_working = max_working
        self._metrics = metrics
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self.working = 0

    async def run(self, body_bytes: int, work: Callable[[], T], model: str = "") -> T:
        """A request's work, admitted under the cap: `work()`'s result, or Overloaded (503) at
        once when the worker has `max_working` requests at work already."""
        if self.working >= self._max_working:
            self._metrics.shed()
            raise Overloaded(
                f"more than {self._max_working} requests at work in this worker; retry", model
            )
        self.working += 1
        try:
            return await self.compute(body_bytes, work)
        finally:
            self.working -= 1

    async def compute(self, size: int, work: Callable[[], T]) -> T:
        """`work()` inline when `size` is small, else on the inference thread; not admitted
        (the answer of a request already past the cap, such as its compression)."""
        if size <= self._offload_bytes:
            return work()
        return await asyncio.get_running_loop().run_in_executor(self._thread, work)
