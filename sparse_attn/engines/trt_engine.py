"""TensorRT engine builder for exported sparse-attn models.

Steps of :func:`build` (the pure-ONNX steps are separate functions, tested without TensorRT):

1. :func:`prepare_onnx_for_tensorrt`: on a copy of the model, every
   ``sparse_attn::BlockSparseAttention`` node gets ``plugin_namespace``/``plugin_version`` (if
   the export lacks them) and ``aot=1`` (TensorRT's ONNX parser then uses the plugin's AOT
   implementation: PTX embedded in the engine, no Python at run time); a node without
   ``key_padding_mask`` gets an all-true ``[B, S]`` mask built from ``query``'s shape (the
   plugin has a fixed input count); the ``masks`` initializer is widened from uint8 to int32
   (TensorRT constants of uint8 are not generally supported; the kernel reads the int32 table
   with the same values).
2. :func:`optimization_profile`: one profile from the graph's symbolic dims and the metadata
   (``sparse_attn.max_seq_len``, ``sparse_attn.static_seq_len``): ``batch`` min/opt/max
   (default 1/1/8), ``seq_len`` 1/opt/max (or fixed when static).
3. Parse with the plugin registered, the parser's plugin-override flag when this TensorRT has
   one, a strongly typed network (TensorRT 11 has no other kind; fp16 comes from an fp16
   export), build, and check that the network holds one plugin layer per node (TensorRT
   would otherwise inline the function body silently).
4. Write the engine; return the sidecar fields (TensorRT version, GPU, compute capability,
   profile, layout hash, the model's metadata).

Nothing here has run against a real TensorRT yet (no GPU machine was available): see
``docs/gpu.md``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from sparse_attn import opspec
from sparse_attn.errors import CheckFailedError, InvalidInputError

#: Attribute TensorRT's ONNX parser reads to pick the AOT implementation of a Python plugin.
AOT_ATTRIBUTE = "aot"


def _is_ours(node) -> bool:
    return node.domain == opspec.DOMAIN and node.op_type == opspec.OP_TYPE


def prepare_onnx_for_tensorrt(model, *, aot: bool = True):
    """Copy of ``model`` ready for TensorRT's parser (see module docstring, step 1).

    Args:
        model: ``onnx.ModelProto`` written by ``sparse-attn export``.
        aot: set ``aot=1`` on our nodes (else the JIT implementation, needing Python).

    Returns:
        ``(prepared_model, n_nodes)``.

    Raises:
        InvalidInputError: the model holds no BlockSparseAttention node, a node has fewer
            than the 7 required inputs, or a node's ``plugin_namespace`` / ``plugin_version``
            names another plugin than ours (the message gives both values).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    nodes = [n for n in g.node if _is_ours(n)]
    if not nodes:
        raise InvalidInputError(
            f"the model has no {opspec.QUALIFIED_NAME} node; export it with sparse-attn export"
        )
    inits = {t.name: t for t in g.initializer}
    widened: dict[str, str] = {}
    new_nodes = []
    n_required = len(opspec.INPUT_NAMES) - len(opspec.OPTIONAL_INPUTS)
    for i, node in enumerate(nodes):
        inputs = list(node.input)
        if len(inputs) < n_required or any(not x for x in inputs[:n_required]):
            raise InvalidInputError(
                f"node {node.name!r} has inputs {inputs}; {opspec.OP_TYPE} needs "
                f"{list(opspec.INPUT_NAMES[:n_required])}"
            )
        if len(inputs) < len(opspec.INPUT_NAMES) or not inputs[-1]:
            # all-true key padding mask [B, S] from query's shape
            q = inputs[0]
            pre = f"_sparse_attn_trt_kpm_{i}"
            new_nodes += [
                helper.make_node("Shape", [q], [f"{pre}_qshape"], name=f"{pre}_shape"),
                helper.make_node(
                    "Gather",
                    [f"{pre}_qshape", f"{pre}_idx"],
                    [f"{pre}_bs"],
                    name=f"{pre}_gather",
                    axis=0,
                ),
                helper.make_node(
                    "ConstantOfShape",
                    [f"{pre}_bs"],
                    [f"{pre}_mask"],
                    name=f"{pre}_ones",
                    value=helper.make_tensor("one", TensorProto.BOOL, [1], [True]),
                ),
            ]
            g.initializer.append(
                numpy_helper.from_array(np.array([0, 2], dtype=np.int64), f"{pre}_idx")
            )
            inputs = inputs[: len(opspec.INPUT_NAMES) - 1] + [f"{pre}_mask"]
            del node.input[:]
            node.input.extend(inputs)
        masks_name = inputs[opspec.INPUT_NAMES.index("masks")]
        if masks_name in inits and inits[masks_name].data_type == TensorProto.UINT8:
            if masks_name not in widened:
                arr = numpy_helper.to_array(inits[masks_name]).astype(np.int32)
                wide = f"{masks_name}_int32"
                g.initializer.append(numpy_helper.from_array(arr, wide))
                widened[masks_name] = wide
            node.input[opspec.INPUT_NAMES.index("masks")] = widened[masks_name]
        attrs = {a.name for a in node.attribute}
        for key, want in (
            ("plugin_namespace", opspec.DOMAIN),
            ("plugin_version", opspec.PLUGIN_VERSION),
        ):
            got = next(
                (helper.get_attribute_value(a) for a in node.attribute if a.name == key), None
            )
            if isinstance(got, bytes):
                got = got.decode("utf-8", "replace")
            if got is not None and got != want:
                raise InvalidInputError(
                    f"node {node.name!r} has {key}={got!r} but the sparse-attn plugin is "
                    f"{key}={want!r}; re-export the model with this version of sparse-attn"
                )
        if "plugin_namespace" not in attrs:
            node.attribute.append(helper.make_attribute("plugin_namespace", opspec.DOMAIN))
        if "plugin_version" not in attrs:
            node.attribute.append(helper.make_attribute("plugin_version", opspec.PLUGIN_VERSION))
        for a in list(node.attribute):
            if a.name == AOT_ATTRIBUTE:
                node.attribute.remove(a)
        node.attribute.append(helper.make_attribute(AOT_ATTRIBUTE, int(bool(aot))))
    if new_nodes:
        # the helper nodes only read graph inputs / initializers: put them first
        old = list(g.node)
        del g.node[:]
        g.node.extend(new_nodes + old)
    return m, len(nodes)


def optimization_profile(
    model,
    metadata: dict[str, str],
    batch: tuple[int, int, int] = (1, 1, 8),
    seq_opt: int | None = None,
) -> dict[str, dict[str, list[int]]]:
    """One optimisation profile ``{input: {"min": [...], "opt": [...], "max": [...]}}``.

    Symbolic dims named ``batch`` take ``batch`` (min, opt, max); ``seq_len`` takes 1 / opt /
    ``sparse_attn.max_seq_len`` (all three equal when ``sparse_attn.static_seq_len`` is
    "true"); fixed dims stay. Initializers are not inputs.

    Raises:
        InvalidInputError: bad batch range, missing max_seq_len metadata, or an input dim that
            is neither fixed nor ``batch``/``seq_len``.
    """
    bmin, bopt, bmax = (int(x) for x in batch)
    if not 1 <= bmin <= bopt <= bmax:
        raise InvalidInputError(f"batch range must satisfy 1 <= min <= opt <= max, got {batch}")
    try:
        smax = int(metadata["sparse_attn.max_seq_len"])
    except (KeyError, ValueError) as exc:
        raise InvalidInputError(
            "the model's metadata lacks a valid 'sparse_attn.max_seq_len'; re-export it with "
            "sparse-attn export"
        ) from exc
    static = str(metadata.get("sparse_attn.static_seq_len", "false")).lower() == "true"
    if static:
        srange = (smax, smax, smax)
    else:
        sopt = min(smax, seq_opt or max(1, smax // 2))
        srange = (1, sopt, smax)
    init_names = {t.name for t in model.graph.initializer}
    prof: dict[str, dict[str, list[int]]] = {}
    for vi in model.graph.input:
        if vi.name in init_names:
            continue
        dims = vi.type.tensor_type.shape.dim
        lo, op, hi = [], [], []
        for d in dims:
            if d.HasField("dim_value") and d.dim_value > 0:
                v = int(d.dim_value)
                lo.append(v), op.append(v), hi.append(v)
            elif d.dim_param == "batch":
                lo.append(bmin), op.append(bopt), hi.append(bmax)
            elif d.dim_param == "seq_len":
                lo.append(srange[0]), op.append(srange[1]), hi.append(srange[2])
            else:
                raise InvalidInputError(
                    f"input {vi.name!r} has a dynamic dim {d.dim_param!r}; only 'batch' and "
                    "'seq_len' can be dynamic in an engine profile"
                )
        prof[vi.name] = {"min": lo, "opt": op, "max": hi}
    return prof


def _import_trt():
    from sparse_attn.engines import import_tensorrt

    return import_tensorrt("build a TensorRT engine", hint="use --backend onnxruntime")[0]


def _plugin_layer_count(trt, network) -> int:
    kinds = {
        getattr(trt.LayerType, n)
        for n in ("PLUGIN", "PLUGIN_V2", "PLUGIN_V3")
        if hasattr(trt.LayerType, n)
    }
    return sum(1 for i in range(network.num_layers) if network.get_layer(i).type in kinds)


def build(
    onnx_path: Path,
    output: Path,
    *,
    batch: tuple[int, int, int] = (1, 1, 8),
    seq_opt: int | None = None,
    aot: bool = True,
    workspace_mib: int | None = None,
    **unused,
) -> dict:
    """Build and write a TensorRT engine; return the sidecar fields (see module docstring).

    Raises:
        UnsupportedEnvironmentError: TensorRT or a GPU is missing (before any work).
        InvalidInputError: bad options or model.
        CheckFailedError (a RuntimeError): parsing or building failed, or the plugin layer is
            missing.
    """
    if unused:
        raise InvalidInputError(
            f"option(s) {', '.join(sorted(unused))} do not apply to --backend tensorrt"
        )
    trt = _import_trt()
    import tempfile

    import onnx
    import torch

    from sparse_attn.plugins import tensorrt_plugin

    model = onnx.load_model(str(onnx_path))
    meta = {p.key: p.value for p in model.metadata_props}
    prepared, n_nodes = prepare_onnx_for_tensorrt(model, aot=aot)
    profile = optimization_profile(prepared, meta, batch=batch, seq_opt=seq_opt)
    tensorrt_plugin.register()

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if hasattr(trt, "OnnxParserFlag") and hasattr(trt.OnnxParserFlag, "ENABLE_PLUGIN_OVERRIDE"):
        parser.set_flag(trt.OnnxParserFlag.ENABLE_PLUGIN_OVERRIDE)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "prepared.onnx"
        onnx.save_model(prepared, str(path))
        ok = parser.parse_from_file(str(path))
    if not ok:
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CheckFailedError(f"TensorRT could not parse {onnx_path}: {errs}")
    n_plugins = _plugin_layer_count(trt, network)
    if n_plugins < n_nodes:
        raise CheckFailedError(
            f"the network has {n_plugins} plugin layer(s) for {n_nodes} {opspec.OP_TYPE} "
            "node(s): TensorRT inlined the ONNX function instead of using the plugin"
        )
    config = builder.create_builder_config()
    if workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    prof = builder.create_optimization_profile()
    for name, r in profile.items():
        prof.set_shape(name, r["min"], r["opt"], r["max"])
    config.add_optimization_profile(prof)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise CheckFailedError(f"TensorRT failed to build an engine for {onnx_path} (see its log)")
    build_s = time.perf_counter() - t0
    Path(output).write_bytes(bytes(serialized))
    major, minor = torch.cuda.get_device_capability()
    return {
        "backend": "tensorrt",
        "engine": str(output),
        "source_model": str(onnx_path),
        "tensorrt_version": trt.__version__,
        "gpu": torch.cuda.get_device_name(),
        "compute_capability": f"{major}.{minor}",
        "plugin": {**tensorrt_plugin.describe(), "implementation": "aot" if aot else "jit"},
        "plugin_layers": n_plugins,
        "strongly_typed": bool(flags),
        "profiles": [profile],
        "build_seconds": round(build_s, 3),
        "layout_hash": meta.get("sparse_attn.layout_hash"),
        "metadata": meta,
    }
