"""Accuracy of a backend against the PyTorch reference: metrics, report, Polygraphy files.

``check_model(path, backend)`` runs the backend and the eager PyTorch model rebuilt from the
file's metadata on the same inputs (real texts for text models, seeded random tensors for
``attention``) and compares every output (:func:`compare_arrays`). The report is the JSON
object of ``sparse-attn check --json`` (docs/spec.md).

Metric definitions (``got`` = backend, ``exp`` = reference, both upcast to float64):

* ``max_abs_err = max |got - exp|``
* ``max_rel_err = max |got - exp| / |exp|`` over elements with ``|exp| >= atol`` (below that
  the absolute tolerance governs and a relative error is not meaningful); 0 if none.
* ``mismatch_fraction``: fraction of elements with ``|got - exp| > atol + rtol * |exp|``
  (``numpy.isclose`` semantics), a NaN/Inf that differs counting as a mismatch.
* ``cosine_min`` / ``cosine_mean``: cosine similarity of each row along the last axis
  (for ``[B, E]`` embeddings: per text).
* ``worst``: index, got and expected of the element with the largest ``|got - exp|``.
* ``passed``: ``mismatch_fraction <= tolerance.max_mismatch_fraction`` and, for embedding
  outputs (rank 2), ``cosine_min >= tolerance.min_cosine``.

Tolerances are per dtype (:data:`TOLERANCES`): fp16 rounding of activations through six
transformer layers needs looser bounds than fp32 kernel-order differences. The design follows
Polygraphy's comparator (per-output tolerances, error statistics, worst element).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from sparse_attn import opspec
from sparse_attn.opspec import Tolerance
from sparse_attn.runtime.text import find_tokenizer_file

#: Real multi-sentence texts used by ``check`` and the demo for text models.
CHECK_TEXTS = (
    "Sparse attention lets a transformer read long documents. Each token looks at its "
    "neighbours and at a few global tokens, so the cost grows linearly with the length.",
    "The river flooded the valley after three days of rain. Farmers moved their animals to "
    "higher ground, and the village school opened its doors to families who lost their homes.",
    "A good espresso needs freshly ground beans, water just below boiling and about nine bars "
    "of pressure. Too fine a grind makes it bitter; too coarse a grind makes it sour.",
    "The committee approved the budget on Tuesday.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen. It happens in "
    "the chloroplasts of plant cells, where chlorophyll absorbs red and blue light and reflects "
    "green. Without it, almost no life on Earth could exist, because nearly every food chain "
    "starts with a plant or an alga that captures the energy of the sun.",
)


#: Tolerance by the model's dtype (``sparse_attn.dtype`` metadata): the ``"model"`` rows of
#: the op's one tolerance table (``opspec.SCHEMA.tolerances``).
TOLERANCES = dict(opspec.SCHEMA.tolerances["model"])


def tolerance_for(dtype: str | np.dtype | None) -> Tolerance:
    """Tolerance of a model dtype name (``float16``/``bfloat16`` -> fp16 bounds, else fp32)."""
    name = np.dtype(dtype).name if dtype not in (None, "", "bfloat16") else (dtype or "float32")
    return opspec.tolerance("model", name)


def as_tolerance(tol: Tolerance | tuple[float, float]) -> Tolerance:
    """A :class:`~sparse_attn.opspec.Tolerance` from one, or from an ``(atol, rtol)`` pair."""
    if isinstance(tol, Tolerance):
        return tol
    atol, rtol = tol
    return Tolerance(float(atol), float(rtol))


def _row_cosines(got: np.ndarray, exp: np.ndarray) -> np.ndarray:
    g = got.reshape(-1, got.shape[-1]) if got.ndim else got.reshape(1, 1)
    e = exp.reshape(-1, exp.shape[-1]) if exp.ndim else exp.reshape(1, 1)
    num = (g * e).sum(axis=1)
    den = np.linalg.norm(g, axis=1) * np.linalg.norm(e, axis=1)
    both_zero = (np.linalg.norm(g, axis=1) == 0) & (np.linalg.norm(e, axis=1) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    return np.where(both_zero, 1.0, cos)


def compare_arrays(
    got, expected, tol: Tolerance | tuple[float, float], embedding: bool | None = None
) -> dict:
    """Compare one output with its reference: the project's one comparator.

    Used by the export-time check, ``sparse-attn check`` and the tests (``tests/testing.py``).

    Args:
        got: output (numpy array, or a torch tensor: any float/int dtype).
        expected: reference output, same shape.
        tol: tolerance to apply (a :class:`Tolerance` or ``(atol, rtol)``).
        embedding: whether ``passed`` also needs ``cosine_min >= tol.min_cosine``;
            default: outputs of rank 2.

    Returns:
        dict with ``shape``, ``dtype``, ``max_abs_err``, ``max_rel_err``, ``mismatch_fraction``,
        ``cosine_min``, ``cosine_mean``, ``worst`` (``index``, ``got``, ``expected``),
        ``tolerance`` (the :class:`Tolerance` fields) and ``passed`` (see the module docstring).
    """
    tol = as_tolerance(tol)
    got = _as_numpy(got)
    expected = _as_numpy(expected)
    base = {"shape": list(expected.shape), "dtype": got.dtype.name, "tolerance": asdict(tol)}
    if got.shape != expected.shape:
        return {
            **base,
            "passed": False,
            "error": f"shape {list(got.shape)} differs from the reference's {list(expected.shape)}",
        }
    g = got.astype(np.float64)
    e = expected.astype(np.float64)
    if g.size == 0:
        return {
            **base,
            "max_abs_err": 0.0,
            "max_rel_err": 0.0,
            "mismatch_fraction": 0.0,
            "cosine_min": 1.0,
            "cosine_mean": 1.0,
            "worst": None,
            "passed": True,
        }
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(g - e)
    same_nonfinite = (
        (~np.isfinite(g)) & (~np.isfinite(e)) & ((g == e) | (np.isnan(g) & np.isnan(e)))
    )
    diff = np.where(same_nonfinite, 0.0, diff)
    diff = np.where(np.isnan(diff), np.inf, diff)
    bound = tol.atol + tol.rtol * np.abs(e)
    mismatch = diff > np.where(np.isfinite(bound), bound, np.inf)
    mismatch |= ~np.isfinite(diff)
    flat = int(np.argmax(diff))
    idx = tuple(int(i) for i in np.unravel_index(flat, diff.shape))
    rel_mask = np.abs(e) >= tol.atol
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(rel_mask, diff / np.where(rel_mask, np.abs(e), 1.0), 0.0)
    finite_g = np.where(np.isfinite(g), g, 0.0)
    finite_e = np.where(np.isfinite(e), e, 0.0)
    cos = _row_cosines(finite_g, finite_e)
    rank2 = expected.ndim == 2 if embedding is None else embedding
    mismatch_fraction = float(mismatch.mean())
    passed = mismatch_fraction <= tol.max_mismatch_fraction and bool(np.isfinite(diff).all())
    if rank2:
        passed = passed and float(cos.min()) >= tol.min_cosine
    return {
        **base,
        "max_abs_err": float(diff.max()),
        "max_rel_err": float(rel.max()),
        "mismatch_fraction": mismatch_fraction,
        "num_mismatches": int(mismatch.sum()),
        "cosine_min": float(cos.min()),
        "cosine_mean": float(cos.mean()),
        "embedding": bool(rank2),
        "worst": {"index": list(idx), "got": float(g[idx]), "expected": float(e[idx])},
        "passed": bool(passed),
    }


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":  # numpy has no bfloat16: widen exactly
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def describe_failure(name: str, res: dict) -> str:
    """One line on a failed comparison: worst element, errors, share out of tolerance."""
    if "error" in res:
        return f"{name}: {res['error']}"
    w = res.get("worst") or {}
    tol = res.get("tolerance", {})
    return (
        f"{name}: {res.get('num_mismatches', 0)} elements "
        f"({100 * res.get('mismatch_fraction', 0.0):.3g}%) exceed atol={tol.get('atol', 0):g} "
        f"rtol={tol.get('rtol', 0):g}; worst at index {tuple(w.get('index', ()))}: got "
        f"{w.get('got')!r}, expected {w.get('expected')!r}; max_abs_err="
        f"{res.get('max_abs_err', float('nan')):.3g} max_rel_err="
        f"{res.get('max_rel_err', float('nan')):.3g}"
    )


def compare_outputs(
    got: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray], tol: Tolerance
) -> dict:
    """Compare every reference output; an output missing from ``got`` fails.

    Returns:
        ``{output_name: compare_arrays(...)}`` in the reference's order.
    """
    out = {}
    for name, exp in expected.items():
        if name not in got:
            out[name] = {"passed": False, "error": f"backend produced no output {name!r}"}
            continue
        out[name] = compare_arrays(got[name], exp, tol)
    return out


def checks_with_texts(rt) -> bool:
    """True when ``check`` feeds ``rt`` real texts: a text model whose tokenizer is known."""
    return rt.is_text_model and find_tokenizer_file(rt.info) is not None


def check_inputs(rt, *, seed: int = 0, texts: Sequence[str] | None = None) -> dict:
    """Inputs ``check`` runs: tokenized texts for text models, seeded random tensors otherwise.

    For non-text models, and text models without a known tokenizer (the random-weight
    families bigbird, longformer, mistral), every float input is ``N(0, 1)`` from
    ``numpy.random.default_rng(seed)``, batch 2, sequence length ``max_seq_len`` for static
    models else ``max_seq_len - 3`` (a ragged length that exercises the crop); a padding-mask
    input marks the last quarter of the second example as padding; ``input_ids`` are drawn in
    ``[0, vocab_size)`` and other integer inputs in ``[0, 2)``.

    Args:
        rt: a :class:`~sparse_attn.runtime.Runtime`.
    """
    if checks_with_texts(rt):
        if not texts and rt.metadata.get("sparse_attn.layer_patterns"):
            return _window_crossing_feeds(rt)
        return rt.encode(list(texts or CHECK_TEXTS))
    vocab = getattr(rt.info, "vocab_size", None) or 2
    rng = np.random.default_rng(seed)
    max_len = rt.max_seq_len or 64
    s = max_len if rt.info.static_seq_len or max_len <= 4 else max_len - 3
    batch = 2
    feeds = {}
    for spec in rt.inputs:
        shape = []
        for axis, d in enumerate(spec.shape):
            if isinstance(d, int) and d >= 0:
                shape.append(d)
            else:
                shape.append(batch if axis == 0 else s)
        dt = np.dtype(spec.dtype)
        if spec.name in ("key_padding_mask", "attention_mask"):
            arr = np.ones(shape, dtype=bool)
            if len(shape) == 2 and shape[0] > 1:
                arr[1, shape[1] - max(1, shape[1] // 4) :] = False
            arr = arr.astype(dt)
        elif np.issubdtype(dt, np.floating):
            arr = rng.standard_normal(shape).astype(dt)
        elif dt == np.bool_:
            arr = np.ones(shape, dtype=bool)
        else:
            high = vocab if spec.name == "input_ids" else 2
            arr = rng.integers(0, high, size=shape).astype(dt)
        feeds[spec.name] = arr
    return feeds


def _window_crossing_feeds(rt) -> dict:
    """A checkpoint export's default check inputs: the project's long text, tokenized with the
    model's own tokenizer, cut to a length longer than the model's largest window plus a
    block and not a multiple of the block (:func:`sparse_attn.models.family.check_length_for`),
    and a second row two thirds as long (right padding)."""
    from sparse_attn.models.family import check_length_for, long_text

    table = json.loads(rt.metadata["sparse_attn.layer_patterns"])
    block = int(rt.metadata.get("sparse_attn.block_size", 64))
    length = check_length_for([r.get("window") for r in table], block, rt.max_seq_len or 512)
    tok = rt.encoder.tokenizer
    ids: list[int] = []
    text = long_text()
    while len(ids) < length:
        more = tok.encode(text).ids
        if not more:
            break
        ids = ids + more if ids else more
    ids = ids[:length]
    rows = [ids, ids[: max(1, 2 * len(ids) // 3)]]
    s = len(ids)
    input_ids = np.full((2, s), rt.encoder.pad_id, dtype=np.int64)
    mask = np.zeros((2, s), dtype=np.int64)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    feeds = {"input_ids": input_ids, "attention_mask": mask}
    specs = {sp.name: sp for sp in rt.inputs}
    return {k: v.astype(specs[k].dtype) for k, v in feeds.items() if k in specs}


def check_model(
    path: str | os.PathLike,
    backend: str = "auto",
    *,
    seed: int = 0,
    texts: Sequence[str] | None = None,
    runtime=None,
    reference=None,
) -> tuple[dict, dict, dict, dict]:
    """Run ``backend`` and the PyTorch reference on the same inputs and compare.

    Args:
        path: model file (``.onnx`` or engine).
        backend: backend under test (``auto`` resolves as in :class:`Runtime`).
        seed: seed of the random inputs of non-text models.
        texts: texts for text models (default :data:`CHECK_TEXTS`).
        runtime / reference: already-open :class:`Runtime` objects to reuse (optional).

    Returns:
        ``(report, inputs, outputs, reference_outputs)``: the report dict (keys ``model``,
        ``family``, ``backend``, ``reference``, ``dtype``, ``inputs`` (name -> shape),
        ``outputs`` (name -> metrics), ``passed``) and the arrays compared.

    Raises:
        InvalidInputError / UnsupportedEnvironmentError: from opening either runtime.
    """
    from sparse_attn.runtime.runtime import Runtime

    rt = runtime if runtime is not None else Runtime(path, backend=backend)
    ref_name = "torch"
    if reference is None:
        reference, ref_name = _unmodified_reference(rt)
    ref = reference if reference is not None else Runtime(path, backend="torch")
    feeds = check_inputs(rt, seed=seed, texts=texts)
    from_texts = checks_with_texts(rt)
    got = rt.run(feeds)
    exp = ref.run(feeds)
    if ref_name != "torch":
        got, exp = _zero_padded_rows(got, feeds), _zero_padded_rows(exp, feeds)
    tol = tolerance_for(rt.info.dtype)
    per_output = compare_outputs(got, exp, tol)
    report = {
        "model": str(Path(path)),
        "family": rt.info.family,
        "pattern": rt.metadata.get("sparse_attn.pattern"),
        "backend": rt.backend,
        "reference": ref_name,
        "dtype": rt.info.dtype or "float32",
        "seed": None if from_texts else seed,
        "num_texts": len(next(iter(feeds.values()))) if from_texts else None,
        "inputs": {k: list(v.shape) for k, v in feeds.items()},
        "outputs": per_output,
        "passed": bool(per_output) and all(v.get("passed") for v in per_output.values()),
    }
    return report, feeds, got, exp


def _unmodified_reference(rt):
    """The unmodified upstream model of a checkpoint export (the family's
    ``build_reference_model``), as ``(runner, name)``; ``(None, "torch")`` for other families.

    The runner has ``run(feeds) -> {name: numpy}``; the name says what it is (e.g.
    ``"transformers eager (unmodified)"``).
    """
    if not rt.info.family:
        return None, "torch"
    from sparse_attn.export import get_family

    try:
        builder = getattr(get_family(rt.info.family), "build_reference_model", None)
    except Exception:  # noqa: BLE001 - an unknown family falls back to the torch rebuild
        builder = None
    if builder is None:
        return None, "torch"
    module = builder(rt.info.model_config)
    return _ModuleRunner(module, [o.name for o in rt.outputs]), module.outputs_of


class _ModuleRunner:
    """``run(feeds)`` of an eager module returning ``{output: tensor}`` (numpy in and out)."""

    def __init__(self, module, order) -> None:
        self.module = module
        self.order = list(order)

    def run(self, feeds):
        import torch

        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}
        with torch.inference_mode():
            out = self.module(**tensors)
        res = {k: v.detach().float().numpy() for k, v in out.items()}
        return {k: res[k] for k in self.order if k in res} | {
            k: v for k, v in res.items() if k not in self.order
        }


def _zero_padded_rows(outputs, feeds):
    """Outputs with rows of padded positions (``attention_mask == 0``) set to 0.

    A padded query may see no key at all: the op returns 0 there, transformers' eager softmax
    a uniform average of masked values; neither is meaningful, so only real tokens compare.
    """
    mask = feeds.get("attention_mask")
    if mask is None:
        return outputs
    keep = np.asarray(mask) != 0
    out = {}
    for k, v in outputs.items():
        if v.ndim >= 3 and v.shape[:2] == keep.shape:
            v = np.where(keep.reshape(keep.shape + (1,) * (v.ndim - 2)), v, 0).astype(v.dtype)
        out[k] = v
    return out


def save_polygraphy_outputs(
    outputs: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    runner_name: str = "sparse-attn-torch",
) -> Path:
    """Write outputs as a Polygraphy ``RunResults`` JSON (``polygraphy run --load-outputs``).

    Uses Polygraphy's own ``RunResults``/``IterationResult`` and its ``save`` method.

    Raises:
        UnsupportedEnvironmentError: if polygraphy is not installed.
    """
    RunResults, IterationResult, _ = _polygraphy()
    results = RunResults()
    it = IterationResult(
        outputs={k: np.asarray(v) for k, v in outputs.items()}, runner_name=runner_name
    )
    results.append((runner_name, [it]))
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(sys.stderr):
        results.save(str(p))
    return p


def save_polygraphy_inputs(feeds: Mapping[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Write one feed dict in Polygraphy's ``--load-inputs`` JSON format (``save_json``)."""
    _, _, save_json = _polygraphy()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(sys.stderr):
        save_json([{k: np.asarray(v) for k, v in feeds.items()}], str(p))
    return p


def polygraphy_inputs_path(outputs_path: str | os.PathLike) -> Path:
    """Where ``--save-outputs F`` puts the matching inputs: ``F`` with ``.inputs.json``."""
    p = Path(outputs_path)
    stem = p.name[: -len(".json")] if p.name.endswith(".json") else p.name
    return p.with_name(stem + ".inputs.json")


def _polygraphy():
    from sparse_attn.errors import UnsupportedEnvironmentError

    try:
        # Polygraphy logs to stdout (e.g. about the optional 'colored' module); keep stdout for
        # the command's own output (``check --json``).
        with contextlib.redirect_stdout(sys.stderr):
            from polygraphy.comparator import IterationResult, RunResults
            from polygraphy.json import save_json
    except ImportError as exc:
        raise UnsupportedEnvironmentError(
            "polygraphy is not installed; `pip install polygraphy` to use --save-outputs"
        ) from exc
    return RunResults, IterationResult, save_json


def format_report(report: dict) -> str:
    """Human-readable multi-line summary of a :func:`check_model` report."""
    lines = [
        f"model {report['model']} ({report.get('family')}, {report.get('dtype')}): "
        f"{report['backend']} vs {report['reference']}"
    ]
    for name, m in report["outputs"].items():
        if "error" in m:
            lines.append(f"  {name}: FAILED: {m['error']}")
            continue
        w = m["worst"] or {}
        lines.append(
            f"  {name} {m['shape']}: max_abs_err {m['max_abs_err']:.3g}, max_rel_err "
            f"{m['max_rel_err']:.3g}, mismatch {m['mismatch_fraction']:.3g}, cosine_min "
            f"{m['cosine_min']:.7f}, worst at {w.get('index')} got {w.get('got', 0):.6g} "
            f"expected {w.get('expected', 0):.6g} (atol {m['tolerance']['atol']:g}, rtol "
            f"{m['tolerance']['rtol']:g}) {'passed' if m['passed'] else 'FAILED'}"
        )
    lines.append("passed" if report["passed"] else "FAILED")
    return "\n".join(lines)


def dumps(report: dict) -> str:
    """One-line JSON of a report (``check --json``)."""
    return json.dumps(report, sort_keys=False, allow_nan=True)
