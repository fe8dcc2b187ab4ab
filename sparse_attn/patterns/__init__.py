"""Patterns stage of sparse-attn: token-level atoms, the spec-string parser and named presets.

Pure numpy (no torch). See docs/spec.md and docs/patterns.md::

    from sparse_attn.patterns import parse_pattern
    p = parse_pattern("band(w=256) | global(n=64) | causal")
    str(parse_pattern("sliding_window"))   # 'band(w=4095) | causal'
"""

from __future__ import annotations

from sparse_attn.patterns.atoms import (
    ATOMS,
    Atom,
    Band,
    BlockBand,
    BlockLocal,
    Context,
    Dense,
    Dilated,
    Global,
    Random,
    Strided,
    Summary,
    VerticalStride,
    draw_without_replacement,
)
from sparse_attn.patterns.parser import parse_pattern
from sparse_attn.patterns.pattern import Pattern
from sparse_attn.patterns.presets import PRESETS, Preset

__all__ = [
    "ATOMS",
    "PRESETS",
    "Atom",
    "Band",
    "BlockBand",
    "BlockLocal",
    "Context",
    "Dense",
    "Dilated",
    "Global",
    "Pattern",
    "Preset",
    "Random",
    "Strided",
    "Summary",
    "VerticalStride",
    "draw_without_replacement",
    "parse_pattern",
]
