"""Spec-string parser, canonical specs, presets and atom validation."""

from __future__ import annotations

import numpy as np
import pytest

import sparse_attn
from sparse_attn.errors import InvalidInputError, PatternSyntaxError
from sparse_attn.patterns import (
    ATOMS,
    PRESETS,
    Band,
    Global,
    Pattern,
    Random,
    parse_pattern,
)


@pytest.mark.parametrize(
    "text,canonical",
    [
        ("band(w=256) | global(n=64)", "band(w=256) | global(n=64)"),
        ("band( w = 256 )|global(n=64)", "band(w=256) | global(n=64)"),
        (
            "dilated(w=4, d=8) | global(tokens=[0,5]) | causal",
            "dilated(w=4, d=8) | global(tokens=[0,5]) | causal",
        ),
        ("causal | band(w=3)", "band(w=3) | causal"),
        ("global(tokens=[5, 0, 5])", "global(tokens=[0,5])"),
        ("random(r=3, seed=42)", "random(r=3, seed=42)"),
        ("random(r=3, seed=42, scope=prefix)", "random(r=3, seed=42)"),
        ("random(r=3, seed=42, b=32, scope=all)", "random(r=3, seed=42, b=32, scope=all)"),
        ("block_local(b=128)", "block_local(b=128)"),
        ("block_band(b=64, w=1)", "block_band(b=64, w=1)"),
        ("band(w=3) | band(w=3)", "band(w=3)"),
        ("vertical_stride(b=64, s=8)", "vertical_stride(b=64, s=8)"),
        ("dense | causal", "dense() | causal"),
    ],
)
def test_canonical_spec_round_trip(text, canonical):
    p = parse_pattern(text)
    assert p.spec() == canonical == str(p)
    assert parse_pattern(p.spec()) == p


@pytest.mark.parametrize(
    "text,expanded",
    [
        (
            "bigbird",
            "global(n=64, last=64) | block_band(b=64, w=1) | random(r=3, seed=0, b=64, scope=all)",
        ),
        (
            "bigbird(block=32, r=2)",
            "global(n=32, last=32) | block_band(b=32, w=1) | random(r=2, seed=0, b=32, scope=all)",
        ),
        ("longformer", "band(w=256) | global(n=1)"),
        ("longformer(window=128, n=0)", "band(w=64)"),
        ("sparse_transformer_strided", "band(w=128) | strided(l=128) | causal"),
        ("sparse_transformer_fixed", "block_local(b=128) | summary(l=128, c=8) | causal"),
        ("sliding_window", "band(w=4095) | causal"),
        ("sliding_window(w=4096)", "band(w=4095) | causal"),
        (
            "local_vertical_stride",
            "block_band(b=64, w=15) | vertical_stride(b=64, s=8, step=auto) | causal",
        ),
        (
            "local_vertical_stride(local=1, step=0)",
            "block_local(b=64) | vertical_stride(b=64, s=8) | causal",
        ),
        ("longformer | causal", "band(w=256) | global(n=1) | causal"),
        ("sliding_window(w=16) | global(n=1)", "band(w=15) | global(n=1) | causal"),
    ],
)
def test_presets_expand_to_atoms(text, expanded):
    p = parse_pattern(text)
    assert str(p) == expanded
    assert p.name == text  # the preset call is kept as a label
    assert parse_pattern(expanded) == p


def test_every_preset_and_atom_is_documented():
    for preset in PRESETS.values():
        doc = preset.build.__doc__ or ""
        assert any(w in doc for w in ("Sec.", "config", "Config")), preset.name
        assert str(preset()) == preset().spec() == str(preset) == preset.spec()
    for atom in ATOMS.values():
        assert atom.__doc__ and atom.formula, atom.name


def test_static_seq_len_flag():
    assert parse_pattern("bigbird").requires_static_seq_len
    assert parse_pattern("global(n=1, last=2)").requires_static_seq_len
    assert parse_pattern("random(r=1, seed=0, scope=all)").requires_static_seq_len
    for s in ("longformer", "sliding_window", "random(r=1, seed=0)", "local_vertical_stride"):
        assert not parse_pattern(s).requires_static_seq_len, s


@pytest.mark.parametrize(
    "text,token,column",
    [
        ("bnd(w=2)", "'bnd'", 1),
        ("band(w=4) | bnd(w=2)", "'bnd'", 13),
        ("band(w=-4)", "'-'", 8),
        ("band(w=+4)", "'+'", 8),
        ("band(w=\uff13)", "'\uff13'", 8),
        ("band(w=004)", "'004'", 8),
        ("dilated(w=2, d=0)", "'d'", 14),
        ("block_local(b=0)", "'b'", 13),
        ("random(r=0, seed=1)", "'r'", 8),
        ("global(n=0)", "'n'", 8),
        ("band(x=1)", "'x'", 6),
        ("dilated(w=2)", "'dilated'", 1),
        ("band(w=4", "end of spec", 9),
        ("(band(w=4)", "'('", 1),
        ("band(w=4))", "')'", 10),
        ("band(w=4) garbage", "'garbage'", 11),
        ("band(w=4) | ", "end of spec", 13),
        ("band(w=4) & causal", "'&'", 11),
        ("bigbird(q=1)", "'q'", 9),
        ("sliding_window(w=0)", "'w'", 16),
        ("causal(1)", "'('", 7),
        ("causal", "'causal'", 1),
        ("", "end of spec", 1),
        ("global(tokens=[0,1)", "')'", 19),
        ("band(w=4, w=5)", "'w'", 11),
    ],
)
def test_syntax_errors_point_at_the_bad_token(text, token, column):
    with pytest.raises(PatternSyntaxError) as ei:
        parse_pattern(text)
    msg = str(ei.value)
    assert "\n" not in msg
    assert token in msg and f"column {column}" in msg, msg
    assert ei.value.position == column - 1
    assert ei.value.caret.splitlines()[1] == " " * (column - 1) + "^"
    assert isinstance(ei.value, InvalidInputError)  # CLI exit code 2


def test_pattern_objects_and_algebra():
    p = Pattern([Band(w=3)]) | Global(n=2)
    assert p.spec() == "band(w=3) | global(n=2)"
    assert p.with_causal().spec() == "band(w=3) | global(n=2) | causal"
    assert parse_pattern(Band(w=3)) == Pattern([Band(w=3)])
    with pytest.raises(PatternSyntaxError, match="no atom"):
        Pattern([])
    with pytest.raises(PatternSyntaxError, match="w=-1 is negative"):
        Band(w=-1)
    with pytest.raises(PatternSyntaxError, match="must be an integer"):
        Band(w=2.5)
    with pytest.raises(PatternSyntaxError, match="missing parameter 'seed'"):
        Random(r=2)
    with pytest.raises(PatternSyntaxError):
        parse_pattern(3.0)


def test_visible_matches_formula_on_positions():
    p = parse_pattern("dilated(w=2, d=3) | causal")
    i, j = np.meshgrid(np.arange(20), np.arange(20), indexing="ij")
    m = p.token_mask(20, block_size=16)
    expected = (np.abs(i - j) <= 6) & ((i - j) % 3 == 0) & (j <= i)
    assert (m == expected).all()


def test_lazy_top_level_names():
    lay = sparse_attn.compile_layout("band(w=2)", seq_len=10, block_size=4)
    assert lay.num_heads == 1 and lay.seq_len == 10
    assert str(sparse_attn.parse_pattern("sliding_window(w=3)")) == "band(w=2) | causal"


def test_parameter_too_large():
    with pytest.raises(PatternSyntaxError, match="too large"):
        parse_pattern("band(w=99999999999999999999)")


def test_unknown_parameter_names_the_atom_or_preset_and_the_known_ones():
    with pytest.raises(
        PatternSyntaxError, match=r"unknown parameter 'x' for band\(\); known parameters: w$"
    ):
        Band(w=3, x=1)
    with pytest.raises(
        PatternSyntaxError,
        match=r"unknown parameter 'x' for preset longformer; known parameters: window, n$",
    ) as ei:
        PRESETS["longformer"](x=1)
    assert ei.value.param == "x"
