"""The HTTP scoring endpoint (dlrm-serve): an ASGI app around one loaded Predictor.

    POST /predict    {"records": [{column: value, ...}, ...]}  ->  {"scores": [...]}
    GET  /healthz    200 {"status": "ok"} while the model is loaded and the batcher runs
    GET  /metadata   the export's schema, step, metrics at export, quantization, input columns

Why FastAPI + uvicorn: the request body is declared as a pydantic model built from the
export's own input columns (numbers, texts, delimited lists; required or not; no unknown
keys), so every malformed request gets a field-level 422 (``loc`` = body.records[i].column)
from the same validation library the rest of dlrm_dist uses, without hand-written checks;
ASGI runs every request on one event loop, which is what lets concurrent requests be
gathered into micro-batches (batcher.py) while the model runs in a worker thread; and
uvicorn is the standard, maintained ASGI server (h11, graceful shutdown on SIGTERM/SIGINT).

Bad input is never a 500: a body over ``max_body_bytes`` is refused with 413 from its
Content-Length, or while it streams in, before anything is parsed; more than
``max_request_rows`` records is a 413 too; a body not sent as ``application/json`` is a 415;
malformed JSON (nested too deeply too) and wrong types are 422s from pydantic; cells the model's feature pipeline refuses (the Predictor's RecordError) are 422s
in the same shape, naming record and column.
"""

import contextlib
import json
import logging
import math
import sys
from dataclasses import asdict, dataclass
from typing import Annotated, Any, AsyncIterator, Callable, Optional, Protocol, Sequence

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import ConfigDict, Field, PlainValidator, WithJsonSchema, create_model
from typing_extensions import NotRequired, Required, TypedDict

from dlrm_dist.serving.batcher import BatcherClosed, MicroBatcher, RecordsRejected

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """How requests are batched and bounded (dlrm-serve's options)."""

    max_batch_rows: int = 1024  # rows per model call
    max_wait_ms: float = 2.0  # how long the oldest queued request waits for others to join its batch
    max_request_rows: int = 1024  # records per request (413 beyond)
    max_body_bytes: int = 4 << 20  # request body (413 beyond)

    def problems(self) -> list[str]:
        """What is out of range, by dlrm-serve's option names."""
        out = [f"--{name.replace('_', '-')} {getattr(self, name)} must be >= 1" for name in
               ("max_batch_rows", "max_request_rows", "max_body_bytes") if getattr(self, name) < 1]
        if not (math.isfinite(self.max_wait_ms) and self.max_wait_ms >= 0):
            out.append(f"--max-wait-ms {self.max_wait_ms} must be a finite number >= 0")
        return out


class Column(Protocol):
    name: str
    kind: str  # "number" | "text" | "list"
    required: bool


class Model(Protocol):
    """What the server needs of dlrm_dist.serving.predictor.Predictor."""

    @property
    def columns(self) -> Sequence[Column]: ...

    def score(self, records: Sequence[dict[str, Any]]) -> np.ndarray: ...

    def metadata(self) -> dict[str, Any]: ...


# -- the request model, from the export's columns ---------------------------------------------
# A cell is what the training file held: a number, a string (read as the file's text would be:
# "3.5", or one of the schema's null_values) or null (missing); a multi-hot cell may also be a
# JSON list of such values (joined by the column's delimiter). Whether a string parses is the
# feature pipeline's to say (a record error naming the cell); the JSON type is checked here.
_SCALAR = {"anyOf": [{"type": "number"}, {"type": "string"}, {"type": "null"}]}
CELL_SCHEMAS: dict[str, dict[str, Any]] = {
    "number": _SCALAR,
    "text": _SCALAR,
    "list": {"anyOf": [*_SCALAR["anyOf"], {"type": "array", "items": {"anyOf": _SCALAR["anyOf"][:2]}}]},
}


def _scalar_problem(value: Any) -> Optional[str]:
    if isinstance(value, str):
        return _text_problem(value)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _json_type(value)
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} (NaN and Infinity are not JSON numbers)"
    return None


def _text_problem(text: str) -> Optional[str]:
    """A string with no UTF-8 form (JSON's "\\udfff": a lone surrogate) was never a training file's cell."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"text that is not valid UTF-8 (a lone surrogate {text[e.start]!r} at character {e.start})"
    return None


def _json_type(value: Any) -> str:
    return {bool: "a boolean", dict: "an object", list: "a list"}.get(type(value), f"a {type(value).__name__}")


def cell_validator(kind: str) -> Callable[[Any], Any]:
    """One check per cell, one message (a Union would report a failure per member)."""
    def check(value: Any) -> Any:
        if kind == "list" and isinstance(value, list):
            bad = next((p for p in map(_scalar_problem, value) if p), None)
            if bad or any(v is None for v in value):
                raise ValueError(f"a multi-hot list holds numbers or strings, not {bad or 'null'}")
            return value
        bad = _scalar_problem(value)
        if bad:
            expected = "a number, a string, a list of them or null" if kind == "list" else "a number, a string or null"
            raise ValueError(f"give {expected} (as the training file held the cell), not {bad}")
        return value
    return check


def record_type(columns: Sequence[Column]) -> type:
    """A TypedDict of one record: a key per input column (required ones must be present), nothing else."""
    unknown = sorted({c.kind for c in columns} - set(CELL_SCHEMAS))
    if unknown:
        raise ValueError(f"input column kinds {unknown}: the server knows {sorted(CELL_SCHEMAS)}")
    cell = {k: Annotated[Any, PlainValidator(cell_validator(k)), WithJsonSchema(schema)]
            for k, schema in CELL_SCHEMAS.items()}
    fields = {c.name: (Required if c.required else NotRequired)[cell[c.kind]] for c in columns}
    record = TypedDict("Record", fields)  # type: ignore[misc] - column names need not be identifiers
    record.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]
    return record


def request_model(columns: Sequence[Column], max_request_rows: int) -> type:
    record = record_type(columns)
    return create_model("PredictRequest", __config__=ConfigDict(extra="forbid"),
                        records=(list[record], Field(max_length=max_request_rows)))  # type: ignore[valid-type]


# -- bounded bodies ---------------------------------------------------------------------------
class BoundedRequest(Request):
    """A request whose body is read up to the app's ``max_body_bytes`` (413 beyond, before parsing)."""

    async def body(self) -> bytes:
        if not hasattr(self, "_body"):
            limit = self.app.state.limits.max_body_bytes
            declared = self.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise too_large(f"the request body is {int(declared):,} bytes", limit)
            chunks, size = [], 0
            async for chunk in self.stream():  # no Content-Length (chunked): counted as it arrives
                size += len(chunk)
                if size > limit:
                    raise too_large(f"the request body is over {limit:,} bytes", limit)
                chunks.append(chunk)
            self._body = b"".join(chunks)
        return self._body

    async def json(self) -> Any:
        """The body as JSON; any body Python's parser cannot read is a JSONDecodeError, which FastAPI
        turns into the documented 422 (json_invalid), not a 400 with no detail."""
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = json.loads(body)
            except RecursionError:
                raise json.JSONDecodeError(f"nested deeper than Python's JSON parser reads (its recursion limit "
                                           f"{sys.getrecursionlimit():,}); a record is one object of cells", "", 0) from None
            except UnicodeDecodeError as e:
                raise json.JSONDecodeError(f"the body is not UTF-8 (byte offset {e.start})", "", e.start) from None
        return self._json


def too_large(what: str, limit: int) -> HTTPException:
    return HTTPException(413, f"{what}; this server takes at most {limit:,} (dlrm-serve --max-body-bytes): "
                              "send the records in several requests")


def is_json(content_type: str) -> bool:
    """application/json or application/*+json, parameters (charset) allowed: what FastAPI parses as JSON."""
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


class BoundedRoute(APIRoute):
    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def bounded(request: Request) -> Response:
            if request.method == "POST" and not is_json(request.headers.get("content-type", "")):
                return JSONResponse({"detail": f"send the body as JSON with the header content-type: application/json "
                                               f"(this request's content-type is "
                                               f"{request.headers.get('content-type', '')[:100] or 'not given'})"},
                                    status_code=415)
            return await handler(BoundedRequest(request.scope, request.receive))

        return bounded


# -- errors -----------------------------------------------------------------------------------
ECHO_CHARS = 500  # an error's "input" is echoed back up to this size (the whole body could be megabytes)


def _jsonable(value: Any) -> Any:
    """``value`` as strict JSON: NaN/Infinity (which the request's JSON parser accepts) as text."""
    if isinstance(value, str):  # a lone surrogate has no UTF-8 form: echoed as its escape
        return value if _text_problem(value) is None else value.encode("utf-8", "backslashreplace").decode()
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def _echo(value: Any) -> Any:
    value = _jsonable(value)
    text = json.dumps(value)
    return value if len(text) <= ECHO_CHARS else f"{text[:ECHO_CHARS]}... ({len(text):,} characters)"


def error_entry(loc: Sequence[Any], msg: str, value: Any, kind: str) -> dict[str, Any]:
    return {"type": kind, "loc": list(loc), "msg": msg, "input": _echo(value)}


def record_errors(error: RecordsRejected) -> list[dict[str, Any]]:
    """The pipeline's problems in pydantic's error shape (loc body.records.i.column)."""
    return [error_entry(["body", "records", row, *([p.column] if getattr(p, "column", "") else [])],
                        str(getattr(p, "message", p)), getattr(p, "value", None), "record_error")
            for row, p in error.problems] or [error_entry(["body", "records"], str(error), None, "record_error")]


async def validation_error(request: Request, error: RequestValidationError) -> Response:
    """422 naming each field (FastAPI's shape, with inputs made strict JSON and bounded); too many
    records is a 413 (a size bound, not a malformed field)."""
    limit = request.app.state.limits.max_request_rows
    errors = error.errors()
    for e in errors:
        if e.get("type") == "too_long" and tuple(e.get("loc", ())) == ("body", "records"):
            return JSONResponse({"detail": f"a request holds at most {limit:,} records (dlrm-serve "
                                           "--max-request-rows); send more in several requests"}, status_code=413)
    return JSONResponse({"detail": [error_entry(e.get("loc", ()), _message(e), e.get("input"), str(e.get("type", "")))
                                    for e in errors]}, status_code=422)


def _message(error: dict[str, Any]) -> str:
    """pydantic's message; a JSON decode error says what the parser said (FastAPI keeps it in ctx)."""
    msg = str(error.get("msg", "")).removeprefix("Value error, ")
    why = (error.get("ctx") or {}).get("error")
    return f"{msg}: {why}" if error.get("type") == "json_invalid" and why else msg


# -- the app ----------------------------------------------------------------------------------
def predictor_problems(error: BaseException) -> Optional[list[Any]]:
    """The FieldProblems of the Predictor's RecordError; None for any other error."""
    from dlrm_dist.serving.predictor import RecordError

    return list(error.problems) if isinstance(error, RecordError) else None


def build_app(model: Model, limits: Limits = Limits(),
              problems_of: Callable[[BaseException], Optional[list[Any]]] = predictor_problems) -> FastAPI:
    """The ASGI app serving ``model``; ``problems_of`` gives a record error's problems (else None)."""
    bad = limits.problems()
    if bad:
        raise ValueError("; ".join(bad))
    batcher = MicroBatcher(model.score, problems_of, limits.max_batch_rows, limits.max_wait_ms)
    body_type = request_model(model.columns, limits.max_request_rows)
    described = {**model.metadata(), "columns": [column_dict(c) for c in model.columns],
                 "serving": asdict(limits)}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        try:
            yield
        finally:
            await batcher.close()  # uvicorn has let in-flight requests finish; their batches are scored

    app = FastAPI(title="dlrm-serve", lifespan=lifespan, description=__doc__.split("\n\n")[0])
    app.state.limits = limits
    app.state.batcher = batcher
    app.router.route_class = BoundedRoute
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]

    async def predict(body: body_type) -> Response:  # type: ignore[valid-type]
        try:
            scores = await batcher.submit(body.records)  # type: ignore[attr-defined]
        except RecordsRejected as e:
            return JSONResponse({"detail": record_errors(e)}, status_code=422)
        except BatcherClosed as e:
            return JSONResponse({"detail": str(e)}, status_code=503, headers={"Retry-After": "1"})
        except Exception as e:  # noqa: BLE001 - not the request's fault: logged, and said in one line
            logger.exception("scoring failed")
            return JSONResponse({"detail": f"the model failed to score the batch ({type(e).__name__}: {e})"},
                                status_code=500)
        return JSONResponse({"scores": scores.tolist()})

    async def healthz() -> Response:
        if not batcher.running:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def metadata() -> Response:
        return JSONResponse({**described, "batches": asdict(batcher.counts)})

    app.add_api_route("/predict", predict, methods=["POST"], summary="score raw feature records")
    app.add_api_route("/healthz", healthz, methods=["GET"], summary="200 while the model is loaded")
    app.add_api_route("/metadata", metadata, methods=["GET"], summary="the export: schema, step, metrics, columns")
    return app


def column_dict(column: Column) -> dict[str, Any]:
    return {"name": column.name, "kind": column.kind, "required": bool(column.required)}

