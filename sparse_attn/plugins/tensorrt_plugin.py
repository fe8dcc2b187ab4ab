"""TensorRT plugin ``sparse_attn::BlockSparseAttention`` through ``tensorrt.plugin`` (QDP).

Thin glue: the kernel is the Triton kernel of
:mod:`sparse_attn.kernels.triton_kernel`; this module declares the plugin's shape and dtype
rule, an ahead-of-time implementation (PTX + launch parameters, so an engine runs without
Python, e.g. under ``trtexec``) and a JIT implementation (the Triton launcher on TensorRT's
stream). Every name, and the three functions' signatures, come from ``opspec.SCHEMA``.

Importing this module never needs TensorRT; :func:`register` does, and raises
:class:`UnsupportedEnvironmentError` without it.

Plugin contract (TensorRT's ONNX parser maps the node here because the node carries
``plugin_namespace``/``plugin_version`` attributes, docs/spec.md):

* inputs, in :data:`opspec.INPUT_NAMES` order: ``query [B,H,S,D]``, ``key [B,Hkv,S,D]``,
  ``value [B,Hkv,S,Dv]`` (float32 | float16 | bfloat16, all the same; ``H % Hkv == 0``),
  ``row_ptr``, ``col_idx``,
  ``mask_idx`` (int32), ``masks`` (uint8), ``key_padding_mask [B,S]`` (bool). The plugin
  always takes the 8 inputs: :func:`sparse_attn.engines.prepare_onnx_for_tensorrt` adds an
  all-true ``key_padding_mask`` to nodes exported without one (``tensorrt.plugin``
  signatures have a fixed number of inputs).
* attributes (plugin fields): :data:`opspec.PLUGIN_FIELDS` = ``block_size`` (int32),
  ``scale`` (float32).
* output: ``[B,H,S,Dv]`` in the query dtype.
* AOT: runtime int32 extra arguments are :data:`sparse_attn.plugins.aot.RUNTIME_INT_ARGS`
  (all functions of S); H, Hkv, D, Dv, layout sizes, block size and scale are baked into the
  PTX. The PTX targets the compute capability of the GPU that builds the engine.
"""

# No ``from __future__ import annotations`` here: the signatures handed to tensorrt.plugin hold
# real annotation objects (trtp.TensorDesc, int, float, Tuple[...]), never strings.
import functools
import inspect
import logging

from sparse_attn import opspec
from sparse_attn.errors import UnsupportedEnvironmentError

log = logging.getLogger(__name__)

#: TensorRT plugin id ``"namespace::name"``.
PLUGIN_ID = opspec.QUALIFIED_NAME
PLUGIN_NAMESPACE = opspec.PLUGIN_NAMESPACE
PLUGIN_NAME = opspec.OP_TYPE
PLUGIN_VERSION = opspec.PLUGIN_VERSION
#: Plugin inputs (all required by the plugin; see module docstring).
PLUGIN_INPUTS = opspec.INPUT_NAMES
#: Plugin fields and their Python types (``opspec.SCHEMA.plugin_fields()``).
PLUGIN_ATTRIBUTES = {a.name: a.py_type for a in opspec.SCHEMA.plugin_fields()}
PLUGIN_OUTPUTS = opspec.OUTPUT_NAMES
#: ``{"register" | "aot_impl" | "impl": inspect.Signature}`` of the registered functions
#: (set by :func:`register`; :func:`plugin_signatures` builds them from the schema).
SIGNATURES: dict = {}


def plugin_signatures(trtp) -> dict:
    """The signatures ``tensorrt.plugin`` reads from the plugin's three functions.

    Derived from ``opspec.SCHEMA``: tensors (``trtp.TensorDesc``, or ``trtp.Tensor`` in the
    JIT implementation) in input order, then the plugin fields with their Python types,
    then what ``tensorrt.plugin`` appends (``outputs``, ``tactic`` / ``stream``). The AOT
    function's return annotation is the one ``tensorrt.plugin`` checks for.

    Args:
        trtp: the ``tensorrt.plugin`` module (or a stand-in with the same names).
    """

    def sig(tensor, extra, ret):
        params = opspec.SCHEMA.plugin_parameters(tensor, extra)
        return inspect.Signature(params, return_annotation=ret)

    aot_ret = tuple[str | bytes, str | bytes, trtp.KernelLaunchParams, trtp.SymIntExprs]
    return {
        "register": sig(trtp.TensorDesc, (), trtp.TensorDesc),
        "aot_impl": sig(
            trtp.TensorDesc, (("outputs", tuple[trtp.TensorDesc]), ("tactic", int)), aot_ret
        ),
        "impl": sig(trtp.Tensor, (("outputs", tuple[trtp.Tensor]), ("stream", int)), None),
    }


def _named(signature: inspect.Signature, args, kwargs) -> dict:
    """The call's arguments by name (tensorrt.plugin may pass fields as keywords)."""
    return dict(signature.bind(*args, **kwargs).arguments)


def describe() -> dict:
    """What :func:`register` registers (names, inputs, attributes, outputs), without TensorRT."""
    return {
        "id": PLUGIN_ID,
        "namespace": PLUGIN_NAMESPACE,
        "name": PLUGIN_NAME,
        "version": PLUGIN_VERSION,
        "inputs": list(PLUGIN_INPUTS),
        "attributes": {k: v.__name__ for k, v in PLUGIN_ATTRIBUTES.items()},
        "outputs": list(PLUGIN_OUTPUTS),
    }


def _import_tensorrt():
    from sparse_attn.engines import import_tensorrt

    return import_tensorrt(
        "register the TensorRT plugin",
        need_gpu=False,
        hint="install TensorRT on a machine with an NVIDIA GPU",
    )


def trt_dtype_name(trt, dtype) -> str:
    """``"float32"`` etc. for a ``trt.DataType`` (raises ValueError when unsupported)."""
    table = {
        trt.float32: "float32",
        trt.float16: "float16",
        trt.int32: "int32",
        trt.int8: "int8",
        trt.bool: "bool",
    }
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = "bfloat16"
    if hasattr(trt, "int64"):
        table[trt.int64] = "int64"
    if hasattr(trt, "uint8"):
        table[trt.uint8] = "uint8"
    if dtype not in table:
        raise ValueError(f"unsupported TensorRT dtype {dtype}")
    return table[dtype]


def _constant(expr, what: str) -> int:
    if not expr.is_constant:
        raise ValueError(f"{what} must be a build-time constant for the AOT kernel")
    return int(expr.constant_value())


def kernel_spec_from_descs(
    trt, query, value, row_ptr, col_idx, kpm, block_size, scale, masks=None, key=None
):
    """The :class:`sparse_attn.plugins.aot.KernelSpec` of one plugin instance.

    Args are ``trtp.TensorDesc`` objects (shape expressions) and the plugin fields; ``key``
    gives Hkv (grouped-query K/V; without it Hkv = H).
    Raises ValueError when a dimension that must be static is dynamic.
    """
    from sparse_attn.plugins.aot import KernelSpec

    qs, vs = query.shape_expr, value.shape_expr
    return KernelSpec(
        dtype=trt_dtype_name(trt, query.dtype),
        block_size=int(block_size),
        num_heads=_constant(qs[1], "H (query dim 1)"),
        head_dim=_constant(qs[3], "D (query dim 3)"),
        value_dim=_constant(vs[3], "Dv (value dim 3)"),
        layout_heads=_constant(row_ptr.shape_expr[0], "row_ptr dim 0"),
        row_ptr_len=_constant(row_ptr.shape_expr[1], "row_ptr dim 1"),
        nnz=_constant(col_idx.shape_expr[1], "col_idx dim 1"),
        scale=float(scale),
        kpm_dtype=None if kpm is None else trt_dtype_name(trt, kpm.dtype),
        masks_dtype="uint8" if masks is None else trt_dtype_name(trt, masks.dtype),
        num_kv_heads=None if key is None else _constant(key.shape_expr[1], "Hkv (key dim 1)"),
    )


@functools.cache
def _compile_cached(spec, arch: int):
    from sparse_attn.plugins.aot import compile_kernel

    return compile_kernel(spec, arch=arch)


def _current_arch() -> int:
    """Compute capability x 10 of the current CUDA device (the GPU building the engine)."""
    import torch

    if not torch.cuda.is_available():
        raise UnsupportedEnvironmentError("no CUDA GPU visible to PyTorch")
    major, minor = torch.cuda.get_device_capability()
    return 10 * major + minor


_REGISTERED = False


def register() -> None:
    """Register the plugin (shape/dtype rule, AOT and JIT implementations) with TensorRT.

    Idempotent. Raises :class:`UnsupportedEnvironmentError` when ``tensorrt.plugin`` is
    missing; after registration checks that TensorRT's plugin registry holds a creator
    ``(PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE)``.
    """
    global _REGISTERED, SIGNATURES
    if _REGISTERED:
        return
    trt, trtp = _import_tensorrt()

    # tensorrt.plugin reads the input and field names and types from each function's
    # signature (inspect.signature); the signatures are derived from opspec.SCHEMA.
    def _desc(*args, **kwargs):
        n = _named(SIGNATURES["register"], args, kwargs)
        # output [B, H, S, Dv] in the query's dtype: the schema's output dims
        out = n["query"].like()
        shapes = {name: n[name].shape_expr for name in PLUGIN_INPUTS}
        out.shape_expr = trtp.ShapeExprs.from_tuple(opspec.SCHEMA.output_shape(shapes))
        return out

    def _aot(*args, **kwargs):
        from sparse_attn.plugins.aot import launch_grid, runtime_int_values

        n = _named(SIGNATURES["aot_impl"], args, kwargs)
        spec = kernel_spec_from_descs(
            trt,
            n["query"],
            n["value"],
            n["row_ptr"],
            n["col_idx"],
            n["key_padding_mask"],
            n["block_size"],
            n["scale"],
            n["masks"],
            n["key"],
        )
        ck = _compile_cached(spec, _current_arch())
        batch, seq = n["query"].shape_expr[0], n["query"].shape_expr[2]
        gx, gy, _ = launch_grid(spec, batch, seq, cdiv=trtp.cdiv)
        params = trtp.KernelLaunchParams()
        params.grid_x = gx
        params.grid_y = gy
        params.block_x = ck.num_warps * 32
        params.shared_mem = ck.shared
        values = runtime_int_values(spec, seq)
        extra = trtp.SymIntExprs(len(values))
        for i, v in enumerate(values):
            extra[i] = trtp.SymInt32(v)
        return ck.name, ck.ptx, params, extra

    def _jit(*args, **kwargs) -> None:
        import torch

        from sparse_attn.kernels.triton_kernel import attention_arrays

        n = _named(SIGNATURES["impl"], args, kwargs)
        with torch.cuda.stream(torch.cuda.ExternalStream(n["stream"])):
            t = [torch.as_tensor(n[name], device="cuda") for name in PLUGIN_INPUTS]
            out = torch.as_tensor(n["outputs"][0], device="cuda")
            attention_arrays(*t, int(n["block_size"]), float(n["scale"]), out=out)

    SIGNATURES = plugin_signatures(trtp)
    for kind, fn in (("register", _desc), ("aot_impl", _aot), ("impl", _jit)):
        fn.__signature__ = SIGNATURES[kind]
        getattr(trtp, kind)(PLUGIN_ID)(fn)

    registry = trt.get_plugin_registry()
    creator = None
    for getter in ("get_creator", "get_plugin_creator"):
        fn = getattr(registry, getter, None)
        if fn is not None:
            try:
                creator = fn(PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE)
            except Exception:  # noqa: BLE001 - older/newer registry signatures
                creator = None
            if creator is not None:
                break
    if creator is None:
        log.warning(
            "registered %s but TensorRT's registry did not return a creator for (%s, %s, %s)",
            PLUGIN_ID,
            PLUGIN_NAME,
            PLUGIN_VERSION,
            PLUGIN_NAMESPACE,
        )
    _REGISTERED = True
