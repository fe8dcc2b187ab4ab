"""The ``sparse_attn::BlockSparseAttention`` op, described once.

:data:`SCHEMA` is a declarative description of the op: its inputs (names, dtypes, symbolic
dims), attributes (types, defaults, ranges), the rules between dims, the per-dtype
tolerances and the metadata keys an export writes. Everything else is derived from it:

* input validation (:meth:`OpSchema.bind_shapes`, used by ``sparse_attn.kernels._validate``);
* the torch custom op and its fake (:meth:`OpSchema.torch_schema_string`,
  :meth:`OpSchema.output_shape`, used by ``sparse_attn.ops``);
* the ONNX node (:meth:`OpSchema.onnx_input_names`, :meth:`OpSchema.onnx_attributes`, used
  by ``sparse_attn.export.symbolic``) and the function body's signature;
* the TensorRT plugin's signature and fields (:meth:`OpSchema.plugin_parameters`);
* the C++ op schema string (:meth:`OpSchema.torch_schema_string` with another name);
* the tables of the documentation (:meth:`OpSchema.markdown`).

Backends declare what they take with :class:`BackendLimits`. The flat names below
(``INPUT_NAMES``, ``ATTRIBUTES``, ...) are views of :data:`SCHEMA` kept for importers.

This module is pure Python (no torch, no onnx) so that any layer can import it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

#: ONNX domain of the custom op, and TensorRT plugin namespace.
DOMAIN = "sparse_attn"
#: ONNX op type, and TensorRT plugin name.
OP_TYPE = "BlockSparseAttention"
#: Op version (ONNX opset version of ``DOMAIN``), and TensorRT plugin version (a string there).
OP_VERSION = 1
PLUGIN_NAMESPACE = DOMAIN
PLUGIN_VERSION = str(OP_VERSION)
#: Fully qualified name, as used by ``torch.onnx.ops.symbolic`` and TensorRT's registry.
QUALIFIED_NAME = f"{DOMAIN}::{OP_TYPE}"
#: Name of the torch custom op (``torch.ops.sparse_attn.block_sparse_attention``).
TORCH_OP_NAME = f"{DOMAIN}::block_sparse_attention"

#: Block sizes (tokens) every backend that must match the op takes.
MIN_BLOCK_SIZE = 16
MAX_BLOCK_SIZE = 128
#: Largest ``D`` and ``Dv`` (head dims of query/key and of value) the op takes.
MAX_HEAD_DIM = 256
#: Model dtypes of an exported graph (the ONNX type constraint of query/key/value/output).
SUPPORTED_DTYPES = ("float32", "float16")
#: Floating dtypes the PyTorch entry points accept at all (each backend narrows them down).
TORCH_DTYPES = ("float32", "float16", "bfloat16", "float64")

_PY_TYPES = {"int": int, "float": float, "string": str}
_TORCH_TYPES = {"int": "int", "float": "float", "string": "str"}
_DIM_RE = re.compile(r"^([A-Za-z_]\w*)(?:\s*\+\s*(\d+))?$")


# ------------------------------------------------------------------------------ parts
@dataclass(frozen=True)
class TensorSpec:
    """One input or output of the op.

    Attributes:
        name: the name (ONNX input name, torch argument name, plugin tensor name).
        dims: symbolic dims, e.g. ``("B", "H", "S", "D")``; a dim may be ``"name+k"``
            (``"nQB+1"``) or the name of an int attribute (``"block_size"``).
        dtypes: dtypes it may have (the float inputs: see :data:`TORCH_DTYPES`; the exported
            graph takes :data:`SUPPORTED_DTYPES`).
        optional: may be absent (``None`` in torch, an empty name in ONNX).
        layout: part of the block layout (constant initializers in an export).
        doc: one line for the documentation.
    """

    name: str
    dims: tuple[str, ...]
    dtypes: tuple[str, ...]
    optional: bool = False
    layout: bool = False
    doc: str = ""


@dataclass(frozen=True)
class AttrSpec:
    """One attribute of the op.

    Attributes:
        name: attribute name (ONNX attribute, torch argument, plugin field).
        type: ``"int"``, ``"float"`` or ``"string"``.
        min / max: inclusive range (``None`` = unbounded); ``min_exclusive`` for ``> min``.
        default_doc: the default in words (``None`` = required).
        value: the fixed value of a routing attribute (``plugin_namespace``), else ``None``.
        plugin_field: TensorRT's ONNX parser hands it to the plugin as a field.
        doc: one line for the documentation.
    """

    name: str
    type: str
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False
    default_doc: str | None = None
    value: str | None = None
    plugin_field: bool = False
    doc: str = ""

    @property
    def is_argument(self) -> bool:
        """True for attributes passed by callers (``block_size``, ``scale``), not fixed ones."""
        return self.value is None

    @property
    def py_type(self) -> type:
        return _PY_TYPES[self.type]

    def range_text(self) -> str:
        lo = "" if self.min is None else f"{'>' if self.min_exclusive else '>='} {self.min:g}"
        hi = "" if self.max is None else f"<= {self.max:g}"
        return ", ".join(x for x in (lo, hi) if x)


@dataclass(frozen=True)
class Tolerance:
    """Comparison bounds: ``|got - expected| <= atol + rtol * |expected|`` elementwise.

    Attributes:
        atol: absolute tolerance (units of the output).
        rtol: relative tolerance.
        max_mismatch_fraction: largest fraction of elements allowed outside the bound.
        min_cosine: smallest per-row cosine similarity for embedding outputs (rank 2).
    """

    atol: float
    rtol: float
    max_mismatch_fraction: float = 0.0
    min_cosine: float = 0.0


@dataclass(frozen=True)
class MetaKey:
    """A ``metadata_props`` key written by export.

    Attributes:
        name: the full key (``sparse_attn.block_size``).
        doc: its meaning and unit.
        written_by: ``"family"`` (``metadata.build_metadata``), ``"exporter"`` (added by
            ``exporter.export_model``), ``"optional"`` (written by some families) or
            ``"node"`` (on each op node, not on the model).
    """

    name: str
    doc: str
    written_by: str = "family"


@dataclass(frozen=True)
class BackendLimits:
    """What one backend takes; :meth:`not_supported_reasons` turns it into readable reasons.

    Attributes:
        name: backend name.
        dtypes: dtype names it takes.
        max_head_dim: largest ``D`` and ``Dv``.
        min_block_size / max_block_size: block sizes it takes.
        grouped_kv: takes fewer K/V heads than query heads (``H % Hkv == 0``).
    """

    name: str
    dtypes: tuple[str, ...]
    max_head_dim: int = MAX_HEAD_DIM
    min_block_size: int = 1
    max_block_size: int | None = None
    grouped_kv: bool = True

    def not_supported_reasons(
        self,
        *,
        dtype: str,
        head_dim: int,
        value_dim: int,
        num_heads: int,
        num_kv_heads: int,
        block_size: int,
    ) -> list[str]:
        """Readable reasons why these inputs exceed the limits (empty list = supported)."""
        reasons = []
        if dtype not in self.dtypes:
            reasons.append(f"dtype {dtype} not supported ({', '.join(self.dtypes)} are)")
        for what, n in (("head_dim D", head_dim), ("value head_dim Dv", value_dim)):
            if n > self.max_head_dim:
                reasons.append(f"{what}={n} exceeds {self.max_head_dim}")
        hi = self.max_block_size
        if block_size < self.min_block_size or (hi is not None and block_size > hi):
            rng = f"{self.min_block_size}..{hi}" if hi is not None else f">= {self.min_block_size}"
            reasons.append(f"block_size {block_size} not supported ({rng})")
        if not self.grouped_kv and num_kv_heads != num_heads:
            reasons.append(
                f"grouped K/V (H={num_heads}, Hkv={num_kv_heads}) not supported; needs Hkv == H"
            )
        return reasons


class BoundCall(dict):
    """One array-level call's arguments by name, in the schema's call order
    (:meth:`OpSchema.bind_call`); also readable as attributes (``call.query``).
    ``call.args()`` gives them back positionally."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def args(self) -> tuple:
        """The values in call order (to forward to another array-level entry)."""
        return tuple(self.values())

    def replace(self, **changes) -> BoundCall:
        """A copy with some arguments replaced (names must exist)."""
        unknown = set(changes) - set(self)
        if unknown:
            raise TypeError(f"unknown argument(s) {', '.join(sorted(unknown))}")
        return BoundCall({**self, **changes})


# ------------------------------------------------------------------------------ schema
@dataclass(frozen=True)
class OpSchema:
    """The op: identity, signature, dim rules, tolerances and metadata keys."""

    domain: str
    op_type: str
    version: int
    torch_name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    attributes: tuple[AttrSpec, ...]
    #: dim name -> inclusive range ``(lo, hi)``
    dim_ranges: Mapping[str, tuple[int, int]]
    #: ``(multiple, divisor)``: dim ``multiple`` must be a multiple of dim ``divisor``
    dim_multiples: tuple[tuple[str, str], ...]
    #: ``(dim, full)``: dim ``dim`` must equal dim ``full`` or be 1 (shared by every head)
    dim_shared: tuple[tuple[str, str], ...]
    #: scope -> dtype name -> Tolerance (see :func:`tolerance`)
    tolerances: Mapping[str, Mapping[str, Tolerance]]
    meta_keys: tuple[MetaKey, ...]
    dim_docs: Mapping[str, str] = field(default_factory=dict)

    # ---- names and signatures
    def input_names(self) -> tuple[str, ...]:
        """Input names in call order (the ONNX node's and the plugin's order)."""
        return tuple(t.name for t in self.inputs)

    def onnx_input_names(self) -> tuple[str, ...]:
        """Inputs of the ONNX node and of its function body, in order (same as the call)."""
        return self.input_names()

    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def optional_inputs(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs if t.optional)

    def layout_inputs(self) -> tuple[str, ...]:
        """The inputs that hold the block layout (constant initializers of an export)."""
        return tuple(t.name for t in self.inputs if t.layout)

    def argument_attributes(self) -> tuple[AttrSpec, ...]:
        """Attributes a caller passes (after the tensors, in this order)."""
        return tuple(a for a in self.attributes if a.is_argument)

    def call_arg_names(self) -> tuple[str, ...]:
        """The array-level entry's arguments: every input, then ``block_size, scale``."""
        return self.input_names() + tuple(a.name for a in self.argument_attributes())

    def bind_call(self, args: Sequence, kwargs: Mapping[str, object] | None = None) -> BoundCall:
        """Bind an array-level call's arguments to :meth:`call_arg_names` (positional or by name).

        The array-level entries of the backends take ``*args, **kwargs`` and bind them here,
        so that none of them restates the signature.

        Raises:
            TypeError: too many or missing arguments, an unknown or repeated name (as Python
                does for a function with this signature).
        """
        names = self.call_arg_names()
        kwargs = dict(kwargs or {})
        if len(args) > len(names):
            raise TypeError(f"takes {len(names)} arguments ({', '.join(names)}), got {len(args)}")
        bound = BoundCall(zip(names, args, strict=False))
        for key, val in kwargs.items():
            if key not in names:
                raise TypeError(f"unexpected argument {key!r}; arguments are {', '.join(names)}")
            if key in bound:
                raise TypeError(f"argument {key!r} given twice (by position and by name)")
            bound[key] = val
        missing = [n for n in names if n not in bound]
        if missing:
            raise TypeError(f"missing argument(s) {', '.join(missing)}")
        return BoundCall((n, bound[n]) for n in names)

    def attribute(self, name: str) -> AttrSpec:
        for a in self.attributes:
            if a.name == name:
                return a
        raise KeyError(name)

    def torch_signature(self) -> str:
        """The torch schema without the name: ``(Tensor query, ..., float scale) -> Tensor``
        (for ``torch.library.define``)."""
        args = [f"Tensor{'?' if t.optional else ''} {t.name}" for t in self.inputs]
        args += [f"{_TORCH_TYPES[a.type]} {a.name}" for a in self.argument_attributes()]
        outs = ", ".join("Tensor" for _ in self.outputs)
        return f"({', '.join(args)}) -> {outs if len(self.outputs) == 1 else f'({outs})'}"

    def torch_schema_string(self, name: str | None = None) -> str:
        """The torch op schema with its name, e.g. ``block_sparse_attention(Tensor query, ...,
        float scale) -> Tensor``: the C++ ``TORCH_LIBRARY`` ``m.def(...)`` string.

        Args:
            name: op name without namespace; default the part of ``torch_name`` after ``::``.
        """
        return (name or self.torch_name.split("::", 1)[1]) + self.torch_signature()

    def onnx_attributes(self, block_size: int, scale: float) -> dict:
        """Attributes written on the ONNX node, the fixed plugin routing ones included."""
        values = {"block_size": int(block_size), "scale": float(scale)}
        return {a.name: values[a.name] if a.is_argument else a.value for a in self.attributes}

    def plugin_fields(self) -> tuple[AttrSpec, ...]:
        """Attributes TensorRT's ONNX parser turns into plugin fields (INT -> int32, ...)."""
        return tuple(a for a in self.attributes if a.plugin_field)

    def plugin_parameters(self, tensor_type, extra: Sequence[tuple[str, object]] = ()) -> list:
        """``inspect.Parameter`` list of a ``tensorrt.plugin`` function, derived from the schema.

        Args:
            tensor_type: annotation of each tensor (``trtp.TensorDesc`` or ``trtp.Tensor``).
            extra: ``(name, annotation)`` appended after the fields (``outputs``, ``stream``).
        """
        import inspect

        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        params = [inspect.Parameter(t.name, kind, annotation=tensor_type) for t in self.inputs]
        params += [
            inspect.Parameter(a.name, kind, annotation=a.py_type) for a in self.plugin_fields()
        ]
        params += [inspect.Parameter(n, kind, annotation=ann) for n, ann in extra]
        return params

    # ---- shapes
    def bind_shapes(
        self, shapes: Mapping[str, Sequence], attrs: Mapping[str, object] | None = None
    ) -> dict[str, object]:
        """Bind the symbolic dims to the given shapes and check every rule of the schema.

        Works on ints and on torch's symbolic sizes (it only compares them, never converts
        them, so ``torch.export`` keeps dynamic dims dynamic).

        Args:
            shapes: input name -> shape (``None`` for an absent optional input); inputs not
                in the mapping are not checked.
            attrs: int attributes used as dims (``block_size``).

        Returns:
            ``{dim name: size}``.

        Raises:
            ValueError: naming the tensor, the expected dims (with the values bound so far)
                and the received shape; or the broken dim rule.
        """
        bound: dict[str, object] = {k: v for k, v in (attrs or {}).items() if v is not None}
        for spec in self.inputs:
            if spec.name not in shapes:  # not checked here (e.g. the layout, checked elsewhere)
                continue
            shape = shapes[spec.name]
            if shape is None:
                if not spec.optional:
                    raise ValueError(f"input {spec.name!r} is required")
                continue
            shape = tuple(shape)
            if len(shape) != len(spec.dims):
                raise ValueError(
                    f"{spec.name} must have rank {len(spec.dims)} [{', '.join(spec.dims)}], "
                    f"got shape {list(shape)}"
                )
            for dim, size in zip(spec.dims, shape, strict=True):
                base, off = _parse_dim(dim)
                if base not in bound:
                    bound[base] = size - off
                    continue
                if size != bound[base] + off:
                    raise ValueError(
                        f"{spec.name} must be [{self._dims_text(spec, bound)}], got {list(shape)}"
                    )
            try:  # after each tensor, so that the first inconsistent one is named
                self._check_rules(bound)
            except ValueError as exc:
                raise ValueError(f"{spec.name} {list(shape)}: {exc}") from None
        return bound

    def _check_rules(self, bound: Mapping[str, object]) -> None:
        for dim, full in self.dim_shared:
            if dim in bound and full in bound and bound[dim] != 1 and bound[dim] != bound[full]:
                raise ValueError(
                    f"{dim}={bound[dim]} ({self.dim_docs.get(dim, dim)}) must be {full}="
                    f"{bound[full]} or 1"
                )
        for big, small in self.dim_multiples:
            if big in bound and small in bound and bound[big] % bound[small] != 0:
                raise ValueError(
                    f"{big}={bound[big]} must be a multiple of {small}={bound[small]} "
                    f"({self.dim_docs.get(small, small)}); got {big} % {small} = "
                    f"{bound[big] % bound[small]}"
                )
        for dim, (lo, hi) in self.dim_ranges.items():
            if dim in bound and not lo <= bound[dim] <= hi:
                raise ValueError(
                    f"{dim} ({self.dim_docs.get(dim, dim)}) must be in {lo}..{hi}, got {bound[dim]}"
                )

    def output_shape(self, shapes: Mapping[str, Sequence], index: int = 0) -> tuple:
        """Shape of output ``index`` from the input shapes (the fake implementation's rule).

        Only the dims the output names are read, and a size is taken as it is (no
        arithmetic), so symbolic sizes of torch or TensorRT pass through unchanged.
        """
        needed = {_parse_dim(d)[0] for d in self.outputs[index].dims}
        bound: dict[str, object] = {}
        for spec in self.inputs:
            shape = shapes.get(spec.name)
            if shape is None:
                continue
            for dim, size in zip(spec.dims, shape, strict=False):
                if dim in needed and dim not in bound:
                    bound[dim] = size
        return tuple(bound[d] for d in self.outputs[index].dims)

    @staticmethod
    def _dims_text(spec: TensorSpec, bound: Mapping[str, object]) -> str:
        parts = []
        for dim in spec.dims:
            base, off = _parse_dim(dim)
            if base in bound:
                val = bound[base] + off
                parts.append(f"{dim}={val}")
            else:
                parts.append(dim)
        return ", ".join(parts)

    # ---- documentation
    def markdown(self) -> str:
        """The op's tables (inputs, output, attributes, limits, tolerances) in Markdown."""
        lines = [
            f"`{self.domain}::{self.op_type}`, version {self.version} "
            f"(torch: `torch.ops.{self.torch_name.replace('::', '.')}`).",
            "",
            "| input | shape | dtype | notes |",
            "|---|---|---|---|",
        ]
        for t in self.inputs + self.outputs:
            kind = "output" if t in self.outputs else ""
            notes = "; ".join(
                x
                for x in (
                    kind,
                    "optional" if t.optional else "",
                    "layout (initializer)" if t.layout else "",
                    t.doc,
                )
                if x
            )
            lines.append(
                f"| `{t.name}` | `[{', '.join(t.dims)}]` | {' / '.join(t.dtypes)} | {notes} |"
            )
        lines += ["", "| attribute | type | range | default | notes |", "|---|---|---|---|---|"]
        for a in self.attributes:
            default = a.value if a.value is not None else (a.default_doc or "required")
            field_note = "TensorRT plugin field" if a.plugin_field else ""
            notes = "; ".join(x for x in (a.doc, field_note) if x)
            lines.append(f"| `{a.name}` | {a.type} | {a.range_text()} | {default} | {notes} |")
        lines += ["", "| dim | meaning | range |", "|---|---|---|"]
        for dim, doc in self.dim_docs.items():
            lo_hi = self.dim_ranges.get(dim)
            rng = f"{lo_hi[0]}..{lo_hi[1]}" if lo_hi else ""
            rules = [f"multiple of {s}" for b, s in self.dim_multiples if b == dim]
            rules += [f"{f} or 1" for b, f in self.dim_shared if b == dim]
            lines.append(f"| `{dim}` | {doc} | {'; '.join([rng, *rules]).strip('; ')} |")
        lines += ["", "| metadata key | written by | meaning |", "|---|---|---|"]
        for k in self.meta_keys:
            lines.append(f"| `{k.name}` | {k.written_by} | {k.doc} |")
        lines += ["", "| comparison | dtype | atol | rtol |", "|---|---|---|---|"]
        for scope, table in self.tolerances.items():
            for dt, tol in table.items():
                lines.append(f"| {scope} | {dt} | {tol.atol:g} | {tol.rtol:g} |")
        return "\n".join(lines) + "\n"


def _parse_dim(dim: str) -> tuple[str, int]:
    m = _DIM_RE.match(dim)
    if m is None:
        raise ValueError(f"bad symbolic dim {dim!r}")
    return m.group(1), int(m.group(2) or 0)


_FLOATS = TORCH_DTYPES
_INT_INDEX = ("int32",)

#: The op, described once.
SCHEMA = OpSchema(
    domain=DOMAIN,
    op_type=OP_TYPE,
    version=OP_VERSION,
    torch_name=TORCH_OP_NAME,
    inputs=(
        TensorSpec(
            "query",
            ("B", "H", "S", "D"),
            _FLOATS,
            doc="an exported graph takes float32 or float16",
        ),
        TensorSpec(
            "key",
            ("B", "Hkv", "S", "D"),
            _FLOATS,
            doc="query head h reads K/V head h // (H // Hkv); never repeated per query head",
        ),
        TensorSpec("value", ("B", "Hkv", "S", "Dv"), _FLOATS, doc="dtype of query"),
        TensorSpec(
            "row_ptr",
            ("L", "nQB+1"),
            _INT_INDEX,
            layout=True,
            doc="CSR row pointers over key blocks, per query head (L = H, or 1 shared)",
        ),
        TensorSpec("col_idx", ("L", "nnz"), _INT_INDEX, layout=True, doc="key block per tile"),
        TensorSpec(
            "mask_idx",
            ("L", "nnz"),
            _INT_INDEX,
            layout=True,
            doc="-1 = full tile, k >= 0 = partial tile masks[k]",
        ),
        TensorSpec(
            "masks",
            ("M", "block_size", "block_size"),
            ("uint8",),
            layout=True,
            doc="deduplicated partial-tile masks, 1 = visible",
        ),
        TensorSpec(
            "key_padding_mask",
            ("B", "S"),
            ("bool", "uint8", "int32", "int64"),
            optional=True,
            doc="1/True = real token",
        ),
    ),
    outputs=(TensorSpec("output", ("B", "H", "S", "Dv"), _FLOATS, doc="dtype of query"),),
    attributes=(
        AttrSpec(
            "block_size",
            "int",
            min=1,
            plugin_field=True,
            default_doc=None,
            doc=f"tokens per square block (exported graphs: {MIN_BLOCK_SIZE}..{MAX_BLOCK_SIZE})",
        ),
        AttrSpec(
            "scale",
            "float",
            min=0.0,
            min_exclusive=True,
            plugin_field=True,
            default_doc="1/sqrt(D)",
            doc="softmax scale of query . key",
        ),
        AttrSpec(
            "plugin_namespace", "string", value=PLUGIN_NAMESPACE, doc="routes TensorRT's parser"
        ),
        AttrSpec("plugin_version", "string", value=PLUGIN_VERSION, doc="routes TensorRT's parser"),
    ),
    dim_ranges={"D": (1, MAX_HEAD_DIM), "Dv": (1, MAX_HEAD_DIM)},
    dim_multiples=(("H", "Hkv"),),
    dim_shared=(("L", "H"),),
    dim_docs={
        "B": "batch",
        "H": "query heads",
        "Hkv": "key/value heads",
        "S": "sequence length of the request (<= the layout's seq_len)",
        "D": "head_dim of query and key",
        "Dv": "head_dim of value and output",
        "L": "heads of the layout: H, or 1 when one layout serves every head",
        "nQB": "query blocks of the layout, ceil(seq_len / block_size)",
        "nnz": "stored tiles of the longest head",
        "M": "partial-tile masks (>= 1)",
    },
    tolerances={
        # one op output against the float64 reference computed from the same inputs
        "op": {
            "float64": Tolerance(1e-10, 1e-10),
            "float32": Tolerance(2e-5, 2e-5),
            "float16": Tolerance(2e-3, 2e-3),
            "bfloat16": Tolerance(1.6e-2, 1.6e-2),
        },
        # an exported graph in ONNX Runtime against eager PyTorch in the same dtype
        "graph": {
            "float32": Tolerance(1e-4, 1e-3),
            "float16": Tolerance(4e-3, 1e-2),
        },
        # a whole multi-layer model against its PyTorch rebuild (fp16 rounding grows with
        # depth: on MiniLM real tokens differ by ~4e-3, padded positions by up to ~3e-2)
        "model": {
            "float32": Tolerance(1e-4, 1e-3, 0.0, 0.99999),
            "float16": Tolerance(5e-2, 2e-2, 1e-3, 0.999),
        },
    },
    meta_keys=(
        MetaKey("sparse_attn.version", "package version that wrote the model", "exporter"),
        MetaKey(
            "sparse_attn.model",
            "model family: attention | minilm | bigbird | longformer | mistral | ...",
        ),
        MetaKey("sparse_attn.pattern", "expanded pattern spec (or JSON list, one per head)"),
        MetaKey("sparse_attn.causal", '"true" | "false"'),
        MetaKey("sparse_attn.block_size", "tokens"),
        MetaKey("sparse_attn.max_seq_len", "longest request of the model, tokens"),
        MetaKey(
            "sparse_attn.static_seq_len",
            '"true" when S is fixed (a pattern that needs the end of the sequence)',
        ),
        MetaKey("sparse_attn.num_heads", "query heads of the attention op"),
        MetaKey("sparse_attn.head_dim", "head_dim D of the attention op"),
        MetaKey("sparse_attn.dtype", "float32 | float16"),
        MetaKey("sparse_attn.layout_hash", "BlockLayout.layout_hash() of the model's layout(s)"),
        MetaKey(
            "sparse_attn.model_config", "JSON: what the torch backend of Runtime needs to rebuild"
        ),
        MetaKey(
            "sparse_attn.inputs",
            'JSON [{"name", "dtype", "shape"}], symbolic dims as strings',
            "exporter",
        ),
        MetaKey("sparse_attn.outputs", 'JSON [{"name", "dtype", "shape"}]', "exporter"),
        MetaKey("torch_version", "torch that exported the model", "exporter"),
        MetaKey("onnx_version", "onnx that wrote the model", "exporter"),
        MetaKey(
            "sparse_attn.num_kv_heads",
            "K/V heads of the attention op (written when fewer than num_heads)",
            "optional",
        ),
        MetaKey("sparse_attn.vocab_size", "vocabulary size of a text model", "optional"),
        MetaKey(
            "sparse_attn.layer_patterns",
            "JSON: the pattern of each layer of a Hugging Face checkpoint",
            "optional",
        ),
        MetaKey(
            "sparse_attn.layout_seq_len",
            "on each op node: the seq_len its layout was compiled for (the body's guard)",
            "node",
        ),
    ),
)


# ------------------------------------------------------------------------------ flat views
#: Inputs of the op, in order (``key_padding_mask`` optional: an empty name in ONNX).
INPUT_NAMES = SCHEMA.input_names()
OPTIONAL_INPUTS = SCHEMA.optional_inputs()
LAYOUT_INPUTS = SCHEMA.layout_inputs()
OUTPUT_NAMES = SCHEMA.output_names()
#: Attributes and their ONNX types. ``scale`` defaults to 1/sqrt(D) (see :func:`default_scale`).
ATTRIBUTES = {a.name: a.type for a in SCHEMA.attributes}
#: Attributes TensorRT's ONNX parser turns into plugin fields (INT -> int32, FLOAT -> float32).
PLUGIN_FIELDS = tuple(a.name for a in SCHEMA.plugin_fields())
#: ``metadata_props`` prefix and the model-level keys written by export.
META_PREFIX = "sparse_attn."
META_KEYS = tuple(k.name for k in SCHEMA.meta_keys if k.written_by in ("family", "exporter"))
#: Every model-level key, the optional ones included.
MODEL_META_KEYS = tuple(k.name for k in SCHEMA.meta_keys if k.written_by != "node")
#: Node-level ``metadata_props`` key: the seq_len the node's layout was compiled for.
NODE_LAYOUT_SEQ_LEN_KEY = "sparse_attn.layout_seq_len"
assert NODE_LAYOUT_SEQ_LEN_KEY in {k.name for k in SCHEMA.meta_keys if k.written_by == "node"}


def meta_key(short: str) -> str:
    """Full model-level metadata key of ``short`` (``"block_size"`` -> ``sparse_attn.block_size``).

    Raises:
        KeyError: when the key is not one the schema declares.
    """
    full = short if short in MODEL_META_KEYS else META_PREFIX + short
    if full not in MODEL_META_KEYS:
        raise KeyError(f"unknown metadata key {short!r}")
    return full


def tolerance(scope: str, dtype: str) -> Tolerance:
    """The tolerance of a comparison ``scope`` for outputs of ``dtype``.

    Args:
        scope: ``"op"`` (one op output vs the float64 reference of the same inputs),
            ``"graph"`` (an exported graph in ONNX Runtime vs eager PyTorch, same dtype) or
            ``"model"`` (a whole model vs its PyTorch rebuild).
        dtype: dtype name (``"float16"``, ``"torch.float16"`` and numpy names work); bfloat16
            falls back to float16 and anything else to float32 where the scope lacks it.

    Raises:
        KeyError: unknown scope.
    """
    table = SCHEMA.tolerances[scope]
    name = str(dtype).replace("torch.", "")
    if name in table:
        return table[name]
    if name == "bfloat16" and "float16" in table:
        return table["float16"]
    return table["float32"]


def default_scale(head_dim: int) -> float:
    """Softmax scale used when the ``scale`` attribute is absent: ``1 / sqrt(head_dim)``."""
    if head_dim <= 0:
        raise ValueError(f"head_dim must be >= 1, got {head_dim}")
    return 1.0 / math.sqrt(head_dim)


@dataclass(frozen=True)
class OpAttributes:
    """Attribute values of one ``BlockSparseAttention`` node.

    Args:
        block_size: tokens per square block of the layout (``MIN_BLOCK_SIZE..MAX_BLOCK_SIZE``).
        scale: softmax scale applied to ``query @ key^T``.
    """

    block_size: int
    scale: float

    def as_onnx_attributes(self) -> dict:
        """Attributes as written on the ONNX node, plugin routing fields included."""
        return SCHEMA.onnx_attributes(self.block_size, self.scale)


def check_op_type_is_custom(domain: str, op_type: str) -> None:
    """Refuse an op identity that would collide with a standard ONNX op.

    Raises:
        ValueError: if ``domain`` is the default ONNX domain ("" or "ai.onnx").
    """
    if domain in ("", "ai.onnx"):
        raise ValueError(
            f"op {op_type!r} in the default ONNX domain would collide with standard ONNX ops "
            f"(e.g. 'Attention'); use the custom domain {DOMAIN!r}"
        )


DOCS_BEGIN = "<!-- op-schema:begin (generated by opspec.SCHEMA.markdown(); do not edit by hand) -->"
DOCS_END = "<!-- op-schema:end -->"


def render_docs(text: str) -> str:
    """``text`` (a Markdown file) with the part between :data:`DOCS_BEGIN` and
    :data:`DOCS_END` replaced by ``SCHEMA.markdown()``.

    Raises:
        ValueError: when the markers are missing.
    """
    i, j = text.find(DOCS_BEGIN), text.find(DOCS_END)
    if i < 0 or j < i:
        raise ValueError(f"markers {DOCS_BEGIN!r} ... {DOCS_END!r} not found")
    return text[: i + len(DOCS_BEGIN)] + "\n\n" + SCHEMA.markdown() + "\n" + text[j:]


if __name__ == "__main__":  # python -m sparse_attn.opspec FILE.md: refresh the op's tables
    import sys

    for path in sys.argv[1:]:
        with open(path, encoding="utf-8") as f:
            old = f.read()
        new = render_docs(old)
        if new != old:
            with open(path, "w", encoding="utf-8") as f:
                f.write(new)
            print(f"updated {path}")
