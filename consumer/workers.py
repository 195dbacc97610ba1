"""Ingest worker processes (``INGEST_WORKERS``): the ingest step on other cores.

The poll loop keeps Kafka, offsets, batching and sending; an :class:`IngestPool` runs only
:class:`~consumer.ingest.Ingest` (decode → map → validate → serialise) in ``workers`` child
processes and hands back, per message, what the step decided. Contracts:

- **Same results.** :meth:`PendingIngest.result` returns one result per submitted message, in
  submission order, equal to what ``build(settings)(messages)`` returns in-process. Items and
  dead letters are rebuilt in the parent around the *original* :class:`Message` objects, so
  only compact answers travel back: ``(event_id, body, key)`` for an item, ``(reason,
  error)`` for a dead letter, ``(retry_after_s, error)`` for :class:`Unavailable`.
- **Compact requests.** A chunk goes out as ``(topic, partition, offset, value, error)``
  tuples: what the step reads. A worker's ``Message`` has no key, timestamp or headers.
- **No message lost, nothing hangs.** A worker that dies (killed, a segfault) or whose step
  raised fails its outstanding chunks; :meth:`PendingIngest.result` recomputes them
  in-process with the pool's own step (built by the same ``build``), so a step that raises
  raises there, as it would in-process. The dead worker is replaced on a later
  :meth:`IngestPool.submit` (no sooner than :data:`RESPAWN_MIN_S` after the death, doubling
  while replacements die before they answer); until then its share goes to the live workers,
  or in-process when none is left. One error line per death (``event=ingest_worker_died``).
- **Non-blocking submit.** :meth:`IngestPool.submit` pickles and queues; a writer thread per
  worker feeds the pipe, a reader thread collects answers.
- **Bounded close.** :meth:`IngestPool.close` stops every worker within ``timeout_s``
  (SIGTERM, then SIGKILL), is idempotent, and leaves outstanding results computable
  in-process; a submit after close runs in-process too.
- **No secrets in the worker's argv or environment.** A worker is a fresh interpreter
  (``subprocess``: fork + exec, never a bare fork of a parent that runs librdkafka threads),
  started as ``python -c <bootstrap>`` with the parent's environment minus every variable the
  service reads (:data:`~consumer.settings.ENV_VARS`, ``KAFKA_*``) and every name that looks
  secret (:data:`~consumer.settings.SECRET_MARKERS`). ``multiprocessing``'s spawn context
  would hand the child the whole environment. The settings travel pickled through the pipe,
  without the API secret and the ``KAFKA_*`` properties (the step calls neither API nor
  Kafka); the worker logs as the service does, with the same secret scrubber.

Why processes and this chunk size: see ``tests/bench_workers.py`` (the parent's CPU per
message for a pool round trip against the in-process step).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import pickle
import queue
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeAlias

from consumer.ingest import Ingest, Result, Unavailable
from consumer.records import DeadLetter, Item, Message, Position
from consumer.settings import ENV_VARS, SECRET_MARKERS, Settings

log = logging.getLogger(__name__)

#: Messages per chunk (one pipe round trip each); see tests/bench_workers.py.
DEFAULT_CHUNK = 256
#: Most workers :func:`default_workers` proposes (the loop itself needs a core).
MAX_DEFAULT_WORKERS = 4
#: Seconds before a dead worker's slot is started again (doubles while replacements die
#: before answering anything, up to :data:`RESPAWN_MAX_S`).
RESPAWN_MIN_S = 1.0
RESPAWN_MAX_S = 60.0
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: Pipe buffer asked for in each direction (a chunk of 256 bench events is ~150 KB out,
#: ~270 KB back).
PIPE_BYTES = 1 << 20

_PROTOCOL = pickle.HIGHEST_PROTOCOL
#: What a chunk is sent as: one (topic, partition, offset, value, error) per message.
Raw: TypeAlias = tuple[str, int, int, bytes | None, str | None]
#: One answer per message: (event_id, body, key) | (reason, error) | (retry_after_s, error).
Answer: TypeAlias = tuple[Any, ...]

# The child's first statements, before anything of ours is importable: move the protocol off
# stdout (stray prints go to stderr), take the parent's sys.path, then serve.
_BOOTSTRAP = (
    "import os, pickle, sys\n"
    "from multiprocessing.connection import Connection\n"
    "out = os.dup(1)\n"
    "os.dup2(2, 1)\n"
    "inp = Connection(0, writable=False)\n"
    "sys.path[:] = pickle.loads(inp.recv_bytes())\n"
    "from consumer.workers import serve\n"
    "serve(inp, Connection(out, readable=False))\n"
)


def build_ingest(settings: Settings) -> Ingest:
    """:func:`consumer.service.build_ingest` (imported when called: the composition root
    imports this module, so a module-level import would be circular)."""
    from consumer.service import build_ingest as build

    return build(settings)


# --------------------------------------------------------------------------- sizing
def cgroup_cpus(cgroup_root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (``cpu.max`` of cgroup v2, else
    ``cpu.cfs_quota_us / cpu.cfs_period_us`` of v1), or None when none is set or readable."""
    try:
        fields = (cgroup_root / "cpu.max").read_text().split()
    except OSError:
        fields = []
    if len(fields) == 2:
        return None if fields[0] == "max" else _ratio(fields[0], fields[1])
    for folder in (cgroup_root / "cpu", cgroup_root / "cpu,cpuacct", cgroup_root):
        try:
            quota = (folder / "cpu.cfs_quota_us").read_text().strip()
            period = (folder / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            continue
        return None if quota.startswith("-") else _ratio(quota, period)
    return None


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def default_workers(cgroup_root: Path = CGROUP_ROOT, affinity: int | None = None) -> int:
    """INGEST_WORKERS' default: from the CPUs this process may use — the cgroup CPU quota
    (/sys/fs/cgroup/cpu.max, cgroup v2; cpu.cfs_quota_us/cpu.cfs_period_us for v1) when set,
    else len(os.sched_getaffinity(0)) — : 0 (in-process) below 2 CPUs, else CPUs - 1 capped
    at 4. A fractional quota counts whole CPUs only (1.5 CPUs → 1: no worker); a quota above
    the CPUs the process may run on counts those. ``affinity`` overrides the CPU count
    (tests)."""
    if affinity is None:
        if hasattr(os, "sched_getaffinity"):
            affinity = len(os.sched_getaffinity(0))
        else:  # not Linux: no affinity mask to read
            affinity = os.cpu_count() or 1
    quota = cgroup_cpus(cgroup_root)
    cpus = affinity if quota is None else min(affinity, math.floor(quota + 1e-9))
    return 0 if cpus < 2 else min(cpus - 1, MAX_DEFAULT_WORKERS)


def worker_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a worker starts with: ``env`` (default ``os.environ``) without the
    service's own variables, ``KAFKA_*`` and any name containing a secret marker."""
    env = os.environ if env is None else env
    return {
        k: v
        for k, v in env.items()
        if k not in ENV_VARS
        and not k.startswith("KAFKA_")
        and not any(marker in k.lower() for marker in SECRET_MARKERS)
    }


# --------------------------------------------------------------------------- the child
def serve(inp: Connection, out: Connection) -> None:
    """A worker's life (run by the bootstrap): read the init frame (settings, build, log
    format, level and secrets), build the step once, then answer one frame per chunk, in
    order, until the parent closes the pipe."""
    import signal

    from consumer import logs

    # The parent decides when workers stop (a terminal's Ctrl-C goes to its session only).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    settings, build, log_format, log_level, secrets = pickle.loads(inp.recv_bytes())
    logs.setup(log_format, log_level, secrets=secrets)
    ingest: Ingest = build(settings)
    while True:
        try:
            frame = inp.recv_bytes()
        except EOFError:
            return
        raw: list[Raw] = pickle.loads(frame)
        out.send_bytes(pickle.dumps(_answer_chunk(ingest, raw), _PROTOCOL))


def _answer_chunk(ingest: Ingest, raw: Sequence[Raw]) -> tuple[list[Answer] | None, str | None]:
    """``(answers, None)``, or ``(None, error)`` when the step raised (a bug: the parent
    recomputes the chunk in-process, where it raises again)."""
    messages = [Message(Position(t, p, o), None, v, None, (), e) for t, p, o, v, e in raw]
    try:
        results = ingest(messages)
    except Exception as exc:  # reported to the parent, which recomputes (and raises) there
        return None, f"{type(exc).__name__}: {exc}"[:1024]
    return [
        (r.event_id, r.body, r.key) if r.__class__ is Item else _answer_other(r) for r in results
    ], None


def _answer_other(result: Result) -> Answer:
    if isinstance(result, DeadLetter):
        return (result.reason, result.error)
    if isinstance(result, Unavailable):
        return (result.retry_after_s, result.error)
    return (result.event_id, result.body, result.key)


# --------------------------------------------------------------------------- the parent
class _Chunk:
    """Up to ``chunk`` consecutive submitted messages and, once ``ready``, the worker's
    answers (None: recompute in-process)."""

    __slots__ = ("answers", "messages", "ready")

    def __init__(self, messages: Sequence[Message]) -> None:
        self.messages = messages
        self.answers: list[Answer] | None = None
        self.ready = threading.Event()

    def answer(self, answers: list[Answer] | None) -> None:
        if answers is not None and len(answers) == len(self.messages):
            self.answers = answers
        self.ready.set()


class _Worker:
    """One child process, its two pipes, a writer and a reader thread. Chunks are answered
    in the order they were posted; when the child dies every outstanding chunk is failed."""

    def __init__(self, slot: int, init: bytes, clock: Callable[[], float]) -> None:
        self.slot = slot
        self.clock = clock
        self.lock = threading.Lock()
        self.outstanding: deque[_Chunk] = deque()
        self.outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.alive = True
        self.closing = False
        self.answered = False  # answered at least one chunk (it started fine)
        self.died_at = 0.0
        child_in, to_child = os.pipe()
        from_child, child_out = os.pipe()
        for fd in (to_child, from_child):
            _grow_pipe(fd)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP],
                stdin=child_in,
                stdout=child_out,
                env=worker_environment(),
                close_fds=True,
                # Signals for the service's process group (Ctrl-C, a group kill) are not the
                # workers': the pool stops them, and a worker whose parent is gone sees EOF.
                start_new_session=True,
            )
        except BaseException:
            for fd in (to_child, from_child):
                os.close(fd)
            raise
        finally:
            os.close(child_in)
            os.close(child_out)
        self.pid = self.proc.pid
        self.send = Connection(to_child, readable=False)
        self.recv = Connection(from_child, writable=False)
        self.outbox.put(pickle.dumps(sys.path, _PROTOCOL))
        self.outbox.put(init)
        name = f"ingest-worker-{slot}"
        self.writer = threading.Thread(target=self._write, name=f"{name}-writer", daemon=True)
        self.reader = threading.Thread(target=self._read, name=f"{name}-reader", daemon=True)
        self.writer.start()
        self.reader.start()

    @property
    def load(self) -> int:
        return len(self.outstanding)

    def post(self, frame: bytes, chunk: _Chunk) -> bool:
        """Queue ``chunk`` (pickled as ``frame``); False when the worker is gone."""
        with self.lock:
            if not self.alive:
                return False
            self.outstanding.append(chunk)
            self.outbox.put(frame)
        return True

    def _write(self) -> None:
        while (frame := self.outbox.get()) is not None:
            try:
                self.send.send_bytes(frame)
            except OSError:  # the child is gone: the reader sees EOF and retires it
                return

    def _read(self) -> None:
        while True:
            try:
                answers, error = pickle.loads(self.recv.recv_bytes())
            except (EOFError, OSError, pickle.UnpicklingError):
                break
            with self.lock:
                chunk = self.outstanding.popleft() if self.outstanding else None
            if chunk is None:  # an answer nobody asked for: the protocol is broken
                break
            if error is not None:
                log.error(
                    "ingest worker %d (pid %d): the ingest step raised (%s); the chunk of %d "
                    "messages is recomputed in-process",
                    self.slot,
                    self.pid,
                    error,
                    len(chunk.messages),
                    extra={"event": "ingest_worker_error", "pid": self.pid},
                )
            else:
                self.answered = True
            chunk.answer(answers)
        self._retire()

    def _retire(self) -> None:
        """The child is gone (or must go): fail what it owed, log the death once."""
        with self.lock:
            if not self.alive:
                return
            self.alive = False
            self.died_at = self.clock()
            owed = list(self.outstanding)
            self.outstanding.clear()
        self.outbox.put(None)
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(1.0)
        if not self.closing:
            log.error(
                "ingest worker %d (pid %d) died (exit status %s): %d chunks (%d messages) it "
                "owed are recomputed in-process and the worker is replaced",
                self.slot,
                self.pid,
                self.proc.returncode,
                len(owed),
                sum(len(c.messages) for c in owed),
                extra={
                    "event": "ingest_worker_died",
                    "pid": self.pid,
                    "exit_status": self.proc.returncode,
                    "chunks": len(owed),
                },
            )
        # After the line: whoever sees a result recomputed can see the line too.
        for chunk in owed:
            chunk.answer(None)

    def stop(self) -> None:
        """Start stopping: fail outstanding chunks, end the writer, SIGTERM the child."""
        self.closing = True
        with self.lock:
            self.alive = False
            owed = list(self.outstanding)
            self.outstanding.clear()
        self.outbox.put(None)
        for chunk in owed:
            chunk.answer(None)
        with contextlib.suppress(OSError):
            self.proc.terminate()

    def join(self, deadline: float) -> None:
        """Wait for the child and both threads until ``deadline`` (monotonic), SIGKILL the
        child if it is still there, then close the pipes."""
        try:
            self.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(0.5)
        for thread in (self.writer, self.reader):
            thread.join(max(0.0, deadline - time.monotonic()))
        if not (self.writer.is_alive() or self.reader.is_alive()):  # else a thread still uses them
            self.send.close()
            self.recv.close()


def _grow_pipe(fd: int) -> None:
    """Ask for a 1 MiB pipe buffer (Linux; the default 64 KiB splits a chunk's frame into
    several reads and wake-ups). Best effort: the limit is /proc/sys/fs/pipe-max-size."""
    with contextlib.suppress(OSError, AttributeError, ImportError):
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)


class _Slot:
    """A worker position: its current worker and when a dead one may be replaced."""

    __slots__ = ("backoff_s", "worker")

    def __init__(self, worker: _Worker) -> None:
        self.worker = worker
        self.backoff_s = 0.0


class PendingIngest:
    """The results of one :meth:`IngestPool.submit`, as they arrive."""

    def __init__(self, chunks: Sequence[_Chunk], local: Ingest) -> None:
        self._chunks = chunks
        self._local = local
        self._results: list[Result] | None = None

    def done(self) -> bool:
        """Every chunk answered (by its worker, or failed and to be recomputed in-process)."""
        return all(c.ready.is_set() for c in self._chunks)

    def result(self, timeout_s: float | None = None) -> list[Result]:
        """One result per submitted message, in submission order, equal to the in-process
        step's. Waits up to ``timeout_s`` (None: until answered; a dead worker's chunks are
        failed, never left waiting) and raises TimeoutError when some chunk is not answered
        by then. Chunks a worker could not answer are computed here, in the calling thread,
        so whatever the step raises in-process is raised here."""
        if self._results is not None:
            return self._results
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for chunk in self._chunks:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not chunk.ready.wait(wait):
                pending = sum(not c.ready.is_set() for c in self._chunks)
                raise TimeoutError(
                    f"{pending} of {len(self._chunks)} ingest chunks not answered in {timeout_s} s"
                )
        entities = self._local.topic_entities
        out: list[Result] = []
        for chunk in self._chunks:
            answers = chunk.answers
            if answers is None:
                out += self._local(chunk.messages)
                continue
            for m, a in zip(chunk.messages, answers, strict=True):
                if len(a) == 3:
                    out.append(Item(entities[m.position.topic], a[0], a[1], m, key=a[2]))
                elif a[0].__class__ is str:
                    out.append(DeadLetter(m, entities[m.position.topic], a[0], a[1]))
                else:
                    out.append(Unavailable(m, a[1], a[0]))
        self._results = out
        self._chunks = ()  # the messages now live in the results only
        return out


class IngestPool:
    """``workers`` ingest processes behind a non-blocking submit (see the module docstring).

    ``build`` must be a module-level (picklable) function: each worker calls it once with
    ``settings`` (without the API and Kafka credentials); the pool also keeps one step built
    in-process with it for the chunks a worker could not answer. ``clock`` (monotonic
    seconds) paces the replacement of workers that die before answering anything. Raises
    ValueError for fewer than one worker or message per chunk, OSError when a worker cannot
    be started (the ones already started are stopped)."""

    def __init__(
        self,
        settings: Settings,
        workers: int,
        *,
        chunk: int = DEFAULT_CHUNK,
        build: Callable[[Settings], Ingest] = build_ingest,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if workers < 1:
            raise ValueError(f"an IngestPool needs at least one worker, got {workers}")
        if chunk < 1:
            raise ValueError(f"chunk must be at least 1 message, got {chunk}")
        from consumer.service import secrets  # the composition root imports this module

        self._local = build(settings)
        self._chunk = chunk
        self._clock = clock
        # The step never calls the API nor Kafka: its copy goes without their credentials.
        worker_settings = dataclasses.replace(settings, api_secret="", kafka_properties={})
        self._init = pickle.dumps(
            (
                worker_settings,
                build,
                settings.log_format,
                settings.log_level,
                secrets(worker_settings),
            ),
            _PROTOCOL,
        )
        self._lock = threading.Lock()
        self._closed = False
        self._next = 0
        self._slots: list[_Slot] = []
        try:
            for i in range(workers):
                self._slots.append(_Slot(_Worker(i, self._init, clock)))
        except BaseException:
            self.close()
            raise

    @property
    def pids(self) -> list[int]:
        """The process ids of the live workers."""
        return [s.worker.pid for s in self._slots if s.worker.alive]

    def submit(self, messages: Sequence[Message]) -> PendingIngest:
        """Hand ``messages`` to the workers in chunks of at most ``chunk``; returns at once
        (pickling aside). Replaces a dead worker first when its slot is due."""
        size = self._chunk
        chunks = [_Chunk(messages[i : i + size]) for i in range(0, len(messages), size)]
        with self._lock:
            if self._closed:
                for chunk in chunks:
                    chunk.answer(None)
                return PendingIngest(chunks, self._local)
            self._replace_dead()
            for chunk in chunks:
                self._post(chunk)
        return PendingIngest(chunks, self._local)

    def _replace_dead(self) -> None:
        now = self._clock()
        for slot in self._slots:
            dead = slot.worker
            if dead.alive or now < dead.died_at + slot.backoff_s:
                continue
            # A worker that answered is replaced at once; one that died before answering
            # anything (cannot start?) waits longer each time.
            if dead.answered:
                slot.backoff_s = 0.0
            else:
                slot.backoff_s = min(max(2 * slot.backoff_s, RESPAWN_MIN_S), RESPAWN_MAX_S)
            dead.join(time.monotonic() + 0.1)
            slot.worker = _Worker(dead.slot, self._init, self._clock)

    def _post(self, chunk: _Chunk) -> None:
        frame = pickle.dumps(
            [
                (p.topic, p.partition, p.offset, m.value, m.error)
                for m in chunk.messages
                for p in (m.position,)
            ],
            _PROTOCOL,
        )
        slots = self._slots
        n = len(slots)
        start = self._next
        self._next = (start + 1) % n
        order = sorted(range(n), key=lambda i: (slots[i].worker.load, (i - start) % n))
        for i in order:
            if slots[i].worker.post(frame, chunk):
                return
        chunk.answer(None)  # no live worker: computed in-process by result()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop every worker within ``timeout_s`` (SIGTERM, then SIGKILL). Idempotent.
        Pending results stay available (computed in-process); later submits run
        in-process."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        deadline = time.monotonic() + timeout_s
        for slot in self._slots:
            slot.worker.stop()
        for slot in self._slots:
            slot.worker.join(deadline)

    def __enter__(self) -> IngestPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
