"""Command-line glue for Hugging Face checkpoints (``export --model PATH``, ``layout --model``).

Kept out of the command modules so that they only dispatch: the logic lives in
:mod:`sparse_attn.models`.
"""

from __future__ import annotations

import json
import warnings

import click

from sparse_attn.errors import InvalidInputError


def _echo_warnings(caught) -> None:
    for w in caught:
        click.echo(f"sparse-attn: warning: {' '.join(str(w.message).split())}", err=True)


def export_checkpoint(
    name: str,
    family_opts: dict,
    *,
    pattern,
    layers,
    block_size,
    max_seq_len,
    causal: bool,
    dtype: str,
    output,
    logits: str | None = None,
):
    """``sparse-attn export --model PATH|NAME``: a checkpoint directory or built-in model.

    Longformer and BigBird checkpoints go to their adapters (their attention bypasses
    transformers' registry); every other architecture to the ``hf`` family.

    Raises:
        InvalidInputError: bad directory, arguments or architecture (exit 2).
    """
    from sparse_attn.models import checkpoint as ckpt

    path = ckpt.resolve(name)
    config = ckpt.load_config(path)
    adapter = ckpt.ADAPTER_MODEL_TYPES.get(getattr(config, "model_type", None))
    if adapter is not None:
        from sparse_attn.export import get_family

        family = get_family(adapter)
        known = getattr(family, "CLI_OPTIONS", {})
        extra = {k: v for k, v in family_opts.items() if k in known and k != "seed"}
        foreign = sorted(set(family_opts) - set(extra))
        if foreign:
            raise InvalidInputError(
                f"option(s) {', '.join(foreign)} do not apply to a {adapter} checkpoint"
            )
        if layers is not None:
            raise InvalidInputError(f"--layers does not apply to {adapter} checkpoints")
        if logits is not None:
            raise InvalidInputError(f"--logits does not apply to {adapter} checkpoints (encoders)")
        return family.export_onnx(
            output,
            pattern=pattern,
            block_size=block_size or family.DEFAULT_BLOCK_SIZE,
            max_seq_len=max_seq_len,
            dtype=dtype,
            causal=causal,
            model_dir=str(path),
            **extra,
        )
    if family_opts:
        flags = ", ".join("--" + k.replace("_", "-") for k in sorted(family_opts))
        raise InvalidInputError(
            f"option(s) {flags} are not known for checkpoint exports (options: --pattern, "
            "--layers, --block-size, --max-seq-len, --dtype, -o)"
        )
    if causal:
        raise InvalidInputError(
            "--causal does not apply to a checkpoint: causality is the model's own "
            "(decoders are causal, encoders are not)"
        )
    from sparse_attn.models import family

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", category=UserWarning)
        warnings.filterwarnings("ignore", module="torch")
        warnings.filterwarnings("ignore", module="transformers")
        try:
            return family.export_onnx(
                output,
                model_dir=str(path),
                pattern=pattern,
                layers=layers,
                block_size=block_size,
                max_seq_len=max_seq_len,
                dtype=dtype,
                logits=logits,
            )
        finally:
            from sparse_attn.models.layers import PatternOverrideWarning

            _echo_warnings([w for w in caught if issubclass(w.category, PatternOverrideWarning)])


def layout_of_model(name: str, *, max_seq_len, block_size, as_json: bool) -> None:
    """``sparse-attn layout --model PATH|NAME``: the per-layer patterns, nothing exported.

    Reads only ``config.json`` (no weights). Prints the table (or one JSON object with
    ``model``, ``max_seq_len``, ``block_size``, ``num_heads`` and ``layers``: one entry per
    layer with its pattern, the model's own pattern, source and densities).
    """
    from sparse_attn.layout import compile_layout
    from sparse_attn.models import checkpoint as ckpt
    from sparse_attn.models import family
    from sparse_attn.models.layers import format_table, layer_patterns, text_config

    path = ckpt.resolve(name)
    config = ckpt.load_config(path)
    max_seq_len = family.check_max_seq_len(config, max_seq_len)
    block_size = family.DEFAULT_BLOCK_SIZE if block_size is None else block_size
    if block_size < 1:
        raise InvalidInputError(f"--block-size must be >= 1, got {block_size}")
    patterns = layer_patterns(config, max_seq_len)
    heads = int(getattr(text_config(config), "num_attention_heads", 1) or 1)
    stats = {}
    rows = []
    for lp in patterns:
        if lp.pattern not in stats:
            stats[lp.pattern] = compile_layout(
                lp.pattern, seq_len=max_seq_len, block_size=block_size, num_heads=1
            ).stats()
        st = stats[lp.pattern]
        row = lp.as_dict()
        row["density_tokens"] = st["density_tokens"]
        row["density_blocks"] = st["density_blocks"]
        rows.append(row)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "model": str(path),
                    "model_type": getattr(text_config(config), "model_type", None),
                    "max_seq_len": max_seq_len,
                    "block_size": block_size,
                    "num_heads": heads,
                    "layers": rows,
                }
            )
        )
        return
    click.echo(
        f"{path} ({getattr(text_config(config), 'model_type', '?')}), max_seq_len {max_seq_len}, "
        f"block_size {block_size}"
    )
    click.echo(format_table(patterns, [r["density_tokens"] for r in rows]))


def run_language_model(rt, info: dict, texts: list[str], batch_size: int, as_json, output):
    """``sparse-attn run`` on a causal LM export (output ``logits``): per text, the number of
    tokens (the model's own tokenizer) and the five most likely next tokens after it.

    With ``-o F.npz`` the last-position logits ``[N, vocab]`` are saved.
    """
    import numpy as np

    from sparse_attn.fileio import atomic_output

    tok = rt.encoder.tokenizer
    rows, last = [], []
    for i in range(0, len(texts), batch_size):
        chunk = texts[i : i + batch_size]
        feeds, lengths, cut = rt.encoder.encode_detailed(chunk, rt.inputs)
        logits = rt.run(feeds)["logits"]
        for j, n in enumerate(lengths):
            # [B, S, vocab], or [B, 1, vocab] from an export with --logits last
            vec = logits[j, 0 if logits.shape[1] == 1 else n - 1].astype(np.float32)
            last.append(vec)
            top = np.argsort(-vec)[:5]
            rows.append(
                {
                    "tokens": int(n),
                    "truncated": bool(cut[j]),
                    "next_token_ids": [int(t) for t in top],
                    "next_tokens": [tok.decode([int(t)], skip_special_tokens=False) for t in top],
                    "next_logits": [float(vec[t]) for t in top],
                }
            )
    saved = {}
    if output is not None:
        with atomic_output(output) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, last_logits=np.stack(last))
        saved = {"saved_outputs": str(output)}
    if as_json:
        click.echo(json.dumps({**info, "num_texts": len(texts), "texts": rows, **saved}))
        return
    click.echo(
        f"{rt.path} [{rt.backend}] causal LM, pattern {rt.metadata.get('sparse_attn.pattern')}: "
        f"next-token predictions"
    )
    for i, (text, r) in enumerate(zip(texts, rows, strict=True)):
        short = text if len(text) <= 50 else text[:47] + "..."
        preds = ", ".join(
            f"{t!r} {v:.2f}" for t, v in zip(r["next_tokens"], r["next_logits"], strict=True)
        )
        cut = " (cut)" if r["truncated"] else ""
        click.echo(f"  {i}: {r['tokens']} tokens{cut} {short!r} -> {preds}")
    if saved:
        click.echo(f"wrote {output}")
