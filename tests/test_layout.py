"""compile_layout against an independent, literal implementation of the docs/spec.md table.

The reference masks below are written from the formulas (the contract's table, papers), on a dense
``S x S`` grid, without using the atoms' own ``visible`` code. The only thing shared with the
package is the random generator's draw (the contract fixes the distribution, not the generator).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from sparse_attn.errors import InvalidInputError, PatternSyntaxError
from sparse_attn.layout import BlockLayout, compile_layout
from sparse_attn.patterns import draw_without_replacement


# ---------------------------------------------------------------------------- literal formulas
def _grid(s):
    i = np.arange(s)[:, None]
    j = np.arange(s)[None, :]
    return i, j


def ref_global(s, n=None, tokens=(), last=None):
    p = set(range(min(n or 0, s))) | {t for t in tokens if t < s}
    if last:
        p |= set(range(max(0, s - last), s))
    inp = np.array([x in p for x in range(s)])
    return inp[:, None] | inp[None, :]


def ref_band(s, w):
    i, j = _grid(s)
    return abs(i - j) <= w


def ref_dilated(s, w, d):
    i, j = _grid(s)
    return (abs(i - j) <= w * d) & ((i - j) % d == 0)


def ref_block_local(s, b):
    i, j = _grid(s)
    return i // b == j // b


def ref_block_band(s, b, w):
    i, j = _grid(s)
    return abs(i // b - j // b) <= w


def ref_strided(s, l):  # noqa: E741
    i, j = _grid(s)
    return (i - j) % l == 0


def ref_summary(s, l, c):  # noqa: E741
    i, j = _grid(s)
    return np.broadcast_to(j % l >= l - c, (s, s))


def ref_vertical_stride(s, b, stride, h, step):
    i, j = _grid(s)
    return np.broadcast_to((j // b + h * step + 1) % stride == 0, (s, s))


def ref_random(s, r, seed, b, h, scope="prefix"):
    nbl = -(-s // b)
    out = np.zeros((s, s), dtype=bool)
    for q in range(nbl):
        universe = q + 1 if scope == "prefix" else nbl
        chosen = draw_without_replacement(seed, h, q, universe, r)
        assert len(chosen) == min(r, universe) and len(set(chosen.tolist())) == len(chosen)
        assert chosen.min() >= 0 and chosen.max() < universe
        for kb in chosen:
            out[q * b : (q + 1) * b, kb * b : (kb + 1) * b] = True
    return out


def ref_causal(s):
    i, j = _grid(s)
    return j <= i


# spec -> function (S, head, H, block_size) -> bool [S, S]
CASES = {
    "global(n=3)": lambda s, h, H, bs: ref_global(s, n=3),
    "global(tokens=[0,5,40])": lambda s, h, H, bs: ref_global(s, tokens=(0, 5, 40)),
    "band(w=5)": lambda s, h, H, bs: ref_band(s, 5),
    "band(w=40) | global(n=2)": lambda s, h, H, bs: ref_band(s, 40) | ref_global(s, n=2),
    "dilated(w=3, d=4)": lambda s, h, H, bs: ref_dilated(s, 3, 4),
    "dilated(w=4, d=8) | global(tokens=[0,5]) | causal": lambda s, h, H, bs: (
        (ref_dilated(s, 4, 8) | ref_global(s, tokens=(0, 5))) & ref_causal(s)
    ),
    "random(r=2, seed=7)": lambda s, h, H, bs: ref_random(s, 2, 7, bs, h),
    "random(r=3, seed=1, b=10)": lambda s, h, H, bs: ref_random(s, 3, 1, 10, h),
    "random(r=2, seed=2, b=12, scope=all)": lambda s, h, H, bs: ref_random(s, 2, 2, 12, h, "all"),
    "block_local(b=13)": lambda s, h, H, bs: ref_block_local(s, 13),
    "block_band(b=6, w=2)": lambda s, h, H, bs: ref_block_band(s, 6, 2),
    "strided(l=7)": lambda s, h, H, bs: ref_strided(s, 7),
    "summary(l=12, c=3)": lambda s, h, H, bs: ref_summary(s, 12, 3),
    "vertical_stride(b=8, s=4, step=auto)": lambda s, h, H, bs: ref_vertical_stride(
        s, 8, 4, h, max(1, 4 // H)
    ),
    "dense | causal": lambda s, h, H, bs: ref_causal(s),
    # presets, paper definitions written out
    "bigbird(block=16, r=2)": lambda s, h, H, bs: (
        ref_global(s, n=16, last=16) | ref_block_band(s, 16, 1) | ref_random(s, 2, 0, 16, h, "all")
    ),
    "bigbird": lambda s, h, H, bs: (
        ref_global(s, n=64, last=64) | ref_block_band(s, 64, 1) | ref_random(s, 3, 0, 64, h, "all")
    ),
    "longformer(window=20)": lambda s, h, H, bs: ref_band(s, 10) | ref_global(s, n=1),
    "longformer": lambda s, h, H, bs: ref_band(s, 256) | ref_global(s, n=1),
    # Child et al. 2019 Sec 4.2 strided: {max(0, i-l) .. i} and (i-j) mod l == 0, causal
    "sparse_transformer_strided(l=16)": lambda s, h, H, bs: (
        (ref_band(s, 16) | ref_strided(s, 16)) & ref_causal(s)
    ),
    "sparse_transformer_fixed(l=16, c=4)": lambda s, h, H, bs: (
        (ref_block_local(s, 16) | ref_summary(s, 16, 4)) & ref_causal(s)
    ),
    "sparse_transformer_fixed": lambda s, h, H, bs: (
        (ref_block_local(s, 128) | ref_summary(s, 128, 8)) & ref_causal(s)
    ),
    # HF Mistral: kv_idx > q_idx - sliding_window, causal
    "sliding_window(w=9)": lambda s, h, H, bs: (_grid(s)[1] > _grid(s)[0] - 9) & ref_causal(s),
    # Phi-3-small / vLLM get_sparse_attn_mask, literally (block level, then token causal)
    "local_vertical_stride(block=8, local=3, stride=4)": lambda s, h, H, bs: _phi3(
        s, 8, 3, 4, h, H
    ),
}


def _phi3(s, block, local, vert, h, nh):
    nbk = -(-s // block)
    q = np.arange(nbk)[:, None]
    k = np.arange(nbk)[None, :]
    step = max(1, vert // nh)
    vs = (np.arange(nbk) + h * step + 1) % vert == 0
    bm = (q >= k) & ((q - k < local) | vs[None, :])
    dense = np.kron(bm, np.ones((block, block), dtype=bool))[:s, :s]
    return dense & ref_causal(s)


def reference_layout(spec, s, bs, heads, causal=False):
    m = np.stack([CASES[spec](s, h, heads, bs) for h in range(heads)])
    if causal:
        m &= ref_causal(s)
    return m, BlockLayout.from_token_mask(m, bs)


def _assert_same(lay, m, ref):
    got = lay.token_mask()
    if not (got == m).all():
        bad = np.argwhere(got != m)[0]
        raise AssertionError(
            f"token mask differs at [h, i, j]={bad.tolist()}: got {got[tuple(bad)]}, "
            f"expected {m[tuple(bad)]} ({(got != m).sum()} pairs differ)"
        )
    assert lay.equals(ref), "token masks agree but CSR / mask table differ from from_token_mask"
    st, rst = lay.stats(), ref.stats()
    for k in ("density_tokens", "density_blocks", "full_blocks", "partial_blocks", "num_masks"):
        assert st[k] == rst[k], (k, st[k], rst[k])
    assert abs(st["density_tokens"] - m.mean()) < 1e-12


# ---------------------------------------------------------------------------- tests
@pytest.mark.parametrize("spec", list(CASES))
@pytest.mark.parametrize("s,bs", [(1, 16), (37, 16), (64, 16), (232, 16), (100, 32), (45, 1)])
def test_compile_equals_spec_formula(spec, s, bs):
    heads = 2
    m, ref = reference_layout(spec, s, bs, heads)
    lay = compile_layout(spec, seq_len=s, block_size=bs, num_heads=heads)
    _assert_same(lay, m, ref)


@pytest.mark.parametrize(
    "spec", ["band(w=5)", "global(tokens=[0,5,40])", "random(r=2, seed=7)", "block_band(b=6, w=2)"]
)
@pytest.mark.parametrize("s", [1, 37, 232])
def test_causal_argument_equals_causal_modifier(spec, s):
    m, ref = reference_layout(spec, s, 16, 2, causal=True)
    a = compile_layout(spec, s, 16, num_heads=2, causal=True)
    b = compile_layout(spec + " | causal", s, 16, num_heads=2)
    _assert_same(a, m, ref)
    assert a.equals(b) and a.causal and b.causal and a.spec == b.spec


def test_per_head_list():
    specs = ["band(w=5)", "strided(l=7) | causal", "random(r=2, seed=7)", "bigbird(block=16, r=2)"]
    s, bs = 232, 16
    refs = [CASES["band(w=5)"], lambda *a: ref_strided(a[0], 7) & ref_causal(a[0])]
    refs += [CASES[specs[2]], CASES[specs[3]]]
    m = np.stack([f(s, h, 4, bs) for h, f in enumerate(refs)])
    lay = compile_layout(specs, s, bs, num_heads=4)
    _assert_same(lay, m, BlockLayout.from_token_mask(m, bs))
    assert json.loads(lay.spec)[1] == "strided(l=7) | causal"
    assert lay.requires_static_seq_len  # the bigbird head needs the end of the sequence


PREFIX_STABLE = [k for k in CASES if "bigbird" not in k and "scope=all" not in k]


@pytest.mark.parametrize("spec", PREFIX_STABLE)
def test_crop_equals_compile_at_shorter_length(spec):
    big = compile_layout(spec, 232, 16, num_heads=2)
    assert not big.requires_static_seq_len
    for s in (1, 15, 16, 37, 200, 231):
        small = compile_layout(spec, s, 16, num_heads=2)
        assert big.crop(s).equals(small), f"crop({s}) of {spec} differs from compiling at {s}"


@pytest.mark.parametrize(
    "spec", ["bigbird", "global(n=2, last=3)", "random(r=1, seed=0, scope=all)"]
)
def test_static_patterns_flagged_and_not_croppable(spec):
    lay = compile_layout(spec, 128, 16)
    assert lay.requires_static_seq_len and lay.stats()["requires_static_seq_len"]
    with pytest.raises(ValueError, match="end of the sequence"):
        lay.crop(100)


def test_random_identical_across_processes():
    specs = ["random(r=3, seed=11)", "bigbird(block=16)", "random(r=2, seed=5, b=24, scope=all)"]
    code = (
        "import sys, json; from sparse_attn.layout import compile_layout; "
        "print(json.dumps([compile_layout(s, 1000, 16, num_heads=3).layout_hash() "
        "for s in json.loads(sys.argv[1])]))"
    )
    outs = []
    for seed in ("0", "12345"):
        p = subprocess.run(
            [sys.executable, "-c", code, json.dumps(specs)],
            capture_output=True,
            text=True,
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
            check=True,
        )
        outs.append(json.loads(p.stdout))
    here = [compile_layout(s, 1000, 16, num_heads=3).layout_hash() for s in specs]
    assert outs[0] == outs[1] == here
    # heads draw independently
    lay = compile_layout("random(r=3, seed=11)", 1000, 16, num_heads=3)
    bm = lay.block_mask()
    assert not (bm[0] == bm[1]).all()


def test_random_draw_rows():
    for q in range(40):
        got = draw_without_replacement(3, 1, q, q + 1, 4)
        assert len(got) == min(4, q + 1) and len(np.unique(got)) == len(got)
        assert got.min() >= 0 and got.max() <= q
    # uniformity sanity: over many rows every block of a universe of 5 gets drawn
    seen = np.zeros(5, int)
    for q in range(200):
        seen[draw_without_replacement(0, 0, q, 5, 2)] += 1
    assert seen.sum() == 400 and seen.min() > 50, seen


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(seq_len=0, block_size=16), "seq_len"),
        (dict(seq_len=-5, block_size=16), "seq_len"),
        (dict(seq_len=64, block_size=0), "block_size"),
        (dict(seq_len=64, block_size=16, num_heads=0), "num_heads"),
        (dict(seq_len=64.0, block_size=16), "seq_len"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        compile_layout("band(w=4)", **kwargs)


def test_invalid_per_head_list_and_spec():
    with pytest.raises(InvalidInputError, match="num_heads=3"):
        compile_layout(["band(w=4)", "band(w=2)"], 64, 16, num_heads=3)
    with pytest.raises(PatternSyntaxError):
        compile_layout("band(w=x)", 64, 16)
    with pytest.raises(PatternSyntaxError):
        compile_layout(42, 64, 16)


def test_layout_fields_and_spec():
    lay = compile_layout("sliding_window(w=9)", 100, 16, num_heads=2)
    assert lay.spec == "band(w=8) | causal" and lay.causal and lay.num_heads == 2
    assert lay.row_ptr.dtype == np.int32 and lay.col_idx.dtype == np.int32
    assert lay.mask_idx.dtype == np.int32 and lay.masks.dtype == np.uint8
    assert lay.masks.shape[1:] == (16, 16)


@pytest.mark.parametrize("spec", ["bigbird", "longformer"])
def test_long_sequence_compiles_without_dense_mask(spec):
    """S = 65,536, block 64: peak traced memory far below the 4 GiB of a dense bool mask."""
    tracemalloc.start()
    try:
        lay = compile_layout(spec, 65536, 64, num_heads=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    st = lay.stats()
    nb = 1024
    if spec == "longformer":
        # rows see |i-j| <= 256 plus token 0; row 0 sees everything
        expected = 2 * (
            65536 + sum(min(i + 256, 65535) - max(1, i - 256) + 2 for i in range(1, 65536))
        )
        assert st["density_tokens"] * 2 * 65536**2 == pytest.approx(expected, rel=1e-12)
    else:
        # global first/last block rows and cols, 3-block window, 3 random blocks per row
        assert st["partial_blocks"] == 0
        assert st["full_blocks"] >= 2 * (2 * nb + 3 * (nb - 2))
        assert st["full_blocks"] <= 2 * (2 * nb + 2 * (nb - 2) + 6 * (nb - 2))


def test_refuses_huge_block_grid_and_crop_errors_are_invalid_input():
    with pytest.raises(InvalidInputError, match="larger block_size"):
        compile_layout("band(w=4)", 10**6, 1)
    lay = compile_layout("band(w=4)", 64, 16)
    with pytest.raises(InvalidInputError, match="1..64"):
        lay.crop(65)
    with pytest.raises(InvalidInputError, match="end of the sequence"):
        compile_layout("bigbird(block=16)", 64, 16).crop(32)


def test_per_head_json_spec_round_trip():
    lay = compile_layout(["band(w=5)", "random(r=2, seed=7)"], 100, 16, num_heads=2)
    again = compile_layout(lay.spec, 100, 16, num_heads=2)
    assert again.equals(lay) and again.spec == lay.spec
    with pytest.raises(InvalidInputError, match="JSON"):
        compile_layout('["band(w=5)", ', 100, 16, num_heads=2)


def test_plot_shows_full_partial_and_empty_tiles(tmp_path):
    import matplotlib.image

    from sparse_attn.layout import plot_layout

    lay = compile_layout("band(w=20) | global(n=16) | causal", 160, 16, num_heads=3)
    st = lay.stats()
    assert st["full_blocks"] > 0 and st["partial_blocks"] > 0
    out = plot_layout(lay, tmp_path / "p.png")
    img = matplotlib.image.imread(out)[..., :3]
    px = np.unique(np.round(img.reshape(-1, 3) * 255).astype(int), axis=0)
    colours = {tuple(int(x) for x in row) for row in px}
    assert (0x1F, 0x3B, 0x73) in colours and (0xF3, 0x9C, 0x12) in colours
    assert (255, 255, 255) in colours


def _random_atom(rng):
    k = rng.randrange(11)
    if k == 0:
        return f"global(n={rng.randint(1, 40)})"
    if k == 1:
        toks = ",".join(str(rng.randint(0, 120)) for _ in range(rng.randint(1, 4)))
        return f"global(tokens=[{toks}])"
    if k == 2:
        return f"band(w={rng.randint(1, 50)})"
    if k == 3:
        return f"dilated(w={rng.randint(1, 6)}, d={rng.randint(1, 9)})"
    if k == 4:
        return f"random(r={rng.randint(1, 4)}, seed={rng.randint(0, 9)}, b={rng.randint(1, 40)})"
    if k == 5:
        return f"block_local(b={rng.randint(1, 50)})"
    if k == 6:
        return f"block_band(b={rng.randint(1, 30)}, w={rng.randint(1, 3)})"
    if k == 7:
        return f"strided(l={rng.randint(1, 40)})"
    if k == 8:
        ell = rng.randint(1, 40)
        return f"summary(l={ell}, c={rng.randint(1, ell)})"
    if k == 9:
        step = rng.choice(["auto", 0, 2])
        return f"vertical_stride(b={rng.randint(1, 30)}, s={rng.randint(1, 6)}, step={step})"
    return f"global(last={rng.randint(1, 30)})"


def test_random_compositions_match_dense_evaluation():
    """Fuzz the compiler's candidate/key machinery against the dense per-token evaluation."""
    import random

    from sparse_attn.patterns import parse_pattern

    rng = random.Random(1234)
    for _ in range(60):
        spec = " | ".join(_random_atom(rng) for _ in range(rng.randint(1, 3)))
        spec += " | causal" if rng.random() < 0.4 else ""
        s, bs, heads = (
            rng.choice([1, 5, 31, 97, 130]),
            rng.choice([1, 3, 16, 32]),
            rng.randint(1, 3),
        )
        p = parse_pattern(spec)
        m = np.stack(
            [p.token_mask(s, block_size=bs, head=h, num_heads=heads) for h in range(heads)]
        )
        lay = compile_layout(spec, s, bs, num_heads=heads)
        assert lay.equals(BlockLayout.from_token_mask(m, bs)), (spec, s, bs, heads)
        if not p.requires_static_seq_len:
            s2 = rng.randint(1, s)
            assert lay.crop(s2).equals(compile_layout(spec, s2, bs, num_heads=heads)), (spec, s2)


def test_layout_hash_is_stable_and_tells_layouts_apart():
    a = compile_layout("band(w=5) | global(n=2)", 100, 16, num_heads=2)
    b = compile_layout("band(w=5) | global(n=2)", 100, 16, num_heads=2)
    c = compile_layout("band(w=6) | global(n=2)", 100, 16, num_heads=2)
    first = a.layout_hash()
    assert len(first) == 64 and a.layout_hash() == first == b.layout_hash()
    assert c.layout_hash() != first
    assert a.equals(b) and not a.equals(c)
    # the top-left crop is another layout, with its own hash
    assert a.crop(90).layout_hash() != first
    assert a.crop(90).layout_hash() == b.crop(90).layout_hash()
