"""The HTTP gateway: agencies submit disbursements, reversals, the budget records of their money
(allocations, treasury releases) and declared batches, and read back what they submitted. A thin shell: decode the body, validate with the core
(`aidcore.intake.validate_any`), check the agency's scope (`aidcore.agencies.scope_problem`),
then decide idempotency and write durably in one PostgreSQL transaction (`connectors.intake.submit`,
the same outbox the file intake and the relay use).

202 means committed: the records are in ledger.outbox (fsync'd by PostgreSQL), which the relay
publishes to Kafka and re-publishes after a broker that lost its log. A crash of the broker or of
this process right after the answer loses nothing.

Every refusal is an HTTP 4xx with a named code (`aidcore.outcomes`): `{"code", "field", "message"}`,
and for a batch the per-record problems under `records`. A clear NIK is never logged, never a
metric label, and never echoed in a message. Owns nothing but the HTTP edge.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import orjson
import psycopg
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.routing import Match

from aidcore import outcomes
from aidcore.agencies import AGENCY_OUT_OF_SCOPE, Agency, may_read, scope_problem
from aidcore.intake import (
    ALLOCATION_FIELDS,
    INPUT_FIELDS,
    RELEASE_FIELDS,
    REVERSAL_FIELDS,
    Accepted,
    AcceptedBudget,
    AcceptedReversal,
    BudgetAllocation,
    Disbursement,
    Rejection,
    Reversal,
    validate_any,
)
from aidcore.ledger import Rulebook
from connectors.rulebooks import active_rulebook
from aidcore.reference import Reference
from aidcore.settings import GatewaySettings
from connectors.agencies import Authenticator
from connectors.intake import Submitted, recorded, submit

log = logging.getLogger(__name__)

BATCH_MAX_RECORDS = 1000

REQUESTS = Counter("aidledger_gateway_requests_total", "HTTP requests answered by the gateway, by route and status",
                   ["route", "status"])
LATENCY = Histogram("aidledger_gateway_request_seconds", "Time from request to answer, by route", ["route"],
                    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
RECORDS = Counter("aidledger_gateway_records_total",
                  "Records submitted over HTTP, by outcome (accepted, redelivered, or the rejection code; a body"
                  " refused whole, body_not_json or body_too_large, counts once)", ["outcome"])
DISBURSEMENTS_IN = Counter("aidledger_gateway_disbursements_accepted_total",
                           "Disbursements newly accepted over HTTP, by source type (who funds them) and programme",
                           ["source_type", "programme_code"])


# --- errors ---------------------------------------------------------------------------------------

class GatewayError(Exception):
    """A refusal: HTTP status, named code, the field at fault and a message that holds no NIK."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None, *,
                 records: list[dict] | None = None, headers: dict[str, str] | None = None):
        super().__init__(code)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.records, self.headers = records, headers

    def body(self) -> dict:
        out: dict[str, Any] = {"code": self.code, "field": self.field, "message": self.message}
        if self.records is not None:
            out["records"] = self.records
        return out


def status_of(code: str) -> int:
    """The HTTP status of a named code."""
    if code.startswith("exists_with_different_") or code == "batch_has_conflicts":
        return 409
    return _STATUS.get(code, 422)


_STATUS = {
    "body_too_large": 413, "batch_too_large": 413, "unauthenticated": 401, "rate_limited": 429,
    "body_not_json": 400, AGENCY_OUT_OF_SCOPE: 403, "not_found": 404, "storage_unavailable": 503,
}
assert set(_STATUS) <= set(outcomes.GATEWAY_CODES)


def _json(status: int, body: dict, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


# --- per-client rate ------------------------------------------------------------------------------

class TokenBuckets:
    """A token bucket per client: `burst` tokens, refilled at `rate_per_s`. Thread-safe; the
    least recently seen clients are forgotten beyond `max_clients` (a forgotten client starts full)."""

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = 10_000):
        self.rate, self.burst, self.clock, self.max_clients = rate_per_s, max(1, burst), clock, max_clients
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """0.0 when the request may go ahead, else the seconds until a token is there."""
        now = self.clock()
        with self._lock:
            tokens, at = self._buckets.pop(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / self.rate if self.rate > 0 else 60.0
            self._buckets[client] = (tokens, now)  # re-inserted last: dict order is recency
            while len(self._buckets) > self.max_clients:
                del self._buckets[next(iter(self._buckets))]
            return wait


# --- PostgreSQL connections -----------------------------------------------------------------------

class Connections:
    """A few autocommit connections shared by the request threads; a broken one is replaced."""

    def __init__(self, database_url: str, size: int, timeout_s: float = 10.0):
        self.database_url, self.timeout_s = database_url, timeout_s
        self._free: queue.LifoQueue = queue.LifoQueue()
        for _ in range(max(1, size)):
            self._free.put(None)  # opened on first use

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        try:
            conn = self._free.get(timeout=self.timeout_s)
        except queue.Empty:
            raise GatewayError(503, "storage_unavailable", "no database connection free; retry") from None
        try:
            if conn is None or conn.closed:
                conn = psycopg.connect(self.database_url, autocommit=True, connect_timeout=5)
            yield conn
        except psycopg.Error as err:
            # The message of a database error can hold row values: only its class is logged.
            log.error("database error %s; the request was not recorded", type(err).__name__)
            if conn is not None and not conn.closed and isinstance(err, psycopg.OperationalError):
                conn.close()
            raise GatewayError(503, "storage_unavailable", "the ledger database did not commit; nothing was recorded, retry") from None
        finally:
            self._free.put(conn)

    def close(self) -> None:
        while not self._free.empty():
            conn = self._free.get_nowait()
            if conn is not None:
                conn.close()


# --- the OpenAPI description of bodies the core validates -----------------------------------------

_FIELD_DOCS = {
    "source_system": "the sending system; with source_ref, the idempotency key (one of the agency's source systems)",
    "source_ref": "unique within source_system",
    "source_type": "APBN, APBD_PROV, APBD_KAB, APBDES, CSR or COMMUNITY",
    "agency_code": "the agency that pays: the caller's own",
    "programme_code": "one of the caller's programmes",
    "nik": "16 ASCII digits; may be empty when provisional_id is set",
    "provisional_id": "identity issued to a person without NIK",
    "kk": "family card number, 16 digits (optional)",
    "amount_idr": "whole rupiah > 0 (integer, or text like \"200000\"); a fraction is rejected, never rounded",
    "period": "YYYY-MM the payment is for",
    "disbursed_at": "ISO 8601 with offset, e.g. 2026-04-03T09:00:00+07:00",
    "kind": "CASH, IN_KIND or PREMIUM",
    "channel": "BANK_TRANSFER, POS, E_WALLET, CASH or GOODS",
    "region_code": "10-digit village code of residence",
    "record_type": "disbursement (default), reversal, allocation or release",
    "funding_account": "the budget line the money comes from",
    "fiscal_year": "the year of the budget, e.g. 2026",
    "allocated_at": "ISO 8601 with offset",
    "released_at": "ISO 8601 with offset",
    "original_source_system": "the reversed payment's source system (default: source_system)",
    "original_source_ref": "the reversed payment's source_ref",
    "reason": "why the payment is reversed",
    "reversed_at": "ISO 8601 with offset",
}
_OPTIONAL = {"provisional_id", "kk", "recipient_name", "record_type", "original_source_system", "nik"}


def _record_schema(names: tuple[str, ...], title: str) -> dict:
    props = {}
    for name in names:
        spec: dict[str, Any] = ({"type": ["integer", "string"]} if name in ("amount_idr", "fiscal_year")
                                else {"type": "string"})
        if name in _FIELD_DOCS:
            spec["description"] = _FIELD_DOCS[name]
        props[name] = spec
    return {"title": title, "type": "object", "additionalProperties": False, "properties": props,
            "required": [n for n in names if n not in _OPTIONAL]}


DISBURSEMENT_SCHEMA = _record_schema(INPUT_FIELDS + ("record_type",), "Disbursement")
REVERSAL_SCHEMA = _record_schema(REVERSAL_FIELDS, "Reversal")
ALLOCATION_SCHEMA = _record_schema(ALLOCATION_FIELDS, "Allocation")
RELEASE_SCHEMA = _record_schema(RELEASE_FIELDS, "Release")
BATCH_SCHEMA = {
    "title": "Batch", "type": "object", "additionalProperties": False, "required": ["count", "total_idr", "records"],
    "properties": {
        "count": {"type": "integer", "minimum": 0, "description": "how many records follow"},
        "total_idr": {"type": "integer", "minimum": 0, "description": "the sum of amount_idr over the records"
                      " (reversals count with their positive amount)"},
        "records": {"type": "array", "maxItems": BATCH_MAX_RECORDS,
                    "items": {"oneOf": [DISBURSEMENT_SCHEMA, REVERSAL_SCHEMA, ALLOCATION_SCHEMA, RELEASE_SCHEMA]}},
    },
}


def _body(schema: dict) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


class ErrorOut(BaseModel):
    code: str
    field: str | None = None
    message: str


class RecordOut(BaseModel):
    outcome: str
    event_id: str
    source_system: str
    source_ref: str
    redelivered: bool


class BatchOut(BaseModel):
    count: int
    total_idr: int
    accepted: int
    redelivered: int
    records: list[RecordOut]


def _errors(*statuses: int) -> dict:
    words = {400: "body is not JSON", 401: "unauthenticated", 403: "agency_out_of_scope", 404: "not_found",
             409: "the key exists with other content: exists_with_different_<field> (batch: batch_has_conflicts)",
             413: "body_too_large or batch_too_large", 422: "a named intake code, or batch_declaration_mismatch",
             429: "rate_limited (see Retry-After)", 503: "storage_unavailable: nothing recorded, retry"}
    return {s: {"model": ErrorOut, "description": words[s]} for s in statuses}


# --- the application ------------------------------------------------------------------------------

@dataclass(frozen=True)
class GatewayContext:
    database_url: str
    token_key: bytes
    reference: Reference
    ledger_topic: str
    alerts_topic: str
    now_us: Callable[[], int] = lambda: time.time_ns() // 1000


def create_app(settings: GatewaySettings, ctx: GatewayContext) -> FastAPI:
    app = FastAPI(
        title="aidledger gateway",
        version="1",
        description="Submit disbursements, reversals and declared batches of social-assistance payments; read"
                    " back your own. 202 means durably recorded. Every refusal carries a named `code`.",
    )
    pool = Connections(ctx.database_url, settings.connections)
    auth = Authenticator()
    buckets = TokenBuckets(settings.rate_per_s, settings.burst)
    in_force: dict[int, Rulebook] = {}

    def rulebook(conn: psycopg.Connection) -> Rulebook:
        """The rulebook in force (for its modified-resubmission switch), parsed once per activation."""
        row = conn.execute("SELECT max(seq) FROM ledger.rulebooks").fetchone()
        seq = row[0] or 0
        if seq not in in_force:
            in_force.clear()
            in_force[seq] = active_rulebook(conn, ctx.reference)
        return in_force[seq]
    api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="an agency's API key")
    bearer = HTTPBearer(auto_error=False, description="the same API key as a bearer token")

    @app.exception_handler(GatewayError)
    async def _refused(request: Request, exc: GatewayError):
        return _json(exc.status, exc.body(), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        # never FastAPI's default, which echoes the input back
        return _json(422, {"code": "request_invalid", "field": None, "message": "a path or query parameter is invalid"})

    def _limit(client: str) -> None:
        wait = buckets.take(client)
        if wait > 0:
            raise GatewayError(429, "rate_limited", "too many requests; retry after the time in Retry-After",
                               headers={"Retry-After": str(max(1, math.ceil(wait)))})

    async def caller(request: Request, key: str | None = Depends(api_key),
                     token: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Agency:
        presented = key or (token.credentials if token is not None else None)

        def check():
            with pool.connection() as conn:
                return auth.authenticate(conn, presented)

        found = await run_in_threadpool(check) if presented else None
        if found is None:
            # failed attempts spend the address's tokens, so keys cannot be guessed at speed
            _limit("addr:" + (request.client.host if request.client else "?"))
            raise GatewayError(401, "unauthenticated", "a valid API key is required (X-API-Key or Authorization: Bearer)",
                               headers={"WWW-Authenticate": "Bearer"})
        agency, key_id = found
        _limit("agency:" + agency.code)
        request.state.agency = agency.code
        return agency

    async def read_json(request: Request) -> Any:
        body = await request.body()
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            RECORDS.labels("body_not_json").inc()
            raise GatewayError(400, "body_not_json", "the body must be UTF-8 JSON") from None

    def validate(raw: Any, agency: Agency, now_us: int,
                 expect: str | None) -> Accepted | AcceptedReversal | AcceptedBudget | Rejection:
        if expect is not None and isinstance(raw, dict):
            record_type = str(raw.get("record_type") or expect).strip()
            if record_type != expect:
                return Rejection("record_type_unknown", "record_type", f"this endpoint takes record_type {expect} only")
            if expect != "disbursement":
                raw = {**raw, "record_type": expect}
        outcome = validate_any(raw, reference=ctx.reference, token_key=ctx.token_key, now_us=now_us)
        if isinstance(outcome, Rejection):
            return outcome
        event = _event_of(outcome)
        problem = scope_problem(agency, event)
        if problem is not None:
            return Rejection(AGENCY_OUT_OF_SCOPE, *problem)
        return outcome

    def record_out(s: Submitted) -> dict:
        return {"outcome": outcomes.ACCEPTED, "event_id": s.event_id, "source_system": s.source_system,
                "source_ref": s.source_ref, "redelivered": s.redelivered}

    def store(items: list[Accepted | AcceptedReversal | AcceptedBudget], now_us: int) -> list[Submitted]:
        with pool.connection() as conn:
            return submit(conn, items, ledger_topic=ctx.ledger_topic, alerts_topic=ctx.alerts_topic,
                          reference=ctx.reference, rulebook=rulebook(conn), now_us=now_us)

    def count(items: list, results: list[Submitted]) -> None:
        for item, s in zip(items, results):
            RECORDS.labels("redelivered" if s.redelivered else s.outcome).inc()
            event = _event_of(item)
            if s.outcome == outcomes.ACCEPTED and isinstance(event, Disbursement):
                # both labels are checked against the reference data by validation: bounded
                DISBURSEMENTS_IN.labels(event.source_type, event.programme_code).inc()

    async def one(request: Request, agency: Agency, expect: str) -> Response:
        raw = await read_json(request)
        now_us = ctx.now_us()
        outcome = validate(raw, agency, now_us, expect)
        if isinstance(outcome, Rejection):
            RECORDS.labels(outcome.code).inc()
            raise GatewayError(status_of(outcome.code), outcome.code, outcome.message, outcome.field)
        [result] = await run_in_threadpool(store, [outcome], now_us)
        count([outcome], [result])
        if result.conflict:
            raise GatewayError(409, result.outcome, f"{result.source_system} reference {result.source_ref} was"
                               " recorded before with other content; the ledger keeps the original",
                               result.outcome.removeprefix("exists_with_different_"))
        return _json(202, record_out(result))

    @app.post("/v1/disbursements", status_code=202, response_model=RecordOut, openapi_extra=_body(DISBURSEMENT_SCHEMA),
              responses=_errors(400, 401, 403, 409, 413, 422, 429, 503),
              summary="Record one disbursement",
              description="202 once the record is durably committed; sending the same record again answers the"
                          " same event_id with `redelivered: true`.")
    async def post_disbursement(request: Request, agency: Agency = Depends(caller)):
        return await one(request, agency, "disbursement")

    @app.post("/v1/reversals", status_code=202, response_model=RecordOut, openapi_extra=_body(REVERSAL_SCHEMA),
              responses=_errors(400, 401, 403, 409, 413, 422, 429, 503), summary="Record one reversal",
              description="Takes back (part of) one of the agency's own payments, named by its source reference.")
    async def post_reversal(request: Request, agency: Agency = Depends(caller)):
        return await one(request, agency, "reversal")

    @app.post("/v1/allocations", status_code=202, response_model=RecordOut, openapi_extra=_body(ALLOCATION_SCHEMA),
              responses=_errors(400, 401, 403, 409, 413, 422, 429, 503), summary="Record one budget allocation",
              description="A budget line's money given to the agency for one of its programmes and a fiscal year.")
    async def post_allocation(request: Request, agency: Agency = Depends(caller)):
        return await one(request, agency, "allocation")

    @app.post("/v1/releases", status_code=202, response_model=RecordOut, openapi_extra=_body(RELEASE_SCHEMA),
              responses=_errors(400, 401, 403, 409, 413, 422, 429, 503), summary="Record one treasury release",
              description="Cash a treasury sent to the agency against a budget line.")
    async def post_release(request: Request, agency: Agency = Depends(caller)):
        return await one(request, agency, "release")

    @app.post("/v1/batches", status_code=202, response_model=BatchOut, openapi_extra=_body(BATCH_SCHEMA),
              responses=_errors(400, 401, 403, 409, 413, 422, 429, 503),
              summary=f"Record up to {BATCH_MAX_RECORDS:,} records at once, all or none",
              description="The declared count and total_idr must match the records; any rejected record,"
                          " out-of-scope record or conflicting key rejects the whole batch and nothing is recorded.")
    async def post_batch(request: Request, agency: Agency = Depends(caller)):
        batch = await read_json(request)
        if not isinstance(batch, dict):
            raise GatewayError(422, "batch_must_be_an_object", "a batch is {\"count\": n, \"total_idr\": t, \"records\": [...]}")
        for name in batch:
            if name not in ("count", "total_idr", "records"):
                raise GatewayError(422, "field_unknown", f"unknown batch field {str(name)[:40]!r}", str(name)[:40])
        declared_count, declared_total, records = batch.get("count"), batch.get("total_idr"), batch.get("records")
        for name, value in (("count", declared_count), ("total_idr", declared_total)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise GatewayError(422, "batch_declaration_invalid", f"{name} must be a whole number >= 0", name)
        if not isinstance(records, list):
            raise GatewayError(422, "batch_declaration_invalid", "records must be a list", "records")
        if len(records) > BATCH_MAX_RECORDS:
            raise GatewayError(413, "batch_too_large", f"at most {BATCH_MAX_RECORDS:,} records in one batch", "records")
        if declared_count != len(records):
            raise GatewayError(422, "batch_declaration_mismatch",
                               f"count declares {declared_count} records, the batch holds {len(records)}", "count")
        now_us = ctx.now_us()
        checked = [validate(raw, agency, now_us, None) for raw in records]
        rejected = [{"index": i, "code": c.code, "field": c.field, "message": c.message}
                    for i, c in enumerate(checked) if isinstance(c, Rejection)]
        if rejected:
            code = AGENCY_OUT_OF_SCOPE if all(r["code"] == AGENCY_OUT_OF_SCOPE for r in rejected) else "batch_has_rejected_records"
            for r in rejected:
                RECORDS.labels(r["code"]).inc()
            raise GatewayError(status_of(code), code, f"{len(rejected)} of {len(records)} records refused;"
                               " nothing in this batch was recorded", records=rejected)
        total = sum(_amount(c) for c in checked)
        if total != declared_total:
            raise GatewayError(422, "batch_declaration_mismatch", f"total_idr declares {declared_total}, the records"
                               f" add up to {total}; nothing in this batch was recorded", "total_idr")
        results = await run_in_threadpool(store, checked, now_us)
        count(checked, results)
        conflicts = [{"index": i, "code": s.outcome, "field": s.outcome.removeprefix("exists_with_different_"),
                      "message": f"{s.source_system} reference {s.source_ref} was recorded before with other content"}
                     for i, s in enumerate(results) if s.conflict]
        if conflicts:
            raise GatewayError(409, "batch_has_conflicts", f"{len(conflicts)} records conflict with what was recorded"
                               " before; nothing in this batch was recorded", records=conflicts)
        return _json(202, {"count": declared_count, "total_idr": declared_total, "accepted": len(results),
                           "redelivered": sum(1 for s in results if s.redelivered),
                           "records": [record_out(s) for s in results]})

    @app.get("/v1/disbursements/{source_system}/{source_ref:path}", responses=_errors(401, 404, 429, 503),
             summary="What was recorded under one of the agency's references",
             description="Tokens only, never a NIK. `projected` tells whether the audit archive has it yet, and"
                         " `outcome` what the stream decided. Disbursements and reversals alike.")
    async def get_record(source_system: str, source_ref: str, agency: Agency = Depends(caller)):
        if not may_read(agency, source_system, None):
            raise GatewayError(404, "not_found", "no record under that reference for this agency")

        def lookup():
            with pool.connection() as conn:
                return recorded(conn, source_system, source_ref)

        found = await run_in_threadpool(lookup)
        if found is None or not may_read(agency, source_system, getattr(found[0], "agency_code", None)):
            raise GatewayError(404, "not_found", "no record under that reference for this agency")
        event, recorded_at, accepted, outcome = found
        return _json(200, _describe(event, recorded_at, accepted, outcome))

    @app.get("/healthz", summary="200 when the gateway can reach its database")
    async def healthz():
        def ping():
            with pool.connection() as conn:
                conn.execute("SELECT 1")

        await run_in_threadpool(ping)
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    async def metrics():
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    app.router.on_shutdown.append(pool.close)
    return MeasuredApp(app, settings.max_body_bytes)


def _event_of(accepted: Accepted | AcceptedReversal | AcceptedBudget):
    if isinstance(accepted, Accepted):
        return accepted.disbursement
    return accepted.reversal if isinstance(accepted, AcceptedReversal) else accepted.record


def _amount(accepted: Accepted | AcceptedReversal | AcceptedBudget) -> int:
    return _event_of(accepted).amount_idr


def _describe(event, recorded_at, accepted, outcome) -> dict:
    common = {"event_id": event.event_id, "source_system": event.source_system, "source_ref": event.source_ref,
              "agency_code": event.agency_code, "person_token": getattr(event, "person_token", ""),
              "amount_idr": event.amount_idr,
              "recorded_at": recorded_at.isoformat(), "projected": accepted is not None, "accepted": accepted,
              "outcome": outcome}
    if isinstance(event, Disbursement):
        return {"record_type": "disbursement", **common, "programme_code": event.programme_code,
                "period": event.period, "source_type": event.source_type, "kind": event.kind,
                "channel": event.channel, "region_code": event.region_code, "funding_account": event.funding_account}
    if isinstance(event, Reversal):
        return {"record_type": "reversal", **common, "original_source_system": event.original_source_system,
                "original_source_ref": event.original_source_ref, "reason": event.reason}
    common.pop("person_token")  # a budget record concerns no person
    budget = {**common, "source_type": event.source_type, "funding_account": event.funding_account}
    if isinstance(event, BudgetAllocation):
        return {"record_type": "allocation", **budget, "programme_code": event.programme_code,
                "fiscal_year": event.fiscal_year}
    return {"record_type": "release", **budget}


class MeasuredApp:
    """ASGI wrapper: refuses bodies over the limit (by Content-Length, and by the bytes that
    actually arrive) with 413 before the app reads them, and counts every answer by route
    template and status. Route templates, never paths: a path holds a sender's reference."""

    def __init__(self, app: FastAPI, max_body_bytes: int):
        self.app, self.max_body_bytes = app, max_body_bytes

    def __getattr__(self, name):
        return getattr(self.app, name)

    def _route(self, scope) -> str:
        for route in self.app.router.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return getattr(route, "path", "other")
        return "unmatched"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        route = self._route(scope)
        status = [500]

        async def measured_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            body = await self._read_body(scope, receive)
            if body is None:
                await self._too_large(measured_send)
                return
            replayed = [False]

            async def replay():
                if not replayed[0]:
                    replayed[0] = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, measured_send)
        finally:
            seconds = time.perf_counter() - started
            REQUESTS.labels(route, str(status[0])).inc()
            LATENCY.labels(route).observe(seconds)
            state = scope.get("state") or {}
            log.info("%s %s %d%s %.1fms", scope["method"], route, status[0],
                     f" agency={state['agency']}" if "agency" in state else "", seconds * 1000)

    async def _read_body(self, scope, receive) -> bytes | None:
        """The whole body, or None when it is larger than allowed."""
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    if int(value) > self.max_body_bytes:
                        return None
                except ValueError:
                    return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _too_large(self, send) -> None:
        RECORDS.labels("body_too_large").inc()
        body = orjson.dumps({"code": "body_too_large", "field": None,
                             "message": f"the body is larger than {self.max_body_bytes:,} bytes"})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def serve(settings: GatewaySettings, ctx: GatewayContext) -> None:
    """Run the gateway until SIGTERM/SIGINT. Uvicorn's access log is off: it would print paths,
    which hold senders' references; the gateway logs route templates instead."""
    import uvicorn

    uvicorn.run(create_app(settings, ctx), host=settings.host, port=settings.port, access_log=False,
                log_level="warning", timeout_graceful_shutdown=10)
