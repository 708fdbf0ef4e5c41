"""The HTTP gateway on the real stack, over real HTTP: agencies and keys from the CLI, 202 only
for durable records, idempotent retries, 409 for changed content, scope, batches all or none,
body, batch and rate limits, the OpenAPI document, metrics, and no NIK in logs or metrics."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from urllib.parse import urlsplit

import psycopg
import pytest
from conftest import REPO, Cli, stack_environ, wait_until
from gateway_client import DEFAULT_NIK, batch, call, issued_key, nik, post_large, record, reversal

from infra.embedded import free_port
from infra.stack import Stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("gateway-stack")
    # a generous rate here: the rate limit has its own gateway process below
    env = stack_environ(home) | {"AIDLEDGER_GATEWAY_RATE_PER_S": "500", "AIDLEDGER_GATEWAY_BURST": "500",
                                 "AIDLEDGER_GATEWAY_MAX_BODY_BYTES": "1048576"}
    s = Stack(home, env)
    s.start()
    try:
        wait_until(lambda: _answers(s.gateway_url()), 60, "the gateway to answer")
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def base(stack) -> str:
    return stack.gateway_url()


@pytest.fixture(scope="module")
def cli(stack):
    return Cli(stack)


@pytest.fixture(scope="module")
def key(cli) -> str:
    out = cli.run("agencies", "add", "DINSOS-LPG", "--programmes", "PKH,BPNT", "--source-systems", "SIKS-LPG").stdout
    return issued_key(out)


@pytest.fixture(scope="module")
def other_key(cli) -> str:
    return issued_key(cli.run("agencies", "add", "DINSOS-METRO", "--programmes", "BPNT", "--source-systems",
                              "SIKS-METRO").stdout)


def _outbox(stack, event_id: str) -> int:
    with psycopg.connect(stack.database_url) as conn:
        return conn.execute("SELECT count(*) FROM ledger.outbox WHERE event_id = %s", (event_id,)).fetchone()[0]


def _keys_under(stack, prefix: str) -> int:
    with psycopg.connect(stack.database_url) as conn:
        return conn.execute("SELECT count(*) FROM ledger.intake_keys WHERE source_ref LIKE %s", (prefix + "%",)).fetchone()[0]


def test_the_openapi_document_and_docs_are_served(stack, base):
    recorded = json.loads((stack.home / "endpoints.json").read_text())
    assert recorded["gateway"] == base and recorded["metrics"]["gateway"] == base + "/metrics"
    doc = call(base, "GET", "/openapi.json")
    assert doc.status == 200
    paths = doc.body["paths"]
    for path in ("/v1/disbursements", "/v1/reversals", "/v1/batches", "/v1/disbursements/{source_system}/{source_ref}"):
        assert path in paths
    body = paths["/v1/batches"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["records"]["maxItems"] == 1000
    assert {"429", "413", "401", "403", "409"} <= set(paths["/v1/disbursements"]["post"]["responses"])
    assert call(base, "GET", "/docs").status == 200
    assert call(base, "GET", "/healthz").body == {"status": "ok"}


def test_agencies_are_listed_and_keys_stored_only_as_digests(cli, stack, key):
    listed = json.loads(cli.run("agencies", "list", "--json").stdout)["agencies"]
    mine = next(a for a in listed if a["agency_code"] == "DINSOS-LPG")
    assert mine["programmes"] == ["PKH", "BPNT"] and mine["source_systems"] == ["SIKS-LPG"]
    key_id, secret = key.split(".")
    assert [k["key_id"] for k in mine["keys"]] == [key_id]
    with psycopg.connect(stack.database_url) as conn:
        rows = conn.execute("SELECT key_id, salt, digest FROM ledger.agency_keys").fetchall()
    for _, salt, digest in rows:
        assert secret.encode() not in bytes(salt) + bytes(digest)
    assert secret not in cli.run("agencies", "list").stdout


def test_a_disbursement_is_answered_202_only_once_durable_and_a_retry_gets_the_original(base, stack, key):
    body = record(source_ref="PKH-2026-04-000101")
    first = call(base, "POST", "/v1/disbursements", body, key=key)
    assert first.status == 202, first.body
    assert first.body["outcome"] == "accepted" and first.body["redelivered"] is False
    event_id = first.body["event_id"]
    assert _outbox(stack, event_id) == 1  # committed before the answer
    again = call(base, "POST", "/v1/disbursements", body, key=key)
    assert again.status == 202
    assert again.body == {**first.body, "redelivered": True}
    assert _outbox(stack, event_id) == 1
    # it reaches the projection, and the agency can read it back (tokens only)
    def projected():
        answer = call(base, "GET", "/v1/disbursements/SIKS-LPG/PKH-2026-04-000101", key=key)
        return answer.body if answer.status == 200 and answer.body["projected"] else None

    found = wait_until(projected, 120, "the record to be projected")
    assert found["event_id"] == event_id and found["accepted"] is True and found["outcome"] == "accepted"
    assert found["amount_idr"] == 750_000 and "nik" not in found and DEFAULT_NIK not in json.dumps(found)


def test_changed_content_under_a_key_is_409_with_the_field_named(base, stack, key):
    body = record(source_ref="PKH-2026-04-000102")
    assert call(base, "POST", "/v1/disbursements", body, key=key).status == 202
    changed = call(base, "POST", "/v1/disbursements", {**body, "amount_idr": 900_000}, key=key)
    assert changed.status == 409
    assert changed.body["code"] == "exists_with_different_amount_idr" and changed.body["field"] == "amount_idr"
    assert _keys_under(stack, "PKH-2026-04-000102") == 1


@pytest.mark.parametrize(("overrides", "field"), [
    ({"agency_code": "DINSOS-METRO"}, "agency_code"),
    ({"programme_code": "PIP"}, "programme_code"),
    ({"source_system": "SIKS-METRO"}, "source_system"),
])
def test_another_agencys_code_programme_or_source_is_403(base, stack, key, overrides, field):
    ref = f"SCOPE-{field}"
    answer = call(base, "POST", "/v1/disbursements", record(source_ref=ref, **overrides), key=key)
    assert answer.status == 403 and answer.body["code"] == "agency_out_of_scope" and answer.body["field"] == field
    assert _keys_under(stack, ref) == 0


def test_an_agency_reads_only_its_own_records(base, key, other_key):
    assert call(base, "POST", "/v1/disbursements", record(source_ref="PKH-2026-04-000103"), key=key).status == 202
    assert call(base, "GET", "/v1/disbursements/SIKS-LPG/PKH-2026-04-000103", key=key).status == 200
    theirs = call(base, "GET", "/v1/disbursements/SIKS-LPG/PKH-2026-04-000103", key=other_key)
    assert theirs.status == 404 and theirs.body["code"] == "not_found"
    assert call(base, "GET", "/v1/disbursements/SIKS-LPG/NO-SUCH-REF", key=key).status == 404


@pytest.mark.parametrize("presented", [None, "", "not-a-key", "0123456789abcdef.wrongsecret"])
def test_a_missing_or_wrong_key_is_401(base, stack, presented):
    answer = call(base, "POST", "/v1/disbursements", record(source_ref="AUTH-1"), key=presented)
    assert answer.status == 401 and answer.body["code"] == "unauthenticated"
    assert answer.headers.get("www-authenticate") == "Bearer"
    assert _keys_under(stack, "AUTH-1") == 0


def test_a_right_secret_under_another_key_id_and_a_revoked_key_are_401(base, cli, key):
    key_id, secret = key.split(".")
    forged = ("f" * 16) + "." + secret
    assert call(base, "POST", "/v1/disbursements", record(source_ref="AUTH-2"), key=forged).status == 401
    spare = issued_key(cli.run("agencies", "key", "DINSOS-LPG").stdout)
    assert call(base, "GET", "/v1/disbursements/SIKS-LPG/NO-SUCH-REF", headers={"Authorization": f"Bearer {spare}"}).status == 404
    cli.run("agencies", "revoke", "DINSOS-LPG", "--key", spare.split(".")[0])
    assert call(base, "GET", "/v1/disbursements/SIKS-LPG/NO-SUCH-REF", key=spare).status == 401
    assert call(base, "GET", "/v1/disbursements/SIKS-LPG/NO-SUCH-REF", key=key).status == 404  # the other key still works


def test_a_record_the_core_rejects_is_422_with_its_code_and_no_nik_echoed(base, key):
    bad = "18710145048500O1"  # a letter O among the digits
    answer = call(base, "POST", "/v1/disbursements", record(source_ref="BAD-1", nik=bad), key=key)
    assert answer.status == 422 and answer.body["code"] == "nik_must_be_16_ascii_digits"
    assert bad not in json.dumps(answer.body)
    fraction = call(base, "POST", "/v1/disbursements", record(source_ref="BAD-2", amount_idr="750000.50"), key=key)
    assert fraction.status == 422 and fraction.body["code"] == "amount_idr_must_be_whole_rupiah"
    not_json = call(base, "POST", "/v1/disbursements", raw=b"{nope", key=key)
    assert not_json.status == 400 and not_json.body["code"] == "body_not_json"
    wrong_door = call(base, "POST", "/v1/disbursements", reversal(source_ref="BAD-3", record_type="reversal"), key=key)
    assert wrong_door.status == 422 and wrong_door.body["code"] == "record_type_unknown"


def test_a_reversal_is_recorded_and_its_retry_is_idempotent(base, key):
    original = record(source_ref="PKH-2026-04-000104")
    assert call(base, "POST", "/v1/disbursements", original, key=key).status == 202
    body = reversal(source_ref="REV-2026-04-000104", original_source_ref="PKH-2026-04-000104")
    first = call(base, "POST", "/v1/reversals", body, key=key)
    assert first.status == 202, first.body
    assert call(base, "POST", "/v1/reversals", body, key=key).body == {**first.body, "redelivered": True}
    foreign = call(base, "POST", "/v1/reversals", {**body, "source_ref": "REV-X", "original_source_system": "SIKS-METRO"},
                   key=key)
    assert foreign.status == 403 and foreign.body["field"] == "original_source_system"


def test_budget_records_of_the_agencys_own_money_are_recorded_and_read_back(base, key):
    allocation = {"source_system": "SIKS-LPG", "source_ref": "DPA-2026-PKH", "source_type": "APBD_PROV",
                  "funding_account": "APBD-2026-DINSOS-PKH", "agency_code": "DINSOS-LPG", "programme_code": "PKH",
                  "fiscal_year": 2026, "amount_idr": 9_000_000_000, "allocated_at": "2026-01-05T09:00:00+07:00"}
    first = call(base, "POST", "/v1/allocations", allocation, key=key)
    assert first.status == 202, first.body
    assert call(base, "POST", "/v1/allocations", allocation, key=key).body == {**first.body, "redelivered": True}
    changed = call(base, "POST", "/v1/allocations", {**allocation, "amount_idr": 9_500_000_000}, key=key)
    assert changed.status == 409 and changed.body["code"] == "exists_with_different_amount_idr"
    foreign = call(base, "POST", "/v1/allocations", {**allocation, "source_ref": "DPA-X", "programme_code": "PIP"},
                   key=key)
    assert foreign.status == 403 and foreign.body["field"] == "programme_code"
    release = {"record_type": "release", "source_system": "SIKS-LPG", "source_ref": "SP2D-2026-0001",
               "source_type": "APBD_PROV", "funding_account": "APBD-2026-DINSOS-PKH", "agency_code": "DINSOS-LPG",
               "amount_idr": 4_000_000_000, "released_at": "2026-02-02T10:00:00+07:00"}
    assert call(base, "POST", "/v1/batches", batch([release]), key=key).status == 202
    assert call(base, "POST", "/v1/releases", {**release, "source_ref": "SP2D-2026-0002"}, key=key).status == 202
    paid = record(source_ref="PKH-2026-04-000105", funding_account="APBD-2026-DINSOS-PKH")
    assert call(base, "POST", "/v1/disbursements", paid, key=key).status == 202
    taken_back = reversal(source_ref="REV-2026-04-000105", original_source_ref="PKH-2026-04-000105")
    assert call(base, "POST", "/v1/reversals", taken_back, key=key).status == 202

    def read(path):
        def projected():
            answer = call(base, "GET", path, key=key)
            return answer.body if answer.status == 200 and answer.body["projected"] else None
        return wait_until(projected, 120, f"{path} to be projected")

    got = read("/v1/disbursements/SIKS-LPG/DPA-2026-PKH")
    assert (got["record_type"], got["accepted"], got["outcome"], got["fiscal_year"]) == ("allocation", True,
                                                                                         "accepted", 2026)
    assert "person_token" not in got
    assert read("/v1/disbursements/SIKS-LPG/SP2D-2026-0001")["record_type"] == "release"
    got = read("/v1/disbursements/SIKS-LPG/REV-2026-04-000105")
    assert (got["record_type"], got["accepted"], got["outcome"]) == ("reversal", True, "accepted")


def _records(prefix: str, n: int) -> list[dict]:
    return [record(source_ref=f"{prefix}-{i:04d}", nik=nik(i + 1), amount_idr=100_000 + i) for i in range(n)]


def test_a_batch_is_recorded_whole_and_its_retry_returns_the_original(base, stack, key):
    records = _records("BATCH-OK", 50) + [reversal(source_ref="BATCH-OK-REV", original_source_ref="BATCH-OK-0000",
                                                   nik=nik(1), amount_idr=1000, record_type="reversal")]
    first = call(base, "POST", "/v1/batches", batch(records), key=key)
    assert first.status == 202, first.body
    assert (first.body["count"], first.body["accepted"], first.body["redelivered"]) == (51, 51, 0)
    assert [r["source_ref"] for r in first.body["records"]] == [r["source_ref"] for r in records]
    assert _keys_under(stack, "BATCH-OK") == 51
    again = call(base, "POST", "/v1/batches", batch(records), key=key)
    assert again.status == 202 and again.body["redelivered"] == 51
    assert [r["event_id"] for r in again.body["records"]] == [r["event_id"] for r in first.body["records"]]


@pytest.mark.parametrize("declared", [{"count": 9}, {"total_idr": 1}])
def test_a_batch_that_does_not_match_its_declaration_is_rejected_whole(base, stack, key, declared):
    prefix = f"BATCH-MISMATCH-{next(iter(declared))}"
    answer = call(base, "POST", "/v1/batches", batch(_records(prefix, 10), **declared), key=key)
    assert answer.status == 422 and answer.body["code"] == "batch_declaration_mismatch"
    assert _keys_under(stack, prefix) == 0


def test_a_batch_with_one_bad_record_writes_nothing(base, stack, key):
    records = _records("BATCH-BAD", 10)
    records[7]["period"] = "2026-13"
    answer = call(base, "POST", "/v1/batches", batch(records), key=key)
    assert answer.status == 422 and answer.body["code"] == "batch_has_rejected_records"
    assert answer.body["records"] == [{"index": 7, "code": "period_must_be_yyyy_mm", "field": "period",
                                       "message": "period must be YYYY-MM, e.g. 2026-11"}]
    assert _keys_under(stack, "BATCH-BAD") == 0


def test_a_batch_with_a_conflicting_record_writes_nothing(base, stack, key):
    records = _records("BATCH-CONFLICT", 5)
    assert call(base, "POST", "/v1/disbursements", records[2], key=key).status == 202
    changed = [dict(r) for r in records]
    changed[2]["channel"] = "POS"
    answer = call(base, "POST", "/v1/batches", batch(changed), key=key)
    assert answer.status == 409 and answer.body["code"] == "batch_has_conflicts"
    assert [(r["index"], r["code"]) for r in answer.body["records"]] == [(2, "exists_with_different_channel")]
    assert _keys_under(stack, "BATCH-CONFLICT") == 1


def test_more_than_1000_records_is_413_batch_too_large(base, key):
    answer = call(base, "POST", "/v1/batches", {"count": 1001, "total_idr": 0, "records": [{}] * 1001}, key=key)
    assert answer.status == 413 and answer.body["code"] == "batch_too_large"


def test_a_body_over_the_limit_is_413_whether_declared_or_streamed(base, key):
    big = b'{"pad": "' + b"x" * (1024 * 1024 + 10) + b'"}'
    url = urlsplit(base)
    # declared: the gateway may answer and close before the client has sent it all, so the
    # client must read the answer even when its send hits a closed socket
    answer = post_large(base, "/v1/batches", big, key)
    assert answer.status == 413 and answer.code == "body_too_large"
    # chunked: no Content-Length, the bytes themselves are counted
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.putrequest("POST", "/v1/batches")
        conn.putheader("X-API-Key", key)
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        chunk = b"x" * 65536
        try:
            for _ in range(17):
                conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            conn.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = conn.getresponse()
        assert response.status == 413 and json.loads(response.read())["code"] == "body_too_large"
    finally:
        conn.close()


def test_rate_beyond_the_burst_is_429_with_retry_after(stack, key, tmp_path):
    """Its own gateway process (same database) with a small bucket: 1 request/s, burst 3."""
    port = free_port()
    env = dict(stack.child_env(), AIDLEDGER_GATEWAY_PORT=str(port), AIDLEDGER_GATEWAY_RATE_PER_S="1",
               AIDLEDGER_GATEWAY_BURST="3")
    log_file = open(tmp_path / "gateway-429.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "aidledger.cli", "gateway"], env=env, cwd=REPO, stdout=log_file,
                            stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(base), 60, "the second gateway to answer")
        statuses = [call(base, "GET", "/v1/disbursements/SIKS-LPG/NO-SUCH-REF", key=key) for _ in range(6)]
        assert [a.status for a in statuses[:3]] == [404, 404, 404]
        limited = [a for a in statuses if a.status == 429]
        assert limited and all(a.code == "rate_limited" and int(a.headers["retry-after"]) >= 1 for a in limited)
        # guessing keys spends the address's bucket too
        guesses = [call(base, "GET", "/v1/disbursements/SIKS-LPG/X", key="0123456789abcdef.guess") for _ in range(6)]
        assert {a.status for a in guesses} == {401, 429}
    finally:
        proc.terminate()
        proc.wait(15)
        log_file.close()


def _answers(base: str) -> bool:
    try:
        return call(base, "GET", "/healthz", timeout=2).status == 200
    except OSError:
        return False


def test_metrics_count_requests_by_route_and_status_and_no_nik_is_in_metrics_or_logs(base, stack, key):
    call(base, "POST", "/v1/disbursements", record(source_ref="PKH-2026-04-000105"), key=key)
    text = call(base, "GET", "/metrics").body
    assert 'aidledger_gateway_requests_total{route="/v1/disbursements",status="202"}' in text
    assert 'aidledger_gateway_requests_total{route="/v1/disbursements/{source_system}/{source_ref:path}",status="404"}' in text
    assert "aidledger_gateway_request_seconds_bucket" in text
    assert "PKH-2026-04-000105" not in text  # route templates, never paths
    niks = [DEFAULT_NIK] + [nik(i + 1) for i in range(50)]
    logs = "".join(p.read_text(errors="replace") for p in (stack.home / "logs").glob("*.log"))
    assert "POST /v1/disbursements 202 agency=DINSOS-LPG" in logs
    for n in niks:
        assert n not in text and n not in logs

