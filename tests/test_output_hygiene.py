"""What a user reads: no third-party progress bars or warnings; the CLI decides what is shown."""

from __future__ import annotations

import subprocess
import sys

QUIET_LOAD = """
from sparse_attn.cli import quiet_third_party
quiet_third_party()
from sparse_attn.runtime.text import default_minilm_dir
from transformers import BertModel
BertModel.from_pretrained(str(default_minilm_dir()), attn_implementation="eager")
"""


def test_demo_hides_transformers_progress_bars():
    p = subprocess.run([sys.executable, "-c", QUIET_LOAD], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "Loading weights" not in p.stderr and "it/s" not in p.stderr, p.stderr[-2000:]


def test_cli_shows_our_warnings_and_hides_third_party_ones(capsys, monkeypatch):
    import logging
    import warnings

    import sparse_attn.cli.layout_cmd as layout_cmd
    from sparse_attn.cli import main
    from sparse_attn.errors import SparseAttnWarning

    real = layout_cmd._print_summary

    def noisy(st):
        logging.getLogger("onnxscript.optimizer._constant_folding").warning("Evaluation failed")
        logging.getLogger("sparse_attn.test").warning("ours")
        warnings.warn("third party advice", FutureWarning, stacklevel=1)
        warnings.warn("our advice", SparseAttnWarning, stacklevel=1)
        real(st)

    monkeypatch.setattr(layout_cmd, "_print_summary", noisy)
    assert main(["layout", "band(w=1)", "--seq-len", "8", "--block-size", "4"]) == 0
    err = capsys.readouterr().err
    assert "Evaluation failed" not in err and "third party" not in err, err
    assert "sparse-attn: WARNING: ours" in err and "sparse-attn: warning: our advice" in err
    # the handler is removed after main returns
    assert not logging.getLogger("sparse_attn").handlers
