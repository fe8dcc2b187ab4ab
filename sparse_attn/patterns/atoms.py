"""Token-level pattern atoms (docs/spec.md) and the block-granular atoms presets need.

Every atom is a predicate ``V(i, j)`` (key ``j`` visible from query ``i``, 0-based positions)
with three faces:

* :meth:`Atom.visible` evaluates the predicate on broadcastable numpy position arrays
  (the token-exact definition; used to fill partial tiles and by tests);
* :meth:`Atom.block_candidates` returns, at the granularity of the *kernel* block size, a
  boolean ``[nQB, nQB]`` superset of the tiles that may hold a visible pair, computed from
  block ranges only, never from the ``S x S`` mask;
* :meth:`Atom.tile_keys` returns, for a list of tiles, integer keys such that two tiles with
  equal keys have equal ``block_size x block_size`` masks (for tiles away from the ragged end
  of the sequence). The layout compiler evaluates one representative tile per distinct key,
  which is what makes compiling a 65,536-token layout take well under a second.

Source of the atom semantics: the position-based taxonomy of Lin et al., "A Survey of
Transformers" (arXiv 2106.04554), Sec. 4.1.1, as fixed by docs/spec.md; the further atoms
(``strided``, ``summary``, ``vertical_stride``) come from the presets' papers/implementations
and are documented on each class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from sparse_attn.errors import PatternSyntaxError
from sparse_attn.limits import MAX_INT, shorten

#: Largest value of any integer parameter (positions and sizes are int32 in the layout).
MAX_PARAM = MAX_INT

#: Key value used by atoms for "this atom sees nothing in the tile" (shared by many tiles).
EMPTY_KEY = np.int64(-(2**62))


@dataclass
class Context:
    """What an atom may depend on when it is compiled for one head.

    Attributes:
        seq_len: S, tokens (the layout's maximum sequence length).
        block_size: kernel block size (tokens per tile side).
        head: head index (0-based) of the pattern being compiled.
        num_heads: H of the layout.
        cache: per-context scratch space for atoms (keyed by ``id(atom)``).
    """

    seq_len: int
    block_size: int
    head: int = 0
    num_heads: int = 1
    cache: dict = field(default_factory=dict)

    @property
    def num_blocks(self) -> int:
        """``ceil(seq_len / block_size)``."""
        return -(-self.seq_len // self.block_size)

    def block_starts(self) -> np.ndarray:
        """``int64 [nQB]`` first token of every kernel block."""
        return np.arange(self.num_blocks, dtype=np.int64) * self.block_size


@dataclass(frozen=True)
class Param:
    """Declaration of one atom parameter, used by the parser and for ``--help``.

    ``kind``: "int" | "ints" (list of ints) | "choice" (one of ``choices``) | "int_or_auto".
    ``minimum`` applies to ints (and to every element of a list).
    """

    name: str
    kind: str = "int"
    required: bool = True
    minimum: int | None = 1
    default: object = None
    choices: tuple[str, ...] = ()
    help: str = ""


class Atom:
    """Base class of pattern atoms. Subclasses set ``name``, ``params`` and ``formula``."""

    name: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    formula: ClassVar[str] = ""
    summary: ClassVar[str] = ""

    def __init__(self, **values) -> None:
        self.values = self._validate(values)

    # ------------------------------------------------------------------ construction
    @classmethod
    def _validate(cls, values: dict) -> dict:
        _known_params(cls.params, values, f"{cls.name}()")
        out = {}
        for p in cls.params:
            if p.name not in values or values[p.name] is None:
                if p.required:
                    raise PatternSyntaxError(
                        f"missing parameter {p.name!r} of {cls.name}(); usage: {cls.usage()}"
                    )
                out[p.name] = p.default
                continue
            out[p.name] = _check_value(cls.name, p, values[p.name])
        return out

    @classmethod
    def usage(cls) -> str:
        """Spec-string usage, e.g. ``band(w=W)``."""
        parts = []
        for p in cls.params:
            shown = (
                f"{p.name}={p.name.upper()}"
                if p.kind != "choice"
                else f"{p.name}={'|'.join(p.choices)}"
            )
            parts.append(shown if p.required else f"[{shown}]")
        return f"{cls.name}({', '.join(parts)})"

    def spec(self) -> str:
        """Canonical spec string of this atom (parameters in declaration order, unset omitted)."""
        parts = []
        for p in self.params:
            v = self.values[p.name]
            if v is None or (not p.required and v == p.default):
                continue
            if isinstance(v, tuple):
                v = "[" + ",".join(str(x) for x in v) + "]"
            parts.append(f"{p.name}={v}")
        return f"{self.name}({', '.join(parts)})"

    def __repr__(self) -> str:
        return self.spec()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Atom) and self.spec() == other.spec()

    def __hash__(self) -> int:
        return hash(self.spec())

    # ------------------------------------------------------------------ semantics
    @property
    def requires_static_seq_len(self) -> bool:
        """True when ``V(i, j)`` depends on the sequence length (not prefix-stable)."""
        return False

    @property
    def head_dependent(self) -> bool:
        """True when ``V(i, j)`` differs between heads (random draws, per-head shifts)."""
        return False

    def visible(self, i: np.ndarray, j: np.ndarray, ctx: Context) -> np.ndarray:
        """``bool`` array (broadcast of ``i`` and ``j``, int64 token positions): ``V(i, j)``."""
        raise NotImplementedError

    def block_candidates(self, ctx: Context, rows: np.ndarray) -> np.ndarray:
        """``bool [len(rows), nQB]``: superset of the kernel tiles holding a visible pair.

        ``rows`` are query block indices (int64); the compiler asks for chunks of rows so that
        temporaries stay O(chunk * nQB).
        """
        raise NotImplementedError

    def tile_keys(self, r: np.ndarray, c: np.ndarray, ctx: Context) -> np.ndarray:
        """``int64 [P, m]`` keys of tiles ``(r[p], c[p])``: equal keys => equal tile masks."""
        raise NotImplementedError


def _known_params(params: tuple[Param, ...], values, owner: str) -> dict[str, Param]:
    """``{name: Param}`` of ``params``; raises :func:`param_error` for a key of ``values``
    that is not among them (``owner``, e.g. ``"band()"`` or ``"preset bigbird"``, names the
    atom or preset in the message)."""
    known = {p.name: p for p in params}
    for k in values:
        if k not in known:
            raise param_error(
                f"unknown parameter {k!r} for {owner}; "
                f"known parameters: {', '.join(known) or 'none'}",
                k,
            )
    return known


def _check_value(atom: str, p: Param, v):
    if p.kind == "choice":
        if v not in p.choices:
            raise param_error(
                f"{atom}(): {p.name}={shorten(v, 40)} is not one of {', '.join(p.choices)}", p.name
            )
        return v
    if p.kind == "int_or_auto" and v == "auto":
        return v
    if p.kind == "ints":
        if isinstance(v, (int, np.integer)):
            v = (int(v),)
        if not isinstance(v, (list, tuple)) or not v:
            raise param_error(
                f"{atom}(): {p.name} must be a non-empty list of ints like [0,5], got {shorten(v, 40)}",
                p.name,
            )
        vals = tuple(sorted({_as_int(atom, p, x) for x in v}))
        return vals
    return _as_int(atom, p, v)


def _as_int(atom: str, p: Param, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise param_error(f"{atom}(): {p.name} must be an integer, got {shorten(v, 40)}", p.name)
    v = int(v)
    if v > MAX_PARAM:
        raise param_error(f"{atom}(): {p.name}={v} is too large; it must be <= {MAX_PARAM}", p.name)
    if p.minimum is not None and v < p.minimum:
        what = "negative" if v < 0 else ("zero" if v == 0 else "too small")
        raise param_error(
            f"{atom}(): {p.name}={v} is {what}; it must be >= {p.minimum}{p.help and ' (' + p.help + ')'}",
            p.name,
        )
    return v


def param_error(message: str, param: str) -> PatternSyntaxError:
    """A PatternSyntaxError about parameter ``param`` (the parser points at that token)."""
    err = PatternSyntaxError(message)
    err.param = param
    return err


# ---------------------------------------------------------------------------- helpers
def _block_diff_tokens(r: np.ndarray, c: np.ndarray, bs: int) -> np.ndarray:
    return (r.astype(np.int64) - c.astype(np.int64)) * bs


def _distance_candidates(ctx: Context, rows: np.ndarray, reach: int) -> np.ndarray:
    """Tiles of query blocks ``rows`` where some pair has ``|i - j| <= reach``."""
    nb, bs = ctx.num_blocks, ctx.block_size
    d = np.abs(rows[:, None] - np.arange(nb, dtype=np.int64)[None, :])
    return np.maximum(0, d * bs - (bs - 1)) <= reach


def _column_signatures(col_visible: np.ndarray, ctx: Context) -> tuple[np.ndarray, np.ndarray]:
    """From ``bool [nQB * bs]`` per-key visibility: (``any [nQB]``, signature id ``[nQB]``)."""
    nb, bs = ctx.num_blocks, ctx.block_size
    blocks = col_visible.reshape(nb, bs)
    _, sig = np.unique(blocks, axis=0, return_inverse=True)
    return blocks.any(axis=1), sig.reshape(-1).astype(np.int64)


def _lblock_ranges(ctx: Context, length: int) -> tuple[np.ndarray, np.ndarray]:
    """First and last ``length``-token block touched by every kernel block."""
    starts = ctx.block_starts()
    return starts // length, (starts + ctx.block_size - 1) // length


# ---------------------------------------------------------------------------- atoms
class Global(Atom):
    """Global tokens: ``V(i, j) = i in P or j in P``.

    ``P = {0 .. n-1} | tokens | {S-last .. S-1}`` (positions >= S are ignored). ``last`` makes
    the pattern depend on the end of the sequence (BigBird's global last block), so the layout
    then needs a static sequence length. docs/spec.md (``global(n=G)``,
    ``global(tokens=[0,5])``); ``last`` is this project's addition for BigBird ITC.
    """

    name = "global"
    params = (
        Param("n", required=False, help="number of leading global tokens"),
        Param("tokens", kind="ints", required=False, minimum=0, help="global token positions"),
        Param("last", required=False, help="number of trailing global tokens"),
    )
    formula = "i in P or j in P; P = {0..n-1} | tokens | {S-last..S-1}"
    summary = "global tokens: they see every key and every query sees them"

    def __init__(self, **values) -> None:
        super().__init__(**values)
        if all(self.values[k] is None for k in ("n", "tokens", "last")):
            raise PatternSyntaxError(
                "global() needs n=G (first G tokens), tokens=[...] and/or last=G; "
                "e.g. global(n=64) or global(tokens=[0,5])"
            )

    @property
    def requires_static_seq_len(self) -> bool:
        return self.values["last"] is not None

    def positions(self, seq_len: int) -> np.ndarray:
        """``bool [seq_len]``: membership of every position in P."""
        p = np.zeros(seq_len, dtype=bool)
        if self.values["n"] is not None:
            p[: self.values["n"]] = True
        if self.values["tokens"] is not None:
            t = np.array(self.values["tokens"], dtype=np.int64)
            p[t[t < seq_len]] = True
        if self.values["last"] is not None:
            p[max(0, seq_len - self.values["last"]) :] = True
        return p

    def _padded(self, ctx: Context) -> np.ndarray:
        key = ("global", id(self))
        if key not in ctx.cache:
            p = np.zeros(ctx.num_blocks * ctx.block_size, dtype=bool)
            p[: ctx.seq_len] = self.positions(ctx.seq_len)
            ctx.cache[key] = (p, *_column_signatures(p, ctx))
        return ctx.cache[key]

    def visible(self, i, j, ctx):
        p = self._padded(ctx)[0]
        n = p.shape[0]
        return p[np.clip(i, 0, n - 1)] | p[np.clip(j, 0, n - 1)]

    def block_candidates(self, ctx, rows):
        _, anyb, _ = self._padded(ctx)
        return anyb[rows][:, None] | anyb[None, :]

    def tile_keys(self, r, c, ctx):
        _, _, sig = self._padded(ctx)
        return np.stack([sig[r], sig[c]], axis=1)


class Dense(Atom):
    """Dense: ``V(i, j) = True`` (every pair; with ``causal``, full causal attention)."""

    name = "dense"
    params = ()
    formula = "true"
    summary = "every key (dense attention)"

    def visible(self, i, j, ctx):
        return np.ones(np.broadcast_shapes(np.shape(i), np.shape(j)), dtype=bool)

    def block_candidates(self, ctx, rows):
        return np.ones((len(rows), ctx.num_blocks), dtype=bool)

    def tile_keys(self, r, c, ctx):
        return np.zeros((len(r), 1), dtype=np.int64)


class Band(Atom):
    """Sliding window: ``V(i, j) = |i - j| <= w`` (w neighbours each side, self included).

    docs/spec.md; Lin et al. 2021 Sec. 4.1.1 "band attention".
    """

    name = "band"
    params = (Param("w", minimum=0, help="neighbours on each side"),)
    formula = "|i - j| <= w"
    summary = "sliding window of w tokens on each side"

    def reach(self) -> int:
        return self.values["w"]

    def visible(self, i, j, ctx):
        return np.abs(i - j) <= self.values["w"]

    def block_candidates(self, ctx, rows):
        return _distance_candidates(ctx, rows, self.reach())

    def tile_keys(self, r, c, ctx):
        bs = ctx.block_size
        d = _block_diff_tokens(r, c, bs)
        near = np.maximum(0, np.abs(d) - (bs - 1)) <= self.reach()
        return np.where(near, d, EMPTY_KEY)[:, None]


class Dilated(Band):
    """Dilated window: ``V(i, j) = |i - j| <= w*d and (i - j) % d == 0``.

    w keys on each side with gap d; ``dilated(w, d=1)`` is ``band(w)``. docs/spec.md;
    Lin et al. 2021 Sec. 4.1.1 "dilated attention".
    """

    name = "dilated"
    params = (
        Param("w", minimum=0, help="keys on each side"),
        Param("d", help="dilation (gap)"),
    )
    formula = "|i - j| <= w*d and (i - j) % d == 0"
    summary = "w keys on each side, every d-th position"

    def reach(self) -> int:
        return self.values["w"] * self.values["d"]

    def visible(self, i, j, ctx):
        diff = i - j
        return (np.abs(diff) <= self.reach()) & (diff % self.values["d"] == 0)


class Strided(Atom):
    """Strided: ``V(i, j) = (i - j) % l == 0`` (every l-th position, both directions).

    The second head of the strided pattern of Child et al., "Generating Long Sequences with
    Sparse Transformers" (2019), Sec. 4.2: ``A(2)_i = {j : (i - j) mod l = 0}``.
    """

    name = "strided"
    params = (Param("l", help="stride"),)
    formula = "(i - j) % l == 0"
    summary = "every l-th position (Sparse Transformer strided)"

    def visible(self, i, j, ctx):
        return (i - j) % self.values["l"] == 0

    def block_candidates(self, ctx, rows):
        nb, bs, step = ctx.num_blocks, ctx.block_size, self.values["l"]
        d = (rows[:, None] - np.arange(nb, dtype=np.int64)[None, :]) * bs
        lo, hi = d - (bs - 1), d + (bs - 1)
        return (hi // step) * step >= lo

    def tile_keys(self, r, c, ctx):
        return (_block_diff_tokens(r, c, ctx.block_size) % self.values["l"])[:, None]


class _ColumnAtom(Atom):
    """An atom whose predicate depends on the key position only."""

    def column(self, j: np.ndarray, ctx: Context) -> np.ndarray:
        raise NotImplementedError

    def _cols(self, ctx: Context):
        key = ("column", id(self), ctx.head)
        if key not in ctx.cache:
            pos = np.arange(ctx.num_blocks * ctx.block_size, dtype=np.int64)
            vis = self.column(pos, ctx) & (pos < ctx.seq_len)
            ctx.cache[key] = _column_signatures(vis, ctx)
        return ctx.cache[key]

    def visible(self, i, j, ctx):
        return np.broadcast_to(self.column(j, ctx), np.broadcast_shapes(np.shape(i), np.shape(j)))

    def block_candidates(self, ctx, rows):
        anyb, _ = self._cols(ctx)
        return np.broadcast_to(anyb[None, :], (len(rows), ctx.num_blocks))

    def tile_keys(self, r, c, ctx):
        return self._cols(ctx)[1][c][:, None]


class Summary(_ColumnAtom):
    """Summary columns: ``V(i, j) = j % l >= l - c`` (the last c positions of every l-block).

    The second head of the fixed pattern of Child et al. 2019, Sec. 4.2:
    ``A(2)_i = {j : j mod l in {t, t+1, ..., l}}``, ``t = l - c``.
    """

    name = "summary"
    params = (Param("l", help="block length"), Param("c", help="summary positions per block"))
    formula = "j % l >= l - c"
    summary = "the last c positions of every l-token block (Sparse Transformer fixed)"

    def __init__(self, **values) -> None:
        super().__init__(**values)
        if self.values["c"] > self.values["l"]:
            raise param_error(
                f"summary(): c={self.values['c']} must be <= l={self.values['l']}", "c"
            )

    def column(self, j, ctx):
        ell = self.values["l"]
        return j % ell >= ell - self.values["c"]


class VerticalStride(_ColumnAtom):
    """Vertical stride (block-granular): ``V(i, j) = (j // b + h*step + 1) % s == 0``.

    Every s-th key block of b tokens is visible from every query; head ``h`` shifts the
    selected blocks by ``h*step``. ``step=auto`` is ``max(1, s // H)`` (heterogeneous heads,
    H = number of heads of the layout), ``step=0`` gives the same blocks to every head.
    Source: Phi-3-small's block-sparse attention (``blocksparse_vert_stride``,
    ``blocksparse_homo_head_pattern``) as implemented in vLLM/TensorRT-LLM
    ``get_sparse_attn_mask``: ``(arange(blocks) + h * head_sliding_step + 1) % vert_stride == 0``
    with ``head_sliding_step = max(1, vert_stride // n_heads)``.
    """

    name = "vertical_stride"
    params = (
        Param("b", help="block length in tokens"),
        Param("s", help="stride in blocks"),
        Param(
            "step",
            kind="int_or_auto",
            required=False,
            minimum=0,
            default=0,
            help="per-head shift in blocks, or auto",
        ),
    )
    formula = "(j // b + h*step + 1) % s == 0; step=auto: max(1, s // H)"
    summary = "every s-th block of b keys, shifted by step blocks per head (Phi-3-small)"

    @property
    def head_dependent(self) -> bool:
        return self.values["step"] != 0

    def head_offset(self, ctx: Context) -> int:
        step = self.values["step"]
        if step == "auto":
            step = max(1, self.values["s"] // max(1, ctx.num_heads))
        return ctx.head * int(step)

    def column(self, j, ctx):
        return (j // self.values["b"] + self.head_offset(ctx) + 1) % self.values["s"] == 0


class BlockLocal(Atom):
    """Block local: ``V(i, j) = i // b == j // b`` (non-overlapping blocks of b tokens).

    docs/spec.md; Lin et al. 2021 Sec. 4.1.1 "block local attention". ``b`` need not equal
    the kernel block size.
    """

    name = "block_local"
    params = (Param("b", help="block length in tokens"),)
    formula = "i // b == j // b"
    summary = "non-overlapping blocks of b tokens"

    def width(self) -> int:
        return 0

    def visible(self, i, j, ctx):
        b = self.values["b"]
        return np.abs(i // b - j // b) <= self.width()

    def block_candidates(self, ctx, rows):
        lo, hi = _lblock_ranges(ctx, self.values["b"])
        qlo, qhi = lo[rows][:, None], hi[rows][:, None]
        gap = np.maximum(0, np.maximum(lo[None, :] - qhi, qlo - hi[None, :]))
        return gap <= self.width()

    def tile_keys(self, r, c, ctx):
        bs, b = ctx.block_size, self.values["b"]
        lo, hi = _lblock_ranges(ctx, b)
        gap = np.maximum(0, np.maximum(lo[c] - hi[r], lo[r] - hi[c]))
        near = gap <= self.width()
        rho = (r.astype(np.int64) * bs) % b
        d = _block_diff_tokens(r, c, bs)
        return np.stack([np.where(near, rho, EMPTY_KEY), np.where(near, d, EMPTY_KEY)], axis=1)


class BlockBand(BlockLocal):
    """Block band: ``V(i, j) = |i // b - j // b| <= w`` (band at block granularity).

    docs/spec.md: the sliding window of BigBird (Zaheer et al. 2020, Sec. 2 and App. D:
    3 blocks = ``w=1``) and of DeepSpeed's ``BSLongformerSparsityConfig``.
    """

    name = "block_band"
    params = (
        Param("b", help="block length in tokens"),
        Param("w", minimum=0, help="neighbour blocks each side"),
    )
    formula = "|i // b - j // b| <= w"
    summary = "band of w blocks of b tokens on each side"

    def width(self) -> int:
        return self.values["w"]


class Random(Atom):
    """Random blocks: query block ``I = i // b`` sees the key blocks ``J in R(h, I)``.

    ``V(i, j) = (j // b) in R(h, i // b)``; ``b`` defaults to the kernel block size.
    ``R(h, I)`` is ``r`` distinct blocks drawn without replacement (all of them when fewer
    exist) by a partial Fisher-Yates shuffle driven by numpy's ``PCG64`` bit generator seeded
    with ``SeedSequence([seed, h, I])``: one independent stream per (seed, head, query block),
    so a row never depends on other rows, on the process (no ``hash()``) or on the numpy
    version (bit generators and SeedSequence are stable; only raw 64-bit outputs are used,
    with rejection sampling for uniform indices).

    ``scope`` chooses the set drawn from:

    * ``prefix`` (default): blocks ``0 .. I`` (the query's own block and the ones before).
      The draw for a row never depends on S, so the pattern is prefix-stable (docs/spec.md) and a
      layout compiled for ``max_seq_len`` can be cropped. Each row gets ``min(r, I + 1)``
      blocks.
    * ``all``: blocks ``0 .. ceil(S / b) - 1`` (BigBird's bidirectional random attention,
      Zaheer et al. 2020 Sec. 2); depends on S, so the layout needs a static sequence length.
    """

    name = "random"
    params = (
        Param("r", help="random blocks per query block"),
        Param("seed", minimum=0, help="generator seed"),
        Param("b", required=False, help="random block length in tokens; default the kernel block"),
        Param("scope", kind="choice", required=False, default="prefix", choices=("prefix", "all")),
    )
    formula = "(j // b) in R(seed, h, i // b), r blocks per query block drawn from 0..i//b (scope=prefix) or all"
    summary = "r random key blocks per query block, per head, deterministic from the seed"

    @property
    def requires_static_seq_len(self) -> bool:
        return self.values["scope"] == "all"

    @property
    def head_dependent(self) -> bool:
        return True

    def block_length(self, ctx: Context) -> int:
        return self.values["b"] or ctx.block_size

    def draws(self, seq_len: int, block_size: int) -> int:
        """Number of block draws (and rows) :meth:`draw` makes for one head: its cost."""
        nbl = -(-seq_len // (self.values["b"] or block_size))
        per_row = min(self.values["r"], nbl)
        return nbl * (1 + per_row)

    def draw(self, seq_len: int, block_len: int, head: int) -> np.ndarray:
        """``int64 [nB, r]`` chosen key blocks per query block (``-1`` = none), ``nB = ceil(S/b)``."""
        nbl = -(-seq_len // block_len)
        r, seed = min(self.values["r"], nbl), self.values["seed"]  # no row has more than nbl
        out = np.full((nbl, r), -1, dtype=np.int64)
        for q in range(nbl):
            universe = q + 1 if self.values["scope"] == "prefix" else nbl
            out[q, : min(r, universe)] = draw_without_replacement(seed, head, q, universe, r)
        return out

    def _table(self, ctx: Context) -> np.ndarray:
        key = ("random", id(self), ctx.head)
        if key not in ctx.cache:
            ctx.cache[key] = self.draw(ctx.seq_len, self.block_length(ctx), ctx.head)
        return ctx.cache[key]

    def visible(self, i, j, ctx):
        tab = self._table(ctx)
        b = self.block_length(ctx)
        nbl = tab.shape[0]
        codes = self._codes(ctx)
        qi = np.clip(np.asarray(i) // b, 0, nbl - 1)
        kj = np.asarray(j) // b
        code = qi * nbl + np.clip(kj, 0, nbl - 1)
        if codes.size == 0:
            return np.zeros(np.broadcast_shapes(qi.shape, kj.shape), dtype=bool)
        pos = np.minimum(np.searchsorted(codes, code), codes.size - 1)
        return (codes[pos] == code) & (kj >= 0) & (kj < nbl)

    def _codes(self, ctx: Context) -> np.ndarray:
        """Sorted ``int64`` codes ``q * nB + k`` of the drawn (query block, key block) pairs:
        a membership test costs O(log draws) per pair, whatever ``r`` is."""
        key = ("random_codes", id(self), ctx.head)
        if key not in ctx.cache:
            tab = self._table(ctx)
            q_idx, slot = np.nonzero(tab >= 0)
            ctx.cache[key] = np.unique(q_idx * tab.shape[0] + tab[q_idx, slot])
        return ctx.cache[key]

    def block_candidates(self, ctx, rows):
        return self._cand_matrix(ctx)[rows]

    def _cand_matrix(self, ctx: Context) -> np.ndarray:
        """``bool [nQB, nQB]`` kernel tiles touched by a chosen (query block, key block) pair."""
        key = ("random_cand", id(self), ctx.head)
        if key in ctx.cache:
            return ctx.cache[key]
        tab = self._table(ctx)
        b, bs, nb = self.block_length(ctx), ctx.block_size, ctx.num_blocks
        q_idx, slot = np.nonzero(tab >= 0)
        k_idx = tab[q_idx, slot]
        rlo, rhi = q_idx * b // bs, np.minimum((q_idx * b + b - 1) // bs, nb - 1)
        clo, chi = k_idx * b // bs, np.minimum((k_idx * b + b - 1) // bs, nb - 1)
        span = -(-b // bs) + 1
        if span <= 4:  # a random block spans few kernel tiles: mark them directly
            cand = np.zeros((nb, nb), dtype=bool)
            for dr in range(span):
                for dc in range(span):
                    rr, cc = rlo + dr, clo + dc
                    ok = (rr <= rhi) & (cc <= chi)
                    cand[rr[ok], cc[ok]] = True
        else:  # large random blocks: fill the rectangles with a 2-D difference array
            diff = np.zeros((nb + 1, nb + 1), dtype=np.int32)
            np.add.at(diff, (rlo, clo), 1)
            np.add.at(diff, (rlo, chi + 1), -1)
            np.add.at(diff, (rhi + 1, clo), -1)
            np.add.at(diff, (rhi + 1, chi + 1), 1)
            np.cumsum(diff, axis=0, out=diff)
            np.cumsum(diff, axis=1, out=diff)
            cand = diff[:nb, :nb] > 0
        ctx.cache[key] = cand
        return cand

    def tile_keys(self, r, c, ctx):
        cand = self._cand_matrix(ctx)[r, c]
        if self.block_length(ctx) % ctx.block_size == 0:
            # every kernel tile lies inside one (query block, key block) pair: full or empty
            return cand.astype(np.int64)[:, None]
        return np.stack(
            [np.where(cand, r, EMPTY_KEY), np.where(cand, c, EMPTY_KEY)], axis=1
        ).astype(np.int64)


def draw_without_replacement(seed: int, head: int, row: int, universe: int, r: int) -> np.ndarray:
    """``min(r, universe)`` distinct ints from ``0 .. universe-1``, deterministic in the arguments.

    Partial Fisher-Yates shuffle (Knuth, TAOCP vol. 2, Algorithm 3.4.2 P) driven by the raw
    64-bit outputs of ``PCG64(SeedSequence([seed, head, row]))``, with rejection sampling so
    every index is exactly uniform. Stable across processes and numpy versions.
    """
    bitgen = np.random.PCG64(np.random.SeedSequence([int(seed), int(head), int(row)]))
    m = min(r, universe)
    swapped: dict[int, int] = {}  # sparse view of the permutation being shuffled
    out = []
    for k in range(m):
        n = universe - k
        limit = (2**64 // n) * n
        while True:
            x = int(bitgen.random_raw())
            if x < limit:
                break
        pick = k + x % n
        vk, vp = swapped.get(k, k), swapped.get(pick, pick)
        swapped[k], swapped[pick] = vp, vk
        out.append(vp)
    return np.array(sorted(out), dtype=np.int64)


#: Atom classes by spec-string name.
ATOMS: dict[str, type[Atom]] = {
    cls.name: cls
    for cls in (
        Dense,
        Global,
        Band,
        Dilated,
        Random,
        BlockLocal,
        BlockBand,
        Strided,
        Summary,
        VerticalStride,
    )
}
