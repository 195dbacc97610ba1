"""What ingest workers cost the poll loop: the parent's CPU per message for a pool round trip
(submit + result) against the in-process step, by chunk size, on the bench data
(:func:`tests.bench_ingest.messages`: the pipeline benchmark's agent events, plain Avro).

Rows, all in CPU s per 100k events (``time.process_time``, fastest of ``--rounds``; the
parent's figure counts every thread of the process, the pool's writer and reader included):

- ``in-process step``: ``build_ingest(settings)(batch)``, what the loop pays without workers;
- ``pool, chunk C``: the parent's CPU for ``submit`` + ``result`` of every batch, with
  ``--window`` batches in flight (as the loop keeps a few), then the workers' own CPU
  (``/proc/<pid>/stat``) and the wall-clock rate (load-dependent, shown for orientation);
- the parent's share, per message and chunk of ``--chunk``: building and pickling the raw
  tuples, unpickling the answers, rebuilding the items around the original messages; and the
  worker's extra work beyond the step (unpickling, ``Message`` objects, pickling answers).

Run: ``.venv/bin/python tests/bench_workers.py [--events N] [--workers W] [--chunks 64,256]``.
"""

from __future__ import annotations

import argparse
import gc
import os
import pickle
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `tests` and `consumer` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from consumer.records import Item, Message
from consumer.service import build_ingest
from consumer.settings import Settings
from consumer.workers import IngestPool, PendingIngest, _answer_chunk
from tests.bench_ingest import PER_100K, chunks, cpu_per_100k, messages

SETTINGS = Settings(bootstrap_servers="localhost:9092", api_id="bench", api_secret="-")
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def child_cpu_s(pids: Sequence[int]) -> float:
    """User + system CPU seconds of ``pids`` so far."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total * _TICK_S


def stream(pool: IngestPool, batches: Sequence[Sequence[Message]], window: int) -> None:
    """Submit every batch, keeping at most ``window`` unanswered, and take every result."""
    pending: list[PendingIngest] = []
    for batch in batches:
        pending.append(pool.submit(batch))
        if len(pending) >= window:
            pending.pop(0).result()
    for p in pending:
        p.result()


def pool_row(
    batches: Sequence[Sequence[Message]], workers: int, chunk: int, window: int, rounds: int
) -> tuple[float, float, float]:
    """(parent CPU s/100k, workers' CPU s/100k, events/s wall) of the fastest round."""
    n = sum(len(b) for b in batches)
    with IngestPool(SETTINGS, workers, chunk=chunk) as pool:
        stream(pool, batches[:2], window)  # the workers are up and warm
        best = (float("inf"), 0.0, 0.0)
        for _ in range(rounds):
            pids = pool.pids
            child0, wall0, cpu0 = child_cpu_s(pids), time.monotonic(), time.process_time()
            stream(pool, batches, window)
            cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
            child = child_cpu_s(pids) - child0
            if cpu < best[0]:
                best = (cpu, child, wall)
    cpu, child, wall = best
    return cpu * PER_100K / n, child * PER_100K / n, n / wall


def per_message_us(step: Callable[[], object], n: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        step()
        best = min(best, time.process_time() - started)
    return best * 1e6 / n


def breakdown(msgs: Sequence[Message], chunk: int, rounds: int) -> list[tuple[str, float]]:
    """(part, µs per message) of the round trip's serialisation, outside the pool."""
    local = build_ingest(SETTINGS)
    parts = chunks(msgs, chunk)
    raws = [
        [(m.position.topic, m.position.partition, m.position.offset, m.value, m.error) for m in c]
        for c in parts
    ]
    frames = [pickle.dumps(r, pickle.HIGHEST_PROTOCOL) for r in raws]
    replies = [_answer_chunk(local, r) for r in raws]
    answer_frames = [pickle.dumps(r, pickle.HIGHEST_PROTOCOL) for r in replies]
    entities = local.topic_entities
    n = len(msgs)

    def out() -> None:
        for c in parts:
            pickle.dumps(
                [
                    (m.position.topic, m.position.partition, m.position.offset, m.value, m.error)
                    for m in c
                ],
                pickle.HIGHEST_PROTOCOL,
            )

    def back() -> None:
        for f in answer_frames:
            pickle.loads(f)

    def rebuild() -> None:
        for c, (answers, _) in zip(parts, replies, strict=True):
            assert answers is not None
            [
                Item(entities[m.position.topic], a[0], a[1], m, key=a[2])
                for m, a in zip(c, answers, strict=True)
            ]

    def worker_in() -> None:
        for f in frames:
            pickle.loads(f)

    def worker_step() -> None:
        for r in raws:
            _answer_chunk(local, r)

    def step() -> None:
        for c in parts:
            local(c)

    def worker_out() -> None:
        for r in replies:
            pickle.dumps(r, pickle.HIGHEST_PROTOCOL)

    out_bytes = sum(map(len, frames)) / n
    back_bytes = sum(map(len, answer_frames)) / n
    return [
        (f"parent: raw tuples + pickle ({out_bytes:.0f} B/msg)", per_message_us(out, n, rounds)),
        (f"parent: unpickle answers ({back_bytes:.0f} B/msg)", per_message_us(back, n, rounds)),
        ("parent: rebuild items", per_message_us(rebuild, n, rounds)),
        ("worker: unpickle raw tuples", per_message_us(worker_in, n, rounds)),
        (
            "worker: Message objects + answers",
            per_message_us(worker_step, n, rounds) - per_message_us(step, n, rounds),
        ),
        ("worker: pickle answers", per_message_us(worker_out, n, rounds)),
    ]


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1000, help="messages per submit")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--chunks", default="64,128,256,512,1000", help="chunk sizes to try")
    parser.add_argument("--chunk", type=int, default=256, help="chunk of the breakdown")
    parser.add_argument("--window", type=int, default=4, help="batches in flight")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    msgs = messages(args.events)
    batches = chunks(msgs, args.batch)
    gc.collect()
    gc.freeze()  # as bench_ingest: the prepared inputs out of the collector's sight
    local = build_ingest(SETTINGS)
    step = cpu_per_100k(batches, local, args.rounds)
    print(f"{args.events} agent events, batches of {args.batch}, {args.workers} worker(s)")
    print(f"{'':<40}{'parent CPU':>11}{'share':>8}{'workers CPU':>13}{'events/s':>10}")
    print(f"{'in-process step':<40}{step:>11.3f}{'100 %':>8}")
    for chunk in (int(c) for c in args.chunks.split(",")):
        parent, child, rate = pool_row(batches, args.workers, chunk, args.window, args.rounds)
        share = f"{100 * parent / step:.1f} %"
        print(f"{f'pool, chunk {chunk}':<40}{parent:>11.3f}{share:>8}{child:>13.3f}{rate:>10.0f}")
    print(f"\nper message, chunks of {args.chunk} (µs; the in-process step: {step * 10:.2f})")
    rows: list[tuple[str, Any]] = breakdown(msgs, args.chunk, args.rounds)
    for name, us in rows:
        print(f"  {name:<46}{us:>7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
