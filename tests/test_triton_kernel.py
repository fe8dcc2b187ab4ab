"""The Triton block-sparse kernel (backend ``"triton"``) on CPU, under Triton's interpreter.

How the interpreter is switched on, robustly: Triton reads ``TRITON_INTERPRET`` when a function
is *decorated*. Our kernel is decorated lazily (``triton_kernel.get_kernel``), and it avoids
Triton's library functions that are decorated at ``import triton.language`` time (``tl.max``,
``tl.sum``, ``tl.zeros``), so setting the variable with ``monkeypatch.setenv`` inside the test is
enough, whatever another test module of the same xdist worker imported before.
``test_interpreter_env_set_after_triton_import`` checks exactly that in a fresh subprocess.

Every numerical test compares with the float64 dense reference
(``sparse_attn.kernels.reference.reference_attention`` on float64 copies of the same rounded
inputs) and reports the worst element on failure. The grid is small but awkward (ragged S,
S < layout.seq_len, non power-of-two block and head sizes); a bigger grid is marked slow.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from testing import (
    assert_close,
    band_mask,
    causal_mask,
    dilated_mask,
    global_mask,
    layout_from_masks,
    random_padding_mask,
    random_qkv,
    random_token_mask,
)

pytest.importorskip("triton", reason="triton is not installed")

from sparse_attn.errors import BackendNotSupportedError  # noqa: E402
from sparse_attn.kernels import block_sparse_attention, triton_backend  # noqa: E402
from sparse_attn.kernels.reference import reference_attention  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def interpret(monkeypatch):
    """Every test here runs the kernel on CPU tensors through Triton's interpreter."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    torch.set_num_threads(1)


def _expected(q, k, v, layout, kpm=None, scale=None):
    """float64 reference on the very same (already rounded) inputs."""
    return reference_attention(q.double(), k.double(), v.double(), layout, kpm, scale)


def _check(q, k, v, layout, kpm=None, scale=None, name="triton"):
    out = block_sparse_attention(q, k, v, layout, kpm, scale, backend="triton")
    assert out.dtype == q.dtype and out.shape == (*q.shape[:3], v.shape[-1])
    assert_close(out, _expected(q, k, v, layout, kpm, scale), name=name, dtype=q.dtype)
    return out


def _mixed_layout(seq_len: int, block_size: int, heads: int = 2):
    """Per-head patterns: band|global, causal dilated, random token mask (arbitrary tiles)."""
    pats = [
        band_mask(seq_len, 5) | global_mask(seq_len, 2),
        causal_mask(seq_len) & dilated_mask(seq_len, 3, 2),
        random_token_mask(1, seq_len, 0.2, seed=3)[0],
    ]
    return layout_from_masks(np.stack(pats[:heads]), block_size)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dtypes_ragged_crop_and_nonfinite_padding(dtype):
    """S=45 on a layout built for 50 (crop by bounds), padding holds NaN/Inf."""
    layout = _mixed_layout(50, 16, heads=3)
    q, k, v = random_qkv(2, 3, 45, 24, value_dim=40, dtype=dtype, seed=1)
    kpm = random_padding_mask(2, 45, seed=2, min_len=20)
    kpm[0, :] = True
    kpm[1, 30:] = False
    k[1, :, 30:] = float("nan")
    v[1, :, 30:] = float("inf")
    out = _check(q, k, v, layout, kpm)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "block_size,seq_len,head_dim",
    [(16, 33, 16), (32, 70, 72), (48, 100, 40), (128, 130, 128), (20, 61, 8)],
)
def test_block_sizes_and_head_dims(block_size, seq_len, head_dim):
    """Powers of two and not (48, 20 are padded inside), head dims 8..128, ragged last block."""
    mask = band_mask(seq_len, block_size // 2 + 3) | global_mask(seq_len, 3)
    layout = layout_from_masks(np.stack([mask, causal_mask(seq_len)]), block_size)
    q, k, v = random_qkv(1, 2, seq_len, head_dim, dtype=torch.float16, seed=block_size)
    _check(q, k, v, layout)


def test_empty_rows_are_exactly_zero():
    """A query block with no stored tile, and rows whose visible keys are all padded."""
    s = 40
    m = band_mask(s, 2)
    m[16:32, :] = False  # query block 1 (block size 16) stores nothing
    layout = layout_from_masks(m, 16)
    assert layout.row_ptr[0, 1] == layout.row_ptr[0, 2]
    q, k, v = random_qkv(2, 1, s, 16, seed=5)
    kpm = torch.ones(2, s, dtype=torch.bool)
    kpm[1, 0:10] = False  # rows 0..7 of batch 1 see only keys 0..9: all padded
    out = _check(q, k, v, layout, kpm)
    assert (out[:, :, 16:32] == 0).all()
    assert (out[1, :, 0:8] == 0).all()


def test_nonfinite_value_of_key_hidden_by_partial_tile():
    """Causal diagonal tile: key 20 (V NaN) and key 21 (V +Inf) are visible to rows >= them
    only; earlier rows of the same tile must stay finite (0 * NaN must not leak)."""
    s = 40
    layout = layout_from_masks(causal_mask(s), 16)
    q, k, v = random_qkv(1, 1, s, 16, seed=7)
    v[0, 0, 20, 3] = float("nan")
    v[0, 0, 21, 4] = float("inf")
    v[0, 0, 22, 4] = float("-inf")  # rows >= 22 see +Inf and -Inf in column 4: NaN
    v[0, 0, 23, 5] = float("-inf")
    out = _check(q, k, v, layout)
    assert torch.isfinite(out[0, 0, :20]).all()
    assert torch.isnan(out[0, 0, 20:, 3]).all()
    assert out[0, 0, 21, 4] == float("inf") and torch.isnan(out[0, 0, 22:, 4]).all()
    assert (out[0, 0, 23:, 5] == float("-inf")).all() and torch.isfinite(out[0, 0, :23, 5]).all()


def test_finite_value_variants_agree_bitwise():
    """The variant without the non-finite-V handling (used when V is finite) gives the very
    same result as the safe one."""
    from sparse_attn.kernels.triton_kernel import attention_arrays
    from sparse_attn.op_arrays import layout_to_tensors as layout_arrays

    s = 40
    layout = layout_from_masks(np.stack([causal_mask(s), band_mask(s, 6)]), 16)
    q, k, v = random_qkv(1, 2, s, 32, dtype=torch.float16, seed=8)
    a = [layout_arrays(layout, "cpu")[n] for n in ("row_ptr", "col_idx", "mask_idx", "masks")]
    fast = attention_arrays(q, k, v, *a, None, 16, 0.2, assume_finite_v=True)
    safe = attention_arrays(q, k, v, *a, None, 16, 0.2, assume_finite_v=False)
    assert torch.equal(fast, safe)


def test_fp16_near_overflow():
    """Scores of order 1e4 (fp16-exact max is 65504) and |V| near 6e4: fp32 softmax/accumulate."""
    s = 37
    layout = layout_from_masks(np.stack([band_mask(s, 9) | global_mask(s, 1)] * 2), 16)
    q, k, v = random_qkv(1, 2, s, 32, dtype=torch.float64, seed=11)
    q = (q * 20).clamp(-200, 200).half()
    k = (k * 20).clamp(-200, 200).half()
    v = (v.sign() * 6.0e4).half()
    out = _check(q, k, v, layout, scale=1.0 / 32)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_large_values_keep_16bit_accuracy(dtype):
    """Peaky softmax and |V| up to 6e4: rounding P to 16 bits before P @ V would cost ~20
    (fp16) / ~350 (bf16) absolute here; the kernel splits P in two halves (PV_SPLIT). The
    atol of 0.5 allows fp32 accumulation of cancelling terms of size 6e4 (the torch backend
    shows the same)."""
    s, h = 100, 2
    layout = layout_from_masks(np.stack([band_mask(s, 40) | global_mask(s, 4)] * h), 32)
    g = torch.Generator().manual_seed(0)
    q = (torch.randn(1, h, s, 64, generator=g) * 3).to(dtype)
    k = (torch.randn(1, h, s, 64, generator=g) * 3).to(dtype)
    v = ((torch.rand(1, h, s, 64, generator=g) * 2 - 1) * 6.0e4).to(dtype)
    out = block_sparse_attention(q, k, v, layout, backend="triton")
    rtol = 2e-3 if dtype == torch.float16 else 1.6e-2
    assert_close(out, _expected(q, k, v, layout), atol=0.5, rtol=rtol, name="large values")


def test_causal_and_scale_and_noncontiguous():
    """Causal band, explicit scale, inputs as [B, S, H, D] views transposed to [B, H, S, D]."""
    s, h = 50, 2
    layout = layout_from_masks(np.stack([causal_mask(s) & band_mask(s, 20)] * h), 16)
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(3, 1, s, h, 24, generator=g)
    q, k, v = (t.transpose(1, 2) for t in qkv.unbind(0))
    assert not q.is_contiguous()
    _check(q, k, v, layout, scale=0.3)


def test_layout_shared_by_all_heads_at_array_level():
    """The array entry accepts a one-head layout for H heads (head stride 0)."""
    from sparse_attn.kernels.triton_kernel import attention_arrays
    from sparse_attn.op_arrays import layout_to_tensors as layout_arrays

    s = 29
    one = layout_from_masks(band_mask(s, 4), 16)
    three = layout_from_masks(np.stack([band_mask(s, 4)] * 3), 16)
    q, k, v = random_qkv(2, 3, s, 16, seed=9)
    a = layout_arrays(one, "cpu")
    out = attention_arrays(q, k, v, *(a[n] for n in ("row_ptr", "col_idx", "mask_idx", "masks")),
                           None, 16, 0.25)  # fmt: skip
    assert_close(out, _expected(q, k, v, three, None, 0.25), name="shared-layout")


def test_preallocated_out_is_written_in_place():
    """``out=`` (how the TensorRT JIT plugin passes its output buffer); wrong buffers refused."""
    from sparse_attn.kernels.triton_kernel import attention_arrays
    from sparse_attn.op_arrays import layout_to_tensors as layout_arrays

    s = 21
    layout = layout_from_masks(np.stack([band_mask(s, 3), causal_mask(s)]), 16)
    q, k, v = random_qkv(1, 2, s, 16, value_dim=24, dtype=torch.float16, seed=4)
    a = [layout_arrays(layout, "cpu")[n] for n in ("row_ptr", "col_idx", "mask_idx", "masks")]
    buf = torch.full((1, 2, s, 24), float("nan"), dtype=torch.float16)
    got = attention_arrays(q, k, v, *a, None, 16, 0.25, out=buf)
    assert got.data_ptr() == buf.data_ptr()
    assert_close(buf, _expected(q, k, v, layout, None, 0.25), name="out=", dtype=torch.float16)
    with pytest.raises(ValueError, match="out must be"):
        attention_arrays(q, k, v, *a, None, 16, 0.25, out=buf.float())


def test_not_supported_reasons(monkeypatch):
    """CPU without the interpreter, float64, and a too-small block are refused with reasons."""
    s = 20
    layout = layout_from_masks(band_mask(s, 2), 16)
    q, k, v = random_qkv(1, 1, s, 16)
    monkeypatch.delenv("TRITON_INTERPRET")
    reasons = triton_backend.not_supported_reasons(q, k, v, layout, None)
    assert any("TRITON_INTERPRET=1" in r for r in reasons), reasons
    with pytest.raises(BackendNotSupportedError, match="TRITON_INTERPRET"):
        block_sparse_attention(q, k, v, layout, backend="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert triton_backend.not_supported_reasons(q, k, v, layout, None) == []
    r64 = triton_backend.not_supported_reasons(q.double(), k.double(), v.double(), layout, None)
    assert any("float64" in r for r in r64), r64
    small = layout_from_masks(band_mask(s, 2), 8)
    assert any(
        "block_size 8" in r for r in triton_backend.not_supported_reasons(q, k, v, small, None)
    )


def test_interpreter_env_set_after_triton_import():
    """In a fresh process: import triton first, then set TRITON_INTERPRET=1, then run."""
    code = textwrap.dedent(
        """
        import os, sys
        import triton, triton.language  # imported before the variable is set
        os.environ["TRITON_INTERPRET"] = "1"
        sys.path.insert(0, "tests")
        import numpy as np, torch
        from testing import band_mask, layout_from_masks, random_qkv
        from sparse_attn.kernels import block_sparse_attention
        lay = layout_from_masks(band_mask(24, 3), 16)
        q, k, v = random_qkv(1, 1, 24, 16)
        out = block_sparse_attention(q, k, v, lay, backend="triton")
        ref = block_sparse_attention(q, k, v, lay, backend="reference")
        print("MAXERR", float((out - ref).abs().max()))
        """
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    env["OMP_NUM_THREADS"] = "1"
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    err = float(res.stdout.split("MAXERR")[-1])
    assert err < 1e-5, f"max abs error {err} vs the reference"


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("block_size", [16, 32, 64])
@pytest.mark.parametrize("seq_len", [111, 130])
def test_bigger_grid(dtype, block_size, seq_len):
    """Slow: more shapes, three per-head patterns, random padding."""
    layout = _mixed_layout(130, block_size, heads=3)
    q, k, v = random_qkv(2, 3, seq_len, 40, value_dim=24, dtype=dtype, seed=seq_len)
    kpm = random_padding_mask(2, seq_len, seed=block_size, min_len=1)
    _check(q, k, v, layout, kpm)


# ------------------------------------------------------------ grouped-query K/V, wide heads
def _gqa_inputs(b, h, hkv, s, d, dv, dtype, seed=0):
    """query ``[B, H, S, D]``; key ``[B, Hkv, S, D]``, value ``[B, Hkv, S, Dv]``."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, s, d, generator=g, dtype=torch.float64).to(dtype)
    k = torch.randn(b, hkv, s, d, generator=g, dtype=torch.float64).to(dtype)
    v = torch.randn(b, hkv, s, dv, generator=g, dtype=torch.float64).to(dtype)
    return q, k, v


def _gqa_expected(q, k, v, layout, kpm=None, scale=None):
    """float64 reference; K/V repeated per query head here only (the oracle may copy)."""
    group = q.shape[1] // k.shape[1]
    kk = k.double().repeat_interleave(group, dim=1)
    vv = v.double().repeat_interleave(group, dim=1)
    return reference_attention(q.double(), kk, vv, layout, kpm, scale)


def _gqa_check(q, k, v, layout, kpm=None, scale=None, config=None, name="triton gqa"):
    """Run the Triton backend on grouped K/V (public entry, or the array entry with a given
    tiling) against float64."""
    from sparse_attn.kernels._validate import resolve_scale

    assert triton_backend.not_supported_reasons(q, k, v, layout, kpm) == []
    sc = resolve_scale(scale, q.shape[-1])
    if config is None:
        out = block_sparse_attention(q, k, v, layout, kpm, scale, backend="triton")
    else:
        from sparse_attn.kernels.triton_kernel import attention_arrays
        from sparse_attn.op_arrays import layout_to_tensors as layout_arrays

        a = layout_arrays(layout, "cpu")
        out = attention_arrays(
            q, k, v, *(a[n] for n in ("row_ptr", "col_idx", "mask_idx", "masks")), kpm,
            layout.block_size, sc, config=config,
        )  # fmt: skip
    assert out.dtype == q.dtype and out.shape == (*q.shape[:3], v.shape[-1])
    assert_close(out, _gqa_expected(q, k, v, layout, kpm, scale), name=name, dtype=q.dtype)
    return out


def _poison_padding(k, v, kpm):
    """NaN in padded K, +Inf/-Inf in padded V (masked keys must not matter)."""
    pad = ~kpm  # [B, S]
    k[pad[:, None, :, None].expand_as(k)] = float("nan")
    vv = v.clone()
    vv[pad[:, None, :, None].expand_as(v)] = float("inf")
    vv[..., ::2][pad[:, None, :, None].expand_as(v[..., ::2])] = float("-inf")
    v.copy_(vv)


# (H, Hkv, D, Dv, dtype, block, S, causal): every GQA ratio (Hkv = 1 included) and every head
# dim of the contract's grid appears at least once; S is never a multiple of the block.
GQA_CASES = [
    (2, 2, 16, 40, torch.float32, 16, 37, False),
    (4, 2, 40, 80, torch.float16, 32, 45, True),
    (4, 1, 80, 64, torch.bfloat16, 16, 29, False),
    (8, 1, 128, 16, torch.float16, 48, 61, True),
    (8, 2, 64, 128, torch.float32, 20, 33, True),
    (4, 1, 256, 256, torch.float16, 32, 41, True),
]


@pytest.mark.parametrize("h,hkv,d,dv,dtype,bs,s,causal", GQA_CASES)
def test_grouped_kv_and_head_dims(h, hkv, d, dv, dtype, bs, s, causal):
    """Grouped K/V read in place, per-head patterns, padding with NaN/Inf in padded K/V."""
    pats = [band_mask(s, 3 + i) | global_mask(s, i % 3) for i in range(h)]
    if causal:
        pats = [p & causal_mask(s) for p in pats]
    layout = layout_from_masks(np.stack(pats), bs)
    q, k, v = _gqa_inputs(2, h, hkv, s, d, dv, dtype, seed=h * 7 + d)
    kpm = torch.ones(2, s, dtype=torch.bool)
    kpm[1, s - 9 :] = False
    kpm[1, 1] = False
    _poison_padding(k, v, kpm)
    out = _gqa_check(q, k, v, layout, kpm)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_head_dim_256_grouped(dtype):
    """D = Dv = 256 in fp32 and bf16 with one K/V head for four query heads, causal."""
    s = 23
    layout = layout_from_masks(np.stack([causal_mask(s) & band_mask(s, 9)] * 4), 16)
    q, k, v = _gqa_inputs(1, 4, 1, s, 256, 256, dtype, seed=3)
    _gqa_check(q, k, v, layout, scale=0.05)


def test_grouped_seq_len_one_and_empty_rows():
    """S = 1 (one query, one key) and rows with no visible key (exactly 0) under GQA."""
    layout = layout_from_masks(np.stack([band_mask(40, 2)] * 4), 16)
    q, k, v = _gqa_inputs(2, 4, 2, 1, 24, 24, torch.float16, seed=1)
    _gqa_check(q, k, v, layout)
    s = 40
    m = band_mask(s, 2)
    m[16:32, :] = False  # query block 1 stores nothing
    layout = layout_from_masks(np.stack([m] * 4), 16)
    q, k, v = _gqa_inputs(2, 4, 1, s, 40, 40, torch.float32, seed=2)
    kpm = torch.ones(2, s, dtype=torch.bool)
    kpm[1, 0:10] = False  # rows 0..7 of batch 1 see only padded keys
    _poison_padding(k, v, kpm)
    out = _gqa_check(q, k, v, layout, kpm)
    assert (out[:, :, 16:32] == 0).all()
    assert (out[1, :, 0:8] == 0).all()


def test_split_query_blocks_and_key_chunks():
    """A tiling smaller than the block (16 x 16 inside blocks of 48): query blocks split over
    three programs, key blocks in three chunks, partial tiles, NaN/Inf V seen by some rows."""
    from sparse_attn.kernels.triton_kernel import LaunchConfig

    s = 100
    pats = [causal_mask(s) & dilated_mask(s, 9, 2), random_token_mask(1, s, 0.3, seed=1)[0]]
    layout = layout_from_masks(np.stack(pats), 48)
    q, k, v = _gqa_inputs(1, 2, 1, s, 40, 24, torch.float16, seed=5)
    v[0, 0, 50, 3] = float("nan")
    v[0, 0, 70, 5] = float("inf")
    v[0, 0, 71, 5] = float("-inf")
    out = _gqa_check(q, k, v, layout, config=LaunchConfig(16, 16, 4))
    assert torch.isfinite(out[0, 0, :50, 3]).all() and torch.isnan(out[0, 0, 50:, 3]).any()


def test_grouped_and_wide_refusals():
    """H not a multiple of Hkv, head dims above 256: reasons, never a launch."""
    s = 20
    layout = layout_from_masks(np.stack([band_mask(s, 2)] * 3), 16)
    q, k, v = _gqa_inputs(1, 3, 2, s, 16, 16, torch.float32)
    r = triton_backend.not_supported_reasons(q, k, v, layout, None)
    assert any("H % Hkv" in x for x in r), r
    q, k, v = _gqa_inputs(1, 3, 1, s, 257, 16, torch.float32)
    r = triton_backend.not_supported_reasons(q, k, v, layout, None)
    assert any("head_dim 257" in x for x in r), r


def test_launch_config_rule():
    """One rule for launcher and AOT: tiles shrink as heads widen, and stay legal."""
    from sparse_attn.kernels.triton_kernel import launch_config, padded_dim

    for dtype in ("float32", "float16", "bfloat16"):
        for bs in (16, 20, 48, 64, 128):
            for d in (1, 16, 40, 64, 80, 128, 200, 256):
                cfg = launch_config(dtype, bs, d, d)
                for n in (cfg.block_m, cfg.block_n):
                    assert 16 <= n <= padded_dim(bs) and n & (n - 1) == 0, (dtype, bs, d, cfg)
                assert cfg.num_warps in (4, 8) and cfg.num_stages in (1, 2, 3)
    assert launch_config("float16", 128, 256, 256).block_m < 128
    with pytest.raises(ValueError, match="head_dim 300"):
        launch_config("float16", 64, 300, 64)


@pytest.mark.slow
@pytest.mark.parametrize("ratio", [1, 2, 4, 8])
@pytest.mark.parametrize("d", [16, 40, 64, 80, 128, 256])
def test_grouped_grid_slow(ratio, d):
    """Slow: every GQA ratio x head dim; dtype and causal vary with the case; Dv differs."""
    dtypes = [torch.float32, torch.float16, torch.bfloat16]
    dtype = dtypes[(ratio + d) % 3]
    causal = (d // 8 + ratio) % 2 == 0
    hkv = 2 if ratio <= 2 else 1
    h = hkv * ratio
    dv = {16: 80, 40: 16, 64: 256, 80: 40, 128: 64, 256: 128}[d]
    s, bs = 70, 32
    pats = [band_mask(s, 5 + 2 * i) | global_mask(s, 1) for i in range(h)]
    if causal:
        pats = [p & causal_mask(s) for p in pats]
    layout = layout_from_masks(np.stack(pats), bs)
    q, k, v = _gqa_inputs(2, h, hkv, s, d, dv, dtype, seed=ratio * 100 + d)
    kpm = random_padding_mask(2, s, seed=d, min_len=30)
    _poison_padding(k, v, kpm)
    _gqa_check(q, k, v, layout, kpm)


def test_array_level_reason_for_the_op_route():
    """``not_supported_reason`` (the custom op's CUDA route) accepts grouped K/V and D = 256,
    and names what it refuses."""
    q, k, v = _gqa_inputs(1, 8, 2, 5, 256, 256, torch.float16)
    assert triton_backend.not_supported_reason(q, k, v, 64) is None
    assert "block_size 8" in triton_backend.not_supported_reason(q, k, v, 8)
    q3, k3, v3 = _gqa_inputs(1, 3, 2, 5, 16, 16, torch.float16)
    assert "H % Hkv" in triton_backend.not_supported_reason(q3, k3, v3, 16)
