"""The serving engine: one loaded `Pipeline`, one device thread, request batching.

```python
engine = Engine(Pipeline.from_pretrained("tiny-bundle"), ServeConfig())
engine.start()                                   # device thread + warm-up
out = await engine.generate(ticket, "clip.mp4", request, workdir)   # -> Output (a file in workdir)
```

- Every backend call (frame encoding, sampling, VAE decoding) runs on the engine's one
  device thread, so no backend is ever entered from two threads (CUDA-graph capture,
  TensorRT execution contexts and the CPU's thread pool all want that). Preparation
  (decode, encode, curve, text) runs before sampling, in arrival order.
- Batching: a prepared request waits in `ready`; the head of `ready` and every later
  request with the same `group_key` (latent length, text length, sampler options) are
  sampled in one `Pipeline.sample` call of at most `max_batch`. The head waits for
  companions only while other admitted requests are still uploading or being prepared,
  and at most `batch_wait_ms`; a lone request never waits. Incompatible requests keep
  their arrival order. Ray Serve replaces this policy with `@serve.batch` and calls the
  same `sample_and_decode` (see `ray_app`).
- Generation is the engine core's (`Pipeline.prepare / sample / render / write`); this module
  adds the device thread, the batching policy and cancellation (an observer that stops a
  group's sampling once every request in it was abandoned).
- Candidates: one prepared video and its seed variants (`eval.candidates.candidate_variants`)
  go to the batcher together, so they are sampled as one group where `max_batch` allows (with
  compatible requests too); what comes back is ranked by `eval.candidates.rank`.
- prompt=auto: the prompt is written from the video by `video_prompt`, the one function the
  server calls for it, on the device thread before `prepare`.
- Everything a request writes lives in its own temporary directory (`TempDirs`).

No web framework, torch or Ray is imported here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import shutil
import tempfile
import threading
import time
import zipfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from v2m.core import tempfiles
from v2m.eval.candidates import candidate_variants, rank
from v2m.runtime import video
from v2m.runtime.observers import Observer, Observers, StageMetrics
from v2m.runtime.prepared import Prepared
from v2m.runtime.request import Request

from .config import DEFAULT_MAX_BATCH, FORMATS, ServeConfig

__all__ = ["Engine", "Output", "Ticket", "TempDirs", "Scheduler", "group_key", "video_prompt", "CANDIDATES_JSON"]

log = logging.getLogger("v2m.serve")

CANDIDATES_JSON = "candidates.json"  # keep_candidates: the zip's table of seeds, scores and files


def video_prompt(video_path: Path, video_stream: int | None = None, max_duration_s: float | None = None,
                 models=None) -> str:
    """The prompt written from a video (prompt=auto): `runtime.describe_models.write_prompt`, the
    weight-free describer and the model stages the server was started with (`models`, a
    `PromptModels`: `v2m serve --whisper/--captioner/--lm`), each cached by content. The one place
    the server writes a prompt from a video. A video past `max_duration_s` is refused from its
    header (`VideoTooLong`) before it is hashed or decoded."""
    from v2m.runtime.describe_models import write_prompt

    info = video.probe(video_path, video_stream)
    video.check_duration(info.duration_s, max_duration_s, Path(video_path).name)
    prompt, _ = write_prompt(video_path, models, video_stream)
    return prompt


# --- requests --------------------------------------------------------------------------
class Abandoned(Exception):
    """Every request of a group was abandoned (timed out or disconnected): stop sampling."""


class Ticket:
    """One request's handle: abandoned (timeout, disconnect, shutdown) -> its work is skipped."""

    def __init__(self):
        self._abandoned = threading.Event()
        self.expected = False  # counted in the scheduler's `incoming` (see `Engine.expect`)

    def abandon(self) -> None:
        self._abandoned.set()

    @property
    def abandoned(self) -> bool:
        return self._abandoned.is_set()


def group_key(item: Prepared) -> tuple:
    """Items with equal keys can be sampled in one call (`Prepared.group_key`)."""
    return item.group_key()


class _Cancel(Observer):
    """Stops a group's sampling at the next step once every request in it was abandoned, or the
    engine closes."""

    def __init__(self, tickets: list[Ticket | None], closing: threading.Event):
        self.tickets, self.closing = tickets, closing

    def step(self, i: int) -> None:
        if self.closing.is_set() or all(t is not None and t.abandoned for t in self.tickets):
            raise Abandoned()


@dataclass
class Output:
    """A finished request: its file (with keep_candidates a zip of every candidate's), the seed
    written, the prompt used, and with candidates one row per seed: {"seed", "score", "best"}
    (and "file" in the zip)."""

    path: Path
    seed: int
    duration_s: float
    batch_size: int
    timings: dict[str, float]
    prompt: str = ""
    candidates: list[dict] | None = None


class TempDirs:
    """Per-request temporary directories under one root, removed on request end and on close."""

    def __init__(self, parent: str | Path | None = None):
        tempfiles.clean_dead_dirs(parent, "v2m-serve-")  # what a killed server left
        self.root = tempfiles.owned_dir(parent, "v2m-serve-")

    def new(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="req-", dir=self.root))

    def remove(self, path: Path | None) -> None:
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


# --- the device thread -----------------------------------------------------------------
@dataclass(eq=False)  # compared by identity (the item holds arrays)
class _Entry:
    item: Prepared
    future: concurrent.futures.Future
    key: tuple
    t_ready: float


class Scheduler:
    """One thread runs every backend call: queued tasks first (FIFO), then batched groups.

    Args:
        run_group: runs a list of compatible items; returns one result (or exception) per item.
        max_batch: most items in a group.
        wait_s: longest the head of `ready` waits for companions (see the module docstring).
        on_batch: called with each group's size (metrics).
    """

    def __init__(self, run_group: Callable[[list[Prepared]], list], max_batch: int, wait_s: float,
                 on_batch: Callable[[int], None] | None = None):
        self.run_group, self.max_batch, self.wait_s = run_group, max_batch, wait_s
        self.on_batch = on_batch
        self._cv = threading.Condition()
        self._tasks: deque[tuple[concurrent.futures.Future, Callable, tuple]] = deque()
        self._ready: list[_Entry] = []
        self._incoming = 0  # admitted, not yet in `ready` (uploading or being prepared)
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="v2m-device", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Fail every queued task and item, let the running one finish (up to `timeout`)."""
        with self._cv:
            self._stop = True
            dropped = [f for f, _, _ in self._tasks] + [e.future for e in self._ready]
            self._tasks.clear()
            self._ready.clear()
            self._cv.notify_all()
        for f in dropped:
            if f.set_running_or_notify_cancel():
                f.set_exception(RuntimeError("the server is shutting down"))
        if self._thread.is_alive():
            self._thread.join(timeout)

    # admitted requests that may still join a group
    def expect(self, n: int = 1) -> None:
        with self._cv:
            self._incoming += n
            self._cv.notify_all()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def depth(self) -> int:
        """Requests queued for the device: tasks waiting plus prepared items waiting for a group."""
        with self._cv:
            return len(self._tasks) + len(self._ready)

    def call(self, fn: Callable, *args) -> concurrent.futures.Future:
        """Run `fn(*args)` on the device thread, before any waiting group."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._cv:
            if self._stop:
                raise RuntimeError("the server is shutting down")
            self._tasks.append((fut, fn, args))
            self._cv.notify_all()
        return fut

    def enqueue(self, item: Prepared, expected: bool = True) -> concurrent.futures.Future:
        """Queue a prepared item for batched sampling; the future gives `run_group`'s result for it.
        `expected`: it was announced with `expect()` (which this undoes)."""
        return self.enqueue_many([item], expected)[0]

    def enqueue_many(self, items: list[Prepared], expected: bool = True) -> list[concurrent.futures.Future]:
        """`enqueue` of one request's items (its candidates) at once, so that no group is formed
        between them; `expected` undoes the request's one `expect()`."""
        futs: list[concurrent.futures.Future] = [concurrent.futures.Future() for _ in items]
        with self._cv:
            if expected:
                self._incoming -= 1
            if self._stop:
                raise RuntimeError("the server is shutting down")
            now = time.perf_counter()
            self._ready.extend(_Entry(item, fut, group_key(item), now) for item, fut in zip(items, futs))
            self._cv.notify_all()
        return futs

    def _next(self):
        """Under the lock: a task, a group to run, or how long to wait (None: until notified)."""
        if self._tasks:
            return "task", self._tasks.popleft()
        self._ready = [e for e in self._ready if not e.future.cancelled()]
        if not self._ready:
            return "wait", None
        head = self._ready[0]
        group = [e for e in self._ready if e.key == head.key][: self.max_batch]
        left = head.t_ready + self.wait_s - time.perf_counter()
        if len(group) < self.max_batch and self._incoming > 0 and left > 0:
            return "wait", left
        taken = {id(e) for e in group}
        self._ready = [e for e in self._ready if id(e) not in taken]
        return "group", group

    def _loop(self) -> None:
        try:
            self._serve()
        except BaseException:  # a bug here must not leave requests waiting forever
            log.exception("the device thread failed; failing every queued request")
            with self._cv:
                self._stop = True
                dropped = [f for f, _, _ in self._tasks] + [e.future for e in self._ready]
                self._tasks.clear()
                self._ready.clear()
            for f in dropped:
                if f.set_running_or_notify_cancel():
                    f.set_exception(RuntimeError("the device thread failed; the server is shutting down"))

    def _serve(self) -> None:
        while True:
            with self._cv:
                while True:
                    if self._stop:
                        return
                    kind, what = self._next()
                    if kind != "wait":
                        break
                    self._cv.wait(what)
            if kind == "task":
                fut, fn, args = what
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn(*args))
                    except BaseException as e:  # noqa: BLE001 - handed to the waiting request
                        fut.set_exception(e)
                continue
            group = [e for e in what if e.future.set_running_or_notify_cancel()]
            if not group:
                continue
            if self.on_batch is not None:
                self.on_batch(len(group))
            try:
                results = self.run_group([e.item for e in group])
            except BaseException as e:  # noqa: BLE001
                results = [e] * len(group)
            for e, r in zip(group, results):
                if isinstance(r, BaseException):
                    e.future.set_exception(r)
                else:
                    e.future.set_result(r)


# --- the engine ------------------------------------------------------------------------
class Engine:
    """A loaded pipeline behind a device thread. See the module docstring.

    Args:
        pipe: a loaded `Pipeline`.
        config: limits and batching settings.
        observe_stage: called with (stage, seconds) for every timed stage (metrics).
        observe_batch: called with each sampled group's size (metrics).
    """

    def __init__(self, pipe, config: ServeConfig, observe_stage: Callable[[str, float], None] | None = None,
                 observe_batch: Callable[[int], None] | None = None):
        self.pipe, self.config = pipe, config
        self.observe_stage = observe_stage or (lambda stage, s: None)
        # read at call time: the app sets `observe_stage` after construction
        self.observers = Observers([StageMetrics(lambda stage, s: self.observe_stage(stage, s))])
        # what the engine's profile takes with the most guidance branches (cond, uncond, nocurve)
        backend_max = pipe.backend.max_batch(3)
        self.max_batch = int(config.max_batch or backend_max or DEFAULT_MAX_BATCH)
        if backend_max:
            self.max_batch = min(self.max_batch, int(backend_max))
        self.scheduler = Scheduler(self.sample_and_decode, self.max_batch, config.batch_wait_ms / 1e3, observe_batch)
        self.temp = TempDirs(config.tmp_dir)
        self.model_name = Path(pipe.bundle_dir).name
        # how a prepared item becomes audio: the local batcher, or Ray Serve's (`ray_app`)
        self.batch_fn: Callable[[Prepared], Any] = self._local_batch
        self._started = False
        self._closing = threading.Event()  # set by close(): every decode, encode and sampler loop stops

    # --- life cycle
    def start(self, warmup: bool | None = None) -> None:
        """Start the device thread; warm up (one short generation) unless told not to."""
        if self._started:
            return
        self.scheduler.start()
        self._started = True
        if self.config.warmup if warmup is None else warmup:
            self.scheduler.call(self.warm_up).result()

    def close(self) -> None:
        self._closing.set()  # the running request stops at its next frame, batch or step
        self.scheduler.stop(timeout=self.config.shutdown_grace_s)
        if self.scheduler.alive:  # one backend call longer than the grace period
            log.warning("the device thread is still busy after %g s; exiting without it", self.config.shutdown_grace_s)
        self.temp.close()

    def warm_up(self) -> float:
        """One 1 s generation with 2 steps on the device thread (allocations, kernels, graphs)."""
        from v2m.runtime import synth

        t0 = time.perf_counter()
        work = self.temp.new()
        try:
            clip = work / "warmup.mp4"
            synth.make_test_video(clip, duration_s=1.0, size=(64, 48), cuts=(0.5,))
            item = self.prepare(None, clip, Request(steps=2, seed=0))
            (audio,) = self.sample_and_decode([item])
            if isinstance(audio, BaseException):
                raise audio
        finally:
            self.temp.remove(work)
        dt = time.perf_counter() - t0
        log.info("warmed up in %.2f s", dt)
        return dt

    def describe(self) -> dict[str, Any]:
        return {**self.pipe.backend.describe(), "model": self.model_name, "preset": self.pipe.config.preset,
                "max_batch": self.max_batch}

    def gpu_memory(self) -> dict[str, int]:
        """Allocated bytes per CUDA device, where the torch backend runs on one (else empty)."""
        import sys

        dev = str(self.pipe.backend.device)
        torch = sys.modules.get("torch")
        if torch is None or not dev.startswith("cuda") or not torch.cuda.is_available():
            return {}
        return {dev: int(torch.cuda.memory_allocated(torch.device(dev)))}

    # --- the stages (device thread)
    def cancel_of(self, ticket: Ticket | None) -> Callable[[], bool]:
        """The `cancel` of a request's decode and encode: its ticket abandoned, or the engine closing."""
        return video.either(self._closing, None if ticket is None else (lambda: ticket.abandoned))

    def prepare(self, ticket: Ticket | None, video_path: Path, req: Request) -> Prepared:
        """The core's `prepare` (decode, encode, event curve, text) on the device thread; it stops
        at the next frame or batch once the request is abandoned or the engine closes."""
        if ticket is not None and ticket.abandoned:
            raise Abandoned()
        p = self.pipe.prepare(video_path, req, observers=self.observers, cancel=self.cancel_of(ticket),
                              max_duration_s=self.config.max_duration_s or None)
        p.info_extra["ticket"] = ticket
        return p

    def sample_and_decode(self, items: list[Prepared]) -> list[Any]:
        """Sample a compatible group (`Pipeline.sample`), render each item: per item
        (audio [2, N] fitted to its video, batch size) or an exception."""
        obs = self.observers.with_(_Cancel([p.info_extra.get("ticket") for p in items], self._closing))
        out: list[Any] = []
        for p, r in zip(items, self.pipe.sample(items, obs)):
            if isinstance(r, BaseException):
                out.append(r)
                continue
            try:
                out.append((self.pipe.render(p, r, obs), r.batch_size))
            except BaseException as e:  # noqa: BLE001 - handed to the waiting request
                out.append(e)
        return out

    def write(self, item: Prepared, audio: np.ndarray, out: Path) -> None:
        """Write `out` (.wav/.flac, or muxed .mp4/.mkv) with the core's `write`; any thread."""
        self.pipe.write(item, audio, out, self.observers)

    def curve(self, video_path: Path, ticket: Ticket | None = None):
        """The event curve (`Pipeline.curve`); device thread."""
        res = self.pipe.curve(video_path, cancel=self.cancel_of(ticket), max_duration_s=self.config.max_duration_s or None)
        for stage, s in res.timings.items():
            self.observe_stage(stage, s)
        return res

    # --- async API (the web app's event loop)
    async def _local_batch(self, item: Prepared):
        return await asyncio.wrap_future(self.scheduler.enqueue(item))

    async def run_device(self, fn: Callable, *args):
        """Run `fn(*args)` on the device thread and await it."""
        return await asyncio.wrap_future(self.scheduler.call(fn, *args))

    async def run_groups(self, items: list[Prepared]) -> list[Any]:
        """Sample items collected by another batcher (Ray Serve's `@serve.batch`): split into
        compatible groups of at most `max_batch`, in order; one result or exception per item."""
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(items):
            groups.setdefault(group_key(p), []).append(i)
        results: list[Any] = [None] * len(items)
        for idx in groups.values():
            for k in range(0, len(idx), self.max_batch):
                chunk = idx[k : k + self.max_batch]
                if self.scheduler.on_batch is not None:
                    self.scheduler.on_batch(len(chunk))
                try:
                    out = await self.run_device(self.sample_and_decode, [items[i] for i in chunk])
                except BaseException as e:  # noqa: BLE001
                    out = [e] * len(chunk)
                for i, r in zip(chunk, out):
                    results[i] = r
        return results

    def expect(self, ticket: Ticket) -> None:
        """Announce an admitted request that may join a batch (the batcher waits for it)."""
        if not ticket.expected:
            ticket.expected = True
            self.scheduler.expect(1)

    def unexpect(self, ticket: Ticket) -> None:
        if ticket.expected:
            ticket.expected = False
            self.scheduler.expect(-1)

    async def generate(self, ticket: Ticket, video_path: Path | None, req: Request, workdir: Path, fmt: str = "mp4", *,
                       candidates: int = 1, keep_candidates: bool = False, auto_prompt: bool = False) -> Output:
        """The whole request: (the prompt from the video,) prepare, batched sampling and rendering
        of its `candidates` seeds, ranking, write `workdir/output.<fmt>` (the best; with
        `keep_candidates` `workdir/candidates.zip` of all). `video_path` None: music of `req.duration`."""
        t_queued = time.perf_counter()
        try:
            items = await self.run_device(self._timed_prepare, ticket, video_path, req, t_queued, candidates,
                                          auto_prompt)
            results = await self._sampled(ticket, items)
        finally:
            self.unexpect(ticket)
        write = asyncio.get_running_loop().run_in_executor(None, self._finish, items, results, workdir, fmt,
                                                           keep_candidates)
        try:
            return await asyncio.shield(write)
        except asyncio.CancelledError:
            await asyncio.wait({write})  # the file is closed before the caller removes its directory
            raise

    async def _sampled(self, ticket: Ticket, items: list[Prepared]) -> list[tuple[np.ndarray, int]]:
        """(audio, batch size) of each item, from the local batcher (all queued at once) or Ray's."""
        if self.batch_fn == self._local_batch:
            futs = self.scheduler.enqueue_many(items, expected=ticket.expected)
            ticket.expected = False
            return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futs)))
        self.unexpect(ticket)
        return list(await asyncio.gather(*(self.batch_fn(p) for p in items)))

    def _finish(self, items: list[Prepared], results: list, workdir: Path, fmt: str, keep: bool) -> Output:
        """Rank the candidates (one: nothing to rank), write the best (and with `keep` a zip of all)."""
        head = items[0]
        audios = [audio for audio, _ in results]
        rows = None
        if len(items) == 1:
            best, audio, bsize = head, audios[0], results[0][1]
        else:
            t0 = time.perf_counter()
            ranked = rank(self.pipe, items, audios)
            head.timings["score"] = time.perf_counter() - t0
            self.observe_stage("score", head.timings["score"])
            best, audio = ranked[0].prepared, ranked[0].audio
            bsize = next(r[1] for p, r in zip(items, results) if p is best)
            rows = [{"seed": c.seed, "score": None if c.score is None else round(c.score, 6), "best": c is ranked[0]}
                    for c in sorted(ranked, key=lambda c: c.seed)]
        out = workdir / f"output{FORMATS[fmt][0]}"
        self.write(best, audio, out)
        if keep and rows is not None:
            out = self._zip(ranked, rows, out, workdir, fmt)
        timings: dict[str, float] = {}  # the request's: every candidate's sampler, vae and write shares added
        for p in items:
            for stage, sec in p.timings.items():
                timings[stage] = timings.get(stage, 0.0) + sec
        return Output(out, best.seed, best.duration_s, bsize, timings, best.request.prompt, rows)

    def _zip(self, ranked, rows: list[dict], best_file: Path, workdir: Path, fmt: str) -> Path:
        """`workdir/candidates.zip`: every candidate as v2m-<seed>.<ext> (stored: audio and video are
        compressed already) and `CANDIDATES_JSON` (the rows, each with its file)."""
        suffix = FORMATS[fmt][0]
        path = workdir / "candidates.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
            for c in ranked:  # the best is written already
                name = f"v2m-{c.seed}{suffix}"
                f = best_file if c is ranked[0] else workdir / name
                if c is not ranked[0]:
                    self.write(c.prepared, c.audio, f)
                z.write(f, name)
                f.unlink()  # one copy on disk at a time
            for row in rows:
                row["file"] = f"v2m-{row['seed']}{suffix}"
            z.writestr(CANDIDATES_JSON, json.dumps(rows, indent=1))
        return path

    def _timed_prepare(self, ticket: Ticket, video_path: Path | None, req: Request, t_queued: float,
                       candidates: int = 1, auto_prompt: bool = False) -> list[Prepared]:
        """(prompt=auto: the prompt from the video,) `prepare`, then the candidates' variants; device thread."""
        wait = time.perf_counter() - t_queued
        self.observe_stage("queue", wait)
        described = None
        if auto_prompt:
            if ticket is not None and ticket.abandoned:
                raise Abandoned()
            t0 = time.perf_counter()
            req = req.replace(prompt=video_prompt(video_path, req.video_stream, self.config.max_duration_s or None,
                                                  self.config.prompt_models))
            described = time.perf_counter() - t0
            self.observe_stage("describe", described)
        item = self.prepare(ticket, video_path, req)
        item.timings["queue"] = wait
        if described is not None:
            item.timings["describe"] = described
        if candidates == 1:
            return [item]
        items = candidate_variants(self.pipe, item, candidates, self.observers)
        for p in items[1:]:
            p.info_extra["ticket"] = ticket
        return items
