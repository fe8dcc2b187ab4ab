"""The CLI's error boundary, bounded options and safe output files, through real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def cli(*args, cwd=None, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "sparse_attn.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env=ENV,
    )


def one_line(p, code):
    assert p.returncode == code, (p.returncode, p.stdout[-500:], p.stderr[-2000:])
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    return lines[0]


LAYOUT = ["layout", "band(w=3)"]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["layout", "band(w=+3)", "--seq-len", "64", "--block-size", "16"], "sign"),
        (["layout", "band(w=00003)", "--seq-len", "64", "--block-size", "16"], "leading zeros"),
        (["layout", "band(w=\uff13)", "--seq-len", "64", "--block-size", "16"], "ASCII"),
        (["layout", "band(w=" + "9" * 4400 + ")", "--seq-len", "64", "--block-size", "16"], "long"),
        ([*LAYOUT, "--seq-len", "+64", "--block-size", "16"], "--seq-len"),
        ([*LAYOUT, "--seq-len", "0064", "--block-size", "16"], "leading zeros"),
        ([*LAYOUT, "--seq-len", "9" * 5000, "--block-size", "16"], "too large"),
        ([*LAYOUT, "--seq-len", "64", "--block-size", "1000000000"], "--block-size"),
        ([*LAYOUT, "--seq-len", "64", "--block-size", "16", "--num-heads", str(10**12)], "heads"),
        ([*LAYOUT, "--seq-len", "64", "--block-size", "16", "--num-heads", "1000000"], "heads"),
        ([*LAYOUT, "--seq-len", "100000000", "--block-size", "100000"], "--seq-len"),
        ([*LAYOUT, "--seq-len", "1048576", "--block-size", "256", "--plot", "p.png"], "blocks"),
        (["layout", "[" * 60000, "--seq-len", "64", "--block-size", "16"], "long"),
        ([*LAYOUT, "--seq-len", "64", "--block-size", "16", "--plot", "model.onnx"], ".png"),
        ([*LAYOUT, "--seq-len", "64", "--block-size", "16", "--save-mask", "m.txt"], ".npy"),
        (
            ["layout", "random(r=3, seed=1)", "--seq-len", "65536", "--block-size", "1"],
            "blocks per side",
        ),
        (
            [
                "export",
                "--model",
                "attention",
                "--pattern",
                "band(w=4)",
                "--num-heads",
                "2",
                "--head-dim",
                "1000000000",
                "--max-seq-len",
                "64",
                "--block-size",
                "16",
                "-o",
                "a.onnx",
            ],
            "--head-dim",
        ),
        (
            [
                "export",
                "--model",
                "attention",
                "--pattern",
                "band(w=4)",
                "--num-heads",
                "1000000000",
                "--head-dim",
                "8",
                "--max-seq-len",
                "64",
                "--block-size",
                "16",
                "-o",
                "a.onnx",
            ],
            "--num-heads",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2(args, needle, tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"not a model")
    t = time.monotonic()
    line = one_line(cli(*args, cwd=tmp_path), 2)
    assert needle in line, line
    assert len(line) < 800
    assert time.monotonic() - t < 60
    assert (tmp_path / "model.onnx").read_bytes() == b"not a model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_engine_on_a_file_that_is_not_a_model(tmp_path):
    for content in (b"hello, world\n", bytes(range(256)) * 8, b""):
        src = tmp_path / "x.onnx"
        src.write_bytes(content)
        line = one_line(cli("engine", str(src), "-o", str(tmp_path / "y.onnx")), 2)
        assert "x.onnx" in line
        assert not (tmp_path / "y.onnx").exists()


def _wait_for_tmp(folder, proc, timeout=60):
    t = time.monotonic()
    while time.monotonic() - t < timeout and proc.poll() is None:
        if any(".tmp" in p.name for p in folder.iterdir()):
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_interrupted_save_mask_leaves_nothing(tmp_path, sig, code):
    out = tmp_path / "m.npy"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sparse_attn.cli",
            "layout",
            "dense",
            "--seq-len",
            "16384",
            "--block-size",
            "256",
            "--num-heads",
            "3",
            "--save-mask",
            str(out),
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    if not _wait_for_tmp(tmp_path, proc):
        proc.kill()
        pytest.skip("the writer finished before it could be interrupted")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, (proc.returncode, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


def test_save_mask_writes_atomically_and_completely(tmp_path):
    out = tmp_path / "m.npy"
    out.write_bytes(b"old")
    p = cli(*LAYOUT, "--seq-len", "40", "--block-size", "16", "--save-mask", str(out))
    assert p.returncode == 0, p.stderr
    m = np.load(out)
    assert m.shape == (1, 40, 40) and m.dtype == bool
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m.npy"]


def test_sigterm_during_export_leaves_no_temporary_file(tmp_path):
    out = tmp_path / "a.onnx"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sparse_attn.cli", "export", "--model", "attention",
         "--pattern", "band(w=8)", "--num-heads", "2", "--head-dim", "16",
         "--max-seq-len", "256", "--block-size", "16", "-o", str(out)],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
    )  # fmt: skip
    if not _wait_for_tmp(tmp_path, proc, timeout=300):
        proc.kill()
        proc.communicate()
        pytest.skip("the export finished before it could be interrupted")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, (proc.returncode, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    assert list(tmp_path.iterdir()) == []


def test_a_termination_signal_decides_the_exit_code_even_when_its_exception_was_replaced():
    # A SIGTERM that lands inside a C extension's import surfaces as an ImportError, which the
    # library reports as a missing package; the CLI must still say "terminated" (143).
    from sparse_attn.cli import exit_code_for
    from sparse_attn.errors import UnsupportedEnvironmentError
    from sparse_attn.fileio import Terminated

    exc = UnsupportedEnvironmentError("onnxruntime is not installed")
    assert exit_code_for(exc)[0] == 1
    Terminated.received = 15
    try:
        code, message = exit_code_for(exc)
    finally:
        Terminated.received = None
    assert (code, message) == (143, "terminated by signal 15")


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit(143)])
def test_interrupt_while_the_temporary_file_is_prepared_leaves_nothing(tmp_path, monkeypatch, exc):
    """A signal that lands right after the temporary file exists (here: during its chmod)
    still removes it: signals are held until the cleanup is armed."""
    from sparse_attn import fileio

    def interrupted(*args, **kwargs):
        raise exc

    monkeypatch.setattr(fileio.os, "chmod", interrupted)
    with pytest.raises(type(exc) if isinstance(exc, BaseException) else exc):
        with fileio.atomic_output(tmp_path / "m.npy") as tmp:
            tmp.write_bytes(b"never reached")
    assert list(tmp_path.iterdir()) == []
