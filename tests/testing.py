"""Shared test helpers: tolerances per dtype, a comparator that reports the worst element,
random inputs and small token-mask builders. Import as ``from tests.testing import ...``
(or ``from testing import ...`` when ``tests/`` is on ``sys.path``).

Tolerances follow the flash-attention habit: the reference runs in float64, the kernel's
tolerance depends on its *input* dtype (the rounding of the inputs and the output dominates).
"""

from __future__ import annotations

import numpy as np
import torch

from sparse_attn import opspec
from sparse_attn.runtime.compare import compare_arrays, describe_failure

#: (atol, rtol) for comparing an op output of the given dtype with a float64 reference: the
#: ``"op"`` rows of the op's tolerance table (``opspec.SCHEMA.tolerances``).
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    getattr(torch, name): (tol.atol, tol.rtol)
    for name, tol in opspec.SCHEMA.tolerances["op"].items()
}


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """``(atol, rtol)`` for outputs of ``dtype`` (see :data:`TOLERANCES`)."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.replace("torch.", ""))
    return TOLERANCES[dtype]


def _as_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    return torch.from_numpy(np.asarray(x))


def compare(actual, expected, atol: float, rtol: float) -> dict:
    """Error statistics of ``actual`` vs ``expected`` (tensors or arrays, same shape).

    The project's comparator (:func:`sparse_attn.runtime.compare.compare_arrays`); NaN and
    Inf must agree in position and sign. Returns its dict (``max_abs_err``, ``max_rel_err``,
    ``mismatch_fraction``, ``num_mismatches``, ``worst``, ``passed``, ...).
    """
    return compare_arrays(actual, expected, (atol, rtol))


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
    if not st["passed"]:
        raise AssertionError(describe_failure(name, st))
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
