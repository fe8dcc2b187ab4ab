"""The ``torch`` backend: block-sparse attention in PyTorch ops (CPU or GPU).

Cost and memory are proportional to the number of stored tiles; no ``S x S`` tensor is
formed. Algorithm (a "gather then dense" block-sparse scheme, in the spirit of the BSR
kernels of Child et al., "Generating Long Sequences with Sparse Transformers",
arXiv 1904.10509, Sec. 5.5):

1. Plan (once per layout arrays, ``S`` and device, cached): for every (head, query block
   row) the stored key blocks with index ``< ceil(S / bs)``; rows are bucketed by (number of
   tiles ``n``, number of partial tiles ``npart``) so that each bucket is one batched
   computation, and each row lists its partial tiles first (key order does not matter to
   attention), so only the first ``npart * bs`` score columns ever need a tile mask.
2. Per bucket, in chunks of rows (about 256K scores per intra-op thread, to bound memory and
   stay near L2 size): gather the query block ``[B, g, bs, D]`` and the ``n`` key/value
   blocks ``[B, g, n*bs, D]``, scores in float32 (float64 for float64 inputs; ``q`` is
   scaled first, so float16 products beyond 65504 are fine), mask the hidden pairs
   (partial-tile mask, key padding, keys ``>= S``), fused softmax, multiply by V, set rows
   with no visible key to exactly 0, and scatter the rows to the output.
3. NaN/Inf safety: the mask is an added 0/-inf bias only when every score is provably
   finite (Q and K finite and ``max|q| * max|k| * D < 1e37``); otherwise hidden scores are
   *selected* (``masked_fill``), so a NaN key of a hidden pair cannot leak. V is multiplied
   in a zero-cleaned copy, and if V holds any non-finite value its contribution is added
   back exactly at the visible pairs only, so ``0 * NaN`` never reaches a row that cannot
   see it. With autograd, empty rows are neutralised before the softmax (no NaN gradient).

For CPU tensors the compiled kernel ``sparse_attn.kernels.cpu_ext`` (a flash-style loop
over each CSR row) is used when it is importable, ``cpu_ext.is_available()`` and it supports
the inputs (float32/float16/bfloat16, no grad required; float64 and autograd inputs take the
PyTorch path); set ``SPARSE_ATTN_DISABLE_CPU_EXT=1`` to force the pure PyTorch path.
"""

from __future__ import annotations

import hashlib
import importlib
import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from sparse_attn import op_arrays, opspec
from sparse_attn.errors import InvalidInputError
from sparse_attn.kernels._validate import resolve_scale, validate_arrays

NAME = "torch"

SUPPORTED_DTYPES = tuple(getattr(torch, n) for n in opspec.TORCH_DTYPES)
#: Environment variable that disables the compiled CPU kernel (``cpu_ext.DISABLE_ENV``; the
#: rule, any value but "" or "0", is ``cpu_ext.is_available``'s).
DISABLE_CPU_EXT_ENV = "SPARSE_ATTN_DISABLE_CPU_EXT"
#: Score elements ``B * rows * bs * n*bs`` processed at once *per intra-op thread*: bounds the
#: working memory and keeps each thread's share near L2 size (1<<18 floats = 1 MiB; 2x
#: faster than 1<<22 at S=4096 on one thread).
_CHUNK_SCORE_ELEMENTS = 1 << 18
_PLAN_CACHE_SIZE = 32


#: What this backend takes: every dtype the op accepts, grouped K/V, D and Dv up to 256.
LIMITS = opspec.BackendLimits(NAME, opspec.TORCH_DTYPES)


def not_supported_reasons(query, key, value, layout, key_padding_mask) -> list[str]:
    """Why this backend cannot take these (validated) inputs; empty = supported."""
    return LIMITS.not_supported_reasons(
        dtype=str(query.dtype).replace("torch.", ""),
        head_dim=int(query.shape[-1]),
        value_dim=int(value.shape[-1]),
        num_heads=int(query.shape[1]),
        num_kv_heads=int(key.shape[1]),
        block_size=int(layout.block_size),
    )


def attention(query, key, value, layout, key_padding_mask, scale: float) -> torch.Tensor:
    """Backend entry (inputs validated by the dispatcher). See :func:`attention_arrays`.

    The compiled kernel takes the layout's cached tensors; the PyTorch path runs the
    layout's cached :class:`AttentionPlan` (no host copy or hash of the layout per call).
    """
    if query.device.type == "cpu":
        ext = _cpu_ext()
        if ext is not None and _cpu_ext_takes(
            ext, query, key, value, key_padding_mask, layout.block_size
        ):
            return op_arrays.call_with_layout(
                _run_cpu_ext(ext), query, key, value, layout, key_padding_mask, scale
            )
    b, h, s, _ = query.shape
    p = plan(layout, seq_len=s, num_heads=h, num_kv_heads=key.shape[1], device=query.device)
    return p.run(query, key, value, key_padding_mask, scale)


# ---------------------------------------------------------------------------- compiled path
def _cpu_ext():
    """The compiled CPU kernel module if present and usable, else None (never raises).

    Usable = ``cpu_ext.is_available()``, which also applies the ``DISABLE_CPU_EXT_ENV`` rule.
    """
    try:
        mod = importlib.import_module("sparse_attn.kernels.cpu_ext")
    except Exception:  # noqa: BLE001 - the module is optional; any import failure = absent
        return None
    try:
        return mod if mod.is_available() else None
    except Exception:  # noqa: BLE001
        return None


#: Head dims the compiled kernel takes when it does not say itself (no ``not_supported_reason``).
_CPU_EXT_DEFAULT_MAX_HEAD_DIM = 128


def _cpu_ext_takes(ext, query, key, value, key_padding_mask, block_size) -> bool:
    """Whether the compiled kernel accepts these inputs.

    The kernel declares its own limits through ``not_supported_reason(query, key, value,
    block_size)`` (``None`` = accepted) when it has that function; otherwise only inputs
    with as many K/V heads as query heads and ``D, Dv <= 128`` are routed to it.
    """
    if ext.not_supported_reasons(query, key, value, key_padding_mask):
        return False
    reason_fn = getattr(ext, "not_supported_reason", None)
    if reason_fn is not None:
        return reason_fn(query, key, value, int(block_size)) is None
    lim = _CPU_EXT_DEFAULT_MAX_HEAD_DIM
    return key.shape[1] == query.shape[1] and query.shape[-1] <= lim and value.shape[-1] <= lim


def cpu_ext_active() -> bool:
    """True when CPU tensors go through the compiled kernel ``cpu_ext``."""
    return _cpu_ext() is not None


# ---------------------------------------------------------------------------- plan
@dataclass
class _Bucket:
    rows: torch.Tensor  # int64 [G]      flat (head * nb + qblock)
    kidx: torch.Tensor  # int64 [G, n]   flat (kv_head * nb + kblock), kv_head = head // group
    midx: torch.Tensor  # int64 [G, npart] index into bias_ext of the partial tiles
    n: int  # tiles per row
    npart: int  # partial tiles per row; they come first in kidx


@dataclass
class _Plan:
    nb: int  # query/key blocks of the request, ceil(S / bs)
    buckets: list[_Bucket]
    bias_ext: torch.Tensor  # float32 [M + 1, bs, bs]: 0 = visible, -inf = hidden; last = all 0


_PLANS: OrderedDict = OrderedDict()


def _array_digest(*arrays: np.ndarray) -> str:
    hsh = hashlib.blake2b(digest_size=16)
    for a in arrays:
        hsh.update(str(a.dtype).encode() + str(a.shape).encode())
        hsh.update(np.ascontiguousarray(a).tobytes())
    return hsh.hexdigest()


def _check_csr(rp: np.ndarray, ci: np.ndarray, mi: np.ndarray, m: int) -> None:
    """Refuse a malformed CSR layout with a clear message (before any indexing)."""

    nqb, nnz = rp.shape[1] - 1, ci.shape[1]
    if (rp[:, 0] != 0).any() or (np.diff(rp, axis=1) < 0).any() or (rp[:, -1] > nnz).any():
        raise InvalidInputError(
            f"row_ptr must start at 0, be non-decreasing and end at <= nnz={nnz} per head"
        )
    for hh in range(rp.shape[0]):
        n_h = int(rp[hh, -1])
        c, k = ci[hh, :n_h], mi[hh, :n_h]
        if n_h and (c.min() < 0 or c.max() >= nqb):
            raise InvalidInputError(
                f"col_idx of head {hh} must be in 0..{nqb - 1}, got {int(c.min())}..{int(c.max())}"
            )
        if n_h and (k.min() < -1 or k.max() >= m):
            raise InvalidInputError(
                f"mask_idx of head {hh} must be -1 (full) or in 0..{m - 1} (masks has M={m}), "
                f"got {int(k.min())}..{int(k.max())}"
            )


def _make_plan(
    row_ptr: torch.Tensor,
    col_idx: torch.Tensor,
    mask_idx: torch.Tensor,
    masks: torch.Tensor,
    block_size: int,
    seq_len: int,
    device: torch.device,
    num_heads: int,
    group: int,
) -> _Plan:
    rp = row_ptr.detach().cpu().numpy().astype(np.int64)
    ci = col_idx.detach().cpu().numpy().astype(np.int64)
    mi = mask_idx.detach().cpu().numpy().astype(np.int64)
    mk = masks.detach().cpu().numpy()
    key = (_array_digest(rp, ci, mi, mk), block_size, seq_len, str(device), num_heads, group)
    plan = _PLANS.get(key)
    if plan is not None:
        _PLANS.move_to_end(key)
        return plan
    h, nqb_full = num_heads, rp.shape[1] - 1
    nb = -(-seq_len // block_size)
    m = mk.shape[0]
    _check_csr(rp, ci, mi, m)
    heads, rows, cols, mids = [], [], [], []
    for hh in range(h):
        lh = hh if rp.shape[0] > 1 else 0  # a one-head layout is shared by every head
        counts = np.diff(rp[lh])
        n_h = int(rp[lh, -1])
        r = np.repeat(np.arange(nqb_full), counts)
        c = ci[lh, :n_h]
        mm = mi[lh, :n_h]
        keep = (r < nb) & (c < nb)
        heads.append(np.full(int(keep.sum()), hh, dtype=np.int64))
        rows.append(r[keep])
        cols.append(c[keep])
        mids.append(mm[keep])
    head = np.concatenate(heads)
    row = np.concatenate(rows)
    col = np.concatenate(cols)
    mid = np.concatenate(mids)
    mid = np.where(mid < 0, m, mid)  # full tile -> the all-visible mask appended at index M
    flat_row = head * nb + row  # entries are grouped by (head, row) in CSR order
    counts = np.bincount(flat_row, minlength=h * nb)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    # number of partial tiles per row; rows are bucketed by (tiles, partial tiles) and each
    # row lists its partial tiles first (the order of keys does not matter to attention), so
    # only the first ``npart * bs`` score columns of a bucket ever need a mask
    npart = np.bincount(flat_row, weights=(mid < m), minlength=h * nb).astype(np.int64)
    buckets = []
    for n, npa in sorted({(int(a), int(c)) for a, c in zip(counts, npart, strict=True) if a}):
        rsel = np.nonzero((counts == n) & (npart == npa))[0]
        ent = starts[rsel][:, None] + np.arange(n)[None, :]
        order = np.argsort(mid[ent] == m, axis=1, kind="stable")  # partial tiles first
        ent = np.take_along_axis(ent, order, axis=1)
        kflat = (head[ent] // group) * nb + col[ent]  # K/V block of the head's K/V head
        buckets.append(
            _Bucket(
                rows=torch.from_numpy(rsel.astype(np.int64)).to(device),
                kidx=torch.from_numpy(kflat.astype(np.int64)).to(device),
                midx=torch.from_numpy(mid[ent][:, :npa].astype(np.int64)).to(device),
                n=n,
                npart=npa,
            )
        )
    bias_ext = np.zeros((m + 1, block_size, block_size), dtype=np.float32)
    bias_ext[:m][mk == 0] = -np.inf
    plan = _Plan(nb=nb, buckets=buckets, bias_ext=torch.from_numpy(bias_ext).to(device))
    _PLANS[key] = plan
    while len(_PLANS) > _PLAN_CACHE_SIZE:
        _PLANS.popitem(last=False)
    return plan


class AttentionPlan:
    """A layout prepared once for one request shape; :meth:`run` is the fast path.

    As flashinfer's ``plan()`` / ``run()``: :func:`plan` copies the layout to the device,
    checks its CSR structure, buckets its rows and hashes it once; :meth:`run` only checks
    the inputs against the planned shape and computes. Plans of a layout are cached on it,
    so the dispatcher's calls never redo this work.

    Attributes:
        block_size: tokens per block.
        seq_len: the request length S the plan is for (``<=`` the layout's length).
        num_heads / num_kv_heads: H and Hkv (``H % Hkv == 0``).
        device: where the plan's index tensors live.
    """

    def __init__(
        self, arrays, block_size: int, seq_len: int, num_heads: int, num_kv_heads: int, device
    ):
        if num_kv_heads < 1 or num_heads % num_kv_heads:
            raise InvalidInputError(
                f"num_heads H={num_heads} must be a multiple of num_kv_heads Hkv={num_kv_heads}"
            )
        self.block_size = int(block_size)
        self.seq_len = int(seq_len)
        self.num_heads = int(num_heads)
        self.num_kv_heads = int(num_kv_heads)
        self.device = torch.device(device)
        self._arrays = arrays
        self._plan = _make_plan(
            *arrays,
            self.block_size,
            self.seq_len,
            self.device,
            self.num_heads,
            self.num_heads // self.num_kv_heads,
        )

    def run(self, query, key, value, key_padding_mask=None, scale: float | None = None):
        """Attention for inputs of the planned shape.

        Args:
            query: ``[B, H, S, D]``; key ``[B, Hkv, S, D]``; value ``[B, Hkv, S, Dv]``; one
                float dtype, on the plan's device; H, Hkv and S as planned.
            key_padding_mask: optional ``[B, S]`` bool, True = real token.
            scale: softmax scale, default ``1/sqrt(D)``.

        Returns:
            ``[B, H, S, Dv]`` in the dtype of ``query``.

        Raises:
            InvalidInputError: inputs that do not match the plan or each other.
        """
        want = (self.num_heads, self.num_kv_heads, self.seq_len, self.device)
        got = (query.shape[1], key.shape[1], query.shape[2], query.device)
        if got != want:
            raise InvalidInputError(
                f"this plan is for H={want[0]}, Hkv={want[1]}, S={want[2]} on {want[3]}, got "
                f"H={got[0]}, Hkv={got[1]}, S={got[2]} on {got[3]}; make a plan for these inputs"
            )
        scale = resolve_scale(scale, query.shape[-1])
        validate_arrays(query, key, value, *self._arrays, key_padding_mask, self.block_size, scale)
        if key_padding_mask is not None and key_padding_mask.dtype != torch.bool:
            key_padding_mask = key_padding_mask != 0
        return _attention_torch(
            self._plan, query, key, value, key_padding_mask, self.block_size, scale
        )


def plan(
    layout,
    *,
    seq_len: int,
    num_heads: int | None = None,
    num_kv_heads: int | None = None,
    device="cpu",
) -> AttentionPlan:
    """The :class:`AttentionPlan` of ``layout`` for requests of ``seq_len`` tokens.

    Args:
        layout: :class:`~sparse_attn.layout.BlockLayout`.
        seq_len: request length S, ``1 <= S <= layout.seq_len``.
        num_heads: H, default the layout's heads; num_kv_heads: Hkv, default H.
        device: device of the inputs.

    Returns:
        The plan, cached on the layout (one per S, H, Hkv and device).
    """
    h = layout.num_heads if num_heads is None else int(num_heads)
    hkv = h if num_kv_heads is None else int(num_kv_heads)
    dev = torch.device(device)
    key = ("torch_backend.plan", int(seq_len), h, hkv, str(dev))
    cached = layout._cache.get(key)
    if cached is None:
        arrays = tuple(op_arrays.layout_to_tensors(layout, dev).values())
        cached = AttentionPlan(arrays, layout.block_size, seq_len, h, hkv, dev)
        layout._cache[key] = cached
    return cached


#: Plans of array-level calls, keyed by the identity of the layout tensors (their storage,
#: version counter and shape): the op is called with the same buffers every time, so the
#: layout is copied to the host and hashed once, not per call. Entries hold the tensors,
#: so a key's storage cannot be freed and reused while it is cached.
_ARRAY_PLANS: OrderedDict = OrderedDict()


def _plan_for_arrays(arrays, block_size: int, query, num_kv_heads: int) -> AttentionPlan:
    ident = tuple((t.data_ptr(), t._version, tuple(t.shape), t.dtype) for t in arrays)
    key = (ident, block_size, query.shape[2], query.shape[1], num_kv_heads, str(query.device))
    hit = _ARRAY_PLANS.get(key)
    if hit is not None:
        _ARRAY_PLANS.move_to_end(key)
        return hit
    p = AttentionPlan(
        arrays, block_size, query.shape[2], query.shape[1], num_kv_heads, query.device
    )
    _ARRAY_PLANS[key] = p
    while len(_ARRAY_PLANS) > _PLAN_CACHE_SIZE:
        _ARRAY_PLANS.popitem(last=False)
    return p


# ---------------------------------------------------------------------------- compute
def attention_arrays(*args, **kwargs) -> torch.Tensor:
    """Block-sparse attention with the layout given as tensors (the op's array interface).

    Args (the op's call, positional or by name: ``opspec.SCHEMA.call_arg_names()``):
        query: ``[B, H, S, D]`` float32/float16/bfloat16/float64.
        key: ``[B, H, S, D]``; value: ``[B, H, S, Dv]``; same dtype and device.
        row_ptr: int ``[H, nQB+1]`` CSR row pointers of the FULL layout (max seq_len).
        col_idx: int ``[H, nnz]`` key-block column per stored tile.
        mask_idx: int ``[H, nnz]``; -1 = full tile, ``k >= 0`` = partial tile ``masks[k]``.
        masks: uint8/bool ``[M >= 1, bs, bs]`` partial-tile masks (1 = visible).
        key_padding_mask: optional ``[B, S]`` bool, True = real token.
        block_size: tokens per block ``bs``.
        scale: softmax scale (float > 0).

    Returns:
        ``[B, H, S, Dv]`` in the dtype of ``query``. Key blocks ``>= ceil(S/bs)`` are
        skipped and keys ``>= S`` masked (top-left crop); rows with no visible key are 0.

    Raises:
        TypeError: missing, extra or unknown arguments.
        InvalidInputError: on inconsistent shapes or arguments.
    """
    call = opspec.SCHEMA.bind_call(args, kwargs)
    validate_arrays(**call)
    query, key, value = call.query, call.key, call.value
    kpm, block_size = call.key_padding_mask, call.block_size
    if query.device.type == "cpu":
        ext = _cpu_ext()
        if ext is not None and _cpu_ext_takes(ext, query, key, value, kpm, block_size):
            return _run_cpu_ext(ext)(**call)
    layout = tuple(call[name] for name in opspec.SCHEMA.layout_inputs())
    p = _plan_for_arrays(layout, int(block_size), query, key.shape[1])
    return p.run(query, key, value, kpm, call.scale)


def _run_cpu_ext(ext):
    """The compiled kernel's array entry (the op's call), with a one-head layout widened to
    every head."""

    def run(*args, **kwargs) -> torch.Tensor:
        call = opspec.SCHEMA.bind_call(args, kwargs)
        h = call.query.shape[1]
        widened = {
            name: call[name].to(torch.int32).expand(h, -1).contiguous()
            for name in ("row_ptr", "col_idx", "mask_idx")
        }
        call = call.replace(**widened, block_size=int(call.block_size), scale=float(call.scale))
        return ext.attention_arrays(*call.args())

    return run


def _attention_torch(
    plan: _Plan, query, key, value, key_padding_mask, block_size: int, scale: float
) -> torch.Tensor:
    """The PyTorch path over a plan (grouped-query K/V are never repeated: the plan's key
    indices address K/V head ``h // (H // Hkv)`` directly)."""
    b, h, s, d = query.shape
    dv = value.shape[-1]
    bs = int(block_size)
    device = query.device
    cdt = torch.float64 if query.dtype == torch.float64 else torch.float32
    nb = plan.nb
    sp = nb * bs
    pad = sp - s

    def blocks(x: torch.Tensor) -> torch.Tensor:  # [B, Hx, S, E] -> [B, Hx*nb, bs, E] (cdt)
        x = x.to(cdt)
        if pad:
            x = torch.nn.functional.pad(x, (0, 0, 0, pad))
        return x.reshape(b, x.shape[1] * nb, bs, x.shape[-1])

    qb = blocks(query) * scale  # scale before the product: no overflow for large q.k
    kb = blocks(key)
    vb = blocks(value)
    finite_v = bool(torch.isfinite(vb).all())
    vb_clean = vb if finite_v else torch.where(torch.isfinite(vb), vb, torch.zeros_like(vb))
    # Fast masking adds a 0/-inf bias; that is exact only if no score can be NaN or +-inf
    # (NaN + -inf = NaN would leak a masked key). Otherwise hidden scores are *selected*.
    qk_max = float(qb.detach().abs().amax()) * float(kb.detach().abs().amax()) * d
    # with autograd, empty rows must never hold NaN (softmax's backward would spread it)
    grad = torch.is_grad_enabled() and any(x.requires_grad for x in (query, key, value))
    add_bias = math.isfinite(qk_max) and qk_max < 1e37

    # key bias [B, nb, bs]: -inf at padding tokens and at keys >= S (outside the request)
    need_kvalid = key_padding_mask is not None or pad > 0
    kbias_blocks = None
    if need_kvalid:
        kbias = torch.full((b, sp), -torch.inf, dtype=cdt, device=device)
        if key_padding_mask is not None:
            kbias[:, :s].masked_fill_(key_padding_mask.to(torch.bool), 0.0)
        else:
            kbias[:, :s] = 0.0
        kbias_blocks = kbias.reshape(b, nb, bs)
    bias_ext = plan.bias_ext.to(cdt)

    out = torch.zeros((b, h * nb, bs, dv), dtype=cdt, device=device)
    for bucket in plan.buckets:
        n, npa = bucket.n, bucket.npart
        g_total = bucket.rows.shape[0]
        budget = _CHUNK_SCORE_ELEMENTS * (torch.get_num_threads() if device.type == "cpu" else 32)
        chunk = max(1, budget // max(1, b * bs * n * bs))
        if not finite_v:  # the exact non-finite path holds [B, g, bs, n*bs, Dv]
            chunk = max(1, chunk // dv)
        # a row can see no key only if every one of its columns may be hidden
        may_be_empty = need_kvalid or npa == n
        for g0 in range(0, g_total, chunk):
            rows = bucket.rows[g0 : g0 + chunk]
            kidx = bucket.kidx[g0 : g0 + chunk]
            g = rows.shape[0]
            flat_k = kidx.reshape(-1)
            q = qb.index_select(1, rows)  # [B, g, bs, D]
            k = kb.index_select(1, flat_k).reshape(b, g, n * bs, d)
            # partial tiles come first: their bias covers the first npa*bs columns
            tbias = kb_bias = None
            if npa:
                midx = bucket.midx[g0 : g0 + chunk].reshape(-1)
                tile = bias_ext.index_select(0, midx)  # [g*npa, bs, bs]
                tbias = tile.reshape(g, npa, bs, bs).transpose(1, 2).reshape(1, g, bs, npa * bs)
            if need_kvalid:
                kblk = torch.remainder(kidx, nb).reshape(-1)  # key block index within the head
                kb_bias = kbias_blocks.index_select(1, kblk).reshape(b, g, 1, n * bs)
            scores = torch.matmul(q, k.transpose(-1, -2))  # [B, g, bs, n*bs]
            empty = None
            if add_bias:
                if tbias is not None:
                    scores[..., : npa * bs].add_(tbias)
                if kb_bias is not None:
                    scores.add_(kb_bias)
            else:
                if tbias is not None:
                    scores[..., : npa * bs].masked_fill_(tbias == -torch.inf, -torch.inf)
                if kb_bias is not None:
                    scores.masked_fill_(kb_bias == -torch.inf, -torch.inf)
            if may_be_empty and (grad or not add_bias):
                empty = scores.detach().amax(dim=-1, keepdim=True) == -torch.inf
                if grad:
                    scores = torch.where(empty, torch.zeros_like(scores), scores)
            p = torch.softmax(scores, dim=-1)
            v = vb_clean.index_select(1, flat_k).reshape(b, g, n * bs, dv)
            res = torch.matmul(p, v)
            if may_be_empty:  # rows with no visible key: softmax gave NaN, want exactly 0
                if empty is None:  # bias path: scores are finite or -inf, NaN = empty row
                    empty = torch.isnan(res[..., :1])
                res = torch.where(empty, torch.zeros_like(res), res)
            if not finite_v:
                res = _poison_nonfinite(res, p, tbias, kb_bias, npa, vb, flat_k, b, g, n, bs, dv)
            out.index_copy_(1, rows, res)
    out = out.reshape(b, h, sp, dv)[:, :, :s, :]
    return out.to(query.dtype).contiguous()  # contiguous, as the op's fake impl promises


def _poison_nonfinite(res, p, tbias, kb_bias, npa, vb, flat_k, b, g, n, bs, dv):
    """Add back the exact contribution of non-finite V entries at *visible* pairs only."""
    v_raw = vb.index_select(1, flat_k).reshape(b, g, n * bs, dv)
    bad = ~torch.isfinite(v_raw)  # [B, g, n*bs, Dv]
    if not bool(bad.any()):
        return res
    visible = torch.ones((b, g, bs, n * bs), dtype=torch.bool, device=p.device)
    if tbias is not None:
        visible[..., : npa * bs] &= tbias == 0
    if kb_bias is not None:
        visible &= kb_bias == 0
    # exact products over the non-finite entries only; hidden pairs contribute exactly 0
    v_bad = torch.where(bad, v_raw, torch.zeros_like(v_raw))
    prod = p[..., None] * v_bad[:, :, None, :, :]  # [B, g, bs, n*bs, Dv]
    keep = visible[..., None] & bad[:, :, None, :, :]
    extra = torch.where(keep, prod, torch.zeros_like(prod)).sum(dim=-2)
    return res + extra
