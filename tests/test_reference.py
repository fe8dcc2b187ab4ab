"""The reference backend (the oracle) against an independent per-row numpy computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from testing import (
    assert_close,
    assert_equal,
    band_mask,
    causal_mask,
    global_mask,
    layout_from_masks,
    random_padding_mask,
    random_qkv,
)

from sparse_attn.errors import InvalidInputError
from sparse_attn.kernels.reference import masked_attention, reference_attention


def naive_attention(q, k, v, mask, kpm, scale):
    """Row-by-row softmax over the visible keys only, in numpy float64 (no masking tricks)."""
    q, k, v = (x.double().numpy() for x in (q, k, v))
    b, h, s, _ = q.shape
    out = np.zeros((b, h, s, v.shape[-1]))
    for bb in range(b):
        for hh in range(h):
            for i in range(s):
                js = [j for j in range(s) if mask[hh, i, j] and (kpm is None or bool(kpm[bb, j]))]
                if not js:
                    continue
                sc = np.array([scale * float(q[bb, hh, i] @ k[bb, hh, j]) for j in js])
                p = np.exp(sc - sc.max())
                p /= p.sum()
                out[bb, hh, i] = sum(pj * v[bb, hh, j] for pj, j in zip(p, js, strict=True))
    return torch.from_numpy(out)


@pytest.mark.parametrize("s,bs,causal", [(37, 16, False), (40, 8, True), (1, 16, False)])
def test_reference_matches_naive(s, bs, causal):
    m = np.stack([band_mask(s, 3) | global_mask(s, 2), band_mask(s, 9)])
    if causal:
        m &= causal_mask(s)[None]
    lay = layout_from_masks(m, bs)
    q, k, v = random_qkv(2, 2, s, 5, 3, dtype=torch.float64, seed=s)
    kpm = random_padding_mask(2, s, seed=3)
    got = reference_attention(q, k, v, lay, kpm)
    want = naive_attention(q, k, v, m, kpm, 1 / math.sqrt(5))
    assert_close(got, want, atol=1e-12, rtol=1e-12, name="reference")


def test_reference_crop_equals_mask_crop():
    s_max, s = 50, 29
    m = band_mask(s_max, 4)[None] | global_mask(s_max, 3)[None]
    lay = layout_from_masks(m, 16)
    q, k, v = random_qkv(1, 1, s, 8, dtype=torch.float64, seed=1)
    got = reference_attention(q, k, v, lay)
    want = naive_attention(q, k, v, m[:, :s, :s], None, 8**-0.5)
    assert_close(got, want, atol=1e-12, rtol=1e-12, name="cropped reference")


def test_empty_rows_are_exactly_zero():
    s = 20
    m = causal_mask(s)[None].copy()
    m[0, 5, :] = False  # row 5 sees nothing
    lay = layout_from_masks(m, 8)
    q, k, v = random_qkv(1, 1, s, 4, dtype=torch.float32, seed=2)
    kpm = torch.ones(1, s, dtype=torch.bool)
    kpm[0, :3] = False  # rows 0..2 only see padded keys -> empty
    out = reference_attention(q, k, v, lay, kpm)
    assert torch.isfinite(out).all()
    assert_equal(out[0, 0, [0, 1, 2, 5]], torch.zeros(4, 4), name="empty rows")
    assert bool((out[0, 0, 3] != 0).any())


def test_masked_nan_inf_do_not_leak_but_visible_nan_does():
    s = 24
    m = band_mask(s, 2)[None]
    lay = layout_from_masks(m, 8)
    q, k, v = random_qkv(1, 1, s, 4, dtype=torch.float32, seed=4)
    kpm = torch.ones(1, s, dtype=torch.bool)
    kpm[0, 20:] = False
    clean = reference_attention(q, k, v, lay, kpm)
    k2, v2 = k.clone(), v.clone()
    k2[0, 0, 20:] = float("nan")
    v2[0, 0, 21:] = float("inf")
    v2[0, 0, 20] = float("nan")
    # key 10: NaN value, visible to queries 8..12 only
    v2[0, 0, 10, 1] = float("nan")
    out = reference_attention(q, k2, v2, lay, kpm)
    ok_rows = [i for i in range(s) if abs(i - 10) > 2]
    assert_equal(out[:, :, ok_rows], clean[:, :, ok_rows], name="rows that cannot see NaN keys")
    assert torch.isnan(out[0, 0, 8:13, 1]).all(), "a visible NaN value must propagate"


def test_fp16_large_logits_stay_finite():
    s = 16
    lay = layout_from_masks(band_mask(s, 4)[None], 16)
    q, k, v = random_qkv(1, 1, s, 64, dtype=torch.float64, seed=5)
    q16, k16 = (q.sign() * 300).half(), (k.sign() * 300).half()
    out = reference_attention(q16, k16, v.half(), lay)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    want = naive_attention(
        q16.double(), k16.double(), v.half().double(), band_mask(s, 4)[None], None, 1 / 8
    )
    assert_close(out, want, dtype=torch.float16, name="fp16 large logits")


def test_masked_attention_broadcasts_a_2d_mask():
    s = 12
    m = band_mask(s, 1)
    q, k, v = random_qkv(2, 3, s, 4, dtype=torch.float64)
    got = masked_attention(q, k, v, torch.from_numpy(m))
    want = naive_attention(q, k, v, np.broadcast_to(m, (3, s, s)), None, 0.5)
    assert_close(got, want, atol=1e-12, rtol=1e-12)


def test_reference_validates_inputs():
    lay = layout_from_masks(band_mask(16, 2)[None], 8)
    q, k, v = random_qkv(1, 1, 16, 4)
    lay2 = layout_from_masks(np.stack([band_mask(16, 2)] * 2), 8)
    with pytest.raises(InvalidInputError, match="num_heads=2"):
        reference_attention(*(x.expand(1, 3, 16, 4) for x in (q, k, v)), lay2)
    with pytest.raises(InvalidInputError, match="multiple of Hkv"):
        reference_attention(
            q.expand(1, 3, 16, 4), k.expand(1, 2, 16, 4), v.expand(1, 2, 16, 4), lay
        )
    with pytest.raises(InvalidInputError, match="S=17"):
        q2, k2, v2 = random_qkv(1, 1, 17, 4)
        reference_attention(q2, k2, v2, lay)


def test_visible_nan_key_propagates_like_dense_attention():
    """A NaN in a *visible* key is not hidden: the rows that see it are NaN, others finite."""
    import torch

    from sparse_attn.kernels import block_sparse_attention
    from sparse_attn.layout import compile_layout

    layout = compile_layout("band(w=2)", seq_len=8, block_size=16, num_heads=1)
    q, k, v = (
        torch.randn(1, 1, 8, 4, generator=torch.Generator().manual_seed(i)) for i in range(3)
    )
    k[0, 0, 3, 0] = float("nan")
    for backend in ("reference", "torch"):
        out = block_sparse_attention(q, k, v, layout, backend=backend)[0, 0, :, 0]
        sees_nan = torch.tensor([abs(i - 3) <= 2 for i in range(8)])
        assert torch.isnan(out[sees_nan]).all(), (backend, out)
        assert torch.isfinite(out[~sees_nan]).all(), (backend, out)
