"""A bounded run of ``benchmarks/fuzz_inputs.py``: generated bad inputs to compile_layout,
the CLI and Runtime give one-line refusals (exit 2), never a traceback or a hang."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _fuzz():
    spec = importlib.util.spec_from_file_location(
        "fuzz_inputs", ROOT / "benchmarks" / "fuzz_inputs.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("seed", [12])
def test_fuzz_smoke(seed):
    rep = _fuzz().run(cases=160, seed=seed, budget_s=30.0)
    failures = [f for k in ("compile_layout", "cli", "runtime") for f in rep[k]["failures"]]
    assert not failures, failures[:5]
    assert sum(rep[k]["cases"] for k in ("compile_layout", "cli", "runtime")) == 160
