"""dlrm-serve latency and throughput at 1, 8 and 64 concurrent clients, float and int8 exports.

Each export is served by the real command (``python -m dlrm_dist.cli.serve_main EXPORT
--host 127.0.0.1 --port 0``) in a subprocess on this machine only, and driven by httpx's
async client: N client tasks each send one request at a time (``records`` raw rows from
the data's own CSV, typed by the server's /metadata columns) until the level's request
count or time is used up. Per level: p50/p99 latency of a request (client side, send to
parsed reply), requests/s and rows/s, and the server's batches (rows per model call, from
/metadata's counts). The client runs on the same 2 cores as the server: the figures are
what one machine does serving itself, a floor for a server with cores of its own.

    python -m benchmarks.serve_latency                     # trains a small model first (about a minute)
    python -m benchmarks.serve_latency --float-export E1 --int8-export E2 [--rows-per-request 1,32]

Without exports it makes them as the tests' walk-through does: examples/clicks.py's CSV
(every feature kind: identity, hash, vocabulary, multi-hot, dense transforms) ->
dlrm-data preprocess -> 200 steps on one CPU rank -> dlrm-export (float, and int8 with its
AUC cost measured). Results go to benchmarks/results/<date>-serve-latency.json.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LEVELS = (1, 8, 64)
URL_LINE = re.compile(r"on (http://\S+) ")


# -- the model ------------------------------------------------------------------------------------
def _run(cmd: list[str]) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def make_exports(work: Path, rows: int, steps: int) -> tuple[Path, Path, Path]:
    """The clicks CSV, and a float and an int8 export of a model trained on it."""
    from examples.clicks import write_clicks

    csv_path = write_clicks(work / "clicks.csv", rows=rows)
    data = work / "data"
    _run([str(BIN / "dlrm-data"), "preprocess", "--schema", str(ROOT / "examples" / "clicks.toml"),
          "--input", str(csv_path), "--out", str(data), "--no-progress"])
    _run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node=1", "-m", "dlrm_dist.train", "--data=columnar",
          f"--data-dir={data}", f"--run-dir={work / 'run'}", f"--checkpoint-dir={work / 'ckpt'}",
          "--train.progress=false", "--model.arch=embedding_mlp", "--model.top_mlp=64-32-1", "--batch-size=256",
          f"--steps={steps}", "--train.eval_interval=0", "--train.device=cpu"])
    exports = []
    for quantize in ("none", "int8"):
        out = work / f"export-{quantize}"
        _run([str(BIN / "dlrm-export"), str(work / "ckpt"), "--out", str(out), "--quantize", quantize,
              "--data", str(data), "--no-progress"])
        exports.append(out)
    return csv_path, exports[0], exports[1]


# -- the server -----------------------------------------------------------------------------------
class Server:
    """dlrm-serve in a subprocess on 127.0.0.1 (an ephemeral port), stopped by SIGTERM."""

    def __init__(self, export: Path, options: list[str]) -> None:
        cmd = [sys.executable, "-m", "dlrm_dist.cli.serve_main", str(export), "--host", "127.0.0.1", "--port", "0",
               "--log-level", "warning", *options]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.url = self._url(timeout=300)

    def _url(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            found = URL_LINE.search(line)
            if found and found.group(1).startswith("http://127.0.0.1:"):
                return found.group(1)
        self.stop()
        sys.exit(f"dlrm-serve did not start:\n{self.proc.stderr.read()[-3000:] if self.proc.stderr else ''}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def typed_records(csv_path: Path, columns: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """The first ``count`` CSV rows as JSON records of the server's input columns (label and others left out)."""
    kinds = {c["name"]: c["kind"] for c in columns}
    out = []
    with csv_path.open(newline="") as f:
        for row in csv.DictReader(f):
            rec: dict[str, Any] = {}
            for name, kind in kinds.items():
                cell = row.get(name, "")
                rec[name] = (float(cell) if cell != "" else None) if kind == "number" else cell
            out.append(rec)
            if len(out) == count:
                break
    return out


# -- the load ---------------------------------------------------------------------------------------
async def drive(url: str, bodies: list[bytes], rows: int, clients: int, requests: int, seconds: float) -> dict:
    """``clients`` tasks, one request in flight each, until ``requests`` are sent or ``seconds`` pass."""
    latencies: list[float] = []
    failures = 0
    sent = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        before = (await client.get("/metadata")).json()["batches"]
        start = time.perf_counter()
        deadline = start + seconds

        async def one_client() -> None:
            nonlocal sent, failures
            while sent < requests and time.perf_counter() < deadline:
                body = bodies[sent % len(bodies)]
                sent += 1
                t0 = time.perf_counter()
                reply = await client.post("/predict", content=body, headers={"content-type": "application/json"})
                ok = reply.status_code == 200 and len(reply.json()["scores"]) == rows
                latencies.append(time.perf_counter() - t0)
                failures += not ok

        await asyncio.gather(*(one_client() for _ in range(clients)))
        elapsed = time.perf_counter() - start
        after = (await client.get("/metadata")).json()["batches"]
    lat = np.array(latencies) * 1e3
    calls = after["model_calls"] - before["model_calls"]
    return {"clients": clients, "rows_per_request": rows, "requests": len(latencies), "failures": failures,
            "seconds": round(elapsed, 3), "p50_ms": round(float(np.percentile(lat, 50)), 3),
            "p99_ms": round(float(np.percentile(lat, 99)), 3), "requests_per_s": round(len(lat) / elapsed, 1),
            "rows_per_s": round(len(lat) * rows / elapsed, 1), "model_calls": calls,
            "rows_per_model_call": round((after["rows"] - before["rows"]) / max(calls, 1), 2)}


def measure(export: Path, csv_path: Path, args: argparse.Namespace) -> list[dict]:
    options = [f"--{k.replace('_', '-')}={v}" for k, v in (("max_wait_ms", args.max_wait_ms), ("threads", args.threads))
               if v is not None]
    server = Server(export, options)
    try:
        columns = httpx.get(f"{server.url}/metadata", timeout=30).json()["columns"]
        pool = typed_records(csv_path, columns, 4096)
        out = []
        for rows in args.rows_per_request:
            bodies = [json.dumps({"records": pool[i:i + rows]}).encode() for i in range(0, len(pool) - rows, rows)]
            asyncio.run(drive(server.url, bodies, rows, 8, 200, 5))  # warm-up: first calls, connections
            for clients in LEVELS:
                level = asyncio.run(drive(server.url, bodies, rows, clients, args.requests, args.seconds))
                print(f"  {export.name:<12} {rows:>4} row(s)/request  {clients:>3} client(s): p50 {level['p50_ms']:8.2f} ms"
                      f"  p99 {level['p99_ms']:8.2f} ms  {level['rows_per_s']:9,.0f} rows/s  "
                      f"({level['rows_per_model_call']:.1f} rows/model call)", flush=True)
                out.append(level)
    finally:
        code = server.stop()
    if code != 0:
        sys.exit(f"dlrm-serve {export} exited {code} on SIGTERM (expected 0):\n{server.proc.stderr.read()[-2000:]}")
    return out


def machine() -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    return {"cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
            "commit": commit.strip(), "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()]}


def print_table(results: dict) -> None:
    print(f"\n{'export':<6} {'rows/req':>8} {'clients':>7} {'p50 ms':>9} {'p99 ms':>9} {'rows/s':>10} {'rows/call':>9}")
    for name in ("float", "int8"):
        for r in results[name]:
            print(f"{name:<6} {r['rows_per_request']:>8} {r['clients']:>7} {r['p50_ms']:>9.2f} {r['p99_ms']:>9.2f} "
                  f"{r['rows_per_s']:>10,.0f} {r['rows_per_model_call']:>9.1f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--float-export", type=Path, help="a float export (default: train and export one)")
    p.add_argument("--int8-export", type=Path, help="an int8 export of the same model")
    p.add_argument("--csv", type=Path, help="raw rows for the requests (default: the clicks CSV made for the model)")
    p.add_argument("--rows-per-request", type=lambda s: [int(x) for x in s.split(",")], default=[1, 32])
    p.add_argument("--requests", type=int, default=3000, help="requests per level at most (default 3000)")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds per level at most (default 10)")
    p.add_argument("--max-wait-ms", type=float, help="the server's --max-wait-ms (default: dlrm-serve's)")
    p.add_argument("--threads", type=int, help="the server's --threads (default: dlrm-serve's)")
    p.add_argument("--rows", type=int, default=20_000, help="CSV rows when the model is made here")
    p.add_argument("--steps", type=int, default=200, help="training steps when the model is made here")
    p.add_argument("--work", type=Path, help="where the model is made and kept (default: a temporary folder); "
                   "a folder holding one already is reused")
    p.add_argument("--out", type=Path, help="results JSON (default benchmarks/results/<date>-serve-latency.json)")
    args = p.parse_args()
    if (args.float_export is None) != (args.int8_export is None) or (args.float_export and not args.csv):
        p.error("give --float-export, --int8-export and --csv together, or none of them")
    with tempfile.TemporaryDirectory(prefix="serve-latency-") as tmp:
        work = args.work or Path(tmp)
        if args.float_export:
            csv_path, exports = args.csv, (args.float_export, args.int8_export)
        elif all((work / name / "export.json").is_file() for name in ("export-none", "export-int8")):
            csv_path, exports = work / "clicks.csv", (work / "export-none", work / "export-int8")
        else:
            print("training a small model on examples/clicks.py's CSV ...", flush=True)
            work.mkdir(parents=True, exist_ok=True)
            csv_path, *made = make_exports(work, args.rows, args.steps)
            exports = tuple(made)
        start_load = machine()
        results: dict[str, Any] = {"benchmark": "benchmarks/serve_latency.py " + " ".join(sys.argv[1:]),
                                   "date": datetime.date.today().isoformat(), "machine": start_load,
                                   "client": "httpx.AsyncClient on the same machine, one request in flight per client",
                                   "server_options": {"max_wait_ms": args.max_wait_ms, "threads": args.threads}}
        for name, export in zip(("float", "int8"), exports):
            results[name] = measure(export, csv_path, args)
        results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    out = args.out or ROOT / "benchmarks" / "results" / f"{results['date']}-serve-latency.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print_table(results)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
