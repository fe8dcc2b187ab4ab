"""A pattern: the union of atoms, optionally intersected with causal (docs/spec.md)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from sparse_attn.errors import PatternSyntaxError
from sparse_attn.patterns.atoms import Atom, Context


class Pattern:
    """``V(i, j) = (A_1(i, j) or ... or A_n(i, j)) [and j <= i if causal]``.

    Args:
        atoms: the atoms of the union (duplicates are dropped, order kept).
        causal: intersect the union with ``j <= i`` (docs/spec.md: the ``causal`` modifier applies to
            the whole union).
        name: optional label, e.g. the preset call it was expanded from (``"bigbird(r=2)"``).

    ``spec()`` / ``str()`` give the canonical expanded string, e.g.
    ``"band(w=256) | global(n=1)"``; parsing it gives an equal pattern.

    Raises:
        PatternSyntaxError: when there is no atom (an empty union sees nothing).
    """

    def __init__(self, atoms: Iterable[Atom], causal: bool = False, name: str | None = None):
        uniq: list[Atom] = []
        for a in atoms:
            if not isinstance(a, Atom):
                raise PatternSyntaxError(f"pattern atoms must be Atom objects, got {a!r}")
            if a not in uniq:
                uniq.append(a)
        if not uniq:
            raise PatternSyntaxError(
                "pattern has no atom (an empty union sees nothing); add one, e.g. band(w=64)"
            )
        self.atoms: tuple[Atom, ...] = tuple(uniq)
        self.causal = bool(causal)
        self.name = name

    # ------------------------------------------------------------------ algebra
    def __or__(self, other: Pattern | Atom) -> Pattern:
        if isinstance(other, Atom):
            other = Pattern([other])
        if not isinstance(other, Pattern):
            return NotImplemented
        return Pattern(self.atoms + other.atoms, self.causal or other.causal)

    def with_causal(self, causal: bool = True) -> Pattern:
        """This pattern with the causal modifier set to ``causal`` (or kept when already set)."""
        return Pattern(self.atoms, self.causal or causal, self.name)

    def spec(self) -> str:
        """Canonical expanded spec string (atoms in order, ``| causal`` last when causal)."""
        return " | ".join([a.spec() for a in self.atoms] + (["causal"] if self.causal else []))

    def __str__(self) -> str:
        return self.spec()

    def __repr__(self) -> str:
        return f"Pattern({self.spec()!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pattern) and self.spec() == other.spec()

    def __hash__(self) -> int:
        return hash(self.spec())

    # ------------------------------------------------------------------ semantics
    @property
    def requires_static_seq_len(self) -> bool:
        """True when some atom depends on the end of the sequence (not prefix-stable)."""
        return any(a.requires_static_seq_len for a in self.atoms)

    @property
    def head_dependent(self) -> bool:
        """True when heads of the same pattern get different masks (random, per-head shifts)."""
        return any(a.head_dependent for a in self.atoms)

    def visible(self, i: np.ndarray, j: np.ndarray, ctx: Context) -> np.ndarray:
        """``bool`` broadcast of int64 position arrays ``i`` (queries), ``j`` (keys): ``V(i, j)``."""
        i = np.asarray(i, dtype=np.int64)
        j = np.asarray(j, dtype=np.int64)
        out = np.zeros(np.broadcast_shapes(i.shape, j.shape), dtype=bool)
        for a in self.atoms:
            out |= a.visible(i, j, ctx)
        if self.causal:
            out &= j <= i
        return out

    def token_mask(
        self, seq_len: int, *, block_size: int, head: int = 0, num_heads: int = 1
    ) -> np.ndarray:
        """Dense ``bool [S, S]`` mask of head ``head`` (O(S^2) memory: for tests and small S).

        ``block_size`` is the kernel block size (the default block length of ``random``).
        """
        ctx = Context(seq_len, block_size, head, num_heads)
        pos = np.arange(seq_len, dtype=np.int64)
        return self.visible(pos[:, None], pos[None, :], ctx)
