"""The torch custom op ``sparse_attn::block_sparse_attention``: schema, fake impl, export,
compile, and agreement with the reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from testing import (
    assert_close,
    band_mask,
    causal_mask,
    global_mask,
    layout_from_masks,
    random_padding_mask,
    random_qkv,
)

from sparse_attn import opspec
from sparse_attn.errors import InvalidInputError
from sparse_attn.kernels.reference import reference_attention
from sparse_attn.ops import OP, layout_tensors


def _layout(s=40, bs=16):
    m = np.stack([band_mask(s, 4) | global_mask(s, 2), band_mask(s, 9) & causal_mask(s)])
    return layout_from_masks(m, bs)


def _args(lay, s, kpm=True, dtype=torch.float32, seed=0):
    t = layout_tensors(lay)
    q, k, v = random_qkv(2, lay.num_heads, s, 12, 7, dtype=dtype, seed=seed)
    mask = random_padding_mask(2, s, seed=seed) if kpm else None
    return (q, k, v, t["row_ptr"], t["col_idx"], t["mask_idx"], t["masks"], mask, lay.block_size)


def test_op_name_comes_from_opspec():
    ns, name = opspec.TORCH_OP_NAME.split("::")
    assert getattr(getattr(torch.ops, ns), name).default is OP


def test_layout_tensors_dtypes_and_non_empty():
    lay = _layout()
    t = layout_tensors(lay)
    assert t["row_ptr"].dtype == torch.int32 and t["col_idx"].dtype == torch.int32
    assert t["mask_idx"].dtype == torch.int32 and t["masks"].dtype == torch.uint8
    assert t["row_ptr"].shape == (2, lay.num_blocks + 1)
    assert np.array_equal(t["col_idx"].numpy(), lay.col_idx)
    # a layout without partial tiles still passes one (all-zero) mask
    full = layout_from_masks(np.ones((1, 32, 32), dtype=bool), 16)
    assert full.masks.shape[0] == 0
    tf = layout_tensors(full)
    assert tf["masks"].shape == (1, 16, 16) and not tf["masks"].any()
    # fresh tensors: mutating them does not touch the cached layout arrays
    tf["row_ptr"].zero_()
    assert layout_tensors(full)["row_ptr"][0, -1] == 4


@pytest.mark.parametrize("pure", [False, True], ids=["default", "pure"])
@pytest.mark.parametrize("s,kpm", [(40, True), (23, False), (1, True)])
def test_op_matches_reference(monkeypatch, s, kpm, pure):
    if pure:
        monkeypatch.setenv("SPARSE_ATTN_DISABLE_CPU_EXT", "1")
    lay = _layout()
    args = _args(lay, s, kpm)
    out = OP(*args, 0.3)
    q, k, v, *_, mask, _bs = args
    assert_close(out, reference_attention(q, k, v, lay, mask, scale=0.3), name="op")


@pytest.mark.parametrize("pure", [False, True], ids=["default", "pure"])
def test_opcheck(monkeypatch, pure):
    if pure:
        monkeypatch.setenv("SPARSE_ATTN_DISABLE_CPU_EXT", "1")
    lay = _layout()
    for s, kpm in ((40, True), (33, False)):
        torch.library.opcheck(OP, (*_args(lay, s, kpm), 0.25))


def test_op_rejects_bad_arrays():
    lay = _layout()
    args = list(_args(lay, 40))
    args[3:6] = [torch.cat([t, t[:1]]) for t in args[3:6]]  # a layout of 3 heads, query has 2
    with pytest.raises(InvalidInputError, match=r"row_ptr \[3, \d+\]: L=3 .* must be H=2 or 1"):
        OP(*args, 0.25)
    args = list(_args(lay, 40))
    with pytest.raises(InvalidInputError, match="S=50"):
        q, k, v = random_qkv(2, 2, 50, 12, 7)
        OP(q, k, v, *args[3:], 0.25)


class _Tiny(torch.nn.Module):
    def __init__(self, lay):
        super().__init__()
        for name, t in layout_tensors(lay).items():
            self.register_buffer(name, t)
        self.bs = lay.block_size

    def forward(self, q, k, v, mask):
        return torch.ops.sparse_attn.block_sparse_attention(
            q, k, v, self.row_ptr, self.col_idx, self.mask_idx, self.masks, mask, self.bs, 0.5
        )


def test_torch_export_with_dynamic_seq_len():
    lay = _layout()
    mod = _Tiny(lay).eval()
    q, k, v, *_, mask, _ = _args(lay, 40)
    seq = torch.export.Dim("seq", min=1, max=lay.seq_len)
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(
        mod,
        (q, k, v, mask),
        dynamic_shapes=(
            {0: batch, 2: seq},
            {0: batch, 2: seq},
            {0: batch, 2: seq},
            {0: batch, 1: seq},
        ),
    )
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert OP in targets, targets
    q2, k2, v2, *_, m2, _ = _args(lay, 27, seed=3)
    got = ep.module()(q2, k2, v2, m2)
    assert_close(got, reference_attention(q2, k2, v2, lay, m2, scale=0.5), name="exported")


@pytest.mark.timeout(300)
def test_torch_compile_traces_op():
    lay = _layout()
    mod = _Tiny(lay).eval()
    compiled = torch.compile(mod, backend="aot_eager", fullgraph=True)
    q, k, v, *_, mask, _ = _args(lay, 40)
    got = compiled(q, k, v, mask)
    assert_close(got, reference_attention(q, k, v, lay, mask, scale=0.5), name="compiled")


@pytest.mark.timeout(300)
def test_dispatcher_under_torch_compile_is_one_op_node():
    """``block_sparse_attention`` inside torch.compile goes through the custom op (no breaks)."""
    import sparse_attn

    lay = _layout()
    q, k, v, *_, mask, _ = _args(lay, 33)

    def f(q, k, v, mask):
        return sparse_attn.block_sparse_attention(q, k, v, lay, mask) * 2

    got = torch.compile(f, backend="aot_eager", fullgraph=True)(q, k, v, mask)
    assert_close(got, 2 * reference_attention(q, k, v, lay, mask), name="compiled dispatcher")


def test_dispatcher_under_torch_export_keeps_dynamic_seq_len():
    """A module calling ``block_sparse_attention`` exports to one op node, S stays dynamic."""
    import sparse_attn

    lay = _layout()

    class M(torch.nn.Module):
        def forward(self, q, k, v):
            return sparse_attn.block_sparse_attention(q, k, v, lay)

    q, k, v, *_ = _args(lay, 40)
    seq = torch.export.Dim("seq", min=1, max=lay.seq_len)
    ep = torch.export.export(M(), (q, k, v), dynamic_shapes=({2: seq}, {2: seq}, {2: seq}))
    assert OP in [n.target for n in ep.graph.nodes if n.op == "call_function"]
    q2, k2, v2, *_ = _args(lay, 19, seed=7)
    got = ep.module()(q2, k2, v2)
    assert_close(got, reference_attention(q2, k2, v2, lay), name="exported dispatcher")


def test_cuda_route_takes_what_the_triton_backend_declares():
    from sparse_attn.kernels import op as kop
    from sparse_attn.kernels import triton_backend

    bs = opspec.MIN_BLOCK_SIZE
    d = triton_backend.MAX_HEAD_DIM
    for dtype in triton_backend.SUPPORTED_DTYPES:
        q = torch.zeros(1, 1, 1, d, dtype=dtype)
        assert kop._cuda_impl(q, q, q, bs) is not None
    q64 = torch.zeros(1, 1, 1, d, dtype=torch.float64)
    assert kop._cuda_impl(q64, q64, q64, bs) is None
    q = torch.zeros(1, 1, 1, d + 1)
    assert kop._cuda_impl(q, q, q, bs) is None
    assert kop._cuda_impl(q[..., :d], q[..., :d], q, bs) is None
    qd = q[..., :d]
    assert kop._cuda_impl(qd, qd, qd, opspec.MAX_BLOCK_SIZE + 1) is None
    if not hasattr(triton_backend, "not_supported_reason"):
        # a backend that does not declare grouped K/V gets only equal head counts
        q2 = torch.zeros(1, 2, 1, d)
        assert kop._cuda_impl(q2, qd, qd, bs) is None
