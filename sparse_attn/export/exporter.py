"""The generic export pipeline: PyTorch model -> checked ONNX file with the custom op.

:func:`export_model` is used by every family (see the contract in
``sparse_attn/export/__init__.py``). Steps, each failing loudly:

1. ``torch.onnx.export(..., dynamo=True)`` with named dynamic dims ``batch``/``seq_len``;
2. attach the block-sparse function bodies (:func:`attach_functions`) and refuse op
   identities that collide with standard ONNX ops (:func:`check_custom_identities`);
3. write metadata (``opspec.META_KEYS``), save to a temporary file next to the output;
4. reload and check that the dynamic dims are still symbolic (:func:`check_dynamic_dims`:
   a layout computed from a traced shape freezes S silently);
5. ``onnx.checker`` full check and strict shape inference;
6. ONNX Runtime (CPU) vs the eager PyTorch model on the check inputs with the project's
   comparator and tolerance table (``runtime.compare.compare_arrays``,
   ``opspec.tolerance("graph", dtype)``); log one line;
7. move the file into place (never over one of the declared input files).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from sparse_attn import opspec
from sparse_attn.errors import CheckFailedError, InvalidInputError, UnsupportedEnvironmentError
from sparse_attn.export import function_body
from sparse_attn.export import metadata as meta_mod
from sparse_attn.layout import BlockLayout
from sparse_attn.op_arrays import layout_from_node

#: Default ONNX opset of the default domain (torch 2.13's exporter default).
DEFAULT_OPSET = 20
#: A tolerance as accepted by :func:`export_model`: a Tolerance or ``(atol, rtol)``.
ToleranceLike = opspec.Tolerance | tuple[float, float]

log = logging.getLogger(__name__)
_DYNAMIC_DIMS = ("batch", "seq_len")


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and measured.

    Attributes:
        path: the written ONNX file.
        metadata: its ``metadata_props``.
        checks: per output ``{"name", "max_abs_err", "atol", "rtol", "passed"}`` (worst over
            the check inputs).
        summary: the one-line summary printed after the ORT run.
    """

    path: Path
    metadata: dict[str, str]
    checks: list[dict] = field(default_factory=list)
    summary: str = ""


def dynamic_axes_for(names, *, static_seq_len: bool, seq_axis: int) -> dict[str, dict[int, str]]:
    """The ``dynamic_axes`` argument of :func:`export_model` for the inputs ``names``.

    Axis 0 of each input is ``"batch"``; axis ``seq_axis`` is ``"seq_len"`` unless the
    sequence length is static (a layout that ``requires_static_seq_len``).
    """
    axes = {0: "batch"} if static_seq_len else {0: "batch", seq_axis: "seq_len"}
    return {name: dict(axes) for name in names}


# ----------------------------------------------------------------------------- checks
def check_custom_identities(model: onnx.ModelProto) -> None:
    """Refuse ops or functions that would shadow a standard ONNX op.

    Raises:
        InvalidInputError: a node of type ``opspec.OP_TYPE`` in the default domain, or a
            model-local function in the default domain (it would hide the standard op).
    """
    try:
        opspec.check_op_type_is_custom(opspec.DOMAIN, opspec.OP_TYPE)
        for node in model.graph.node:
            if node.op_type == opspec.OP_TYPE:
                opspec.check_op_type_is_custom(node.domain, node.op_type)
        for fn in model.functions:
            opspec.check_op_type_is_custom(fn.domain, fn.name)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from exc


def check_dynamic_dims(
    model: onnx.ModelProto, dynamic_axes: Mapping[str, Mapping[int, str]]
) -> None:
    """Check that every declared dynamic axis of the saved graph inputs is symbolic.

    Args:
        model: the saved model (reloaded from disk).
        dynamic_axes: input name -> {axis: dim name}.

    Raises:
        CheckFailedError: naming the input and axis whose dim is a fixed number (e.g. S frozen by
            a layout computed from a traced shape), or a declared input that is missing.
    """
    inputs = {v.name: v for v in model.graph.input}
    problems = []
    for name, axes in dynamic_axes.items():
        if name not in inputs:
            problems.append(f"input {name!r} is missing from the exported graph")
            continue
        dims = inputs[name].type.tensor_type.shape.dim
        for axis, dim_name in axes.items():
            if axis >= len(dims):
                problems.append(f"input {name!r} has rank {len(dims)}, no axis {axis}")
            elif not dims[axis].HasField("dim_param"):
                fixed = dims[axis].dim_value if dims[axis].HasField("dim_value") else "unknown"
                problems.append(
                    f"input {name!r} axis {axis} ({dim_name}) is fixed at {fixed} in the exported "
                    "graph instead of symbolic"
                )
    if problems:
        raise CheckFailedError(
            "dynamic shape check failed: "
            + "; ".join(problems)
            + ". A shape computed in Python from a traced input (e.g. a layout built from "
            "query.shape) freezes it; build layouts for max_seq_len outside forward()"
        )


# ----------------------------------------------------------------------------- functions
def _constant_arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    arrays = {t.name: t for t in model.graph.initializer}
    out: dict[str, object] = dict(arrays)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for a in node.attribute:
                if a.name == "value":
                    out[node.output[0]] = a.t
    return out


def attach_functions(model: onnx.ModelProto, max_seq_len: int | None = None) -> int:
    """Attach the block-sparse function body to every ``BlockSparseAttention`` node.

    Nodes with the same layout, scale and key-padding presence share one FunctionProto;
    when there are several such variants each node gets ``overload = "v<i>"`` (IR >= 10).
    The function imports the model's default-domain opset. Requests longer than the
    op's layout length make the body fail: ``max_seq_len`` when given (the generation
    export's prefill length), else the layout's ``seq_len`` as the node records it
    (:func:`sparse_attn.op_arrays.layout_from_node`).
    Modifies ``model`` in place.

    Returns:
        The number of functions attached (0 when the model has no such node).

    Raises:
        CheckFailedError: a node whose layout inputs are not constants, or an opset < 18.
    """
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise CheckFailedError("model imports no default-domain opset")
    consts = _constant_arrays(model)
    variants: dict[tuple, list[onnx.NodeProto]] = {}
    layouts: dict[tuple, tuple[BlockLayout, float, bool, int, int | None]] = {}
    for node in model.graph.node:
        if node.op_type != opspec.OP_TYPE or node.domain != opspec.DOMAIN:
            continue
        layout = layout_from_node(node, consts)  # seq_len from the node's metadata_props
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        scale = float(attrs.get("scale", 0.0))
        kpm_at = opspec.INPUT_NAMES.index("key_padding_mask")
        has_kpm = len(node.input) > kpm_at and node.input[kpm_at] != ""
        limit = max_seq_len or layout.seq_len
        hkv = function_body.static_kv_heads(model.graph, node.input[1])
        if hkv is not None and layout.num_heads % hkv:
            hkv = None  # not a divisor: the body's run-time check reports it
        key = (layout.layout_hash(), layout.block_size, scale, has_kpm, limit, hkv)
        variants.setdefault(key, []).append(node)
        layouts[key] = (layout, scale, has_kpm, limit, hkv)
    keep = [
        f for f in model.functions if not (f.domain == opspec.DOMAIN and f.name == opspec.OP_TYPE)
    ]
    del model.functions[:]
    model.functions.extend(keep)
    many = len(variants) > 1
    for i, (key, nodes) in enumerate(variants.items()):
        layout, scale, has_kpm, limit, hkv = layouts[key]
        overload = f"v{i}" if many else ""
        for node in nodes:
            node.overload = overload
        model.functions.append(
            function_body.build_function(
                layout,
                scale=scale,
                has_key_padding_mask=has_kpm,
                opset=opset,
                overload=overload,
                max_seq_len=limit,
                num_kv_heads=hkv,
            )
        )
    if variants:
        if not any(o.domain == opspec.DOMAIN for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(opspec.DOMAIN, opspec.OP_VERSION))
        if many and model.ir_version < 10:
            model.ir_version = 10
    return len(variants)


# ----------------------------------------------------------------------------- helpers
def _resolve_output(output_path, protected: Sequence) -> Path:
    out = Path(output_path)
    if out.suffix.lower() != ".onnx":
        raise InvalidInputError(f"output file must end with .onnx, got {str(out)!r}")
    if out.is_dir():
        raise InvalidInputError(f"output {str(out)!r} is a directory; give a file name")
    resolved = out.resolve()
    for p in protected:
        if Path(p).resolve() == resolved:
            raise InvalidInputError(
                f"refusing to overwrite input file {str(p)!r}; choose another -o path"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy()


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's warnings and progress prints (errors still propagate)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    buf = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels, strict=True):
            lg.setLevel(lvl)


def _ort_session(path: Path):
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - ORT is a project dependency
        raise UnsupportedEnvironmentError(
            "onnxruntime is not installed; install sparse-attn[cpu] to check exports"
        ) from exc
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "2") or 2)
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


# ----------------------------------------------------------------------------- pipeline
def export_model(
    model,
    example_inputs: Mapping[str, object],
    output_path,
    *,
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
    metadata: Mapping[str, str],
    check_inputs: Sequence[Mapping[str, object]] | None = None,
    tolerance: Mapping[str, ToleranceLike] | ToleranceLike | None = None,
    protected_paths: Sequence = (),
    opset: int = DEFAULT_OPSET,
    verbose: bool = True,
) -> ExportResult:
    """Export ``model`` to ONNX with the custom op, its function body and every check.

    Args:
        model: ``torch.nn.Module``; ``forward`` takes keyword tensors named like the ONNX
            inputs and returns a dict whose keys are ``output_names`` *in that order*.
        example_inputs: ordered ``{input_name: Tensor}`` used for tracing (ONNX input
            order). Dynamic axes must not be 0 or 1 here (torch.export specialises them).
        output_path: ``*.onnx`` file; parent directories are created.
        output_names: ONNX output names.
        dynamic_axes: input name -> ``{axis: "batch" | "seq_len"}``; ``seq_len`` ranges over
            1..``metadata["sparse_attn.max_seq_len"]``. Omit ``seq_len`` axes for a static S.
        metadata: from :func:`sparse_attn.export.metadata.build_metadata`.
        check_inputs: inputs (dicts of tensors) for the ORT-vs-PyTorch check; default
            ``[example_inputs]``.
        tolerance: a :class:`~sparse_attn.opspec.Tolerance` or ``(atol, rtol)`` for all
            outputs, or one per output name; default ``opspec.tolerance("graph", dtype)``.
        protected_paths: input files the export read (never overwritten).
        opset: default-domain opset.
        verbose: log the one-line summary (INFO) and the static-length notice (WARNING) on
            the ``sparse_attn.export.exporter`` logger.

    Returns:
        :class:`ExportResult`.

    Raises:
        InvalidInputError: bad output path, unknown dynamic dim names, outputs not in order.
        CheckFailedError: a failed check (export, dynamic dims, checker, shape inference, ORT
            comparison); the message names the check. The output file is not written.
    """
    out = _resolve_output(output_path, protected_paths)
    example_inputs = dict(example_inputs)
    _check_dynamic_axes(example_inputs, dynamic_axes)
    model = model.eval()
    _check_output_order(model, example_inputs, output_names)
    max_seq_len = int(metadata.get(opspec.meta_key("max_seq_len"), 0)) or None
    proto = _trace(model, example_inputs, output_names, dynamic_axes, max_seq_len, opset)
    _attach_bodies(proto)
    meta = _complete_metadata(proto, metadata)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.onnx")
    try:
        onnx.save(proto, str(tmp))
        _check_saved(tmp, dynamic_axes)
        result = _check_ort(model, tmp, check_inputs or [example_inputs], output_names, tolerance)
        result.metadata = meta
        if verbose:
            _log_summary(result, meta, out)
        failed = [c for c in result.checks if not c["passed"]]
        if failed:
            details = "; ".join(c.get("detail", c["name"]) for c in failed)
            raise CheckFailedError(f"ONNX Runtime output differs from PyTorch: {details}")
        os.replace(tmp, out)
        result.path = out
        return result
    finally:
        if tmp.exists():
            tmp.unlink()


# The stages of export_model, in order.
def _check_dynamic_axes(example_inputs: Mapping, dynamic_axes: Mapping) -> None:
    """Dynamic axes name known dims of existing inputs, with example sizes >= 2."""
    for name, axes in dynamic_axes.items():
        if name not in example_inputs:
            raise InvalidInputError(f"dynamic_axes names input {name!r} not in example_inputs")
        for axis, dim in axes.items():
            if dim not in _DYNAMIC_DIMS:
                raise InvalidInputError(
                    f"dynamic dim name must be one of {_DYNAMIC_DIMS}, got {dim!r}"
                )
            size = example_inputs[name].shape[axis]
            if size < 2:
                raise InvalidInputError(
                    f"example input {name!r} axis {axis} ({dim}) is {size}; use >= 2 so "
                    "torch.export keeps it dynamic"
                )


def _check_output_order(model, example_inputs: Mapping, output_names: Sequence[str]) -> None:
    """The eager model returns a dict whose keys are ``output_names`` in order."""
    import torch

    with torch.no_grad():
        eager = model(**example_inputs)
    if list(eager) != list(output_names):
        raise InvalidInputError(
            f"model returns outputs {list(eager)} but output_names is {list(output_names)}; "
            "return a dict in the ONNX output order"
        )


def _trace(model, example_inputs, output_names, dynamic_axes, max_seq_len, opset):
    """``torch.onnx.export(dynamo=True)`` with named dynamic dims; the ModelProto."""
    import torch

    seq = {"min": 1} if not max_seq_len else {"min": 1, "max": max_seq_len}
    dims = {
        "batch": torch.export.Dim("batch", min=1),
        "seq_len": torch.export.Dim("seq_len", **seq),
    }
    dynamic_shapes = {
        name: {axis: dims[d] for axis, d in dynamic_axes.get(name, {}).items()} or None
        for name in example_inputs
    }
    return onnx_proto(
        model,
        (),
        example_inputs,
        dynamic_shapes=dynamic_shapes,
        input_names=list(example_inputs),
        output_names=output_names,
        opset=opset,
    )


def onnx_proto(
    module,
    args: tuple,
    kwargs: dict | None,
    *,
    dynamic_shapes,
    input_names,
    output_names,
    opset: int,
    error: type[Exception] = CheckFailedError,
):
    """``torch.onnx.export(dynamo=True)`` of ``module(*args, **kwargs)``, quietly, under
    ``no_grad``; the ModelProto.

    Raises:
        error: the exporter failed (its message, whitespace-collapsed, up to 2000 chars).
    """
    import torch

    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(
                module,
                args,
                kwargs=kwargs,
                dynamo=True,
                dynamic_shapes=dynamic_shapes,
                input_names=list(input_names),
                output_names=list(output_names),
                opset_version=opset,
                verbose=False,
            )
    except Exception as exc:
        raise error(f"torch.onnx.export failed: {' '.join(str(exc).split())[:2000]}") from exc
    return program.model_proto


def _attach_bodies(proto: onnx.ModelProto) -> None:
    """Attach the function bodies, then refuse identities that shadow standard ONNX ops."""
    if attach_functions(proto) == 0:
        raise CheckFailedError(
            f"the exported graph holds no {opspec.QUALIFIED_NAME} node; call "
            "sparse_attn.export.symbolic.sparse_attention in the model's forward"
        )
    check_custom_identities(proto)


def _complete_metadata(proto: onnx.ModelProto, metadata: Mapping[str, str]) -> dict:
    """The family's metadata plus versions and I/O signatures, written into ``proto``."""
    meta = dict(metadata)
    meta.update(meta_mod.version_metadata())
    meta[opspec.meta_key("inputs")] = json.dumps(meta_mod.io_signature(proto.graph.input))
    meta[opspec.meta_key("outputs")] = json.dumps(meta_mod.io_signature(proto.graph.output))
    missing = meta_mod.missing_keys(meta)
    if missing:
        raise InvalidInputError(f"metadata lacks keys {missing}; use metadata.build_metadata")
    meta_mod.set_metadata(proto, meta)
    return meta


def _check_saved(path: Path, dynamic_axes: Mapping) -> None:
    """The saved file: dynamic dims still symbolic, ``onnx.checker``, strict shape inference."""
    saved = onnx.load(str(path))
    check_dynamic_dims(saved, dynamic_axes)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise CheckFailedError(f"onnx.checker failed: {exc}") from exc
    try:
        onnx.shape_inference.infer_shapes(saved, check_type=True, strict_mode=True)
    except Exception as exc:
        raise CheckFailedError(f"strict ONNX shape inference failed: {exc}") from exc


def _log_summary(result: ExportResult, meta: Mapping[str, str], out: Path) -> None:
    """The check line (INFO) and the static-length notice (WARNING): the caller (e.g. the CLI)
    decides what is shown."""
    log.info("%s", result.summary)
    if meta.get(opspec.meta_key("static_seq_len")) == "true":
        s = meta.get(opspec.meta_key("max_seq_len"))
        log.warning(
            "the pattern needs the end of the sequence, so %s has a static sequence "
            "length of %s tokens; pad every request to %s",
            out,
            s,
            s,
        )


def _tolerance_of(tolerance, name: str, dtype) -> opspec.Tolerance:
    from sparse_attn.runtime.compare import as_tolerance

    if isinstance(tolerance, Mapping):
        return as_tolerance(tolerance[name])
    if tolerance is not None:
        return as_tolerance(tolerance)
    return opspec.tolerance("graph", str(dtype))


def _check_ort(model, path: Path, inputs_list, output_names, tolerance) -> ExportResult:
    """ONNX Runtime (CPU) vs the eager model on every check input; worst result per output."""
    import torch

    from sparse_attn.runtime.compare import compare_arrays, describe_failure

    sess = _ort_session(path)
    onnx_inputs = [i.name for i in sess.get_inputs()]
    worst: dict[str, dict] = {}
    for inputs in inputs_list:
        with torch.no_grad():
            ref = model(**inputs)
        feeds = {k: _to_numpy(v) for k, v in inputs.items() if k in onnx_inputs}
        missing = [n for n in onnx_inputs if n not in feeds]
        if missing:
            raise InvalidInputError(f"check inputs lack ONNX inputs {missing}")
        got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
        for name in output_names:
            exp = _to_numpy(ref[name])
            tol = _tolerance_of(tolerance, name, exp.dtype)
            res = compare_arrays(got[name], exp, tol)
            res.update(name=name, atol=tol.atol, rtol=tol.rtol)
            res.setdefault("max_abs_err", float("inf"))
            if not res["passed"]:
                res["detail"] = describe_failure(f"{name} (onnxruntime vs torch)", res)
            prev = worst.get(name)
            if (
                prev is None
                or (prev["passed"] and not res["passed"])
                or (prev["passed"] == res["passed"] and res["max_abs_err"] > prev["max_abs_err"])
            ):
                worst[name] = res
    checks = [worst[n] for n in output_names]
    parts = ", ".join(
        f"{c['name']} max_abs_err={c['max_abs_err']:.2e} (tol {c['atol']:.0e}+{c['rtol']:.0e}*|ref|)"
        for c in checks
    )
    ok = all(c["passed"] for c in checks)
    summary = (
        f"export check: onnxruntime CPU vs torch on {len(inputs_list)} input(s): {parts}: "
        f"{'PASS' if ok else 'FAIL'}"
    )
    return ExportResult(path=path, metadata={}, checks=checks, summary=summary)
