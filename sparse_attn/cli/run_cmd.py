"""``sparse-attn run MODEL [--text T ...] [--input-file F] [--backend B] [--json] [-o F.npz]``.

Every run prints the same summary: the model line (file, backend, family, pattern,
max_seq_len) and one line per output (dtype, shape, mean, absmax). Text models add the
embeddings and, for several texts, their cosine-similarity table. ``--input-file`` takes one
text per line or JSON lines (``"text"`` or ``{"text": "..."}``), or, for any model, an
``.npz`` of arrays named like the model's inputs. ``--json`` prints one JSON object instead;
``-o F.npz`` saves the outputs (texts: ``embeddings`` and ``cosine``). See docs/spec.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

from sparse_attn.cli._common import BoundedInt
from sparse_attn.errors import InvalidInputError
from sparse_attn.runtime.runtime import BACKENDS

#: Largest number of texts shown in the tables (the JSON output and -o have all of them).
MAX_TABLE = 12


def _load_npz(path: Path) -> dict:
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise ValueError("it holds a single array, not named arrays")
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        why = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise InvalidInputError(
            f"cannot read arrays from {path}: {why}; pass an .npz file written by numpy.savez"
        ) from None
    if not arrays:
        raise InvalidInputError(f"{path} holds no arrays; save the model's inputs into it")
    return arrays


def _output_summary(out: dict) -> dict:
    def stat(v: np.ndarray, fn) -> float | None:
        if not v.size or not np.issubdtype(v.dtype, np.number):
            return None
        return float(fn(v.astype(np.float64)))

    return {
        k: {
            "shape": list(v.shape),
            "dtype": v.dtype.name,
            "mean": stat(v, np.mean),
            "absmax": stat(v, lambda a: np.max(np.abs(a))),
        }
        for k, v in out.items()
    }


def _model_info(rt, model) -> dict:
    return {
        "model": str(model),
        "backend": rt.backend,
        "family": rt.info.family,
        "pattern": rt.metadata.get("sparse_attn.pattern"),
        "max_seq_len": rt.max_seq_len,
    }


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.6g}"


def _print_summary(info: dict, summary: dict) -> None:
    click.echo(
        f"{info['model']} [{info['backend']}] model {info['family']}, pattern "
        f"{info['pattern']}, max_seq_len {info['max_seq_len']}"
    )
    for k, st in summary.items():
        click.echo(
            f"  {k}: {st['dtype']} {st['shape']} mean {_fmt(st['mean'])} "
            f"absmax {_fmt(st['absmax'])}"
        )


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
                    "tokens (the model's max_seq_len) and was cut",
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


def _print_text_result(texts, emb, lengths, truncated, source, cos) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console(width=min(Console().width, 100))
    console.print(f"{len(texts)} text(s) -> embeddings {list(emb.shape)} from {source}")
    console.print("embeddings")
    t = Table(box=box.SIMPLE_HEAD, padding=(0, 1))
    for col, just in (("#", "right"), ("tokens", "right"), ("norm", "right")):
        t.add_column(col, justify=just, no_wrap=True)
    t.add_column("first values", no_wrap=True)
    t.add_column("text", overflow="ellipsis", no_wrap=True, ratio=1)
    for i, text in enumerate(texts[:MAX_TABLE]):
        head = " ".join(f"{v:+.3f}" for v in emb[i, :3])
        tokens = f"{lengths[i]}" + ("*" if truncated[i] else "")
        t.add_row(str(i), tokens, f"{np.linalg.norm(emb[i]):.3f}", head, " ".join(text.split()))
    console.print(t)
    if any(truncated[:MAX_TABLE]):
        console.print("* cut at the model's max_seq_len")
    if len(texts) > MAX_TABLE:
        console.print(f"(first {MAX_TABLE} of {len(texts)} texts shown; use --json or -o for all)")
    if len(texts) >= 2:
        n = min(len(texts), MAX_TABLE)
        console.print("cosine similarity")
        ct = Table(box=None, padding=(0, 1))
        ct.add_column("", justify="right", no_wrap=True)
        for j in range(n):
            ct.add_column(str(j), justify="right", no_wrap=True)
        for i in range(n):
            ct.add_row(str(i), *[f"{cos[i, j]:.2f}" for j in range(n)])
        console.print(ct)


@click.command("run", epilog="Contract and options: docs/spec.md.")
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--text", "texts", multiple=True, help="A text to embed (repeat for several).")
@click.option(
    "--input-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help='Texts, one per line or JSON lines ({"text": ...}); or .npz arrays for any model.',
)
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True)
@click.option("--batch-size", type=BoundedInt(1, 4096), default=16, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Save the outputs to an .npz file (texts: embeddings and cosine).",
)
def command(model, texts, input_file, backend, batch_size, as_json, output):
    """Run MODEL (.onnx or engine) on texts or arrays and summarise the outputs."""
    from sparse_attn.fileio import atomic_output, check_output_path
    from sparse_attn.runtime import Runtime
    from sparse_attn.runtime.text import cosine_matrix, read_text_file

    if output is not None:
        check_output_path(output, what="-o", suffixes=(".npz",), inputs=[model, input_file])
    rt = Runtime(model, backend=backend)
    info = _model_info(rt, model)
    npz = input_file is not None and input_file.suffix.lower() == ".npz"
    if npz or not rt.is_text_model:
        if texts:
            raise InvalidInputError(
                f"{model} is not a text model (inputs {rt.input_names}); pass --input-file F.npz"
                if not rt.is_text_model
                else "--text cannot be combined with an .npz --input-file; give one of them"
            )
        if input_file is None:
            raise InvalidInputError(
                f"no input: pass --input-file F.npz with arrays named {rt.input_names}"
            )
        if not npz:
            raise InvalidInputError(
                f"{model} is not a text model; --input-file must be an .npz of arrays named "
                f"{rt.input_names}"
            )
        out = rt.run(_load_npz(input_file))
        summary = _output_summary(out)
        saved = {}
        if output is not None:
            with atomic_output(output) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, **out)
            saved = {"saved_outputs": str(output)}
        if as_json:
            click.echo(json.dumps({**info, "outputs": summary, **saved}))
        else:
            _print_summary(info, summary)
            if saved:
                click.echo(f"wrote {output}")
        return
    all_texts = list(texts)
    if input_file is not None:
        all_texts += read_text_file(input_file)
    if not all_texts:
        raise InvalidInputError("no texts: pass --text T (repeatable) or --input-file F")
    if "logits" in rt.output_names:
        from sparse_attn.cli.models_cli import run_language_model

        run_language_model(rt, info, all_texts, batch_size, as_json, output)
        return
    emb, lengths, truncated, source = _run_texts(rt, all_texts, batch_size, not as_json)
    cos = cosine_matrix(emb)
    summary = _output_summary({"embeddings": emb})
    saved = {}
    if output is not None:
        with atomic_output(output) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, embeddings=emb, cosine=cos)
        saved = {"saved_outputs": str(output)}
    if as_json:
        click.echo(
            json.dumps(
                {
                    **info,
                    "outputs": summary,
                    "embedding_source": source,
                    "num_texts": len(all_texts),
                    "embedding_dim": int(emb.shape[1]),
                    "tokens": lengths,
                    "truncated": truncated,
                    "norms": [float(x) for x in np.linalg.norm(emb, axis=1)],
                    "cosine": np.round(cos, 6).tolist(),
                    "embeddings": np.round(emb.astype(np.float64), 6).tolist(),
                    **saved,
                }
            )
        )
    else:
        _print_summary(info, summary)
        _print_text_result(all_texts, emb, lengths, truncated, source, cos)
        if saved:
            click.echo(f"wrote {output}")
