"""Where a request's CPU work runs: inline on the event loop when its body is small, on the
worker's one inference thread when it is large, so probes and small requests are answered while
a large batch computes (onnxruntime releases the GIL while it runs)."""

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class BatchRunner:
    def __init__(self, offload_bytes: int):
        self._offload_bytes = offload_bytes
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="inference")

    async def run(self, body_bytes: int, work: Callable[[], T]) -> T:
        if body_bytes <= self._offload_bytes:
            return work()
        return await asyncio.get_running_loop().run_in_executor(self._thread, work)
