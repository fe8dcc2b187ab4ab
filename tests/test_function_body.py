"""The block-sparse ONNX function body vs the float64 dense reference (ONNX Runtime CPU,
onnx.reference), directly on one-node models (no torch export involved)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from sparse_attn import opspec
from sparse_attn.errors import InvalidInputError
from sparse_attn.export import exporter, function_body
from sparse_attn.kernels.reference import reference_attention
from sparse_attn.layout import BlockLayout, compile_layout

ort = pytest.importorskip("onnxruntime")


def assert_close(got, exp, atol, rtol, what):
    """Fail with the worst element (index, got, expected) and the failing fraction."""
    got64, exp64 = np.asarray(got, np.float64), np.asarray(exp, np.float64)
    assert got64.shape == exp64.shape, f"{what}: shape {got64.shape} != {exp64.shape}"
    assert np.isfinite(got64).all(), (
        f"{what}: non-finite output at {np.argwhere(~np.isfinite(got64))[:3]}"
    )
    err = np.abs(got64 - exp64)
    bad = err > atol + rtol * np.abs(exp64)
    if bad.any():
        idx = np.unravel_index(int(np.argmax(err)), err.shape)
        pytest.fail(
            f"{what}: worst at {idx}: got {got64[idx]!r}, expected {exp64[idx]!r} "
            f"(|err| {err[idx]:.3e}); {bad.mean():.2%} out of tolerance"
        )


def session(model: onnx.ModelProto):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def make_inputs(rng, b, h, s, d, dv, dtype, poison=True):
    q, k = (rng.standard_normal((b, h, s, d)).astype(dtype) for _ in range(2))
    v = rng.standard_normal((b, h, s, dv)).astype(dtype)
    kpm = rng.random((b, s)) > 0.3
    kpm[:, 0] = True
    if b > 1 and s > 2:
        kpm[1, s // 2 :] = False
    if poison:  # padded slots hold NaN / Inf: they must not leak
        pad = ~kpm[:, None, :, None]
        k = np.where(pad, np.nan, k).astype(dtype)
        v = np.where(pad, np.inf, v).astype(dtype)
    return q, k, v, kpm


def reference(layout, q, k, v, kpm, scale=None):
    t = [torch.from_numpy(np.ascontiguousarray(x)) for x in (q, k, v)]
    m = None if kpm is None else torch.from_numpy(kpm)
    return reference_attention(*t, layout, m, scale=scale).numpy()


def custom_layout() -> BlockLayout:
    """Per-head patterns with an empty query range, a zero column block and ragged edges."""
    s = 75
    i, j = np.arange(s)[:, None], np.arange(s)[None, :]
    h0 = (np.abs(i - j) <= 4) | (j < 2)
    h1 = (j <= i) & (i - j < 19)
    h1[30:41] = False  # queries that see nothing -> exact zeros
    h2 = np.zeros((s, s), dtype=bool)
    h2[:, 50:53] = True  # every query sees only keys 50..52
    return BlockLayout.from_token_mask(np.stack([h0, h1, h2]), 16)


CASES = [
    ("band(w=20) | global(n=3)", 100, 16, 2, False),
    ("dilated(w=3, d=5) | block_local(b=24)", 90, 16, 2, False),
    ("band(w=10)", 64, 16, 1, True),
    ("random(r=2, seed=3) | global(n=1)", 96, 32, 2, False),
]


@pytest.mark.parametrize("spec,max_s,bs,heads,causal", CASES)
def test_body_matches_reference_fp32(spec, max_s, bs, heads, causal):
    layout = compile_layout(spec, max_s, bs, num_heads=heads, causal=causal)
    model = function_body.make_node_model(layout, head_dim=8, value_dim=6)
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    sess = session(model)
    rng = np.random.default_rng(0)
    for s in sorted({1, bs - 1, bs + 3, max_s // 2 + 1, max_s}):
        q, k, v, kpm = make_inputs(rng, 2, heads, s, 8, 6, np.float32)
        (out,) = sess.run(None, dict(query=q, key=k, value=v, key_padding_mask=kpm))
        assert_close(out, reference(layout, q, k, v, kpm), 2e-5, 1e-4, f"{spec} S={s}")


def test_body_custom_layout_zero_rows_and_no_padding_input():
    layout = custom_layout()
    rng = np.random.default_rng(1)
    for with_kpm in (True, False):
        sess = session(function_body.make_node_model(layout, head_dim=4, key_padding_mask=with_kpm))
        for s in (1, 31, 52, 75):
            q, k, v, kpm = make_inputs(rng, 2, 3, s, 4, 4, np.float32, poison=with_kpm)
            feeds = dict(query=q, key=k, value=v)
            if with_kpm:
                feeds["key_padding_mask"] = kpm
            (out,) = sess.run(None, feeds)
            exp = reference(layout, q, k, v, kpm if with_kpm else None)
            assert_close(out, exp, 2e-5, 1e-4, f"custom kpm={with_kpm} S={s}")
            if s > 40:  # head 1 rows 30..40 see nothing: exactly zero
                assert np.all(out[:, 1, 30:41] == 0.0)
            if s <= 50:  # head 2 sees only keys 50..52, all beyond the request
                assert np.all(out[:, 2] == 0.0)


def test_body_fp16_graph_keeps_fp32_math():
    layout = compile_layout("band(w=24) | global(n=2)", 80, 16, num_heads=2)
    model = function_body.make_node_model(layout, dtype="float16", head_dim=16)
    onnx.checker.check_model(model, full_check=True)
    sess = session(model)
    rng = np.random.default_rng(2)
    for s in (1, 45, 80):
        q, k, v, kpm = make_inputs(rng, 2, 2, s, 16, 16, np.float16)
        (out,) = sess.run(None, dict(query=q, key=k, value=v, key_padding_mask=kpm))
        assert out.dtype == np.float16
        exp = reference(layout, q, k, v, kpm)  # float64 math on the fp16 inputs
        assert_close(out, exp, 1e-3, 4e-3, f"fp16 S={s}")


def test_reference_evaluator_runs_the_body():
    from onnx.reference import ReferenceEvaluator

    layout = custom_layout()
    model = function_body.make_node_model(layout, head_dim=4)
    rng = np.random.default_rng(3)
    q, k, v, kpm = make_inputs(rng, 1, 3, 45, 4, 4, np.float32)
    with np.errstate(invalid="ignore"):
        (out,) = ReferenceEvaluator(model).run(
            None, dict(query=q, key=k, value=v, key_padding_mask=kpm)
        )
    assert_close(out, reference(layout, q, k, v, kpm), 2e-5, 1e-4, "onnx.reference")


def test_buckets_cover_rows_once_and_isolate_global_rows():
    layout = compile_layout("band(w=256) | global(n=64)", 4096, 64, num_heads=2)
    buckets = function_body.plan_buckets(layout)
    seen = sorted(
        (int(h), int(r)) for b in buckets for hs, r in zip(b.heads, b.rows, strict=True) for h in hs
    )
    assert seen == [(h, r) for h in range(2) for r in range(layout.num_blocks)]
    computed = sum(b.cols.size for b in buckets)
    stored = int(layout.nnz.sum())
    # one global row per head must not make every row dense (a padded max_nnz grid would)
    assert computed <= 1.25 * stored, (computed, stored)
    widths = {b.width for b in buckets}
    assert layout.num_blocks in widths and max(w for w in widths if w < layout.num_blocks) <= 10


def test_grouped_units_gather_kv_once_for_identical_heads():
    """Hkv=2 over H=4 with one shared pattern: every unit holds both query heads of its
    K/V head; a layout whose heads differ falls back to units of one head where needed."""
    shared = compile_layout("band(w=20) | causal", 96, 16, num_heads=4)
    buckets = function_body.plan_buckets(shared, num_kv_heads=2)
    assert {b.heads_per_unit for b in buckets} == {2}
    for b in buckets:
        assert (b.heads // 2 == b.kv_heads[:, None]).all()
    units = sum(len(b.rows) for b in buckets)
    assert units == 2 * shared.num_blocks  # (K/V head, block) pairs, not (query head, block)
    mixed = compile_layout(
        ["band(w=20)", "band(w=20)", "band(w=20)", "global(n=3)"], 96, 16, num_heads=4
    )
    mb = function_body.plan_buckets(mixed, num_kv_heads=2)
    per_head = [b for b in mb if b.heads_per_unit == 1]
    assert {int(h) for b in per_head for h in b.heads[:, 0]} == {2, 3}
    seen = sorted(
        (int(h), int(r)) for b in mb for hs, r in zip(b.heads, b.rows, strict=True) for h in hs
    )
    assert seen == [(h, r) for h in range(4) for r in range(mixed.num_blocks)]
    with pytest.raises(ValueError, match="num_kv_heads"):
        function_body.plan_buckets(shared, num_kv_heads=3)


# GQA ratio x (D, Dv) x causal x dtype, compactly: every ratio 1/2/4/8 (Hkv = 1 included),
# every head dim 16/40/64/80/128/256 as D and as Dv, causal and not, fp32 and fp16.
GQA_CASES = [
    # spec, H, Hkv, D, Dv, causal, dtype, baked Hkv
    ("band(w=20) | global(n=3)", 8, 8, 16, 40, False, "float32", True),
    ("band(w=20)", 8, 4, 40, 64, True, "float32", True),
    ("dilated(w=2, d=7) | block_local(b=24)", 8, 2, 64, 80, False, "float16", True),
    ("band(w=12) | global(n=1)", 8, 1, 80, 128, True, "float32", False),
    ("band(w=30)", 4, 1, 256, 256, True, "float16", True),
    ("random(r=2, seed=3) | global(n=2)", 8, 2, 128, 16, False, "float32", True),
]


@pytest.mark.parametrize("spec,h,hkv,d,dv,causal,dtype,baked", GQA_CASES)
def test_body_grouped_kv_and_wide_heads(spec, h, hkv, d, dv, causal, dtype, baked):
    """K/V of Hkv heads, D/Dv up to 256, key padding with NaN/Inf in the padded K/V, S not
    a multiple of the block and S = 1, two batch sizes, one file; a small work budget so
    that every bucket takes several loop iterations."""
    bs = 16
    layout = compile_layout(spec, 88, bs, num_heads=h, causal=causal)
    npdt = np.float16 if dtype == "float16" else np.float32
    model = function_body.make_node_model(
        layout,
        dtype=dtype,
        head_dim=d,
        value_dim=dv,
        num_kv_heads=hkv,
        bake_kv_heads=baked,
        work_budget=64 * 1024,
    )
    onnx.checker.check_model(model, full_check=True)
    sess = session(model)
    rng = np.random.default_rng(h * 100 + hkv + d)
    atol, rtol = (1e-3, 4e-3) if dtype == "float16" else (2e-5, 1e-4)
    for b, s in ((2, 1), (1, 37), (2, 88)):
        q = rng.standard_normal((b, h, s, d)).astype(npdt)
        _, k, v, kpm = make_inputs(rng, b, hkv, s, d, dv, npdt)
        (out,) = sess.run(None, dict(query=q, key=k, value=v, key_padding_mask=kpm))
        assert out.shape == (b, h, s, dv) and out.dtype == npdt
        assert_close(out, reference(layout, q, k, v, kpm), atol, rtol, f"{spec} Hkv={hkv} S={s}")


def test_body_grouped_kv_per_head_layouts_and_empty_rows():
    """Query heads of one K/V head with different patterns (units of one head), rows that
    see nothing (exactly 0), Hkv = 1 and Hkv = 3 over H = 3."""
    layout = custom_layout()
    rng = np.random.default_rng(11)
    for hkv in (1, 3):
        sess = session(function_body.make_node_model(layout, head_dim=40, num_kv_heads=hkv))
        for s in (31, 75):
            q = rng.standard_normal((2, 3, s, 40)).astype(np.float32)
            _, k, v, kpm = make_inputs(rng, 2, hkv, s, 40, 40, np.float32)
            (out,) = sess.run(None, dict(query=q, key=k, value=v, key_padding_mask=kpm))
            assert_close(out, reference(layout, q, k, v, kpm), 2e-5, 1e-4, f"Hkv={hkv} S={s}")
            if s > 40:
                assert np.all(out[:, 1, 30:41] == 0.0)
            assert np.all(out[:, 2] == 0.0) if s <= 50 else True


def test_body_refuses_a_key_with_another_head_count():
    layout = compile_layout("band(w=5)", 32, 16, num_heads=4)
    baked = session(function_body.make_node_model(layout, head_dim=4, num_kv_heads=2))
    derived = session(function_body.make_node_model(layout, head_dim=4, bake_kv_heads=False))
    q = np.zeros((1, 4, 20, 4), np.float32)
    kv = np.zeros((1, 2, 20, 4), np.float32)
    kpm = np.ones((1, 20), bool)
    for sess in (baked, derived):
        assert sess.run(None, dict(query=q, key=kv, value=kv, key_padding_mask=kpm))[0].shape == (
            1,
            4,
            20,
            4,
        )
    bad = np.zeros((1, 3, 20, 4), np.float32)  # 3 K/V heads: neither 2 nor a divisor of 4
    for sess in (baked, derived):
        with pytest.raises(Exception, match="ONNXRuntimeError"):
            sess.run(None, dict(query=q, key=bad, value=bad, key_padding_mask=kpm))


def test_working_set_budget_sets_the_chunk():
    """The per-unit estimate is what the body divides the budget by; a chunk never holds
    less than one unit, and a tiny and a huge budget give the same result."""
    layout = compile_layout("band(w=40) | global(n=2)", 160, 16, num_heads=2)
    (band_bucket, *_) = function_body.plan_buckets(layout)
    c0, cd, cdv = function_body.unit_work_elements(band_bucket, 16)
    n, m = band_bucket.width, band_bucket.heads_per_unit
    assert c0 + cd * 8 + cdv * 8 >= 3 * (m * 16) * (n * 16) + 2 * n * 16 * 8
    rng = np.random.default_rng(12)
    q, k, v, kpm = make_inputs(rng, 2, 2, 150, 8, 8, np.float32)
    feeds = dict(query=q, key=k, value=v, key_padding_mask=kpm)
    outs = [
        session(function_body.make_node_model(layout, head_dim=8, work_budget=wb)).run(None, feeds)[
            0
        ]
        for wb in (1, 2**30)
    ]
    assert_close(outs[0], outs[1], 0, 0, "tiny vs huge budget")
    assert_close(outs[0], reference(layout, q, k, v, kpm), 2e-5, 1e-4, "budget")
    # budgets of a few band units per step: the steps are balanced (ceil(U / steps) units
    # each, padding below one unit per step), none of which may change a value
    unit_bytes = 4 * (c0 + cd * 8 + cdv * 8)
    for units_per_step in (2, 3, 5, 7):
        model = function_body.make_node_model(
            layout, head_dim=8, work_budget=units_per_step * unit_bytes
        )
        got = session(model).run(None, feeds)[0]
        assert_close(got, outs[0], 0, 0, f"{units_per_step} units per step")
    with pytest.raises(ValueError, match="work_budget"):
        function_body.build_function(
            layout, scale=0.5, has_key_padding_mask=False, opset=20, work_budget=0
        )


def test_several_layouts_in_one_model_use_overloads():
    lay_a = compile_layout("band(w=5)", 48, 16, num_heads=1)
    lay_b = compile_layout("global(n=3) | causal", 48, 16, num_heads=1)
    ma = function_body.make_node_model(lay_a, head_dim=4, key_padding_mask=False)
    mb = function_body.make_node_model(lay_b, head_dim=4, key_padding_mask=False)
    # chain: out = attn_b(attn_a(q,k,v), k, v)
    inits = []
    nodes = []
    for tag, m in (("a", ma), ("b", mb)):
        ren = {t.name: f"{tag}_{t.name}" for t in m.graph.initializer}
        for t in m.graph.initializer:
            t2 = onnx.TensorProto()
            t2.CopyFrom(t)
            t2.name = ren[t.name]
            inits.append(t2)
        n = onnx.NodeProto()
        n.CopyFrom(m.graph.node[0])
        n.input[:] = [ren.get(x, x) for x in n.input]
        n.output[0] = "mid" if tag == "a" else "output"
        if tag == "b":
            n.input[0] = "mid"
        nodes.append(n)
    graph = helper.make_graph(
        nodes, "two", list(ma.graph.input), list(ma.graph.output), initializer=inits
    )
    model = helper.make_model(graph, opset_imports=list(ma.opset_import), ir_version=10)
    assert exporter.attach_functions(model) == 2
    assert {n.overload for n in model.graph.node} == {"v0", "v1"}
    onnx.checker.check_model(model, full_check=True)
    rng = np.random.default_rng(4)
    q, k, v, _ = make_inputs(rng, 2, 1, 40, 4, 4, np.float32, poison=False)
    (out,) = session(model).run(None, dict(query=q, key=k, value=v))
    mid = reference(lay_a, q, k, v, None)
    assert_close(out, reference(lay_b, mid.astype(np.float32), k, v, None), 2e-5, 1e-4, "overloads")


def test_standard_op_collisions_are_refused():
    layout = compile_layout("band(w=5)", 32, 16)
    model = function_body.make_node_model(layout, head_dim=4)
    exporter.check_custom_identities(model)  # the real identity passes
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    bad.functions[0].domain = ""
    bad.functions[0].name = "Attention"
    with pytest.raises(InvalidInputError, match="collide"):
        exporter.check_custom_identities(bad)
    bad2 = onnx.ModelProto()
    bad2.CopyFrom(model)
    bad2.graph.node[0].domain = ""
    with pytest.raises(InvalidInputError, match="default ONNX domain"):
        exporter.check_custom_identities(bad2)
    with pytest.raises(ValueError):
        opspec.check_op_type_is_custom("ai.onnx", "Attention")


def test_build_function_rejects_old_opset_and_bad_scale():
    layout = compile_layout("band(w=5)", 32, 16)
    with pytest.raises(ValueError, match="opset"):
        function_body.build_function(layout, scale=0.5, has_key_padding_mask=False, opset=17)
    with pytest.raises(ValueError, match="scale"):
        function_body.build_function(
            layout, scale=float("nan"), has_key_padding_mask=False, opset=20
        )


@pytest.mark.parametrize("h,hkv,budget", [(1, 1, None), (4, 2, 1)])
def test_nonfinite_real_keys_hidden_by_partial_tiles_do_not_leak(h, hkv, budget):
    """NaN K / Inf V at a *real* token: only queries that see it may be non-finite."""
    layout = compile_layout("band(w=6) | causal", 64, 16, num_heads=h)
    kw = {} if budget is None else {"work_budget": budget}
    sess = session(function_body.make_node_model(layout, head_dim=8, num_kv_heads=hkv, **kw))
    rng = np.random.default_rng(5)
    q = rng.standard_normal((1, h, 50, 8)).astype(np.float32)
    _, k, v, _ = make_inputs(rng, 1, hkv, 50, 8, 8, np.float32, poison=False)
    kpm = np.ones((1, 50), dtype=bool)
    k[0, :, 20] = np.nan
    v[0, :, 33] = np.inf
    (out,) = sess.run(None, dict(query=q, key=k, value=v, key_padding_mask=kpm))
    exp = reference(layout, q, k, v, kpm)
    vis = layout.token_mask(50)[0]
    sees_bad = vis[:, 20] | vis[:, 33]
    assert sees_bad.any() and (~sees_bad).sum() > 30
    for head in range(h):
        assert_close(
            out[0, head, ~sees_bad], exp[0, head, ~sees_bad], 2e-5, 1e-4, "rows not seeing bad keys"
        )
        assert not np.isfinite(out[0, head, sees_bad]).all(axis=-1).any()
    # the same inputs without non-finite values take the fast path and agree
    k[0, :, 20], v[0, :, 33] = 0.5, 0.5
    (out2,) = sess.run(None, dict(query=q, key=k, value=v, key_padding_mask=kpm))
    assert_close(out2, reference(layout, q, k, v, kpm), 2e-5, 1e-4, "fast path")


def test_request_longer_than_layout_fails_loudly():
    layout = compile_layout("band(w=5)", 40, 16)
    sess = session(function_body.make_node_model(layout, head_dim=4, key_padding_mask=False))
    q = np.zeros((1, 1, 40, 4), np.float32)
    assert sess.run(None, dict(query=q, key=q, value=q))[0].shape == (1, 1, 40, 4)
    for s in (41, 49):  # inside the last block's padding, and beyond it
        q = np.zeros((1, 1, s, 4), np.float32)
        with pytest.raises(Exception, match="ONNXRuntimeError"):
            sess.run(None, dict(query=q, key=q, value=q))


def test_static_kv_heads_reads_inputs_outputs_and_value_info():
    """Hkv comes from the key's declared shape wherever the graph declares it."""
    f32 = onnx.TensorProto.FLOAT
    graph = helper.make_graph(
        [],
        "g",
        [helper.make_tensor_value_info("k_in", f32, ["b", 2, "s", 8])],
        [helper.make_tensor_value_info("k_out", f32, ["b", 4, "s", 8])],
        value_info=[
            helper.make_tensor_value_info("k_mid", f32, ["b", 1, "s", 8]),
            helper.make_tensor_value_info("k_sym", f32, ["b", "h", "s", 8]),
            helper.make_tensor_value_info("k_3d", f32, ["b", 2, 8]),
        ],
    )
    got = {n: function_body.static_kv_heads(graph, n) for n in ("k_in", "k_out", "k_mid")}
    assert got == {"k_in": 2, "k_out": 4, "k_mid": 1}
    for name in ("k_sym", "k_3d", "missing"):
        assert function_body.static_kv_heads(graph, name) is None


def test_body_fp16_near_overflow_keeps_fp32_math():
    """fp16 inputs whose scores overflow fp16 (|q.k| ~ 1e5) and V near fp16's maximum: the
    body computes in fp32 and returns finite fp16 close to the float64 reference."""
    layout = compile_layout("band(w=24) | global(n=2) | causal", 80, 16, num_heads=4)
    sess = session(
        function_body.make_node_model(layout, dtype="float16", head_dim=64, num_kv_heads=2)
    )
    rng = np.random.default_rng(13)
    q = (rng.standard_normal((2, 4, 70, 64)) * 40).astype(np.float16)
    _, k, v, kpm = make_inputs(rng, 2, 2, 70, 64, 64, np.float16, poison=False)
    k = (k.astype(np.float32) * 40).astype(np.float16)
    v = np.clip(v.astype(np.float32) * 3e4, -6e4, 6e4).astype(np.float16)
    pad = ~kpm[:, None, :, None]
    k = np.where(pad, np.float16(np.nan), k)
    v = np.where(pad, np.float16(np.inf), v)
    (out,) = sess.run(None, dict(query=q, key=k, value=v, key_padding_mask=kpm))
    assert out.dtype == np.float16
    exp = reference(layout, q, k, v, kpm)
    assert_close(out, exp, 64.0, 4e-3, "fp16 near overflow")
