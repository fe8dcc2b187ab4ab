"""The block-sparse ``torch`` backend and the dispatcher against the float64 reference.

Both paths of the backend are covered: the pure PyTorch path (``SPARSE_ATTN_DISABLE_CPU_EXT=1``)
and, when the compiled CPU kernel ``sparse_attn.kernels.cpu_ext`` is available, that one.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from testing import (
    assert_close,
    assert_equal,
    band_mask,
    block_local_mask,
    causal_mask,
    dilated_mask,
    global_mask,
    layout_from_masks,
    random_padding_mask,
    random_qkv,
    random_token_mask,
)

import sparse_attn
from sparse_attn.errors import BackendNotSupportedError, InvalidInputError
from sparse_attn.kernels import block_sparse_attention, torch_backend
from sparse_attn.kernels.reference import reference_attention
from sparse_attn.op_arrays import layout_to_tensors


def _cpu_ext_available() -> bool:
    try:
        from sparse_attn.kernels import cpu_ext
    except ImportError:
        return False
    return bool(cpu_ext.is_available())


PATHS = [
    "pure",
    pytest.param(
        "cpu_ext",
        marks=pytest.mark.skipif(
            not _cpu_ext_available(), reason="compiled CPU kernel (cpu_ext) not available"
        ),
    ),
]


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    """Run a test once per CPU path of the torch backend."""
    if request.param == "pure":
        monkeypatch.setenv(torch_backend.DISABLE_CPU_EXT_ENV, "1")
    else:
        monkeypatch.delenv(torch_backend.DISABLE_CPU_EXT_ENV, raising=False)
    assert torch_backend.cpu_ext_active() == (request.param == "cpu_ext")
    return request.param


def _masks(kind: str, s: int, heads: int) -> np.ndarray:
    """bool [H, S, S] token masks following the contract (docs/spec.md) atoms (one pattern per head)."""
    base = {
        "band_global": lambda h: band_mask(s, 5 + 3 * h) | global_mask(s, 2 + h),
        "dilated": lambda h: dilated_mask(s, 3, 2 + h),
        "block_local": lambda h: block_local_mask(s, 7 + 5 * h),
        "random": lambda h: random_token_mask(1, s, 0.2, seed=h)[0],
    }[kind]
    return np.stack([base(h) for h in range(heads)])


# (seq_len of the layout, request S, block size, D, Dv)
SHAPES = [
    (64, 64, 16, 16, 16),  # aligned
    (70, 70, 16, 17, 17),  # ragged S, odd D
    (90, 45, 32, 40, 24),  # crop, Dv != D
    (33, 1, 16, 8, 8),  # S = 1
    (48, 47, 16, 64, 5),  # last block has one missing token
]


@pytest.mark.parametrize("kind", ["band_global", "dilated", "block_local", "random"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda t: "L{}-S{}-bs{}-D{}-Dv{}".format(*t))
def test_grid_fp32_vs_reference(path, kind, causal, shape):
    seq_len, s, bs, d, dv = shape
    heads = 2
    m = _masks(kind, seq_len, heads)
    if causal:
        m &= causal_mask(seq_len)[None]
    lay = layout_from_masks(m, bs, causal=causal)
    q, k, v = random_qkv(2, heads, s, d, dv, dtype=torch.float32, seed=s + d)
    kpm = random_padding_mask(2, s, seed=d)
    want = reference_attention(q, k, v, lay, kpm)
    got = block_sparse_attention(q, k, v, lay, kpm, backend="torch")
    assert got.dtype == torch.float32 and got.shape == (2, heads, s, dv)
    assert_close(got, want, name=f"torch[{path}] {kind} causal={causal} {shape}")
    got_nokpm = block_sparse_attention(q, k, v, lay, backend="torch")
    assert_close(got_nokpm, reference_attention(q, k, v, lay), name="no key padding")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_vs_reference(path, dtype):
    if path == "cpu_ext" and dtype == torch.bfloat16:
        pytest.skip("bf16 is not part of the op contract for the compiled kernel")
    s, bs = 100, 32
    m = np.stack([band_mask(s, 20) | global_mask(s, 4), causal_mask(s)])
    lay = layout_from_masks(m, bs)
    q, k, v = random_qkv(2, 2, s, 32, 16, dtype=dtype, seed=7)
    kpm = random_padding_mask(2, s, seed=1)
    want = reference_attention(q, k, v, lay, kpm)  # float64 over the same rounded inputs
    got = block_sparse_attention(q, k, v, lay, kpm, backend="torch")
    assert got.dtype == dtype
    assert_close(got, want.to(torch.float64), dtype=dtype, name=f"{dtype} output")


def test_fp16_logits_beyond_fp16_range(path):
    """q.k ~ 300*300*64 = 5.8e6 >> 65504 before scaling: must not overflow."""
    s, d = 40, 64
    lay = layout_from_masks(band_mask(s, 6)[None] | global_mask(s, 1)[None], 16)
    g = torch.Generator().manual_seed(0)
    q = (torch.randint(0, 2, (1, 1, s, d), generator=g) * 2 - 1).half() * 300
    k = q.clone()
    k[:, :, 1::2] *= -1  # alternate signs: logits of both signs, far beyond fp16
    k = k + torch.randn(1, 1, s, d, generator=g).half()
    v = torch.randn(1, 1, s, d, generator=g).half()
    assert float((q.double() @ k.double().transpose(-1, -2)).abs().max()) > 65504
    want = reference_attention(q, k, v, lay)
    got = block_sparse_attention(q, k, v, lay, backend="torch")
    assert torch.isfinite(got).all(), "overflow in fp16 logits"
    assert_close(got, want.double(), dtype=torch.float16, name="fp16 large logits")


def test_fully_masked_rows_are_exactly_zero(path):
    s, bs = 50, 16
    m = causal_mask(s)[None].copy()
    m[0, 17, :] = False  # one row of a partial tile sees nothing
    m[0, 32:48, :] = False  # a whole block row sees nothing
    lay = layout_from_masks(m, bs)
    q, k, v = random_qkv(2, 1, s, 8, dtype=torch.float32, seed=3)
    kpm = torch.ones(2, s, dtype=torch.bool)
    kpm[1, :10] = False  # batch 1: rows 0..9 only see padded keys
    got = block_sparse_attention(q, k, v, lay, kpm, backend="torch")
    assert torch.isfinite(got).all()
    assert_equal(got[:, 0, 17], torch.zeros(2, 8), name="row 17")
    assert_equal(got[:, 0, 32:48], torch.zeros(2, 16, 8), name="empty block row")
    assert_equal(got[1, 0, :10], torch.zeros(10, 8), name="rows seeing only padding")
    assert_close(got, reference_attention(q, k, v, lay, kpm), name="fully masked case")


def test_nan_inf_in_masked_keys_do_not_leak(path):
    """NaN/Inf at padded keys, at keys >= S (crop) and at keys masked inside partial tiles."""
    seq_len, s, bs = 80, 70, 16
    m = band_mask(seq_len, 3)[None] | global_mask(seq_len, 2)[None]
    lay = layout_from_masks(m, bs)
    q, k, v = random_qkv(2, 1, s, 16, dtype=torch.float32, seed=11)
    kpm = torch.ones(2, s, dtype=torch.bool)
    kpm[0, 60:] = False
    kpm[1, 5] = False
    clean = block_sparse_attention(q, k, v, lay, kpm, backend="torch")
    k2, v2 = k.clone(), v.clone()
    k2[0, :, 60:] = float("nan")
    v2[0, :, 60:65] = float("inf")
    v2[0, :, 65:] = float("-inf")
    k2[1, :, 5] = float("inf")
    v2[1, :, 5] = float("nan")
    got = block_sparse_attention(q, k2, v2, lay, kpm, backend="torch")
    assert_close(got, clean, atol=1e-6, rtol=1e-6, name="padded keys with NaN/Inf")
    if path == "pure":  # the PyTorch path selects, so the result is bitwise the same
        assert_equal(got, clean, name="padded keys with NaN/Inf")
    # key 40 (not global) holds NaN: visible to queries 37..43 and the global rows 0, 1 only
    v3 = v.clone()
    v3[:, :, 40, 2] = float("nan")
    got3 = block_sparse_attention(q, k, v3, lay, kpm, backend="torch")
    sees = [0, 1, *range(37, 44)]
    rest = [i for i in range(s) if i not in sees]
    assert_close(got3[:, :, rest], clean[:, :, rest], atol=1e-6, rtol=1e-6, name="rows w/o 40")
    assert torch.isnan(got3[:, 0, sees, 2]).all(), "a visible NaN value must propagate"
    other = [0, 1, 3]
    assert_close(got3[:, :, sees][..., other], clean[:, :, sees][..., other], atol=1e-6, rtol=1e-6)
    if path == "pure":
        assert_equal(got3[:, :, rest], clean[:, :, rest], name="rows that cannot see key 40")


def test_crop_equals_layout_built_at_s(path):
    seq_len, s, bs = 96, 53, 16
    m = np.stack([band_mask(seq_len, 7) & causal_mask(seq_len), dilated_mask(seq_len, 2, 3)])
    big = layout_from_masks(m, bs)
    small = layout_from_masks(m[:, :s, :s], bs)
    q, k, v = random_qkv(1, 2, s, 12, dtype=torch.float32, seed=5)
    a = block_sparse_attention(q, k, v, big, backend="torch")
    b = block_sparse_attention(q, k, v, small, backend="torch")
    assert_close(a, b, atol=1e-6, rtol=1e-6, name="crop vs layout at S")
    assert_close(a, reference_attention(q, k, v, small), name="crop vs reference")


def test_float64_is_exact_to_1e12():
    s = 45
    lay = layout_from_masks(random_token_mask(3, s, 0.3, seed=9), 16)
    q, k, v = random_qkv(1, 3, s, 9, 4, dtype=torch.float64, seed=2)
    got = block_sparse_attention(q, k, v, lay, backend="torch")
    assert_close(got, reference_attention(q, k, v, lay), atol=1e-12, rtol=1e-12)


def test_scale_and_integer_padding_mask():
    s = 30
    lay = layout_from_masks(band_mask(s, 4)[None], 16)
    q, k, v = random_qkv(2, 1, s, 8, dtype=torch.float32, seed=1)
    kpm = random_padding_mask(2, s, seed=4)
    want = reference_attention(q, k, v, lay, kpm, scale=0.37)
    got = block_sparse_attention(q, k, v, lay, kpm.to(torch.int64), scale=0.37, backend="torch")
    assert_close(got, want, name="scale=0.37, int64 padding mask")


SMALL_PRESET_ARGS = {
    "bigbird": "bigbird(block=16, r=2)",
    "longformer": "longformer(window=24, n=3)",
    "sparse_transformer_strided": "sparse_transformer_strided(l=24)",
    "sparse_transformer_fixed": "sparse_transformer_fixed(l=32, c=5)",
    "sliding_window": "sliding_window(w=37)",
    "local_vertical_stride": "local_vertical_stride(block=16, local=3, stride=4)",
}


def _compile_layout():
    from sparse_attn import layout

    fn = getattr(layout, "compile_layout", None)
    if fn is None:
        pytest.skip("sparse_attn.layout.compile_layout not landed yet")
    return fn


def test_every_preset_is_covered():
    from sparse_attn.patterns import PRESETS

    assert set(PRESETS) == set(SMALL_PRESET_ARGS), "add new presets to SMALL_PRESET_ARGS"


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("small", [False, True], ids=["defaults", "small"])
@pytest.mark.parametrize("preset", sorted(SMALL_PRESET_ARGS))
def test_presets_vs_reference(path, preset, small, causal):
    compile_layout = _compile_layout()
    spec = SMALL_PRESET_ARGS[preset] if small else preset
    seq_len, bs = 200, 16
    lay = compile_layout(spec, seq_len=seq_len, block_size=bs, num_heads=2, causal=causal)
    s = seq_len if lay.requires_static_seq_len else 171
    q, k, v = random_qkv(1, 2, s, 16, dtype=torch.float32, seed=8)
    kpm = random_padding_mask(1, s, seed=2, min_len=120)
    got = block_sparse_attention(q, k, v, lay, kpm, backend="torch")
    assert_close(got, reference_attention(q, k, v, lay, kpm), name=f"preset {spec}")


def test_per_head_patterns_via_compile_layout(path):
    compile_layout = _compile_layout()
    specs = [
        "band(w=7) | global(n=3)",
        "dilated(w=4, d=3)",
        "block_local(b=20) | causal",
        "bigbird(block=16, r=1)",
    ]
    lay = compile_layout(specs[:3], seq_len=100, block_size=32, num_heads=3)
    q, k, v = random_qkv(2, 3, 77, 24, 8, dtype=torch.float16, seed=4)
    got = block_sparse_attention(q, k, v, lay, backend="torch")
    want = reference_attention(q, k, v, lay)
    assert_close(got, want.double(), dtype=torch.float16, name="per-head patterns")
    # heads really differ: head 0's layout applied to all heads gives a different answer
    one = compile_layout(specs[0], seq_len=100, block_size=32, num_heads=3)
    other = block_sparse_attention(q, k, v, one, backend="torch")
    assert not torch.allclose(other[:, 1:], got[:, 1:])


# ---------------------------------------------------------------------- dispatcher
def test_public_api_and_auto_backend():
    lay = layout_from_masks(band_mask(32, 3)[None], 16)
    q, k, v = random_qkv(1, 1, 32, 8)
    out = sparse_attn.block_sparse_attention(q, k, v, lay)  # auto -> torch on CPU
    assert_close(out, reference_attention(q, k, v, lay), name="auto")
    ref = sparse_attn.block_sparse_attention(q, k, v, lay, backend="reference")
    assert ref.dtype == torch.float32
    assert_close(out, ref, name="reference backend")


def test_unknown_backend_lists_choices():
    lay = layout_from_masks(band_mask(16, 3)[None], 16)
    q, k, v = random_qkv(1, 1, 16, 8)
    with pytest.raises(BackendNotSupportedError, match="unknown backend 'cuda'.*torch"):
        block_sparse_attention(q, k, v, lay, backend="cuda")


def test_unsupported_backend_gives_reasons(monkeypatch):
    """CPU tensors without the Triton interpreter: the triton backend refuses, with reasons."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    lay = layout_from_masks(band_mask(16, 3)[None], 16)
    q, k, v = random_qkv(1, 1, 16, 8)
    with pytest.raises(BackendNotSupportedError, match="backend 'triton' cannot take") as info:
        block_sparse_attention(q, k, v, lay, backend="triton")
    assert list(info.value.reasons) == ["triton"] and info.value.reasons["triton"]
    assert info.value.reasons["triton"][0] in str(info.value)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_float64_refused_by_triton_lists_reason(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    lay = layout_from_masks(band_mask(16, 3)[None], 16)
    q, k, v = random_qkv(1, 1, 16, 8, dtype=torch.float64)
    with pytest.raises(BackendNotSupportedError) as info:
        block_sparse_attention(q, k, v, lay, backend="triton")
    assert any("float64" in r for r in info.value.reasons["triton"]), info.value.reasons


@pytest.mark.parametrize(
    "case,match",
    [
        ("rank", "rank 4"),
        ("heads", "num_heads=3"),
        ("gqa_ratio", r"H=3 must be a multiple of Hkv=2"),
        ("head_dim", r"D \(head_dim of query and key\) must be in 1\.\.256, got 257"),
        ("value_head_dim", r"Dv \(head_dim of value and output\) must be in 1\.\.256, got 300"),
        ("seq_too_long", r"S=40 must be in 1\.\.32"),
        ("dtype_mix", "share one dtype"),
        ("int_dtype", "not supported"),
        ("kpm_shape", r"key_padding_mask must be \[B=1, S=32\]"),
        ("kpm_float", "additive float mask"),
        ("scale_neg", "finite number > 0"),
        ("scale_nan", "finite number > 0"),
        ("value_shape", r"value must be \[B=1, Hkv=1, S=32, Dv\]"),
        ("not_layout", "BlockLayout"),
    ],
)
def test_dispatcher_validation(case, match):
    lay = layout_from_masks(band_mask(32, 3)[None], 16)
    q, k, v = random_qkv(1, 1, 32, 8)
    kw = {}
    args = [q, k, v, lay]
    if case == "rank":
        args[0] = q[0]
    elif case == "heads":
        args[:3] = [x.expand(1, 2, 32, 8) for x in (q, k, v)]
        args[3] = layout_from_masks(np.stack([band_mask(32, 3)] * 3), 16)
    elif case == "gqa_ratio":
        args[:3] = [q.expand(1, 3, 32, 8), k.expand(1, 2, 32, 8), v.expand(1, 2, 32, 8)]
    elif case == "head_dim":
        args[:3] = random_qkv(1, 1, 32, 257, 8)
    elif case == "value_head_dim":
        args[2] = torch.zeros(1, 1, 32, 300)
    elif case == "seq_too_long":
        args[:3] = random_qkv(1, 1, 40, 8)
    elif case == "dtype_mix":
        args[1] = k.half()
    elif case == "int_dtype":
        args[:3] = [x.to(torch.int32) for x in (q, k, v)]
    elif case == "kpm_shape":
        kw["key_padding_mask"] = torch.ones(1, 31, dtype=torch.bool)
    elif case == "kpm_float":
        kw["key_padding_mask"] = torch.zeros(1, 32)
    elif case == "scale_neg":
        kw["scale"] = -1.0
    elif case == "scale_nan":
        kw["scale"] = float("nan")
    elif case == "value_shape":
        args[2] = v[:, :, :5]
    elif case == "not_layout":
        args[3] = np.ones((1, 32, 32), dtype=bool)
    with pytest.raises(InvalidInputError, match=match):
        block_sparse_attention(*args, **kw)


def test_static_seq_len_layout_rejects_shorter_request():
    lay = layout_from_masks(band_mask(32, 3)[None], 16, requires_static_seq_len=True)
    q, k, v = random_qkv(1, 1, 20, 8)
    with pytest.raises(InvalidInputError, match="pad the inputs to 32"):
        block_sparse_attention(q, k, v, lay)


def test_long_sequence_spot_rows():
    """S = 4096: rows checked against an exact per-row float64 computation."""
    s, bs = 4096, 64
    m = band_mask(s, 64)[None]
    lay = layout_from_masks(m, bs)
    q, k, v = random_qkv(1, 1, s, 16, dtype=torch.float32, seed=0)
    out = block_sparse_attention(q, k, v, lay, backend="torch")
    # spot-check three rows against the exact per-row computation
    for i in (0, 2000, s - 1):
        js = torch.from_numpy(np.nonzero(m[0, i])[0])
        sc = (q[0, 0, i].double() @ k[0, 0, js].double().T) / 4.0
        want = torch.softmax(sc, -1) @ v[0, 0, js].double()
        assert_close(out[0, 0, i], want, name=f"row {i}")


def test_auto_picks_torch_on_cpu_even_with_triton_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    calls = []
    real = torch_backend.attention
    monkeypatch.setattr(
        torch_backend, "attention", lambda *a: calls.append(1) or real(*a), raising=True
    )
    lay = layout_from_masks(band_mask(32, 3)[None], 16)
    q, k, v = random_qkv(1, 1, 32, 8)
    out = block_sparse_attention(q, k, v, lay)
    assert calls == [1], "auto must use the torch backend for CPU tensors"
    assert_close(out, reference_attention(q, k, v, lay), name="auto on CPU")


def test_gradients_match_reference(monkeypatch):
    """The pure PyTorch path is differentiable (the compiled kernel refuses grad inputs)."""
    s = 40
    m = np.stack([band_mask(s, 4) | global_mask(s, 2), causal_mask(s)])
    lay = layout_from_masks(m, 16)
    kpm = random_padding_mask(2, s, seed=5)
    grads = []
    for backend in ("torch", "reference"):
        q, k, v = (x.requires_grad_() for x in random_qkv(2, 2, s, 8, 6, torch.float64, seed=1))
        out = block_sparse_attention(q, k, v, lay, kpm, backend=backend)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        grads.append((q.grad, k.grad, v.grad))
    for name, a, b in zip("qkv", grads[0], grads[1], strict=True):
        assert_close(a, b, atol=1e-10, rtol=1e-10, name=f"d{name}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_torch_backend_on_cuda(dtype):
    s = 300
    m = np.stack([band_mask(s, 40) | global_mask(s, 8), dilated_mask(s, 5, 3) & causal_mask(s)])
    lay = layout_from_masks(m, 64)
    q, k, v = random_qkv(2, 2, s - 17, 64, 32, dtype=dtype, seed=3)
    kpm = random_padding_mask(2, s - 17, seed=1)
    want = reference_attention(q, k, v, lay, kpm).double()
    got = block_sparse_attention(*(x.cuda() for x in (q, k, v)), lay, kpm.cuda(), backend="torch")
    assert got.device.type == "cuda"
    assert_close(got.cpu(), want, dtype=dtype, name=f"cuda {dtype}")


def test_layout_with_an_empty_head_and_strided_inputs(path):
    """nnz = 0 for one head (its output is exactly 0); [B, S, H, D] inputs seen through a
    transpose (non-contiguous) give the same result as contiguous ones."""
    s = 40
    m = np.stack([band_mask(s, 3), np.zeros((s, s), dtype=bool)])
    lay = layout_from_masks(m, 16)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, s, 2, 8, generator=g).transpose(1, 2) for _ in range(3))
    assert not q.is_contiguous()
    got = block_sparse_attention(q, k, v, lay, backend="torch")
    assert_equal(got[:, 1], torch.zeros(2, s, 8), name="empty head")
    want = block_sparse_attention(*(x.contiguous() for x in (q, k, v)), lay, backend="torch")
    assert_close(got, want, atol=0, rtol=0, name="strided vs contiguous")
    assert_close(got, reference_attention(q, k, v, lay), name="vs reference")
    empty = layout_from_masks(np.zeros((1, s, s), dtype=bool), 16)
    assert empty.col_idx.shape[1] == 0
    out = block_sparse_attention(q[:, :1], k[:, :1], v[:, :1], empty, backend="torch")
    assert_equal(out, torch.zeros(2, 1, s, 8), name="layout with no tile at all")


@pytest.mark.parametrize(
    "corrupt,match",
    [
        ("col", "col_idx"),
        ("mask", "mask_idx"),
        ("row_ptr", "row_ptr"),
    ],
)
def test_array_entry_rejects_malformed_layouts(monkeypatch, corrupt, match):
    monkeypatch.setenv(torch_backend.DISABLE_CPU_EXT_ENV, "1")
    lay = layout_from_masks(band_mask(48, 5)[None] | causal_mask(48)[None], 16)
    t = {k: v.clone() for k, v in layout_to_tensors(lay).items()}
    if corrupt == "col":
        t["col_idx"][0, 0] = 7
    elif corrupt == "mask":
        t["mask_idx"][0, 0] = 99
    else:
        t["row_ptr"][0, 1] = 5
        t["row_ptr"][0, 2] = 3
    q, k, v = random_qkv(1, 1, 48, 8)
    args = (t["row_ptr"], t["col_idx"], t["mask_idx"], t["masks"], None, 16, 0.3)
    with pytest.raises(InvalidInputError, match=match):
        torch_backend.attention_arrays(q, k, v, *args)


def test_array_entry_accepts_empty_mask_table(path):
    lay = layout_from_masks(np.ones((1, 48, 48), dtype=bool), 16)
    assert lay.masks.shape[0] == 0
    q, k, v = random_qkv(1, 1, 40, 8)
    arrays = [torch.from_numpy(a) for a in (lay.row_ptr, lay.col_idx, lay.mask_idx, lay.masks)]
    got = torch_backend.attention_arrays(q, k, v, *arrays, None, 16, 8**-0.5)
    assert_close(got, reference_attention(q, k, v, lay), name="M = 0")
