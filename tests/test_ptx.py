"""Ahead-of-time compilation of the Triton kernel to PTX/cubin for sm_80 and sm_90, no GPU.

``triton.compile`` with an explicit ``GPUTarget`` needs no driver. The stripped PTX (Triton's
two hidden scratch parameters removed, see ``sparse_attn.plugins.aot``) is assembled with the
CUDA 13.0 ``ptxas`` installed on this machine when it is there (the check a 580-series driver
would make at load time); the test skips with a reason otherwise.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed")

from sparse_attn.errors import InvalidInputError  # noqa: E402
from sparse_attn.plugins import aot  # noqa: E402

SPEC = aot.KernelSpec(
    dtype="float16",
    block_size=64,
    num_heads=4,
    head_dim=64,
    value_dim=64,
    layout_heads=4,
    row_ptr_len=9,
    nnz=30,
    scale=0.125,
    kpm_dtype="bool",
)


@pytest.fixture(scope="module", params=[80, 90])
def compiled(request):
    return aot.compile_kernel(SPEC, arch=request.param)


def test_ptx_and_cubin_come_out(compiled):
    ptx = compiled.ptx
    want_version = {80: ".version 8.8", 90: ".version 9.0"}[compiled.arch]
    assert want_version in ptx, ptx[:200]
    assert f".target sm_{compiled.arch}" in ptx
    assert compiled.cubin[:4] == b"\x7fELF", "cubin is not an ELF image"
    assert compiled.name == "_block_sparse_attn_fwd"
    assert compiled.num_warps * 32 in (128, 256)
    assert 0 < compiled.shared <= aot.SHARED_MEM_LIMIT


def test_entry_parameters_are_inputs_extra_ints_output(compiled):
    """TensorRT's AOT launch order: 8 input pointers, the int32 extras, 1 output pointer."""
    name, params = aot.entry_params(compiled.ptx)
    assert compiled.hidden_params_removed == 2, "Triton 3.9 adds global+profile scratch"
    n_int = len(aot.RUNTIME_INT_ARGS)
    assert len(params) == 8 + n_int + 1, params
    assert all(".u64" in p and ".ptr" in p for p in params[:8])
    assert all(".u32" in p for p in params[8 : 8 + n_int])
    assert ".u64" in params[-1] and ".ptr" in params[-1]
    assert compiled.params[: 8 + n_int + 1][-1] == "Out"
    assert list(compiled.params[8:-1]) == list(aot.RUNTIME_INT_ARGS)


@pytest.mark.skipif(shutil.which("ptxas") is None, reason="CUDA ptxas not installed")
def test_system_ptxas_assembles_stripped_ptx(compiled, tmp_path):
    src = tmp_path / "k.ptx"
    src.write_text(compiled.ptx)
    arch = "sm_90a" if compiled.arch == 90 else f"sm_{compiled.arch}"
    res = subprocess.run(
        ["ptxas", f"-arch={arch}", str(src), "-o", str(tmp_path / "k.cubin")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "k.cubin").read_bytes()[:4] == b"\x7fELF"


@pytest.mark.skipif(shutil.which("ptxas") is None, reason="CUDA ptxas not installed")
def test_sm90_kernel_is_vectorised_and_does_not_spill(compiled):
    """Register budget guard (the only performance signal available without a GPU): with the
    divisibility hints the loads are 128-bit vectors and ptxas reports no spills."""
    assert "ld.global.v4" in compiled.ptx
    use = aot.ptxas_usage(compiled.ptx, compiled.arch)
    assert use["spill_stores"] == 0 and use["registers"] <= 255, use


#: Gemma-3-like: 4 query heads over 1 K/V head, D = Dv = 256.
WIDE_GQA = aot.KernelSpec(
    dtype="bfloat16",
    block_size=64,
    num_heads=4,
    head_dim=256,
    value_dim=256,
    layout_heads=4,
    row_ptr_len=9,
    nnz=30,
    scale=256**-0.5,
    kpm_dtype="bool",
    num_kv_heads=1,
)


@pytest.fixture(scope="module", params=[80, 90])
def compiled_wide(request):
    return aot.compile_kernel(WIDE_GQA, arch=request.param)


@pytest.mark.skipif(shutil.which("ptxas") is None, reason="CUDA ptxas not installed")
def test_wide_grouped_kernel_assembles_without_spills(compiled_wide):
    """D = 256 with grouped K/V: CUDA 13's ptxas assembles it for sm_80 / sm_90 without
    spills, within the registers and the shared memory bound the backend checks."""
    from sparse_attn.kernels.triton_kernel import shared_memory_bound

    use = aot.ptxas_usage(compiled_wide.ptx, compiled_wide.arch)
    assert use["spill_stores"] == 0 and use["spill_loads"] == 0, use
    cfg = WIDE_GQA.config
    assert compiled_wide.num_warps == cfg.num_warps
    assert compiled_wide.shared <= shared_memory_bound("bfloat16", cfg, 256, 256)
    assert compiled_wide.shared <= aot.MAX_SHARED_MEM
    _, params = aot.entry_params(compiled_wide.ptx)
    assert len(params) == 8 + len(aot.RUNTIME_INT_ARGS) + 1, params


def test_grouped_runtime_ints_and_grid():
    """Runtime ints for key/value of Hkv heads; wide heads split a query block over programs."""
    b, s = 2, 77
    k = torch.empty(b, WIDE_GQA.kv_heads, s, WIDE_GQA.head_dim)
    q = torch.empty(b, WIDE_GQA.num_heads, s, WIDE_GQA.head_dim)
    vals = dict(zip(aot.RUNTIME_INT_ARGS, aot.runtime_int_values(WIDE_GQA, s), strict=True))
    assert (vals["stride_kb"], vals["stride_kh"]) == k.stride()[:2]
    assert (vals["stride_vb"], vals["stride_vh"]) == k.stride()[:2]
    assert (vals["stride_qb"], vals["stride_qh"]) == q.stride()[:2]
    assert (vals["stride_ob"], vals["stride_oh"]) == q.stride()[:2]
    cfg = WIDE_GQA.config
    split = -(-WIDE_GQA.block_size // cfg.block_m)
    # query tiles x the 4 query heads of the K/V group on axis 0, batch x K/V heads on axis 1
    assert aot.launch_grid(WIDE_GQA, b, s) == (2 * split * 4, b * 1, 1)
    _, consts = aot.signature_and_constants(WIDE_GQA)
    assert consts["kv_group"] == 4 and consts["M_SPLIT"] == split


def test_bad_grouping_is_refused():
    with pytest.raises(InvalidInputError, match="num_kv_heads"):
        aot.KernelSpec("float16", 64, 6, 64, 64, 6, 3, 3, 1.0, num_kv_heads=4).validate()
    with pytest.raises(InvalidInputError, match="head_dim"):
        aot.KernelSpec("float16", 64, 4, 320, 64, 4, 3, 3, 1.0).validate()


def test_report_table_format():
    """The Markdown table of ``python -m sparse_attn.plugins.aot --report`` (fake rows)."""
    rows = [
        dict(dtype="float16", block_size=64, head_dim=256, arch=a, block_m=32, block_n=32,
             num_warps=8, num_stages=2, registers=200 + a, spill_stores=0, spill_loads=0,
             shared=51200, needs_shared_opt_in=True, ptxas="Cuda compilation tools 13.0")
        for a in (80, 90)
    ]  # fmt: skip
    md = aot.report_markdown(rows).splitlines()
    assert md[0].count("|") == md[2].count("|") and "sm_90 regs" in md[0]
    assert md[2].startswith("| float16 | 64 | 256 | 32 x 32 | 8 | 2 | 280 | 0/0 | 50 |")


def test_no_key_padding_mask_variant_has_seven_inputs():
    spec = aot.KernelSpec("float32", 32, 2, 32, 16, 1, 5, 7, 0.2, kpm_dtype=None)
    ck = aot.compile_kernel(spec, arch=90)
    _, params = aot.entry_params(ck.ptx)
    assert len(params) == 7 + len(aot.RUNTIME_INT_ARGS) + 1, params


def test_strip_refuses_used_hidden_param():
    ptx = (
        ".version 9.0\n.target sm_90a\n.address_size 64\n"
        ".visible .entry k(\n\t.param .u64 .ptr .global .align 1 k_param_0,\n"
        "\t.param .u64 .ptr .global .align 1 k_param_1\n)\n{\n"
        "\tld.param.b64 %rd1, [k_param_1];\n\tret;\n}\n"
    )
    with pytest.raises(RuntimeError, match="k_param_1"):
        aot.strip_hidden_params(ptx, 1)
    unused = ptx.replace("[k_param_1]", "[k_param_0]")
    out, n = aot.strip_hidden_params(unused, 1)
    assert n == 1 and "k_param_1" not in out and "k_param_0" in out


def test_runtime_ints_match_contiguous_strides():
    b, s = 3, 77
    q = torch.empty(b, SPEC.num_heads, s, SPEC.head_dim)
    v = torch.empty(b, SPEC.num_heads, s, SPEC.value_dim)
    vals = dict(zip(aot.RUNTIME_INT_ARGS, aot.runtime_int_values(SPEC, s), strict=True))
    assert vals["seq_len"] == s
    assert (vals["stride_qb"], vals["stride_qh"]) == q.stride()[:2]
    assert (vals["stride_vb"], vals["stride_vh"]) == v.stride()[:2]
    assert (vals["stride_ob"], vals["stride_oh"]) == v.stride()[:2]
    assert vals["stride_kpm_b"] == s
    split = -(-SPEC.block_size // SPEC.config.block_m)  # programs per query block
    assert aot.launch_grid(SPEC, b, s) == (2 * split, b * SPEC.num_heads, 1)


def test_bad_spec_is_refused_before_compiling():
    with pytest.raises(InvalidInputError, match="block_size"):
        aot.compile_kernel(aot.KernelSpec("float16", 8, 1, 16, 16, 1, 3, 3, 1.0))
    with pytest.raises(InvalidInputError, match="dtype"):
        aot.compile_kernel(aot.KernelSpec("float64", 16, 1, 16, 16, 1, 3, 3, 1.0))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("ptxas") is None, reason="CUDA ptxas not installed")
@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("block_size", [32, 128])
def test_report_rows_fit(dtype, block_size):
    """Slow: rows of the docs/gpu.md table (both targets): within the shared-memory bound,
    spill-free for 16-bit heads of 128 and 256, registers <= 255."""
    from sparse_attn.kernels.triton_kernel import launch_config, shared_memory_bound

    for r in aot.report_rows((dtype,), (block_size,), (128, 256)):
        cfg = launch_config(dtype, block_size, r["head_dim"], r["head_dim"])
        assert r["shared"] <= shared_memory_bound(dtype, cfg, r["head_dim"], r["head_dim"]), r
        assert r["registers"] <= 255, r
        if dtype == "float16":
            assert r["spill_stores"] == 0, r
