"""Helpers shared by the Hugging Face model families (minilm, bigbird, longformer, mistral).

Every family replaces the attention *core* of a Hugging Face model (``softmax(Q K^T) V``) by
the project's op ``sparse_attn::BlockSparseAttention`` and keeps Hugging Face's own modules
(embeddings, projections, feed-forward, norms) for everything else, so the exported model
computes what the original computes wherever the pattern allows it.

The op is reached through the export package's :class:`~sparse_attn.export.modules.SparseAttention`
module (layout held as buffers; the ONNX node is emitted under ``torch.onnx.export``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sparse_attn import opspec
from sparse_attn.errors import InvalidInputError


def torch_dtype(name: str):
    """Map ``"float32"`` / ``"float16"`` to the torch dtype.

    Raises:
        InvalidInputError: on any other name.
    """
    import torch

    table = {"float32": torch.float32, "float16": torch.float16}
    if name not in table:
        raise InvalidInputError(f"dtype must be one of {list(table)}, got {name!r}")
    return table[name]


def check_positive_int(name: str, value: Any, *, minimum: int = 1, maximum: int | None = None):
    """Return ``int(value)`` after checking ``minimum <= value <= maximum``.

    Raises:
        InvalidInputError: naming the argument, the allowed range and the value received.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidInputError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        allowed = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise InvalidInputError(f"{name} must be {allowed}, got {value}")
    return value


def resolve_layout(pattern, *, max_seq_len: int, block_size: int, num_heads: int, causal: bool):
    """Compile ``pattern`` into a :class:`~sparse_attn.layout.BlockLayout` for the model.

    Args:
        pattern: a :class:`BlockLayout` (used as is, after checks), or anything
            :func:`sparse_attn.layout.compile_layout` accepts (spec string, preset name,
            Pattern object, list of those, one per head).
        max_seq_len: tokens the layout covers (the model's largest S).
        block_size: tokens per block.
        num_heads: attention heads H of the model; the layout gets one pattern row per head.
        causal: intersect the pattern with ``j <= i``.

    Returns:
        BlockLayout with ``seq_len == max_seq_len``, ``num_heads == num_heads``.

    Raises:
        InvalidInputError: if a given BlockLayout does not fit the model, or the pattern is bad.
    """
    from sparse_attn.layout import BlockLayout

    if isinstance(pattern, BlockLayout):
        lay = pattern
        if lay.seq_len != max_seq_len or lay.block_size != block_size:
            raise InvalidInputError(
                f"layout is for seq_len={lay.seq_len}, block_size={lay.block_size}, but the "
                f"export asks for max_seq_len={max_seq_len}, block_size={block_size}; "
                f"compile the layout with the same sizes"
            )
        if lay.num_heads != num_heads:
            raise InvalidInputError(
                f"layout has {lay.num_heads} heads but the model has {num_heads}; "
                f"give one pattern per head or a single pattern"
            )
        return lay
    from sparse_attn.layout import compile_layout

    try:
        return compile_layout(
            pattern, seq_len=max_seq_len, block_size=block_size, num_heads=num_heads, causal=causal
        )
    except InvalidInputError:
        raise
    except ValueError as exc:
        raise InvalidInputError(f"pattern {pattern!r}: {exc}") from exc


def sparse_attention_module(layout, scale: float | None = None):
    """The project's attention module for ``layout`` (``export.modules.SparseAttention``).

    Its ``forward(query, key, value, key_padding_mask=None)`` takes ``query [B, H, S, D]``,
    ``key [B, Hkv, S, D]``, ``value [B, Hkv, S, Dv]`` and a ``[B, S]`` bool key padding mask
    (True = real token), and returns ``[B, H, S, Dv]`` in the query's dtype; under ``torch.onnx.export`` it emits
    one ``sparse_attn::BlockSparseAttention`` node.
    """
    from sparse_attn.export.modules import SparseAttention

    return SparseAttention(layout, scale=scale)


def check_state_dict(
    tensors: Mapping[str, Any],
    model,
    *,
    source: str,
    ignore: Sequence[str] = (),
    hint: str = "use the checkpoint that belongs to this config",
) -> None:
    """Check that a checkpoint's tensor names and shapes match ``model`` before loading.

    Args:
        tensors: name -> object with ``.shape`` (torch tensor or safetensors slice shape list).
        model: the torch module whose ``state_dict()`` the checkpoint must fill.
        source: file name shown in the error.
        ignore: checkpoint names that the model does not keep (e.g. non-persistent buffers).
        hint: how to fix it, appended to the message.

    Raises:
        InvalidInputError: listing missing, unexpected and mis-shaped tensors.
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v) for k, v in tensors.items() if k not in ignore}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    bad = sorted(
        f"{k}: file {list(got[k])} vs model {list(expected[k])}"
        for k in set(got) & set(expected)
        if got[k] != expected[k]
    )
    if missing or unexpected or bad:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        if bad:
            parts.append(f"wrong shapes {bad[:3]}")
        raise InvalidInputError(
            f"{source} does not match the model config: {'; '.join(parts)}; {hint}"
        )


def seeded_init(seed: int):
    """Context manager: deterministic random weights for a model built inside it.

    Forks torch's RNG (the caller's global RNG state is left untouched) and seeds it with
    ``seed``, so ``Model(config)`` built inside gives the same weights in any process with the
    same torch/transformers versions. Used by the random-weight families so that the runtime's
    torch backend can rebuild the exact model from ``model_config``.
    """
    import torch

    class _Ctx:
        def __enter__(self):
            self._fork = torch.random.fork_rng(devices=[])
            self._fork.__enter__()
            torch.manual_seed(int(seed))
            return self

        def __exit__(self, *exc):
            return self._fork.__exit__(*exc)

    return _Ctx()


def merged_config(defaults: Mapping[str, Any], config: Mapping[str, Any] | None) -> dict:
    """``defaults`` updated with ``config``, without a saved config's ``transformers_version``.

    The keyword arguments of a family's Hugging Face config class (``make_config``).
    """
    d = dict(defaults)
    if config:
        d.update({k: v for k, v in config.items() if k != "transformers_version"})
    return d


def seeded_hf_model(model_class, config, *, seed: int, dtype: str = "float32", **kwargs):
    """``model_class(config, **kwargs)`` with seeded random weights, eval mode, in ``dtype``.

    The weights are drawn inside :func:`seeded_init` (same weights for the same seed).

    Raises:
        InvalidInputError: a bad dtype name.
    """
    with seeded_init(seed):
        model = model_class(config, **kwargs)
    model.eval()
    return model.to(torch_dtype(dtype))


def seed_cli_option(default: int) -> dict:
    """The ``--seed`` entry of a random-weight family's ``CLI_OPTIONS``."""
    return {"type": "int", "help": "seed of the random weights", "default": default}


def config_to_json(config) -> dict:
    """A Hugging Face ``PretrainedConfig`` as a JSON-safe dict (``to_diff_dict``-like)."""
    d = config.to_dict()
    return json.loads(json.dumps(d, default=str))


def as_path(output_path) -> Path:
    """``Path(output_path)`` with the parent directory created.

    Raises:
        InvalidInputError: when the path has no ``.onnx`` suffix.
    """
    p = Path(output_path)
    if p.suffix != ".onnx":
        raise InvalidInputError(f"output path must end in .onnx, got {str(p)!r}")
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def layouts_hash(layouts) -> str:
    """Hash of the model's layouts as written to ``sparse_attn.layout_hash`` (export metadata)."""
    from sparse_attn.export.metadata import layouts_hash as _hash

    return _hash(list(layouts))


def pattern_for_config(pattern):
    """JSON-safe form of a ``pattern`` argument for ``model_config`` (rebuilt by ``build_model``).

    A spec string or a list of them is kept; a Pattern object becomes its ``spec()`` string;
    a BlockLayout becomes its ``spec`` (rebuild recompiles it and checks the layout hash).
    """
    from sparse_attn.layout import BlockLayout

    if pattern is None or isinstance(pattern, str):
        return pattern
    if isinstance(pattern, BlockLayout):
        return pattern.spec
    if isinstance(pattern, (list, tuple)):
        return [pattern_for_config(p) for p in pattern]
    spec = getattr(pattern, "spec", None)
    return spec() if callable(spec) else str(pattern)


def check_rebuilt_layouts(model_config: dict, layouts) -> None:
    """Refuse a rebuilt model whose layouts differ from the exported ones.

    Raises:
        InvalidInputError: the layout hash recorded in ``model_config`` differs (e.g. the
            pattern was a hand-made layout whose spec does not compile to the same layout, or
            the pattern compiler changed since the export).
    """
    want = model_config.get("layout_hash")
    got = layouts_hash(layouts)
    if want and want != got:
        raise InvalidInputError(
            f"rebuilt layout hash {got[:12]} differs from the exported {want[:12]}; the model's "
            f"pattern {model_config.get('pattern')!r} cannot be rebuilt from its spec: re-export "
            f"it from a spec string"
        )


def model_layouts(model) -> list:
    """The layouts of a family model, one per layer where they differ (``layer_layouts``),
    else the model's single ``layout`` in a list."""
    per_layer = getattr(model, "layer_layouts", None)
    return list(per_layer) if per_layer is not None else [model.layout]


def pattern_summary(layouts) -> str:
    """``sparse_attn.pattern`` of a model: the layouts' spec when they all share it, else
    ``"layer 0: <spec>; layer 1: <spec>; ..."``."""
    specs = [lay.spec for lay in layouts]
    if len(set(specs)) == 1:
        return specs[0]
    return "; ".join(f"layer {i}: {sp}" for i, sp in enumerate(specs))


def family_model_config(family: str, pattern, *, block_size, max_seq_len, dtype, **extra) -> dict:
    """The JSON ``sparse_attn.model_config`` of a family export (read by
    :func:`rebuild_family_model`): the common keys, then ``extra`` in the order given.

    ``extra`` takes the family's own ``build_model`` arguments; ``config`` is stored as a
    dict, ``seed`` and ``num_global`` as ints, ``causal`` as a bool.
    """
    convert = {"config": lambda c: dict(c or {}), "seed": int, "num_global": int, "causal": bool}
    d = {
        "family": family,
        "pattern": pattern_for_config(pattern),
        "block_size": int(block_size),
        "max_seq_len": int(max_seq_len),
        "dtype": dtype,
    }
    d.update({k: convert.get(k, lambda v: v)(v) for k, v in extra.items()})
    return d


def rebuild_family_model(family: str, build_model, model_config: dict, **defaults):
    """Rebuild a family's eager model from its ``sparse_attn.model_config`` (``build_torch_model``).

    Calls ``build_model(pattern, block_size=..., max_seq_len=..., dtype=..., **others)`` where
    ``pattern``, ``block_size`` and ``max_seq_len`` must be in ``model_config``, ``dtype``
    defaults to ``"float32"`` and each other argument is taken from ``model_config`` with the
    default given in ``defaults`` (``causal`` as a bool). Then checks the rebuilt layouts
    against the exported ones (:func:`check_rebuilt_layouts`).

    Raises:
        InvalidInputError: missing keys, or layouts that differ from the exported ones.
    """
    try:
        pattern, block_size, max_seq_len = (
            model_config[k] for k in ("pattern", "block_size", "max_seq_len")
        )
        dtype = model_config.get("dtype", "float32")
        others = {k: model_config.get(k, d) for k, d in defaults.items()}
        if "causal" in others:
            others["causal"] = bool(others["causal"])
        model = build_model(
            pattern, block_size=block_size, max_seq_len=max_seq_len, dtype=dtype, **others
        )
    except KeyError as exc:
        raise InvalidInputError(f"{family} model_config lacks {exc}; re-export the model") from exc
    check_rebuilt_layouts(model_config, model_layouts(model))
    return model


def _vocab_size(model) -> int | None:
    """``config.vocab_size`` of the (first) Hugging Face model inside ``model``, or None."""
    for m in model.modules():
        v = getattr(getattr(m, "config", None), "vocab_size", None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def export_family(
    model,
    output_path,
    *,
    family: str,
    example_inputs: dict,
    check_inputs: Sequence[dict] | None,
    output_names: Sequence[str],
    model_config: dict,
    causal: bool,
    max_seq_len: int,
    dtype: str,
    static_seq_len: bool | None = None,
    tolerance=None,
) -> Path:
    """Run the export pipeline (:func:`sparse_attn.export.exporter.export_model`) for a family.

    Args:
        model: module whose ``forward(**example_inputs)`` returns ``{output_name: tensor}``;
            it has ``num_heads``, ``head_dim`` and its layouts (:func:`model_layouts`), which
            give the metadata's heads, head dim, ``sparse_attn.layout_hash`` and pattern
            (:func:`pattern_summary`).
        output_path: ``.onnx`` file to write.
        family: ``sparse_attn.model`` metadata value.
        example_inputs: ordered ``{name: tensor}`` (the ONNX input order).
        check_inputs: list of input dicts for the ORT-vs-PyTorch check (default:
            ``[example_inputs]``).
        output_names: ONNX output names.
        model_config: JSON-safe dict for ``build_torch_model`` (the layout hash is added).
        static_seq_len: True when S is fixed at ``max_seq_len`` (no ``seq_len`` dynamic axis);
            default: when a layout of the model ``requires_static_seq_len``.
        tolerance: ``(atol, rtol)`` or :class:`~sparse_attn.opspec.Tolerance` of the ORT
            check; default ``opspec.tolerance("model", dtype)`` (a whole model: fp16 rounding
            in ONNX Runtime and torch differs more with depth than one op's).
        causal, max_seq_len, dtype: metadata
            (:func:`sparse_attn.export.metadata.build_metadata`). ``max_seq_len`` is the
            model's input length; each op's length guard in the function body is its own
            layout length (node metadata, :func:`sparse_attn.export.exporter.attach_functions`),
            which may be longer (BigBird appends key copies).

    Returns:
        The written path.
    """
    from sparse_attn.export import exporter
    from sparse_attn.export.metadata import build_metadata

    layouts = model_layouts(model)
    if static_seq_len is None:
        static_seq_len = any(lay.requires_static_seq_len for lay in layouts)
    if tolerance is None:
        tolerance = opspec.tolerance("model", dtype)
    model_config = dict(model_config, layout_hash=layouts_hash(layouts))
    dynamic_axes = exporter.dynamic_axes_for(
        example_inputs, static_seq_len=static_seq_len, seq_axis=1
    )
    metadata = build_metadata(
        model=family,
        layout=layouts,
        dtype=dtype,
        model_config=model_config,
        max_seq_len=max_seq_len,
        num_heads=int(model.num_heads),
        head_dim=int(model.head_dim),
        pattern=pattern_summary(layouts),
        causal=causal,
        static_seq_len=bool(static_seq_len),
    )
    vocab = _vocab_size(model) if "input_ids" in example_inputs else None
    if vocab:  # every text model records it: runtimes refuse out-of-range token ids
        metadata[opspec.meta_key("vocab_size")] = str(vocab)
    result = exporter.export_model(
        model,
        example_inputs,
        as_path(output_path),
        output_names=list(output_names),
        dynamic_axes=dynamic_axes,
        metadata=metadata,
        check_inputs=check_inputs,
        tolerance=tolerance,
    )
    return Path(getattr(result, "path", output_path))


def random_token_inputs(
    batch: int, seq_len: int, vocab_size: int, *, seed: int, low: int = 3, pad_last: int = 0
) -> dict:
    """Seeded random ``input_ids`` / ``attention_mask`` (int64 ``[batch, seq_len]``).

    Ids are drawn from ``low..vocab_size-1`` (above the special ids); the last row has its
    final ``pad_last`` positions padded (mask 0) when ``batch > 1``.
    """
    import torch

    g = torch.Generator().manual_seed(int(seed))
    ids = torch.randint(low, int(vocab_size), (batch, seq_len), generator=g, dtype=torch.int64)
    mask = torch.ones(batch, seq_len, dtype=torch.int64)
    if batch > 1 and pad_last:
        mask[-1, seq_len - min(pad_last, seq_len - 1) :] = 0
    return {"input_ids": ids, "attention_mask": mask}


def dynamic_length_inputs(max_seq_len: int, vocab_size: int):
    """Trace and check inputs of a dynamic-S family export (:func:`random_token_inputs`).

    Returns:
        ``(example, check)``: the tracing batch (2 rows, ``S1 = max(2, min(max_seq_len, 24))``
        tokens, seed 1, last row's final 3 positions padded) and a longer check batch (2 rows,
        ``max(2, min(max_seq_len, 2 * S1 + 5))`` tokens, seed 2, 5 padded). With
        ``max_seq_len = 1`` the tracing batch is already too long and the export refuses it.
    """
    s1 = max(2, min(max_seq_len, 24))
    s2 = max(2, min(max_seq_len, 2 * s1 + 5))
    example = random_token_inputs(2, s1, vocab_size, seed=1, pad_last=3)
    check = random_token_inputs(2, s2, vocab_size, seed=2, pad_last=5)
    return example, check


def split_heads(x, b: int, s: int, num_heads: int, head_dim: int):
    """``[B, S, num_heads * head_dim]`` -> ``[B, num_heads, S, head_dim]`` (the op's layout)."""
    return x.view(b, s, num_heads, head_dim).transpose(1, 2)


def merge_heads(ctx, b: int, s: int, num_heads: int, head_dim: int):
    """``[B, num_heads, S, head_dim]`` -> ``[B, S, num_heads * head_dim]`` (undoes
    :func:`split_heads`)."""
    return ctx.transpose(1, 2).reshape(b, s, num_heads * head_dim)


def encoder_head_sizes(config) -> tuple[int, int]:
    """``(num_heads, head_dim)`` of a BERT-style encoder config (``hidden_size`` split evenly
    over ``num_attention_heads``)."""
    return int(config.num_attention_heads), int(config.hidden_size // config.num_attention_heads)


def encoder_qkv(layer, hidden, b: int, s: int, num_heads: int, head_dim: int):
    """Query, key and value ``[B, H, S, D]`` of a BERT-style encoder layer (Hugging Face's
    ``BertLayer``, ``BigBirdLayer``, ``LongformerLayer``: ``layer.attention.self.query``,
    ``.key``, ``.value``) for ``hidden`` ``[B, S, hidden]``."""
    sa = layer.attention.self
    return tuple(
        split_heads(proj(hidden), b, s, num_heads, head_dim)
        for proj in (sa.query, sa.key, sa.value)
    )


def encoder_layer_output(layer, ctx, hidden, b: int, s: int, num_heads: int, head_dim: int):
    """The rest of a BERT-style encoder layer after its attention core: heads merged, output
    projection with residual and norm (``layer.attention.output``), then the feed-forward
    block (``layer.intermediate``, ``layer.output``). Returns the layer's hidden states."""
    ctx = merge_heads(ctx, b, s, num_heads, head_dim)
    attn_out = layer.attention.output(ctx, hidden)
    return layer.output(layer.intermediate(attn_out), attn_out)
