"""Shared test helpers: tolerances per dtype, a comparator that reports the worst element,
random inputs and small token-mask builders. Import as ``from tests.testing import ...``
(or ``from testing import ...`` when ``tests/`` is on ``sys.path``).

Tolerances follow the flash-attention habit: the reference runs in float64, the kernel's
tolerance depends on its *input* dtype (the rounding of the inputs and the output dominates).
"""

from __future__ import annotations

import numpy as np
import torch

#: (atol, rtol) for comparing an attention output of the given dtype with a float64 reference.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-5, 2e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """``(atol, rtol)`` for outputs of ``dtype`` (see :data:`TOLERANCES`)."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    return TOLERANCES[dtype]


def _as_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    return torch.from_numpy(np.asarray(x))


def compare(actual, expected, atol: float, rtol: float) -> dict:
    """Error statistics of ``actual`` vs ``expected`` (tensors or arrays, same shape).

    Returns a dict with ``max_abs_err``, ``max_rel_err``, ``mismatch_fraction`` (share of
    elements failing ``|a - e| <= atol + rtol * |e|``; NaN positions must agree),
    ``worst_index``, ``worst_actual``, ``worst_expected``, ``num_mismatch``, ``numel``.
    """
    a = _as_tensor(actual).to(torch.float64)
    e = _as_tensor(expected).to(torch.float64)
    if a.shape != e.shape:
        raise AssertionError(f"shape mismatch: got {list(a.shape)}, expected {list(e.shape)}")
    nan_a, nan_e = torch.isnan(a), torch.isnan(e)
    same_inf = torch.isinf(a) & torch.isinf(e) & (a == e)
    diff = (a - e).abs()
    diff = torch.where(same_inf | (nan_a & nan_e), torch.zeros_like(diff), diff)
    diff = torch.where(nan_a ^ nan_e, torch.full_like(diff, torch.inf), diff)
    bound = atol + rtol * torch.where(torch.isfinite(e), e.abs(), torch.zeros_like(e))
    bad = diff > bound
    excess = torch.where(bad, diff - bound, torch.zeros_like(diff))
    n = a.numel()
    if n == 0:
        return {
            "max_abs_err": 0.0,
            "max_rel_err": 0.0,
            "mismatch_fraction": 0.0,
            "num_mismatch": 0,
            "numel": 0,
            "worst_index": None,
            "worst_actual": None,
            "worst_expected": None,
        }
    score = excess if bool(bad.any()) else diff
    flat = int(torch.argmax(torch.nan_to_num(score, nan=torch.inf, posinf=1e308)).item())
    idx = tuple(int(i) for i in np.unravel_index(flat, tuple(a.shape)))
    finite = torch.isfinite(diff)
    max_abs = float(diff[finite].max()) if bool(finite.any()) else 0.0
    if not bool(finite.all()):
        max_abs = float("inf")
    rel = diff / e.abs().clamp_min(1e-30)
    rel = torch.where(diff == 0, torch.zeros_like(rel), rel)
    return {
        "max_abs_err": max_abs,
        "max_rel_err": float(rel.max()),
        "mismatch_fraction": float(bad.sum()) / n,
        "num_mismatch": int(bad.sum()),
        "numel": n,
        "worst_index": idx,
        "worst_actual": float(a[idx]),
        "worst_expected": float(e[idx]),
    }


def assert_close(
    actual,
    expected,
    atol: float | None = None,
    rtol: float | None = None,
    name: str = "output",
    dtype: torch.dtype | None = None,
) -> dict:
    """Assert ``|actual - expected| <= atol + rtol * |expected|`` elementwise (NaN == NaN).

    Default tolerances come from :data:`TOLERANCES` for ``dtype`` (or ``actual``'s dtype).
    On failure the message names the worst element (index, got, expected), the max abs/rel
    error and the mismatch fraction. Returns the statistics (see :func:`compare`).
    """
    if atol is None or rtol is None:
        dt = dtype or (actual.dtype if isinstance(actual, torch.Tensor) else torch.float32)
        d_atol, d_rtol = tolerance(dt)
        atol = d_atol if atol is None else atol
        rtol = d_rtol if rtol is None else rtol
    st = compare(actual, expected, atol, rtol)
    if st["num_mismatch"]:
        raise AssertionError(
            f"{name}: {st['num_mismatch']}/{st['numel']} elements "
            f"({100 * st['mismatch_fraction']:.3g}%) exceed atol={atol:g} rtol={rtol:g}; worst "
            f"at index {st['worst_index']}: got {st['worst_actual']!r}, expected "
            f"{st['worst_expected']!r}; max_abs_err={st['max_abs_err']:.3g} "
            f"max_rel_err={st['max_rel_err']:.3g}"
        )
    return st


def assert_equal(actual, expected, name: str = "output") -> None:
    """Bitwise equality (NaN == NaN), reporting the first differing element."""
    a, e = _as_tensor(actual), _as_tensor(expected)
    if a.shape != e.shape or a.dtype != e.dtype:
        raise AssertionError(
            f"{name}: got {list(a.shape)} {a.dtype}, expected {list(e.shape)} {e.dtype}"
        )
    diff = ~((a == e) | (torch.isnan(a) & torch.isnan(e)))
    if bool(diff.any()):
        idx = tuple(int(i) for i in torch.nonzero(diff)[0])
        raise AssertionError(
            f"{name}: {int(diff.sum())}/{a.numel()} elements differ; first at {idx}: got "
            f"{float(a[idx])!r}, expected {float(e[idx])!r}"
        )


def random_qkv(
    batch: int,
    heads: int,
    seq_len: int,
    head_dim: int,
    value_dim: int | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    magnitude: float = 1.0,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random ``query, key [B, H, S, D]`` and ``value [B, H, S, Dv]`` (normal * magnitude).

    Generated in float64 from ``torch.Generator().manual_seed(seed)`` then cast to ``dtype``,
    so the same seed gives the same values in every dtype (up to rounding).
    """
    g = torch.Generator().manual_seed(seed)
    dv = head_dim if value_dim is None else value_dim
    q = torch.randn(batch, heads, seq_len, head_dim, generator=g, dtype=torch.float64)
    k = torch.randn(batch, heads, seq_len, head_dim, generator=g, dtype=torch.float64)
    v = torch.randn(batch, heads, seq_len, dv, generator=g, dtype=torch.float64)
    return tuple((x * magnitude).to(dtype=dtype, device=device) for x in (q, k, v))


def random_padding_mask(batch: int, seq_len: int, seed: int = 0, min_len: int = 1) -> torch.Tensor:
    """``bool [B, S]`` right-padding mask: row ``b`` has a random length in ``min_len..S``."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(min(min_len, seq_len), seq_len + 1, (batch,), generator=g)
    return torch.arange(seq_len)[None, :] < lens[:, None]


# ------------------------------------------------------------------ token-mask builders
def band_mask(seq_len: int, w: int) -> np.ndarray:
    """``bool [S, S]``: ``|i - j| <= w`` (docs/spec.md ``band(w=W)``)."""
    i = np.arange(seq_len)
    return np.abs(i[:, None] - i[None, :]) <= w


def global_mask(seq_len: int, n: int) -> np.ndarray:
    """``bool [S, S]``: ``i < n or j < n`` (docs/spec.md ``global(n=G)``)."""
    i = np.arange(seq_len)
    return (i[:, None] < n) | (i[None, :] < n)


def causal_mask(seq_len: int) -> np.ndarray:
    """``bool [S, S]``: ``j <= i``."""
    i = np.arange(seq_len)
    return i[None, :] <= i[:, None]


def dilated_mask(seq_len: int, w: int, d: int) -> np.ndarray:
    """``bool [S, S]``: ``|i - j| <= w*d and (i - j) % d == 0`` (docs/spec.md ``dilated``)."""
    i = np.arange(seq_len)
    diff = i[:, None] - i[None, :]
    return (np.abs(diff) <= w * d) & (diff % d == 0)


def block_local_mask(seq_len: int, b: int) -> np.ndarray:
    """``bool [S, S]``: ``i // b == j // b`` (docs/spec.md ``block_local``)."""
    i = np.arange(seq_len)
    return (i[:, None] // b) == (i[None, :] // b)


def random_token_mask(heads: int, seq_len: int, density: float, seed: int = 0) -> np.ndarray:
    """``bool [H, S, S]`` i.i.d. Bernoulli(density) (exercises arbitrary partial tiles)."""
    rng = np.random.default_rng(seed)
    return rng.random((heads, seq_len, seq_len)) < density


def layout_from_masks(masks, block_size: int, **kw):
    """BlockLayout from one ``[S, S]`` mask or a list / ``[H, S, S]`` stack of them."""
    from sparse_attn.layout import BlockLayout

    arr = np.asarray(masks, dtype=bool)
    return BlockLayout.from_token_mask(arr, block_size, **kw)
