"""``sparse-attn run MODEL [--text T ...] [--input-file F] [--backend B]`` (SPEC section 3).

Text models: embeddings summary per text and, for several texts, their cosine-similarity
table. ``--input-file`` takes one text per line or JSON lines (``"text"`` or
``{"text": "..."}``); a progress bar shows for files longer than one batch. Non-text models
(``attention``) take ``--input-file F.npz`` (arrays named like the model's inputs).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

from sparse_attn.errors import InvalidInputError
from sparse_attn.runtime.runtime import BACKENDS

#: Largest number of texts shown in the cosine table (the JSON output has all of them).
MAX_TABLE = 12


def _load_npz(path: Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise InvalidInputError(
            f"cannot read arrays from {path}: {exc}; pass an .npz file"
        ) from exc


def _run_texts(rt, texts: list[str], batch_size: int, progress: bool):
    from tqdm import tqdm

    from sparse_attn.runtime.text import sentence_embeddings

    embs, lengths, truncated, source = [], [], [], None
    starts = range(0, len(texts), batch_size)
    bar = tqdm(
        starts,
        total=len(starts),
        desc="batches",
        unit="batch",
        disable=not progress or len(texts) <= batch_size,
        file=sys.stderr,
    )
    for i in bar:
        chunk = texts[i : i + batch_size]
        feeds, lens, cut = rt.encoder.encode_detailed(chunk, rt.inputs)
        for j, was_cut in enumerate(cut):
            if was_cut:
                click.echo(
                    f"sparse-attn: warning: text {i + j} has more than {rt.encoder.max_seq_len} "
                    f"tokens (the model's max_seq_len) and was cut",
                    err=True,
                )
        out = rt.run(feeds)
        picked = sentence_embeddings(out, feeds.get("attention_mask"))
        if picked is None:
            raise InvalidInputError(f"the model's outputs {list(out)} hold no embeddings")
        source = picked[0]
        embs.append(picked[1])
        lengths.extend(lens)
        truncated.extend(cut)
    return np.concatenate(embs), lengths, truncated, source


def _print_text_result(rt, texts, emb, lengths, truncated, source, cos) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        f"{rt.path} [{rt.backend}] model {rt.info.family}, pattern {rt.metadata.get('sparse_attn.pattern')}, "
        f"max_seq_len {rt.max_seq_len}: {len(texts)} text(s) -> embeddings "
        f"{list(emb.shape)} from {source}"
    )
    t = Table(title="embeddings")
    for col in ("#", "tokens", "norm", "first values", "text"):
        t.add_column(col)
    for i, text in enumerate(texts[:MAX_TABLE]):
        head = " ".join(f"{v:+.4f}" for v in emb[i, :4])
        short = text if len(text) <= 50 else text[:47] + "..."
        tokens = f"{lengths[i]}" + (" (cut)" if truncated[i] else "")
        t.add_row(str(i), tokens, f"{np.linalg.norm(emb[i]):.4f}", head, short)
    console.print(t)
    if len(texts) > MAX_TABLE:
        console.print(f"(first {MAX_TABLE} of {len(texts)} texts shown; use --json for all)")
    if len(texts) >= 2:
        n = min(len(texts), MAX_TABLE)
        ct = Table(title="cosine similarity")
        ct.add_column("")
        for j in range(n):
            ct.add_column(str(j), justify="right")
        for i in range(n):
            ct.add_row(str(i), *[f"{cos[i, j]:.3f}" for j in range(n)])
        console.print(ct)


@click.command("run")
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--text", "texts", multiple=True, help="A text to embed (repeat for several).")
@click.option(
    "--input-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help='Texts, one per line or JSON lines ({"text": ...}); .npz arrays for non-text models.',
)
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def command(model, texts, input_file, backend, batch_size, as_json):
    """Run MODEL (.onnx or engine) on texts or arrays and summarise the outputs."""
    from sparse_attn.runtime import Runtime
    from sparse_attn.runtime.text import cosine_matrix, read_text_file

    rt = Runtime(model, backend=backend)
    if not rt.is_text_model:
        if texts:
            raise InvalidInputError(
                f"{model} is not a text model (inputs {rt.input_names}); pass --input-file F.npz"
            )
        if input_file is None:
            raise InvalidInputError(
                f"no input: pass --input-file F.npz with arrays named {rt.input_names}"
            )
        out = rt.run(_load_npz(input_file))
        summary = {
            k: {
                "shape": list(v.shape),
                "dtype": v.dtype.name,
                "mean": float(np.mean(v)) if v.size else 0.0,
                "absmax": float(np.max(np.abs(v))) if v.size else 0.0,
            }
            for k, v in out.items()
        }
        if as_json:
            click.echo(json.dumps({"model": str(model), "backend": rt.backend, "outputs": summary}))
        else:
            for k, s in summary.items():
                click.echo(
                    f"{k}: {s['dtype']} {s['shape']} mean {s['mean']:.6g} absmax {s['absmax']:.6g}"
                )
        return
    all_texts = list(texts)
    if input_file is not None:
        if input_file.suffix == ".npz":
            out = rt.run(_load_npz(input_file))
            click.echo(json.dumps({k: list(v.shape) for k, v in out.items()}))
            return
        all_texts += read_text_file(input_file)
    if not all_texts:
        raise InvalidInputError("no texts: pass --text T (repeatable) or --input-file F")
    emb, lengths, truncated, source = _run_texts(rt, all_texts, batch_size, not as_json)
    cos = cosine_matrix(emb)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "model": str(model),
                    "backend": rt.backend,
                    "embedding_source": source,
                    "num_texts": len(all_texts),
                    "embedding_dim": int(emb.shape[1]),
                    "tokens": lengths,
                    "truncated": truncated,
                    "norms": [float(x) for x in np.linalg.norm(emb, axis=1)],
                    "cosine": np.round(cos, 6).tolist(),
                    "embeddings": np.round(emb.astype(np.float64), 6).tolist(),
                }
            )
        )
    else:
        _print_text_result(rt, all_texts, emb, lengths, truncated, source, cos)
