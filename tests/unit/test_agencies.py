"""aidcore.agencies: key issue and check, scope of an agency; the gateway's token buckets."""

from __future__ import annotations

from builders import NOW_US, TOKEN_KEY, accepted, raw_record

from aidcore import intake
from aidcore.agencies import Agency, issue_key, may_read, parse_codes, scope_problem, secret_matches, split_key
from aidcore.reference import default_reference
from connectors.gateway import TokenBuckets

AGENCY = Agency("KEMENSOS", frozenset({"PKH", "BPNT"}), frozenset({"SIKS-NG"}))


def test_an_issued_key_splits_into_its_id_and_a_secret_that_matches_only_its_digest():
    key = issue_key()
    key_id, secret = split_key(key.clear_key)
    assert key_id == key.key_id and len(key_id) == 16
    assert secret_matches(secret, key.salt, key.digest)
    assert not secret_matches(secret + "x", key.salt, key.digest)
    assert secret.encode() not in key.digest and secret.encode() not in key.salt
    other = issue_key()
    assert other.salt != key.salt and other.key_id != key.key_id


def test_malformed_keys_are_not_keys():
    for presented in ("", "nodot", "short.secret", "0123456789abcdeg.secret", "0123456789abcdef.", "é" * 20,
                      "0123456789abcdef." + "x" * 200):
        assert split_key(presented) is None


def test_parse_codes_keeps_order_and_drops_blanks_and_repeats():
    assert parse_codes(" PKH, BPNT,,PKH ") == ["PKH", "BPNT"]


def test_an_agency_submits_its_own_code_programmes_and_source_systems_only():
    assert scope_problem(AGENCY, accepted().disbursement) is None
    assert scope_problem(AGENCY, accepted(agency_code="DINSOS").disbursement)[0] == "agency_code"
    assert scope_problem(AGENCY, accepted(programme_code="PIP").disbursement)[0] == "programme_code"
    assert scope_problem(AGENCY, accepted(source_system="OTHER").disbursement)[0] == "source_system"


def test_an_agency_reverses_only_payments_under_its_source_systems():
    def reversal(**overrides):
        raw = {"record_type": "reversal", "source_system": "SIKS-NG", "source_ref": "R-1", "original_source_ref": "P-1",
               "agency_code": "KEMENSOS", "nik": raw_record()["nik"], "amount_idr": 1000, "reason": "twice",
               "reversed_at": "2026-04-05T09:00:00+07:00", **overrides}
        return intake.validate_any(raw, reference=default_reference(), token_key=TOKEN_KEY, now_us=NOW_US).reversal

    assert scope_problem(AGENCY, reversal()) is None
    assert scope_problem(AGENCY, reversal(original_source_system="OTHER"))[0] == "original_source_system"


def test_an_agency_reports_the_budget_records_of_its_own_money_only():
    from builders import allocation, release

    own = dict(source_system="SIKS-NG", agency_code=AGENCY.code)
    assert scope_problem(AGENCY, allocation(**own)) is None
    assert scope_problem(AGENCY, release(**own)) is None
    assert scope_problem(AGENCY, allocation(**own, programme_code="PIP"))[0] == "programme_code"
    assert scope_problem(AGENCY, release(source_system="SIKS-NG", agency_code="DINSOS"))[0] == "agency_code"
    assert scope_problem(AGENCY, release(agency_code=AGENCY.code, source_system="SPAN"))[0] == "source_system"


def test_an_agency_reads_only_under_its_source_systems_and_code():
    assert may_read(AGENCY, "SIKS-NG", "KEMENSOS")
    assert not may_read(AGENCY, "SIKS-NG", "DINSOS")
    assert not may_read(AGENCY, "OTHER", None)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_bucket_allows_the_burst_then_the_rate():
    clock = Clock()
    buckets = TokenBuckets(rate_per_s=2.0, burst=3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == 0.5
    assert buckets.take("b") == 0.0  # clients are separate
    clock.now += 0.5
    assert buckets.take("a") == 0.0
    clock.now += 100
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]  # never more than the burst


def test_buckets_forget_the_least_recent_clients_beyond_the_bound():
    buckets = TokenBuckets(rate_per_s=1.0, burst=1, clock=Clock(), max_clients=2)
    buckets.take("a")
    buckets.take("b")
    buckets.take("c")
    assert buckets.take("a") == 0.0  # forgotten, so full again
    assert buckets.take("c") > 0
