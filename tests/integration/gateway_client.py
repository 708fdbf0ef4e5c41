"""A plain HTTP client for the gateway tests (urllib, nothing of the gateway's own), and builders
of request bodies with readable defaults."""

from __future__ import annotations

import http.client
import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

DEFAULT_NIK = "1871014504850001"


def nik(serial: int, regency: str = "71") -> str:
    """A structurally valid Lampung NIK: a woman born 5 April 1985, serial `serial`."""
    assert 1 <= serial <= 9999
    return f"18{regency}01450485{serial:04d}"


def record(**overrides: Any) -> dict:
    body = {
        "source_system": "SIKS-LPG",
        "source_ref": "PKH-2026-04-000001",
        "source_type": "APBN",
        "agency_code": "DINSOS-LPG",
        "programme_code": "PKH",
        "nik": DEFAULT_NIK,
        "kk": "1871010101100001",
        "recipient_name": "Siti Aminah",
        "amount_idr": 750_000,
        "kind": "CASH",
        "period": "2026-04",
        "disbursed_at": "2026-04-03T10:00:00+07:00",
        "channel": "BANK_TRANSFER",
        "region_code": "1871011001",
        "funding_account": "APBN-2026-KEMENSOS-PKH",
    }
    if "period" in overrides and "disbursed_at" not in overrides:  # paid in its own month, as most are
        body["disbursed_at"] = f"{overrides['period']}-03T10:00:00+07:00"
    body.update(overrides)
    return body


def reversal(**overrides: Any) -> dict:
    body = {
        "source_system": "SIKS-LPG",
        "source_ref": "REV-2026-04-000001",
        "original_source_ref": "PKH-2026-04-000001",
        "agency_code": "DINSOS-LPG",
        "nik": DEFAULT_NIK,
        "amount_idr": 250_000,
        "reason": "paid twice by mistake",
        "reversed_at": "2026-04-05T09:00:00+07:00",
    }
    body.update(overrides)
    return body


def batch(records: list[dict], **overrides: Any) -> dict:
    body = {"count": len(records), "total_idr": sum(int(r["amount_idr"]) for r in records), "records": records}
    body.update(overrides)
    return body


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str]  # lower-case names

    @property
    def code(self) -> str | None:
        return self.body.get("code") if isinstance(self.body, dict) else None


def call(base: str, method: str, path: str, body: Any = None, *, key: str | None = None, raw: bytes | None = None,
         headers: dict[str, str] | None = None, timeout: float = 30.0) -> Answer:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if key is not None:
        request.add_header("X-API-Key", key)
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, payload, hdrs = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as err:
        status, payload, hdrs = err.code, err.read(), dict(err.headers)
    try:
        parsed = json.loads(payload) if payload else None
    except ValueError:
        parsed = payload.decode("utf-8", "replace")
    return Answer(status, parsed, {k.lower(): v for k, v in hdrs.items()})


def issued_key(stdout: str) -> str:
    """The API key that `aidledger agencies add|key` printed."""
    found = re.findall(r"^([0-9a-f]{16}\.[A-Za-z0-9_-]+)$", stdout, re.MULTILINE)
    assert len(found) == 1, stdout
    return found[0]


def post_large(base: str, path: str, body: bytes, api_key: str) -> Answer:
    """A body over the limit: the gateway may answer 413 and close before all of it is sent."""
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.putrequest("POST", path)
        conn.putheader("X-API-Key", api_key)
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        try:
            conn.send(body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = conn.getresponse()
        return Answer(response.status, json.loads(response.read()), {})
    finally:
        conn.close()
