"""Size limits of sparse-attn and the one parser of integers given as text.

Everything the library and the command line accept is bounded, so that a request is refused
*before* any work when it cannot fit, and what is accepted finishes in bounded time and
memory. The table below is the single source of these numbers; ``docs/spec.md`` lists them
and every error that enforces one names the limit and how to stay under it.

Integers written as text (pattern parameters such as ``w=3``, command-line sizes such as
``--seq-len 4096``) go through :func:`parse_int`: ASCII decimal digits only, no sign, no
leading zeros, no separators, at most :data:`MAX_INT_DIGITS` digits, then a range check.
``+3``, ``00003``, ``1_000`` and full-width digits are refused with a message saying so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from sparse_attn.errors import InvalidInputError


@dataclass(frozen=True)
class Limit:
    """One documented limit: ``name``, its ``value``, the ``unit`` and what it bounds."""

    name: str
    value: int
    unit: str
    what: str


#: Largest integer accepted anywhere in a spec string or as a size (int32 positions).
MAX_INT = 2**31 - 1
#: Most digits an integer written as text may have (``len(str(MAX_INT))``).
MAX_INT_DIGITS = len(str(MAX_INT))
#: Longest pattern spec string (characters).
MAX_SPEC_CHARS = 4096
#: Longest sequence length S of a layout or an exported model (tokens).
MAX_SEQ_LEN = 1 << 20
#: Most heads H of a layout or model.
MAX_HEADS = 1024
#: Largest kernel block size (tokens per tile side; a mask tile is block_size^2 bytes).
MAX_BLOCK_SIZE = 1024
#: Largest head dimension D / Dv of the op.
MAX_HEAD_DIM = 256
#: Most query (= key) blocks per side of a layout, nQB = ceil(S / block_size).
MAX_BLOCKS = 8192
#: Most candidate-grid cells examined over all compiled heads (sum of nQB^2 per distinct head).
MAX_GRID_WORK = 1 << 27
#: Most candidate tiles evaluated over all compiled heads (tiles that may hold a visible pair).
MAX_COMPILE_TILES = 1 << 20
#: Most stored tiles of a layout, over all heads (CSR entries; 8 bytes each).
MAX_TILES = 1 << 24
#: Most token pairs evaluated to classify tiles, over all compiled heads
#: (distinct tiles * block_size^2 per head, summed).
MAX_MASK_TABLE_BYTES = 1 << 25
#: Most random block draws of a layout (heads * random rows * blocks per row).
MAX_RANDOM_DRAWS = 1 << 18
#: Largest dense token mask written by ``layout --save-mask`` (H * S * S bytes).
MAX_TOKEN_MASK_BYTES = 1 << 30
#: Most blocks per side drawn by ``layout --plot``.
MAX_PLOT_BLOCKS = 2048
#: Most heads drawn by ``layout --plot`` (one panel each).
MAX_PLOT_HEADS = 16
#: Characters of a bad input echoed in an error message.
MAX_ECHO_CHARS = 200

#: The documented table (name -> :class:`Limit`), in the order of ``docs/spec.md``.
LIMITS: dict[str, Limit] = {
    lim.name: lim
    for lim in (
        Limit("spec integer", MAX_INT, "", "any integer parameter of a pattern"),
        Limit("spec length", MAX_SPEC_CHARS, "characters", "one pattern spec string"),
        Limit("seq_len", MAX_SEQ_LEN, "tokens", "sequence length S of a layout or model"),
        Limit("num_heads", MAX_HEADS, "heads", "heads H of a layout or model"),
        Limit("block_size", MAX_BLOCK_SIZE, "tokens", "kernel block size"),
        Limit("head_dim", MAX_HEAD_DIM, "", "head dimension D and Dv of the op"),
        Limit("blocks per side", MAX_BLOCKS, "blocks", "nQB = ceil(S / block_size)"),
        Limit("grid work", MAX_GRID_WORK, "tiles", "sum of nQB^2 over distinct compiled heads"),
        Limit("compile tiles", MAX_COMPILE_TILES, "tiles", "candidate tiles of distinct heads"),
        Limit("stored tiles", MAX_TILES, "tiles", "non-empty tiles of a layout, all heads"),
        Limit(
            "mask work", MAX_MASK_TABLE_BYTES, "pairs", "distinct tiles x block_size^2, all heads"
        ),
        Limit("random draws", MAX_RANDOM_DRAWS, "draws", "heads x random rows x blocks per row"),
        Limit("token mask", MAX_TOKEN_MASK_BYTES, "bytes", "H x S x S of layout --save-mask"),
        Limit("plot blocks", MAX_PLOT_BLOCKS, "blocks", "nQB per side drawn by layout --plot"),
    )
}

_DECIMAL = re.compile(r"(?:0|[1-9][0-9]*)", re.ASCII)


def shorten(text: object, limit: int = MAX_ECHO_CHARS) -> str:
    """``repr`` of ``text`` cut to about ``limit`` characters (for error messages)."""
    s = str(text)
    if len(s) <= limit:
        return repr(s)
    return repr(s[:limit]) + f"... ({len(s)} characters)"


def parse_int(text: str, what: str, minimum: int = 0, maximum: int = MAX_INT) -> int:
    """Parse a non-negative ASCII decimal integer written as text, within a range.

    Args:
        text: the text, e.g. ``"4096"``. Surrounding whitespace is not allowed.
        what: name for messages, e.g. ``"--seq-len"`` or ``"band(): w"``.
        minimum, maximum: inclusive range.

    Returns:
        The integer.

    Raises:
        InvalidInputError: not ASCII decimal digits (sign, leading zeros, separators,
            non-ASCII digits), more than :data:`MAX_INT_DIGITS` digits, or out of range.
    """
    if not isinstance(text, str):
        raise InvalidInputError(f"{what} must be an integer, got {type(text).__name__}")
    if not _DECIMAL.fullmatch(text):
        if text[:1] in "+-" and _DECIMAL.fullmatch(text[1:]):
            why = "no sign is allowed"
        elif re.fullmatch(r"0[0-9]+", text, re.ASCII):
            why = "no leading zeros are allowed"
        else:
            why = "use ASCII digits 0-9 only"
        raise InvalidInputError(
            f"{what} must be a decimal integer in {minimum}..{maximum}, got {shorten(text)} ({why})"
        )
    if len(text) > MAX_INT_DIGITS:
        raise InvalidInputError(f"{what}={shorten(text, 20)} is too large; it must be <= {maximum}")
    return check_int(int(text), what, minimum, maximum)


def check_int(value: object, what: str, minimum: int = 0, maximum: int = MAX_INT) -> int:
    """Check that ``value`` is an integer (not a bool) in ``minimum..maximum``; return it.

    Raises:
        InvalidInputError: wrong type or out of range (the message gives the range).
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidInputError(
            f"{what} must be an integer in {minimum}..{maximum}, got {shorten(value, 40)}"
        )
    value = int(value)
    if value < minimum:
        raise InvalidInputError(f"{what}={value} is too small; it must be >= {minimum}")
    if value > maximum:
        raise InvalidInputError(
            f"{what}={shorten(value, 40)[1:-1]} is too large; it must be <= {maximum} "
            "(see the limits in docs/spec.md)"
        )
    return value


#: Most elements of the query/key/value arrays an export traces and checks (B=2 examples).
MAX_EXPORT_ELEMENTS = 1 << 27
#: Most multiply-adds of the block-sparse attention an export check runs (all check lengths).
MAX_EXPORT_CHECK_MACS = 1 << 36

LIMITS["export inputs"] = Limit(
    "export inputs", MAX_EXPORT_ELEMENTS, "elements", "2 x H x S x (2D + Dv) traced and checked"
)
LIMITS["export check"] = Limit(
    "export check", MAX_EXPORT_CHECK_MACS, "MACs", "stored tiles x block^2 x (D + Dv) x 2 x 4"
)


def check_export_size(layout, head_dim: int, value_dim: int, batch: int = 2) -> None:
    """Refuse, before any work, an attention export whose example and check tensors or whose
    export-time check would not fit (:data:`MAX_EXPORT_ELEMENTS`, :data:`MAX_EXPORT_CHECK_MACS`).

    Args:
        layout: the export's :class:`~sparse_attn.layout.BlockLayout`.
        head_dim, value_dim: D and Dv. batch: examples per check.

    Raises:
        InvalidInputError: naming the estimate, the limit and what to reduce.
    """
    h, s, bs = layout.num_heads, layout.seq_len, layout.block_size
    head_dim = check_int(head_dim, "head_dim", 1, MAX_HEAD_DIM)
    value_dim = check_int(value_dim, "value_dim", 1, MAX_HEAD_DIM)
    elements = batch * h * s * (2 * head_dim + value_dim)
    if elements > MAX_EXPORT_ELEMENTS:
        raise InvalidInputError(
            f"the export would trace query/key/value of {elements} elements (batch {batch} x "
            f"H {h} x S {s} x (2D + Dv) {2 * head_dim + value_dim}); the limit is "
            f"{MAX_EXPORT_ELEMENTS}: use a shorter --max-seq-len or fewer heads"
        )
    macs = int(layout.nnz.sum()) * bs * bs * (head_dim + value_dim) * batch * 4
    if macs > MAX_EXPORT_CHECK_MACS:
        raise InvalidInputError(
            f"the export check would run about {macs:.3g} multiply-adds of attention; the limit "
            f"is {MAX_EXPORT_CHECK_MACS:.3g}: use a sparser pattern, a shorter --max-seq-len or "
            "fewer heads"
        )
