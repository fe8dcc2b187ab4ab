"""Per-layer attention patterns of a Hugging Face model, read from its config.

Every attention layer of a checkpoint gets one pattern (section "Patterns" of docs/spec.md):

* **Which layers slide.** ``config.layer_types`` (``"sliding_attention"`` /
  ``"full_attention"``, one per layer) when the config has it; otherwise the legacy fields:
  ``use_sliding_window`` + ``max_window_layers`` (Qwen2: layers ``>= max_window_layers``
  slide), ``sliding_window_pattern`` (Gemma 2/3, Cohere2: every ``p``-th layer, counting from
  1, is full), ``global_attn_every_n_layers`` (ModernBERT: layers ``i % n == 0`` are full),
  and finally a plain ``sliding_window`` with none of those (Mistral, Mixtral, Phi-3,
  Starcoder2: every layer slides).
* **Causal or not.** Decoders are causal; encoders (``is_decoder`` false on a BERT-style
  config, ModernBERT, ``use_bidirectional_attention``, ``is_causal = False``) are not.
* **The window, in transformers' own convention.** A causal decoder with ``sliding_window = W``
  lets query ``i`` see keys ``i-W+1 .. i`` (``W`` keys, the query included:
  ``masking_utils.sliding_window_overlay``), which is ``band(w=W-1) | causal``. A
  bidirectional sliding layer (``create_bidirectional_sliding_window_mask``) sees
  ``|i - j| <= sliding_window``: ``band(w=sliding_window)``; ModernBERT's config exposes
  ``sliding_window = local_attention // 2``, so its window of ``local_attention`` tokens is
  ``band(w=local_attention // 2)``. Gemma 3 with ``use_bidirectional_attention`` keeps the
  exclusive bound ``|i - j| < sliding_window``: ``band(w=sliding_window - 1)``.
* **Full layers** are ``dense | causal`` in a causal model and ``dense`` in an encoder.

A user pattern (``--pattern``) replaces the config's on the chosen layers (``--layers``:
``sliding``, ``full``, ``all`` or indices such as ``0-4,6``); a causal model keeps the causal
modifier. :func:`layer_patterns` warns when a user pattern replaces a layer's own window and
records both patterns.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from sparse_attn.errors import InvalidInputError

#: ``model_type`` values of bidirectional (encoder) architectures known to dispatch through
#: transformers' attention registry.
ENCODER_MODEL_TYPES = frozenset(
    {
        "bert",
        "roberta",
        "xlm-roberta",
        "camembert",
        "electra",
        "ernie",
        "modernbert",
        "distilbert",
        "data2vec-text",
        "xmod",
        "roc_bert",
        "bert-generation",
        "mpnet",
        "albert",
        "nomic_bert",
        "jina_bert",
        "eurobert",
        "ettin",
    }
)
SLIDING = "sliding"
FULL = "full"
#: Accepted values of ``layer_types`` entries, mapped to :data:`SLIDING` / :data:`FULL`.
_LAYER_TYPE_NAMES = {"sliding_attention": SLIDING, "full_attention": FULL}


class PatternOverrideWarning(UserWarning):
    """A user pattern replaced the model's own sliding window on some layer."""


@dataclass(frozen=True)
class LayerPattern:
    """The pattern of one attention layer.

    Attributes:
        layer: layer index (``module.layer_idx`` in transformers).
        kind: ``"sliding"`` or ``"full"`` (the model's own layer type).
        pattern: the expanded spec the layer runs (the user's when overridden).
        model_pattern: the model's own pattern for this layer (from its config).
        source: ``"config"`` or ``"user"``.
        window: the config's sliding window of this layer (tokens, transformers' meaning), or
            ``None`` for a full layer.
        causal: the model is causal (decoder).
    """

    layer: int
    kind: str
    pattern: str
    model_pattern: str
    source: str
    window: int | None
    causal: bool

    def as_dict(self) -> dict:
        """JSON-safe dict (the per-layer table in export metadata)."""
        return asdict(self)


def text_config(config):
    """The text sub-config of a multimodal config (``get_text_config``), else ``config``."""
    get = getattr(config, "get_text_config", None)
    if callable(get):
        try:
            return get()
        except Exception:  # noqa: BLE001 - a config without sub-configs returns itself anyway
            return config
    return config


def num_layers(config) -> int:
    """``num_hidden_layers`` of the (text) config.

    Raises:
        InvalidInputError: the config has no layer count.
    """
    cfg = text_config(config)
    n = getattr(cfg, "num_hidden_layers", None)
    if not isinstance(n, int) or n < 1:
        raise InvalidInputError(
            f"config of model_type {getattr(cfg, 'model_type', '?')!r} has no num_hidden_layers; "
            "it is not a transformer this tool can export"
        )
    return n


def is_causal(config) -> bool:
    """True for a causal (decoder) model, False for a bidirectional encoder (see module doc)."""
    cfg = text_config(config)
    if getattr(cfg, "use_bidirectional_attention", False):
        return False
    if getattr(cfg, "is_causal", True) is False:
        return False
    if getattr(cfg, "model_type", None) in ENCODER_MODEL_TYPES:
        return bool(getattr(cfg, "is_decoder", False))
    archs = list(getattr(cfg, "architectures", None) or [])
    decoder_heads = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
    if getattr(cfg, "is_decoder", None) is False and archs:
        # BERT-style configs declare is_decoder; a checkpoint saved from an encoder class
        # (BertModel, ...ForMaskedLM) has no causal head among its architectures.
        if not any(a.endswith(decoder_heads) for a in archs):
            return False
    return True


def layer_kinds(config) -> list[str]:
    """``"sliding"`` / ``"full"`` per layer, from ``layer_types`` or the legacy fields.

    Raises:
        InvalidInputError: ``layer_types`` with an unknown entry (e.g. chunked or linear
            attention) or of the wrong length.
    """
    cfg = text_config(config)
    n = num_layers(cfg)
    window = sliding_window(cfg)
    types = getattr(cfg, "layer_types", None)
    if types is not None:
        types = list(types)
        if len(types) < n:
            raise InvalidInputError(
                f"config.layer_types has {len(types)} entries for {n} layers; fix config.json"
            )
        unknown = sorted({t for t in types[:n] if t not in _LAYER_TYPE_NAMES})
        if unknown:
            raise InvalidInputError(
                f"config.layer_types holds {unknown}: only sliding_attention and full_attention "
                "layers map to a position-based pattern"
            )
        kinds = [_LAYER_TYPE_NAMES[t] for t in types[:n]]
        if window is None and SLIDING in kinds:
            raise InvalidInputError(
                "config.layer_types has sliding_attention layers but no sliding_window; "
                "set sliding_window in config.json"
            )
        return kinds
    if window is None:
        return [FULL] * n
    if getattr(cfg, "use_sliding_window", None) is not None:
        if not cfg.use_sliding_window:
            return [FULL] * n
        first = getattr(cfg, "max_window_layers", 0) or 0
        return [SLIDING if i >= first else FULL for i in range(n)]
    every = getattr(cfg, "sliding_window_pattern", None) or getattr(
        cfg, "_sliding_window_pattern", None
    )
    if isinstance(every, int) and every > 0:
        return [FULL if (i + 1) % every == 0 else SLIDING for i in range(n)]
    every = getattr(cfg, "global_attn_every_n_layers", None)
    if isinstance(every, int) and every > 0:
        return [FULL if i % every == 0 else SLIDING for i in range(n)]
    return [SLIDING] * n


def sliding_window(config) -> int | None:
    """The config's ``sliding_window`` (tokens) or ``None``.

    Qwen2-style configs with ``use_sliding_window = False`` have no window.

    Raises:
        InvalidInputError: a window that is not a positive integer.
    """
    cfg = text_config(config)
    if getattr(cfg, "use_sliding_window", True) is False:
        return None
    w = getattr(cfg, "sliding_window", None)
    if w is None:
        return None
    if isinstance(w, bool) or not isinstance(w, int) or w < 1:
        raise InvalidInputError(f"config.sliding_window must be a positive integer, got {w!r}")
    return int(w)


def window_pattern(config, causal: bool) -> str:
    """The band atom of a sliding layer (module docstring), without the causal modifier."""
    w = sliding_window(config)
    if causal:
        return f"band(w={w - 1})"
    if getattr(text_config(config), "use_bidirectional_attention", False):
        return f"band(w={w - 1})"
    return f"band(w={w})"


def visible_keys(config) -> int | None:
    """Largest ``|i - j|`` a sliding layer sees (tokens), or ``None`` without a window."""
    if sliding_window(config) is None:
        return None
    return int(window_pattern(config, is_causal(config))[len("band(w=") : -1])


def parse_layers(spec: str | Sequence[int] | None, kinds: Sequence[str]) -> list[int]:
    """Layer indices selected by ``--layers``: ``sliding``, ``full``, ``all`` (default) or
    a comma list of indices and ranges (``0-4,6``).

    Raises:
        InvalidInputError: an unparsable list, an index out of range, or a selection that
            names no layer.
    """
    n = len(kinds)
    if spec is None or (isinstance(spec, str) and spec.strip() in ("", "all")):
        return list(range(n))
    if not isinstance(spec, str):
        picked = [int(i) for i in spec]
    elif spec.strip() in (SLIDING, FULL):
        picked = [i for i, k in enumerate(kinds) if k == spec.strip()]
        if not picked:
            raise InvalidInputError(
                f"--layers {spec.strip()}: the model has no {spec.strip()} layer "
                f"(its layers: {', '.join(kinds)})"
            )
        return picked
    else:
        picked = []
        for part in spec.split(","):
            m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
            if not m:
                raise InvalidInputError(
                    f"--layers {spec!r}: expected sliding, full, all or indices like 0-4,6"
                )
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) is not None else lo
            if hi < lo:
                raise InvalidInputError(f"--layers {spec!r}: range {lo}-{hi} is empty")
            picked.extend(range(lo, hi + 1))
    bad = sorted({i for i in picked if not 0 <= i < n})
    if bad:
        raise InvalidInputError(f"--layers names layer(s) {bad}; the model has layers 0..{n - 1}")
    return sorted(set(picked))


def _user_spec(user_pattern, causal: bool) -> str:
    from sparse_attn.patterns import parse_pattern

    try:
        pat = parse_pattern(user_pattern)
    except InvalidInputError:
        raise
    except ValueError as exc:
        raise InvalidInputError(f"--pattern {user_pattern!r}: {exc}") from exc
    if causal:
        pat = pat.with_causal(True)
    return pat.spec()


def layer_patterns(
    config,
    max_seq_len: int,
    user_pattern=None,
    layers: str | Sequence[int] | None = None,
    *,
    warn: bool = True,
) -> list[LayerPattern]:
    """One :class:`LayerPattern` per layer of the model described by ``config``.

    Args:
        config: a transformers ``PretrainedConfig`` (or a multimodal one with a text config).
        max_seq_len: the longest sequence the export takes (tokens).
        user_pattern: a spec string / preset replacing the config's pattern on ``layers``
            (a causal model keeps the causal modifier), or ``None``.
        layers: which layers the user pattern replaces (:func:`parse_layers`); only with
            ``user_pattern``.
        warn: emit :class:`PatternOverrideWarning` when a user pattern replaces a layer's
            own sliding window.

    Returns:
        ``list[LayerPattern]`` in layer order.

    Raises:
        InvalidInputError: ``layers`` without ``user_pattern``, a bad layer selection or
            pattern, or a model window larger than ``max_seq_len`` on a layer that keeps it.
    """
    if layers is not None and user_pattern is None:
        raise InvalidInputError("--layers needs --pattern (the pattern those layers get)")
    if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or max_seq_len < 1:
        raise InvalidInputError(f"max_seq_len must be a positive integer, got {max_seq_len!r}")
    causal = is_causal(config)
    kinds = layer_kinds(config)
    window = sliding_window(config)
    chosen = set(parse_layers(layers, kinds)) if user_pattern is not None else set()
    user = _user_spec(user_pattern, causal) if user_pattern is not None else None
    suffix = " | causal" if causal else ""
    out = []
    overridden = []
    for i, kind in enumerate(kinds):
        if kind == SLIDING:
            own = window_pattern(config, causal) + suffix
        else:
            own = "dense()" + suffix
        if i in chosen:
            if kind == SLIDING and user != own:
                overridden.append(i)
            out.append(
                LayerPattern(
                    i, kind, user, own, "user", window if kind == SLIDING else None, causal
                )
            )
            continue
        if kind == SLIDING and window > max_seq_len:
            raise InvalidInputError(
                f"layer {i}: the model's sliding window of {window} tokens exceeds "
                f"max_seq_len={max_seq_len}; export with --max-seq-len {window} or more"
            )
        out.append(
            LayerPattern(i, kind, own, own, "config", window if kind == SLIDING else None, causal)
        )
    if overridden and warn:
        warnings.warn(
            f"--pattern {user!r} replaces the model's own sliding window "
            f"({out[overridden[0]].model_pattern}) on layer(s) {_ranges(overridden)}: the "
            "outputs will differ from the original model's",
            PatternOverrideWarning,
            stacklevel=2,
        )
    return out


def _ranges(idx: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    parts = []
    start = prev = None
    for i in list(idx) + [None]:
        if start is None:
            start = prev = i
        elif i is not None and i == prev + 1:
            prev = i
        else:
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = i
    return ",".join(parts)


def format_table(patterns: Sequence[LayerPattern], densities: Sequence[float] | None = None) -> str:
    """Plain-text per-layer table: layer, kind, pattern, source, density at ``max_seq_len``.

    Consecutive layers with the same row are merged (``0-4``).
    """
    rows = []
    for k, lp in enumerate(patterns):
        dens = f"{densities[k]:.4f}" if densities is not None else ""
        src = lp.source if lp.source == "config" else f"user (model: {lp.model_pattern})"
        rows.append((lp.layer, (lp.kind, lp.pattern, dens, src)))
    merged: list[tuple[list[int], tuple]] = []
    for layer, row in rows:
        if merged and merged[-1][1] == row and merged[-1][0][-1] == layer - 1:
            merged[-1][0].append(layer)
        else:
            merged.append(([layer], row))
    header = ("layers", "kind", "pattern", "density", "source")
    body = [(_ranges(ls), *row) for ls, row in merged]
    widths = [max(len(str(r[c])) for r in [header, *body]) for c in range(len(header))]
    lines = [
        "  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *body]
    ]
    return "\n".join(lines)
