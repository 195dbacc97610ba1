"""CPU per event of the ingest step, stage by stage, in-process (no broker, no HTTP).

The data is the pipeline benchmark's (:func:`tests.bench_pipeline.record`: agent events of 22
fields, unicode text, ~562 bytes of plain Avro). Each stage calls what the service calls per
message (:class:`consumer.ingest.Ingest`, built as :mod:`consumer.service` builds it):

- ``decode``: ``PlainAvroDecoder.decode(value)``;
- ``map``: ``mapping.to_item(entity, record, topic=, partition=, offset=)``;
- ``validate``: ``ItemValidator.error(item)`` (the check inside ``encode``);
- ``serialise``: ``orjson.dumps(item)`` (the rest of ``encode``);
- ``encode``: ``ItemValidator.encode(item)``, validate + serialise as the service calls it;
- ``ingest step``: ``Ingest(messages)`` over the consumed ``Message`` objects, everything above
  plus the step's own work (the entity key, the ``Item``).

A last row runs the whole step again with the garbage collector off: the difference is what
its passes cost (they are triggered by the step's allocations).

Every stage runs over the same events in batches of ``--batch``, ``--rounds`` times; the
figure is the fastest round's CPU time (``time.process_time``) scaled to 100k events. The
prepared inputs are frozen out of the garbage collector's sight (``gc.freeze``): the service
holds one consumed batch at a time, so its collections do not walk millions of objects.

Run: ``.venv/bin/python tests/bench_ingest.py [--events N] [--rounds R]``. With
``--profile OUT`` it runs the ingest step in a loop under py-spy (``pip install py-spy``;
the ``dev`` extra has it) and writes OUT: ``.svg`` a flame graph, ``.json`` speedscope,
anything else py-spy's raw format, for which it also prints the samples per stage and the
lines with the most samples of their own.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

if __package__ in (None, ""):  # run as a script: make `tests` and `consumer` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from consumer.decoder import PlainAvroDecoder
from consumer.ingest import Ingest
from consumer.mapping import to_item
from consumer.records import Entity, Message, Position
from consumer.validation import validator_for
from tests.bench_pipeline import values

TOPIC = "asapp.metadata.agent"
PARTITIONS = 3
PER_100K = 100_000


def messages(n: int) -> list[Message]:
    """``n`` consumed agent events, round-robin over ``PARTITIONS`` partitions."""
    out = []
    for i, value in enumerate(values(n)):
        position = Position(TOPIC, i % PARTITIONS, i // PARTITIONS)
        out.append(Message(position, f"k{i}".encode(), value, 1_700_000_000_000 + i))
    return out


def chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def cpu_per_100k(
    batches: Sequence[Sequence[Any]], step: Callable[[Sequence[Any]], object], rounds: int
) -> float:
    """The fastest of ``rounds`` runs of ``step`` over every batch, in CPU s per 100k events."""
    n = sum(len(b) for b in batches)
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        for batch in batches:
            step(batch)
        best = min(best, time.process_time() - started)
    return best * PER_100K / n


def stages(msgs: Sequence[Message], batch: int, rounds: int) -> list[tuple[str, float]]:
    """(stage, CPU s per 100k events) for every stage of the module docstring."""
    entity = Entity.AGENT
    decoder = PlainAvroDecoder(entity)
    validator = validator_for(entity)
    ingest = Ingest(
        topic_entities={TOPIC: entity},
        decoders={entity: decoder},
        validators={entity: validator},
        mapper=to_item,
    )
    decode = decoder.decode
    error = validator.error
    encode = validator.encode
    dumps = orjson.dumps

    def mapped(ms: Sequence[Message]) -> list[dict[str, Any]]:
        return [
            to_item(
                entity,
                decode(m.value),
                topic=m.position.topic,
                partition=m.position.partition,
                offset=m.position.offset,
            )
            for m in ms
        ]

    def step_map(pairs: Sequence[tuple[Message, dict[str, Any]]]) -> object:
        return [
            to_item(
                entity,
                rec,
                topic=m.position.topic,
                partition=m.position.partition,
                offset=m.position.offset,
            )
            for m, rec in pairs
        ]

    raw = chunks([m.value for m in msgs], batch)
    pairs = chunks([(m, decode(m.value)) for m in msgs], batch)
    items = chunks([it for b in chunks(msgs, batch) for it in mapped(b)], batch)
    results = ingest(msgs)
    bad = [r for r in results if not hasattr(r, "body")]
    if bad:
        raise SystemExit(f"the benchmark data must be valid, got {bad[0]!r}")
    del results
    # The inputs (millions of objects) must not make every collection slower than it is in
    # the service, which holds one consumed batch: move them out of the collector's sight.
    gc.collect()
    gc.freeze()
    steps: list[tuple[str, Sequence[Sequence[Any]], Callable[[Sequence[Any]], object]]] = [
        ("decode", raw, lambda b: [decode(v) for v in b]),
        ("map", pairs, step_map),
        ("validate", items, lambda b: [error(it) for it in b]),
        ("serialise", items, lambda b: [dumps(it) for it in b]),
        ("encode (validate + serialise)", items, lambda b: [encode(it) for it in b]),
        ("ingest step (all of it)", chunks(msgs, batch), ingest),
    ]
    rows = [(name, cpu_per_100k(data, step, rounds)) for name, data, step in steps]
    gc.disable()  # what the collector's passes cost the step (a reference, not a stage)
    try:
        rows.append(
            ("  the step, collector off", cpu_per_100k(chunks(msgs, batch), ingest, rounds))
        )
    finally:
        gc.enable()
    return rows


def print_table(rows: Sequence[tuple[str, float]], n: int) -> None:
    print(f"{n} agent events; CPU s per 100k events (fastest round)")
    print(f"{'stage':<32}{'CPU s/100k':>12}{'µs/event':>10}")
    for name, cpu in rows:
        print(f"{name:<32}{cpu:>12.3f}{cpu * 1e6 / PER_100K:>10.2f}")


def loop(msgs: Sequence[Message], batch: int, seconds: float) -> None:
    """Run the ingest step over ``msgs`` again and again for ``seconds`` (to be profiled)."""
    entity = Entity.AGENT
    ingest = Ingest(
        topic_entities={TOPIC: entity},
        decoders={entity: PlainAvroDecoder(entity)},
        validators={entity: validator_for(entity)},
        mapper=to_item,
    )
    batches = chunks(msgs, batch)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for b in batches:
            ingest(b)


#: (frame text, stage): the innermost frame of a sample that matches names its stage.
_STAGES = (
    ("decode (consumer/decoder.py", "decode"),
    ("to_item (consumer/mapping.py", "map"),
    ("accept (<string>", "validate"),  # the fast accept, called by encode itself
    ("error (consumer/validation.py", "validate"),
    ("encode (consumer/validation.py", "serialise (orjson, in encode)"),
    ("consumer/ingest.py", "ingest step (own lines)"),
)


def _stage(frames: Sequence[str]) -> str:
    """The stage of one sample: its innermost frame that names one."""
    for frame in reversed(frames):
        if frame.startswith("_A") and "(<string>" in frame:  # the fast accept's array loops
            return "validate"
        for key, stage in _STAGES:
            if key in frame:
                return stage
    return "bench loop"


def breakdown(path: Path) -> tuple[Counter[str], Counter[str], int]:
    """(samples per stage, samples per innermost frame, samples in the loop) of a raw file."""
    per_stage: Counter[str] = Counter()
    per_leaf: Counter[str] = Counter()
    total = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not any(f.startswith("loop (") for f in frames):
            continue  # start-up: imports, building the data
        n = int(count)
        total += n
        per_stage[_stage(frames)] += n
        per_leaf[frames[-1]] += n
    return per_stage, per_leaf, total


def profile(out: Path, args: argparse.Namespace) -> int:
    """Run :func:`loop` in a child process under py-spy, writing ``out``."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not os.path.exists(spy):
        print("py-spy not found: pip install py-spy (it is in the dev extra)", file=sys.stderr)
        return 2
    fmt = {".svg": "flamegraph", ".json": "speedscope"}.get(out.suffix, "raw")
    command = [spy, "record", "--rate", str(args.rate), "--format", fmt, "--output", str(out)]
    command += ["--", sys.executable, __file__, "--loop", str(args.seconds)]
    command += ["--events", str(args.events), "--batch", str(args.batch)]
    done = subprocess.run(command, check=False)
    if done.returncode != 0:  # py-spy sometimes fails to reap a child that has exited
        print(f"py-spy exited with {done.returncode}", file=sys.stderr)
        if not out.exists():
            return 1
    if fmt != "raw":
        return 0
    per_stage, per_leaf, total = breakdown(out)
    print(f"\n{total} samples in the ingest loop, by stage:")
    for stage, n in per_stage.most_common():
        print(f"  {100 * n / total:5.1f} %  {stage}")
    print("\nlines with the most samples of their own:")
    for leaf, n in per_leaf.most_common(args.top):
        print(f"  {100 * n / total:5.1f} %  {leaf}")
    return 0


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", type=Path, help="py-spy output (.svg, .json, else raw)")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="profiled loop duration")
    parser.add_argument("--top", type=int, default=25, help="lines shown in the breakdown")
    parser.add_argument("--loop", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.profile is not None:
        return profile(args.profile, args)
    msgs = messages(args.events)
    if args.loop is not None:
        loop(msgs, args.batch, args.loop)
        return 0
    print_table(stages(msgs, args.batch, args.rounds), len(msgs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
