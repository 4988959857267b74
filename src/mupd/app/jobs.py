"""One job at a time per device, behind a queue the page shows.

A single worker thread runs jobs in order; the page polls a job's state (queued with its position,
running with tile progress, done with its images, or failed with the one-line error). Finished jobs
are kept in memory, oldest dropped first, so memory stays bounded however long the server runs.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
import traceback
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

from ..errors import MupdError

MAX_QUEUED = 16  # jobs waiting; more is refused with a clear message
KEEP_FINISHED = 64  # finished jobs kept for the page to fetch (each holds a few small PNGs)


@dataclass
class Job:
    id: str
    kind: str
    run: Callable[["Job"], dict]
    state: str = "queued"  # queued | running | done | error
    error: str = ""
    result: dict = field(default_factory=dict)  # {"images": [{"png", "width", "height", "params"}], "notes": [...]}
    done: int = 0  # tiles finished (image-to-image jobs)
    total: int = 0
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None


class JobQueue:
    def __init__(self, max_queued: int = MAX_QUEUED, keep: int = KEEP_FINISHED):
        self.max_queued, self.keep = max_queued, keep
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._waiting: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._worker = threading.Thread(target=self._loop, name="mupd-serve-worker", daemon=True)
        self._worker.start()

    def submit(self, kind: str, run: Callable[[Job], dict]) -> Job:
        with self._lock:
            waiting = sum(j.state == "queued" for j in self._jobs.values())
            if waiting >= self.max_queued:
                raise MupdError(f"the queue is full ({waiting} jobs waiting); try again when a job has finished")
            job = Job(f"j{next(self._ids)}", kind, run)
            self._jobs[job.id] = job
            self._drop_old()
        self._waiting.put(job)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def position(self, job: Job) -> int:
        """1 for the next job to run; 0 when not waiting."""
        if job.state != "queued":
            return 0
        with self._lock:
            queued = [j for j in self._jobs.values() if j.state == "queued"]
        return queued.index(job) + 1 if job in queued else 0

    def snapshot(self) -> dict:
        with self._lock:
            jobs = list(self._jobs.values())
        running = [j for j in jobs if j.state == "running"]
        return {"running": [{"id": j.id, "kind": j.kind, "done": j.done, "total": j.total} for j in running],
                "queued": [{"id": j.id, "kind": j.kind} for j in jobs if j.state == "queued"]}

    def close(self) -> None:
        self._waiting.put(None)

    def _drop_old(self) -> None:
        finished = [k for k, j in self._jobs.items() if j.state in ("done", "error")]
        for key in finished[: max(0, len(finished) - self.keep)]:
            del self._jobs[key]

    def _loop(self) -> None:
        while True:
            job = self._waiting.get()
            if job is None:
                return
            job.state, job.started = "running", time.time()
            try:
                job.result = job.run(job)
                job.state = "done"
            except MupdError as exc:
                job.error, job.state = str(exc), "error"
            except Exception as exc:  # a bug must not stop the worker: report it on the page and go on
                traceback.print_exc()
                job.error, job.state = f"internal error: {type(exc).__name__}: {exc}", "error"
            job.finished = time.time()
            with self._lock:
                self._drop_old()


@contextmanager
def tile_progress(job: Job):
    """Count the tiles of the CLI's tiling loop (``pipelines.tiles.tiled_apply``) into ``job``.

    ``tiled_apply`` reports through a tqdm bar; while this job runs (one job at a time, in the
    worker thread) that bar is swapped for one that also updates the job, then put back."""
    from tqdm.auto import tqdm

    from ..pipelines import tiles

    class JobBar(tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            job.total, job.done = int(kwargs.get("total") or 0), 0

        def update(self, n=1):
            job.done += int(n)
            return super().update(n)

    original = tiles.tqdm
    tiles.tqdm = JobBar
    try:
        yield
    finally:
        tiles.tqdm = original
