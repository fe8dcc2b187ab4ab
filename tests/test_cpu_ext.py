"""Tests of the compiled CPU kernel (sparse_attn/kernels/cpu_ext.py + csrc/).

Every case compares with a float64 dense masked reference built from the layout's token mask
(:meth:`BlockLayout.token_mask` is not used for the expected mask: the masks below are written
directly as token predicates, and the layout is built from them with
:meth:`BlockLayout.from_token_mask`). On failure the worst element is reported.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from sparse_attn.errors import InvalidInputError, UnsupportedEnvironmentError
from sparse_attn.kernels import cpu_ext
from sparse_attn.layout import BlockLayout

pytestmark = pytest.mark.skipif(
    not cpu_ext.is_available(),
    reason=f"CPU extension unavailable: {cpu_ext.unavailable_reason()}",
)


# ----------------------------------------------------------------------------- helpers
def band_global(s: int, w: int, g: int) -> np.ndarray:
    """bool [S, S]: |i - j| <= w or i < g or j < g (band | global)."""
    i = np.arange(s)
    return (np.abs(i[:, None] - i[None, :]) <= w) | (i[:, None] < g) | (i[None, :] < g)


def layout_arrays(layout: BlockLayout) -> list[torch.Tensor]:
    masks = layout.masks
    if masks.shape[0] == 0:  # contract of ops.layout_tensors: never an empty tensor
        masks = np.zeros((1, layout.block_size, layout.block_size), dtype=np.uint8)
    return [
        torch.from_numpy(np.ascontiguousarray(a))
        for a in (layout.row_ptr, layout.col_idx, layout.mask_idx, masks)
    ]


def reference(q, k, v, token_mask, key_padding_mask, scale, exact_nan=True):
    """float64 dense masked attention. token_mask bool [H, S, S]; kpm bool [B, S] or None.

    Grouped K/V ([B, Hkv, S, D]) are expanded per query head here (the reference may copy).
    Rows with no visible key give 0; masked keys' K/V values are never used (they are zeroed
    before the products, so NaN/Inf in them cannot leak into the reference either).
    ``exact_nan=False`` multiplies P V as one matmul: right when NaN/Inf sit only in keys no
    query sees (e.g. padded keys), and far lighter than the exact per-pair sum.
    """
    q, k, v = q.double(), k.double(), v.double()
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    vis = (
        torch.from_numpy(np.array(token_mask, dtype=bool))[None]
        .expand(q.shape[0], -1, -1, -1)
        .clone()
    )
    if key_padding_mask is not None:
        vis &= key_padding_mask[:, None, None, :].bool()
    any_vis_key = vis.any(dim=2)  # [B, H, S_k]: key visible from some query
    k = torch.where(any_vis_key[..., None], k, torch.zeros_like(k))
    v = torch.where(any_vis_key[..., None], v, torch.zeros_like(v))
    scores = (q @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~vis, -math.inf)
    row_any = vis.any(dim=-1, keepdim=True)
    p = torch.softmax(torch.where(row_any, scores, torch.zeros_like(scores)), dim=-1)
    p = torch.where(vis, p, torch.zeros_like(p))
    if not exact_nan:
        return p @ v
    # sum_j p_ij v_j over visible (i, j) only: a key visible from some queries but not from
    # query i must not reach row i even when its V holds NaN/Inf (0 * NaN = NaN).
    terms = p[..., None] * v[:, :, None, :, :]  # [B, H, S_q, S_k, Dv]
    return torch.where(vis[..., None], terms, torch.zeros_like(terms)).sum(dim=-2)


def assert_close(got: torch.Tensor, exp: torch.Tensor, atol: float, rtol: float, what: str):
    """Assert |got - exp| <= atol + rtol |exp| everywhere; report the worst element."""
    got64, exp64 = got.double(), exp.double()
    assert got.shape == exp.shape, f"{what}: shape {list(got.shape)} != {list(exp.shape)}"
    bad_nan = torch.isnan(got64) != torch.isnan(exp64)
    err = (got64 - exp64).abs().nan_to_num(nan=0.0)
    excess = err - (atol + rtol * exp64.abs().nan_to_num(nan=0.0))
    excess = torch.where(bad_nan, torch.full_like(excess, math.inf), excess)
    worst = int(torch.argmax(excess).item())
    if excess.reshape(-1)[worst] > 0:
        idx = np.unravel_index(worst, tuple(got.shape))
        frac = float((excess > 0).double().mean())
        raise AssertionError(
            f"{what}: worst element at {tuple(int(i) for i in idx)}: got "
            f"{got64.reshape(-1)[worst].item()!r}, expected {exp64.reshape(-1)[worst].item()!r} "
            f"(|err| {err.reshape(-1)[worst].item():.3g}, atol {atol}, rtol {rtol}); "
            f"{frac:.2%} of elements out of tolerance"
        )


def run(q, k, v, layout, kpm=None, scale=None):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return cpu_ext.attention_arrays(
        q, k, v, *layout_arrays(layout), kpm, layout.block_size, float(scale)
    )


def rand(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float32).to(dtype)


# ----------------------------------------------------------------------------- accuracy grid
@pytest.mark.parametrize(
    "b,h,s,d,dv,bs,w,g",
    [
        (1, 2, 100, 17, 40, 16, 20, 5),  # S not a multiple of bs, odd D, Dv != D
        (2, 3, 64, 40, 40, 16, 7, 0),  # S multiple of bs, D = 40, no global
        (1, 1, 1, 8, 3, 16, 4, 1),  # S = 1
        (1, 2, 77, 64, 64, 32, 40, 3),  # block 32, ragged last block
        (1, 1, 600, 16, 16, 16, 1000, 0),  # dense rows: runs longer than the 512-key cap
        (1, 2, 130, 32, 24, 64, 64, 64),  # block 64, ragged, global block
    ],
)
def test_matches_float64_reference(b, h, s, d, dv, bs, w, g):
    mask = np.broadcast_to(band_global(s, w, g), (h, s, s))
    layout = BlockLayout.from_token_mask(mask, bs)
    q, k, v = rand(b, h, s, d, seed=1), rand(b, h, s, d, seed=2), rand(b, h, s, dv, seed=3)
    out = run(q, k, v, layout)
    assert out.dtype == torch.float32 and out.shape == (b, h, s, dv)
    assert_close(out, reference(q, k, v, mask, None, d**-0.5), 2e-5, 2e-5, "band|global fp32")


def test_random_token_masks_per_head_with_padding_and_scale():
    """Arbitrary partial tiles, a different pattern per head, key padding, explicit scale."""
    rng = np.random.default_rng(7)
    b, h, s, d, bs = 2, 3, 90, 24, 16
    mask = rng.random((h, s, s)) < np.array([0.05, 0.3, 0.9])[:, None, None]
    mask[1] &= np.tril(np.ones((s, s), dtype=bool))  # head 1 causal
    mask[2, 10:20, :] = False  # head 2: rows with no visible key
    layout = BlockLayout.from_token_mask(mask, bs)
    assert layout.masks.shape[0] > 0
    kpm = torch.ones(b, s, dtype=torch.bool)
    kpm[0, 80:] = False
    kpm[1, ::3] = False
    q, k, v = rand(b, h, s, d, seed=4), rand(b, h, s, d, seed=5), rand(b, h, s, d, seed=6)
    out = run(q, k, v, layout, kpm, scale=0.3)
    exp = reference(q, k, v, mask, kpm, 0.3)
    assert_close(out, exp, 2e-5, 2e-5, "random masks + padding")
    assert torch.all(out[:, 2, 10:20] == 0), "rows with no visible key must be exactly 0"


def test_fully_masked_rows_are_exact_zero():
    s, bs = 48, 16
    mask = np.zeros((1, s, s), dtype=bool)
    mask[0, :20, :20] = True  # rows 20.. see nothing; row block 1 is partially masked
    layout = BlockLayout.from_token_mask(mask, bs)
    q, k, v = rand(1, 1, s, 8), rand(1, 1, s, 8, seed=1), rand(1, 1, s, 8, seed=2)
    out = run(q, k, v, layout)
    assert not torch.isnan(out).any()
    assert torch.all(out[0, 0, 20:] == 0)
    assert_close(out, reference(q, k, v, mask, None, 8**-0.5), 2e-5, 2e-5, "masked rows")
    # Every key padded: every row is exactly 0.
    out = run(q, k, v, layout, torch.zeros(1, s, dtype=torch.bool))
    assert torch.all(out == 0)


def test_nan_inf_in_masked_keys_never_leak():
    """NaN/Inf written into padded keys' K/V: the output stays finite and unchanged."""
    b, h, s, d, bs = 2, 2, 70, 16, 16
    mask = np.broadcast_to(band_global(s, 9, 2), (h, s, s))
    layout = BlockLayout.from_token_mask(mask, bs)
    kpm = torch.ones(b, s, dtype=torch.bool)
    kpm[0, 60:] = False
    kpm[1, 30:35] = False
    q, k, v = rand(b, h, s, d, seed=8), rand(b, h, s, d, seed=9), rand(b, h, s, d, seed=10)
    clean = run(q, k, v, layout, kpm)
    k2, v2 = k.clone(), v.clone()
    for bb in range(b):
        pad = ~kpm[bb]
        k2[bb, :, pad] = math.nan
        v2[bb, 0, pad] = math.inf
        v2[bb, 1, pad] = math.nan
    dirty = run(q, k2, v2, layout, kpm)
    assert torch.isfinite(dirty).all(), "NaN/Inf of padded keys leaked into the output"
    # Runs holding non-finite V rows take the NaN-safe loop instead of the SGEMM: the
    # summation order differs, so compare to rounding, not bit for bit.
    assert_close(dirty, clean, 1e-6, 1e-6, "padded keys' K/V changed the output")
    assert_close(clean, reference(q, k, v, mask, kpm, d**-0.5), 2e-5, 2e-5, "padding")


def test_nan_in_key_visible_to_other_queries_only():
    """Key 5 is visible from query 5 only (block-local partial tile); its V holds NaN/Inf.

    Query 5's output is NaN (as in the reference); every other row must stay finite even
    though key 5 sits inside the same tiles (p == 0 exactly, 0 * NaN must not happen).
    """
    s, bs, d = 32, 16, 8
    mask = np.eye(s, dtype=bool) | band_global(s, 2, 0)
    mask[:, 5] = False
    mask[5, 5] = True
    layout = BlockLayout.from_token_mask(mask[None], bs)
    q, k, v = rand(1, 1, s, d), rand(1, 1, s, d, seed=1), rand(1, 1, s, d, seed=2)
    v[0, 0, 5, 0] = math.nan
    v[0, 0, 5, 1] = math.inf
    out = run(q, k, v, layout)
    others = torch.ones(s, dtype=torch.bool)
    others[5] = False
    assert torch.isfinite(out[0, 0, others]).all(), "NaN of key 5 leaked into other rows"
    assert torch.isnan(out[0, 0, 5, 0])
    exp = reference(q, k, v, mask[None], None, d**-0.5)
    assert_close(out[0, 0, others], exp[0, 0, others], 2e-5, 2e-5, "other rows")


def test_crop_uses_full_layout_arrays():
    """Layout built for 96 tokens, requests of 70 and 33 tokens use the same arrays."""
    smax, bs, h = 96, 16, 2
    full = np.stack([band_global(smax, 11, 3), band_global(smax, 4, 0) & np.tri(smax, dtype=bool)])
    layout = BlockLayout.from_token_mask(full, bs)
    for s in (70, 33, 16, 1):
        q, k, v = rand(1, h, s, 12, seed=s), rand(1, h, s, 12, seed=s + 1), rand(1, h, s, 20)
        out = run(q, k, v, layout)
        exp = reference(q, k, v, full[:, :s, :s], None, 12**-0.5)
        assert_close(out, exp, 2e-5, 2e-5, f"crop to S={s}")
        # The BlockLayout.crop() arrays give the same result.
        assert_close(run(q, k, v, layout.crop(s)), exp, 2e-5, 2e-5, f"layout.crop({s})")


def test_fp16_scores_beyond_fp16_range():
    """q.k ~ 3e5 (fp16 max is 65504) before scaling: softmax must run in fp32."""
    b, h, s, d, bs = 1, 2, 50, 32, 16
    mask = np.broadcast_to(band_global(s, 12, 1), (h, s, s))
    layout = BlockLayout.from_token_mask(mask, bs)
    q = (rand(b, h, s, d, seed=11) * 100).half()
    k = (rand(b, h, s, d, seed=12) * 100).half()
    v = rand(b, h, s, d, seed=13).half()
    qk = (q.double() @ k.double().transpose(-1, -2)).abs().max().item()
    assert qk > 65504, f"test premise: |q.k| should exceed the fp16 range, got {qk}"
    out = run(q, k, v, layout, scale=1.0 / 4096)
    assert out.dtype == torch.float16
    assert torch.isfinite(out).all()
    assert_close(out, reference(q, k, v, mask, None, 1.0 / 4096), 2e-3, 2e-3, "fp16")


def test_bf16_output_dtype_and_accuracy():
    mask = band_global(40, 5, 1)[None]
    layout = BlockLayout.from_token_mask(mask, 16)
    q, k, v = (rand(1, 1, 40, 16, dtype=torch.bfloat16, seed=i) for i in range(3))
    out = run(q, k, v, layout)
    assert out.dtype == torch.bfloat16
    assert_close(out, reference(q, k, v, mask, None, 0.25), 1e-2, 1e-2, "bf16")


def test_thread_count_does_not_change_result():
    mask = np.broadcast_to(band_global(200, 30, 4), (4, 200, 200))
    layout = BlockLayout.from_token_mask(mask, 16)
    q, k, v = rand(2, 4, 200, 32), rand(2, 4, 200, 32, seed=1), rand(2, 4, 200, 32, seed=2)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run(q, k, v, layout)
        torch.set_num_threads(2)
        two = run(q, k, v, layout)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_non_contiguous_inputs():
    mask = band_global(48, 6, 2)[None].repeat(2, axis=0)
    layout = BlockLayout.from_token_mask(mask, 16)
    q = rand(1, 48, 2, 16).transpose(1, 2)  # [B, S, H, D] storage
    k = rand(1, 48, 2, 16, seed=1).transpose(1, 2)
    v = rand(1, 48, 2, 16, seed=2).transpose(1, 2)
    assert not q.is_contiguous()
    assert_close(run(q, k, v, layout), reference(q, k, v, mask, None, 0.25), 2e-5, 2e-5, "strided")


# ----------------------------------------------------------------------------- errors
def _good():
    layout = BlockLayout.from_token_mask(band_global(32, 3, 1)[None], 16)
    q, k, v = rand(1, 1, 32, 8), rand(1, 1, 32, 8), rand(1, 1, 32, 8)
    return q, k, v, layout_arrays(layout)


def test_bad_inputs_raise_invalid_input_error():
    q, k, v, arrs = _good()
    with pytest.raises(InvalidInputError, match="int32"):
        cpu_ext.attention_arrays(q, k, v, arrs[0].long(), *arrs[1:], None, 16, 0.3)
    with pytest.raises(InvalidInputError, match="dtype"):
        cpu_ext.attention_arrays(q.double(), k.double(), v.double(), *arrs, None, 16, 0.3)
    with pytest.raises(InvalidInputError, match="share one dtype"):
        cpu_ext.attention_arrays(q, k.half(), v, *arrs, None, 16, 0.3)
    with pytest.raises(InvalidInputError, match="block_size"):
        cpu_ext.attention_arrays(q, k, v, *arrs, None, 0, 0.3)
    with pytest.raises(InvalidInputError, match="masks must be"):
        cpu_ext.attention_arrays(q, k, v, *arrs[:3], arrs[3][:, :8, :8], None, 16, 0.3)
    bad_col = arrs[1].clone()
    bad_col[0, 0] = 7
    with pytest.raises(InvalidInputError, match="col_idx"):
        cpu_ext.attention_arrays(q, k, v, arrs[0], bad_col, *arrs[2:], None, 16, 0.3)
    bad_m = arrs[2].clone()
    bad_m[0, 0] = 99
    with pytest.raises(InvalidInputError, match="mask_idx"):
        cpu_ext.attention_arrays(q, k, v, *arrs[:2], bad_m, arrs[3], None, 16, 0.3)
    long_q = rand(1, 1, 40, 8)
    with pytest.raises(InvalidInputError, match="blocks"):
        cpu_ext.attention_arrays(long_q, long_q, long_q, *arrs, None, 16, 0.3)
    with pytest.raises(InvalidInputError, match="key_padding_mask"):
        cpu_ext.attention_arrays(q, k, v, *arrs, torch.ones(2, 32, dtype=torch.bool), 16, 0.3)
    with pytest.raises(InvalidInputError, match="value"):
        cpu_ext.attention_arrays(q, k, rand(1, 1, 31, 8), *arrs, None, 16, 0.3)


def test_disable_env_forces_unavailable(monkeypatch):
    monkeypatch.setenv(cpu_ext.DISABLE_ENV, "1")
    assert cpu_ext.is_available() is False
    assert cpu_ext.DISABLE_ENV in cpu_ext.unavailable_reason()
    monkeypatch.delenv(cpu_ext.DISABLE_ENV)
    assert cpu_ext.is_available() is True


@pytest.mark.parametrize("value,active", [("", True), ("0", True), ("1", False), ("yes", False)])
def test_torch_backend_follows_the_disable_env(monkeypatch, value, active):
    from sparse_attn.kernels import torch_backend

    assert torch_backend.DISABLE_CPU_EXT_ENV == cpu_ext.DISABLE_ENV
    monkeypatch.setenv(cpu_ext.DISABLE_ENV, value)
    assert torch_backend.cpu_ext_active() is active


def test_not_supported_reasons():
    q = rand(1, 1, 8, 4)
    assert cpu_ext.not_supported_reasons(q, q, q) == []
    reasons = cpu_ext.not_supported_reasons(q.double(), q.double(), q.double())
    assert any("dtype" in r for r in reasons)


def test_concurrent_calls_from_python_threads():
    """The runtime serves requests from several threads: results must not interfere."""
    from concurrent.futures import ThreadPoolExecutor

    mask = np.broadcast_to(band_global(120, 10, 2), (2, 120, 120))
    layout = BlockLayout.from_token_mask(mask, 16)
    inputs = [
        (rand(1, 2, 120, 16, seed=3 * i), rand(1, 2, 120, 16, seed=3 * i + 1), rand(1, 2, 120, 8))
        for i in range(6)
    ]
    expected = [run(*x, layout) for x in inputs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda x: run(*x, layout), inputs * 3))
    for i, g in enumerate(got):
        assert torch.equal(g, expected[i % len(inputs)]), f"call {i} differs"


def test_empty_mask_table():
    """A layout of full tiles only has M = 0 masks; the kernel takes the empty table as is."""
    mask = np.kron(np.eye(3, dtype=bool), np.ones((16, 16), dtype=bool))  # block-diagonal
    layout = BlockLayout.from_token_mask(mask[None], 16)
    assert layout.masks.shape[0] == 0
    q, k, v = rand(1, 1, 48, 8), rand(1, 1, 48, 8, seed=1), rand(1, 1, 48, 8, seed=2)
    arrs = [torch.from_numpy(a) for a in (layout.row_ptr, layout.col_idx, layout.mask_idx)]
    out = cpu_ext.attention_arrays(q, k, v, *arrs, torch.from_numpy(layout.masks), None, 16, 0.5)
    assert_close(out, reference(q, k, v, mask[None], None, 0.5), 2e-5, 2e-5, "M = 0")


def test_fake_impl_gives_output_shape():
    from torch._subclasses.fake_tensor import FakeTensorMode

    q, k, v, arrs = _good()
    v = rand(1, 1, 32, 5)
    with FakeTensorMode() as mode:
        fq, fk, fv = (mode.from_tensor(t) for t in (q, k, v))
        farrs = [mode.from_tensor(t) for t in arrs]
        out = torch.ops.sparse_attn_cpu.attention_arrays(fq, fk, fv, *farrs, None, 16, 0.3)
    assert tuple(out.shape) == (1, 1, 32, 5) and out.dtype == torch.float32


def test_stale_build_lock_is_removed(tmp_path):
    lock = tmp_path / "lock"
    lock.write_text("")
    cpu_ext._remove_stale_lock(tmp_path)
    assert lock.exists(), "a fresh lock belongs to a running build and must stay"
    old = cpu_ext.time.time() - cpu_ext._STALE_LOCK_S - 10
    os.utime(lock, (old, old))
    cpu_ext._remove_stale_lock(tmp_path)
    assert not lock.exists()


# ----------------------------------------------------------------------------- ISA paths
#: Every instruction-set path of the binary this CPU can run (scalar always).
ISAS_HERE = cpu_ext.supported_isas() if cpu_ext.is_available() else ["scalar"]


@pytest.fixture(params=ISAS_HERE)
def isa(request, monkeypatch):
    """Run the test once per ISA path this CPU supports (SPARSE_ATTN_CPU_ISA forces it)."""
    monkeypatch.setenv(cpu_ext.ISA_ENV, request.param)
    assert cpu_ext.isa() == request.param
    return request.param


def test_isa_reported_and_forced(monkeypatch):
    assert "scalar" in ISAS_HERE and set(ISAS_HERE) <= set(cpu_ext.ISAS)
    monkeypatch.delenv(cpu_ext.ISA_ENV, raising=False)
    assert cpu_ext.isa() == ISAS_HERE[-1], "auto must pick the best ISA this CPU runs"
    monkeypatch.setenv(cpu_ext.ISA_ENV, "sse9")
    with pytest.raises(UnsupportedEnvironmentError, match="not one of"):
        cpu_ext.isa()
    q, k, v, arrs = _good()
    with pytest.raises(UnsupportedEnvironmentError, match=cpu_ext.ISA_ENV):
        cpu_ext.attention_arrays(q, k, v, *arrs, None, 16, 0.3)
    missing = [i for i in cpu_ext.ISAS if i not in ISAS_HERE]
    if missing:  # an ISA this CPU lacks is refused, never run
        monkeypatch.setenv(cpu_ext.ISA_ENV, missing[0])
        with pytest.raises(UnsupportedEnvironmentError, match="this CPU runs only"):
            cpu_ext.attention_arrays(q, k, v, *arrs, None, 16, 0.3)


# (B, H, Hkv, S, D, Dv, block, causal, dtype): every GQA ratio in {1, 2, 4, 8} (Hkv = 1
# included), every head dim in {16, 40, 64, 80, 128, 256} as D and as Dv, S not a multiple
# of the block, S = 1.
GQA_GRID = [
    (1, 2, 2, 50, 16, 40, 16, False, torch.float32),
    (2, 4, 2, 70, 40, 16, 32, True, torch.float32),
    (1, 4, 1, 100, 256, 256, 64, True, torch.float32),
    (1, 8, 1, 37, 80, 64, 16, False, torch.float32),
    (1, 8, 2, 45, 64, 80, 16, True, torch.float16),
    (1, 8, 4, 33, 128, 128, 16, False, torch.bfloat16),
    (2, 4, 1, 1, 64, 64, 64, True, torch.float32),
    (1, 2, 1, 90, 128, 256, 32, False, torch.float16),
    (1, 6, 3, 81, 256, 40, 32, True, torch.bfloat16),
]
TOL = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("b,h,hkv,s,d,dv,bs,causal,dtype", GQA_GRID)
def test_grouped_kv_grid(isa, b, h, hkv, s, d, dv, bs, causal, dtype):
    """Grouped K/V, wide/odd head dims, padding with NaN/Inf in padded K/V, vs float64."""
    mask = band_global(s, 9, 2)
    if causal:
        mask = mask & np.tri(s, dtype=bool)
    mask = np.broadcast_to(mask, (h, s, s))
    layout = BlockLayout.from_token_mask(mask, bs)
    q = rand(b, h, s, d, dtype=dtype, seed=1)
    k = rand(b, hkv, s, d, dtype=dtype, seed=2)
    v = rand(b, hkv, s, dv, dtype=dtype, seed=3)
    kpm = torch.ones(b, s, dtype=torch.bool)
    if s > 4:
        kpm[0, s - 3 :] = False
        kpm[-1, 1] = False
        for bb in range(b):
            k[bb, :, ~kpm[bb]] = math.nan
            v[bb, :, ~kpm[bb]] = math.inf
    out = run(q, k, v, layout, kpm)
    assert out.dtype == dtype and out.shape == (b, h, s, dv)
    assert torch.isfinite(out).all(), "NaN/Inf of padded keys leaked"
    exp = reference(q, k, v, mask, kpm, d**-0.5, exact_nan=False)
    assert_close(out, exp, TOL[dtype], TOL[dtype], f"GQA {h}/{hkv} D={d} Dv={dv} {dtype} {isa}")


def test_grouped_equals_repeated_kv_bitwise(isa):
    """Processing the query heads of a K/V head together must not change any bit."""
    h, hkv, s, d = 8, 2, 150, 48
    mask = np.stack([band_global(s, 5 + 7 * (i // 2), 1) for i in range(h)])  # pairs differ
    layout = BlockLayout.from_token_mask(mask, 32)
    q, k, v = rand(2, h, s, d, seed=4), rand(2, hkv, s, d, seed=5), rand(2, hkv, s, 24, seed=6)
    grouped = run(q, k, v, layout)
    repeated = run(q, k.repeat_interleave(4, 1), v.repeat_interleave(4, 1), layout)
    assert torch.equal(grouped, repeated)
    assert_close(grouped, reference(q, k, v, mask, None, d**-0.5), 2e-5, 2e-5, "per-head rows")


def test_layout_shared_by_all_heads(isa):
    """row_ptr / col_idx / mask_idx with one row set ([1, ...]) serve every query head."""
    s, h = 70, 4
    mask1 = band_global(s, 6, 3) & np.tri(s, dtype=bool)
    layout = BlockLayout.from_token_mask(mask1[None], 16)
    q, k, v = rand(1, h, s, 32, seed=7), rand(1, 1, s, 32, seed=8), rand(1, 1, s, 32, seed=9)
    out = run(q, k, v, layout)
    exp = reference(q, k, v, np.broadcast_to(mask1, (h, s, s)), None, 32**-0.5)
    assert_close(out, exp, 2e-5, 2e-5, "layout [1, ...]")


def test_every_path_on_random_masks(isa):
    """Arbitrary partial tiles per head, padding, NaN-visible-to-one-query, per ISA path."""
    rng = np.random.default_rng(3)
    b, h, s, d, bs = 2, 4, 77, 20, 16
    mask = rng.random((h, s, s)) < np.array([0.1, 0.5, 0.9, 0.3])[:, None, None]
    mask[3, 40:50] = False  # empty rows
    layout = BlockLayout.from_token_mask(mask, bs)
    kpm = torch.ones(b, s, dtype=torch.bool)
    kpm[1, 60:] = False
    q, k, v = rand(b, h, s, d, seed=1), rand(b, 2, s, d, seed=2), rand(b, 2, s, 12, seed=3)
    out = run(q, k, v, layout, kpm, scale=0.4)
    assert torch.all(out[:, 3, 40:50] == 0)
    assert_close(out, reference(q, k, v, mask, kpm, 0.4), 2e-5, 2e-5, f"random masks {isa}")


def test_fp16_values_near_overflow(isa):
    """V near the fp16 maximum and scores beyond it: finite, accurate fp16 output."""
    s, d = 40, 16
    mask = band_global(s, 6, 1)[None].repeat(2, axis=0)
    layout = BlockLayout.from_token_mask(mask, 16)
    q = (rand(1, 2, s, d, seed=1) * 120).half()
    k = (rand(1, 1, s, d, seed=2) * 120).half()
    v = (torch.rand(1, 1, s, d, generator=torch.Generator().manual_seed(3)) * 6e4).half()
    out = run(q, k, v, layout, scale=1.0 / 256)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    exp = reference(q, k, v, mask, None, 1.0 / 256)
    assert_close(out, exp, 1.0, 2e-3, f"fp16 near overflow {isa}")


@pytest.mark.parametrize("bs", [32, 64])
def test_partial_tiles_rows_skipped_per_column_group(isa, bs):
    """Partial tiles whose visible keys differ between groups of 16 query rows.

    The kernel skips, per group of 16 query columns, the key rows of a run that no column of
    the group sees (the causal diagonal, the left edge of a sliding window, sparse random
    tiles); every visible key must still count, and NaN/Inf in padded keys must not leak.
    """
    rng = np.random.default_rng(bs)
    b, h, hkv, s, d, dv = 2, 4, 1, 333, 40, 24
    window = np.tri(s, dtype=bool) & ~np.tri(s, k=-100, dtype=bool)  # 100-key causal window
    sparse = window & (rng.random((s, s)) < 0.2)
    sparse[:, 70:75] = False  # keys visible to nobody in the middle of a tile
    mask = np.stack([window, window, sparse, band_global(s, 40, 3)])
    layout = BlockLayout.from_token_mask(mask, bs)
    q, k, v = rand(b, h, s, d, seed=1), rand(b, hkv, s, d, seed=2), rand(b, hkv, s, dv, seed=3)
    kpm = torch.ones(b, s, dtype=torch.bool)
    kpm[0, s - 20 :] = False
    kpm[1, 90:97] = False
    for bb in range(b):
        k[bb, :, ~kpm[bb]] = math.nan
        v[bb, :, ~kpm[bb]] = math.inf
    out = run(q, k, v, layout, kpm)
    assert torch.isfinite(out).all(), "NaN/Inf of padded keys leaked"
    exp = reference(q, k, v, mask, kpm, d**-0.5, exact_nan=False)
    assert_close(out, exp, 2e-5, 2e-5, f"per-group key rows, block {bs}, {isa}")


def test_head_dim_and_group_limits_are_reported():
    q = rand(1, 4, 8, 300)
    assert "300" in cpu_ext.not_supported_reason(q, q[:, :1], q[:, :1], 16)
    q = rand(1, 4, 8, 16)
    assert "multiple" in cpu_ext.not_supported_reason(q, q[:, :3], q[:, :3], 16)
    assert cpu_ext.not_supported_reason(q, q[:, :1], rand(1, 1, 8, 256), 16) is None
    layout = BlockLayout.from_token_mask(band_global(8, 2, 0)[None].repeat(4, 0), 4)
    with pytest.raises(InvalidInputError, match="multiple of key/value heads"):
        run(q, q[:, :3], q[:, :3], layout)
    with pytest.raises(InvalidInputError, match="Dv=257"):
        run(q, q[:, :1], rand(1, 1, 8, 257), layout)
