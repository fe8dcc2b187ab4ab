"""``sparse-attn layout`` through a real subprocess: output, files and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "sparse_attn.cli", "layout", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def _band_global_causal(s, w, n):
    i = np.arange(s)[:, None]
    j = np.arange(s)[None, :]
    return ((np.abs(i - j) <= w) | (i < n) | (j < n)) & (j <= i)


def test_json_save_mask_and_plot(tmp_path):
    mask_path, plot_path = tmp_path / "m.npy", tmp_path / "p.png"
    p = run(
        "band(w=9) | global(n=3)",
        "--seq-len",
        "75",
        "--block-size",
        "16",
        "--num-heads",
        "2",
        "--causal",
        "--json",
        "--save-mask",
        str(mask_path),
        "--plot",
        str(plot_path),
    )
    assert p.returncode == 0, p.stderr
    st = json.loads(p.stdout)
    expected = _band_global_causal(75, 9, 3)
    for k in ("seq_len", "block_size", "num_heads", "density_tokens", "density_blocks"):
        assert k in st
    assert (st["seq_len"], st["block_size"], st["num_heads"]) == (75, 16, 2)
    assert st["spec"] == "band(w=9) | global(n=3) | causal"
    assert st["density_tokens"] == pytest.approx(expected.mean(), abs=1e-12)
    assert st["full_blocks"] + st["partial_blocks"] == round(st["density_blocks"] * 2 * 5 * 5)
    mask = np.load(mask_path, allow_pickle=False)
    assert mask.dtype == bool and mask.shape == (2, 75, 75)
    bad = np.argwhere(mask != expected[None])
    assert bad.size == 0, f"first wrong [h,i,j]={bad[0].tolist()}, got {mask[tuple(bad[0])]}"
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_preset_summary_prints_expansion():
    p = run("sliding_window(w=4096)", "--seq-len", "300", "--block-size", "32")
    assert p.returncode == 0, p.stderr
    assert "band(w=4095) | causal" in p.stdout and "density_tokens" in p.stdout


def test_help_lists_atoms_and_presets():
    p = run("--help")
    assert p.returncode == 0
    for name in (
        "global(",
        "band(",
        "dilated(",
        "random(",
        "block_local(",
        "block_band(",
        "vertical_stride(",
        "bigbird",
        "longformer",
        "sparse_transformer_strided",
        "sparse_transformer_fixed",
        "sliding_window",
        "local_vertical_stride",
    ):
        assert name in p.stdout, name


@pytest.mark.parametrize(
    "args,needle",
    [
        (["bnd(w=3)", "--seq-len", "64", "--block-size", "16"], "unknown atom 'bnd'"),
        (["band(w=-2)", "--seq-len", "64", "--block-size", "16"], "sign"),
        (["band(w=3", "--seq-len", "64", "--block-size", "16"], "unbalanced"),
        (["band(w=3))", "--seq-len", "64", "--block-size", "16"], "unbalanced"),
        (["band(w=3) x", "--seq-len", "64", "--block-size", "16"], "'x'"),
        (["band(w=3)", "--seq-len", "0", "--block-size", "16"], "--seq-len"),
        (["band(w=3)", "--seq-len", "64", "--block-size", "0"], "--block-size"),
        (["band(w=3)", "--seq-len", "64", "--block-size", "16", "--num-heads", "0"], "heads"),
        (["band(w=3)", "--seq-len", "64"], "block-size"),
        (["band(w=3)", "--seq-len", "x", "--block-size", "16"], "seq-len"),
        (["band(w=3)", "--seq-len", "200000", "--block-size", "64", "--save-mask", "m.npy"], "GiB"),
    ],
)
def test_bad_input_exit_2_one_line(args, needle, tmp_path):
    p = run(*args, cwd=tmp_path)
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert needle in lines[0], lines[0]
    assert not (tmp_path / "m.npy").exists()
