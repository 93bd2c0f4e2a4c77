"""dlrm-serve: an exported model as an HTTP scoring endpoint (FastAPI on uvicorn).

    dlrm-serve exported/ --port 8080
    dlrm-serve exported/ --delta delta-1/ --delta delta-2/ --port 8080   # a chain of deltas applied
    curl -s localhost:8080/predict -H 'content-type: application/json' \\
         -d '{"records": [{"user_id": 17, "item": "item-5", "city": "city-3", "tags": ["news", "film"],
                           "price": 12.5, "views": 3}]}'
    curl -s localhost:8080/metadata

POST /predict takes raw feature records (the columns the schema reads, as in the input file)
and returns {"scores": [...]}, one click probability per record. Concurrent requests are
scored together (up to --max-batch-rows rows per model call, the oldest waiting at most
--max-wait-ms). A malformed request gets HTTP 422 naming body.records[i].column; a body over
--max-body-bytes or more than --max-request-rows records gets 413, and more than
--max-concurrency requests at once get 503 (retry). GET /healthz answers 200
once the model is loaded; GET /metadata gives the schema, export step, metrics at export,
quantization and input columns. SIGTERM or Ctrl-C stops taking connections, finishes the
requests in flight, then exits 0.

The export is checked before anything listens (a damaged or foreign export exits 4, and so
does a --delta chain that is damaged, out of order, missing a link or of another export);
the server binds --host 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from dlrm_dist.errors import DlrmError, run_cli
from dlrm_dist.logs import init_logging

PROG = "dlrm-serve"
LOG_LEVELS = ("warning", "info", "debug")
GRACEFUL_SECONDS = 30  # how long requests in flight may take to finish at shutdown
MAX_CONCURRENCY = 512  # x --max-body-bytes bounds what requests in flight can hold
# Defaults of serving.server.Limits (not imported: torch and FastAPI load after parsing).
DEFAULTS = {"max_batch_rows": 1024, "max_wait_ms": 2.0, "max_request_rows": 1024, "max_body_bytes": 4 << 20}


class ServeError(DlrmError):
    """Bad arguments to dlrm-serve, or an address it cannot listen on."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("export", help="an export directory (dlrm-export)")
    p.add_argument("--delta", action="append", default=[], metavar="DELTA",
                   help="a delta (dlrm-export --since) applied to the export; repeat in chain order")
    p.add_argument("--port", type=int, required=True, help="TCP port (0: any free port, printed at start)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--max-batch-rows", type=int, default=DEFAULTS["max_batch_rows"], metavar="N",
                   help=f"rows per model call (default {DEFAULTS['max_batch_rows']})")
    p.add_argument("--max-wait-ms", type=float, default=DEFAULTS["max_wait_ms"], metavar="M",
                   help="how long a request waits for others to join its batch "
                        f"(default {DEFAULTS['max_wait_ms']:g}; 0: score what is queued at once)")
    p.add_argument("--max-request-rows", type=int, default=DEFAULTS["max_request_rows"], metavar="R",
                   help=f"records per request, 413 beyond (default {DEFAULTS['max_request_rows']})")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULTS["max_body_bytes"], metavar="B",
                   help=f"request body size, 413 beyond (default {DEFAULTS['max_body_bytes']:,})")
    p.add_argument("--max-concurrency", type=int, default=MAX_CONCURRENCY, metavar="C",
                   help="connections and requests at once, 503 beyond: bounds memory under overload "
                        f"(default {MAX_CONCURRENCY})")
    p.add_argument("--threads", type=int, default=1, metavar="T",
                   help="torch threads per model call (default 1: a call scores a small batch, and the other "
                        "cores keep parsing and validating requests)")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info",
                   help="debug adds one line per batch and uvicorn's access log")
    return p


def listen(host: str, port: int) -> socket.socket:
    """A bound TCP socket (IPv4 or IPv6 by the host's form); ServeError naming the address if it cannot be."""
    if not 0 <= port <= 65535:
        raise ServeError(f"--port {port}: a TCP port is 0-65535")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as e:
        raise ServeError(f"--host {host!r} is not an address of this machine ({e})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait for TIME_WAIT
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run(args: argparse.Namespace) -> int:
    from dlrm_dist.serving.server import Limits  # FastAPI: after argument parsing

    limits = Limits(args.max_batch_rows, args.max_wait_ms, args.max_request_rows, args.max_body_bytes)
    problems = limits.problems() + [f"--{name.replace('_', '-')} {getattr(args, name)} must be >= 1"
                                    for name in ("max_concurrency", "threads") if getattr(args, name) < 1]
    if problems:
        raise ServeError("; ".join(problems))
    sock = listen(args.host, args.port)  # before loading: a port in use is named in a second, not after the load
    try:
        return serve(args, limits, sock)
    finally:
        sock.close()


def make_server(export: str, limits: Any, log_level: str = "info", max_concurrency: int = MAX_CONCURRENCY,
                threads: int = 1, deltas: Sequence[str] = ()) -> tuple[Any, dict[str, Any]]:
    """A uvicorn server for the export with its ``deltas`` applied (checked and loaded here, before anything
    listens) and its metadata."""
    import torch
    import uvicorn

    from dlrm_dist.serving.delta import check_base
    from dlrm_dist.serving.predictor import Predictor
    from dlrm_dist.serving.server import build_app

    # Measured on 2 cores: 2 torch threads made small calls several times slower than 1 whenever
    # the other core was busy (the event loop, another process): their workers spin and wait.
    torch.set_num_threads(threads)
    check_base(export)  # a delta given as the export is named as such
    predictor = Predictor.load(Path(export), deltas=deltas)
    config = uvicorn.Config(build_app(predictor, limits), log_level=log_level, access_log=log_level == "debug",
                            timeout_graceful_shutdown=GRACEFUL_SECONDS, limit_concurrency=max_concurrency,
                            lifespan="on")
    return uvicorn.Server(config), predictor.metadata()


def serve(args: argparse.Namespace, limits: Any, sock: socket.socket) -> int:
    server, metadata = make_server(args.export, limits, args.log_level, args.max_concurrency, args.threads,
                                   args.delta)
    step = metadata.get("step")
    chain = f" + {len(args.delta)} delta(s)" if args.delta else ""
    print(f"{PROG}: serving {args.export}{chain}" + (f" (step {step})" if step is not None else "") +
          f" on {url_of(sock)} (POST /predict, GET /healthz, GET /metadata)", flush=True)
    stopped = quiet_signals()
    server.run(sockets=[sock])
    if not server.started:  # the app's startup failed (uvicorn has logged why)
        raise ServeError(f"the server at {url_of(sock)} did not start")
    print(f"{PROG}: stopped" + (f" ({stopped[-1]})" if stopped else ""), flush=True)
    return 0


def quiet_signals() -> list[str]:
    """Handlers that only record SIGINT/SIGTERM: uvicorn installs its own while it runs (graceful
    shutdown) and re-raises the signal into these afterwards; the default ones would end the
    process by the signal (or a KeyboardInterrupt traceback) after a clean shutdown."""
    seen: list[str] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda number, _frame: seen.append(signal.Signals(number).name))
    return seen


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    init_logging(level=logging.DEBUG if args.log_level == "debug" else logging.INFO)
    return run_cli(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
