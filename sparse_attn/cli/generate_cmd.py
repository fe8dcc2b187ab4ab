"""``sparse-attn generate MODEL --prompt TEXT [--max-new-tokens N] [--stream]``.

``MODEL`` is a generation export (the directory written by ``sparse-attn export --model PATH
--task generate -o DIR``, or its ``prefill.onnx``). Each ``--prompt`` is tokenized with the
checkpoint's tokenizer (``--chat``: as one user turn of its chat template); several prompts
run as one left-padded batch. Greedy by default; ``--temperature T > 0`` samples (with
``--top-k``, ``--top-p``, ``--seed``). Generation stops at the checkpoint's stop tokens
(``generation_config.json``) or after ``--max-new-tokens``.

Every option and prompt is checked before the model is loaded: an empty prompt, a prompt
longer than the export's ``max_seq_len``, ``--max-new-tokens`` < 1 or ``--temperature`` < 0
exit with code 2 and one line on stderr.
"""

from __future__ import annotations

import json
import sys
import time

import click


@click.command("generate")
@click.argument("model", type=click.Path(dir_okay=True, file_okay=True))
@click.option("--prompt", "prompts", multiple=True, required=True, help="Prompt text (repeatable).")
@click.option("--max-new-tokens", type=int, default=32, show_default=True, help="Most new tokens.")
@click.option("--stream", is_flag=True, help="Print tokens as they are generated (one prompt).")
@click.option(
    "--temperature",
    type=float,
    default=0.0,
    show_default=True,
    help="0 = greedy; > 0 samples from softmax(logits / T).",
)
@click.option(
    "--top-k", type=int, default=0, show_default=True, help="Sample among k tokens (0 = all)."
)
@click.option("--top-p", type=float, default=1.0, show_default=True, help="Nucleus sampling mass.")
@click.option("--seed", type=int, default=None, help="Sampling seed (same seed, same text).")
@click.option("--chat", is_flag=True, help="Apply the checkpoint's chat template to each prompt.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object (tokens, texts, timing)."
)
def command(
    model, prompts, max_new_tokens, stream, temperature, top_k, top_p, seed, chat, as_json
) -> None:
    """Generate text with a generation export (prefill: sparse op; decode: bounded cache)."""
    from sparse_attn.errors import InvalidInputError
    from sparse_attn.runtime.generate import Generator, check_options

    opts = check_options(max_new_tokens, temperature, top_k, top_p, seed)
    for i, p in enumerate(prompts):
        if not p.strip():
            raise InvalidInputError(f"--prompt number {i + 1} is empty; give some text")
    if stream and len(prompts) > 1:
        raise InvalidInputError("--stream takes one --prompt; drop --stream for a batch")
    gen = Generator(model)
    ids = gen.encode(list(prompts), chat=chat)
    ids, mask = gen.prepare(ids)
    kw = dict(
        max_new_tokens=opts.max_new_tokens,
        temperature=opts.temperature,
        top_k=opts.top_k,
        top_p=opts.top_p,
        seed=opts.seed,
    )
    it = gen.stream(ids, mask, **kw)
    t0 = time.perf_counter()
    steps, first, shown = [], None, ""
    for tok in it:
        if first is None:
            first = time.perf_counter() - t0
        steps.append(tok)
        if stream and not as_json:
            text = gen.decode_text(gen._strip([int(t[0]) for t in steps]))
            click.echo(text[len(shown) :], nl=False)
            sys.stdout.flush()
            shown = text
    total = time.perf_counter() - t0
    rows = [[int(t[b]) for t in steps] for b in range(ids.shape[0])]
    texts = [gen.decode_text(gen._strip(r)) for r in rows]
    n = len(steps)
    rate = (n - 1) / (total - first) if n > 1 and total > first else None
    if as_json:
        click.echo(
            json.dumps(
                {
                    "model": str(model),
                    "prompt_tokens": [int(x) for x in mask.sum(axis=1)],
                    "tokens": rows,
                    "texts": texts,
                    "time_to_first_token_s": first,
                    "decode_tokens_per_s": rate,
                    "total_s": total,
                }
            )
        )
        return
    if stream:
        click.echo("")
    else:
        for i, t in enumerate(texts):
            if len(texts) > 1:
                click.echo(f"[{i}] ", nl=False)
            click.echo(t)
    rate_s = f", {rate:.1f} tokens/s after it" if rate else ""
    click.echo(f"{n} new token(s) per prompt; first token after {first:.2f} s{rate_s}", err=True)


def export_for_generation(
    model_name, family_opts, pattern, layers, block_size, max_seq_len, causal, dtype, output
) -> None:
    """``sparse-attn export --model PATH|NAME --task generate -o DIR`` (checked before any work)."""
    from pathlib import Path

    from sparse_attn.errors import InvalidInputError
    from sparse_attn.export import FAMILIES
    from sparse_attn.export.generate import export_checkpoint

    if model_name in FAMILIES and model_name != "hf":
        raise InvalidInputError(
            f"--task generate takes a causal LM checkpoint directory or a built-in model "
            f"(e.g. gemma3-270m), not --model {model_name}"
        )
    if family_opts or causal:
        flags = sorted("--" + k.replace("_", "-") for k in family_opts) + (
            ["--causal"] if causal else []
        )
        raise InvalidInputError(f"option(s) {', '.join(flags)} do not apply to --task generate")
    if Path(output).is_file():
        raise InvalidInputError(f"-o {output} is a file; --task generate writes a directory")
    res = export_checkpoint(
        model_name,
        output,
        block_size=block_size,
        max_seq_len=max_seq_len,
        dtype=dtype,
        pattern=pattern,
        layers=layers,
    )
    click.echo(f"wrote {res.directory}")
