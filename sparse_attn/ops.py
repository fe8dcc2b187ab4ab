"""The torch custom op ``sparse_attn::block_sparse_attention`` (registered on import).

Its schema and fake implementation are derived from ``opspec.SCHEMA`` (see
:mod:`sparse_attn.kernels.op`, where it is registered next to the backends it runs)::

    import sparse_attn.ops  # registers the op
    t = sparse_attn.ops.layout_tensors(layout)
    out = torch.ops.sparse_attn.block_sparse_attention(
        q, k, v, t["row_ptr"], t["col_idx"], t["mask_idx"], t["masks"], None, bs, scale)
"""

from __future__ import annotations

from sparse_attn.kernels.op import OP, block_sparse_attention, layout_tensors

__all__ = ["block_sparse_attention", "layout_tensors", "OP"]
