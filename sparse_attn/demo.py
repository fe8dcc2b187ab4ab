"""The main job end to end (``make demo``): sparse MiniLM exported, built, served and checked.

``python -m sparse_attn.demo --out artifacts/demo``:

1. exports all-MiniLM-L6-v2 with the default sparse pattern
   (``sparse_attn.export.minilm.DEFAULT_PATTERN``) to ``OUT/minilm.onnx``;
2. builds the engine: TensorRT where it is present, else the ONNX Runtime optimised model
   (``sparse_attn.engines.build_engine``);
3. serves a handful of real multi-sentence texts through :class:`sparse_attn.Runtime`;
4. checks the engine's outputs against the PyTorch reference (``sparse-attn check``);
5. measures latency (batch 1, per text) and compares the sparse sentence embeddings with
   dense all-MiniLM-L6-v2 (Hugging Face ``BertModel``, full attention, mean pooling);
6. writes ``OUT/report.json`` and exits 0 when the accuracy check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from sparse_attn.errors import InvalidInputError, SparseAttnError

#: Real multi-sentence texts of different lengths (about 8 to 400 tokens), so that the band
#: of the default pattern covers the short ones fully and the long ones only partly.
DEMO_TEXTS = (
    "The committee approved the budget on Tuesday. The vote was close, and two members asked "
    "for the spending on roads to be reviewed again in the spring.",
    "A good espresso needs freshly ground beans, water just below boiling and about nine bars "
    "of pressure. Too fine a grind makes it bitter; too coarse a grind makes it sour. Baristas "
    "adjust the grind a little every morning, because humidity changes how the coffee flows.",
    "Sparse attention lets a transformer read long documents. Instead of comparing every token "
    "with every other token, each token looks at a window of neighbours and at a few global "
    "tokens that summarise the whole text. The cost then grows linearly with the length of the "
    "document instead of quadratically, which makes inputs of thousands of tokens affordable. "
    "The price is that two distant tokens only meet through the global tokens, so a model must "
    "learn to route information through them. Models such as Longformer and BigBird showed "
    "that this works well for question answering and summarisation of long inputs.",
    "The river rose slowly for three days. On the first day the farmers moved their sheep to "
    "the hills; on the second they carried sacks of grain into the church, which stood on the "
    "highest ground in the village. On the third day the water broke through the old dyke and "
    "covered the lower fields, the mill and the road to the market town. Nobody was hurt. The "
    "school opened its doors to the families whose houses were flooded, and the baker kept his "
    "oven going all night so that everyone had bread in the morning. When the water went down a "
    "week later, the village found the fields covered in a thick layer of mud, which the older "
    "farmers said would make the next harvest the best in years. They were right: the wheat "
    "that summer stood taller than anyone could remember, and the mill worked late into the "
    "autumn. The dyke was rebuilt a metre higher, with stones from the quarry across the valley, "
    "and a small plaque on the church wall still marks how high the water came.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen. It takes place "
    "in the chloroplasts of plant cells, where chlorophyll absorbs red and blue light and "
    "reflects green, which is why leaves look green to us. The process has two stages. In the "
    "light-dependent reactions, energy from light splits water molecules, releasing oxygen and "
    "producing the energy carriers ATP and NADPH. In the Calvin cycle, which does not need light "
    "directly, those carriers power the fixation of carbon dioxide into three-carbon sugars that "
    "the plant uses to build glucose, starch and cellulose. Almost every food chain on Earth "
    "starts with this process, and the oxygen in the air we breathe was produced by it over "
    "billions of years. Scientists study it closely because improving its efficiency in crops "
    "could raise yields, and because artificial versions of it might one day turn sunlight into "
    "fuel. Some plants in hot, dry climates use variants of the process that save water by "
    "opening their pores only at night, storing carbon dioxide as an acid until the sun rises.",
    "Short texts are served too.",
    "The history of the bicycle is a story of small improvements. The first machines, built in "
    "the early nineteenth century, had no pedals at all: riders sat on a wooden frame between "
    "two wheels and pushed themselves along with their feet. They were fast on smooth paths "
    "but useless on the rutted roads of the time, and the fashion faded within a few years. "
    "Decades later, mechanics in France attached pedals and cranks directly to the front wheel. "
    "Because one turn of the pedals meant one turn of the wheel, builders made the front wheel "
    "larger and larger to go faster, until the high-wheeler stood taller than its rider. It was "
    "quick and elegant, but a sudden stop could throw the rider over the handlebars, and only "
    "young, daring men rode it. The safety bicycle of the 1880s changed everything. Two wheels "
    "of the same size, a chain driving the rear wheel and gears that let a small wheel turn "
    "quickly made the machine stable and easy to mount. A few years later the pneumatic tyre, "
    "filled with air, made the ride comfortable on ordinary roads. Sales exploded. Women in "
    "particular took to cycling, and the bicycle became a symbol of independence; it also "
    "changed clothing, because long skirts caught in the chain. Factories that learned to make "
    "light steel tubes, ball bearings and precise chains for bicycles later built motorcycles, "
    "cars and even aeroplanes: the Wright brothers ran a bicycle shop before they flew. In the "
    "twentieth century the basic design hardly changed, while materials did: aluminium, then "
    "carbon fibre, made frames lighter, and derailleurs gave riders ten, twenty or more gears. "
    "Today the bicycle is again growing in cities, helped by electric motors that flatten the "
    "hills, by new lanes that separate riders from traffic, and by the simple fact that, for "
    "short trips, nothing else is as cheap, as quiet and as healthy.",
)


def latency_stats(times_s: list[float]) -> dict:
    """Latency summary in milliseconds: ``p50``, ``p90`` (linear-interpolated percentiles),
    ``mean``, ``min``, ``max`` and the number of runs ``n``.

    Raises:
        InvalidInputError: for an empty list.
    """
    if not times_s:
        raise InvalidInputError("no latency samples")
    ms = np.asarray(times_s, dtype=np.float64) * 1e3
    return {
        "p50": float(np.percentile(ms, 50)),
        "p90": float(np.percentile(ms, 90)),
        "mean": float(ms.mean()),
        "min": float(ms.min()),
        "max": float(ms.max()),
        "n": int(ms.size),
    }


def dense_minilm_embeddings(texts, max_seq_len: int) -> np.ndarray:
    """Dense all-MiniLM-L6-v2 sentence embeddings ``float32 [B, 384]`` (full attention).

    Hugging Face ``BertModel`` on the offline files (local safetensors, no remote code), the
    model's own tokenizer, mean pooling over real tokens then L2 normalisation
    (sentence-transformers' ``1_Pooling`` + ``2_Normalize``, Reimers & Gurevych 2019).
    """
    import torch
    from transformers import BertModel

    from sparse_attn.runtime.text import TextEncoder, default_minilm_dir, mean_pool

    root = default_minilm_dir()
    enc = TextEncoder(root / "tokenizer.json", max_seq_len)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = BertModel.from_pretrained(str(root), attn_implementation="eager").eval()
    out = []
    for text in texts:  # one at a time: no padding at all in the dense reference
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            feeds, _ = enc.encode([text])
        ids = torch.from_numpy(feeds["input_ids"])
        mask = torch.from_numpy(feeds["attention_mask"])
        with torch.inference_mode():
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        emb = mean_pool(hidden.numpy(), feeds["attention_mask"])
        out.append(emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12))
    return np.concatenate(out).astype(np.float32)


def _build_engine(onnx_path: Path, out: Path, backend: str) -> tuple[Path, str, str | None]:
    """Build the serving artifact with ``sparse_attn.engines.build_engine``.

    Returns:
        ``(path, backend, note)``: TensorRT engine where TensorRT and a GPU are usable (or
        asked for), else the ONNX Runtime optimised model; ``note`` says why TensorRT was not
        used.
    """
    from sparse_attn import engines

    note = None
    if backend == "auto":
        reason = engines.tensorrt_unavailable_reason()
        backend = "tensorrt" if reason is None else "onnxruntime"
        if reason is not None:
            note = f"TensorRT not used: {reason}; built the ONNX Runtime optimised model"
    path = out / ("minilm.engine" if backend == "tensorrt" else "minilm.ort.onnx")
    engines.build_engine(onnx_path, path, backend)
    return path, backend, note


def run_demo(
    out: Path,
    *,
    pattern: str | None = None,
    block_size: int | None = None,
    max_seq_len: int | None = None,
    backend: str = "auto",
    repeats: int = 5,
    texts=DEMO_TEXTS,
) -> dict:
    """Run the whole demo and write ``out/report.json``; returns the report dict.

    Args:
        out: output directory (created).
        pattern / block_size / max_seq_len: export settings; default the MiniLM family's
            defaults (``DEFAULT_PATTERN``, ``DEFAULT_BLOCK_SIZE``, ``DEFAULT_MAX_SEQ_LEN``).
        backend: ``auto`` (TensorRT if present, else ONNX Runtime), ``tensorrt`` or
            ``onnxruntime``.
        repeats: timed runs per text (after one warm-up run).

    Raises:
        InvalidInputError: bad arguments. UnsupportedEnvironmentError: missing packages or
        ``backend="tensorrt"`` without TensorRT.
    """
    from sparse_attn.export import get_family
    from sparse_attn.layout import compile_layout
    from sparse_attn.runtime import Runtime
    from sparse_attn.runtime.compare import check_model
    from sparse_attn.runtime.text import cosine_matrix

    if backend not in ("auto", "tensorrt", "onnxruntime"):
        raise InvalidInputError(f"backend must be auto, tensorrt or onnxruntime, got {backend!r}")
    if repeats < 1:
        raise InvalidInputError(f"repeats must be >= 1, got {repeats}")
    minilm = get_family("minilm")
    pattern = pattern or minilm.DEFAULT_PATTERN
    block_size = int(block_size or minilm.DEFAULT_BLOCK_SIZE)
    max_seq_len = int(max_seq_len or minilm.DEFAULT_MAX_SEQ_LEN)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    print(
        f"[1/5] export MiniLM, pattern {pattern!r}, block {block_size}, max_seq_len {max_seq_len}"
    )
    onnx_path = out / "minilm.onnx"
    if onnx_path.exists():
        onnx_path.unlink()
    onnx_path = Path(
        minilm.export_onnx(
            onnx_path,
            pattern=pattern,
            block_size=block_size,
            max_seq_len=max_seq_len,
            dtype="float32",
            causal=False,
        )
    )
    stats = compile_layout(
        pattern, seq_len=max_seq_len, block_size=block_size, num_heads=12
    ).stats()

    print(f"[2/5] build engine (backend {backend})")
    engine_path, engine_backend, note = _build_engine(onnx_path, out, backend)
    if note:
        print(f"      {note}")

    print(f"[3/5] serve {len(texts)} texts with Runtime({engine_path.name})")
    rt = Runtime(engine_path, backend=engine_backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sparse_emb = rt.embed(list(texts), batch_size=len(texts))
        lengths = rt.encoder.encode_detailed(list(texts), rt.inputs)[1]

    print("[4/5] accuracy against the PyTorch reference")
    reference = Runtime(onnx_path, backend="torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        acc, _, _, _ = check_model(
            engine_path, engine_backend, texts=list(texts), runtime=rt, reference=reference
        )

    print(f"[5/5] latency ({repeats} runs per text, batch 1) and dense MiniLM comparison")
    times = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for text in texts:
            feeds = rt.encode([text])
            rt.run(feeds)  # warm-up
            for _ in range(repeats):
                t = time.perf_counter()
                rt.run(feeds)
                times.append(time.perf_counter() - t)
    dense = dense_minilm_embeddings(texts, max_seq_len)
    both = cosine_matrix(np.concatenate([sparse_emb, dense]))
    n = len(texts)
    cos = [float(both[i, n + i]) for i in range(n)]

    report = {
        "model": "minilm (all-MiniLM-L6-v2, 6 layers, 12 heads, hidden 384)",
        "pattern": pattern,
        "block_size": block_size,
        "max_seq_len": max_seq_len,
        "density": {
            "seq_len": max_seq_len,
            "density_tokens": stats["density_tokens"],
            "density_blocks": stats["density_blocks"],
        },
        "onnx": str(onnx_path),
        "engine": str(engine_path),
        "backend": rt.backend,
        "engine_note": note,
        "accuracy": acc,
        "latency_ms": {**latency_stats(times), "batch": 1},
        "dense_similarity": {
            "reference": "dense all-MiniLM-L6-v2 (Hugging Face BertModel, full attention)",
            "cosine_per_text": cos,
            "tokens_per_text": lengths,
            "min": float(min(cos)),
            "mean": float(np.mean(cos)),
        },
        "texts": [t if len(t) <= 80 else t[:77] + "..." for t in texts],
        "passed": bool(acc["passed"]),
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            **_versions(),
        },
        "wall_s": round(time.perf_counter() - t0, 2),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _versions() -> dict:
    import importlib.metadata as md

    vers = {}
    for pkg in ("torch", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "transformers"):
        try:
            vers[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return vers


def main(argv: list[str] | None = None) -> int:
    """Command line of ``python -m sparse_attn.demo``; returns the exit code."""
    ap = argparse.ArgumentParser(
        prog="python -m sparse_attn.demo", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--out", type=Path, default=Path("artifacts/demo"), help="output directory")
    ap.add_argument("--pattern", default=None, help="pattern spec (default: MiniLM's default)")
    ap.add_argument("--block-size", type=int, default=None)
    ap.add_argument("--max-seq-len", type=int, default=None)
    ap.add_argument("--backend", default="auto", choices=["auto", "tensorrt", "onnxruntime"])
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per text")
    args = ap.parse_args(argv)
    from sparse_attn.cli import quiet_third_party

    quiet_third_party()
    try:
        report = run_demo(
            args.out,
            pattern=args.pattern,
            block_size=args.block_size,
            max_seq_len=args.max_seq_len,
            backend=args.backend,
            repeats=args.repeats,
        )
    except SparseAttnError as exc:
        print(f"sparse-attn demo: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return exc.exit_code
    acc = report["accuracy"]
    lat = report["latency_ms"]
    ds = report["dense_similarity"]
    print(
        f"model {report['model']}\npattern {report['pattern']} (density {report['density']['density_tokens']:.3f} "
        f"of token pairs at S={report['max_seq_len']})\nbackend {report['backend']}: latency p50 "
        f"{lat['p50']:.1f} ms, p90 {lat['p90']:.1f} ms (batch 1)"
    )
    for name, m in acc["outputs"].items():
        print(
            f"accuracy {name}: max_abs_err {m.get('max_abs_err', float('nan')):.3g}, "
            f"cosine_min {m.get('cosine_min', float('nan')):.7f}: {'passed' if m['passed'] else 'FAILED'}"
        )
    print(
        "sparse vs dense MiniLM cosine per text: "
        + ", ".join(
            f"{c:.4f} ({n} tok)"
            for c, n in zip(ds["cosine_per_text"], ds["tokens_per_text"], strict=True)
        )
    )
    print(f"report: {args.out / 'report.json'}  passed: {str(report['passed']).lower()}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
