"""Bounded inputs: spec integers, zero windows, size limits checked before any work."""

from __future__ import annotations

import time

import numpy as np
import pytest

from sparse_attn import limits
from sparse_attn.errors import InvalidInputError, PatternSyntaxError
from sparse_attn.layout import compile_layout
from sparse_attn.patterns import parse_pattern


@pytest.mark.parametrize(
    "spec,formula",
    [
        ("band(w=0)", lambda i, j: i == j),
        ("dilated(w=0, d=3)", lambda i, j: i == j),
        ("block_band(b=8, w=0)", lambda i, j: i // 8 == j // 8),
        ("sliding_window(w=1)", lambda i, j: i == j),
        ("bigbird(block=8, w=0, r=1)", None),
    ],
)
def test_zero_windows_are_valid_and_exact(spec, formula):
    lay = compile_layout(spec, 45, 8)
    mask = lay.token_mask()[0]
    if formula is not None:
        i, j = np.meshgrid(np.arange(45), np.arange(45), indexing="ij")
        assert np.array_equal(mask, formula(i, j))
    assert np.array_equal(
        compile_layout("block_band(b=8, w=0)", 45, 8).token_mask(),
        compile_layout("block_local(b=8)", 45, 8).token_mask(),
    )


@pytest.mark.parametrize(
    "text,why",
    [
        ("band(w=\uff13)", "ASCII"),
        ("band(w=\u0663)", "ASCII"),
        ("band(w=+3)", "without a sign"),
        ("band(w=00003)", "leading zeros"),
        ("band(w=1_000)", "_000"),
        ("band(w=" + "9" * 5000 + ")", "characters long"),
        ("band(w=" + "9" * 4300 + ")", "characters long"),
        ("band(w=99999999999)", "too large"),
        ("band(w=2147483648)", "too large"),
    ],
)
def test_spec_integers_are_ascii_decimal_and_bounded(text, why):
    with pytest.raises(PatternSyntaxError, match=why) as ei:
        parse_pattern(text)
    assert len(str(ei.value)) < 700 and "\n" not in str(ei.value)


def test_bad_spec_echo_is_short():
    with pytest.raises(PatternSyntaxError) as ei:
        parse_pattern("band(w=1) | " + "x" * 3000)
    assert len(str(ei.value)) < 700


def test_deep_nesting_is_a_clean_error():
    with pytest.raises(InvalidInputError):
        compile_layout("[" * 60000, 64, 16)
    with pytest.raises(InvalidInputError, match="nested too deeply"):
        compile_layout("[" * 3000, 64, 16, num_heads=2)


def test_parse_int():
    assert limits.parse_int("0", "x") == 0
    assert limits.parse_int("4096", "x", 1, 8192) == 4096
    for bad in ("", " 1", "1 ", "+1", "-1", "01", "1e3", "0x10", "\uff11", "1" * 20):
        with pytest.raises(InvalidInputError):
            limits.parse_int(bad, "x")
    with pytest.raises(InvalidInputError, match="<= 10"):
        limits.parse_int("11", "x", 0, 10)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(seq_len=64, block_size=10**9), "block_size"),
        (dict(seq_len=64, block_size=16, num_heads=10**12), "num_heads"),
        (dict(seq_len=64, block_size=16, num_heads=1_000_000), "num_heads"),
        (dict(seq_len=100_000_000, block_size=100_000), "seq_len"),
        (dict(seq_len=1 << 20, block_size=16), "blocks per side"),
        (
            dict(
                seq_len=1 << 20,
                block_size=128,
                num_heads=64,
                spec="vertical_stride(b=64, s=8, step=1)",
            ),
            "compile limit",
        ),
        (dict(seq_len=True, block_size=16), "seq_len"),
    ],
)
def test_sizes_refused_before_work(kwargs, match):
    t = time.process_time()
    spec = kwargs.pop("spec", "band(w=4)")
    with pytest.raises(InvalidInputError, match=match):
        compile_layout(spec, **kwargs)
    assert time.process_time() - t < 2.0


def test_random_and_dense_work_is_bounded():
    t = time.process_time()
    with pytest.raises(InvalidInputError, match="random"):
        compile_layout("random(r=3, seed=0, b=1)", 1 << 16, 1024, num_heads=1000)
    with pytest.raises(InvalidInputError, match="tiles"):
        compile_layout("dense", 1 << 20, 128, num_heads=1)
    # a huge r is clamped to the blocks that exist (no [rows, r] array of r columns)
    lay = compile_layout("random(r=2147483647, seed=0)", 256, 16)
    assert lay.stats()["density_blocks"] > 0.5
    assert time.process_time() - t < 10.0


def test_limits_table_is_documented():
    assert {"seq_len", "num_heads", "block_size"} <= set(limits.LIMITS)
    for lim in limits.LIMITS.values():
        assert lim.value > 0 and lim.what


def test_random_with_a_huge_block_length_is_fast_and_exact():
    from sparse_attn.layout import BlockLayout

    t = time.process_time()
    spec = "random(r=3, seed=1, b=2147483647)"
    lay = compile_layout(spec, 300, 16, num_heads=2)
    assert time.process_time() - t < 5.0
    p = parse_pattern(spec)
    masks = np.stack([p.token_mask(300, block_size=16, head=h, num_heads=2) for h in range(2)])
    assert lay.equals(BlockLayout.from_token_mask(masks, 16))


@pytest.mark.parametrize(
    "spec,kw",
    [
        (
            "local_vertical_stride(block=3, local=64) | causal",
            dict(seq_len=1000, block_size=1, num_heads=64),
        ),
        (
            "random(r=1000000, seed=100, b=1000000, scope=all)",
            dict(seq_len=4096, block_size=4, num_heads=64),
        ),
        (
            "random(r=1000000, seed=2, b=1000000, scope=all)",
            dict(seq_len=4096, block_size=1, num_heads=2),
        ),
    ],
)
def test_many_distinct_dense_heads_are_refused_quickly(spec, kw):
    t = time.process_time()
    with pytest.raises(InvalidInputError, match="candidate tiles"):
        compile_layout(spec, **kw)
    assert time.process_time() - t < 20.0


@pytest.mark.parametrize(
    "spec,kw",
    [
        ("bigbird(block=64, r=1000)", dict(seq_len=4096, block_size=128, num_heads=3)),
        (
            "random(r=16, seed=1, b=100, scope=all) | band(w=30)",
            dict(seq_len=4096, block_size=128, num_heads=64),
        ),
    ],
)
def test_tile_classification_work_is_bounded_over_heads(spec, kw):
    t = time.process_time()
    with pytest.raises(InvalidInputError, match="token pairs"):
        compile_layout(spec, **kw)
    assert time.process_time() - t < 20.0
