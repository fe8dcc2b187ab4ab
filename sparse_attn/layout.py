"""Block layouts: the block-sparse structure every kernel and export consumes.

A :class:`BlockLayout` describes, per head, which ``block_size x block_size`` tiles of the
``[S, S]`` attention matrix hold at least one visible (query, key) pair, in CSR form over key
blocks, and for each stored tile whether it is *full* (every in-range pair visible) or
*partial* (a mask from a deduplicated table applies). See docs/spec.md.

Conventions (shared by every backend):

* Positions ``>= seq_len`` of the last, ragged block are "don't care": a tile is *full* when
  every in-range pair is visible, and partial masks are 0 beyond ``seq_len``. Kernels always
  mask keys ``>= S`` of the request themselves.
* A request with ``S <= seq_len`` uses the top-left crop (:meth:`BlockLayout.crop`); prefix
  stability of the patterns makes the crop exact.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from sparse_attn import limits
from sparse_attn.errors import InvalidInputError


@dataclass(frozen=True, eq=False)
class BlockLayout:
    """Token-exact block-sparse layout of ``num_heads`` attention patterns.

    Attributes:
        seq_len: maximum sequence length (tokens) the layout was built for.
        block_size: tokens per block side.
        row_ptr: ``int32 [H, nQB + 1]`` CSR row pointers; row ``r`` of head ``h`` stores
            entries ``row_ptr[h, r] : row_ptr[h, r + 1]`` of ``col_idx[h]`` / ``mask_idx[h]``.
        col_idx: ``int32 [H, nnz]`` key-block index of each stored tile, ascending within a
            row; ``nnz`` is the largest count over heads, shorter heads are padded with 0.
        mask_idx: ``int32 [H, nnz]``; -1 = full tile, ``k >= 0`` = partial tile using
            ``masks[k]``; padding is -1.
        masks: ``uint8 [M, block_size, block_size]`` deduplicated partial-tile masks,
            ``masks[k, qi, kj] = 1`` when key ``kj`` of the tile is visible from query ``qi``.
            ``M`` may be 0.
        spec: the expanded pattern spec (one string for all heads, or a JSON list per head).
        causal: whether the causal modifier was applied.
        requires_static_seq_len: True when the pattern depends on the end of the sequence
            (e.g. BigBird's global last block); such a layout may not be cropped.
    """

    seq_len: int
    block_size: int
    row_ptr: np.ndarray
    col_idx: np.ndarray
    mask_idx: np.ndarray
    masks: np.ndarray
    spec: str = "custom"
    causal: bool = False
    requires_static_seq_len: bool = False
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        h = self.row_ptr.shape[0]
        nb = self.num_blocks
        bs = self.block_size
        if self.row_ptr.shape != (h, nb + 1):
            raise ValueError(f"row_ptr must be [H, {nb + 1}], got {list(self.row_ptr.shape)}")
        if self.col_idx.shape != self.mask_idx.shape or self.col_idx.shape[0] != h:
            raise ValueError(
                f"col_idx {list(self.col_idx.shape)} and mask_idx {list(self.mask_idx.shape)} "
                f"must both be [H={h}, nnz]"
            )
        if self.masks.ndim != 3 or self.masks.shape[1:] != (bs, bs):
            raise ValueError(f"masks must be [M, {bs}, {bs}], got {list(self.masks.shape)}")

    # ------------------------------------------------------------------ shape facts
    @property
    def num_heads(self) -> int:
        """Number of heads H (one pattern each)."""
        return int(self.row_ptr.shape[0])

    @property
    def num_blocks(self) -> int:
        """Number of query (= key) blocks, ``ceil(seq_len / block_size)``."""
        return -(-self.seq_len // self.block_size)

    @property
    def nnz(self) -> np.ndarray:
        """``int64 [H]`` number of stored tiles per head."""
        return self.row_ptr[:, -1].astype(np.int64)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_token_mask(
        cls,
        mask: np.ndarray,
        block_size: int,
        spec: str = "custom",
        causal: bool = False,
        requires_static_seq_len: bool = False,
    ) -> BlockLayout:
        """Build a layout from a dense boolean token mask (generic, O(S^2) memory).

        The reference builder: the pattern compiler must produce an identical layout.

        Args:
            mask: ``bool [H, S, S]`` (or ``[S, S]`` for one head); ``mask[h, i, j]`` = key
                ``j`` visible from query ``i``.
            block_size: tokens per block, >= 1.

        Raises:
            InvalidInputError (a ValueError): on a mask of the wrong rank, non-square, S = 0
                or block_size < 1.
        """
        mask = np.asarray(mask, dtype=bool)
        if mask.ndim == 2:
            mask = mask[None]
        if mask.ndim != 3 or mask.shape[1] != mask.shape[2]:
            raise InvalidInputError(f"mask must be [H, S, S], got {list(mask.shape)}")
        if mask.shape[1] == 0:
            raise InvalidInputError("mask has S = 0; sequence length must be >= 1")
        if block_size < 1:
            raise InvalidInputError(f"block_size must be >= 1, got {block_size}")
        h, s, _ = mask.shape
        nb = -(-s // block_size)
        padded = np.zeros((h, nb * block_size, nb * block_size), dtype=bool)
        padded[:, :s, :s] = mask
        valid = np.zeros((nb * block_size,), dtype=bool)
        valid[:s] = True
        tiles = padded.reshape(h, nb, block_size, nb, block_size).transpose(0, 1, 3, 2, 4)
        vt = valid.reshape(nb, block_size)
        in_range = vt[:, None, :, None] & vt[None, :, None, :]  # [nb, nb, bs, bs]
        builder = _LayoutBuilder(h, nb, block_size)
        for hh in range(h):
            any_vis = tiles[hh].any(axis=(2, 3))
            full = (tiles[hh] | ~in_range).all(axis=(2, 3))
            for r in range(nb):
                cols = np.nonzero(any_vis[r])[0]
                builder.add_row(
                    hh, r, cols, [None if full[r, c] else tiles[hh, r, c] for c in cols]
                )
        return builder.build(s, spec, causal, requires_static_seq_len)

    # ------------------------------------------------------------------ views
    def row(self, head: int, qblock: int) -> tuple[np.ndarray, np.ndarray]:
        """``(col_idx, mask_idx)`` of query block ``qblock`` of ``head``."""
        a, b = self.row_ptr[head, qblock], self.row_ptr[head, qblock + 1]
        return self.col_idx[head, a:b], self.mask_idx[head, a:b]

    def crop(self, seq_len: int) -> BlockLayout:
        """Top-left crop to ``seq_len <= self.seq_len`` tokens (docs/spec.md: prefix stability).

        Raises:
            InvalidInputError (a ValueError): if ``seq_len`` is out of ``1..self.seq_len``, or
                the layout needs a static sequence length (``requires_static_seq_len``) and
                ``seq_len`` differs.
        """
        if not 1 <= seq_len <= self.seq_len:
            raise InvalidInputError(
                f"seq_len must be in 1..{self.seq_len} (the layout's max), got {seq_len}"
            )
        if seq_len == self.seq_len:
            return self
        if self.requires_static_seq_len:
            raise InvalidInputError(
                f"pattern {self.spec!r} depends on the end of the sequence, so the layout is "
                f"fixed at seq_len={self.seq_len}; pad inputs to {self.seq_len} tokens"
            )
        nb = -(-seq_len // self.block_size)
        bs = self.block_size
        tail = seq_len - (nb - 1) * bs  # valid tokens in the last block
        builder = _LayoutBuilder(self.num_heads, nb, bs)
        for h in range(self.num_heads):
            for r in range(nb):
                cols, midx = self.row(h, r)
                keep = cols < nb
                tiles = []
                for c, m in zip(cols[keep], midx[keep], strict=True):
                    t = None if m < 0 else self.masks[m].astype(bool)
                    if tail < bs and (r == nb - 1 or c == nb - 1) and t is not None:
                        t = t.copy()
                        if r == nb - 1:
                            t[tail:, :] = False
                        if c == nb - 1:
                            t[:, tail:] = False
                        rows = bs if r < nb - 1 else tail
                        colsn = bs if c < nb - 1 else tail
                        if t[:rows, :colsn].all():
                            t = None
                        elif not t.any():
                            continue
                    tiles.append((c, t))
                builder.add_row(h, r, np.array([c for c, _ in tiles]), [t for _, t in tiles])
        return builder.build(seq_len, self.spec, self.causal, False)

    def token_mask(self, seq_len: int | None = None) -> np.ndarray:
        """Expand to the dense boolean token mask ``bool [H, S, S]`` (O(S^2): tests, plots).

        Args:
            seq_len: crop length; default ``self.seq_len``.
        """
        s = self.seq_len if seq_len is None else seq_len
        lay = self.crop(s) if s != self.seq_len else self
        nb, bs = lay.num_blocks, lay.block_size
        out = np.zeros((lay.num_heads, nb, bs, nb, bs), dtype=bool)
        for h in range(lay.num_heads):
            n = int(lay.row_ptr[h, -1])
            rows = np.repeat(np.arange(nb), np.diff(lay.row_ptr[h]))
            cols, midx = lay.col_idx[h, :n], lay.mask_idx[h, :n]
            full = midx < 0
            out[h, rows[full], :, cols[full], :] = True
            if (~full).any():
                out[h, rows[~full], :, cols[~full], :] = lay.masks[midx[~full]].astype(bool)
        return out.reshape(lay.num_heads, nb * bs, nb * bs)[:, :s, :s]

    def block_mask(self, heads: int | None = None) -> np.ndarray:
        """``int8 [H, nQB, nQB]``: 0 = empty, 1 = full, 2 = partial tile.

        Args:
            heads: only the first ``heads`` heads (default all).
        """
        nb = self.num_blocks
        nh = self.num_heads if heads is None else min(heads, self.num_heads)
        out = np.zeros((nh, nb, nb), dtype=np.int8)
        for h in range(nh):
            n = int(self.row_ptr[h, -1])
            rows = np.repeat(np.arange(nb), np.diff(self.row_ptr[h]))
            out[h, rows, self.col_idx[h, :n]] = np.where(self.mask_idx[h, :n] < 0, 1, 2)
        return out

    # ------------------------------------------------------------------ statistics
    def stats(self) -> dict:
        """Statistics of the layout (docs/spec.md, ``layout --json``).

        Returns a dict with ``seq_len``, ``block_size``, ``num_heads``, ``num_blocks``,
        ``density_tokens`` (visible pairs / (H * S^2)), ``density_blocks`` (stored tiles /
        (H * nQB^2)), ``full_blocks``, ``partial_blocks``, ``num_masks``, ``spec``, ``causal``.
        Computed without materialising the S x S mask.
        """
        if "stats" in self._cache:
            return dict(self._cache["stats"])
        s, bs, nb, h = self.seq_len, self.block_size, self.num_blocks, self.num_heads
        tail = s - (nb - 1) * bs
        span = np.full(nb, bs, dtype=np.int64)
        span[-1] = tail
        mask_counts = np.array(
            [int(m[:, :].astype(np.int64).sum()) for m in self.masks], dtype=np.int64
        )
        visible = 0
        full = partial = 0
        for hh in range(h):
            n = int(self.row_ptr[hh, -1])
            rows = np.repeat(np.arange(nb), np.diff(self.row_ptr[hh]))
            cols = self.col_idx[hh, :n]
            midx = self.mask_idx[hh, :n]
            is_full = midx < 0
            full += int(is_full.sum())
            partial += int((~is_full).sum())
            visible += int((span[rows[is_full]] * span[cols[is_full]]).sum())
            visible += int(mask_counts[midx[~is_full]].sum())
        st = {
            "seq_len": s,
            "block_size": bs,
            "num_heads": h,
            "num_blocks": nb,
            "density_tokens": visible / (h * s * s),
            "density_blocks": (full + partial) / (h * nb * nb),
            "full_blocks": full,
            "partial_blocks": partial,
            "num_masks": int(self.masks.shape[0]),
            "spec": self.spec,
            "causal": bool(self.causal),
            "requires_static_seq_len": bool(self.requires_static_seq_len),
        }
        self._cache["stats"] = st
        return dict(st)

    def layout_hash(self) -> str:
        """SHA-256 (hex) over the layout arrays and sizes: identifies a layout in metadata.

        Computed once per layout (cached, like :meth:`stats`): exports, their metadata and
        :meth:`equals` ask for it repeatedly.
        """
        if "layout_hash" in self._cache:
            return self._cache["layout_hash"]
        hsh = hashlib.sha256()
        hsh.update(json.dumps([self.seq_len, self.block_size]).encode())
        for a in (self.row_ptr, self.col_idx, self.mask_idx, self.masks):
            hsh.update(str(a.dtype).encode() + str(a.shape).encode())
            hsh.update(np.ascontiguousarray(a).tobytes())
        self._cache["layout_hash"] = hsh.hexdigest()
        return self._cache["layout_hash"]

    def equals(self, other: BlockLayout) -> bool:
        """Exact equality of sizes and arrays (not of ``spec``)."""
        return (
            self.seq_len == other.seq_len
            and self.block_size == other.block_size
            and self.layout_hash() == other.layout_hash()
        )


class _LayoutBuilder:
    """Accumulates rows of tiles and deduplicates partial masks into a BlockLayout."""

    def __init__(self, num_heads: int, num_blocks: int, block_size: int) -> None:
        self.h, self.nb, self.bs = num_heads, num_blocks, block_size
        self.rows: list[list[tuple[np.ndarray, np.ndarray]]] = [
            [(np.zeros(0, np.int32), np.zeros(0, np.int32))] * num_blocks for _ in range(num_heads)
        ]
        self.mask_ids: dict[bytes, int] = {}
        self.masks: list[np.ndarray] = []
        self.tiles = 0  # stored tiles so far, over heads (checked against limits.MAX_TILES)
        self.compiled = 0  # candidate tiles of compiled heads (limits.MAX_COMPILE_TILES)
        self.mask_work = 0  # token pairs evaluated (limits.MAX_MASK_TABLE_BYTES)

    def mask_id(self, tile: np.ndarray) -> int:
        t = np.ascontiguousarray(tile, dtype=np.uint8)
        key = t.tobytes()
        k = self.mask_ids.get(key)
        if k is None:
            k = len(self.masks)
            self.mask_ids[key] = k
            self.masks.append(t)
        return k

    def add_row(self, head: int, qblock: int, cols, tiles) -> None:
        """Set row ``qblock`` of ``head``: ascending ``cols`` and per col a bool tile or None (full)."""
        cols = np.asarray(cols, dtype=np.int32).reshape(-1)
        midx = np.array(
            [-1 if t is None else self.mask_id(t) for t in tiles], dtype=np.int32
        ).reshape(-1)
        order = np.argsort(cols, kind="stable")
        self.rows[head][qblock] = (cols[order], midx[order])

    def build(
        self, seq_len: int, spec: str, causal: bool, requires_static_seq_len: bool
    ) -> BlockLayout:
        counts = np.array([[len(c) for c, _ in hr] for hr in self.rows], dtype=np.int64)
        row_ptr = np.zeros((self.h, self.nb + 1), dtype=np.int64)
        row_ptr[:, 1:] = np.cumsum(counts, axis=1)
        nnz = int(row_ptr[:, -1].max()) if self.h else 0
        col_idx = np.zeros((self.h, nnz), dtype=np.int32)
        mask_idx = np.full((self.h, nnz), -1, dtype=np.int32)
        for h, hr in enumerate(self.rows):
            if hr:
                n = int(row_ptr[h, -1])
                if n:
                    col_idx[h, :n] = np.concatenate([c for c, _ in hr])
                    mask_idx[h, :n] = np.concatenate([m for _, m in hr])
        masks = (
            np.stack(self.masks).astype(np.uint8)
            if self.masks
            else np.zeros((0, self.bs, self.bs), dtype=np.uint8)
        )
        return BlockLayout(
            seq_len=seq_len,
            block_size=self.bs,
            row_ptr=row_ptr.astype(np.int32),
            col_idx=col_idx,
            mask_idx=mask_idx,
            masks=masks,
            spec=spec,
            causal=causal,
            requires_static_seq_len=requires_static_seq_len,
        )


# ---------------------------------------------------------------------------- compiler
#: Most blocks per side compile_layout accepts (see :mod:`sparse_attn.limits`).
MAX_COMPILE_BLOCKS = limits.MAX_BLOCKS
#: Tiles evaluated per numpy batch when filling representative tiles (bounds peak memory).
_TILE_BATCH_ELEMS = 1 << 21


def compile_layout(
    spec,
    seq_len: int,
    block_size: int,
    num_heads: int = 1,
    causal: bool = False,
) -> BlockLayout:
    """Compile a pattern to a token-exact :class:`BlockLayout` without an ``S x S`` mask.

    Args:
        spec: a spec string (``"band(w=256) | global(n=64)"``), a preset name with optional
            overrides (``"bigbird(r=2)"``), a :class:`~sparse_attn.patterns.Pattern` or
            :class:`~sparse_attn.patterns.Atom`, or a list of those, one per head (its length
            must equal ``num_heads``; a JSON list string such as a per-head ``layout.spec``
            is accepted too). One pattern is applied to every head.
        seq_len: maximum sequence length S (tokens), >= 1. Requests may use any
            ``S' <= seq_len`` through :meth:`BlockLayout.crop` (prefix stability).
        block_size: kernel block size (tokens per tile side), >= 1.
        num_heads: H, >= 1.
        causal: intersect every head's pattern with ``j <= i`` (same as ``| causal``).

    Returns:
        A layout identical (same arrays, same mask-table order) to
        ``BlockLayout.from_token_mask(mask, block_size)`` for the pattern's dense mask, with
        ``spec`` = the expanded spec (a JSON list when heads differ) and
        ``requires_static_seq_len`` set when a pattern needs the end of the sequence.

    Method: per head, every atom proposes candidate tiles from block ranges (``[nQB, nQB]``
    booleans) and integer keys such that equal keys imply equal tile masks (translation
    invariance of band/dilated/strided, periodicity of block atoms, per-block signatures of
    global/column atoms). One representative tile per distinct key is evaluated token by token
    and classified empty / full / partial (positions >= S are "don't care", partial masks
    are 0 there), so memory is O(nQB^2 + distinct tiles * bs^2), never O(S^2).

    Limits (:mod:`sparse_attn.limits`, listed in docs/spec.md) are checked before any work:
    ``seq_len <= MAX_SEQ_LEN``, ``block_size <= MAX_BLOCK_SIZE``, ``num_heads <= MAX_HEADS``,
    ``nQB <= MAX_BLOCKS``, the candidate-grid work (``nQB^2`` per distinct head) and the random
    draws; the stored tiles and the distinct tile masks are checked as soon as they are known,
    before arrays of that size are built. So an accepted call runs in bounded time and memory.

    Raises:
        InvalidInputError: seq_len/block_size/num_heads out of range, a limit exceeded, a
            per-head list of the wrong length, or an unsupported ``spec`` type.
        PatternSyntaxError: a spec string that does not parse.
    """
    from sparse_attn.patterns import Pattern, Random, parse_pattern

    seq_len = limits.check_int(seq_len, "seq_len", 1, limits.MAX_SEQ_LEN)
    block_size = limits.check_int(block_size, "block_size", 1, limits.MAX_BLOCK_SIZE)
    num_heads = limits.check_int(num_heads, "num_heads", 1, limits.MAX_HEADS)
    nb = -(-seq_len // block_size)
    if nb > MAX_COMPILE_BLOCKS:
        raise InvalidInputError(
            f"seq_len={seq_len} / block_size={block_size} gives {nb} blocks per side; the "
            f"compiler handles at most {MAX_COMPILE_BLOCKS} (an nQB^2 grid of tiles): use a "
            "larger block_size"
        )
    if isinstance(spec, str) and spec.lstrip().startswith("["):
        if len(spec) > limits.MAX_SPEC_CHARS * num_heads:
            raise InvalidInputError(
                f"per-head spec list is {len(spec)} characters long; the limit is "
                f"{limits.MAX_SPEC_CHARS} per head"
            )
        try:  # a per-head JSON list, as stored in BlockLayout.spec / export metadata
            spec = json.loads(spec)
        except (json.JSONDecodeError, RecursionError) as exc:
            why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise InvalidInputError(
                f"spec starts with '[' but is not a JSON list of spec strings ({why}): "
                f"{limits.shorten(spec)}"
            ) from None
        if not isinstance(spec, list) or not all(isinstance(x, str) for x in spec):
            raise InvalidInputError("a JSON per-head spec list must hold spec strings only")
    if isinstance(spec, (list, tuple)):
        if len(spec) != num_heads:
            raise InvalidInputError(
                f"a per-head pattern list must have num_heads={num_heads} entries, got "
                f"{len(spec)}; give one pattern per head or a single pattern for all heads"
            )
        patterns = [parse_pattern(s) for s in spec]
    else:
        patterns = [parse_pattern(spec)] * num_heads
    patterns = [p.with_causal(causal) for p in patterns]
    assert all(isinstance(p, Pattern) for p in patterns)
    _check_work(patterns, seq_len, block_size, nb, Random)

    builder = _LayoutBuilder(num_heads, -(-seq_len // block_size), block_size)
    done: dict[str, tuple[int, int]] = {}  # spec -> (head compiled, its tiles)
    for h, pat in enumerate(patterns):
        key = pat.spec()
        if not pat.head_dependent and key in done:
            h0, tiles = done[key]
            builder.tiles += tiles
            if builder.tiles > limits.MAX_TILES:
                raise InvalidInputError(
                    f"the layout would store more than {limits.MAX_TILES} tiles over its "
                    f"{num_heads} heads: use a larger block_size, a shorter seq_len or fewer heads"
                )
            builder.rows[h] = list(builder.rows[h0])
            continue
        before = builder.tiles
        _compile_head(pat, h, num_heads, seq_len, block_size, builder)
        done[key] = (h, builder.tiles - before)
    specs = [p.spec() for p in patterns]
    spec_str = specs[0] if len(set(specs)) == 1 else json.dumps(specs)
    return builder.build(
        seq_len,
        spec_str,
        all(p.causal for p in patterns),
        any(p.requires_static_seq_len for p in patterns),
    )


def _check_work(patterns, seq_len: int, block_size: int, nb: int, random_cls) -> None:
    """Refuse, before any work, a layout whose compile would exceed the work limits."""
    compiled, seen = 0, set()
    draws = 0
    for pat in patterns:
        key = pat.spec()
        if pat.head_dependent or key not in seen:
            compiled += 1
            seen.add(key)
            draws += sum(
                a.draws(seq_len, block_size) for a in pat.atoms if isinstance(a, random_cls)
            )
    if compiled * nb * nb > limits.MAX_GRID_WORK:
        raise InvalidInputError(
            f"{compiled} distinct head pattern(s) x {nb}^2 candidate tiles exceed the compile "
            f"limit of {limits.MAX_GRID_WORK} tiles: use a larger block_size, a shorter "
            "seq_len or fewer heads"
        )
    if draws > limits.MAX_RANDOM_DRAWS:
        raise InvalidInputError(
            f"the random atoms would make {draws} block draws over all heads; the limit is "
            f"{limits.MAX_RANDOM_DRAWS}: use a larger random block b, a smaller r, fewer heads "
            "or a shorter seq_len"
        )


def _compile_head(pattern, head: int, num_heads: int, seq_len: int, bs: int, builder) -> None:
    """Fill ``builder``'s rows of ``head`` with the tiles of ``pattern`` (see compile_layout)."""
    from sparse_attn.patterns import Context

    ctx = Context(seq_len, bs, head, num_heads)
    nb = ctx.num_blocks
    cand = np.zeros((nb, nb), dtype=bool)  # O(nQB^2) bits, never O(S^2) for block_size > 1
    chunk = max(1, (1 << 20) // nb)  # bound int64 temporaries of the atoms to ~8 MB
    for r0 in range(0, nb, chunk):
        rows = np.arange(r0, min(nb, r0 + chunk), dtype=np.int64)
        for a in pattern.atoms:
            cand[r0 : r0 + rows.size] |= a.block_candidates(ctx, rows)
        if pattern.causal:
            cand[r0 : r0 + rows.size] &= np.arange(nb)[None, :] <= rows[:, None]
    n_cand = int(np.count_nonzero(cand))
    builder.compiled += n_cand
    if builder.compiled > limits.MAX_COMPILE_TILES:
        raise InvalidInputError(
            f"the pattern gives more than {limits.MAX_COMPILE_TILES} candidate tiles over its "
            "distinct heads (too dense or too many different heads for its size): use a larger "
            "block_size, a shorter seq_len or fewer heads"
        )
    builder.tiles += n_cand
    if builder.tiles > limits.MAX_TILES:
        raise InvalidInputError(
            f"the layout would store more than {limits.MAX_TILES} tiles over its heads (too "
            "dense for its size): use a larger block_size, a shorter seq_len or fewer heads"
        )
    r, c = np.nonzero(cand)  # row-major: ascending rows, ascending cols within a row
    if r.size == 0:
        return
    r = r.astype(np.int64)
    c = c.astype(np.int64)
    cols = [a.tile_keys(r, c, ctx) for a in pattern.atoms]
    if pattern.causal:
        cols.append(np.sign(r - c)[:, None])
    if seq_len % bs:
        cols.append(np.stack([r == nb - 1, c == nb - 1], axis=1).astype(np.int64))
    keys = np.ascontiguousarray(np.concatenate(cols, axis=1))
    _, first, inv = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    # evaluate one representative tile per distinct key, in batches
    nu = first.size
    builder.mask_work += nu * bs * bs
    if builder.mask_work > limits.MAX_MASK_TABLE_BYTES:
        raise InvalidInputError(
            f"classifying the tiles would evaluate more than {limits.MAX_MASK_TABLE_BYTES} token "
            f"pairs ({nu} distinct {bs}x{bs} tiles in head {head}): use a smaller block_size, "
            "fewer heads or a shorter seq_len"
        )
    kind = np.zeros(nu, dtype=np.int8)  # 0 empty, 1 full, 2 partial
    tiles: list[np.ndarray | None] = [None] * nu
    off = np.arange(bs, dtype=np.int64)
    per_batch = max(1, _TILE_BATCH_ELEMS // (bs * bs))
    for s0 in range(0, nu, per_batch):
        idx = first[s0 : s0 + per_batch]
        qi = (r[idx] * bs)[:, None, None] + off[None, :, None]
        kj = (c[idx] * bs)[:, None, None] + off[None, None, :]
        vis = pattern.visible(qi, kj, ctx)
        in_range = (qi < seq_len) & (kj < seq_len)
        vis &= in_range
        anyv = vis.any(axis=(1, 2))
        fullv = (vis | ~in_range).all(axis=(1, 2))
        kk = np.where(fullv, 1, np.where(anyv, 2, 0))
        kind[s0 : s0 + idx.size] = kk
        for t in np.nonzero(kk == 2)[0]:
            tiles[s0 + t] = vis[t]
    # mask ids in order of first occurrence (matches BlockLayout.from_token_mask)
    mid = np.full(nu, -1, dtype=np.int64)
    partial_keys = np.nonzero(kind == 2)[0]
    for u in partial_keys[np.argsort(first[partial_keys], kind="stable")]:
        mid[u] = builder.mask_id(tiles[u])
    tile_kind = kind[inv]
    keep = tile_kind > 0
    r, c, m = r[keep], c[keep], np.where(tile_kind[keep] == 2, mid[inv[keep]], -1)
    ptr = np.zeros(nb + 1, dtype=np.int64)
    ptr[1:] = np.cumsum(np.bincount(r, minlength=nb))
    c32, m32 = c.astype(np.int32), m.astype(np.int32)
    builder.rows[head] = [(c32[ptr[q] : ptr[q + 1]], m32[ptr[q] : ptr[q + 1]]) for q in range(nb)]


# ---------------------------------------------------------------------------- plotting
#: Most heads drawn by :func:`plot_layout` (one subplot each).
MAX_PLOT_HEADS = limits.MAX_PLOT_HEADS


def plot_layout(
    layout: BlockLayout, path, max_heads: int = MAX_PLOT_HEADS, title: str | None = None
):
    """Write a PNG heatmap of the block layout, one subplot per head (up to ``max_heads``).

    Tiles are coloured empty (white), full (dark blue) or partial (orange), with a legend
    whose counts are those of the heads drawn; axes are query block (rows) and key block
    (columns). Uses matplotlib's Agg backend; the file is written atomically
    (:func:`sparse_attn.fileio.atomic_output`).

    Args:
        layout: the layout to draw.
        path: output PNG path (replaced when complete).
        max_heads: draw heads ``0 .. max_heads-1`` only (the title says so when it cuts).
        title: figure title; default the spec and sizes.

    Returns:
        ``pathlib.Path`` of the written file.

    Raises:
        InvalidInputError: more than :data:`sparse_attn.limits.MAX_PLOT_BLOCKS` blocks per side.
    """
    import pathlib
    import textwrap

    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from sparse_attn.fileio import atomic_output

    if layout.num_blocks > limits.MAX_PLOT_BLOCKS:
        raise InvalidInputError(
            f"a plot draws at most {limits.MAX_PLOT_BLOCKS} blocks per side, the layout has "
            f"{layout.num_blocks}: use a larger block_size or a shorter seq_len"
        )
    nh = min(layout.num_heads, max(1, max_heads))
    bm = layout.block_mask(heads=nh)
    ncol = min(nh, 4)
    nrow = -(-nh // ncol)
    width = max(6.0, 3.2 * ncol)
    fig, axes = plt.subplots(
        nrow, ncol, figsize=(width, 3.2 * nrow + 1.8), squeeze=False, layout="constrained"
    )
    cmap = ListedColormap(["#ffffff", "#1f3b73", "#f39c12"])
    for h in range(nrow * ncol):
        ax = axes[h // ncol][h % ncol]
        if h >= nh:
            ax.axis("off")
            continue
        ax.imshow(bm[h], cmap=cmap, vmin=0, vmax=2, interpolation="nearest")
        ax.set_title(f"head {h}", fontsize=9)
        ax.set_xlabel("key block", fontsize=8)
        ax.set_ylabel("query block", fontsize=8)
        ax.tick_params(labelsize=7)
    st = layout.stats()
    spec = st["spec"] if len(st["spec"]) <= 240 else st["spec"][:237] + "..."
    spec = "\n".join(textwrap.wrap(spec, width=int(11 * width)))
    heads = (
        f"heads 0-{nh - 1} of {layout.num_heads}"
        if nh < layout.num_heads
        else f"{layout.num_heads} head(s)"
    )
    fig.suptitle(
        title
        or f"{spec}\nS={st['seq_len']}, block={st['block_size']}, {heads}; density: "
        f"tokens {st['density_tokens']:.4f}, blocks {st['density_blocks']:.4f}",
        fontsize=9,
    )
    drawn = bm[:nh]
    fig.legend(
        handles=[
            Patch(facecolor="#1f3b73", label=f"full ({int((drawn == 1).sum())})"),
            Patch(facecolor="#f39c12", label=f"partial ({int((drawn == 2).sum())})"),
            Patch(facecolor="#ffffff", edgecolor="#888888", label="empty"),
        ],
        loc="outside lower center",
        ncol=3,
        fontsize=8,
        title=f"tiles in the {nh} head(s) drawn",
        title_fontsize=8,
    )
    out = pathlib.Path(path)
    with atomic_output(out, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return out
