"""``SparseAttention``: an ``nn.Module`` holding a block layout, exportable to ONNX."""

from __future__ import annotations

import torch

from sparse_attn import opspec
from sparse_attn.errors import InvalidInputError
from sparse_attn.export.symbolic import sparse_attention
from sparse_attn.layout import BlockLayout


class SparseAttention(torch.nn.Module):
    """Block-sparse attention over a fixed layout (the layout tensors are buffers).

    Args:
        layout: the :class:`~sparse_attn.layout.BlockLayout` for ``max_seq_len =
            layout.seq_len``; ``layout.num_heads`` must equal the inputs' H.
        scale: softmax scale; default ``1 / sqrt(D)`` of the query.

    ``forward(query, key, value, key_padding_mask=None)``: query ``[B, H, S, D]``, key
    ``[B, Hkv, S, D]``, value ``[B, Hkv, S, Dv]`` (float32/float16; ``H % Hkv == 0``,
    grouped-query K/V are never repeated per query head; D, Dv up to 256),
    ``key_padding_mask [B, S]`` bool (True = real token), ``1 <= S <= layout.seq_len`` (``S == layout.seq_len`` when the layout
    ``requires_static_seq_len``); returns ``[B, H, S, Dv]`` in the query dtype. Under
    ``torch.onnx.export`` it emits the ``sparse_attn::BlockSparseAttention`` node; the
    layout never depends on the traced S, so S stays dynamic.

    Raises (eager only):
        InvalidInputError: H differs from the layout, S out of range, or S differs from
            a static layout's length.
    """

    def __init__(self, layout: BlockLayout, scale: float | None = None) -> None:
        super().__init__()
        from sparse_attn.ops import layout_tensors

        self.layout = layout
        self.block_size = int(layout.block_size)
        self.max_seq_len = int(layout.seq_len)
        self.num_heads = int(layout.num_heads)
        self.static_seq_len = bool(layout.requires_static_seq_len)
        self.scale = None if scale is None else float(scale)
        for name, tensor in layout_tensors(layout).items():
            self.register_buffer(name, tensor, persistent=True)

    def _check(self, query: torch.Tensor) -> None:
        h, s = query.shape[1], query.shape[2]
        if h != self.num_heads:
            raise InvalidInputError(
                f"query has {h} heads but the layout has {self.num_heads}; "
                f"compile the layout with num_heads={h}"
            )
        if not 1 <= s <= self.max_seq_len:
            raise InvalidInputError(
                f"sequence length {s} is outside 1..{self.max_seq_len} (max_seq_len of the "
                "layout); shorten the input or rebuild with a larger max_seq_len"
            )
        if self.static_seq_len and s != self.max_seq_len:
            raise InvalidInputError(
                f"the pattern needs a fixed sequence length: pad inputs to "
                f"{self.max_seq_len} tokens (got {s}) and mask the padding"
            )

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if not torch.onnx.is_in_onnx_export() and not torch.compiler.is_compiling():
            self._check(query)
        scale = self.scale if self.scale is not None else opspec.default_scale(query.shape[-1])
        return sparse_attention(
            query,
            key,
            value,
            self.row_ptr,
            self.col_idx,
            self.mask_idx,
            self.masks,
            key_padding_mask,
            self.block_size,
            scale,
            max_seq_len=self.max_seq_len,
        )
