"""The one thread that does MLX work, and the pipe that brings its tokens to the UI.

MLX streams belong to the thread that created them, and MLX work on the event loop freezes the UI,
so every load and every generation runs on a single worker thread created once per app. Tokens cross
back with `loop.call_soon_threadsafe` onto an asyncio queue (cheap for the generator, which never
waits for the UI). Stop is a `threading.Event` the generator polls between tokens.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Iterator


@dataclass
class StreamEvent:
    kind: str  # "chunk", "prefill" (done, total), "error", "done"
    chunk: object = None
    progress: tuple[int, int] | None = None
    error: BaseException | None = None


class EngineBridge:
    def __init__(self):
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="orchard-mlx")
        self.stop_event = threading.Event()
        self._closing = False  # set by shutdown: jobs still queued then are skipped

    async def call(self, fn: Callable, *args):
        """Run `fn(*args)` on the MLX thread and await its result (exceptions propagate)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._unless_closing(fn), *args)

    def _unless_closing(self, fn: Callable) -> Callable:
        def run(*args):
            return None if self._closing else fn(*args)

        return run

    async def stream(self, start: Callable[..., Iterator]) -> AsyncIterator[StreamEvent]:
        """Events from `start(should_stop=..., on_prefill_progress=...)`, a generator run on the MLX thread.

        Always ends with one "done" or "error" event.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        self.stop_event.clear()
        put = queue.put_nowait

        def progress(done: int, total: int) -> None:
            loop.call_soon_threadsafe(put, StreamEvent("prefill", progress=(done, total)))

        def work() -> None:
            try:
                for chunk in start(should_stop=self.stop_event.is_set, on_prefill_progress=progress):
                    loop.call_soon_threadsafe(put, StreamEvent("chunk", chunk=chunk))
                loop.call_soon_threadsafe(put, StreamEvent("done"))
            except BaseException as e:  # delivered to the UI, which shows it; never lost in the thread
                loop.call_soon_threadsafe(put, StreamEvent("error", error=e))

        future = loop.run_in_executor(self._executor, self._unless_closing(work))
        while True:
            event = await queue.get()
            yield event
            if event.kind in ("done", "error"):
                break
        await future

    def stop(self) -> None:
        self.stop_event.set()

    def shutdown(self) -> None:
        """Stop any generation and wait for the MLX thread to finish its current job."""
        from mlxmodels.api import release_thread

        self._closing = True
        self.stop_event.set()
        self._executor.submit(release_thread)  # after the current job: the thread's last MLX call
        self._executor.shutdown(wait=True)
