"""Export family ``hf``: any local Hugging Face checkpoint, attention through the registry.

``export_onnx(out, model_dir=PATH, pattern=None, layers=None, block_size=64,
max_seq_len=None, dtype="float32")`` loads the checkpoint (:mod:`sparse_attn.models.checkpoint`),
reads one pattern per layer from its config (:func:`sparse_attn.models.layers.layer_patterns`),
switches the unmodified transformers model to the registered sparse attention
(:mod:`sparse_attn.models.attention`) and writes one ONNX file:

* inputs ``input_ids``, ``attention_mask`` int64 ``[batch, seq_len]`` (1 = real token, right
  padding; positions ``0..S-1``), B and S dynamic (S in 1..max_seq_len);
* outputs ``logits [B, S, vocab]`` for a causal LM (``logits="last"``: ``[B, 1, vocab]``, each
  row's last real token only, what a prefill needs), ``last_hidden_state [B, S, hidden]``
  (plus ``pooler_output`` where the model has a pooler) for an encoder;
* one ``BlockSparseAttention`` node per attention layer; metadata
  ``sparse_attn.layer_patterns`` holds the per-layer table (layer, kind, pattern, the model's
  own pattern, source, window, density).

Before writing, the sparse model (PyTorch, the op) is compared with the *unmodified* model
(transformers' eager attention and its own masks) at a length longer than the largest window
and not a multiple of the block (:func:`hf_check`); a wrong window fails the export.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sparse_attn import opspec
from sparse_attn.errors import InvalidInputError
from sparse_attn.export import hf_common
from sparse_attn.runtime.compare import compare_arrays, describe_failure

NAME = "hf"
DEFAULT_BLOCK_SIZE = 64
#: Default ``max_seq_len`` when the model allows more positions.
DEFAULT_MAX_SEQ_LEN = 4096
INPUT_NAMES = ("input_ids", "attention_mask")
#: Values of ``logits``: every position, or each row's last real token (causal LMs only).
LOGITS_MODES = ("all", "last")
#: Metadata key holding the per-layer pattern table (JSON list of dicts).
LAYER_PATTERNS_KEY = opspec.meta_key("layer_patterns")
#: ``(atol, rtol)`` of the sparse-vs-unmodified check in float32 (op vs eager softmax order).
HF_CHECK_TOLERANCE = (2e-4, 2e-4)
#: ``(atol, rtol)`` of the export-time ONNX Runtime vs PyTorch check in float32. Whole
#: pretrained LMs reach logits of +-80 whose float32 rounding differs by ~6e-4 between the
#: two runtimes after 18 layers (Gemma 3 270M), so near-zero logits need an absolute bound
#: above the exporter's default 1e-4.
ORT_CHECK_TOLERANCE = (2e-3, 1e-3)
#: Largest B * S * vocab of the window-crossing check batch before it drops to one row.
_MAX_CHECK_LOGITS = 2**26
#: Models whose positions start after the padding id (RoBERTa-style embeddings).
_OFFSET_POSITION_TYPES = frozenset({"roberta", "xlm-roberta", "camembert", "data2vec-text", "xmod"})


def position_limit(config) -> int | None:
    """Largest sequence length the model's position embeddings allow, or ``None``."""
    from sparse_attn.models.layers import text_config

    cfg = text_config(config)
    n = getattr(cfg, "max_position_embeddings", None)
    if not isinstance(n, int) or n < 1:
        return None
    if getattr(cfg, "model_type", None) in _OFFSET_POSITION_TYPES:
        n -= int(getattr(cfg, "pad_token_id", 1) or 0) + 1
    return n


def default_max_seq_len(config) -> int:
    """``min(DEFAULT_MAX_SEQ_LEN, position limit)``."""
    lim = position_limit(config)
    return DEFAULT_MAX_SEQ_LEN if lim is None else min(DEFAULT_MAX_SEQ_LEN, lim)


def check_max_seq_len(config, max_seq_len) -> int:
    """``max_seq_len`` (default :func:`default_max_seq_len`) within the position limit.

    Raises:
        InvalidInputError: not a positive integer, or beyond the model's positions.
    """
    if max_seq_len is None:
        return default_max_seq_len(config)
    max_seq_len = hf_common.check_positive_int("max_seq_len", max_seq_len)
    lim = position_limit(config)
    if lim is not None and max_seq_len > lim:
        raise InvalidInputError(
            f"max_seq_len={max_seq_len} exceeds the model's {lim} positions; use "
            f"--max-seq-len {lim} or less"
        )
    return max_seq_len


def _module_class():
    import torch
    from torch import nn

    class SparseModel(nn.Module):
        """A transformers model whose attention core runs ``BlockSparseAttention``.

        Args:
            hf: the transformers model (switched permanently to the registered attention).
            patterns: ``LayerPattern`` per layer.
            layouts: ``BlockLayout`` per layer.
            calls: the model's probe (:func:`sparse_attn.models.attention.probe`).
            causal_lm: output ``logits`` (else ``last_hidden_state`` [+ ``pooler_output``]).
            logits: ``"all"`` (``[B, S, vocab]``) or ``"last"`` (``[B, 1, vocab]``).

        ``forward(input_ids, attention_mask)`` (int64 ``[B, S]``) returns a dict of outputs.
        """

        def __init__(self, hf, patterns, layouts, calls, causal_lm: bool, logits="all") -> None:
            super().__init__()
            from sparse_attn.models import attention as attn

            self.hf = hf
            self.causal_lm = bool(causal_lm)
            self.logits = logits
            self.patterns = list(patterns)
            self.layer_layouts = list(layouts)
            self.calls = list(calls)
            self.cores, _ = attn.install(hf, layouts, calls)
            self.num_heads = calls[0].num_heads
            self.num_kv_heads = calls[0].num_kv_heads
            self.head_dim = calls[0].head_dim

        @property
        def config(self):
            return self.hf.config

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
            return model_outputs(
                self.hf, input_ids, attention_mask, self.causal_lm, logits=self.logits
            )

    return SparseModel


def check_logits_mode(logits, causal_lm: bool) -> str:
    """``logits`` checked against :data:`LOGITS_MODES` and the model kind.

    Raises:
        InvalidInputError: an unknown mode, or ``"last"`` for an encoder (it has no logits).
    """
    mode = "all" if logits is None else logits
    if mode not in LOGITS_MODES:
        raise InvalidInputError(f"logits={logits!r}: use one of {', '.join(LOGITS_MODES)}")
    if mode == "last" and not causal_lm:
        raise InvalidInputError(
            "--logits last applies to causal LM checkpoints; this checkpoint is exported as an "
            "encoder (last_hidden_state)"
        )
    return mode


def at_last_token(x, attention_mask):
    """Each row of ``x [B, S, ...]`` at its last real token -> ``[B, 1, ...]``; the last real
    token of ``attention_mask [B, S]`` (1 = real, right padding) is at ``sum - 1`` (position 0
    for a row without real tokens)."""
    import torch

    idx = (attention_mask.to(torch.int64).sum(-1) - 1).clamp(min=0)
    rows = torch.arange(x.shape[0], device=x.device)
    return x[rows, idx].unsqueeze(1)


def last_token_logits(hf, input_ids, attention_mask):
    """``[B, 1, vocab]`` logits of each row's last real token, without the ``[B, S, vocab]``
    tensor: the decoder's hidden states are gathered by :func:`at_last_token` and go
    through the model's output embedding and its final logit soft-capping, as in the
    model's own head (the export check compares them with the unmodified model's logits)."""
    import torch

    from sparse_attn.models.layers import text_config

    out = hf.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    last = at_last_token(out.last_hidden_state, attention_mask)
    logits = hf.get_output_embeddings()(last)
    cap = getattr(text_config(hf.config), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def model_outputs(hf, input_ids, attention_mask, causal_lm: bool, logits: str = "all") -> dict:
    """The export's outputs of ``hf`` (whatever its attention implementation is).

    ``logits="last"`` (causal LM): ``[B, 1, vocab]`` at each row's last real token
    (:func:`last_token_logits`).
    """
    if causal_lm:
        if logits == "last":
            return {"logits": last_token_logits(hf, input_ids, attention_mask)}
        out = hf(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return {"logits": out.logits}
    out = hf(input_ids=input_ids, attention_mask=attention_mask)
    res = {"last_hidden_state": out.last_hidden_state}
    pooled = getattr(out, "pooler_output", None)
    if pooled is not None:
        res["pooler_output"] = pooled
    return res


def compile_layouts(patterns, *, max_seq_len: int, block_size: int, num_heads: int) -> list:
    """One layout per layer (identical specs compiled once)."""
    from sparse_attn.layout import compile_layout

    cache: dict[str, object] = {}
    out = []
    for lp in patterns:
        if lp.pattern not in cache:
            try:
                cache[lp.pattern] = compile_layout(
                    lp.pattern, seq_len=max_seq_len, block_size=block_size, num_heads=num_heads
                )
            except InvalidInputError:
                raise
            except ValueError as exc:
                raise InvalidInputError(f"pattern {lp.pattern!r}: {exc}") from exc
        out.append(cache[lp.pattern])
    return out


def build_model(
    model_dir,
    *,
    pattern=None,
    layers=None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    max_seq_len: int | None = None,
    dtype: str = "float32",
    warn: bool = True,
    loaded=None,
    logits: str = "all",
):
    """The checkpoint with sparse attention, as an eval-mode ``torch.nn.Module``.

    Args:
        model_dir: checkpoint directory or built-in name.
        pattern: user spec replacing the config's on ``layers`` (default: the config's).
        layers: ``sliding`` | ``full`` | ``all`` | ``0-4,6`` (with ``pattern`` only).
        block_size: tokens per block.
        max_seq_len: longest S (default :func:`default_max_seq_len`).
        dtype: ``"float32"`` | ``"float16"``.
        warn: warn when a user pattern replaces a model window.
        loaded: an already loaded ``(model, config)`` of ``model_dir`` (saves a reload).
        logits: causal LMs: ``"all"`` positions or each row's ``"last"`` real token.

    Returns:
        ``SparseModel`` with ``patterns``, ``layer_layouts``, ``hf``, ``num_heads``, ``head_dim``.

    Raises:
        InvalidInputError: a bad checkpoint, layer selection, pattern or size.
    """
    from sparse_attn.models import attention as attn
    from sparse_attn.models import checkpoint as ckpt
    from sparse_attn.models.layers import layer_patterns

    block_size = hf_common.check_positive_int("block_size", block_size)
    td = hf_common.torch_dtype(dtype)
    path = ckpt.resolve(model_dir)
    if loaded is None:
        config = ckpt.load_config(path)
        ckpt.model_class(config)
        ckpt.weight_files(path)
    else:
        config = loaded[1]
    max_seq_len = check_max_seq_len(config, max_seq_len)
    logits = check_logits_mode(logits, ckpt.is_causal_lm(config))
    patterns = layer_patterns(config, max_seq_len, pattern, layers, warn=warn)
    hf = loaded[0] if loaded is not None else ckpt.load_model(path, config)
    calls = attn.probe(hf)
    _check_calls(calls, patterns)
    layouts = compile_layouts(
        patterns, max_seq_len=max_seq_len, block_size=block_size, num_heads=calls[0].num_heads
    )
    model = _module_class()(
        hf, patterns, layouts, calls, ckpt.is_causal_lm(config), logits=logits
    ).eval()
    model.model_dir = str(Path(path).resolve())
    model.max_seq_len = max_seq_len
    model.block_size = block_size
    return model.to(td)


def _check_calls(calls, patterns) -> None:
    """The model's own per-layer behaviour must agree with the config-derived kinds."""
    from sparse_attn.models.attention import _refuse_unsupported

    n = len(patterns)
    for c in calls:
        _refuse_unsupported(
            c.module, c.extra.get("softcap"), {"s_aux": c.extra.get("s_aux") or None}
        )
        if not 0 <= c.layer_idx < n:
            raise InvalidInputError(
                f"the model runs attention layer {c.layer_idx} but its config has {n} layers"
            )
        lp = patterns[c.layer_idx]
        if c.is_causal is not None and bool(c.is_causal) != lp.causal:
            raise InvalidInputError(
                f"layer {c.layer_idx} ({type(c.module).__name__}) is "
                f"{'causal' if c.is_causal else 'bidirectional'} but its config reads as "
                f"{'causal' if lp.causal else 'bidirectional'}; this architecture is not supported"
            )
        sliding_call = c.sliding_window is not None
        if sliding_call != (lp.kind == "sliding"):
            raise InvalidInputError(
                f"layer {c.layer_idx} ({type(c.module).__name__}) passes sliding_window="
                f"{c.sliding_window} but its config makes it a {lp.kind} layer; this "
                "architecture's window fields are not understood"
            )
    if len({c.num_heads for c in calls}) != 1:
        raise InvalidInputError("layers with different numbers of query heads are not supported")


def layer_table(model) -> list[dict]:
    """Per-layer rows (``LayerPattern`` fields + ``density`` at ``max_seq_len``)."""
    rows = []
    for lp, lay in zip(model.patterns, model.layer_layouts, strict=True):
        row = lp.as_dict()
        row["density"] = round(float(lay.stats()["density_tokens"]), 6)
        rows.append(row)
    return rows


def print_table(model, file=None) -> None:
    """Print the per-layer table (layers, kind, pattern, density, source)."""
    from sparse_attn.models.layers import format_table

    dens = [r["density"] for r in layer_table(model)]
    print(format_table(model.patterns, dens), file=file or sys.stdout)


# ----------------------------------------------------------------------------- checks
def check_length_for(windows, block_size: int, max_seq_len: int) -> int:
    """A length longer than the largest window plus a block (two blocks without a window),
    not a multiple of the block, capped at ``max_seq_len``."""
    windows = [w for w in windows if w]
    want = (max(windows) if windows else 2 * block_size) + block_size + 5
    s = min(int(max_seq_len), want)
    if s % block_size == 0 and s > 2:
        s -= 1
    return max(2, s)


def check_length(model) -> int:
    """:func:`check_length_for` of a built model."""
    return check_length_for(
        [lp.window for lp in model.patterns], model.block_size, model.max_seq_len
    )


def long_text() -> str:
    """The project's own long English text (about 1,500 words, 1,750 Gemma tokens) used by
    ``check`` to cross every window."""
    return (Path(__file__).parent / "data" / "long_text.txt").read_text(encoding="utf-8")


def hf_reference_outputs(model, inputs: dict) -> dict:
    """Outputs of the unmodified model (transformers' eager attention, its own masks) on the
    same weights, in float32."""
    import torch

    from sparse_attn.models.attention import attn_implementation

    hf = model.hf
    with attn_implementation(hf, "eager"), torch.no_grad():
        return reference_outputs(
            hf, inputs["input_ids"], inputs["attention_mask"], model.causal_lm, model.logits
        )


def reference_outputs(hf, input_ids, attention_mask, causal_lm: bool, logits: str) -> dict:
    """The export's outputs computed by the model's own forward only: with ``logits="last"``
    the full ``[B, S, vocab]`` logits of the model's head, gathered at each row's last real
    token (so the check also covers :func:`last_token_logits`)."""

    out = model_outputs(hf, input_ids, attention_mask, causal_lm)
    if causal_lm and logits == "last":
        out = {"logits": at_last_token(out["logits"], attention_mask)}
    return out


def hf_check(model, inputs: dict, tolerance=HF_CHECK_TOLERANCE) -> dict:
    """Compare the sparse model with the unmodified model on real-token positions.

    Returns:
        ``{output: max_abs_err}``.

    Raises:
        RuntimeError: an output outside ``atol + rtol * |ref|`` (names the worst element).
    """
    import torch

    with torch.no_grad():
        got = model(**inputs)
    ref = hf_reference_outputs(model, inputs)
    real = inputs["attention_mask"].bool()
    errs = {}
    atol, rtol = tolerance
    for name, r in ref.items():
        g = got[name].float()
        r = r.float()
        if g.dim() >= 3 and g.shape[:2] == real.shape:
            g, r = g[real], r[real]
        diff = (g - r).abs()
        errs[name] = float(diff.max()) if diff.numel() else 0.0
        bad = diff > atol + rtol * r.abs()
        if bool(bad.any()):
            raise RuntimeError(
                f"sparse model differs from the unmodified Hugging Face model on {name}: "
                f"{describe_failure(name, compare_arrays(g, r, (atol, rtol)))}; the per-layer "
                "patterns do not "
                "reproduce this architecture"
            )
    return errs


# ----------------------------------------------------------------------------- family API
def model_config_for(model, *, pattern, layers, dtype) -> dict:
    """``sparse_attn.model_config`` of an export (read by :func:`build_torch_model`)."""
    cfg = model.hf.config
    from sparse_attn.models.layers import text_config

    tc = text_config(cfg)
    return {
        "family": NAME,
        "model_dir": model.model_dir,
        "model_type": getattr(tc, "model_type", None),
        "pattern": pattern,
        "layers": layers,
        "block_size": int(model.block_size),
        "max_seq_len": int(model.max_seq_len),
        "dtype": dtype,
        "vocab_size": int(getattr(tc, "vocab_size", 0) or 0) or None,
        "causal_lm": model.causal_lm,
        "logits": model.logits,
    }


def build_torch_model(model_config: dict):
    """Rebuild the sparse model (PyTorch, the op) from ``sparse_attn.model_config``.

    Raises:
        InvalidInputError: missing keys, a checkpoint that moved, or layouts that differ
            from the exported ones.
    """
    try:
        model = build_model(
            model_config["model_dir"],
            pattern=model_config.get("pattern"),
            layers=model_config.get("layers"),
            block_size=model_config["block_size"],
            max_seq_len=model_config["max_seq_len"],
            dtype=model_config.get("dtype", "float32"),
            warn=False,
            logits=model_config.get("logits", "all"),
        )
    except KeyError as exc:
        raise InvalidInputError(f"hf model_config lacks {exc}; re-export the model") from exc
    hf_common.check_rebuilt_layouts(model_config, model.layer_layouts)
    return model


def build_reference_model(model_config: dict):
    """The unmodified transformers model of an export (eager attention, its own masks), as a
    module with the export's inputs and outputs: the reference of ``sparse-attn check``.

    Layers whose pattern the user replaced run transformers' own eager attention with that
    pattern's mask added (the model's ``eager_attention_forward``), since the unmodified model
    has no such pattern.
    """
    import torch
    from torch import nn

    sparse = build_torch_model(dict(model_config, dtype="float32"))
    user_layers = [lp.layer for lp in sparse.patterns if lp.source == "user"]

    class Reference(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.sparse = sparse
            self.outputs_of = "transformers eager" + (
                f" (pattern mask on layers {user_layers})" if user_layers else ""
            )

        def forward(self, input_ids, attention_mask):
            from sparse_attn.models.attention import attn_implementation

            hf = self.sparse.hf
            impl = MASKED_EAGER if user_layers else "eager"
            with attn_implementation(hf, impl), torch.no_grad():
                return reference_outputs(
                    hf, input_ids, attention_mask, self.sparse.causal_lm, self.sparse.logits
                )

    if user_layers:
        _register_masked_eager()
    return Reference().eval()


#: Registry name of transformers' eager attention with the layer's pattern as an added mask.
MASKED_EAGER = "sparse_attn_masked_eager"


def _masked_eager_forward(module, query, key, value, attention_mask, **kwargs):
    """The module's own ``eager_attention_forward`` with the layer's token mask (and the
    padding mask) as an additive ``[B, 1, S, S]`` mask. Reference only (O(S^2) memory)."""
    import importlib

    import torch

    from sparse_attn.models.attention import CORE_ATTR

    core = getattr(module, CORE_ATTR)
    s = query.shape[2]
    tok = torch.from_numpy(core.layout.token_mask(s)[0, :s, :s].copy())  # same pattern per head
    allowed = tok[None, None]
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, None, -s:].bool()
    add = torch.zeros(allowed.shape, dtype=query.dtype)
    add = add.masked_fill(~allowed, torch.finfo(query.dtype).min)
    eager = importlib.import_module(type(module).__module__).eager_attention_forward
    return eager(module, query, key, value, add, **kwargs)


def _register_masked_eager() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    from sparse_attn.models.attention import padding_mask

    AttentionInterface.register(MASKED_EAGER, _masked_eager_forward)
    AttentionMaskInterface.register(MASKED_EAGER, padding_mask)


def example_inputs(model, max_seq_len: int):
    """Tracing batch, a longer check batch, and the window-crossing check batch."""
    vocab = int(getattr(model.hf.config.get_text_config(), "vocab_size", 0) or 2)
    example, check = hf_common.dynamic_length_inputs(max_seq_len, vocab)
    s = check_length(model)
    # Two rows (the second padded) unless the logits would be large (a 262k vocabulary).
    rows = 2 if 2 * s * vocab <= _MAX_CHECK_LOGITS else 1
    long = hf_common.random_token_inputs(rows, s, vocab, seed=3, low=min(3, vocab - 1), pad_last=7)
    return example, check, long


def export_onnx(
    output_path,
    *,
    model_dir,
    pattern=None,
    layers=None,
    block_size: int | None = None,
    max_seq_len: int | None = None,
    dtype: str = "float32",
    causal: bool = False,
    verbose: bool = True,
    logits: str = "all",
):
    """Export a checkpoint with sparse attention to one ONNX file (module docstring).

    Args:
        output_path: ``.onnx`` path.
        model_dir: checkpoint directory or built-in name.
        pattern / layers: user pattern and the layers it replaces (default: the config's).
        block_size: tokens per block (default 64).
        max_seq_len: longest S (default ``min(4096, positions)``).
        dtype: ``"float32"`` | ``"float16"``.
        causal: ignored: causality is the model's own (accepted for the common signature).
        verbose: print the per-layer table and the checks.
        logits: causal LMs: ``"all"`` (``logits [B, S, vocab]``) or ``"last"`` (``[B, 1,
            vocab]``, each row's last real token: a prefill's output, without the full-vocabulary
            tensor of every position).

    Returns:
        The written path.

    Raises:
        InvalidInputError: bad checkpoint or arguments (before the export).
        RuntimeError: a failed check (unmodified-model comparison, ONNX checks, ORT).
    """
    from sparse_attn.export import exporter
    from sparse_attn.export.metadata import build_metadata

    hf_common.torch_dtype(dtype)
    path = hf_common.as_path(output_path)
    block_size = DEFAULT_BLOCK_SIZE if block_size is None else block_size
    model = build_model(
        model_dir,
        pattern=pattern,
        layers=layers,
        block_size=block_size,
        max_seq_len=max_seq_len,
        dtype="float32",
        logits=logits,
    )
    max_seq_len = model.max_seq_len
    if verbose:
        print_table(model)
    example, check, long = example_inputs(model, max_seq_len)
    if any(lp.source == "user" for lp in model.patterns):
        if verbose:
            print("unmodified-model check: skipped (a user pattern replaces the model's own)")
    else:
        errs = hf_check(model, long)
        if verbose:
            parts = ", ".join(f"{k} max_abs_err={v:.2e}" for k, v in errs.items())
            print(
                f"unmodified-model check: sparse torch vs transformers eager at S={long['input_ids'].shape[1]} "
                f"(real tokens): {parts}: PASS"
            )
    model = model.to(hf_common.torch_dtype(dtype))
    with __import__("torch").no_grad():
        output_names = list(model(**example))
    table = layer_table(model)
    model_config = model_config_for(model, pattern=pattern, layers=layers, dtype=dtype)
    model_config["layout_hash"] = hf_common.layouts_hash(model.layer_layouts)
    metadata = build_metadata(
        model=NAME,
        layout=model.layer_layouts,
        dtype=dtype,
        model_config=model_config,
        max_seq_len=max_seq_len,
        num_heads=model.num_heads,
        head_dim=model.head_dim,
        pattern=hf_common.pattern_summary(model.layer_layouts),
        causal=model.patterns[0].causal,
        static_seq_len=False,
    )
    metadata[LAYER_PATTERNS_KEY] = json.dumps(table)
    tol = opspec.tolerance("model", dtype) if dtype == "float16" else ORT_CHECK_TOLERANCE
    result = exporter.export_model(
        model,
        example,
        path,
        output_names=output_names,
        dynamic_axes=exporter.dynamic_axes_for(example, static_seq_len=False, seq_axis=1),
        metadata=metadata,
        check_inputs=[example, check, long],
        tolerance=tol,
        protected_paths=list(Path(model.model_dir).glob("*")),
        verbose=verbose,
    )
    return Path(result.path)
