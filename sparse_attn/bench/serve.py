"""``sparse-attn bench --suites serve``: load test of the serving paths on MiniLM.

Model: all-MiniLM-L6-v2 exported with ``sparse-attn export --model minilm`` (its default
sparse pattern, block 32, ``max_seq_len`` 128), cached in the bench's models folder.
Workload: one text per request, 8 to 128 tokens (seeded mix), the ``sentence_embedding``
output only. ``C`` closed-loop clients (each sends its next request when the previous one is
answered) for ``C`` in 1, 8, 32; each client sends a fixed number of requests.

Paths (each a cell per ``C``):

* ``in-process``: ``Runtime.run`` called from ``C`` threads (no HTTP, no batching);
* ``http``: ``sparse-attn serve`` in a separate process, v2 protocol with binary tensors over
  keep-alive connections, batching off (``--max-batch-size 1``) and on (32 rows, 5 ms);
* ``ray``: the same application on Ray Serve with 2 replicas (1 CPU and 1 ONNX Runtime
  thread each), batching off and on.

Figures: requests/s (answered requests / wall time of the cell), latency p50 / p99 per
request (ms, client side), mean rows per model call (from the server's ``/metrics``), CPU
time per request (in-process: this process; HTTP: the server process; a busy machine
disturbs it less than wall time; not measured for Ray's worker processes), and
``max_abs_err`` of the returned embeddings against in-process ``Runtime.run`` of the same
request. Timings depend on the machine's load: the load average is recorded. Nothing here
asserts a timing.
"""

from __future__ import annotations

import concurrent.futures as cf
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

SERVE_MAX_SEQ_LEN = 128
SERVE_BLOCK_SIZE = 32
OUTPUT = "sentence_embedding"
_WORDS = (
    "sparse attention reads long documents while each token sees its neighbours and a few "
    "global tokens so the cost grows linearly with the length of the text and information "
    "still flows across the whole sequence through the global positions of the model"
).split()


def minilm_model(workdir: Path, log: Callable[[str], None]) -> Path:
    """The MiniLM export of the suite (``sparse-attn export --model minilm``), cached."""
    workdir = Path(workdir)
    path = workdir / f"minilm_serve_s{SERVE_MAX_SEQ_LEN}_b{SERVE_BLOCK_SIZE}.onnx"
    if path.is_file():
        return path
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"serve: exporting MiniLM (max_seq_len {SERVE_MAX_SEQ_LEN}) to {path}")
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        out = Path(tmp) / path.name
        subprocess.run(
            [
                sys.executable,
                "-m",
                "sparse_attn.cli",
                "export",
                "--model",
                "minilm",
                "--max-seq-len",
                str(SERVE_MAX_SEQ_LEN),
                "--block-size",
                str(SERVE_BLOCK_SIZE),
                "-o",
                str(out),
            ],
            check=True,
            capture_output=True,
            env=_env(),
        )
        os.replace(out, path)
    return path


def _env(threads: int | None = None) -> dict:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def workload(rt, n: int, seed: int = 0) -> list[dict]:
    """``n`` single-text requests of 8..128 tokens (feeds of ``rt``'s inputs)."""
    rng = np.random.default_rng(seed)
    reqs = []
    for _ in range(n):
        words = int(rng.integers(6, SERVE_MAX_SEQ_LEN - 2))
        text = " ".join(rng.choice(_WORDS, size=words))
        feeds, _, _ = rt.encoder.encode_detailed([text], rt.inputs)
        reqs.append(feeds)
    return reqs


def _v2_body(feeds: dict) -> tuple[bytes, dict]:
    from sparse_attn.serving.protocol import datatype_of

    head = {
        "inputs": [
            {
                "name": k,
                "shape": list(v.shape),
                "datatype": datatype_of(v.dtype),
                "parameters": {"binary_data_size": v.nbytes},
            }
            for k, v in feeds.items()
        ],
        "outputs": [{"name": OUTPUT, "parameters": {"binary_data": True}}],
    }
    js = json.dumps(head).encode()
    body = js + b"".join(np.ascontiguousarray(v).tobytes() for v in feeds.values())
    return body, {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(js)),
    }


def _decode(raw: bytes, header_len: str | None) -> np.ndarray:
    n = int(header_len) if header_len else len(raw)
    meta = json.loads(raw[:n])
    t = meta["outputs"][0]
    return np.frombuffer(raw[n:], dtype=np.float32).reshape(t["shape"])


class _HttpClient:
    """One keep-alive connection (one closed-loop client)."""

    def __init__(self, port: int, path: str) -> None:
        self.port, self.path = port, path
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def __call__(self, body_headers) -> np.ndarray:
        body, headers = body_headers
        for attempt in range(2):
            try:
                self.conn.request("POST", self.path, body, headers)
                r = self.conn.getresponse()
                raw = r.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
                if attempt:
                    raise
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {raw[:200]!r}")
        return _decode(raw, r.getheader("Inference-Header-Content-Length"))

    def close(self) -> None:
        self.conn.close()


def _run_cell(make_client, payloads, expected, clients: int, per_client: int) -> dict:
    """Closed loop: ``clients`` threads, ``per_client`` requests each; latency per request."""
    lat: list[float] = []
    errors: list[str] = []
    worst = 0.0
    n_total = clients * per_client

    def client(k: int) -> tuple[list[float], list[str], float]:
        call = make_client()
        mine, errs, w = [], [], 0.0
        try:
            for j in range(per_client):
                i = (k * per_client + j) % len(payloads)
                t0 = time.perf_counter()
                try:
                    got = call(payloads[i])
                except Exception as exc:  # noqa: BLE001 - counted, reported
                    errs.append(f"{type(exc).__name__}: {exc}"[:200])
                    continue
                mine.append(time.perf_counter() - t0)
                w = max(w, float(np.max(np.abs(got - expected[i]))))
        finally:
            close = getattr(call, "close", None)
            if close:
                close()
        return mine, errs, w

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        for mine, errs, w in pool.map(client, range(clients)):
            lat += mine
            errors += errs
            worst = max(worst, w)
    wall = time.perf_counter() - t0
    ms = np.asarray(lat) * 1000.0
    return {
        "concurrency": clients,
        "requests": n_total,
        "answered": len(lat),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "wall_s": wall,
        "rps": len(lat) / wall if wall > 0 else None,
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
        "mean_ms": float(ms.mean()) if len(ms) else None,
        "max_abs_err": worst,
    }


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux ``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _metrics(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    vals = {}
    for key in ("sparse_attn_batch_rows_sum", "sparse_attn_batch_rows_count"):
        m = re.search(rf"^{key} ([0-9.e+]+)$", text, re.M)
        vals[key] = float(m.group(1)) if m else 0.0
    return vals


def _start_http_server(model: Path, batching: bool, threads: int) -> tuple[subprocess.Popen, int]:
    cmd = [
        sys.executable,
        "-m",
        "sparse_attn.cli",
        "serve",
        str(model),
        "--port",
        "0",
        "--name",
        "minilm",
        "--max-queue",
        "1024",
        "--threads",
        str(threads),
    ]
    cmd += (
        ["--max-batch-size", "32", "--max-delay-ms", "5"] if batching else ["--max-batch-size", "1"]
    )
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=_env(threads))
    line = proc.stderr.readline()
    m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    if not m:
        proc.kill()
        raise RuntimeError(f"the server did not start: {line}{proc.stderr.read()[-2000:]}")
    return proc, int(m.group(1))


def _stop(proc: subprocess.Popen) -> None:
    import signal

    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def run_serve_suite(
    *,
    workdir: Path,
    threads: int = 2,
    concurrency: tuple[int, ...] = (1, 8, 32),
    per_client: int | None = None,
    ray: bool = True,
    quick: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Run every path at every concurrency; returns ``{"cells": [...], ...}`` (see module).

    Args:
        workdir: cache of the exported model.
        threads: ONNX Runtime threads of the in-process and HTTP paths (Ray: 1 per replica).
        concurrency: numbers of closed-loop clients.
        per_client: requests per client (default: 2 x 32 / C, at least 4; quick: half).
        ray: include the Ray Serve cells.
        quick: fewer requests, concurrency 1 and 8, no Ray.
    """
    import sparse_attn

    if quick:
        concurrency = tuple(c for c in concurrency if c <= 8) or (1,)
        ray = False
    model = minilm_model(workdir, log)
    rt = sparse_attn.Runtime(model, intra_op_threads=threads, allow_spinning=False)
    pool = workload(rt, 64)
    expected = [rt.run(f)[OUTPUT] for f in pool]
    bodies = [_v2_body(f) for f in pool]
    cells: list[dict] = []

    def n_per(c: int) -> int:
        n = per_client or max(4, 64 // c)
        return max(2, n // 2) if quick else n

    def add(path: str, batching: bool | None, cell: dict, extra: dict | None = None) -> None:
        cell = {"path": path, "batching": batching, **cell, **(extra or {})}
        cells.append(cell)
        log(
            f"serve: {path:10s} batching {str(batching):5s} C={cell['concurrency']:2d}: "
            f"{cell['rps'] or 0:7.1f} req/s, p50 {cell['p50_ms'] or 0:7.1f} ms, "
            f"p99 {cell['p99_ms'] or 0:7.1f} ms, errors {cell['errors']}, "
            f"max_abs_err {cell['max_abs_err']:.2e}"
        )

    for c in concurrency:
        t_cpu = time.process_time()
        cell = _run_cell(lambda: lambda f: rt.run(f)[OUTPUT], pool, expected, c, n_per(c))
        cpu = time.process_time() - t_cpu
        add("in-process", None, cell, {"cpu_ms_per_request": 1000 * cpu / max(1, cell["answered"])})

    for batching in (False, True):
        proc, port = _start_http_server(model, batching, threads)
        try:
            for c in concurrency:
                before = _metrics(port)
                cpu0 = _proc_cpu_s(proc.pid)
                cell = _run_cell(
                    lambda port=port: _HttpClient(port, "/v2/models/minilm/infer"),
                    bodies,
                    expected,
                    c,
                    n_per(c),
                )
                after = _metrics(port)
                calls = (
                    after["sparse_attn_batch_rows_count"] - before["sparse_attn_batch_rows_count"]
                )
                rows = after["sparse_attn_batch_rows_sum"] - before["sparse_attn_batch_rows_sum"]
                cpu = _proc_cpu_s(proc.pid) - cpu0
                add(
                    "http",
                    batching,
                    cell,
                    {
                        "mean_batch_rows": rows / calls if calls else None,
                        "cpu_ms_per_request": 1000 * cpu / max(1, cell["answered"]),
                    },
                )
        finally:
            _stop(proc)

    ray_info: dict = {"run": False}
    if ray:
        try:
            ray_info = _ray_cells(model, bodies, expected, concurrency, n_per, add, log)
        except Exception as exc:  # noqa: BLE001 - reported in the JSON, the other cells stand
            ray_info = {"run": False, "reason": f"{type(exc).__name__}: {exc}"[:500]}
            log(f"serve: Ray Serve cells skipped: {ray_info['reason']}")
    rt.close()
    return {
        "model": str(model),
        "max_seq_len": SERVE_MAX_SEQ_LEN,
        "threads": threads,
        "concurrency": list(concurrency),
        "ray": ray_info,
        "loadavg": list(os.getloadavg()),
        "cells": cells,
    }


def _ray_cells(model, bodies, expected, concurrency, n_per, add, log) -> dict:
    import socket

    import ray as ray_mod
    from ray import serve

    from sparse_attn.serving import ray_app
    from sparse_attn.serving.batching import BatchPolicy

    t0 = time.perf_counter()
    temp_dir = tempfile.mkdtemp(prefix="ray-")
    ray_app.start_ray(temp_dir=temp_dir, num_cpus=2)
    started = time.perf_counter() - t0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        for batching in (False, True):
            policy = BatchPolicy(
                max_batch_size=32 if batching else 1, max_delay_ms=5, max_queue=1024
            )
            app = ray_app.build_deployment(
                model, name="minilm", policy=policy, threads=1, replicas=2, replica_cpus=1.0
            )
            ray_app.deploy(app, "127.0.0.1", port)
            for c in concurrency:
                add(
                    "ray-2",
                    batching,
                    _run_cell(
                        lambda: _HttpClient(port, "/v2/models/minilm/infer"),
                        bodies,
                        expected,
                        c,
                        n_per(c),
                    ),
                )
            serve.delete(ray_app.APP_NAME)
    finally:
        serve.shutdown()
        ray_mod.shutdown()
        import shutil

        shutil.rmtree(temp_dir, ignore_errors=True)
    log(f"serve: Ray started in {started:.1f} s")
    return {"run": True, "replicas": 2, "start_s": started}


# ---------------------------------------------------------------------------- report
def markdown_table(suite: dict) -> str:
    """The suite's cells as a markdown table ('' when none)."""
    cells = suite.get("cells") or []
    if not cells:
        return ""
    rows = [
        "| path | batching | clients | req/s | p50 ms | p99 ms | rows/call | CPU ms/req | errors "
        "| max abs err |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        b = "-" if c["batching"] is None else ("on" if c["batching"] else "off")
        rpc = c.get("mean_batch_rows")
        rows.append(
            f"| {c['path']} | {b} | {c['concurrency']} | {_f(c['rps'])} | {_f(c['p50_ms'])} | "
            f"{_f(c['p99_ms'])} | {_f(rpc, 2) if rpc else '-'} | "
            f"{_f(c.get('cpu_ms_per_request'))} | {c['errors']} | "
            f"{c['max_abs_err']:.1e} |"
        )
    return "\n".join(rows)


def _f(v, nd: int = 1) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def plot(suite: dict, path: Path) -> Path | None:
    """Requests/s and p99 latency against clients, one line per path and batching setting."""
    cells = [c for c in suite.get("cells") or [] if c.get("rps")]
    if not cells:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    keys = []
    for c in cells:
        k = (c["path"], c["batching"])
        if k not in keys:
            keys.append(k)
    for path_name, batching in keys:
        sel = sorted(
            (c for c in cells if (c["path"], c["batching"]) == (path_name, batching)),
            key=lambda c: c["concurrency"],
        )
        label = path_name + (
            "" if batching is None else f", batching {'on' if batching else 'off'}"
        )
        xs = [c["concurrency"] for c in sel]
        ax1.plot(xs, [c["rps"] for c in sel], marker="o", label=label)
        ax2.plot(xs, [c["p99_ms"] for c in sel], marker="o", label=label)
    for ax, title, unit in ((ax1, "throughput", "requests / s"), (ax2, "p99 latency", "ms")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(unit)
        ax.set_title(f"MiniLM (S <= {SERVE_MAX_SEQ_LEN}): {title}")
        ax.grid(True, alpha=0.3)
    ax2.set_yscale("log")
    ax1.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
