"""Ahead-of-time compilation of the Triton kernel to PTX for a launcher outside Python.

Used by the TensorRT plugin's AOT implementation (``tensorrt_plugin``), and testable on a
machine without a GPU: ``triton.compile`` with an explicit ``GPUTarget`` needs no driver.

What the compiled kernel looks like (Triton 3.9, checked here with ``ptxas``):

* constexpr parameters disappear; the PTX ``.entry`` keeps, in order, the 8 input pointers
  (``Q K V RowPtr ColIdx MaskIdx Masks Kpm``), the runtime int32 scalars of
  :data:`RUNTIME_INT_ARGS`, the output pointer ``Out`` ...
* ... and two hidden ``.u64`` pointers appended by Triton (global scratch and profile
  scratch; ``metadata.global_scratch_size`` / ``profile_scratch_size``). TensorRT's AOT
  launch passes exactly "inputs, extra args, outputs", so :func:`compile_kernel` removes the
  two hidden parameters from the ``.entry`` when the kernel needs no scratch (size 0) and
  never reads them, and refuses otherwise. A launcher that does pass them (Triton's own) is
  unaffected by the removal: CUDA reads only the parameters the kernel declares.
* PTX ISA version: Triton's bundled ptxas for sm_90 emits ``.version 9.4``, which CUDA 13.0's
  ptxas and a 580-series driver reject; we ask for 9.0 on sm >= 90 and 8.8 below (Triton
  assembles sm_80 with a CUDA 12.9 ptxas that stops at 8.8): :func:`default_ptx_version`.

Scalars that are fixed when an engine is built (H, D, Dv, layout strides, block size and
``scale``) are compile-time constants; only those that depend on the dynamic ``B`` / ``S``
are int32 launch arguments (TensorRT requires int32 extra arguments).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sparse_attn.errors import InvalidInputError, UnsupportedEnvironmentError

#: Int parameters passed at launch (derived from the request's S); all other ints are constants.
RUNTIME_INT_ARGS = (
    "seq_len",
    "stride_qb",
    "stride_qh",
    "stride_kb",
    "stride_kh",
    "stride_vb",
    "stride_vh",
    "stride_ob",
    "stride_oh",
    "stride_kpm_b",
)
#: Triton pointer type of each data type name (TensorRT / torch / numpy spellings).
POINTER_TYPES = {
    "float32": "*fp32",
    "float16": "*fp16",
    "bfloat16": "*bf16",
    "int32": "*i32",
    "int64": "*i64",
    "int8": "*i8",
    "uint8": "*u8",
    "bool": "*i8",
}
#: Default compile targets (compute capability x 10).
DEFAULT_ARCHS = (80, 90)


def default_ptx_version(arch: int) -> int:
    """PTX ISA version (x 10) to emit for ``sm_<arch>``.

    Triton 3.9 assembles sm < 90 with its CUDA 12.9 ptxas (PTX <= 8.8) and sm >= 90 with its
    CUDA 13.4 ptxas (default PTX 9.4, too new for CUDA 13.0's ptxas and a 580 driver). 8.8
    and 9.0 are both accepted by CUDA 13.0.
    """
    return 88 if int(arch) < 90 else 90


#: Dynamic shared memory a kernel may use without an opt-in attribute (bytes).
SHARED_MEM_LIMIT = 48 * 1024
#: Largest dynamic shared memory per block on sm_80/sm_90 with the opt-in (bytes).
MAX_SHARED_MEM = 163 * 1024


@dataclass(frozen=True)
class KernelSpec:
    """One specialisation of the kernel (everything fixed at engine build time).

    Attributes:
        dtype: ``"float32" | "float16" | "bfloat16"`` of query/key/value/output.
        block_size: layout block size (tokens, 16..128).
        num_heads: H of query (and of the output).
        head_dim: D; value_dim: Dv (1..256).
        layout_heads: rows of ``row_ptr`` (H, or 1 for a layout shared by all heads).
        row_ptr_len: ``nQB_max + 1`` (second dim of ``row_ptr``).
        nnz: second dim of ``col_idx`` / ``mask_idx``.
        scale: softmax scale (baked into the PTX).
        kpm_dtype: dtype of ``key_padding_mask`` or None when absent.
        masks_dtype: dtype of the ``masks`` table (uint8 in an export; the TensorRT engine
            builder widens it to int32).
        num_kv_heads: Hkv of key/value (grouped-query attention, ``num_heads % Hkv == 0``;
            query head ``h`` reads K/V head ``h // (H // Hkv)``); None means ``num_heads``.
    """

    dtype: str
    block_size: int
    num_heads: int
    head_dim: int
    value_dim: int
    layout_heads: int
    row_ptr_len: int
    nnz: int
    scale: float
    kpm_dtype: str | None = "bool"
    masks_dtype: str = "uint8"
    num_kv_heads: int | None = None

    @property
    def kv_heads(self) -> int:
        """Hkv (``num_kv_heads``, or ``num_heads`` when it is None)."""
        return self.num_heads if self.num_kv_heads is None else int(self.num_kv_heads)

    @property
    def config(self):
        """The :class:`~sparse_attn.kernels.triton_kernel.LaunchConfig` of this spec."""
        from sparse_attn.kernels.triton_kernel import launch_config

        return launch_config(self.dtype, self.block_size, self.head_dim, self.value_dim)

    def validate(self) -> None:
        """Raise InvalidInputError on values the kernel does not support."""
        from sparse_attn import opspec

        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise InvalidInputError(
                f"kernel dtype must be float32, float16 or bfloat16, got {self.dtype!r}"
            )
        if not opspec.MIN_BLOCK_SIZE <= self.block_size <= opspec.MAX_BLOCK_SIZE:
            raise InvalidInputError(
                f"block_size must be in {opspec.MIN_BLOCK_SIZE}..{opspec.MAX_BLOCK_SIZE}, "
                f"got {self.block_size}"
            )
        from sparse_attn.kernels.triton_kernel import MAX_HEAD_DIM

        for name in ("head_dim", "value_dim"):
            if not 1 <= getattr(self, name) <= MAX_HEAD_DIM:
                raise InvalidInputError(
                    f"{name} must be in 1..{MAX_HEAD_DIM}, got {getattr(self, name)}"
                )
        if self.num_heads < 1 or self.kv_heads < 1 or self.num_heads % self.kv_heads:
            raise InvalidInputError(
                f"num_heads={self.num_heads} must be a positive multiple of "
                f"num_kv_heads={self.kv_heads}"
            )
        if self.layout_heads not in (1, self.num_heads):
            raise InvalidInputError(
                f"layout has {self.layout_heads} heads; expected 1 or num_heads={self.num_heads}"
            )
        if self.kpm_dtype is not None and self.kpm_dtype not in POINTER_TYPES:
            raise InvalidInputError(f"key_padding_mask dtype {self.kpm_dtype!r} not supported")
        if self.masks_dtype not in ("uint8", "int8", "bool", "int32"):
            raise InvalidInputError(f"masks dtype {self.masks_dtype!r} not supported")


@dataclass
class CompiledKernel:
    """PTX (and cubin) of one specialisation, with what a launcher needs.

    Attributes:
        name: kernel (``.entry``) name.
        ptx: PTX text whose ``.entry`` parameters are exactly inputs, runtime ints, output.
        cubin: machine code from Triton's ptxas (for the original, unstripped PTX).
        arch: compute capability (80, 90, ...); ptx_version: PTX ISA version x 10.
        num_warps: warps per program (block_x = 32 * num_warps); shared: dynamic shared
            memory in bytes.
        params: PTX parameter names kept, in order (pointer inputs, ints, output).
        hidden_params_removed: number of Triton hidden scratch parameters removed.
        needs_shared_opt_in: ``shared`` exceeds 48 KiB: the launcher must raise the
            kernel's ``CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`` (Triton's own
            launcher does; whether TensorRT's AOT launch does is not verified).
    """

    name: str
    ptx: str
    cubin: bytes
    arch: int
    ptx_version: int
    num_warps: int
    shared: int
    params: tuple[str, ...]
    hidden_params_removed: int
    needs_shared_opt_in: bool = False
    metadata: dict = field(default_factory=dict, repr=False)


def _import_triton():
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as exc:  # pragma: no cover - triton is a declared dependency
        raise UnsupportedEnvironmentError(
            f"AOT compilation needs the 'triton' package ({exc}); pip install triton"
        ) from exc
    return triton, GPUTarget, ASTSource


def signature_and_constants(spec: KernelSpec, config=None) -> tuple[dict, dict]:
    """Triton ``signature`` (name -> type or "constexpr") and constexpr values for ``spec``
    (``config``: a :class:`~sparse_attn.kernels.triton_kernel.LaunchConfig`, default the
    spec's own)."""
    from sparse_attn.kernels import triton_kernel as tk

    spec.validate()
    ptr = POINTER_TYPES[spec.dtype]
    consts = tk.compile_constants(
        spec.block_size,
        spec.head_dim,
        spec.value_dim,
        spec.kpm_dtype is not None,
        pv_split=tk.PRECISE_PV and spec.dtype in ("float16", "bfloat16"),
        nonfinite_v=True,  # an engine cannot look at V before launching: always safe
        config=config or spec.config,
        dtype=spec.dtype,
    )
    consts.update(
        scale=float(spec.scale),
        num_heads=int(spec.num_heads),
        kv_group=int(spec.num_heads // spec.kv_heads),
        stride_qs=int(spec.head_dim),
        stride_ks=int(spec.head_dim),
        stride_vs=int(spec.value_dim),
        stride_os=int(spec.value_dim),
        layout_stride_rp=0 if spec.layout_heads == 1 else int(spec.row_ptr_len),
        layout_stride_ci=0 if spec.layout_heads == 1 else int(spec.nnz),
    )
    sig: dict[str, str] = {}
    for name in tk.POINTER_INPUTS:
        sig[name] = {
            "RowPtr": "*i32",
            "ColIdx": "*i32",
            "MaskIdx": "*i32",
            "Masks": POINTER_TYPES[spec.masks_dtype],
            "Kpm": POINTER_TYPES.get(spec.kpm_dtype or "bool", "*i8"),
        }.get(name, ptr)
    for name in tk.INT_ARGS:
        sig[name] = "i32"
    sig["Out"] = ptr
    for name in consts:
        sig[name] = "constexpr"
    if spec.kpm_dtype is None:
        consts["Kpm"] = None
        sig["Kpm"] = "constexpr"
    # keep the kernel's declaration order
    order = [*tk.POINTER_INPUTS, *tk.INT_ARGS, *tk.OUTPUT_ARGS, *tk.CONST_ARGS]
    assert set(order) == set(sig), (sorted(order), sorted(sig))
    return {k: sig[k] for k in order}, consts


def divisibility_hints(spec: KernelSpec) -> list[str]:
    """Kernel arguments that are multiples of 16 (pointers: 16-byte aligned) for ``spec``.

    Like Triton's JIT specialisation, these hints let the compiler vectorise loads (without
    them the kernel needs about twice the registers). Pointers: TensorRT and PyTorch allocate
    device buffers with at least 256-byte alignment. Strides: ``S*H*D`` and ``S*D`` are
    multiples of 16 for every S when ``H*D`` and ``D`` are.
    """
    from sparse_attn.kernels import triton_kernel as tk

    names = [*tk.POINTER_INPUTS, *tk.OUTPUT_ARGS]
    if spec.kpm_dtype is None:
        names.remove("Kpm")
    h, hkv, d, dv = spec.num_heads, spec.kv_heads, spec.head_dim, spec.value_dim
    if (h * d) % 16 == 0:
        names.append("stride_qb")
    if (hkv * d) % 16 == 0:
        names.append("stride_kb")
    if d % 16 == 0:
        names += ["stride_qh", "stride_kh"]
    if (hkv * dv) % 16 == 0:
        names.append("stride_vb")
    if (h * dv) % 16 == 0:
        names.append("stride_ob")
    if dv % 16 == 0:
        names += ["stride_vh", "stride_oh"]
    return names


def runtime_int_values(spec: KernelSpec, seq_len):
    """Values of :data:`RUNTIME_INT_ARGS` for contiguous tensors, in order.

    ``seq_len`` may be an int or a symbolic expression that supports ``*`` with ints on
    its left operand (TensorRT's ``ShapeExpr``); strides are written ``S * const``.
    """
    h, hkv, d, dv = spec.num_heads, spec.kv_heads, spec.head_dim, spec.value_dim
    s = seq_len
    return (
        s,  # seq_len
        s * (h * d),  # stride_qb
        s * d,  # stride_qh
        s * (hkv * d),  # stride_kb   (key [B, Hkv, S, D])
        s * d,  # stride_kh
        s * (hkv * dv),  # stride_vb   (value [B, Hkv, S, Dv])
        s * dv,  # stride_vh
        s * (h * dv),  # stride_ob
        s * dv,  # stride_oh
        s,  # stride_kpm_b
    )


def launch_grid(spec: KernelSpec, batch, seq_len, cdiv=None):
    """Grid ``(ceil(S / block_size) * M_SPLIT * (H // Hkv), B * Hkv, 1)``; ``cdiv`` for
    symbolic sizes.

    ``M_SPLIT = ceil(block_size / block_m)`` programs share one query block (wide heads); the
    ``H // Hkv`` query heads of one K/V head are neighbours on axis 0 (they share K/V tiles).
    """
    cdiv = cdiv or (lambda a, b: -(-a // b))
    per_block = -(-spec.block_size // spec.config.block_m) * (spec.num_heads // spec.kv_heads)
    gx = cdiv(seq_len, spec.block_size)
    if per_block != 1:
        gx = gx * per_block
    return gx, batch * spec.kv_heads, 1


_ENTRY_RE = re.compile(r"\.entry\s+(?P<name>[A-Za-z_$][\w$]*)\s*\((?P<params>[^)]*)\)", re.S)


def entry_params(ptx: str) -> tuple[str, list[str]]:
    """``(kernel name, [parameter declaration lines])`` of the single ``.entry`` in ``ptx``."""
    entries = list(_ENTRY_RE.finditer(ptx))
    if len(entries) != 1:
        raise ValueError(f"expected exactly one .entry in the PTX, found {len(entries)}")
    m = entries[0]
    params = [p.strip() for p in m.group("params").split(",") if p.strip()]
    return m.group("name"), params


def strip_hidden_params(ptx: str, n_visible: int) -> tuple[str, int]:
    """Remove Triton's hidden trailing parameters (those after ``n_visible``) if unused.

    Returns:
        ``(ptx, number removed)``.

    Raises:
        RuntimeError: a hidden parameter is referenced in the kernel body (it needs scratch
            memory that TensorRT would not provide).
    """
    name, params = entry_params(ptx)
    hidden = params[n_visible:]
    if not hidden:
        return ptx, 0
    m = _ENTRY_RE.search(ptx)
    body = ptx[m.end() :]
    for decl in hidden:
        pname = decl.split()[-1]
        if re.search(rf"\[{re.escape(pname)}(\+\d+)?\]", body) or re.search(
            rf"\b{re.escape(pname)}\b", body
        ):
            raise RuntimeError(
                f"kernel {name} reads its hidden parameter {pname} (scratch memory); it cannot "
                "be launched by TensorRT's AOT path"
            )
    kept = ",\n\t".join(params[:n_visible])
    new_entry = f".entry {name}(\n\t{kept}\n)"
    return ptx[: m.start()] + new_entry + ptx[m.end() :], len(hidden)


def compile_kernel(
    spec: KernelSpec,
    arch: int = 90,
    ptx_version: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    strip_hidden: bool = True,
    config=None,
) -> CompiledKernel:
    """Compile ``spec`` for ``sm_<arch>`` without a GPU.

    Args:
        spec: the specialisation (validated here).
        arch: compute capability x 10 (80 = A100, 90 = H100/H200).
        ptx_version: PTX ISA version x 10 (90 -> ``.version 9.0``); default
            :func:`default_ptx_version`.
        num_warps, num_stages: default from the spec's launch configuration
            (:func:`sparse_attn.kernels.triton_kernel.launch_config`).
        strip_hidden: remove Triton's unused hidden scratch parameters (see module docstring).
        config: a :class:`~sparse_attn.kernels.triton_kernel.LaunchConfig` other than the
            spec's own (to compare tilings; a launcher must then use the same one).

    Raises:
        InvalidInputError: unsupported spec.
        UnsupportedEnvironmentError: triton missing.
        RuntimeError: the kernel needs scratch memory or too much shared memory.
    """
    from sparse_attn.kernels import triton_kernel as tk

    triton, GPUTarget, ASTSource = _import_triton()
    if ptx_version is None:
        ptx_version = default_ptx_version(arch)
    spec.validate()
    cfg = config or spec.config
    sig, consts = signature_and_constants(spec, cfg)
    nw = num_warps or cfg.num_warps
    num_stages = num_stages or cfg.num_stages
    fn = tk.get_kernel(False)
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in divisibility_hints(spec)}
    src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    # exactly the launcher's configuration (the JIT launch uses the same num_warps/num_stages)
    ck = triton.compile(
        src,
        target=GPUTarget("cuda", int(arch), 32),
        options={
            "ptx_version": int(ptx_version),
            "num_warps": nw,
            "num_stages": num_stages,
            "enable_fp_fusion": True,
        },
    )
    md = ck.metadata
    for attr in ("global_scratch_size", "profile_scratch_size"):
        if int(getattr(md, attr, 0) or 0) != 0:
            raise RuntimeError(f"compiled kernel needs {attr}={getattr(md, attr)} bytes")
    if int(md.shared) > MAX_SHARED_MEM:
        raise RuntimeError(
            f"kernel needs {md.shared} bytes of shared memory (> {MAX_SHARED_MEM}); use a "
            "smaller block size or head dim"
        )
    visible = [k for k, v in sig.items() if v != "constexpr"]
    ptx = ck.asm["ptx"]
    removed = 0
    if strip_hidden:
        ptx, removed = strip_hidden_params(ptx, len(visible))
    name, params = entry_params(ptx)
    return CompiledKernel(
        name=name,
        ptx=ptx,
        cubin=bytes(ck.asm.get("cubin", b"")),
        arch=int(arch),
        ptx_version=int(ptx_version),
        num_warps=int(md.num_warps),
        shared=int(md.shared),
        params=tuple(visible),
        hidden_params_removed=removed,
        needs_shared_opt_in=int(md.shared) > SHARED_MEM_LIMIT,
        metadata={k: getattr(md, k) for k in ("name", "num_warps", "num_stages", "shared")},
    )


_PTXAS_RE = {
    "registers": re.compile(r"Used (\d+) registers"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
    "stack": re.compile(r"(\d+) bytes stack frame"),
}


def find_ptxas() -> str | None:
    """Path of the CUDA toolkit's ``ptxas`` on ``PATH`` (None when absent)."""
    import shutil

    return shutil.which("ptxas")


def ptxas_usage(ptx: str, arch: int, ptxas: str | None = None) -> dict:
    """Assemble ``ptx`` with ``ptxas -v`` and parse its resource line.

    Returns:
        ``{"registers", "spill_stores", "spill_loads", "stack"}`` (per thread; bytes for the
        last three) and ``"ptxas"`` (the version line of the assembler used).

    Raises:
        UnsupportedEnvironmentError: no ``ptxas`` on PATH; RuntimeError: ptxas failed.
    """
    import subprocess
    import tempfile
    from pathlib import Path

    exe = ptxas or find_ptxas()
    if exe is None:
        raise UnsupportedEnvironmentError(
            "ptxas (CUDA toolkit) is not on PATH; install the CUDA toolkit to assemble PTX"
        )
    target = "sm_90a" if int(arch) == 90 else f"sm_{int(arch)}"
    with tempfile.TemporaryDirectory() as td:
        src = Path(td) / "k.ptx"
        src.write_text(ptx)
        res = subprocess.run(
            [exe, "-v", f"-arch={target}", str(src), "-o", str(Path(td) / "k.cubin")],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if res.returncode != 0:
            raise RuntimeError(f"ptxas failed for {target}: {res.stderr.strip()[-2000:]}")
    out = {}
    for key, rx in _PTXAS_RE.items():
        m = rx.search(res.stderr)
        out[key] = int(m.group(1)) if m else 0
    ver = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    out["ptxas"] = (ver.stdout.strip().splitlines() or ["?"])[-1]
    return out


#: The grid of ``--report``: dtypes, block sizes, head dims (D = Dv) and targets.
REPORT_DTYPES = ("float16", "bfloat16", "float32")
REPORT_BLOCKS = (16, 32, 64, 128)
REPORT_DIMS = (64, 128, 256)


def report_rows(
    dtypes=REPORT_DTYPES, blocks=REPORT_BLOCKS, dims=REPORT_DIMS, archs=DEFAULT_ARCHS
) -> list[dict]:
    """Compile every (dtype, block, D) of the grid for each arch and measure it.

    Each row: ``dtype, block_size, head_dim, arch, block_m, block_n, num_warps, num_stages,
    registers, spill_stores, spill_loads, shared`` (bytes of dynamic shared memory, from
    Triton), ``needs_shared_opt_in``. The AOT variant is measured (with the non-finite-V
    handling and a key padding mask, GQA 8 query heads over 2 K/V heads): the one TensorRT
    engines run, and the largest.
    """
    rows = []
    for dtype in dtypes:
        for bs in blocks:
            for d in dims:
                spec = KernelSpec(dtype, bs, 8, d, d, 8, 65, 300, d**-0.5, num_kv_heads=2)
                cfg = spec.config
                for arch in archs:
                    ck = compile_kernel(spec, arch=arch)
                    use = ptxas_usage(ck.ptx, arch)
                    rows.append(
                        {
                            "dtype": dtype,
                            "block_size": bs,
                            "head_dim": d,
                            "arch": arch,
                            "block_m": cfg.block_m,
                            "block_n": cfg.block_n,
                            "num_warps": cfg.num_warps,
                            "num_stages": cfg.num_stages,
                            "registers": use["registers"],
                            "spill_stores": use["spill_stores"],
                            "spill_loads": use["spill_loads"],
                            "shared": ck.shared,
                            "needs_shared_opt_in": ck.needs_shared_opt_in,
                            "ptxas": use["ptxas"],
                        }
                    )
    return rows


def report_markdown(rows: list[dict]) -> str:
    """The rows of :func:`report_rows` as a Markdown table (one line per dtype/block/D,
    sm_80 and sm_90 side by side)."""
    by = {}
    for r in rows:
        by.setdefault((r["dtype"], r["block_size"], r["head_dim"]), {})[r["arch"]] = r
    archs = sorted({r["arch"] for r in rows})
    head = "| dtype | block | D = Dv | block_m x block_n | warps | stages |"
    sep = "|---|---|---|---|---|---|"
    for a in archs:
        head += f" sm_{a} regs | sm_{a} spill st/ld (B) | sm_{a} smem (KiB) |"
        sep += "---|---|---|"
    lines = [head, sep]
    for (dtype, bs, d), per in by.items():
        r0 = next(iter(per.values()))
        line = (
            f"| {dtype} | {bs} | {d} | {r0['block_m']} x {r0['block_n']} | {r0['num_warps']} "
            f"| {r0['num_stages']} |"
        )
        for a in archs:
            r = per.get(a)
            if r is None:
                line += " - | - | - |"
                continue
            line += (
                f" {r['registers']} | {r['spill_stores']}/{r['spill_loads']} | "
                f"{r['shared'] / 1024:.0f} |"
            )
        lines.append(line)
    ptxas = sorted({r["ptxas"] for r in rows})
    lines.append("")
    lines.append(f"Assembled with: {'; '.join(ptxas)}.")
    return "\n".join(lines)


def main(argv=None) -> int:
    """``python -m sparse_attn.plugins.aot --report [--json FILE]``: print the resource table."""
    import argparse
    import json
    import sys

    ap = argparse.ArgumentParser(
        prog="python -m sparse_attn.plugins.aot",
        description="Compile the Triton kernel ahead of time (no GPU needed) and report "
        "registers, spills and shared memory per (dtype, block size, head dim).",
    )
    ap.add_argument("--report", action="store_true", help="print the Markdown table")
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    ap.add_argument("--dtypes", default=",".join(REPORT_DTYPES))
    ap.add_argument("--blocks", default=",".join(map(str, REPORT_BLOCKS)))
    ap.add_argument("--dims", default=",".join(map(str, REPORT_DIMS)))
    ap.add_argument("--archs", default=",".join(map(str, DEFAULT_ARCHS)))
    args = ap.parse_args(argv)
    if not args.report:
        ap.print_help()
        return 2
    try:
        rows = report_rows(
            tuple(args.dtypes.split(",")),
            tuple(int(x) for x in args.blocks.split(",")),
            tuple(int(x) for x in args.dims.split(",")),
            tuple(int(x) for x in args.archs.split(",")),
        )
    except (InvalidInputError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except UnsupportedEnvironmentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report_markdown(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
