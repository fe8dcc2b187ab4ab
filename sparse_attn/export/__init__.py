"""Export: PyTorch models with block-sparse attention -> one ONNX file (docs/spec.md).

This docstring is the authoritative contract between the export core (``symbolic``,
``modules``, ``function_body``, ``exporter``, ``metadata``, ``attention``) and the model
families built on it (``minilm``, ``bigbird``, ``longformer``, ``mistral``), the engines and
the runtime. Everything below is stable; additions are allowed, changes are not.

Families
--------
``FAMILIES`` maps a ``--model`` name to a module ``sparse_attn.export.<name>``. A family
module exposes:

* ``export_onnx(output_path, *, pattern, block_size, max_seq_len, dtype, causal,
  **family_kw) -> pathlib.Path``

  - ``pattern``: spec string | preset name | Pattern | list (one per head) | BlockLayout
    (a ready layout; its ``seq_len`` must equal ``max_seq_len`` when that is given).
  - ``block_size``: int tokens; ``max_seq_len``: int tokens or None (family default,
    e.g. MiniLM's 512 positions); ``dtype``: ``"float32"`` | ``"float16"``;
    ``causal``: bool.
  - ``family_kw``: family-specific options, all keyword, all with defaults. Their
    command-line form is declared in ``CLI_OPTIONS`` (below).
  - Writes the file through :func:`sparse_attn.export.exporter.export_model`, which runs
    every export-time check and prints the one-line ORT-vs-PyTorch summary; returns the
    written path. Raises ``InvalidInputError`` for bad arguments (before any work),
    ``UnsupportedEnvironmentError`` when a needed package is missing, ``RuntimeError``
    when an export-time check fails (the message names the check).

* ``build_torch_model(model_config: dict) -> torch.nn.Module`` rebuilds the eager
  PyTorch model from the JSON object stored in metadata key ``sparse_attn.model_config``
  (written by the family itself). The module is in eval mode; its ``forward`` takes the
  ONNX inputs as keyword tensors (same names, dtypes, shapes) and returns a
  ``dict[output_name, Tensor]`` with the ONNX output names. Inside, attention runs through
  :func:`sparse_attn.export.symbolic.sparse_attention` (i.e. the torch custom op), so the
  torch backend of ``Runtime`` computes what the ONNX file means.

* ``CLI_OPTIONS: dict[str, dict]`` (optional): family-specific command-line options,
  ``{python_name: {"type": "int"|"float"|"str"|"bool", "help": str,
  "default": value}}``. ``sparse-attn export --model F --some-option V`` passes
  ``some_option=V`` (``-`` -> ``_``) to ``export_onnx``; bool options are flags
  (``--flag`` / ``--no-flag``). Options the family does not declare are refused (exit 2).
  Keep the module importable without heavy work at import time (``--help`` lists options).

:func:`build_torch_model` (this package) dispatches on metadata key ``sparse_attn.model``.

The ONNX model every family writes
----------------------------------
* One ``sparse_attn::BlockSparseAttention`` node (``opspec.DOMAIN``/``opspec.OP_TYPE``,
  version ``opspec.OP_VERSION``) per attention layer, emitted by
  :func:`sparse_attn.export.symbolic.sparse_attention` (never spell the name yourself).
  Inputs in ``opspec.INPUT_NAMES`` order: query/key/value ``[B, H, S, D|Dv]``, the layout
  (``row_ptr``, ``col_idx``, ``mask_idx`` int32 and ``masks`` uint8) as constant
  initializers, optional ``key_padding_mask [B, S]`` (bool, True = real token).
  Attributes: ``opspec.OpAttributes(block_size, scale).as_onnx_attributes()``.
* A model-local FunctionProto of the same domain/name made of standard ONNX ops
  (``function_body.build_function``), attached after export by ``exporter.export_model``;
  ONNX Runtime and ``onnx.reference`` run it, TensorRT maps the node to the plugin.
  The body is block-sparse and baked from the layout; when a model holds several
  different layouts each gets its own body (``NodeProto.overload``).
* Dynamic dims: ``"batch"`` and ``"seq_len"`` (1..max_seq_len) unless the layout has
  ``requires_static_seq_len`` (then S is fixed at max_seq_len, inputs must be padded to it,
  metadata ``sparse_attn.static_seq_len = "true"``). Checked on the saved file.
* ``metadata_props``: every key of ``opspec.META_KEYS`` (``metadata.build_metadata``).
  ``sparse_attn.inputs``/``outputs`` are JSON ``[{"name", "dtype", "shape"}]`` with
  symbolic dims as strings. ``sparse_attn.pattern`` is the expanded spec (JSON list when
  heads differ). ``sparse_attn.model_config`` is whatever ``build_torch_model`` needs.
* float16 models: fp16 inputs/outputs; the op computes softmax and accumulation in fp32.

Pipeline for families (``exporter.export_model``)
-------------------------------------------------
``export_model(model, example_inputs, output_path, *, output_names, dynamic_axes,
metadata, check_inputs=None, tolerance=None, protected_paths=(), opset=20,
verbose=True) -> ExportResult``: ``model.forward``
takes keyword tensors named like the ONNX inputs and returns a dict keyed by
``output_names``; ``example_inputs`` is an ordered dict of those inputs (the ONNX input
order); ``dynamic_axes`` maps input name -> ``{axis: "batch" | "seq_len"}``. It exports
with ``torch.onnx.export(dynamo=True)``, attaches the function bodies, refuses non-custom
op identities, checks symbolic dims on the saved file, runs ``onnx.checker`` (full) and
strict shape inference, writes metadata, runs ONNX Runtime CPU against the PyTorch
model on ``check_inputs`` (default: ``example_inputs``) and prints one line. It never
overwrites an input file and creates the parent directories of ``output_path``.
"""

from __future__ import annotations

import importlib
import json
from types import ModuleType

#: ``--model`` name -> module implementing the family (see the module docstring).
FAMILIES = {
    "attention": "sparse_attn.export.attention",
    "minilm": "sparse_attn.export.minilm",
    "bigbird": "sparse_attn.export.bigbird",
    "longformer": "sparse_attn.export.longformer",
    "mistral": "sparse_attn.export.mistral",
    "hf": "sparse_attn.models.family",
}

#: Metadata key naming the family of an exported model.
MODEL_KEY = "sparse_attn.model"
#: Metadata key holding the JSON model config for ``build_torch_model``.
MODEL_CONFIG_KEY = "sparse_attn.model_config"


def get_family(name: str) -> ModuleType:
    """Import and return the module of family ``name``.

    Raises:
        InvalidInputError: ``name`` is not a known family.
        UnsupportedEnvironmentError: the family module is not available in this install.
    """
    from sparse_attn.errors import InvalidInputError, UnsupportedEnvironmentError

    if name not in FAMILIES:
        raise InvalidInputError(
            f"unknown model family {name!r}; choose one of {', '.join(FAMILIES)}"
        )
    try:
        return importlib.import_module(FAMILIES[name])
    except ModuleNotFoundError as exc:
        if exc.name == FAMILIES[name]:
            raise UnsupportedEnvironmentError(
                f"model family {name!r} is not available in this installation ({exc})"
            ) from exc
        raise


def build_torch_model(metadata: dict):
    """Rebuild the eager PyTorch model of an exported file from its ``metadata_props``.

    Args:
        metadata: ``{key: value}`` strings as stored in the ONNX model's metadata_props
            (at least ``sparse_attn.model`` and ``sparse_attn.model_config``).

    Returns:
        ``torch.nn.Module`` in eval mode whose forward takes the ONNX inputs as keyword
        tensors and returns ``dict[output_name, Tensor]``.

    Raises:
        InvalidInputError: metadata missing a key, holding bad JSON or an unknown family.
    """
    from sparse_attn.errors import InvalidInputError

    for key in (MODEL_KEY, MODEL_CONFIG_KEY):
        if key not in metadata:
            raise InvalidInputError(
                f"model metadata lacks {key!r}; re-export the model with sparse-attn export"
            )
    try:
        config = json.loads(metadata[MODEL_CONFIG_KEY])
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"metadata {MODEL_CONFIG_KEY!r} is not valid JSON: {exc}") from exc
    return get_family(metadata[MODEL_KEY]).build_torch_model(config)


__all__ = ["FAMILIES", "MODEL_CONFIG_KEY", "MODEL_KEY", "build_torch_model", "get_family"]
