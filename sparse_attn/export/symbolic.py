"""The export-aware call of ``sparse_attn::BlockSparseAttention``.

:func:`sparse_attention` is the one place a model calls the op. Under
``torch.onnx.export(..., dynamo=True)`` it emits a bare custom node with
``torch.onnx.ops.symbolic`` (a full onnxscript body through ``custom_translation_table``
would be inlined by the exporter and the custom node lost); everywhere else it runs the torch
custom op ``torch.ops.sparse_attn.block_sparse_attention``. The node's inputs, attributes
and output shape all come from ``opspec.SCHEMA``.
"""

from __future__ import annotations

import inspect

import torch

from sparse_attn import opspec

_ARG_NAMES = opspec.SCHEMA.call_arg_names()
_OPTIONAL = set(opspec.SCHEMA.optional_inputs())


def sparse_attention(*args, max_seq_len: int | None = None, **kwargs) -> torch.Tensor:
    """Block-sparse attention over a layout given as tensors; exportable to ONNX.

    Arguments: the op's, in ``opspec.SCHEMA.call_arg_names()`` order (positional or by
    name; ``key_padding_mask`` may be omitted):

    * ``query [B, H, S, D]`` float32 or float16; ``key [B, Hkv, S, D]`` with ``H % Hkv == 0``;
      ``value [B, Hkv, S, Dv]``, same dtype; ``D, Dv <= 256``;
    * ``row_ptr``, ``col_idx``, ``mask_idx``, ``masks``: the layout for its ``seq_len``
      (:func:`sparse_attn.ops.layout_tensors`), registered as module buffers so that they
      become constant initializers of the exported model;
    * ``key_padding_mask``: optional ``[B, S]`` (bool, or 0/1 integers), True = real token;
    * ``block_size`` (tokens) and ``scale`` (a Python float): the node's attributes.

    Args:
        max_seq_len: the layout's ``seq_len`` (optional). Recorded on the node
            (``opspec.NODE_LAYOUT_SEQ_LEN_KEY`` in its ``metadata_props``) so that the
            function body refuses longer requests; without it the guard is
            ``nQB * block_size``.

    Returns:
        ``[B, H, S, Dv]`` in the dtype of ``query``: softmax/accumulation in fp32, rows
        with no visible key are 0.

    Raises:
        TypeError: a missing or unknown argument.
        InvalidInputError: from the torch op on inconsistent shapes or arguments (eager).
    """
    named = _bind(args, kwargs)
    kpm = named["key_padding_mask"]
    if kpm is not None and kpm.dtype != torch.bool:
        named["key_padding_mask"] = kpm != 0
    block_size, scale = int(named["block_size"]), float(named["scale"])
    if torch.onnx.is_in_onnx_export():
        inputs = [named[n] for n in opspec.SCHEMA.onnx_input_names()]
        while inputs and inputs[-1] is None:  # absent trailing optional inputs
            inputs.pop()
        shapes = {n: None if named[n] is None else named[n].shape for n in opspec.INPUT_NAMES}
        meta = None
        if max_seq_len is not None:
            meta = {opspec.NODE_LAYOUT_SEQ_LEN_KEY: str(int(max_seq_len))}
        return torch.onnx.ops.symbolic(
            opspec.QUALIFIED_NAME,
            inputs,
            opspec.SCHEMA.onnx_attributes(block_size, scale),
            dtype=named["query"].dtype,
            shape=opspec.SCHEMA.output_shape(shapes),
            version=opspec.OP_VERSION,
            metadata_props=meta,
        )
    import sparse_attn.ops  # noqa: F401  (registers torch.ops.sparse_attn.*)

    named["block_size"], named["scale"] = block_size, scale
    return torch.ops.sparse_attn.block_sparse_attention(*(named[n] for n in _ARG_NAMES))


def _bind(args, kwargs) -> dict:
    if len(args) > len(_ARG_NAMES):
        raise TypeError(f"sparse_attention takes {len(_ARG_NAMES)} arguments, got {len(args)}")
    named = dict(zip(_ARG_NAMES, args, strict=False))
    for k, v in kwargs.items():
        if k not in _ARG_NAMES or k in named:
            raise TypeError(f"sparse_attention got an unexpected or repeated argument {k!r}")
        named[k] = v
    for n in _ARG_NAMES:
        if n not in named:
            if n not in _OPTIONAL:
                raise TypeError(f"sparse_attention is missing the argument {n!r}")
            named[n] = None
    return named


def _signature() -> inspect.Signature:
    """The schema's arguments (``key_padding_mask`` may be ``None``) + ``max_seq_len``."""
    pos = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter(n, pos) for n in _ARG_NAMES]
    kw = inspect.Parameter("max_seq_len", inspect.Parameter.KEYWORD_ONLY, default=None)
    return inspect.Signature([*params, kw])


sparse_attention.__signature__ = _signature()
