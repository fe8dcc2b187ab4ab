"""``sparse-attn export`` command line: success, family options, exit codes (SPEC section 3)."""

from __future__ import annotations

import subprocess
import sys

import click
import numpy as np
import onnx
import pytest

from sparse_attn.cli import main
from sparse_attn.cli.export_cmd import parse_family_options
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
        (["--num-hads", "2"], "not known for --model attention"),
        (["--head-dim", "eight"], "expects a int value"),
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


def test_family_option_parser():
    opts = attention.CLI_OPTIONS
    parsed = parse_family_options(
        ["--num-heads=3", "--head-dim", "16", "--no-key-padding-mask", "--scale", "0.25"],
        opts,
        "attention",
    )
    assert parsed == {"num_heads": 3, "head_dim": 16, "key_padding_mask": False, "scale": 0.25}
    assert parse_family_options(["--key-padding-mask"], opts, "attention") == {
        "key_padding_mask": True
    }
    with pytest.raises(click.UsageError, match="needs a value"):
        parse_family_options(["--num-heads"], opts, "attention")


def test_export_help_lists_families_via_console_entry():
    proc = subprocess.run(
        [sys.executable, "-m", "sparse_attn.cli", "export", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--max-seq-len" in proc.stdout and "attention: --num-heads INT" in proc.stdout
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
