"""dlrm-serve: the HTTP app on a real export (the mixed schema: every input kind), in-process.

One export made without a process group (tests/serving_helper.make_export) and one
Predictor serve every test; the app is driven by fastapi's TestClient (httpx) in-process,
and once by a real uvicorn on an ephemeral port of 127.0.0.1. The model is counted, not
replaced: ``Counting`` passes every call to the real Predictor.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import pytest
import torch

from dlrm_dist.cli import serve_main
from dlrm_dist.serving.batcher import MicroBatcher, RecordsRejected
from dlrm_dist.serving.predictor import Predictor, RecordError
from dlrm_dist.serving.server import Limits, build_app
from tests.serving_helper import make_export

with warnings.catch_warnings():
    # Starlette 1.x suggests httpx2 for its test client; httpx is what fastapi.testclient is built on here.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
    from fastapi.testclient import TestClient

LIMITS = Limits(max_batch_rows=64, max_wait_ms=1.0, max_request_rows=16, max_body_bytes=16_384)


def record(i: int) -> dict[str, Any]:
    """A raw row of the mixed schema: 5 numbers, hashed texts, an identity multi-hot, two genre lists."""
    return {"d0": 0.5 * i, "d1": i % 7, "d2": None, "d3": str(1.5 + i), "d4": -i, "a": f"a-{i}",
            "b": [i % 24, (3 * i + 1) % 24], "g1": "rock|jazz" if i % 2 else ["pop"], "c": 1000 + i,
            "g2": f"g{i % 5}|g{i % 3}"}


class Counting:
    """The real Predictor, its score calls recorded (rows per call)."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor, self.calls = predictor, []
        self.columns = predictor.columns

    def score(self, records):
        self.calls.append(len(records))
        return self.predictor.score(records)

    def metadata(self) -> dict[str, Any]:
        return self.predictor.metadata()


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serve") / "export"
    make_export(out)
    return out


@pytest.fixture(scope="module")
def predictor(export: Path) -> Predictor:
    return Predictor.load(export)


def client_for(model: Counting, limits: Limits = LIMITS) -> TestClient:
    return TestClient(build_app(model, limits))


@pytest.fixture(scope="module")
def served(predictor: Predictor) -> Iterator[tuple[TestClient, Counting]]:
    model = Counting(predictor)
    with client_for(model) as client:
        yield client, model


def post_all(client: TestClient, bodies: list[Any]) -> list[httpx.Response]:
    """Each body POSTed from its own thread at once (the app sees concurrent requests)."""
    out: list[Any] = [None] * len(bodies)
    start = threading.Barrier(len(bodies))

    def send(k: int) -> None:
        start.wait()
        out[k] = client.post("/predict", json=bodies[k])

    threads = [threading.Thread(target=send, args=(k,)) for k in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return out


# -- scores -----------------------------------------------------------------------------------
def test_scores_are_the_predictors(served, predictor: Predictor) -> None:
    client, _ = served
    records = [record(i) for i in range(5)] + [{**record(5), "label": 1}]  # the label may come along
    reply = client.post("/predict", json={"records": records})
    assert reply.status_code == 200, reply.text
    scores = reply.json()["scores"]
    assert len(scores) == 6 and all(0 < s < 1 for s in scores)
    np.testing.assert_allclose(scores, predictor.score(records), rtol=0, atol=1e-7)
    assert client.post("/predict", json={"records": []}).json() == {"scores": []}


def test_concurrent_requests_are_scored_in_one_model_call(predictor: Predictor) -> None:
    model = Counting(predictor)
    seen: list[str] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda r: seen.append(r.getMessage())  # type: ignore[method-assign]
    log = logging.getLogger("dlrm_dist.serving.batcher")
    log.addHandler(handler)
    old_level = log.level
    log.setLevel(logging.DEBUG)
    try:
        # The batch closes when full (8 x 3 rows) long before its wait is up.
        with client_for(model, Limits(max_batch_rows=24, max_wait_ms=20_000)) as client:
            bodies = [{"records": [record(10 * k + j) for j in range(3)]} for k in range(8)]
            replies = post_all(client, bodies)
            counts = client.get("/metadata").json()["batches"]
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
    assert model.calls == [24]
    for body, reply in zip(bodies, replies):  # each request its own slice
        assert reply.status_code == 200, reply.text
        np.testing.assert_allclose(reply.json()["scores"], predictor.score(body["records"]), rtol=0, atol=1e-6)
    assert counts == {"batches": 1, "model_calls": 1, "rows": 24, "requests": 8}
    assert len(seen) == 1 and seen[0].startswith("batch: 8 request(s), 24 row(s), 1 model call(s)"), seen


def test_a_bad_record_fails_only_its_own_request(predictor: Predictor) -> None:
    model = Counting(predictor)
    bodies = [{"records": [record(k), record(k + 1)]} for k in range(4)]
    bodies[2]["records"][1]["b"] = "zz"  # an identity id that is no integer: the pipeline refuses it
    with client_for(model, Limits(max_batch_rows=8, max_wait_ms=20_000)) as client:
        replies = post_all(client, bodies)
    assert replies[2].status_code == 422
    assert replies[2].json()["detail"] == [{"type": "record_error", "loc": ["body", "records", 1, "b"], "input": "zz",
                                            "msg": "identity feature 'b' (column 'b') holds 'zz', not an integer id"}]
    for k in (0, 1, 3):
        assert replies[k].status_code == 200, replies[k].text
        np.testing.assert_allclose(replies[k].json()["scores"], predictor.score(bodies[k]["records"]), atol=1e-6)
    assert model.calls == [8, 6]  # the batch, then the others without the bad request


# -- bad requests -----------------------------------------------------------------------------
def _without(rec: dict, key: str) -> dict:
    return {k: v for k, v in rec.items() if k != key}


BAD = {
    "missing column": ({"records": [record(0), _without(record(1), "a")]}, ["body", "records", 1, "a"], "missing"),
    "wrong type": ({"records": [{**record(0), "d0": True}]}, ["body", "records", 0, "d0"], "value_error"),
    "object in a list": ({"records": [{**record(0), "g1": ["x", {}]}]}, ["body", "records", 0, "g1"], "value_error"),
    "unknown column": ({"records": [{**record(0), "zip": "0"}]}, ["body", "records", 0, "zip"], "extra_forbidden"),
    "unknown key": ({"records": [record(0)], "explain": True}, ["body", "explain"], "extra_forbidden"),
    "record not an object": ({"records": [record(0), 7]}, ["body", "records", 1], "dict_type"),
    "no records": ({}, ["body", "records"], "missing"),
    "unparsable number": ({"records": [{**record(0), "d3": "1,5"}]}, ["body", "records", 0, "d3"], "record_error"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_requests_are_422_naming_the_field(served, case: str) -> None:
    client, model = served
    body, loc, kind = BAD[case]
    before = len(model.calls)
    reply = client.post("/predict", json=body)
    assert reply.status_code == 422, reply.text
    detail = reply.json()["detail"]
    assert [(d["loc"], d["type"]) for d in detail] == [(loc, kind)] and detail[0]["msg"]
    assert len(model.calls) == before + (kind == "record_error")  # pydantic refuses before the model


def test_malformed_json_and_non_finite_numbers_are_422_in_strict_json(served) -> None:
    client, _ = served
    reply = client.post("/predict", content=b'{"records": [', headers={"content-type": "application/json"})
    assert reply.status_code == 422 and reply.json()["detail"][0]["type"] == "json_invalid"
    # Python's JSON parser reads NaN; the 422 must still be JSON a strict client can parse.
    text = json.dumps({"records": [{**record(0), "d1": float("nan")}]})
    reply = client.post("/predict", content=text, headers={"content-type": "application/json"})
    assert reply.status_code == 422
    detail = json.loads(reply.text, parse_constant=lambda c: pytest.fail(f"{c} in the reply"))["detail"]
    assert detail[0]["loc"] == ["body", "records", 0, "d1"] and "NaN" in detail[0]["msg"]


def test_oversize_requests_are_413_before_scoring(served) -> None:
    client, model = served
    before = len(model.calls)
    reply = client.post("/predict", json={"records": [record(i) for i in range(LIMITS.max_request_rows + 1)]})
    assert reply.status_code == 413 and "--max-request-rows" in reply.json()["detail"]
    big = json.dumps({"records": [{**record(0), "a": "x" * LIMITS.max_body_bytes}]}).encode()
    reply = client.post("/predict", content=big, headers={"content-type": "application/json"})
    assert reply.status_code == 413 and f"{len(big):,} bytes" in reply.json()["detail"]

    def chunks() -> Iterator[bytes]:  # chunked, no Content-Length: counted as it comes
        yield b'{"records": [{"a": "'
        for _ in range(LIMITS.max_body_bytes // 1000 + 1):
            yield b"x" * 1000

    reply = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert reply.status_code == 413 and "--max-body-bytes" in reply.json()["detail"]
    assert len(model.calls) == before


# -- health, metadata, shutdown ---------------------------------------------------------------
def test_healthz_and_metadata(served, predictor: Predictor) -> None:
    client, _ = served
    assert client.get("/healthz").json() == {"status": "ok"}
    meta = client.get("/metadata").json()
    manifest = predictor.export.manifest
    assert meta["step"] == manifest.step == 0 and meta["quantize"] == "none"
    assert meta["schema"]["name"] == "mixed" and meta["schema_fingerprint"] == manifest.schema_fingerprint
    assert [(c["name"], c["kind"], c["required"]) for c in meta["columns"]] == \
        [(c.name, c.kind, c.required) for c in predictor.columns]
    assert {"d0": "number", "a": "text", "g1": "list", "label": "number"}.items() <= \
        {c["name"]: c["kind"] for c in meta["columns"]}.items()
    assert meta["serving"]["max_request_rows"] == LIMITS.max_request_rows


def test_shutdown_scores_what_is_queued_then_refuses(predictor: Predictor) -> None:
    model = Counting(predictor)
    app = build_app(model, Limits(max_batch_rows=100, max_wait_ms=20_000))
    batcher = app.state.batcher

    async def scenario() -> tuple[np.ndarray, BaseException]:
        await batcher.start()
        queued = asyncio.ensure_future(batcher.submit([record(1), record(2)]))
        await asyncio.sleep(0)  # queued; its batch would wait 20 s for company
        await batcher.close()  # ... but closing scores it now
        try:
            await batcher.submit([record(3)])
        except BaseException as e:  # noqa: BLE001
            return queued.result(), e
        raise AssertionError("submit after close was accepted")

    scores, refused = asyncio.run(scenario())
    np.testing.assert_allclose(scores, predictor.score([record(1), record(2)]), atol=1e-6)
    assert type(refused).__name__ == "BatcherClosed" and model.calls == [2]
    client = TestClient(app)  # (no lifespan: the batcher stays closed)
    assert client.get("/healthz").status_code == 503
    assert client.post("/predict", json={"records": [record(0)]}).status_code == 503


def test_batches_never_split_a_request() -> None:
    calls: list[int] = []

    def score(records):
        calls.append(len(records))
        return np.arange(len(records), dtype=np.float64)

    async def scenario() -> list[np.ndarray]:
        batcher = MicroBatcher(score, lambda e: None, max_batch_rows=4, max_wait_ms=20_000)
        await batcher.start()
        sizes = [3, 2, 6, 1]  # 3 | 2 | 6 (alone, over the limit) | 1 (closed by the shutdown)
        futures = [asyncio.ensure_future(batcher.submit([{}] * n)) for n in sizes]
        await asyncio.sleep(0.05)
        await batcher.close()
        return [f.result() for f in futures]

    results = asyncio.run(scenario())
    assert calls == [3, 2, 6, 1]
    assert [r.tolist() for r in results] == [[0, 1, 2], [0, 1], [0, 1, 2, 3, 4, 5], [0]]


def test_an_error_naming_no_row_fails_each_request_alone() -> None:
    calls: list[int] = []

    def score(records):
        calls.append(len(records))
        if any(r.get("bad") for r in records):
            raise RecordError([])  # a record error that names no row
        return np.zeros(len(records))

    async def scenario() -> list[Any]:
        batcher = MicroBatcher(score, lambda e: e.problems if isinstance(e, RecordError) else None, 10, 20_000)
        await batcher.start()
        futures = [asyncio.ensure_future(batcher.submit(rs)) for rs in ([{}], [{"bad": 1}], [{}, {}])]
        await asyncio.sleep(0.05)
        await batcher.close()
        return [f.exception() or f.result() for f in futures]

    ok, bad, ok2 = asyncio.run(scenario())
    assert calls == [4, 1, 1, 2] and isinstance(bad, RecordsRejected) and bad.problems == []
    assert ok.tolist() == [0] and ok2.tolist() == [0, 0]


# -- the real server and the command line ----------------------------------------------------
def test_uvicorn_serves_on_an_ephemeral_port(export: Path, predictor: Predictor) -> None:
    sock = serve_main.listen("127.0.0.1", 0)
    server, metadata = serve_main.make_server(str(export), LIMITS, "warning", threads=torch.get_num_threads())
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.05)
        assert server.started, "uvicorn did not start within 60 s"
        url = serve_main.url_of(sock)
        assert url.startswith("http://127.0.0.1:") and metadata["step"] == 0
        reply = httpx.post(f"{url}/predict", json={"records": [record(7)]}, timeout=30)
        assert reply.status_code == 200
        np.testing.assert_allclose(reply.json()["scores"], predictor.score([record(7)]), atol=1e-6)
        assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200
    finally:
        server.should_exit = True  # what SIGTERM / Ctrl-C set
        thread.join(timeout=30)
    assert not thread.is_alive(), "uvicorn did not shut down within 30 s"


def test_cli_refuses_bad_arguments_by_name(tmp_path: Path, capsys) -> None:
    assert serve_main.main([str(tmp_path), "--port", "0", "--max-batch-rows", "0"]) == 2
    assert "dlrm-serve: error: --max-batch-rows 0 must be >= 1" in capsys.readouterr().err
    assert serve_main.main([str(tmp_path / "none"), "--port", "0"]) == 4  # checked before anything listens
    assert f"{tmp_path / 'none'} is not a directory" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert serve_main.main([str(tmp_path), "--port", str(port)]) == 2
    assert f"dlrm-serve: error: cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert serve_main.main([str(tmp_path), "--port", "70000"]) == 2
    assert Limits() == Limits(**serve_main.DEFAULTS)  # the CLI's defaults are the server's


def test_a_lone_surrogate_is_a_422_naming_its_cell_not_a_500(served) -> None:
    client, model = served
    before = len(model.calls)
    for cell, loc in (("\udfff", "a"), (["x", "\ud800"], "g1")):
        text = json.dumps({"records": [record(0), {**record(1), loc: cell}]})  # ASCII JSON: the escape as sent
        reply = client.post("/predict", content=text, headers={"content-type": "application/json"})
        assert reply.status_code == 422, reply.text
        detail = reply.json()["detail"]
        assert [d["loc"] for d in detail] == [["body", "records", 1, loc]] and "not valid UTF-8" in detail[0]["msg"]
    assert len(model.calls) == before


def test_a_body_not_sent_as_json_is_415_and_deep_nesting_is_422(served) -> None:
    client, model = served
    before = len(model.calls)
    text = json.dumps({"records": [record(0)]})
    for headers in ({"content-type": "text/plain"}, {"content-type": "application/x-www-form-urlencoded"}, {}):
        reply = client.post("/predict", content=text, headers=headers)
        assert reply.status_code == 415 and "application/json" in reply.json()["detail"], (headers, reply.text)
        assert text not in reply.text  # the body is not echoed
    reply = client.post("/predict", content=text, headers={"content-type": "application/json; charset=utf-8"})
    assert reply.status_code == 200, reply.text
    reply = client.post("/predict", content="[" * 10_000, headers={"content-type": "application/json"})
    assert reply.status_code == 422, reply.text
    detail = reply.json()["detail"]
    assert detail[0]["type"] == "json_invalid" and "nested deeper" in detail[0]["msg"]
    assert len(model.calls) == before + 1
