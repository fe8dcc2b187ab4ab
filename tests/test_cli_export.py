"""``sparse-attn export`` command line: success, family options, exit codes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest

from sparse_attn.cli import main
from sparse_attn.export import attention

pytest.importorskip("onnxruntime")

BASE = [
    "export",
    "--model",
    "attention",
    "--pattern",
    "band(w=8) | global(n=2)",
    "--num-heads",
    "2",
    "--head-dim",
    "8",
    "--max-seq-len",
    "48",
    "--block-size",
    "16",
]


def test_export_attention_cli_writes_checked_model(tmp_path, capsys):
    out = tmp_path / "deep" / "dir" / "m.onnx"
    code = main([*BASE, "--dtype", "float16", "--no-key-padding-mask", "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "export check: onnxruntime CPU vs torch" in captured.out and "PASS" in captured.out
    assert f"wrote {out}" in captured.out
    model = onnx.load(str(out))
    assert [i.name for i in model.graph.input] == ["query", "key", "value"]
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["sparse_attn.dtype"] == "float16" and meta["sparse_attn.model"] == "attention"


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--num-hads", "2"], "No such option '--num-hads'"),
        (["--seed", "2"], "not known for --model attention"),
        (["--head-dim", "eight"], "'eight'"),
        (["--head-dim", "+8"], "sign"),
        (["--head-dim", "1000000000"], "--head-dim"),
        (["--num-heads", "1000000000"], "--num-heads"),
        (["--scale", "nan"], "finite"),
        (["--dtype", "float64"], "float64"),
        (["--pattern", "band(w=8"], "never closed"),
        (["--block-size", "4"], "block_size must be in"),
    ],
)
def test_export_cli_bad_input_exits_2(tmp_path, capsys, extra, message):
    out = tmp_path / "x.onnx"
    argv = [*BASE, "-o", str(out)]
    # later options override earlier ones in click; family options are parsed in order
    code = main(argv + extra)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("sparse-attn: error:") and message in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_export_cli_requires_heads_for_attention(tmp_path, capsys):
    code = main(
        [
            "export",
            "--pattern",
            "band(w=4)",
            "--max-seq-len",
            "32",
            "--block-size",
            "16",
            "-o",
            str(tmp_path / "y.onnx"),
        ]
    )
    assert code == 2
    assert "--num-heads" in capsys.readouterr().err


def test_family_options_are_click_options(tmp_path, capsys, monkeypatch):
    seen = {}

    def fake_export(output, **kwargs):
        seen.update(kwargs)
        return output

    monkeypatch.setattr(attention, "export_onnx", fake_export)
    out = tmp_path / "f.onnx"
    argv = [*BASE, "--num-heads=3", "--no-key-padding-mask", "--scale", "0.25", "-o", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    assert seen["num_heads"] == 3 and seen["head_dim"] == 8 and seen["scale"] == 0.25
    assert seen["key_padding_mask"] is False and "value_dim" not in seen  # family default
    assert main([*BASE, "-o", str(out), "--num-heads"]) == 2
    assert "requires an argument" in capsys.readouterr().err


def test_export_help_lists_families_via_console_entry():
    proc = subprocess.run(
        [sys.executable, "-m", "sparse_attn.cli", "export", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--max-seq-len" in proc.stdout and "--num-heads INT" in proc.stdout
    assert np.all([f in proc.stdout for f in ("minilm", "bigbird", "longformer", "mistral")])


def test_static_seq_len_export_says_so(tmp_path, capsys):
    """A pattern that needs the end of the sequence exports with a static S and a notice."""
    out = tmp_path / "bb.onnx"
    args = ["export", "--model", "attention", "--pattern", "global(n=1, last=16) | band(w=4)"]
    args += ["--num-heads", "1", "--head-dim", "8", "--max-seq-len", "32", "--block-size", "16"]
    code = main([*args, "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "static sequence length of 32 tokens" in captured.err
    dims = [d.dim_value for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim]
    assert dims[2] == 32
