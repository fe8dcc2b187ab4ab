"""The documentation holds: every ```python block of README.md and docs/*.md runs as written,
the repository refers to nothing outside itself, and docs/spec.md lists the real limits."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: First line of a block that cannot run in a test, with the reason (reported as a skip).
SKIP = re.compile(r"# doc-test: skip \((.+)\)\n")


def _blocks() -> list:
    seen: dict[str, str] = {}
    params = []
    for doc in DOCS:
        for i, code in enumerate(FENCE.findall(doc.read_text(encoding="utf-8"))):
            name = f"{doc.relative_to(ROOT)}#{i}"
            if code in seen:  # the same example in two places runs once
                continue
            seen[code] = name
            # exporting a real model takes a minute under load: `make test-slow` runs those
            slow = "minilm.export_onnx(" in code
            marks = [pytest.mark.slow] if slow else []
            skip = SKIP.match(code)  # a block that needs a server or a checkpoint says so
            if skip:
                marks.append(pytest.mark.skip(reason=f"{name}: {skip.group(1)}"))
            params.append(pytest.param(doc, code, id=name, marks=marks))
    return params


@pytest.mark.parametrize("doc,code", _blocks())
def test_python_block_runs(doc, code, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    p = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert p.returncode == 0, (
        f"{doc.name}: block failed:\n{code}\n--- stderr ---\n{p.stderr[-3000:]}"
    )


OUTSIDE = re.compile(
    r"\.\./shared|SPEC\.md|SPEC sections? \d|\(SPEC[):]|\bthe SPEC\b|SPEC's|"
    r"\bSPEC (?:table|formulas|requires|fixes|pattern)|[Ii]ssue \d+|issue #\d+"
)


def test_nothing_refers_outside_the_repository():
    files = [ROOT / "README.md", ROOT / "Makefile", ROOT / "pyproject.toml"]
    for folder in ("sparse_attn", "docs", "benchmarks", "tests", "csrc"):
        for ext in ("*.py", "*.md", "*.cpp", "*.h", "*.cu", "*.toml", "*.txt"):
            files += (ROOT / folder).rglob(ext)
    bad = []
    for f in files:
        if f.name == "test_docs.py" or not f.is_file():
            continue
        for n, line in enumerate(f.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                bad.append(f"{f.relative_to(ROOT)}:{n}: {line.strip()[:120]}")
    assert not bad, "references outside the repository:\n" + "\n".join(bad[:50])


def test_spec_lists_the_limits_of_the_code():
    from sparse_attn import limits

    text = (ROOT / "docs" / "spec.md").read_text(encoding="utf-8")
    for lim in limits.LIMITS.values():
        row = re.search(rf"^\| {re.escape(lim.name)} \| ([0-9,]+) \|", text, re.M)
        assert row, f"docs/spec.md has no row for limit {lim.name!r}"
        assert int(row.group(1).replace(",", "")) == lim.value, lim.name


def test_readme_and_help_point_at_the_contract():
    assert "docs/spec.md" in (ROOT / "README.md").read_text(encoding="utf-8")
    from click.testing import CliRunner

    from sparse_attn.cli import cli

    for cmd in ("layout", "export", "engine", "run", "check"):
        out = CliRunner().invoke(cli, [cmd, "--help"]).output
        assert "docs/spec.md" in out, cmd
