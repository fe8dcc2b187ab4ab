"""Model-level suite: whole encoders in ONNX Runtime, our sparse export against a dense export.

Models:

* ``minilm``: all-MiniLM-L6-v2 (6 layers, 12 heads, hidden 384) at its maximum length
  (512). *Sparse*: ``sparse_attn.export`` family ``minilm`` with its default pattern.
  *Dense*: the same pretrained Hugging Face ``BertModel`` (eager attention) exported by
  ``torch.onnx.export(dynamo=True)`` with no sparse op (what a user exports today).
* ``long_encoder``: a randomly initialised Longformer-size encoder (hidden 768, 12 heads,
  FFN 3072, window 512, ``layers`` layers) at S = 4096. *Sparse*: family ``longformer``
  (Hugging Face ``LongformerModel`` with its attention on our op). *Dense*: a
  ``RobertaModel`` of the same sizes (Longformer is RoBERTa with local+global attention)
  exported the same way as MiniLM's dense model.

Every model is fed ``input_ids`` (random ids, seeded) and an all-ones ``attention_mask``,
``[1, S]`` int64. Dense exports are static in S (specialised); ours are dynamic in S.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sparse_attn.bench.harness import NotAvailable, PeakRSS, time_callable
from sparse_attn.bench.impls import _export_code_hash, _ort_session, export_family

LONG_CONFIG = {
    "vocab_size": 1024,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "attention_window": 512,
    "max_position_embeddings": 4098,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "type_vocab_size": 1,
}


def _feeds(seq_len: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, size=(1, seq_len), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones((1, seq_len), np.int64)}


def _export_dense_hf(hf_model, path: Path, seq_len: int) -> Path:
    """Export a Hugging Face encoder (``last_hidden_state`` only) with plain ONNX attention."""
    import torch

    class _Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    ids = torch.ones((1, seq_len), dtype=torch.int64) * 5
    mask = torch.ones((1, seq_len), dtype=torch.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode(False), torch.no_grad():
        prog = torch.onnx.export(
            _Wrap(hf_model).eval(),
            (ids, mask),
            dynamo=True,
            input_names=["input_ids", "attention_mask"],
            output_names=["last_hidden_state"],
            verbose=False,
        )
    prog.save(str(path))
    return path


def _minilm_sparse(path: Path, seq_len: int, block_size: int) -> Path:
    fam = export_family("minilm")
    fam.export_onnx(
        path,
        pattern=fam.DEFAULT_PATTERN,
        block_size=block_size,
        max_seq_len=seq_len,
        dtype="float32",
        causal=False,
    )
    return path


def _minilm_dense(path: Path, seq_len: int, block_size: int) -> Path:
    fam = export_family("minilm")
    return _export_dense_hf(
        fam.load_hf_model("float32", attn_implementation="eager"), path, seq_len
    )


def _long_config(layers: int) -> dict:
    return dict(LONG_CONFIG, num_hidden_layers=layers)


def _long_sparse(layers: int):
    def build(path: Path, seq_len: int, block_size: int) -> Path:
        fam = export_family("longformer")
        fam.export_onnx(
            path,
            pattern=None,
            block_size=block_size,
            max_seq_len=seq_len,
            dtype="float32",
            causal=False,
            config=_long_config(layers),
        )
        return path

    return build


def _long_dense(layers: int):
    def build(path: Path, seq_len: int, block_size: int) -> Path:
        import torch
        from transformers import RobertaConfig, RobertaModel

        cfg = {k: v for k, v in _long_config(layers).items() if k != "attention_window"}
        rc = RobertaConfig(**cfg)
        rc._attn_implementation = "eager"
        torch.manual_seed(0)
        model = RobertaModel(rc, add_pooling_layer=False).eval()
        return _export_dense_hf(model, path, seq_len)

    return build


def run_model_suite(
    *,
    workdir: Path,
    minilm_seq_len: int = 512,
    long_seq_len: int = 4096,
    long_layers: int = 2,
    models: tuple[str, ...] = ("minilm", "long_encoder"),
    threads: int = 2,
    warmup: int = 1,
    min_repeats: int = 3,
    max_repeats: int = 10,
    budget_s: float = 3.0,
    log: Callable[[str], None] = print,
) -> dict:
    """Export (once, cached in ``workdir``) and time each model variant in ONNX Runtime.

    Returns ``{"cells": [...], "config": {...}}``; a variant that cannot be exported or run
    is a cell with ``status="n/a"`` and the reason.
    """
    variants: list[tuple[str, str, int, int, int, Callable]] = []
    if "minilm" in models:
        variants += [
            ("minilm", "sparse (ours)", minilm_seq_len, 32, 30522, _minilm_sparse),
            ("minilm", "dense (HF export)", minilm_seq_len, 32, 30522, _minilm_dense),
        ]
    if "long_encoder" in models:
        variants += [
            ("long_encoder", "sparse (ours)", long_seq_len, 64, 1024, _long_sparse(long_layers)),
            ("long_encoder", "dense (HF export)", long_seq_len, 64, 1024, _long_dense(long_layers)),
        ]
    cells: list[dict] = []
    for model, variant, s, bs, vocab, build in variants:
        tag = "sparse" if "sparse" in variant else "dense"
        layers = f"_L{long_layers}" if model == "long_encoder" else ""
        family = "minilm" if model == "minilm" else "longformer"
        code = _export_code_hash(family) if tag == "sparse" else "hf"
        path = workdir / f"{model}{layers}_{tag}_S{s}_{code}.onnx"
        cell = {"suite": "model", "model": model, "variant": variant, "seq_len": s, "status": "n/a"}
        if model == "long_encoder":
            cell["layers"] = long_layers
        try:
            t0 = time.perf_counter()
            cell["export_cached"] = path.exists()
            if not path.exists():
                tmp = path.with_name(path.stem + f".tmp{os.getpid()}.onnx")
                try:
                    build(tmp, s, bs)
                    os.replace(tmp, path)  # an interrupted export never leaves a cached file
                finally:
                    tmp.unlink(missing_ok=True)
                cell["export_s"] = time.perf_counter() - t0
            sess = _ort_session(path, threads)
            feeds = _feeds(s, vocab)
            names = {i.name for i in sess.get_inputs()}
            feeds = {k: v for k, v in feeds.items() if k in names}
            out0 = sess.get_outputs()[0].name
            with PeakRSS() as peak:
                timing, _ = time_callable(
                    lambda sess=sess, feeds=feeds, out0=out0: sess.run([out0], feeds),
                    warmup=warmup,
                    min_repeats=min_repeats,
                    max_repeats=max_repeats,
                    budget_s=budget_s,
                )
            cell.update(status="ok", reason=None, peak_mem_mib=peak.peak_mib, **timing.as_dict())
            del sess
        except NotAvailable as exc:
            cell["reason"] = str(exc)
        except Exception as exc:  # noqa: BLE001 - one failing model must not stop the run
            cell["reason"] = f"error: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        cells.append(cell)
        if cell["status"] == "ok":
            log(
                f"[model] {model:<12} {variant:<18} S={s}: {cell['median_ms']:.1f} ms "
                f"[{cell['min_ms']:.1f}-{cell['max_ms']:.1f}] x{cell['repeats']}"
            )
        else:
            log(f"[model] {model:<12} {variant:<18} S={s}: n/a ({cell['reason']})")
    for c in cells:
        dense = next(
            (
                d
                for d in cells
                if d["model"] == c["model"] and "dense" in d["variant"] and d["status"] == "ok"
            ),
            None,
        )
        if c["status"] == "ok" and dense is not None:
            c["speedup_vs_dense"] = dense["median_ms"] / c["median_ms"]
    return {
        "cells": cells,
        "config": {
            "minilm_seq_len": minilm_seq_len,
            "long_seq_len": long_seq_len,
            "long_layers": long_layers,
            "long_config": _long_config(long_layers),
            "threads": threads,
        },
    }
