"""Feed generated bad inputs to the public surface and report what escapes.

Three targets, each with inputs drawn from a seeded generator (mutations of valid inputs,
random tokens, boundary and absurd sizes, wrong types, garbage files):

* ``compile_layout``: spec strings and sizes; only ``InvalidInputError`` may come out, each
  call within a time budget;
* the command line (``sparse_attn.cli.main``, in process): ``layout``, ``export``,
  ``engine``, ``run``, ``check`` with mutated arguments; the exit code must be 0 or 2 (1
  only for a failed environment, never an "internal error"), never a traceback;
* ``Runtime``: model files (garbage, truncated, wrong sidecars) and requests (dtypes,
  shapes, values, types); only ``InvalidInputError`` may come out.

Usage::

    python benchmarks/fuzz_inputs.py --cases 3000 --seed 0 [--json out.json]

Prints per-target counts (cases, accepted, refused, failures) and the failures found; exits
1 when there is any failure. ``tests/test_fuzz.py`` runs a small bounded version.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ATOMS = [
    "band(w={})",
    "dilated(w={}, d={})",
    "global(n={})",
    "global(tokens=[{},{}])",
    "global(last={})",
    "random(r={}, seed={})",
    "random(r={}, seed={}, b={}, scope=all)",
    "block_local(b={})",
    "block_band(b={}, w={})",
    "strided(l={})",
    "summary(l={}, c={})",
    "vertical_stride(b={}, s={}, step={})",
    "dense",
    "bigbird(block={}, r={})",
    "longformer(window={})",
    "sliding_window(w={})",
    "local_vertical_stride(block={}, local={})",
    "sparse_transformer_fixed(l={}, c={})",
]
WEIRD_INTS = [
    "0", "1", "2", "3", "7", "16", "64", "-1", "+3", "00003", "\uff13", "\u0663", "1_000",
    "2147483647", "2147483648", "9" * 30, "9" * 5000, "1e3", "0x10", "", " ", "nan", "auto",
    "[]", "[1,2", "3.5", "\u00b2",
]  # fmt: skip
JUNK = ["|", "(", ")", "[", "]", ",", "=", "causal", " ", "\t", "\n", "\x00", "\u200b", "é",
        "band", "w", "=", "((((", "))", "||", "[" * 50, "\ud800"]  # fmt: skip


def _int(rng: random.Random) -> str:
    if rng.random() < 0.75:
        return str(rng.choice([0, 1, 2, 3, 4, 8, 16, 31, 64, 100, 1000, 10**6, 2**31 - 1]))
    return rng.choice(WEIRD_INTS)


def random_spec(rng: random.Random) -> str:
    """A spec string: a union of atoms with random integers, then random edits."""
    parts = []
    for _ in range(rng.randint(1, 4)):
        a = rng.choice(ATOMS)
        parts.append(a.format(*(_int(rng) for _ in range(a.count("{}")))))
    if rng.random() < 0.3:
        parts.append("causal")
    s = " | ".join(parts)
    for _ in range(rng.choice([0, 0, 0, 1, 2, 5])):
        k = rng.randrange(len(s) + 1)
        op = rng.random()
        if op < 0.4:
            s = s[:k] + rng.choice(JUNK) + s[k:]
        elif op < 0.7:
            s = s[:k] + s[k + 1 :]
        else:
            s = s[:k] + s[k:][::-1]
    if rng.random() < 0.02:
        s = rng.choice(["[" * 60000, "band(w=1)|" * 2000, "x" * 100000, '["band(w=1)"]'])
    return s


def random_size(rng: random.Random, typical: list[int]):
    r = rng.random()
    if r < 0.7:
        return rng.choice(typical)
    return rng.choice([0, -1, 1, 2**31, 10**12, True, 2.5, "64", None, np.int64(64), 1 << 20])


# --------------------------------------------------------------------------- targets
def fuzz_compile_layout(rng: random.Random, n: int, budget_s: float) -> dict:
    from sparse_attn.errors import InvalidInputError
    from sparse_attn.layout import compile_layout

    out = {"cases": 0, "accepted": 0, "refused": 0, "failures": []}
    for _ in range(n):
        spec = random_spec(rng)
        kw = dict(
            seq_len=random_size(rng, [1, 7, 64, 100, 1000, 4096, 65536]),
            block_size=random_size(rng, [1, 4, 16, 32, 64, 128]),
            num_heads=random_size(rng, [1, 2, 3, 8, 64]),
            causal=rng.random() < 0.3,
        )
        out["cases"] += 1
        t = time.perf_counter()
        try:
            compile_layout(spec, **kw)
            out["accepted"] += 1
        except InvalidInputError:
            out["refused"] += 1
        except BaseException as exc:  # noqa: BLE001 - that is what we look for
            out["failures"].append(_failure("compile_layout", (spec[:300], kw), exc))
        dt = time.perf_counter() - t
        if dt > budget_s:
            out["failures"].append(
                {"target": "compile_layout", "input": repr((spec[:300], kw)), "slow_s": dt}
            )
    return out


def _failure(target: str, inp, exc: BaseException) -> dict:
    return {
        "target": target,
        "input": repr(inp)[:500],
        "error": f"{type(exc).__name__}: {str(exc)[:300]}",
        "where": traceback.format_exception(exc)[-2].strip()[:300],
    }


def _cli(argv: list[str]) -> tuple[int, str]:
    from sparse_attn.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


def _cli_cases(rng: random.Random, files: dict) -> list[str]:
    spec = random_spec(rng) if rng.random() < 0.7 else "band(w=4)"
    pick = lambda *xs: rng.choice(xs)  # noqa: E731
    size = lambda: pick(*WEIRD_INTS, "64", "16", "8")  # noqa: E731
    path = lambda: pick(*files.values(), "/nonexistent/x.onnx", "", ".", "/")  # noqa: E731
    cmd = rng.choice(["layout", "layout", "layout", "export", "engine", "run", "check", "x"])
    if cmd == "layout":
        args = ["layout", spec, "--seq-len", size(), "--block-size", size()]
        if rng.random() < 0.4:
            args += ["--num-heads", size()]
        if rng.random() < 0.2:
            args += [pick("--save-mask", "--plot"), pick(*files.values(), "out.npy", "o.png")]
        if rng.random() < 0.3:
            args.append("--json")
    elif cmd == "export":
        args = ["export", "--model", pick("attention", "minilm", "nope"), "--pattern", spec,
                "--num-heads", size(), "--head-dim", size(), "--max-seq-len", size(),
                "--block-size", size(), "-o", pick(*files.values(), "x.onnx", "x.txt")]  # fmt: skip
        if rng.random() < 0.3:
            args += [pick("--scale", "--value-dim", "--seed", "--bogus"), size()]
    elif cmd == "engine":
        args = ["engine", path(), "-o", pick("e.onnx", "e.engine", "e", *files.values())]
        if rng.random() < 0.5:
            args += ["--backend", pick("onnxruntime", "tensorrt", "nope", "auto")]
        if rng.random() < 0.3:
            args += ["--batch", pick("1,1,8", "1,2", "8,1,1", "a,b,c", "+1,1,1")]
    elif cmd == "run":
        args = ["run", path()]
        for _ in range(rng.randint(0, 3)):
            args += ["--text", pick("a text", "", "\x00", "é" * 3, "word " * 500)]
        if rng.random() < 0.5:
            args += ["--input-file", path()]
        if rng.random() < 0.3:
            args += ["--batch-size", size()]
        if rng.random() < 0.3:
            args += ["-o", pick("o.npz", "o.txt", *files.values())]
    elif cmd == "check":
        args = ["check", path()]
        if rng.random() < 0.4:
            args += ["--save-outputs", pick("g.json", "g.onnx", *files.values())]
        if rng.random() < 0.3:
            args += ["--seed", size()]
    else:
        args = [rng.choice(["--bogus", "nope", "-x", "layout", "--version", "--help"])]
    return args


def make_files(folder: Path) -> dict:
    """Small model and input files, good and bad, for the CLI and Runtime targets."""
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Mul", ["x", "x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    good = folder / "good.onnx"
    onnx.save(m, str(good))
    files = {"good": good}
    blobs = {
        "garbage.onnx": bytes(random.Random(1).randrange(256) for _ in range(4096)),
        "text.onnx": b"hello world\n",
        "empty.onnx": b"",
        "trunc.onnx": good.read_bytes()[:20],
        "empty.npz": b"",
        "empty.txt": b"",
        "bad.npz": b"PK\x03\x04garbage",
        "texts.txt": "one\ntwo\n\ud800".encode("utf-8", "surrogatepass"),
        "fake.engine": b"ftrt" + bytes(60),
    }
    for name, data in blobs.items():
        (folder / name).write_bytes(data)
        files[name] = folder / name
    (folder / "good.onnx.json").write_text("{broken")
    (folder / "fake.engine.json").write_text(json.dumps({"backend": "tensorrt", "metadata": 3}))
    np.savez(folder / "x.npz", x=np.ones((2, 4), np.float32))
    files["x.npz"] = folder / "x.npz"
    return {k: str(v) for k, v in files.items()}


def fuzz_cli(rng: random.Random, n: int, files: dict, budget_s: float) -> dict:
    out = {"cases": 0, "accepted": 0, "refused": 0, "environment": 0, "failures": []}
    for _ in range(n):
        args = _cli_cases(rng, files)
        out["cases"] += 1
        t = time.perf_counter()
        try:
            code, err = _cli(args)
        except BaseException as exc:  # noqa: BLE001
            out["failures"].append(_failure("cli", args, exc))
            continue
        dt = time.perf_counter() - t
        if code == 0:
            out["accepted"] += 1
        elif code == 2:
            out["refused"] += 1
        elif code == 1 and "internal error" not in err and "Traceback" not in err:
            out["environment"] += 1  # e.g. no TensorRT: exit 1 is right
            kinds = out.setdefault("environment_messages", {})
            key = err.strip()[:90]
            kinds[key] = kinds.get(key, 0) + 1
        else:
            out["failures"].append(
                {"target": "cli", "input": repr(args)[:500], "code": code, "stderr": err[-400:]}
            )
        if "Traceback" in err or (code != 0 and len(err.strip().splitlines()) != 1):
            out["failures"].append(
                {"target": "cli", "input": repr(args)[:500], "stderr": err[-600:], "lines": True}
            )
        if dt > budget_s:
            out["failures"].append({"target": "cli", "input": repr(args)[:500], "slow_s": dt})
    return out


def _random_feed(rng: random.Random):
    kind = rng.random()
    shape = tuple(rng.choice([0, 1, 2, 3, 4, 5]) for _ in range(rng.choice([0, 1, 2, 3])))
    if kind < 0.3:
        dt = rng.choice(
            [np.float32, np.float64, np.float16, np.int64, np.int32, np.bool_, np.uint8]
        )
        arr = np.zeros(shape, dtype=dt)
        if arr.size and np.issubdtype(dt, np.floating):
            with np.errstate(over="ignore"):
                arr.flat[0] = rng.choice([np.nan, np.inf, -np.inf, 1e30, 0.0])
        return arr
    if kind < 0.5:
        return np.ones((rng.choice([1, 2]), 4), np.float32)
    if kind < 0.6:
        return [[1.0, 2.0], [3.0]]
    if kind < 0.7:
        return rng.choice(["text", None, 3, {"a": 1}, object(), b"bytes", 1e309])
    if kind < 0.8:
        return np.array(["a", "b"])
    return np.ones((2, 4), dtype=np.float32)[:, ::2]


def fuzz_runtime(rng: random.Random, n: int, files: dict, budget_s: float) -> dict:
    from sparse_attn.errors import InvalidInputError, SparseAttnError
    from sparse_attn.runtime import Runtime

    out = {"cases": 0, "accepted": 0, "refused": 0, "failures": []}
    rt = Runtime(files["good"])
    for _ in range(n):
        out["cases"] += 1
        t = time.perf_counter()
        try:
            if rng.random() < 0.15:
                path = rng.choice(list(files.values()) + ["/nonexistent", "/", ""])
                backend = rng.choice(["auto", "onnxruntime", "torch", "tensorrt", "nope", None])
                Runtime(path, backend=backend)
            elif rng.random() < 0.1:
                rt.embed(rng.choice([[], ["a"], "a", [None], ["\ud800"], [b"x"]]))
            else:
                names = rng.choice([["x"], ["x", "y"], ["z"], [], ["x", "x"]])
                feeds = {k: _random_feed(rng) for k in names}
                if rng.random() < 0.05:
                    feeds = rng.choice([None, [], "x", 3])
                rt.run(feeds)
            out["accepted"] += 1
        except InvalidInputError:
            out["refused"] += 1
        except SparseAttnError as exc:  # environment: acceptable for a tensorrt backend
            if "TensorRT" in str(exc) or "tensorrt" in str(exc):
                out["refused"] += 1
            else:
                out["failures"].append(_failure("runtime", "call", exc))
        except BaseException as exc:  # noqa: BLE001
            out["failures"].append(_failure("runtime", "call", exc))
        if time.perf_counter() - t > budget_s:
            out["failures"].append({"target": "runtime", "slow_s": time.perf_counter() - t})
    return out


def run(cases: int, seed: int, budget_s: float = 20.0) -> dict:
    """Run the three targets with about ``cases`` inputs in all; returns the report."""
    rng = random.Random(seed)
    n_layout, n_cli = cases // 2, cases // 4
    n_rt = cases - n_layout - n_cli
    with tempfile.TemporaryDirectory() as tmp:
        import os

        old = os.getcwd()
        os.chdir(tmp)
        try:
            files = make_files(Path(tmp))
            rep = {
                "seed": seed,
                "compile_layout": fuzz_compile_layout(rng, n_layout, budget_s),
                "cli": fuzz_cli(rng, n_cli, files, budget_s * 3),
                "runtime": fuzz_runtime(rng, n_rt, files, budget_s),
            }
        finally:
            os.chdir(old)
    rep["failures"] = sum(len(rep[k]["failures"]) for k in ("compile_layout", "cli", "runtime"))
    return rep


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget-s", type=float, default=20.0, help="slowest accepted call")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rep = run(args.cases, args.seed, args.budget_s)
    rep["wall_s"] = round(time.perf_counter() - t0, 1)
    print(f"{'target':16s} {'cases':>6s} {'accepted':>9s} {'refused':>8s} {'failures':>9s}")
    for k in ("compile_layout", "cli", "runtime"):
        r = rep[k]
        print(
            f"{k:16s} {r['cases']:6d} {r['accepted']:9d} {r['refused']:8d} "
            f"{len(r['failures']):9d}" + (f"  (exit 1, environment: {r['environment']})"
                                           if "environment" in r else "")
        )  # fmt: skip
    for msg, n in sorted(rep["cli"].get("environment_messages", {}).items()):
        print(f"exit 1 x{n}: {msg}")
    for k in ("compile_layout", "cli", "runtime"):
        for f in rep[k]["failures"][:20]:
            print(json.dumps(f)[:800])
    print(f"wall {rep['wall_s']} s")
    if args.json:
        args.json.write_text(json.dumps(rep, indent=1, default=str))
    return 1 if rep["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
