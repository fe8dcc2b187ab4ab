"""Grouped-query K/V and head dims up to 256: the reference, the ``torch`` backend (both CPU
paths) and the custom op against the float64 reference.

The grid is a list of cases, not a cartesian product: together they cover the ratios
H/Hkv in {1, 2, 4, 8} (Hkv = 1 included), D and Dv in {16, 40, 64, 80, 128, 256}, S not a
multiple of the block and S = 1, causal and not, float32/float16/bfloat16, with key padding
whose padded K/V hold NaN and Inf and rows that see no key (exactly 0).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from testing import assert_close, random_qkv

import sparse_attn
import sparse_attn.ops
from sparse_attn.errors import InvalidInputError
from sparse_attn.kernels import block_sparse_attention, torch_backend
from sparse_attn.kernels.reference import reference_attention

# (H, Hkv, D, Dv, S, layout seq_len, block, causal, dtype)
CASES = [
    (8, 1, 256, 256, 70, 96, 16, True, torch.float32),
    (4, 2, 40, 80, 33, 64, 16, False, torch.float16),
    (8, 2, 64, 16, 1, 64, 32, True, torch.bfloat16),
    (8, 8, 80, 128, 50, 64, 16, False, torch.float32),
    (16, 2, 128, 40, 45, 64, 16, True, torch.float16),
    (4, 1, 16, 256, 37, 48, 16, False, torch.bfloat16),
    (2, 1, 256, 64, 20, 32, 16, True, torch.float16),
    (8, 4, 256, 80, 129, 160, 32, False, torch.float32),
]
IDS = [f"H{c[0]}-Hkv{c[1]}-D{c[2]}-Dv{c[3]}-S{c[4]}-{str(c[8])[6:]}" for c in CASES]
PATTERN = "band(w=3) | global(n=2)"


def _cpu_ext_available() -> bool:
    try:
        from sparse_attn.kernels import cpu_ext
    except ImportError:
        return False
    return bool(cpu_ext.is_available())


@pytest.fixture(
    params=[
        "pure",
        pytest.param(
            "cpu_ext",
            marks=pytest.mark.skipif(not _cpu_ext_available(), reason="cpu_ext not available"),
        ),
    ]
)
def path(request, monkeypatch):
    """The torch backend's pure PyTorch path, and the routing with the compiled kernel on."""
    if request.param == "pure":
        monkeypatch.setenv(torch_backend.DISABLE_CPU_EXT_ENV, "1")
    else:
        monkeypatch.delenv(torch_backend.DISABLE_CPU_EXT_ENV, raising=False)
    return request.param


def _inputs(h, hkv, d, dv, s, dtype, seed=0):
    """q [2, H, S, D], k/v [2, Hkv, S, *], a key padding mask and NaN/Inf in padded K/V.

    Batch 1 keeps only three real keys in the middle, so rows far from them (outside the
    band, global tokens padded) see no key at all.
    """
    q, _, _ = random_qkv(2, h, s, d, dv, dtype=dtype, seed=seed)
    _, k, v = random_qkv(2, hkv, s, d, dv, dtype=dtype, seed=seed + 1)
    kpm = torch.ones(2, s, dtype=torch.bool)
    if s > 1:
        pos = torch.arange(s)
        kpm[1] = (pos >= s // 2) & (pos < s // 2 + 3)
        k[1, :, ~kpm[1]] = float("nan")
        v[1, :, ~kpm[1]] = float("inf")
    return q, k, v, kpm


def _empty_rows(layout, kpm, h, s) -> torch.Tensor:
    """bool [B, H, S]: query rows with no visible key."""
    tm = torch.from_numpy(np.ascontiguousarray(layout.token_mask(s)))  # [Hl, S, S]
    vis = tm[None].expand(kpm.shape[0], h, s, s) & kpm[:, None, None, :]
    return ~vis.any(-1)


@pytest.mark.parametrize(
    ("h", "hkv", "d", "dv", "s", "sl", "bs", "causal", "dtype"), CASES, ids=IDS
)
def test_grouped_kv_against_float64_reference(path, h, hkv, d, dv, s, sl, bs, causal, dtype):
    layout = sparse_attn.compile_layout(
        PATTERN, seq_len=sl, block_size=bs, num_heads=h, causal=causal
    )
    q, k, v, kpm = _inputs(h, hkv, d, dv, s, dtype)
    want = reference_attention(q, k, v, layout, kpm)  # float64 inside
    # the grouped reference equals the reference over K/V repeated per query head
    g = h // hkv
    rep = reference_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), layout, kpm)
    assert torch.equal(want, rep)
    got = block_sparse_attention(q, k, v, layout, key_padding_mask=kpm, backend="torch")
    assert got.shape == (2, h, s, dv) and got.dtype == dtype
    assert_close(got, want, name=f"torch[{path}]")
    empty = _empty_rows(layout, kpm, h, s)
    if s > 1:
        assert bool(empty.any())  # the case exercises empty rows
    assert bool((got[empty] == 0).all()) and bool(torch.isfinite(got).all())
    t = sparse_attn.ops.layout_tensors(layout)
    op = torch.ops.sparse_attn.block_sparse_attention(
        q, k, v, t["row_ptr"], t["col_idx"], t["mask_idx"], t["masks"], kpm, bs, d**-0.5
    )
    assert_close(op, want, name=f"op[{path}]")


def test_grouped_kv_is_not_repeated_in_the_torch_path(monkeypatch):
    """The pure path never materialises K/V per query head (repeat_interleave is not called)."""
    monkeypatch.setenv(torch_backend.DISABLE_CPU_EXT_ENV, "1")
    layout = sparse_attn.compile_layout(PATTERN, seq_len=64, block_size=16, num_heads=8)
    q, k, v, kpm = _inputs(8, 1, 32, 32, 64, torch.float32)
    want = reference_attention(q, k, v, layout, kpm)

    def refuse(*a, **kw):
        raise AssertionError("K/V repeated per query head")

    monkeypatch.setattr(torch.Tensor, "repeat_interleave", refuse)
    monkeypatch.setattr(torch, "repeat_interleave", refuse)
    got = block_sparse_attention(q, k, v, layout, key_padding_mask=kpm, backend="torch")
    assert_close(got, want)


def test_grouped_kv_fake_shape():
    """The op's fake gives [B, H, S, Dv] for grouped K/V (torch.export sees the right shape)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    layout = sparse_attn.compile_layout(PATTERN, seq_len=64, block_size=16, num_heads=4)
    t = sparse_attn.ops.layout_tensors(layout)
    with FakeTensorMode(allow_non_fake_inputs=True):
        q = torch.empty(3, 4, 40, 256)
        k = torch.empty(3, 1, 40, 256)
        v = torch.empty(3, 1, 40, 80)
        out = sparse_attn.ops.OP(q, k, v, *t.values(), None, 16, 0.0625)
    assert tuple(out.shape) == (3, 4, 40, 80)


@pytest.mark.parametrize(
    ("shapes", "match"),
    [
        (((1, 6, 8, 16), (1, 4, 8, 16), (1, 4, 8, 16)), r"H=6 must be a multiple of Hkv=4"),
        (((1, 4, 8, 16), (1, 2, 8, 16), (1, 1, 8, 16)), r"value must be \[B=1, Hkv=2"),
        (((1, 4, 8, 300), (1, 2, 8, 300), (1, 2, 8, 16)), r"1\.\.256, got 300"),
    ],
)
def test_grouped_kv_bad_shapes_are_refused(shapes, match):
    layout = sparse_attn.compile_layout("band(w=1)", seq_len=16, block_size=16, num_heads=1)
    q, k, v = (torch.zeros(sh) for sh in shapes)
    for backend in ("reference", "torch"):
        with pytest.raises(InvalidInputError, match=match):
            block_sparse_attention(q, k, v, layout, backend=backend)
    t = sparse_attn.ops.layout_tensors(layout)
    with pytest.raises(InvalidInputError, match=match):
        sparse_attn.ops.OP(q, k, v, *t.values(), None, 16, 0.25)


def test_plan_is_made_once_per_layout_and_shape(monkeypatch):
    """The layout is copied and hashed once (flashinfer-style plan/run), not per call."""
    monkeypatch.setenv(torch_backend.DISABLE_CPU_EXT_ENV, "1")
    calls = []
    real = torch_backend._array_digest
    monkeypatch.setattr(torch_backend, "_array_digest", lambda *a: calls.append(1) or real(*a))
    layout = sparse_attn.compile_layout(PATTERN, seq_len=64, block_size=16, num_heads=4)
    q, k, v, kpm = _inputs(4, 2, 16, 16, 50, torch.float32)
    first = block_sparse_attention(q, k, v, layout, key_padding_mask=kpm, backend="torch")
    for _ in range(3):
        again = block_sparse_attention(q, k, v, layout, key_padding_mask=kpm, backend="torch")
    assert len(calls) == 1 and torch.equal(first, again)
    t = sparse_attn.ops.layout_tensors(layout)
    for _ in range(3):  # the op with the same buffers: planned once as well
        sparse_attn.ops.OP(q, k, v, *t.values(), kpm, 16, 0.25)
    assert len(calls) == 2
    p = torch_backend.plan(layout, seq_len=50, num_heads=4, num_kv_heads=2)
    assert torch.equal(p.run(q, k, v, kpm), first)
    with pytest.raises(InvalidInputError, match="this plan is for H=4, Hkv=2, S=50"):
        p.run(q[:, :, :40], k[:, :, :40], v[:, :, :40])
