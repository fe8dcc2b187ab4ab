"""Generation export of a causal decoder: a prefill graph and a decode graph with a bounded cache.

Files written into one output directory (see ``docs/generation.md``)::

    OUT/prefill.onnx        the prompt through the model; attention by the model's prefill
                            attention (the project's op when the model was loaded for it)
    OUT/decode.onnx         new token(s) + the cache -> logits + the updated cache; standard
                            ONNX ops only
    OUT/generation.json     what the runtime needs: layer kinds and windows, I/O names, token ids
    OUT/config.json, generation_config.json, tokenizer files   copied from the checkpoint

Inputs and outputs carry the names Optimum and onnxruntime-genai use:

* prefill: ``input_ids``, ``attention_mask``, ``position_ids`` int64 ``[batch, seq_len]`` ->
  ``logits`` ``[batch, 1, vocab]`` (the last position only: with left padding it is every
  row's last real token) and ``present.N.key`` / ``present.N.value``
  ``[batch, num_kv_heads, L_N, head_dim]``.
* decode: ``input_ids``, ``position_ids`` ``[batch, seq_len]``, ``attention_mask``
  ``[batch, total_seq_len]`` (every position so far, the new ones included),
  ``past_key_values.N.key`` / ``.value`` -> ``logits`` ``[batch, seq_len, vocab]`` and
  ``present.N.key`` / ``.value``.

Cache lengths: a full-attention layer keeps every position (``L_N`` = total length); a
sliding-window layer with window ``W`` (transformers' convention: query ``i`` sees keys
``i-W+1 .. i``) keeps the last ``min(total, W - 1)`` positions, the most the next token can
see besides itself, so its memory is constant once the text is longer than the window. Which
layers slide, and their windows, come from transformers' own ``DynamicCache(config=...)``
(``layer_types``, ``sliding_window`` and the legacy fields it understands); the prefill graph
returns exactly the tensors that cache would hold.

Padding: left padding. Positions are ``cumsum(attention_mask) - 1`` (0 at padding), as
``transformers`` ``generate`` computes them; the cache holds padded positions like any other
(masked by ``attention_mask``), so a window counts positions, as in transformers.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparse_attn.errors import InvalidInputError

#: File names inside a generation export directory.
PREFILL_FILE = "prefill.onnx"
DECODE_FILE = "decode.onnx"
GENERATION_FILE = "generation.json"
#: ``generation.json`` ``format`` value (bump on an incompatible change).
FORMAT = "sparse_attn.generation/1"
#: Metadata key of ``prefill.onnx`` / ``decode.onnx`` holding the generation JSON.
META_KEY = "sparse_attn.generation"
#: Layer kinds of the cache.
SLIDING, FULL = "sliding", "full"
#: Checkpoint files copied next to the graphs (tokenizer, chat template, configs).
COPIED_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
    "added_tokens.json",
)
#: ``(atol, rtol)`` of the export-time ONNX Runtime vs PyTorch check of logits and cache.
CHECK_TOLERANCE = {"float32": (1e-3, 1e-3), "float16": (5e-2, 2e-2)}


def past_name(layer: int, kind: str) -> str:
    """``past_key_values.{layer}.{key|value}`` (decode input)."""
    return f"past_key_values.{layer}.{kind}"


def present_name(layer: int, kind: str) -> str:
    """``present.{layer}.{key|value}`` (prefill and decode output)."""
    return f"present.{layer}.{kind}"


@dataclass(frozen=True)
class CacheLayer:
    """One decoder layer's cache.

    Attributes:
        index: layer number.
        kind: ``"sliding"`` or ``"full"``.
        window: ``W`` of a sliding layer (keys per query, the query included; the cache keeps
            ``W - 1`` positions); ``None`` for a full layer.
        num_kv_heads, head_dim, value_head_dim: the cached tensors' ``[B, Hkv, L, D|Dv]``.
    """

    index: int
    kind: str
    window: int | None
    num_kv_heads: int
    head_dim: int
    value_head_dim: int

    @property
    def max_cached(self) -> int | None:
        """Most positions the layer keeps (``W - 1``), ``None`` when unbounded."""
        return None if self.window is None else self.window - 1


def cache_plan(config) -> list[tuple[str, int | None]]:
    """``[(kind, window)]`` per layer, from transformers' ``DynamicCache(config=config)``.

    Raises:
        InvalidInputError: a layer kind other than full or sliding-window attention (e.g.
            chunked attention, recurrent state, shared caches), which this export does not
            handle.
    """
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    plan = []
    for i, layer in enumerate(cache.layers):
        name = type(layer).__name__
        if name == "DynamicSlidingWindowLayer":
            plan.append((SLIDING, int(layer.sliding_window)))
        elif name == "DynamicLayer":
            plan.append((FULL, None))
        else:
            raise InvalidInputError(
                f"layer {i} uses a {name} cache, which the generation export does not handle "
                "(full and sliding-window attention only)"
            )
    return plan


# ----------------------------------------------------------------------------- torch side
@contextlib.contextmanager
def attention_implementation(model, name: str | None):
    """Temporarily run ``model``'s attention with ``name`` (``None``: leave it as it is)."""
    if name is None:
        yield
        return
    configs = {id(c): c for c in _configs(model)}.values()
    saved = [(c, c._attn_implementation) for c in configs]
    try:
        for c in configs:
            c._attn_implementation = name
        yield
    finally:
        for c, v in saved:
            c._attn_implementation = v


def _configs(model):
    seen = []
    for mod in model.modules():
        cfg = getattr(mod, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            seen.append(cfg)
    return seen


def _output_cache(out):
    cache = getattr(out, "cache", None)
    if cache is None:
        cache = getattr(out, "past_key_values", None)
    if cache is None:
        raise RuntimeError("the model returned no cache; it does not support use_cache=True")
    return cache


def _text_config(model):
    cfg = model.config
    get = getattr(cfg, "get_text_config", None)
    return get(decoder=True) if callable(get) else cfg


def _decode_masks(attention_mask, q_len: int, plan, kv_lens, dtype):
    """Additive float masks ``[B, 1, q, kv]`` for the decode step, one per layer kind.

    The keys of a layer are its cache followed by the new tokens, i.e. the last ``kv``
    positions of ``attention_mask`` (whose length is the whole text so far). Query ``i`` of
    the new tokens sits at position ``T - q + i``; key ``c`` at ``T - kv + c``; it is visible
    when it is not after the query, inside the window of a sliding layer and not padding.
    """
    import torch

    total = attention_mask.shape[1]
    q_pos = torch.arange(q_len, device=attention_mask.device) + (total - q_len)
    first_kv = {}
    for (kind, window), kv in zip(plan, kv_lens, strict=True):
        first_kv.setdefault((kind, window), kv)
    masks = {}
    for (kind, window), kv_len in first_kv.items():
        k_pos = torch.arange(kv_len, device=attention_mask.device) + (total - kv_len)
        visible = k_pos[None, :] <= q_pos[:, None]
        if window is not None:
            visible = visible & (k_pos[None, :] > q_pos[:, None] - window)
        keys = attention_mask.index_select(1, k_pos) != 0
        visible = visible[None, None, :, :] & keys[:, None, None, :]
        zero = torch.zeros((), dtype=dtype)
        masks[(kind, window)] = torch.where(visible, zero, torch.finfo(dtype).min)
    return masks


def build_wrappers(model, plan=None):
    """The prefill and decode ``nn.Module`` wrappers of a Hugging Face causal LM.

    Args:
        model: a ``*ForCausalLM`` (eval mode) whose forward takes ``cache=`` /
            ``use_cache=`` / ``logits_to_keep=`` (transformers 5).
        plan: :func:`cache_plan` of its config (computed when ``None``).

    Returns:
        ``(prefill, decode)`` modules. ``prefill(input_ids, attention_mask, position_ids)``
        returns ``{"logits": [B, 1, V], "present.N.key": ..., ...}``;
        ``decode(input_ids, attention_mask, position_ids, past)`` with ``past`` a list
        ``[k0, v0, k1, v1, ...]`` returns the same keys with ``logits [B, q, V]``.
    """
    import torch

    plan = plan or cache_plan(_text_config(model))

    class Prefill(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids):
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=True,
                logits_to_keep=1,
            )
            cache = _output_cache(out)
            res = {"logits": out.logits}
            for i, layer in enumerate(cache.layers):
                res[present_name(i, "key")] = layer.keys
                res[present_name(i, "value")] = layer.values
            return res

    class Decode(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, past):
            from transformers import DynamicCache

            cache = DynamicCache(config=_text_config(self.model))
            kv_lens = []
            for i, layer in enumerate(cache.layers):
                layer.keys, layer.values = past[2 * i], past[2 * i + 1]
                layer.dtype, layer.device = layer.keys.dtype, layer.keys.device
                layer.is_initialized = True
                kv_lens.append(layer.keys.shape[2] + input_ids.shape[1])
            dtype = past[0].dtype
            masks = _decode_masks(attention_mask, input_ids.shape[1], plan, kv_lens, dtype)
            if len(masks) == 1:
                mask = next(iter(masks.values()))
            else:
                by_type = {}
                for (kind, _window), m in masks.items():
                    name = "sliding_attention" if kind == SLIDING else "full_attention"
                    if name in by_type:
                        raise InvalidInputError(
                            "sliding layers with different windows are not supported by the "
                            "decode graph"
                        )
                    by_type[name] = m
                mask = by_type
            out = self.model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=True,
            )
            res = {"logits": out.logits}
            for i, layer in enumerate(cache.layers):
                res[present_name(i, "key")] = layer.keys
                res[present_name(i, "value")] = layer.values
            return res

    return Prefill().eval(), Decode().eval()


def positions_from_mask(attention_mask: np.ndarray) -> np.ndarray:
    """``position_ids`` of a left-padded batch: ``cumsum(mask) - 1``, 0 at padding (int64)."""
    m = np.asarray(attention_mask).astype(np.int64)
    pos = np.cumsum(m, axis=1) - 1
    return np.where(m == 0, 0, pos).astype(np.int64)


# ----------------------------------------------------------------------------- export
@dataclass
class GenerationExport:
    """What :func:`export_generation` wrote.

    Attributes:
        directory: the output directory.
        prefill, decode: the two ONNX files.
        info: the ``generation.json`` object.
        checks: ``{"prefill": max_abs_err, "decode": max_abs_err}`` of ONNX Runtime vs PyTorch.
    """

    directory: Path
    prefill: Path
    decode: Path
    info: dict
    checks: dict


def _dims():
    import torch

    return {
        "batch": torch.export.Dim("batch_size", min=1),
        "seq": torch.export.Dim("sequence_length", min=1),
        "total": torch.export.Dim("total_sequence_length", min=1),
        FULL: torch.export.Dim("past_sequence_length", min=1),
        SLIDING: torch.export.Dim("sliding_past_sequence_length", min=1),
    }


def _torch_export(module, args, dynamic_shapes, input_names, output_names, opset):
    from sparse_attn.export.exporter import onnx_proto

    return onnx_proto(
        module,
        args,
        None,
        dynamic_shapes=dynamic_shapes,
        input_names=input_names,
        output_names=output_names,
        opset=opset,
        error=RuntimeError,
    )


def _finish(proto, path: Path, meta: dict[str, str], *, max_seq_len: int | None) -> None:
    import onnx

    from sparse_attn.export import exporter
    from sparse_attn.export import metadata as meta_mod

    exporter.check_custom_identities(proto)
    exporter.attach_functions(proto, max_seq_len=max_seq_len)
    exporter.check_custom_identities(proto)
    meta = dict(meta)
    meta.update(meta_mod.version_metadata())
    meta["sparse_attn.inputs"] = json.dumps(meta_mod.io_signature(proto.graph.input))
    meta["sparse_attn.outputs"] = json.dumps(meta_mod.io_signature(proto.graph.output))
    meta_mod.set_metadata(proto, meta)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.onnx")
    try:
        onnx.save(proto, str(tmp))
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise RuntimeError(f"onnx.checker failed on {path.name}: {exc}") from exc
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _ort_session(path: Path):
    from sparse_attn.export.exporter import _ort_session as make

    return make(path)


def _max_err(got: Mapping[str, np.ndarray], ref: Mapping[str, Any], names, tol, mask) -> float:
    """Worst error over ``names``; cache positions that hold padding are not compared (their
    values never reach a real token and depend on how a fully masked row is computed)."""
    worst = 0.0
    atol, rtol = tol
    for name in names:
        exp = ref[name].detach().cpu().numpy().astype(np.float64)
        g = np.asarray(got[name]).astype(np.float64)
        if g.shape != exp.shape:
            raise RuntimeError(
                f"ONNX Runtime output {name} has shape {list(g.shape)}, PyTorch {list(exp.shape)}"
            )
        err = np.abs(g - exp)
        if name != "logits":
            real = np.asarray(mask)[:, -g.shape[2] :] != 0
            err = np.where(real[:, None, :, None], err, 0.0)
        bad = err > atol + rtol * np.abs(exp)
        if bad.any() or not np.isfinite(g).all():
            idx = np.unravel_index(
                int(np.argmax(np.where(np.isfinite(err), err, np.inf))), err.shape
            )
            raise RuntimeError(
                f"ONNX Runtime output {name} differs from PyTorch: worst at {tuple(map(int, idx))}: "
                f"onnxruntime {g[idx]!r}, torch {exp[idx]!r}; {float(bad.mean()):.3%} of elements "
                f"out of tolerance ({atol}+{rtol}*|ref|)"
            )
        worst = max(worst, float(err.max()) if err.size else 0.0)
    return worst


def export_generation(
    model,
    output_dir,
    *,
    max_seq_len: int,
    prefill_attention=None,
    decode_attention: str = "eager",
    source_dir=None,
    base_metadata: Mapping[str, str] | None = None,
    dtype: str = "float32",
    opset: int = 20,
    check: bool = True,
    verbose: bool = True,
) -> GenerationExport:
    """Write ``prefill.onnx``, ``decode.onnx`` and ``generation.json`` for a causal LM.

    Args:
        model: a transformers ``*ForCausalLM`` in eval mode (unmodified weights).
        output_dir: directory to create or reuse; the three files are replaced, nothing else.
        max_seq_len: longest prompt (tokens) the prefill graph takes (its layouts' length).
        prefill_attention: a callable ``model -> context manager`` under which the model runs
            its attention as the block-sparse op (e.g.
            ``lambda m: use_sparse_attention(m, layouts)``); ``None`` keeps the model's own
            attention (tests only).
        decode_attention: transformers attention implementation of the decode graph
            (``"eager"``: standard ops, the model's own scaling and soft-capping).
        source_dir: checkpoint directory whose tokenizer / config files are copied.
        base_metadata: extra ``metadata_props`` for both files (e.g. the export's layout
            metadata for ``prefill.onnx``).
        dtype: ``"float32"`` | ``"float16"`` (the model's dtype; recorded).
        opset: default-domain ONNX opset.
        check: run both graphs in ONNX Runtime against PyTorch (2 prompts of different
            lengths, one longer than the smallest window when ``max_seq_len`` allows, and two
            decode steps).
        verbose: print one line per graph.

    Returns:
        :class:`GenerationExport`.

    Raises:
        InvalidInputError: a model this export does not handle (see :func:`cache_plan`).
        RuntimeError: a failed export or check (the message names it); the old files stay.
    """
    import torch

    out_dir = Path(output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidInputError(f"output {str(out_dir)!r} is a file; give a directory")
    if source_dir is not None and out_dir.resolve() == Path(source_dir).resolve():
        raise InvalidInputError(
            f"refusing to write into the checkpoint directory {str(source_dir)!r}; choose "
            "another -o directory"
        )
    cfg = _text_config(model)
    plan = cache_plan(cfg)
    vocab = int(model.get_output_embeddings().weight.shape[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    prefill, decode = build_wrappers(model, plan)
    d = _dims()
    n_layers = len(plan)
    kv_names = [(i, t) for i in range(n_layers) for t in ("key", "value")]
    io_in = ("input_ids", "attention_mask", "position_ids")
    out_names = ["logits"] + [present_name(i, t) for i, t in kv_names]

    # --- prefill
    g = torch.Generator().manual_seed(0)
    s_ex = max(2, min(max_seq_len, 17))
    ids = torch.randint(0, vocab, (2, s_ex), generator=g)
    mask = torch.ones(2, s_ex, dtype=torch.long)
    mask[0, :3] = 0
    pos = torch.from_numpy(positions_from_mask(mask.numpy()))
    pre_shapes = tuple({0: d["batch"], 1: d["seq"]} for _ in io_in)
    ctx = prefill_attention(model) if prefill_attention is not None else contextlib.nullcontext()
    with ctx, torch.no_grad():
        pre_ref = prefill(ids, mask, pos)
        pre_proto = _torch_export(prefill, (ids, mask, pos), pre_shapes, io_in, out_names, opset)
    layers = []
    for i, (kind, window) in enumerate(plan):
        k = pre_ref[present_name(i, "key")]
        v = pre_ref[present_name(i, "value")]
        layers.append(
            CacheLayer(i, kind, window, int(k.shape[1]), int(k.shape[3]), int(v.shape[3]))
        )

    # --- decode
    b_ex, q_ex, p_ex = 2, 3, 5
    past = []
    for lay in layers:
        n = p_ex if lay.kind == FULL else max(2, min(4, lay.max_cached))
        past.append(
            torch.randn(b_ex, lay.num_kv_heads, n, lay.head_dim, dtype=pre_ref["logits"].dtype)
        )
        past.append(
            torch.randn(
                b_ex, lay.num_kv_heads, n, lay.value_head_dim, dtype=pre_ref["logits"].dtype
            )
        )
    dec_ids = torch.randint(0, vocab, (b_ex, q_ex), generator=g)
    dec_mask = torch.ones(b_ex, p_ex + q_ex, dtype=torch.long)
    dec_pos = torch.from_numpy(positions_from_mask(dec_mask.numpy()))[:, -q_ex:]
    past_shapes = [{0: d["batch"], 2: d[lay.kind]} for lay in layers for _ in (0, 1)]
    dec_shapes = (
        {0: d["batch"], 1: d["seq"]},
        {0: d["batch"], 1: d["total"]},
        {0: d["batch"], 1: d["seq"]},
        past_shapes,
    )
    dec_in = list(io_in) + [past_name(i, t) for i, t in kv_names]
    with attention_implementation(model, decode_attention), torch.no_grad():
        dec_proto = _torch_export(
            decode, (dec_ids, dec_mask, dec_pos, past), dec_shapes, dec_in, out_names, opset
        )

    info = {
        "format": FORMAT,
        "prefill": PREFILL_FILE,
        "decode": DECODE_FILE,
        "max_seq_len": int(max_seq_len),
        "max_position_embeddings": getattr(cfg, "max_position_embeddings", None),
        "vocab_size": vocab,
        "dtype": dtype,
        "padding_side": "left",
        "num_layers": n_layers,
        "layers": [asdict(lay) for lay in layers],
        "inputs": list(io_in),
        "past_names": [past_name(i, t) for i, t in kv_names],
        "present_names": [present_name(i, t) for i, t in kv_names],
        "token_ids": _token_ids(model),
        "model_type": getattr(cfg, "model_type", None),
    }
    meta = dict(base_metadata or {})
    meta[META_KEY] = json.dumps(info, sort_keys=True)
    pre_path, dec_path = out_dir / PREFILL_FILE, out_dir / DECODE_FILE
    _finish(
        pre_proto,
        pre_path,
        {**meta, "sparse_attn.generation.graph": "prefill"},
        max_seq_len=max_seq_len,
    )
    dec_meta = {k: v for k, v in meta.items() if k == META_KEY}
    _finish(
        dec_proto,
        dec_path,
        {**dec_meta, "sparse_attn.generation.graph": "decode"},
        max_seq_len=None,
    )
    checks = {}
    if check:
        checks = _check(
            model,
            prefill,
            decode,
            ctx_factory=prefill_attention,
            decode_attention=decode_attention,
            paths=(pre_path, dec_path),
            info=info,
            vocab=vocab,
            max_seq_len=max_seq_len,
            verbose=verbose,
        )
    (out_dir / GENERATION_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    if source_dir is not None:
        for name in COPIED_FILES:
            src = Path(source_dir) / name
            if src.is_file():
                shutil.copyfile(src, out_dir / name)
    return GenerationExport(out_dir, pre_path, dec_path, info, checks)


def export_checkpoint(
    model_dir,
    output_dir,
    *,
    block_size: int | None = None,
    max_seq_len: int | None = None,
    dtype: str = "float32",
    pattern=None,
    layers=None,
    verbose: bool = True,
) -> GenerationExport:
    """``sparse-attn export --model PATH --task generate -o DIR``: a checkpoint's generation export.

    The checkpoint is loaded and switched to the block-sparse op by the Hugging Face
    integration (:func:`sparse_attn.models.family.build_model`: safetensors only, one pattern
    per layer from the model's own config); its prefill graph runs the op, its decode graph
    the model's eager attention over the bounded cache.

    Args:
        model_dir: checkpoint directory or built-in name (e.g. ``gemma3-270m``).
        output_dir: the export directory.
        block_size: tokens per block (default the integration's, 64).
        max_seq_len: longest prompt (default the integration's, ``min(4096, positions)``).
        dtype: ``"float32"`` | ``"float16"``.
        pattern, layers: refused: the decode cache follows the model's own windows, so the
            prefill must too.
        verbose: print the per-layer table and the checks.

    Raises:
        InvalidInputError: a user pattern, an encoder (no generation), or what the
            integration refuses (bad checkpoint, unsupported architecture, sizes).
        RuntimeError: a failed export or check.
    """
    from sparse_attn.export import hf_common
    from sparse_attn.export.metadata import build_metadata
    from sparse_attn.models import family

    if pattern is not None or layers is not None:
        raise InvalidInputError(
            "--pattern/--layers do not apply to --task generate: the decode cache keeps each "
            "layer's own window, so the prefill keeps the model's own patterns"
        )
    from sparse_attn.models import checkpoint as ckpt

    td = hf_common.torch_dtype(dtype)
    src = Path(ckpt.resolve(model_dir))
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"output {str(out)!r} is a file; give a directory")
    if out.resolve() == src.resolve():
        raise InvalidInputError(
            f"refusing to write into the checkpoint directory {str(src)!r}; choose another -o"
        )
    model = family.build_model(
        model_dir,
        block_size=family.DEFAULT_BLOCK_SIZE if block_size is None else block_size,
        max_seq_len=max_seq_len,
        dtype="float32",
    )
    if not model.causal_lm:
        raise InvalidInputError(
            f"{model_dir} is an encoder ({type(model.hf).__name__}); --task generate needs a "
            "causal language model"
        )
    if verbose:
        family.print_table(model)
    model = model.to(td)
    model_config = family.model_config_for(model, pattern=None, layers=None, dtype=dtype)
    model_config["layout_hash"] = hf_common.layouts_hash(model.layer_layouts)
    meta = build_metadata(
        model=family.NAME,
        layout=model.layer_layouts,
        dtype=dtype,
        model_config=model_config,
        max_seq_len=model.max_seq_len,
        num_heads=model.num_heads,
        head_dim=model.head_dim,
        pattern=hf_common.pattern_summary(model.layer_layouts),
        causal=True,
        static_seq_len=False,
    )
    meta[family.LAYER_PATTERNS_KEY] = json.dumps(family.layer_table(model))
    res = export_generation(
        model.hf,
        output_dir,
        max_seq_len=model.max_seq_len,
        prefill_attention=None,  # build_model switched the model to the op
        source_dir=model.model_dir,
        base_metadata=meta,
        dtype=dtype,
        verbose=verbose,
    )
    if verbose:
        print(f"wrote {res.prefill}, {res.decode} and {res.directory / GENERATION_FILE}")
    return res


def _token_ids(model) -> dict:
    """eos (list), pad, bos ids from the generation config, else the model config."""
    gc = getattr(model, "generation_config", None)
    cfg = _text_config(model)

    def pick(name):
        v = getattr(gc, name, None) if gc is not None else None
        return v if v is not None else getattr(cfg, name, None)

    eos = pick("eos_token_id")
    eos = [] if eos is None else ([int(eos)] if isinstance(eos, int) else [int(e) for e in eos])
    pad = pick("pad_token_id")
    bos = pick("bos_token_id")
    return {
        "eos_token_id": eos,
        "pad_token_id": None if pad is None else int(pad),
        "bos_token_id": None if bos is None else int(bos),
    }


def _check(
    model,
    prefill,
    decode,
    *,
    ctx_factory,
    decode_attention,
    paths,
    info,
    vocab,
    max_seq_len,
    verbose,
) -> dict:
    """ONNX Runtime vs PyTorch on a left-padded batch of 2 prompts and 2 decode steps."""
    import torch

    windows = [lay["window"] for lay in info["layers"] if lay["window"]]
    long_len = min(max_seq_len, (min(windows) + 5) if windows else 37)
    lens = [max(1, long_len // 3), long_len]
    s = max(lens)
    g = torch.Generator().manual_seed(1)
    ids = torch.zeros(len(lens), s, dtype=torch.long)
    mask = torch.zeros(len(lens), s, dtype=torch.long)
    for b, n in enumerate(lens):
        ids[b, s - n :] = torch.randint(0, vocab, (n,), generator=g)
        mask[b, s - n :] = 1
    pos = torch.from_numpy(positions_from_mask(mask.numpy()))
    names = ["logits", *info["present_names"]]
    tol = CHECK_TOLERANCE.get(info["dtype"], CHECK_TOLERANCE["float32"])
    pre_sess, dec_sess = _ort_session(paths[0]), _ort_session(paths[1])
    ctx = ctx_factory(model) if ctx_factory is not None else contextlib.nullcontext()
    with ctx, torch.no_grad():
        ref = prefill(ids, mask, pos)
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "position_ids": pos.numpy()}
    got = dict(zip(names, pre_sess.run(names, feeds), strict=True))
    errs = {"prefill": _max_err(got, ref, names, tol, mask.numpy())}
    dec_err = 0.0
    for _ in range(2):
        nxt = ref["logits"][:, -1:].argmax(-1)
        mask = torch.cat([mask, torch.ones_like(nxt)], 1)
        pos = pos[:, -1:] + 1
        past = [ref[n] for n in info["present_names"]]
        with attention_implementation(model, decode_attention), torch.no_grad():
            ref = decode(nxt, mask, pos, past)
        feeds = {
            "input_ids": nxt.numpy(),
            "attention_mask": mask.numpy(),
            "position_ids": pos.numpy(),
        }
        feeds.update({p: t.numpy() for p, t in zip(info["past_names"], past, strict=True)})
        got = dict(zip(names, dec_sess.run(names, feeds), strict=True))
        dec_err = max(dec_err, _max_err(got, ref, names, tol, mask.numpy()))
    errs["decode"] = dec_err
    if verbose:
        print(
            f"generation export check: onnxruntime CPU vs torch, prompts of {lens} tokens: "
            f"prefill max_abs_err={errs['prefill']:.2e}, 2 decode steps max_abs_err="
            f"{errs['decode']:.2e} (tol {tol[0]:.0e}+{tol[1]:.0e}*|ref|): PASS"
        )
    return errs


def read_generation_info(path) -> dict:
    """The generation JSON of an export directory or of its ``prefill.onnx`` / ``decode.onnx``.

    Raises:
        InvalidInputError: the path is not a generation export (says what it is instead).
    """
    p = Path(path)
    if p.is_dir():
        f = p / GENERATION_FILE
        if not f.is_file():
            raise InvalidInputError(
                f"{p} has no {GENERATION_FILE}: it is not a generation export; write one with "
                "`sparse-attn export --model PATH --task generate -o DIR`"
            )
        try:
            info = json.loads(f.read_text())
        except ValueError as exc:
            raise InvalidInputError(f"{f} is not valid JSON ({exc}); re-export") from exc
    else:
        from sparse_attn.export.metadata import read_metadata

        if not p.is_file():
            raise InvalidInputError(f"{p} does not exist; check the path")
        try:
            meta = read_metadata(p)
        except Exception as exc:
            raise InvalidInputError(f"{p} is not an ONNX model ({exc})") from exc
        if META_KEY not in meta:
            raise InvalidInputError(
                f"{p} is not a generation export (no {META_KEY!r} metadata); write one with "
                "`sparse-attn export --model PATH --task generate -o DIR`"
            )
        info = json.loads(meta[META_KEY])
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise InvalidInputError(
            f"{p}: unknown generation format {info.get('format') if isinstance(info, dict) else info!r}"
            f" (this version reads {FORMAT}); re-export"
        )
    return info


def generation_dir(path) -> Path:
    """The export directory of ``path`` (the directory itself, or the folder of its graphs)."""
    p = Path(path)
    return p if p.is_dir() else p.parent


__all__ = [
    "DECODE_FILE",
    "FORMAT",
    "GENERATION_FILE",
    "PREFILL_FILE",
    "CacheLayer",
    "GenerationExport",
    "build_wrappers",
    "cache_plan",
    "export_checkpoint",
    "export_generation",
    "positions_from_mask",
    "read_generation_info",
]
