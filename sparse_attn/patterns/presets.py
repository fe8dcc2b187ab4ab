"""Named presets: published sparse-attention patterns expanded to atoms (docs/spec.md).

Each preset is a function of its parameters (defaults as its source uses them) returning a
:class:`~sparse_attn.patterns.pattern.Pattern`. In a spec string a preset is written by name,
optionally with overrides: ``bigbird``, ``bigbird(block=64, r=2)``, ``sliding_window(w=4096)``.
The source of every preset is in its docstring (paper + section, or the reference
implementation's parameter names).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sparse_attn.patterns.atoms import (
    Atom,
    Band,
    BlockBand,
    BlockLocal,
    Global,
    Param,
    Random,
    Strided,
    Summary,
    VerticalStride,
    _check_value,
    _known_params,
    param_error,
)
from sparse_attn.patterns.pattern import Pattern


def bigbird(block: int = 64, r: int = 3, w: int = 1, seed: int = 0) -> Pattern:
    """BigBird-ITC (Zaheer et al., "Big Bird: Transformers for Longer Sequences", NeurIPS 2020,
    Sec. 2 and App. D; Hugging Face ``BigBirdConfig``: ``block_size=64``,
    ``num_random_blocks=3``).

    ``global(n=block, last=block) | block_band(b=block, w=w) | random(r=r, seed=seed, b=block,
    scope=all)``: the first and last block are global, a 3-block sliding window (``w=1`` block
    on each side), and ``r`` random key blocks per query block drawn over the whole sequence.
    Needs the end of the sequence (global last block, random over all blocks): the layout is
    marked ``requires_static_seq_len``. Difference from the reference implementation: random
    blocks are drawn from every block (the union makes overlaps with the window/global
    harmless) instead of excluding the window and global blocks.
    """
    return Pattern(
        [
            Global(n=block, last=block),
            BlockBand(b=block, w=w),
            Random(r=r, seed=seed, b=block, scope="all"),
        ]
    )


def longformer(window: int = 512, n: int = 1) -> Pattern:
    """Longformer (Beltagy et al., "Longformer: The Long-Document Transformer", 2020, Sec. 3.1;
    Hugging Face ``LongformerConfig.attention_window=512``, which is the *total* window, i.e.
    ``window // 2`` tokens on each side).

    ``band(w=window//2) | global(n=n)``; ``n=1`` makes ``[CLS]`` (position 0) global, as for
    classification. ``n=0`` drops the global tokens. ``window`` must be even, as in HF.
    """
    if window % 2:
        raise param_error(
            f"longformer(): window={window} must be even (it is the total attention window, "
            "window//2 tokens each side, as Hugging Face's attention_window)",
            "window",
        )
    atoms: list[Atom] = [Band(w=window // 2)]
    if n:
        atoms.append(Global(n=n))
    return Pattern(atoms)


def sparse_transformer_strided(l: int = 128) -> Pattern:  # noqa: E741 (the paper's name)
    """Strided Sparse Transformer (Child et al., "Generating Long Sequences with Sparse
    Transformers", 2019, Sec. 4.2, l = 128 as in their image experiments).

    ``A(1)_i = {t..i}, t = max(0, i - l)`` and ``A(2)_i = {j : (i - j) mod l = 0}``, causal:
    ``band(w=l) | strided(l=l) | causal`` (both heads merged into one pattern).
    """
    return Pattern([Band(w=l), Strided(l=l)], causal=True)


def sparse_transformer_fixed(l: int = 128, c: int = 8) -> Pattern:  # noqa: E741
    """Fixed Sparse Transformer (Child et al. 2019, Sec. 4.2: ``c in {8, 16, 32}`` for
    ``l in {128, 256}``; defaults l=128, c=8).

    ``A(1)_i = {j : floor(j/l) = floor(i/l)}``, ``A(2)_i = {j : j mod l in {l-c, ..., l}}``,
    causal: ``block_local(b=l) | summary(l=l, c=c) | causal``.
    """
    return Pattern([BlockLocal(b=l), Summary(l=l, c=c)], causal=True)


def sliding_window(w: int = 4096) -> Pattern:
    """Causal sliding window of Mistral 7B (Jiang et al. 2023, Sec. 2; Hugging Face
    ``MistralConfig.sliding_window=4096``).

    Hugging Face's mask (``transformers.masking_utils.sliding_window_overlay``:
    ``kv_idx > q_idx - sliding_window``) lets query i see keys ``i-w+1 .. i``: ``w`` keys,
    self included. Hence ``band(w=w-1) | causal``.
    """
    if w < 1:
        raise param_error(
            f"sliding_window(): w={w} must be >= 1 (w keys including the query itself)", "w"
        )
    return Pattern([Band(w=w - 1)], causal=True)


def local_vertical_stride(
    block: int = 64, local: int = 16, stride: int = 8, step: int | str = "auto"
) -> Pattern:
    """Phi-3-small block-sparse attention (Abdin et al., "Phi-3 Technical Report", 2024;
    config ``blocksparse_block_size=64``, ``blocksparse_num_local_blocks=16``,
    ``blocksparse_vert_stride=8``, ``blocksparse_homo_head_pattern=false``; mask as in
    vLLM/TensorRT-LLM ``get_sparse_attn_mask``).

    Block level: key block ``J`` visible from query block ``I`` when ``J <= I`` and
    (``I - J < local`` or ``(J + h*step + 1) % stride == 0``), then token-level causal:
    ``block_band(b=block, w=local-1) | vertical_stride(b=block, s=stride, step=step) |
    causal``. ``step=auto`` is ``max(1, stride // H)`` (heterogeneous heads); ``step=0`` is the
    homogeneous-head variant.
    """
    near: Atom = BlockBand(b=block, w=local - 1) if local > 1 else BlockLocal(b=block)
    return Pattern([near, VerticalStride(b=block, s=stride, step=step)], causal=True)


@dataclass(frozen=True)
class Preset:
    """A named preset: parameters (for the parser and ``--help``) and its builder."""

    name: str
    params: tuple[Param, ...]
    build: Callable[..., Pattern]
    summary: str

    def __call__(self, **values) -> Pattern:
        """Validate the overrides and expand. Raises PatternSyntaxError on a bad parameter."""
        known = _known_params(self.params, values, f"preset {self.name}")
        checked = {k: _check_value(self.name, known[k], v) for k, v in values.items()}
        pat = self.build(**checked)
        label = self.name + (
            "(" + ", ".join(f"{k}={v}" for k, v in checked.items()) + ")" if checked else ""
        )
        return Pattern(pat.atoms, pat.causal, name=label)

    def spec(self) -> str:
        """Canonical expanded spec string of the preset with its default parameters."""
        return self().spec()

    def __str__(self) -> str:
        return self.spec()

    def defaults(self) -> str:
        """``name(p=default, ...)``."""
        return f"{self.name}({', '.join(f'{p.name}={p.default}' for p in self.params)})"


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "bigbird",
            (
                Param("block", default=64),
                Param("r", default=3),
                Param("w", default=1, minimum=0),
                Param("seed", minimum=0, default=0),
            ),
            bigbird,
            "BigBird-ITC: global first/last block, 3-block window, r random blocks (static S)",
        ),
        Preset(
            "longformer",
            (Param("window", default=512, minimum=2), Param("n", default=1, minimum=0)),
            longformer,
            "Longformer: window//2 tokens each side + n global leading tokens",
        ),
        Preset(
            "sparse_transformer_strided",
            (Param("l", default=128),),
            sparse_transformer_strided,
            "Sparse Transformer strided: causal band(l) + every l-th position",
        ),
        Preset(
            "sparse_transformer_fixed",
            (Param("l", default=128), Param("c", default=8)),
            sparse_transformer_fixed,
            "Sparse Transformer fixed: causal l-blocks + last c positions of each block",
        ),
        Preset(
            "sliding_window",
            (Param("w", default=4096, minimum=1),),
            sliding_window,
            "Mistral: causal window of w keys (self included)",
        ),
        Preset(
            "local_vertical_stride",
            (
                Param("block", default=64),
                Param("local", default=16),
                Param("stride", default=8),
                Param("step", kind="int_or_auto", default="auto", minimum=0),
            ),
            local_vertical_stride,
            "Phi-3-small: causal local blocks + every stride-th block, shifted per head",
        ),
    )
}
