"""Compiled CPU kernel for block-sparse attention (a small PyTorch C++ extension).

The kernel (``csrc/``) runs FlashAttention's online-softmax loop (Dao et al., NeurIPS 2022,
Alg. 1) over the CSR row of each (batch, query block, group of query heads sharing one K/V
head): ``S^T = K Q^T`` and ``O^T += V^T P^T`` are register-blocked GEMMs of its own per run of
consecutive key blocks, the masks are selected to -inf, the softmax runs in fp32 (base 2).
The query heads that read the same K/V head and have the same CSR row are processed as one
item, so each K/V tile is loaded once for all of them (grouped-query attention without
copying K/V). The body is compiled for AVX-512, AVX2+FMA and portable scalar code in one
binary; the path is chosen at run time from CPUID (:func:`isa`).

Public API:

* :func:`is_available` -> ``bool``: the extension is built (or builds now) and loads. Never
  raises; ``SPARSE_ATTN_DISABLE_CPU_EXT=1`` forces ``False``.
* :func:`unavailable_reason` -> ``str | None``: why :func:`is_available` is ``False``.
* :func:`build` compiles (if needed) and loads the extension; raises
  :class:`~sparse_attn.errors.UnsupportedEnvironmentError` when it cannot.
* :func:`not_supported_reason` -> ``str | None``: why the kernel cannot take these tensors.
* :func:`attention_arrays` runs the kernel on layout arrays (same contract as
  ``sparse_attn.kernels.torch_backend.attention_arrays``).
* :func:`isa` / :func:`supported_isas`: the instruction set a call uses / this CPU offers.

Build: ``python -m sparse_attn.kernels.cpu_ext --build`` (run by ``make install``) compiles
with ``torch.utils.cpp_extension.load`` into ``sparse_attn/kernels/build/cpu_ext-<tag>/``
(``<tag>`` = torch version and ABI), or ``$SPARSE_ATTN_CPU_EXT_BUILD_DIR`` if set, or a user
cache directory when the package directory is read-only. The build is cached and only redone
when a source file or torch changes; later imports just load the shared library.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
import threading
import time
from pathlib import Path

import torch

from sparse_attn.errors import InvalidInputError, UnsupportedEnvironmentError

#: Backend-visible name of this kernel.
NAME = "cpu_ext"
#: Environment variable that, set to ``1``, makes :func:`is_available` return ``False``.
DISABLE_ENV = "SPARSE_ATTN_DISABLE_CPU_EXT"
#: Environment variable overriding the build directory.
BUILD_DIR_ENV = "SPARSE_ATTN_CPU_EXT_BUILD_DIR"
#: Input dtypes the kernel takes (computed in fp32; output in the query's dtype).
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

#: Environment variable forcing the instruction set: ``auto`` (default), ``avx512``,
#: ``avx2`` or ``scalar``; one this CPU lacks is an error.
ISA_ENV = "SPARSE_ATTN_CPU_ISA"
#: Instruction sets the binary carries, from the most portable.
ISAS = ("scalar", "avx2", "avx512")
#: Largest head dim (D and Dv) the kernel takes.
MAX_HEAD_DIM = 256

_CSRC = Path(__file__).resolve().parent / "csrc"
_SOURCES = (_CSRC / "block_sparse_attn_cpu.cpp",)
_HEADERS = (_CSRC / "attn_common.h", _CSRC / "attn_isa_body.h")
_EXT_NAME = "sparse_attn_cpu_ext"
# Portable flags: no -march=native. The kernel body is compiled once per ISA inside the
# source (GCC target pragmas) and chosen per call from CPUID.
# -fopenmp: at::parallel_for is a header template that expands to an OpenMP region (torch's
# parallel backend here); without the flag the pragma is ignored and the kernel runs on one
# thread whatever torch.get_num_threads() says.
_CFLAGS = ("-O3", "-fno-math-errno", "-Wno-unused-parameter", "-fopenmp")
_LDFLAGS = ("-fopenmp",)


def _source_digest() -> str:
    # torch.utils.cpp_extension rebuilds when the listed sources or the flags change; the
    # headers are not listed, so their digest goes into the flags.
    h = hashlib.blake2b(digest_size=8)
    for path in (*_SOURCES, *_HEADERS):
        h.update(path.read_bytes())
    return h.hexdigest()


_lock = threading.Lock()
_state: dict[str, object] = {}


def _disabled() -> bool:
    # Any value other than "" or "0" disables (the torch backend relies on this rule).
    return os.environ.get(DISABLE_ENV, "") not in ("", "0")


def _tag() -> str:
    ver = torch.__version__.replace("+", "_").replace(".", "_")
    abi = int(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", True))
    return f"torch{ver}_abi{abi}_py{sys.version_info[0]}{sys.version_info[1]}"


def build_directory() -> Path:
    """Directory the extension is compiled into (created if needed).

    Order: ``$SPARSE_ATTN_CPU_EXT_BUILD_DIR``; ``sparse_attn/kernels/build/cpu_ext-<tag>``
    when the package directory is writable (a source checkout); else
    ``$XDG_CACHE_HOME/sparse_attn/cpu_ext-<tag>`` (default ``~/.cache``).
    """
    env = os.environ.get(BUILD_DIR_ENV)
    if env:
        path = Path(env)
    else:
        pkg = Path(__file__).resolve().parent
        if os.access(pkg, os.W_OK):
            path = pkg / "build" / f"cpu_ext-{_tag()}"
        else:
            cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
            path = cache / "sparse_attn" / f"cpu_ext-{_tag()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _ensure_ninja_on_path() -> None:
    # torch.utils.cpp_extension runs `ninja --version` from PATH; a venv's bin directory is
    # not on PATH when its python is called by full path.
    bindir = str(Path(sys.executable).parent)
    parts = os.environ.get("PATH", "").split(os.pathsep)
    if bindir not in parts:
        os.environ["PATH"] = os.pathsep.join([bindir, *parts])


#: A build lock older than this (seconds) was left by a killed build (a real one takes under
#: a minute on an idle machine, 6 min on a 2-core machine at load 15).
_STALE_LOCK_S = 1800


def _remove_stale_lock(bdir: Path) -> None:
    # torch.utils.cpp_extension waits forever on the lock file of a build that was killed.
    lock = bdir / "lock"
    try:
        if time.time() - lock.stat().st_mtime > _STALE_LOCK_S:
            lock.unlink()
    except OSError:
        pass


def _op_loaded() -> bool:
    try:
        return hasattr(torch.ops.sparse_attn_cpu, "attention_arrays")
    except (AttributeError, RuntimeError):
        return False


def build(verbose: bool = False) -> Path:
    """Compile (if the cached build is stale or missing) and load the extension.

    Safe to call from several processes at once (``torch.utils.cpp_extension`` locks the
    build directory). Takes about 40 s the first time on 2 idle cores (the kernel body is
    compiled for three instruction sets; minutes on a loaded machine), well under 1 s after.

    Args:
        verbose: print the compiler command lines and output.

    Returns:
        The build directory holding the shared library.

    Raises:
        UnsupportedEnvironmentError: no C++ compiler / ninja, compile or load failure (the
            message carries the first lines of the error).
    """
    with _lock:
        if _state.get("loaded"):
            return Path(str(_state["dir"]))
        if _op_loaded():  # loaded by another path in this process
            _register_fake()
            _state.update(loaded=True, dir=str(build_directory()))
            return Path(str(_state["dir"]))
        try:
            from torch.utils import cpp_extension

            _ensure_ninja_on_path()
            bdir = build_directory()
            _remove_stale_lock(bdir)
            cpp_extension.load(
                name=_EXT_NAME,
                sources=[str(s) for s in _SOURCES],
                extra_cflags=[*_CFLAGS, f"-DSA_SOURCE_DIGEST={_source_digest()}"],
                extra_ldflags=list(_LDFLAGS),
                build_directory=str(bdir),
                is_python_module=False,
                verbose=verbose,
            )
        except Exception as exc:  # compiler missing, compile error, load error, ...
            msg = " ".join(str(exc).split())[:400]
            raise UnsupportedEnvironmentError(
                f"cannot build the sparse_attn CPU extension ({type(exc).__name__}: {msg}); "
                "install a C++ compiler (g++) and ninja (pip install ninja), or set "
                f"{DISABLE_ENV}=1 to use the pure PyTorch path"
            ) from exc
        if not _op_loaded():
            raise UnsupportedEnvironmentError(
                "the sparse_attn CPU extension loaded but registered no "
                "torch.ops.sparse_attn_cpu.attention_arrays; rebuild with "
                "`python -m sparse_attn.kernels.cpu_ext --build --verbose`"
            )
        _register_fake()
        _state.update(loaded=True, dir=str(bdir))
        return bdir


def _register_fake() -> None:
    """Shape-only implementation so torch.compile / torch.export can trace the op."""
    try:

        @torch.library.register_fake("sparse_attn_cpu::attention_arrays")
        def _fake(query, key, value, row_ptr, col_idx, mask_idx, masks, kpm, block_size, scale):
            b, h, s, _ = query.shape  # key/value may have fewer (grouped) heads
            return query.new_empty((b, h, s, value.shape[-1]))

    except RuntimeError:  # already registered in this process
        pass


def is_available() -> bool:
    """Whether the compiled kernel can be used (builds it on first call if needed).

    Returns ``False``, never raises, when the extension cannot be built or loaded (no C++
    compiler or ninja, compile or load error; checked on Linux x86-64 with GCC 12 only), or
    when ``SPARSE_ATTN_DISABLE_CPU_EXT=1``. The outcome of the first attempt is cached for the
    process (the environment variable is read on every call).
    """
    if _disabled():
        return False
    if "error" in _state:
        return False
    try:
        build()
        return True
    except Exception as exc:  # noqa: BLE001 - the contract is "False, never an exception"
        _state["error"] = str(exc)
        return False


def unavailable_reason() -> str | None:
    """Why :func:`is_available` is ``False`` (``None`` when it is available)."""
    if _disabled():
        return f"disabled by {DISABLE_ENV}=1"
    if is_available():
        return None
    return str(_state.get("error", "unknown"))


def isa() -> str:
    """Instruction set the kernel uses in this process: ``"avx512"``, ``"avx2"`` or ``"scalar"``.

    The best one this CPU supports, unless ``SPARSE_ATTN_CPU_ISA`` names another.

    Raises:
        UnsupportedEnvironmentError: the extension is unavailable, or ``SPARSE_ATTN_CPU_ISA``
            is unknown or names an instruction set this CPU lacks.
    """
    build()
    _check_isa_env()
    return str(torch.ops.sparse_attn_cpu.isa())


def supported_isas() -> list[str]:
    """Instruction sets of the binary this CPU can run, from the most portable (``scalar``)."""
    build()
    return [str(x) for x in torch.ops.sparse_attn_cpu.supported_isas()]


def _check_isa_env() -> None:
    want = os.environ.get(ISA_ENV, "")
    if want in ("", "auto"):
        return
    if want not in ISAS:
        raise UnsupportedEnvironmentError(
            f"{ISA_ENV}={want!r} is not one of auto, {', '.join(ISAS)}; unset it or pick one"
        )
    have = supported_isas()
    if want not in have:
        raise UnsupportedEnvironmentError(
            f"{ISA_ENV}={want} but this CPU runs only {', '.join(have)}; unset it or pick one "
            "of those"
        )


def not_supported_reasons(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
) -> list[str]:
    """Reasons the kernel cannot take these tensors (empty list = it can).

    Checks availability, device (CPU only), dtype (fp32 / fp16 / bf16, all three equal),
    that no input requires grad (inference only: no backward), grouped K/V heads
    (``H % Hkv == 0``) and head dims (``1 <= D, Dv <= 256``).
    """
    reasons: list[str] = []
    if not is_available():
        reasons.append(f"CPU extension unavailable: {unavailable_reason()}")
    tensors = [("query", query), ("key", key), ("value", value)]
    if key_padding_mask is not None:
        tensors.append(("key_padding_mask", key_padding_mask))
    for name, t in tensors:
        if t.device.type != "cpu":
            reasons.append(f"{name} is on {t.device}, the CPU extension needs CPU tensors")
    if query.dtype not in SUPPORTED_DTYPES:
        reasons.append(f"dtype {query.dtype} not in {[str(d) for d in SUPPORTED_DTYPES]}")
    if key.dtype != query.dtype or value.dtype != query.dtype:
        reasons.append(f"query/key/value dtypes differ ({query.dtype}, {key.dtype}, {value.dtype})")
    if torch.is_grad_enabled() and any(t.requires_grad for _, t in tensors[:3]):
        reasons.append("inputs require grad; the CPU extension has no backward")
    if query.dim() == 4 and key.dim() == 4 and value.dim() == 4:
        h, hkv = query.shape[1], key.shape[1]
        if hkv < 1 or h % hkv != 0 or value.shape[1] != hkv:
            reasons.append(
                f"query heads H={h} must be a multiple of key/value heads (key {hkv}, "
                f"value {value.shape[1]})"
            )
        d, dv = query.shape[-1], value.shape[-1]
        if not (1 <= d <= MAX_HEAD_DIM and 1 <= dv <= MAX_HEAD_DIM):
            reasons.append(f"head dims D={d}, Dv={dv} outside 1..{MAX_HEAD_DIM}")
    else:
        reasons.append("query/key/value must be 4-D [B, H, S, D]")
    return reasons


def not_supported_reason(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, block_size: int
) -> str | None:
    """Why the kernel cannot take these inputs, or ``None`` when it can (routing decision).

    Args:
        query: ``[B, H, S, D]``; key: ``[B, Hkv, S, D]``; value: ``[B, Hkv, S, Dv]``.
        block_size: the layout's block size (any int >= 1 is taken).

    Returns:
        ``None`` or one line joining every reason (see :func:`not_supported_reasons`).
    """
    reasons = not_supported_reasons(query, key, value)
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        reasons.append(f"block_size must be an int >= 1, got {block_size!r}")
    return "; ".join(reasons) if reasons else None


def attention_arrays(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    row_ptr: torch.Tensor,
    col_idx: torch.Tensor,
    mask_idx: torch.Tensor,
    masks: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    block_size: int,
    scale: float,
) -> torch.Tensor:
    """Block-sparse attention on CPU from layout arrays (the compiled kernel).

    Same semantics as ``sparse_attn.kernels.block_sparse_attention``:
    ``softmax(scale * q k^T restricted to visible keys) v`` per (batch, head, query), with
    softmax and accumulation in fp32. Grouped-query attention: query head ``h`` reads K/V
    head ``h // (H // Hkv)``; K/V are never copied per query head.

    Args:
        query: ``[B, H, S, D]`` float32 / float16 / bfloat16, CPU, ``1 <= D <= 256``.
        key: ``[B, Hkv, S, D]``, same dtype as ``query``, ``H % Hkv == 0``.
        value: ``[B, Hkv, S, Dv]``, same dtype as ``query``, ``1 <= Dv <= 256``.
        row_ptr: ``int32 [H or 1, nQB + 1]`` CSR row pointers (per query head, or one row
            set for all heads) of the FULL layout (its max seq_len, ``nQB >= ceil(S /
            block_size)``).
        col_idx: ``int32 [H or 1, nnz]`` key-block index per stored tile.
        mask_idx: ``int32 [H or 1, nnz]``; -1 = full tile, ``k >= 0`` = partial tile
            ``masks[k]``.
        masks: ``uint8 [M, block_size, block_size]`` (1 = visible), ``M >= 0``.
        key_padding_mask: ``None`` or ``[B, S]`` (or ``[B, S' >= S]``, cropped) bool /
            integer, True / nonzero = real token.
        block_size: tokens per block side (>= 1).
        scale: softmax scale applied to ``q . k`` (a finite float).

    Returns:
        ``[B, H, S, Dv]`` in ``query``'s dtype. Rows with no visible key are exactly 0;
        masked keys (pattern, padding, keys >= S) never influence the output, even when
        their K/V hold NaN or Inf. Key blocks ``>= ceil(S / block_size)`` are skipped.

    Raises:
        InvalidInputError: wrong ranks / shapes / dtypes / devices, or a malformed layout
            (row_ptr not non-decreasing, col_idx or mask_idx out of range).
        UnsupportedEnvironmentError: the extension is not available (see
            :func:`unavailable_reason`), or ``SPARSE_ATTN_CPU_ISA`` names an instruction set
            this CPU lacks.
    """
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            shape = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise InvalidInputError(f"{name} must be a 4-D tensor [B, H, S, D], got {shape}")
        if t.device.type != "cpu":
            raise InvalidInputError(f"{name} is on {t.device}; the CPU kernel needs CPU tensors")
        if t.dtype not in SUPPORTED_DTYPES:
            raise InvalidInputError(
                f"{name} has dtype {t.dtype}; the CPU kernel takes float32, float16 or bfloat16"
            )
    if key.dtype != query.dtype or value.dtype != query.dtype:
        raise InvalidInputError(
            f"query/key/value must share one dtype, got {query.dtype}, {key.dtype}, {value.dtype}"
        )
    h, hkv = query.shape[1], key.shape[1]
    if hkv < 1 or h % hkv != 0:
        raise InvalidInputError(
            f"query heads H={h} must be a multiple of key/value heads Hkv={hkv} "
            f"(key {list(key.shape)})"
        )
    for name, dim in (("D", query.shape[-1]), ("Dv", value.shape[-1])):
        if not 1 <= dim <= MAX_HEAD_DIM:
            raise InvalidInputError(f"head dim {name}={dim} must be in 1..{MAX_HEAD_DIM}")
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise InvalidInputError(f"block_size must be an int >= 1, got {block_size!r}")
    scale = float(scale)
    if not math.isfinite(scale):
        raise InvalidInputError(f"scale must be finite, got {scale}")
    for name, t in (("row_ptr", row_ptr), ("col_idx", col_idx), ("mask_idx", mask_idx)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int32 or t.dim() != 2:
            got = (t.dtype, list(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__
            raise InvalidInputError(f"{name} must be a 2-D int32 tensor, got {got}")
    if not isinstance(masks, torch.Tensor) or masks.dtype not in (torch.uint8, torch.bool):
        raise InvalidInputError("masks must be a uint8 tensor [M, block_size, block_size]")
    if key_padding_mask is not None and (
        not isinstance(key_padding_mask, torch.Tensor) or key_padding_mask.device.type != "cpu"
    ):
        raise InvalidInputError("key_padding_mask must be None or a CPU tensor [B, S]")
    build()  # raises UnsupportedEnvironmentError with the reason when it cannot
    _check_isa_env()
    layout_arrays = [t.cpu() for t in (row_ptr, col_idx, mask_idx, masks)]
    try:
        return torch.ops.sparse_attn_cpu.attention_arrays(
            query, key, value, *layout_arrays, key_padding_mask, block_size, scale
        )
    except ValueError as exc:  # TORCH_CHECK_VALUE in the kernel's argument checks
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise InvalidInputError(f"CPU kernel rejected its inputs: {first}") from exc


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sparse_attn.kernels.cpu_ext",
        description="Build / check the sparse_attn compiled CPU kernel.",
    )
    parser.add_argument("--build", action="store_true", help="compile and load the extension")
    parser.add_argument("--verbose", action="store_true", help="show compiler output")
    args = parser.parse_args(argv)
    if not args.build:
        ok = is_available()
        detail = f" (isa {isa()}; this CPU: {', '.join(supported_isas())})" if ok else ""
        print(f"cpu_ext available: {ok}" + (detail if ok else f" ({unavailable_reason()})"))
        return 0 if ok else 1
    t0 = time.perf_counter()
    try:
        path = build(verbose=args.verbose)
    except UnsupportedEnvironmentError as exc:
        # Not fatal for an install: the torch backend falls back to pure PyTorch.
        print(f"warning: {exc}", file=sys.stderr)
        return 1
    print(
        f"sparse_attn CPU extension ready in {path} ({time.perf_counter() - t0:.1f} s; isa {isa()})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
