"""transformers' attention registry running ``sparse_attn::BlockSparseAttention``.

One name, :data:`ATTN_IMPLEMENTATION` (``"sparse_attn"``), is registered twice:

* ``AttentionInterface.register(name, attention_forward)``: every architecture that dispatches
  its attention core through the registry (``ALL_ATTENTION_FUNCTIONS``) calls
  :func:`attention_forward` with its own query/key/value ``[B, H|Hkv, S, D]`` (after its own
  projections, norms and rotary embeddings), its own ``scaling`` and, on sliding layers, its
  ``sliding_window``. The function runs the op with the layout attached to that layer
  (:func:`attach`) and returns ``[B, S, H, Dv]`` as the registry expects.
* ``AttentionMaskInterface.register(name, padding_mask)``: transformers' mask builders
  (``create_causal_mask`` & co.) call it instead of building an ``S x S`` mask; it returns the
  ``[B, S]`` key padding mask (True = real token) or ``None``. The pattern (window, causal,
  global tokens) lives in the layout, so memory stays linear in S. Without a registered mask
  function transformers would silently hand the attention function ``None``.

Layouts are attached per attention module (the module of layer ``module.layer_idx``). Which
modules dispatch through the registry is found by running the model once on a few tokens with
a recording function (:func:`probe`), so no architecture list is needed; the probe also
refuses what the op cannot compute (logit soft-capping, attention sinks).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from sparse_attn.errors import InvalidInputError

#: The name under which the attention function and the mask function are registered.
ATTN_IMPLEMENTATION = "sparse_attn"
#: Name of the recording function used by :func:`probe`.
PROBE_IMPLEMENTATION = "sparse_attn_probe"
#: Attribute of a transformers attention module holding its layout module.
CORE_ATTR = "_sparse_attn_core"


# ----------------------------------------------------------------------------- registry
def attention_forward(
    module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs,
):
    """The registered attention function (transformers' ``AttentionInterface`` signature).

    Args:
        module: the calling attention module; its layout module is ``module._sparse_attn_core``
            (:func:`attach`).
        query: ``[B, H, S, D]``; key ``[B, Hkv, S, D]``; value ``[B, Hkv, S, Dv]``
            (``H % Hkv == 0``; K/V heads not repeated).
        attention_mask: ``[B, S]`` bool key padding mask from :func:`padding_mask`, or ``None``.
        dropout: must be 0 (inference).
        scaling: softmax scale (the model's own, e.g. ``query_pre_attn_scalar ** -0.5``);
            default ``D ** -0.5``.
        sliding_window: the layer's window as the model passes it; the layout already holds
            it (checked at :func:`attach` time), so it is not used here.
        softcap: logit soft-capping, which the op cannot compute (refused).

    Returns:
        ``(output [B, S, H, Dv], None)``.

    Raises:
        InvalidInputError: a module without an attached layout, soft-capping, attention sinks,
            a 4D mask, dropout in training.
    """
    from sparse_attn.export.symbolic import sparse_attention

    core = getattr(module, CORE_ATTR, None)
    if core is None:
        raise InvalidInputError(
            f"{type(module).__name__} (layer {getattr(module, 'layer_idx', '?')}) has no sparse "
            "layout attached; wrap the model with sparse_attn.models.use_sparse_attention"
        )
    _refuse_unsupported(module, softcap, kwargs)
    if dropout and module.training:
        raise InvalidInputError("attention dropout is not supported; call model.eval()")
    kpm = None
    if attention_mask is not None:
        if attention_mask.dim() != 2:
            raise InvalidInputError(
                f"sparse attention takes a [B, S] padding mask, got a {attention_mask.dim()}D "
                "mask; pass the 2D attention_mask (1 = real token)"
            )
        kpm = attention_mask[:, -key.shape[2] :]
        if kpm.dtype != torch.bool:
            kpm = kpm != 0
    if not torch.compiler.is_compiling() and not torch.onnx.is_in_onnx_export():
        core._check(query)
    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    out = sparse_attention(
        query,
        key.to(query.dtype),
        value.to(query.dtype),
        core.row_ptr,
        core.col_idx,
        core.mask_idx,
        core.masks,
        kpm,
        core.block_size,
        scale,
        max_seq_len=core.max_seq_len,
    )
    return out.transpose(1, 2).contiguous(), None


def _refuse_unsupported(module, softcap, kwargs) -> None:
    if softcap:
        raise InvalidInputError(
            f"layer {getattr(module, 'layer_idx', '?')} uses attention logit soft-capping "
            f"(softcap={softcap}), which BlockSparseAttention does not compute; set "
            "attn_logit_softcapping to null in config.json only if the model was trained without it"
        )
    if kwargs.get("s_aux") is not None:
        raise InvalidInputError(
            f"layer {getattr(module, 'layer_idx', '?')} uses attention sinks (s_aux), which "
            "BlockSparseAttention does not compute"
        )


def padding_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function=None,
    attention_mask: torch.Tensor | None = None,
    **kwargs,
):
    """The registered mask function: the ``[B, kv_length]`` bool key padding mask or ``None``.

    Never builds an ``S x S`` mask (the pattern is in the layout) and never inspects values
    (``.all()`` on a traced tensor would break ``torch.export``).
    """
    if attention_mask is None:
        return None
    return attention_mask[:, -kv_length:]


@functools.cache
def register() -> str:
    """Register :func:`attention_forward` and :func:`padding_mask` under
    :data:`ATTN_IMPLEMENTATION` (idempotent). Returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, padding_mask)
    AttentionInterface.register(PROBE_IMPLEMENTATION, _probe_forward)
    AttentionMaskInterface.register(PROBE_IMPLEMENTATION, padding_mask)
    return ATTN_IMPLEMENTATION


# ----------------------------------------------------------------------------- probe
@dataclass
class AttentionCall:
    """What one attention module passed to the registry during :func:`probe`.

    Attributes:
        module: the attention module.
        layer_idx: its ``layer_idx`` (``None`` when it has none).
        num_heads / num_kv_heads / head_dim / value_dim: from the tensors' shapes.
        sliding_window: the ``sliding_window`` keyword it passed (``None`` on full layers).
        is_causal: the module's ``is_causal`` flag (``None`` when it has none).
        scaling: the ``scaling`` keyword.
    """

    module: torch.nn.Module
    layer_idx: int | None
    num_heads: int
    num_kv_heads: int
    head_dim: int
    value_dim: int
    sliding_window: int | None
    is_causal: bool | None
    scaling: float | None
    extra: dict = field(default_factory=dict)


_PROBE_LOG: list[AttentionCall] | None = None


def _probe_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    if _PROBE_LOG is not None:
        _PROBE_LOG.append(
            AttentionCall(
                module=module,
                layer_idx=getattr(module, "layer_idx", None),
                num_heads=int(query.shape[1]),
                num_kv_heads=int(key.shape[1]),
                head_dim=int(query.shape[-1]),
                value_dim=int(value.shape[-1]),
                sliding_window=kwargs.get("sliding_window"),
                is_causal=getattr(module, "is_causal", None),
                scaling=None if scaling is None else float(scaling),
                extra={
                    "softcap": kwargs.get("softcap"),
                    "s_aux": kwargs.get("s_aux") is not None,
                },
            )
        )
    b, h, s, _ = query.shape
    return query.new_zeros(b, s, h, value.shape[-1]), None


@contextlib.contextmanager
def attn_implementation(model, name: str):
    """Temporarily switch ``model`` (and its sub-models) to the registered ``name``."""
    register()
    old = model.config._attn_implementation
    model.set_attn_implementation(name)
    try:
        yield model
    finally:
        model.set_attn_implementation(old)


def probe(model, *, vocab_size: int | None = None) -> list[AttentionCall]:
    """Run ``model`` once on 8 tokens and record every call into the attention registry.

    Returns:
        One :class:`AttentionCall` per attention module, in call order (duplicates dropped).

    Raises:
        InvalidInputError: the model never calls the registry (its attention is hand-written,
            e.g. Longformer or BigBird), or an attention module has no ``layer_idx``.
    """
    global _PROBE_LOG
    vocab = vocab_size or getattr(model.config.get_text_config(), "vocab_size", None) or 8
    ids = (torch.arange(8, dtype=torch.long) % max(1, min(vocab, 100))).unsqueeze(0)
    log: list[AttentionCall] = []
    with attn_implementation(model, PROBE_IMPLEMENTATION), torch.no_grad():
        _PROBE_LOG = log
        try:
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
        except Exception as exc:  # noqa: BLE001 - any failure means the model cannot be used
            from sparse_attn.models.checkpoint import supported_message

            raise InvalidInputError(
                f"{type(model).__name__} does not run on input_ids/attention_mask alone "
                f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]}); unsupported "
                f"architecture; {supported_message()}"
            ) from exc
        finally:
            _PROBE_LOG = None
    seen, calls = set(), []
    for c in log:
        if id(c.module) not in seen:
            seen.add(id(c.module))
            calls.append(c)
    if not calls:
        from sparse_attn.models.checkpoint import supported_message

        raise InvalidInputError(
            f"unsupported architecture: {type(model).__name__} does not dispatch its attention "
            f"through transformers' attention registry; {supported_message()}"
        )
    missing = [type(c.module).__name__ for c in calls if c.layer_idx is None]
    if missing and len(missing) == len(calls):
        # No module names its layer (e.g. DistilBERT): layers run in order, one call each.
        for i, c in enumerate(calls):
            c.layer_idx = i
        missing = []
    if missing:
        raise InvalidInputError(
            f"attention module(s) {sorted(set(missing))} have no layer_idx; the per-layer "
            "pattern cannot be chosen"
        )
    return calls


# ----------------------------------------------------------------------------- attach
def layer_cores(layouts: Sequence) -> tuple[list, list[int]]:
    """One ``SparseAttention`` module per distinct layout (shared by layers) and, per layer,
    the index of its module."""
    from sparse_attn.export.modules import SparseAttention

    cores, index, by_hash = [], [], {}
    for lay in layouts:
        key = lay.layout_hash()
        if key not in by_hash:
            by_hash[key] = len(cores)
            cores.append(SparseAttention(lay))
        index.append(by_hash[key])
    return cores, index


def attach(model, calls: Sequence[AttentionCall], cores: Sequence, index: Sequence[int]) -> None:
    """Attach ``cores[index[layer]]`` to the attention module of each layer (plain attribute,
    not a submodule, so the model's ``state_dict`` is unchanged).

    Raises:
        InvalidInputError: a layer the model calls that has no layout, or a layout whose head
            count differs from the layer's query heads.
    """
    for c in calls:
        if not 0 <= c.layer_idx < len(index):
            raise InvalidInputError(
                f"the model calls attention layer {c.layer_idx} but layouts were given for "
                f"{len(index)} layers"
            )
        core = cores[index[c.layer_idx]]
        if core.num_heads != c.num_heads:
            raise InvalidInputError(
                f"layer {c.layer_idx} has {c.num_heads} query heads but its layout has "
                f"{core.num_heads}; compile the layouts with num_heads={c.num_heads}"
            )
        object.__setattr__(c.module, CORE_ATTR, core)


def detach(calls: Sequence[AttentionCall]) -> None:
    """Remove the layouts attached by :func:`attach`."""
    for c in calls:
        if CORE_ATTR in c.module.__dict__:
            object.__delattr__(c.module, CORE_ATTR)


def install(model, layouts: Sequence, calls: Sequence[AttentionCall] | None = None):
    """Switch ``model`` to sparse attention for good (the export path).

    Probes the model (unless ``calls`` is given), attaches one layout module per distinct
    layout to the attention module of each layer and sets the model's attention
    implementation to :data:`ATTN_IMPLEMENTATION`.

    Args:
        model: a transformers ``PreTrainedModel``.
        layouts: one ``BlockLayout`` per layer (index = ``layer_idx``).
        calls: the model's :func:`probe` result.

    Returns:
        ``(cores, calls)``: ``torch.nn.ModuleList`` of the layout modules, which the caller
        must keep as a submodule (so their layout tensors are buffers of the exported module,
        hence constant initializers), and the probe.
    """
    calls = list(calls) if calls is not None else probe(model)
    cores, index = layer_cores(layouts)
    attach(model, calls, cores, index)
    register()
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    return torch.nn.ModuleList(cores), calls


@contextlib.contextmanager
def use_sparse_attention(model, layouts: Sequence, calls: Sequence[AttentionCall] | None = None):
    """Run ``model`` with ``sparse_attn::BlockSparseAttention`` inside this block.

    Args:
        model: a transformers ``PreTrainedModel`` (eval mode).
        layouts: one :class:`~sparse_attn.layout.BlockLayout` per layer (index = ``layer_idx``),
            ``num_heads`` = the layer's query heads.
        calls: the model's :func:`probe` result (probed here when omitted).

    Yields:
        The model, switched to :data:`ATTN_IMPLEMENTATION`; on exit the previous attention
        implementation is restored and the layouts detached.
    """
    calls = list(calls) if calls is not None else probe(model)
    cores, index = layer_cores(layouts)
    attach(model, calls, cores, index)
    try:
        with attn_implementation(model, ATTN_IMPLEMENTATION):
            yield model
    finally:
        detach(calls)
