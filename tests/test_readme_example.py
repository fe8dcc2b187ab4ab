"""The Python API example of the docs runs as written.

Takes the first fenced ``python`` block that uses ``sparse_attn.Runtime`` from README.md when
README has one, else from docs/runtime.md (the lead merges the docs into README), and runs it
in a fresh interpreter in a temporary directory.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"```python\n(.*?)```", re.S)


def example_block() -> tuple[Path, str]:
    """``(source file, code)`` of the Runtime example (README.md first, then docs/runtime.md)."""
    for doc in (ROOT / "README.md", ROOT / "docs" / "runtime.md"):
        if doc.exists():
            for block in FENCE.findall(doc.read_text(encoding="utf-8")):
                if "sparse_attn.Runtime(" in block:
                    return doc, block
    raise AssertionError(
        "no ```python block using sparse_attn.Runtime in README.md or docs/runtime.md"
    )


def test_example_is_found():
    doc, code = example_block()
    assert "rt.run(" in code and "embed(" in code, doc
    compile(code, str(doc), "exec")


def test_example_runs_as_written(tmp_path):
    minilm = pytest.importorskip("sparse_attn.export.minilm")
    pytest.importorskip("sparse_attn.export.exporter", reason="export pipeline not landed")
    if not hasattr(minilm, "export_onnx"):
        pytest.skip("sparse_attn.export.minilm.export_onnx has not landed yet")
    doc, code = example_block()
    script = tmp_path / "example.py"
    script.write_text(code)
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "2"},
    )
    assert proc.returncode == 0, (
        f"{doc} example failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    assert "refused:" in proc.stdout and "max |ORT - torch| =" in proc.stdout


def test_readme_other_python_blocks_run(tmp_path):
    """Every other ```python block of README.md (e.g. the kernel example) runs as written."""
    blocks = [
        b
        for b in FENCE.findall((ROOT / "README.md").read_text(encoding="utf-8"))
        if "sparse_attn.Runtime(" not in b
    ]
    assert blocks, "README.md has no python example besides the Runtime one"
    for i, code in enumerate(blocks):
        script = tmp_path / f"readme_{i}.py"
        script.write_text(code)
        proc = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, f"README block {i} failed:\n{proc.stderr[-3000:]}"
