"""Benchmark (``-m slow``): the validator sustains >= 100k items/s of a realistic mix.

The measurement lives in ``tests/bench_validation.py`` so it can also run as a script.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

_SCRIPT = Path(__file__).resolve().parents[1] / "bench_validation.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_validation", _SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_validation_throughput() -> None:
    bench = _bench()
    rate: float = bench.measure(100_000)
    print(f"\nvalidation: {rate:,.0f} items/s (CPU time, best of 3 x 100,000 items)")
    assert rate >= bench.REQUIRED_ITEMS_PER_S
