"""The synthetic dataset against the real core: what the ledger raises on it is the answer key.

Each dataset here goes through intake (`validate_any`), the person stage (`decide_batch`) and the
household stage (`decide_household_batch`) with the shipped rulebook, in memory. The open alerts
must be exactly the planted rule cases (rule, subject, period, programme, rupiah at stake): a case
the key forgets, or clean data that happens to break a rule, shows up as a difference. Datasets
are small (a few thousand records) so this stays a unit test.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from functools import lru_cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aidcore import nik as nikmod
from aidcore import outcomes
from aidcore.household import decide_household_batch
from aidcore.intake import Accepted, AcceptedReversal, Rejection, to_us, validate_any
from aidcore.ledger import RULE_MODIFIED_RESUBMISSION, decide_batch
from aidcore.reference import default_reference
from aidcore.rulebook import RULE_IDS, default_rulebook
from connectors.synthetic import RULE_KINDS, generate

KEY = b"k" * 32
NOW_US = to_us(datetime(2031, 1, 1, tzinfo=timezone.utc))  # after every window these tests use


@lru_cache(maxsize=1)
def shipped():
    reference = default_reference()
    return reference, default_rulebook(reference)


def decide_all(records):
    """Intake, person stage and household stage over `records` as one batch each. Returns the
    latest revision of every alert, the person stage's outcomes and the intake's rejections."""
    reference, book = shipped()
    events, rejected = [], Counter()
    for r in records:
        out = validate_any(r, reference=reference, token_key=KEY, now_us=NOW_US)
        if isinstance(out, Rejection):
            rejected[out.code] += 1
        else:
            events.append(out.disbursement if isinstance(out, Accepted) else out.reversal)
            assert isinstance(out, (Accepted, AcceptedReversal))
    person = decide_batch({}, events, rulebook=book, reference=reference, now_us=NOW_US)
    household = decide_household_batch({}, person.postings, rulebook=book, reference=reference, now_us=NOW_US)
    latest = {}
    for a in [*person.alerts.values(), *household.alerts.values()]:
        if a.alert_id not in latest or a.revision >= latest[a.alert_id].revision:
            latest[a.alert_id] = a
    return list(latest.values()), Counter(person.outcomes), rejected


def person_token(identity: str) -> str:
    if nikmod.is_ascii_digits(identity, 16):
        return nikmod.person_token(KEY, identity)
    return nikmod.provisional_token(KEY, identity)


def case_key(c) -> tuple:
    if c.kind == "modified_resubmission":
        return (RULE_MODIFIED_RESUBMISSION, person_token(c.nik), c.source_refs[0])
    subject = nikmod.kk_token(KEY, c.kk) if c.subject_kind == "HOUSEHOLD" and c.kk else person_token(c.nik)
    return (c.rule_id, subject, c.period, c.programme_code or "")


def alert_key(a) -> tuple:
    if a.rule_id == RULE_MODIFIED_RESUBMISSION:
        return (a.rule_id, a.subject_token, (a.lines[0].source_system, a.lines[0].source_ref))
    return (a.rule_id, a.subject_token, a.period, a.programme_code)


def planted(ds, status: str) -> dict[tuple, int | None]:
    """Case key -> expected rupiah at stake, of the rule cases ending with `status`."""
    return {case_key(c): c.amount_idr_at_stake for c in ds.answer_key
            if c.status == status and (c.kind in RULE_KINDS or c.kind == "modified_resubmission")}


def found(alerts, status: str) -> dict[tuple, int]:
    keys = Counter(alert_key(a) for a in alerts if a.status == status)
    assert max(keys.values(), default=1) == 1, [k for k, n in keys.items() if n > 1]  # one alert per case
    return {alert_key(a): a.amount_idr_at_stake for a in alerts if a.status == status}


def assert_exact(ds, alerts) -> None:
    """Open alerts are the open planted cases and void ones the reversed duplicates, with the
    rupiah at stake wherever the key knows them."""
    expected, got = planted(ds, "open"), found(alerts, "open")
    assert set(got) == set(expected), (Counter(k[0] for k in set(got) - set(expected)),
                                       Counter(k[0] for k in set(expected) - set(got)))
    assert {k: v for k, v in got.items() if expected[k] is not None} == {
        k: v for k, v in expected.items() if v is not None}
    assert set(found(alerts, "void_reversed")) == set(planted(ds, "void_reversed"))


@pytest.fixture(scope="module")
def ds():
    return generate(4_000, seed=20261122, reversal_rate=0.01, case_rate=0.005)


@pytest.fixture(scope="module")
def decided(ds):
    return decide_all(ds.records)


def test_every_rule_is_planted(ds):
    kinds = Counter(c.rule_id for c in ds.answer_key if c.kind in RULE_KINDS)
    assert set(kinds) == set(RULE_IDS) - {RULE_MODIFIED_RESUBMISSION}
    assert all(n == 20 for rule, n in kinds.items() if rule != "duplicate_person_programme_period")


def test_the_core_raises_exactly_the_planted_cases(ds, decided):
    alerts, _, _ = decided
    assert_exact(ds, alerts)


def test_reversals_end_as_planted(ds, decided):
    """Voiding and partial reversals are accepted, reversals of unknown originals wait, nothing
    is refused; the intake rejects exactly the planted invalid rows."""
    _, decisions, rejected = decided
    kinds = Counter(c.kind for c in ds.answer_key)
    assert kinds["reversal_void"] == 20 and kinds["reversal_partial"] == 16 and kinds["reversal_unknown"] == 4
    assert decisions[outcomes.REVERSAL_PENDING] == kinds["reversal_unknown"]
    assert set(decisions) == {outcomes.ACCEPTED, outcomes.EXISTS, outcomes.REVERSAL_PENDING,
                              "exists_with_different_amount_idr"}
    assert decisions[outcomes.EXISTS] == kinds["redelivery"]
    assert rejected == Counter(c.rule_id for c in ds.answer_key if c.kind == "invalid")


def test_the_demo_check_scores_the_core_at_one_hundred_percent(ds, decided):
    from aidledger.demo import answer_key_check, reversal_check

    alerts = [{"rule_id": a.rule_id, "subject_token": a.subject_token, "period": a.period,
               "programme_code": a.programme_code, "status": a.status, "amount_idr_at_stake": a.amount_idr_at_stake,
               "events": [{"source_system": line.source_system, "source_ref": line.source_ref} for line in a.lines]}
              for a in decided[0]]
    check = answer_key_check(ds, alerts, KEY)
    assert set(check) == set(RULE_IDS)
    for rule, c in check.items():
        assert c["planted"] > 0 and c["precision"] == c["recall"] == 1.0, (rule, c)
        assert c["at_stake_right"] == c["at_stake_known"] == c["planted"], (rule, c)
    r = reversal_check(ds, alerts, KEY)
    assert r["voided"] == r["to_void"] == r["void"] == 20 and r["voided_unplanted"] == 0


@pytest.mark.parametrize("first_period,months,seed", [("2026-01", 6, 1), ("2026-10", 6, 2), ("2027-05", 14, 3),
                                                      ("2026-03", 1, 4)])
def test_clean_data_breaks_no_rule(first_period, months, seed):
    d = generate(3_000, seed=seed, first_period=first_period, months=months, duplicate_rate=0, redelivery_rate=0,
                 modified_rate=0, invalid_rate=0, case_rate=0)
    alerts, decisions, rejected = decide_all(d.records)
    assert d.answer_key == [] and alerts == [] and not rejected
    assert decisions == {outcomes.ACCEPTED: 3_000}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(min_value=300, max_value=2_500),
    seed=st.integers(min_value=0, max_value=2**32),
    months=st.integers(min_value=1, max_value=14),
    month=st.integers(min_value=1, max_value=12),
)
def test_the_key_is_exact_for_any_seed_and_window(n, seed, months, month):
    d = generate(n, seed=seed, first_period=f"2027-{month:02d}", months=months, duplicate_rate=0.02,
                 redelivery_rate=0.01, modified_rate=0.01, invalid_rate=0.01, case_rate=0.01, reversal_rate=0.02)
    assert len(d.records) == n
    alerts, decisions, _ = decide_all(d.records)
    assert_exact(d, alerts)
    assert decisions[outcomes.REVERSAL_PENDING] == sum(1 for c in d.answer_key if c.kind == "reversal_unknown")
