"""Attention implementations compared by ``sparse-attn bench`` (ours and the alternatives).

Each implementation is an :class:`Impl`: it estimates the memory a cell needs (so that a
cell that would exhaust the machine is reported ``n/a`` instead of run), prepares a
zero-argument callable outside the timed region (exports, session creation, layout
conversion, mask construction, compilation happens on the first, untimed call) and says
how to bring its output back to ``[B, H, S, Dv]`` for the accuracy column.

Ours:
  ``ours_torch``     ``sparse_attn.kernels.block_sparse_attention(..., backend="torch")``
                     (the compiled CPU kernel ``cpu_ext`` when available)
  ``ours_torch_pure`` the same with ``SPARSE_ATTN_DISABLE_CPU_EXT=1`` (PyTorch ops only)
  ``ours_onnx_ort``  the ``attention`` family export (custom op + its function body) in ORT

Alternatives:
  ``sdpa_dense``     ``torch.nn.functional.scaled_dot_product_attention``, no mask
  ``sdpa_causal``    the same with ``is_causal=True`` (causal patterns only)
  ``sdpa_mask``      the same with the pattern's boolean ``[S, S]`` token mask
  ``flex_compiled``  FlexAttention under ``torch.compile`` with a BlockMask built from our
                     layout (same blocks, partial blocks masked token-exactly)
  ``ort_dense``      ONNX Runtime, a MatMul-Softmax-MatMul graph built with onnx.helper
  ``ort_mha``        ONNX Runtime ``com.microsoft.MultiHeadAttention`` (dense)
  ``ort_sparse``     ONNX Runtime ``com.microsoft.SparseAttention`` (causal layouts only;
                     it applies our *block* layout plus a causal mask, not our partial-tile
                     masks, so its output differs where a tile is partial for other reasons)
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sparse_attn.bench.harness import NotAvailable

F32 = 4  # bytes


@dataclass
class Case:
    """One attention problem: inputs and the layout of one pattern at one length.

    Attributes:
        query, key: ``float32 [B, H, S, D]`` torch tensors; value: ``float32 [B, H, S, Dv]``.
        layout: the :class:`~sparse_attn.layout.BlockLayout` for exactly ``S`` tokens.
        spec: the pattern spec as given on the command line (preset name or spec string).
        causal: the causal flag the layout was compiled with (``compile_layout(causal=)``);
            ``layout.causal`` may also be True for a preset that is causal by itself.
        density: visible (query, key) pairs / S^2 (``layout.stats()["density_tokens"]``).
        workdir: folder for exported models of this run.
        threads: intra-op threads for torch and ONNX Runtime.
    """

    query: object
    key: object
    value: object
    layout: object
    spec: str
    causal: bool
    density: float
    workdir: Path
    threads: int = 2
    cache: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(self.query.shape)  # type: ignore[return-value]

    @property
    def seq_len(self) -> int:
        return int(self.query.shape[2])

    @property
    def scale(self) -> float:
        return 1.0 / math.sqrt(int(self.query.shape[3]))

    def numpy_inputs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(q, k, v)`` as contiguous float32 NumPy arrays ``[B, H, S, D]`` (cached)."""
        if "np" not in self.cache:
            self.cache["np"] = tuple(
                np.ascontiguousarray(t.numpy()) for t in (self.query, self.key, self.value)
            )
        return self.cache["np"]

    def heads_identical(self) -> bool:
        """True when every head of the layout has the same blocks and masks."""
        lay = self.layout
        return bool(
            (lay.row_ptr == lay.row_ptr[:1]).all()
            and (lay.col_idx == lay.col_idx[:1]).all()
            and (lay.mask_idx == lay.mask_idx[:1]).all()
        )


@dataclass(frozen=True)
class Impl:
    """One implementation column of the benchmark.

    Attributes:
        name: identifier used on the command line and in the JSON.
        label: human-readable name for tables and plots.
        ours: True for this project's implementations.
        computes: ``"pattern"`` (token-exact pattern), ``"dense"``, ``"dense_causal"`` or
            ``"block_causal"`` (our block layout intersected with causal).
        pattern_independent: the result does not depend on the pattern (dense baselines are
            measured once per S and reused).
        estimate_bytes: memory (bytes) one call is expected to need beyond its inputs.
        prepare: returns the zero-argument callable to time; raises NotAvailable.
        to_bhsd: converts the callable's result to a float32 torch tensor ``[B, H, S, Dv]``.
    """

    name: str
    label: str
    ours: bool
    computes: str
    pattern_independent: bool
    estimate_bytes: Callable[[Case], int]
    prepare: Callable[[Case], Callable[[], object]]
    to_bhsd: Callable[[object, Case], object]
    causal_only: bool = False


# ---------------------------------------------------------------------------- helpers
def _torch():
    import torch

    return torch


def _identity(out, case):
    return out


def _from_numpy_bhsd(out, case):
    return _torch().from_numpy(np.asarray(out))


def _from_numpy_bshd(out, case):
    b, h, s, _ = case.shape
    a = np.asarray(out)
    return _torch().from_numpy(a.reshape(b, s, h, -1).transpose(0, 2, 1, 3).copy())


def _ort():
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - onnxruntime is a dependency of [cpu]
        raise NotAvailable("onnxruntime is not installed (pip install sparse-attn[cpu])") from exc
    return ort


def _ort_session(path_or_bytes, threads: int):
    from sparse_attn.runtime.onnxruntime_backend import session_options

    ort = _ort()
    # The runtime's options (no per-shape memory pattern), and no busy-waiting of idle pool
    # threads: on a shared machine spinning steals the cores and inflates the CPU-time view;
    # with the cores to itself the difference is small.
    so = session_options(threads, allow_spinning=False)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(
        str(path_or_bytes) if isinstance(path_or_bytes, Path) else path_or_bytes,
        sess_options=so,
        providers=["CPUExecutionProvider"],
    )


def _scores_bytes(case: Case) -> int:
    b, h, s, _ = case.shape
    return b * h * s * s * F32


def _nnz_tokens(case: Case) -> int:
    """Stored tiles x block_size^2 summed over heads (the work a block-sparse kernel does)."""
    lay = case.layout
    return int(lay.nnz.sum()) * lay.block_size**2


def head_token_mask(layout, head: int) -> np.ndarray:
    """``bool [S, S]`` token mask of one head of ``layout`` (O(S^2) memory)."""
    nb, bs, s = layout.num_blocks, layout.block_size, layout.seq_len
    out = np.zeros((nb * bs, nb * bs), dtype=bool)
    for r in range(nb):
        cols, midx = layout.row(head, r)
        for c, m in zip(cols, midx, strict=True):
            out[r * bs : (r + 1) * bs, c * bs : (c + 1) * bs] = (
                True if m < 0 else layout.masks[m].astype(bool)
            )
    return out[:s, :s]


# ---------------------------------------------------------------------------- ours: torch
_DISABLE_CPU_EXT = "SPARSE_ATTN_DISABLE_CPU_EXT"


def _ours_torch_prepare_for(pure: bool):
    def prepare(case: Case):
        try:
            from sparse_attn.kernels import block_sparse_attention
        except ImportError as exc:
            raise NotAvailable(
                f"sparse_attn.kernels.block_sparse_attention missing ({exc})"
            ) from exc
        torch = _torch()
        q, k, v, lay = case.query, case.key, case.value, case.layout

        def run():
            with torch.inference_mode():
                return block_sparse_attention(q, k, v, lay, backend="torch")

        if pure:

            def run_pure():
                old = os.environ.get(_DISABLE_CPU_EXT)
                os.environ[_DISABLE_CPU_EXT] = "1"
                try:
                    return run()
                finally:
                    if old is None:
                        del os.environ[_DISABLE_CPU_EXT]
                    else:
                        os.environ[_DISABLE_CPU_EXT] = old

            run_pure.note = "pure PyTorch path (SPARSE_ATTN_DISABLE_CPU_EXT=1)"
            return run_pure
        try:
            from sparse_attn.kernels.torch_backend import cpu_ext_active

            active = bool(cpu_ext_active())
        except Exception:  # noqa: BLE001 - older backend without the probe
            active = False
        if os.environ.get(_DISABLE_CPU_EXT, "") not in ("", "0"):
            active = False
        run.note = "compiled CPU kernel (cpu_ext)" if active else "pure PyTorch path"
        return run

    return prepare


def _ours_torch_bytes(case: Case) -> int:
    b, h, s, d = case.shape
    # Measured peaks at S=16384: <= 70 MiB (compiled kernel), <= 250 MiB (pure PyTorch,
    # gathered per bucket of rows); a quarter of the stored tiles' scores is a safe bound.
    return b * _nnz_tokens(case) * F32 // 4 + 6 * b * h * s * d * F32


# ---------------------------------------------------------------------------- ours: ONNX export
def export_family(name: str):
    """The export module of family ``name`` (``sparse_attn.export.get_family``).

    Raises:
        NotAvailable: when the export package or the family is not there.
    """
    try:
        from sparse_attn.export import get_family

        return get_family(name)
    except Exception as exc:  # noqa: BLE001 - absence is reported as the cell's reason
        raise NotAvailable(f"export family {name!r} is not available: {exc}") from exc


#: Export-core sources every family's ONNX file depends on (cache key of exported models).
_EXPORT_CORE = (
    "__init__.py",
    "exporter.py",
    "function_body.py",
    "hf_common.py",
    "metadata.py",
    "modules.py",
    "symbolic.py",
)


def _export_code_hash(family: str = "attention") -> str:
    """Short hash of the sources an export of ``family`` depends on (export core, the
    family module, ``opspec``, ``ops``): cached exports are keyed by it, so a change of the
    exporter never reuses a stale file."""
    import hashlib

    pkg = Path(__file__).resolve().parents[1]
    files = [pkg / "export" / n for n in (*_EXPORT_CORE, f"{family}.py")]
    files += [pkg / "opspec.py", pkg / "ops.py"]
    hsh = hashlib.sha256()
    for f in files:
        if f.is_file():
            hsh.update(f.name.encode() + f.read_bytes())
    return hsh.hexdigest()[:10]


def _ours_onnx_path(case: Case) -> Path:
    """Cache path of the export of ``case``: pattern, sizes, layout and export code in the name."""
    b, h, s, d = case.shape
    safe = "".join(ch if ch.isalnum() else "_" for ch in case.spec)[:60]
    key = f"{case.layout.layout_hash()[:10]}_{_export_code_hash()}"
    return case.workdir / f"attention_{safe}_S{s}_bs{case.layout.block_size}_H{h}_D{d}_{key}.onnx"


def _ours_onnx_prepare(case: Case):
    fam = export_family("attention")
    if not hasattr(fam, "export_onnx"):
        raise NotAvailable("export family 'attention' has no export_onnx()")
    b, h, s, d = case.shape
    path = _ours_onnx_path(case)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + f".tmp{os.getpid()}.onnx")
        try:
            fam.export_onnx(
                tmp,
                pattern=case.layout,
                block_size=case.layout.block_size,
                max_seq_len=s,
                dtype="float32",
                causal=bool(case.layout.causal),
                num_heads=h,
                head_dim=d,
                key_padding_mask=False,
                verbose=False,
            )
            os.replace(tmp, path)  # an interrupted export never leaves a cached file
        except NotAvailable:
            raise
        except Exception as exc:  # noqa: BLE001 - any export failure is reported, not fatal
            raise NotAvailable(f"export failed: {type(exc).__name__}: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)
    sess = _ort_session(path, case.threads)
    qn, kn, vn = case.numpy_inputs()
    names = [i.name for i in sess.get_inputs()]
    feeds = {"query": qn, "key": kn, "value": vn}
    missing = [n for n in names if n not in feeds]
    if missing:
        raise NotAvailable(f"exported model wants inputs {missing} the benchmark does not feed")
    out_name = sess.get_outputs()[0].name
    return lambda: sess.run([out_name], feeds)[0]


def _ours_onnx_bytes(case: Case) -> int:
    b, h, s, d = case.shape
    # Function body of standard ops: gathered K/V blocks and tile scores, a few copies
    # (measured peak at S=4096: about half of 4 copies, e.g. 1.66 GiB for sliding_window).
    bs = case.layout.block_size
    return int(2.5 * b * int(case.layout.nnz.sum()) * bs * (bs + 2 * d) * F32)


# ---------------------------------------------------------------------------- SDPA
def _sdpa_prepare(kind: str):
    def prepare(case: Case):
        torch = _torch()
        f = torch.nn.functional.scaled_dot_product_attention
        q, k, v = case.query, case.key, case.value
        if kind == "dense":
            return lambda: _inference(lambda: f(q, k, v))
        if kind == "causal":
            return lambda: _inference(lambda: f(q, k, v, is_causal=True))
        lay = case.layout
        if case.heads_identical():
            mask = torch.from_numpy(head_token_mask(lay, 0))[None, None]
        else:
            mask = torch.from_numpy(
                np.stack([head_token_mask(lay, h) for h in range(lay.num_heads)])
            )[None]
        return lambda: _inference(lambda: f(q, k, v, attn_mask=mask))

    return prepare


def _inference(fn):
    with _torch().inference_mode():
        return fn()


def _sdpa_mask_bytes(case: Case) -> int:
    b, h, s, d = case.shape
    hm = 1 if case.heads_identical() else h
    # bool mask + the float additive mask SDPA derives from it.
    return hm * s * s * (1 + F32) + 4 * b * h * s * d * F32


def _sdpa_dense_bytes(case: Case) -> int:
    b, h, s, d = case.shape
    return 4 * b * h * s * d * F32


# ---------------------------------------------------------------------------- FlexAttention
def _flex_prepare(case: Case):
    torch = _torch()
    try:
        from torch.nn.attention.flex_attention import BlockMask, flex_attention
    except ImportError as exc:
        raise NotAvailable(f"FlexAttention not in this torch ({exc})") from exc
    lay = case.layout
    b, h, s, d = case.shape
    nb, bs = lay.num_blocks, lay.block_size
    if s % bs:
        raise NotAvailable(f"S={s} is not a multiple of block {bs} (BlockMask needs whole blocks)")
    kv_num = np.zeros((1, h, nb), np.int32)
    kv_idx = np.zeros((1, h, nb, nb), np.int32)
    full_num = np.zeros((1, h, nb), np.int32)
    full_idx = np.zeros((1, h, nb, nb), np.int32)
    tab = np.full((h, nb, nb), -2, np.int32)
    for hh in range(h):
        for r in range(nb):
            cols, midx = lay.row(hh, r)
            tab[hh, r, cols] = midx
            part, full = cols[midx >= 0], cols[midx < 0]
            kv_num[0, hh, r] = len(part)
            kv_idx[0, hh, r, : len(part)] = part
            full_num[0, hh, r] = len(full)
            full_idx[0, hh, r, : len(full)] = full
    masks = lay.masks.astype(bool) if lay.masks.shape[0] else np.zeros((1, bs, bs), bool)
    tab_t = torch.from_numpy(tab)
    masks_t = torch.from_numpy(masks)

    def mask_mod(b_, h_, q_idx, kv_idx_):
        m = tab_t[h_, q_idx // bs, kv_idx_ // bs]
        return (m == -1) | ((m >= 0) & masks_t[m.clamp(min=0), q_idx % bs, kv_idx_ % bs])

    block_mask = BlockMask.from_kv_blocks(
        torch.from_numpy(kv_num),
        torch.from_numpy(kv_idx),
        torch.from_numpy(full_num),
        torch.from_numpy(full_idx),
        BLOCK_SIZE=bs,
        mask_mod=mask_mod,
        seq_lengths=(s, s),
    )
    torch._dynamo.reset()  # a fresh cache per cell: no recompile limit, compile time visible
    compiled = torch.compile(flex_attention, dynamic=False)
    q, k, v = case.query, case.key, case.value
    return lambda: _inference(lambda: compiled(q, k, v, block_mask=block_mask))


def _flex_bytes(case: Case) -> int:
    b, h, s, d = case.shape
    nb = case.layout.num_blocks
    return 4 * h * nb * nb * 4 + 6 * b * h * s * d * F32


# ---------------------------------------------------------------------------- ORT dense graphs
def _ort_dense_model(case: Case) -> bytes:
    import onnx
    from onnx import TensorProto, helper

    b, h, s, d = case.shape
    dims = ["B", h, "S", d]
    nodes = [
        helper.make_node("Transpose", ["key"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["query", "kt"], ["scores_raw"]),
        helper.make_node("Mul", ["scores_raw", "scale"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", "value"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "dense_attention",
        [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, dims)
            for n in ("query", "key", "value")
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, dims)],
        initializer=[helper.make_tensor("scale", TensorProto.FLOAT, [], [case.scale])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _ort_dense_prepare(case: Case):
    sess = _ort_session(_ort_dense_model(case), case.threads)
    qn, kn, vn = case.numpy_inputs()
    feeds = {"query": qn, "key": kn, "value": vn}
    return lambda: sess.run(["output"], feeds)[0]


def _ort_dense_bytes(case: Case) -> int:
    # Measured: one [B, H, S, S] fp32 score tensor (ORT fuses the scale, softmax in place).
    return int(1.5 * _scores_bytes(case))


def _bshd(a: np.ndarray) -> np.ndarray:
    b, h, s, d = a.shape
    return np.ascontiguousarray(a.transpose(0, 2, 1, 3).reshape(b, s, h * d))


def _ort_mha_prepare(case: Case):
    import onnx
    from onnx import TensorProto, helper

    b, h, s, d = case.shape
    dims = ["B", "S", h * d]
    node = helper.make_node(
        "MultiHeadAttention",
        ["query", "key", "value"],
        ["output"],
        domain="com.microsoft",
        num_heads=h,
        scale=case.scale,
    )
    graph = helper.make_graph(
        [node],
        "mha",
        [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, dims)
            for n in ("query", "key", "value")
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, dims)],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    sess = _ort_session(model.SerializeToString(), case.threads)
    feeds = {
        n: _bshd(a) for n, a in zip(("query", "key", "value"), case.numpy_inputs(), strict=True)
    }
    return lambda: sess.run(["output"], feeds)[0]


def _ort_mha_bytes(case: Case) -> int:
    # Measured ~0.08 x the score tensor at S=4096 (a tiled CPU kernel); margin for fallbacks.
    return _scores_bytes(case) // 4


def _ort_sparse_prepare(case: Case):
    import onnx
    from onnx import TensorProto, helper

    lay = case.layout
    if not (lay.causal or case.causal):
        raise NotAvailable("com.microsoft.SparseAttention supports causal patterns only")
    b, h, s, d = case.shape
    bs = lay.block_size
    if bs < 16 or bs & (bs - 1):
        raise NotAvailable(f"SparseAttention needs a power-of-two block >= 16, got {bs}")
    n_layouts = 1 if case.heads_identical() else h
    nnz = lay.nnz[:n_layouts]
    max_nnz = int(nnz.max())
    row = np.ascontiguousarray(lay.row_ptr[:n_layouts].astype(np.int32))
    col = np.full((n_layouts, max_nnz), -1, np.int32)
    for i in range(n_layouts):
        col[i, : nnz[i]] = lay.col_idx[i, : nnz[i]]
    nb = lay.num_blocks
    inputs = [
        helper.make_tensor_value_info("query", TensorProto.FLOAT, [b, s, h * d]),
        helper.make_tensor_value_info("key", TensorProto.FLOAT, [b, s, h * d]),
        helper.make_tensor_value_info("value", TensorProto.FLOAT, [b, s, h * d]),
        helper.make_tensor_value_info("past_key", TensorProto.FLOAT, [b, h, s, d]),
        helper.make_tensor_value_info("past_value", TensorProto.FLOAT, [b, h, s, d]),
    ]
    inits = [
        helper.make_tensor(
            "block_row_indices", TensorProto.INT32, [n_layouts, nb + 1], row.ravel()
        ),
        helper.make_tensor(
            "block_col_indices", TensorProto.INT32, [n_layouts, max_nnz], col.ravel()
        ),
        helper.make_tensor("total_sequence_length", TensorProto.INT32, [1], [s]),
        helper.make_tensor("key_total_sequence_lengths", TensorProto.INT32, [b], [s] * b),
    ]
    node = helper.make_node(
        "SparseAttention",
        [
            "query",
            "key",
            "value",
            "past_key",
            "past_value",
            "block_row_indices",
            "block_col_indices",
            "total_sequence_length",
            "key_total_sequence_lengths",
        ],
        ["output", "present_key", "present_value"],
        domain="com.microsoft",
        num_heads=h,
        kv_num_heads=h,
        scale=case.scale,
        sparse_block_size=bs,
    )
    graph = helper.make_graph(
        [node],
        "sparse_attention",
        inputs,
        [
            helper.make_tensor_value_info("output", TensorProto.FLOAT, [b, s, h * d]),
            helper.make_tensor_value_info("present_key", TensorProto.FLOAT, [b, h, s, d]),
            helper.make_tensor_value_info("present_value", TensorProto.FLOAT, [b, h, s, d]),
        ],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    ort = _ort()
    sess = _ort_session(model.SerializeToString(), case.threads)
    qn, kn, vn = (_bshd(a) for a in case.numpy_inputs())
    past_k = ort.OrtValue.ortvalue_from_numpy(np.zeros((b, h, s, d), np.float32))
    past_v = ort.OrtValue.ortvalue_from_numpy(np.zeros((b, h, s, d), np.float32))
    out = ort.OrtValue.ortvalue_from_numpy(np.zeros((b, s, h * d), np.float32))
    io = sess.io_binding()
    io.bind_cpu_input("query", qn)
    io.bind_cpu_input("key", kn)
    io.bind_cpu_input("value", vn)
    # The CPU kernel insists that past and present share one buffer (FACTS.md).
    io.bind_ortvalue_input("past_key", past_k)
    io.bind_ortvalue_input("past_value", past_v)
    io.bind_ortvalue_output("present_key", past_k)
    io.bind_ortvalue_output("present_value", past_v)
    io.bind_ortvalue_output("output", out)

    def run():
        sess.run_with_iobinding(io)
        return out

    return run


def _ort_sparse_to_bhsd(out, case: Case):
    return _from_numpy_bshd(out.numpy(), case)


def _ort_sparse_bytes(case: Case) -> int:
    # Measured: the CPU kernel materialises the whole [B, H, S, S] score tensor.
    b, h, s, d = case.shape
    return int(1.2 * _scores_bytes(case)) + 6 * b * h * s * d * F32


# ---------------------------------------------------------------------------- registry
IMPLS: dict[str, Impl] = {
    i.name: i
    for i in (
        Impl(
            "ours_torch",
            "ours: torch backend",
            True,
            "pattern",
            False,
            _ours_torch_bytes,
            _ours_torch_prepare_for(pure=False),
            _identity,
        ),
        Impl(
            "ours_torch_pure",
            "ours: torch backend, pure PyTorch",
            True,
            "pattern",
            False,
            _ours_torch_bytes,
            _ours_torch_prepare_for(pure=True),
            _identity,
        ),
        Impl(
            "ours_onnx_ort",
            "ours: exported op in ORT",
            True,
            "pattern",
            False,
            _ours_onnx_bytes,
            _ours_onnx_prepare,
            _from_numpy_bhsd,
        ),
        Impl(
            "sdpa_dense",
            "SDPA dense",
            False,
            "dense",
            True,
            _sdpa_dense_bytes,
            _sdpa_prepare("dense"),
            _identity,
        ),
        Impl(
            "sdpa_causal",
            "SDPA causal",
            False,
            "dense_causal",
            True,
            _sdpa_dense_bytes,
            _sdpa_prepare("causal"),
            _identity,
            causal_only=True,
        ),
        Impl(
            "sdpa_mask",
            "SDPA + bool mask",
            False,
            "pattern",
            False,
            _sdpa_mask_bytes,
            _sdpa_prepare("mask"),
            _identity,
        ),
        Impl(
            "flex_compiled",
            "FlexAttention compiled",
            False,
            "pattern",
            False,
            _flex_bytes,
            _flex_prepare,
            _identity,
        ),
        Impl(
            "ort_dense",
            "ORT MatMul-Softmax-MatMul",
            False,
            "dense",
            True,
            _ort_dense_bytes,
            _ort_dense_prepare,
            _from_numpy_bhsd,
        ),
        Impl(
            "ort_mha",
            "ORT MultiHeadAttention",
            False,
            "dense",
            True,
            _ort_mha_bytes,
            _ort_mha_prepare,
            _from_numpy_bshd,
        ),
        Impl(
            "ort_sparse",
            "ORT SparseAttention",
            False,
            "block_causal",
            False,
            _ort_sparse_bytes,
            _ort_sparse_prepare,
            _ort_sparse_to_bhsd,
            causal_only=True,
        ),
    )
}
