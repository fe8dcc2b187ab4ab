"""Pieces shared by the ``sparse-attn`` commands: bounded integer options, output paths."""

from __future__ import annotations

import click

from sparse_attn import limits
from sparse_attn.errors import InvalidInputError


class BoundedInt(click.ParamType):
    """A click type for sizes: ASCII decimal, no sign, no leading zeros, in a documented range.

    Uses :func:`sparse_attn.limits.parse_int`, the same parser as pattern integers, so
    ``--seq-len +3``, ``--seq-len 00003``, full-width digits and 5,000-digit numbers are all
    refused with one line (exit code 2).
    """

    name = "integer"

    def __init__(self, minimum: int = 1, maximum: int = limits.MAX_INT) -> None:
        self.minimum, self.maximum = minimum, maximum

    def get_metavar(self, param, ctx=None) -> str:  # noqa: ARG002 - click's signature
        return "INT"

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            text = str(value)
        else:
            text = str(value)
        name = param.opts[0] if param is not None and param.opts else "value"
        try:
            return limits.parse_int(text, name, self.minimum, self.maximum)
        except InvalidInputError as exc:
            self.fail(str(exc).removeprefix(f"{name} "), param, ctx)


SEQ_LEN = BoundedInt(1, limits.MAX_SEQ_LEN)
BLOCK_SIZE = BoundedInt(1, limits.MAX_BLOCK_SIZE)
NUM_HEADS = BoundedInt(1, limits.MAX_HEADS)
HEAD_DIM = BoundedInt(1, limits.MAX_HEAD_DIM)
COUNT = BoundedInt(1, limits.MAX_INT)
SEED = BoundedInt(0, limits.MAX_INT)

#: Where every command's help points for the contract.
SPEC_DOC = "docs/spec.md"
