"""The identity of the ``sparse_attn::BlockSparseAttention`` op: the single source of truth.

Export, the ONNX function body, the torch custom op, the TensorRT plugin and the tests
all import these names; nothing else in the project spells them out. See docs/spec.md.

This module is pure Python (no torch, no onnx) so that any layer can import it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: ONNX domain of the custom op, and TensorRT plugin namespace.
DOMAIN = "sparse_attn"
#: ONNX op type, and TensorRT plugin name.
OP_TYPE = "BlockSparseAttention"
#: Op version (ONNX opset version of ``DOMAIN``), and TensorRT plugin version (a string there).
OP_VERSION = 1
PLUGIN_NAMESPACE = DOMAIN
PLUGIN_VERSION = str(OP_VERSION)
#: Fully qualified name, as used by ``torch.onnx.ops.symbolic`` and TensorRT's registry.
QUALIFIED_NAME = f"{DOMAIN}::{OP_TYPE}"
#: Name of the torch custom op (``torch.ops.sparse_attn.block_sparse_attention``).
TORCH_OP_NAME = f"{DOMAIN}::block_sparse_attention"

#: Inputs of the op, in order. ``key_padding_mask`` is optional (an empty name in ONNX).
#: Layout tensors are int32 (``masks`` is uint8) and are constant initializers in an export.
INPUT_NAMES = (
    "query",  # [B, H, S, D]      float32 | float16
    "key",  # [B, Hkv, S, D]      same dtype as query; H % Hkv == 0 (grouped-query K/V)
    "value",  # [B, Hkv, S, Dv]   same dtype as query
    "row_ptr",  # [H, nQB + 1]    int32, CSR row pointers over key blocks
    "col_idx",  # [H, nnz]        int32, key-block column of each stored block
    "mask_idx",  # [H, nnz]       int32, -1 = full block, k >= 0 = partial block using masks[k]
    "masks",  # [M, bs, bs]       uint8, deduplicated partial-block masks (1 = visible)
    "key_padding_mask",  # [B, S] bool / uint8 / int, optional: 1/True = real token
)
OPTIONAL_INPUTS = ("key_padding_mask",)
OUTPUT_NAMES = ("output",)  # [B, H, S, Dv], dtype of query

#: Attributes and their ONNX types. ``scale`` defaults to 1/sqrt(D) (see :func:`default_scale`).
ATTRIBUTES = {
    "block_size": "int",
    "scale": "float",
    "plugin_namespace": "string",
    "plugin_version": "string",
}
#: Attributes TensorRT's ONNX parser turns into plugin fields (INT -> int32, FLOAT -> float32).
PLUGIN_FIELDS = ("block_size", "scale")

#: Supported block sizes (tokens) and head dims for every backend that must match the op.
MIN_BLOCK_SIZE = 16
MAX_BLOCK_SIZE = 128
#: Largest ``D`` and ``Dv`` (head dims of query/key and of value) the op takes.
MAX_HEAD_DIM = 256
SUPPORTED_DTYPES = ("float32", "float16")

#: ONNX ``metadata_props`` keys written by export and read by engines and the runtime.
META_PREFIX = "sparse_attn."
META_KEYS = (
    "sparse_attn.version",  # package version that wrote the model
    "sparse_attn.model",  # model family: attention | minilm | bigbird | longformer | mistral
    "sparse_attn.pattern",  # expanded pattern spec string (or JSON list, one per head)
    "sparse_attn.causal",  # "true" | "false"
    "sparse_attn.block_size",  # tokens
    "sparse_attn.max_seq_len",  # tokens
    "sparse_attn.static_seq_len",  # "true" when S is fixed (patterns that need the end of the sequence)
    "sparse_attn.num_heads",
    "sparse_attn.head_dim",
    "sparse_attn.dtype",  # float32 | float16
    "sparse_attn.layout_hash",  # BlockLayout.layout_hash() of the layout(s) in the model
    "sparse_attn.model_config",  # JSON: what the torch backend of Runtime needs to rebuild the model
    "sparse_attn.inputs",  # JSON: [{"name", "dtype", "shape"}] with symbolic dims as strings
    "sparse_attn.outputs",  # JSON: [{"name", "dtype", "shape"}]
    "torch_version",
    "onnx_version",
)


def default_scale(head_dim: int) -> float:
    """Softmax scale used when the ``scale`` attribute is absent: ``1 / sqrt(head_dim)``."""
    if head_dim <= 0:
        raise ValueError(f"head_dim must be >= 1, got {head_dim}")
    return 1.0 / math.sqrt(head_dim)


@dataclass(frozen=True)
class OpAttributes:
    """Attribute values of one ``BlockSparseAttention`` node.

    Args:
        block_size: tokens per square block of the layout (``MIN_BLOCK_SIZE..MAX_BLOCK_SIZE``).
        scale: softmax scale applied to ``query @ key^T``.
    """

    block_size: int
    scale: float

    def as_onnx_attributes(self) -> dict:
        """Attributes as written on the ONNX node, plugin routing fields included."""
        return {
            "block_size": int(self.block_size),
            "scale": float(self.scale),
            "plugin_namespace": PLUGIN_NAMESPACE,
            "plugin_version": PLUGIN_VERSION,
        }


def check_op_type_is_custom(domain: str, op_type: str) -> None:
    """Refuse an op identity that would collide with a standard ONNX op.

    Raises:
        ValueError: if ``domain`` is the default ONNX domain ("" or "ai.onnx").
    """
    if domain in ("", "ai.onnx"):
        raise ValueError(
            f"op {op_type!r} in the default ONNX domain would collide with standard ONNX ops "
            f"(e.g. 'Attention'); use the custom domain {DOMAIN!r}"
        )
