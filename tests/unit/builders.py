"""Builders for unit tests: readable defaults, override only what a test is about.

`raw_record()` is one valid input record as an OPD system would send it (DOMAIN.md, "Input
record"); `disbursement()` runs it through the real intake (`aidcore.intake.validate_record`)
with a fixed key, clock and the shipped reference data, so every Disbursement a test uses is one
intake could really have produced. Nothing here reads the clock, the environment or the network.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any, Iterable, Mapping, Sequence

from aidcore import intake, ledger
from aidcore.intake import Accepted, Disbursement, Identity, Rejection
from aidcore.ledger import Alert, BatchResult, Payment, Rulebook
from aidcore.reference import Programme, Reference, default_reference

TOKEN_KEY = b"k" * 32
OTHER_TOKEN_KEY = b"q" * 32
WIB = timezone(timedelta(hours=7))

# The moment intake "runs" in these tests: 2026-04-10 12:00 WIB, a week after the default payment.
NOW = datetime(2026, 4, 10, 12, 0, tzinfo=WIB)
NOW_US = intake.to_us(NOW)

# A woman (day 05 + 40 = 45) born 5 April 1985, NIK issued in Kota Bandar Lampung, district 01.
NIK = "1871014504850001"
OTHER_NIK = "1807020101900002"  # a man from Kab. Lampung Timur
KK = "1871010101100001"
OTHER_KK = "1871010101100002"
REGION_CODE = "1871011001"  # a village in Kota Bandar Lampung
REGENCY_NAME = "Kota Bandar Lampung"


# A different value for each content field (aidcore.outcomes.CONTENT_FIELDS), as raw overrides.
CONTENT_CHANGES: dict[str, dict[str, Any]] = {
    "nik": {"nik": OTHER_NIK},
    "programme_code": {"programme_code": "BPNT"},
    "period": {"period": "2026-05"},
    "amount_idr": {"amount_idr": 600_000},
    "kind": {"kind": "IN_KIND"},
    "channel": {"channel": "POS"},
    "disbursed_at": {"disbursed_at": "2026-04-04T10:00:00+07:00"},
    "agency_code": {"agency_code": "DINSOS-LAMPUNG"},
    "source_type": {"source_type": "APBD_PROV"},
    "funding_account": {"funding_account": "APBD-PROV-2026-SEMBAKO"},
    "region_code": {"region_code": "1872011001"},
    "kk": {"kk": OTHER_KK},
}


def make_nik(
    *,
    province: str = "18",
    regency: str = "71",
    district: str = "01",
    day: int = 5,
    month: int = 4,
    year: int = 85,
    female: bool = True,
    serial: int = 1,
) -> str:
    """A NIK from its parts; `day` is the real day, 40 is added for women."""
    dd = day + 40 if female else day
    return f"{province}{regency}{district}{dd:02d}{month:02d}{year % 100:02d}{serial:04d}"


def raw_record(**overrides: Any) -> dict:
    """A valid input record; pass `field=...` to change one, `field=DROP` to leave it out."""
    record: dict[str, Any] = {
        "source_system": "SIKS-NG",
        "source_ref": "PKH-2026-04-000001",
        "source_type": "APBN",
        "agency_code": "KEMENSOS",
        "programme_code": "PKH",
        "nik": NIK,
        "provisional_id": "",
        "kk": KK,
        "recipient_name": "Siti Aminah",
        "amount_idr": 750_000,
        "kind": "CASH",
        "period": "2026-04",
        "disbursed_at": "2026-04-03T10:00:00+07:00",
        "channel": "BANK_TRANSFER",
        "region_code": REGION_CODE,
        "funding_account": "APBN-2026-KEMENSOS-PKH",
    }
    for name, value in overrides.items():
        if value is DROP:
            record.pop(name, None)
        else:
            record[name] = value
    return record


class _Drop:
    def __repr__(self) -> str:
        return "DROP"


DROP: Any = _Drop()


@lru_cache(maxsize=1)
def reference() -> Reference:
    return default_reference()


@lru_cache(maxsize=1)
def reference_with_inactive_programme() -> Reference:
    """The shipped reference plus an inactive programme "OLD_BANSOS" (for programme_inactive)."""
    ref = reference()
    programmes = dict(ref.programmes)
    programmes["OLD_BANSOS"] = Programme("OLD_BANSOS", "Retired social assistance", "household", "cash_transfer", active=False)
    return replace(ref, programmes=programmes)


def validate(
    raw: Any,
    *,
    now_us: int = NOW_US,
    token_key: bytes = TOKEN_KEY,
    ref: Reference | None = None,
) -> Accepted | Rejection:
    return intake.validate_record(raw, reference=ref or reference(), token_key=token_key, now_us=now_us)


def accepted(*, now_us: int = NOW_US, token_key: bytes = TOKEN_KEY, **overrides: Any) -> Accepted:
    outcome = validate(raw_record(**overrides), now_us=now_us, token_key=token_key)
    assert isinstance(outcome, Accepted), f"builder record was rejected: {outcome}"
    return outcome


def disbursement(*, now_us: int = NOW_US, token_key: bytes = TOKEN_KEY, **overrides: Any) -> Disbursement:
    """A Disbursement as intake produces it; overrides are raw input-record fields."""
    return accepted(now_us=now_us, token_key=token_key, **overrides).disbursement


def raw_reversal(**overrides: Any) -> dict:
    """A valid reversal of the default `raw_record()` payment, in full."""
    record: dict[str, Any] = {
        "record_type": "reversal",
        "source_system": "SIKS-NG",
        "source_ref": "REV-PKH-2026-04-000001",
        "original_source_ref": "PKH-2026-04-000001",
        "agency_code": "KEMENSOS",
        "nik": NIK,
        "amount_idr": 750_000,
        "reason": "paid twice by mistake",
        "reversed_at": "2026-04-08T09:00:00+07:00",
    }
    for name, value in overrides.items():
        if value is DROP:
            record.pop(name, None)
        else:
            record[name] = value
    return record


def reversal(*, now_us: int = NOW_US, token_key: bytes = TOKEN_KEY, **overrides: Any) -> intake.Reversal:
    outcome = intake.validate_any(raw_reversal(**overrides), reference=reference(), token_key=token_key, now_us=now_us)
    assert isinstance(outcome, intake.AcceptedReversal), f"builder reversal was rejected: {outcome}"
    return outcome.reversal


def identity(**overrides: Any) -> Identity:
    return accepted(**overrides).identity


def rejection(raw: Any, *, now_us: int = NOW_US, ref: Reference | None = None) -> Rejection:
    outcome = validate(raw, now_us=now_us, ref=ref)
    assert isinstance(outcome, Rejection), f"expected a rejection, got {outcome}"
    return outcome


def iso(moment: datetime) -> str:
    return moment.isoformat()


def decide(
    events: Sequence[Disbursement],
    states: Mapping[str, Mapping[str, Payment]] | None = None,
    *,
    rulebook: Rulebook | None = None,
    now_us: int = NOW_US,
) -> BatchResult:
    return ledger.decide_batch(
        states or {},
        events,
        rulebook=rulebook or Rulebook(),
        reference=reference(),
        now_us=now_us,
    )


def apply(states: Mapping[str, Mapping[str, Payment]], result: BatchResult) -> dict[str, dict[str, Payment]]:
    """The person states after a batch: the old ones with the batch's changes laid over them."""
    out = {token: dict(state) for token, state in states.items()}
    out.update({token: dict(state) for token, state in result.changed.items()})
    return out


def run_batches(batches: Iterable[Sequence[Disbursement]], states=None):
    """Thread state through several batches, as a worker does.

    Returns (final states, outcomes of every event in order, {alert_id: highest revision},
    {alert_id: latest Alert}).
    """
    states = dict(states or {})
    all_outcomes: list[str] = []
    revisions: dict[str, int] = {}
    latest: dict[str, Alert] = {}
    for batch in batches:
        result = decide(batch, states)
        states = apply(states, result)
        all_outcomes.extend(result.outcomes)
        for alert_id, alert in result.alerts.items():
            if alert.revision >= revisions.get(alert_id, 0):
                revisions[alert_id] = alert.revision
                latest[alert_id] = alert
    return states, all_outcomes, revisions, latest


def duplicate_alerts(count: int = 2, **overrides: Any) -> Alert:
    """The duplicate_person_programme_period alert after `count` payments under different refs."""
    events = [disbursement(source_ref=f"REF-{i}", **overrides) for i in range(count)]
    result = decide(events)
    (alert,) = result.alerts.values()
    return alert


def modified_alert(**changes: Any) -> Alert:
    """The modified_resubmission alert for the default record resent with `changes`."""
    result = decide([disbursement(), disbursement(**changes)])
    (alert,) = result.alerts.values()
    return alert


def disbursement_record(d: Disbursement) -> dict:
    """The Avro record of a Disbursement (field names equal the dataclass fields)."""
    return {name: getattr(d, name) for name in Disbursement.__dataclass_fields__}


def state_delta_record(events: Sequence[Disbursement] = (), *, partition: int = 3, offset_end: int = 42) -> dict:
    """An AcceptedEvents changelog record holding the ledger values of the events deciding
    `events` accepts."""
    from schemas import codec

    events = list(events) or [disbursement(), disbursement(source_ref="REF-2", period="2026-05")]
    result = decide(events)
    accepted = [codec.encode_disbursement(e) for e, outcome in zip(events, result.outcomes) if outcome == "accepted"]
    return {"source_partition": partition, "source_offset_end": offset_end, "events": accepted, "offsets": [],
            "removed": [], "applied": []}



# --- reversals, the household stage and streams of both (for property tests) ---------------------

from aidcore.household import HouseholdResult, decide_household_batch  # noqa: E402
from aidcore.ledger import Posting  # noqa: E402
from aidcore.rulebook import default_rulebook  # noqa: E402


@lru_cache(maxsize=1)
def shipped_rulebook() -> Rulebook:
    """The rulebook shipped with the package: every rule on."""
    return default_rulebook(reference())


def decide_households(postings: Sequence[Posting], states=None, *, rulebook: Rulebook | None = None,
                      now_us: int = NOW_US) -> HouseholdResult:
    """The household stage over `postings`, with the shipped rulebook unless told otherwise."""
    return decide_household_batch(states or {}, postings, rulebook=rulebook or shipped_rulebook(),
                                  reference=reference(), now_us=now_us)


def keep_latest(latest: dict[str, Alert], alerts: Iterable[Alert]) -> dict[str, Alert]:
    """Fold alerts in as a projection keeps them: per alert id the highest revision, a later one
    winning a tie."""
    for alert in alerts:
        seen = latest.get(alert.alert_id)
        if seen is None or alert.revision >= seen.revision:
            latest[alert.alert_id] = alert
    return latest


def open_cases(latest: Mapping[str, Alert]) -> dict[str, tuple]:
    """The open alerts' content by alert id: rule, subject, programme, period, lines (event id,
    amount) and amounts. Revisions, triggers, source references and messages are left out: they
    say how and when a case was learnt, not what it is."""
    return {
        alert_id: (a.rule_id, a.subject_kind, a.subject_token, a.programme_code, a.period,
                   tuple((line.event_id, line.amount_idr) for line in a.lines), a.amount_idr_at_stake,
                   a.amount_idr_total)
        for alert_id, a in latest.items()
        if a.status == "open"
    }


# Members of the streams below: two share a KK, one has no KK (a household of one), one has only a
# provisional identity and a KK of its own.
STREAM_MEMBERS: tuple[dict[str, str], ...] = (
    {"nik": NIK, "provisional_id": "", "kk": KK},
    {"nik": OTHER_NIK, "provisional_id": "", "kk": KK},
    {"nik": make_nik(regency="02", day=17, month=8, year=2, female=False, serial=12), "provisional_id": "", "kk": ""},
    {"nik": "", "provisional_id": "PRV-LPG-0042", "kk": OTHER_KK},
)
# (programme, source type): per-household, per-person, excluded-together and non-government aid
STREAM_PROGRAMMES = (("PKH", "APBN"), ("BPNT", "APBN"), ("BLT_DD", "APBDES"), ("CSR_PANGAN", "CSR"),
                     ("PIP", "APBN"), ("RTLH", "APBD_KAB"))
STREAM_PERIODS = ("2026-03", "2026-04")
STREAM_AMOUNTS = (200_000, 750_000, 1_500_000, 2_000_000)


@lru_cache(maxsize=None)
def stream_payment(n: int, member: int, programme: int, period: str, amount: int) -> Disbursement:
    """The n-th payment of a stream (source reference P<n>)."""
    code, source = STREAM_PROGRAMMES[programme]
    return disbursement(source_ref=f"P{n}", programme_code=code, source_type=source, period=period,
                        amount_idr=amount, disbursed_at=f"2026-04-0{1 + n % 9}T{8 + n % 10:02d}:00:00+07:00",
                        **STREAM_MEMBERS[member])


@lru_cache(maxsize=None)
def stream_reversal(n: int, member: int, original_ref: str, amount: int) -> intake.Reversal:
    """The n-th reversal of a stream (source reference V<n>), of the event `original_ref`."""
    who = STREAM_MEMBERS[member]
    return reversal(source_ref=f"V{n}", original_source_ref=original_ref, amount_idr=amount,
                    reversed_at=f"2026-04-0{1 + n % 9}T{18 - n % 10:02d}:30:00+07:00",
                    nik=who["nik"], provisional_id=who["provisional_id"])


def member_of(event) -> int:
    """Which of STREAM_MEMBERS an event of a stream is for."""
    tokens = [stream_payment(0, m, 0, STREAM_PERIODS[0], STREAM_AMOUNTS[0]).person_token
              for m in range(len(STREAM_MEMBERS))]
    return tokens.index(event.person_token)


def decide_stream(events: Sequence, cuts: Iterable[int] = (), *, rulebook: Rulebook | None = None):
    """The person stage over `events` cut into batches at `cuts`, state threaded through.
    Returns (states, outcomes, {alert_id: latest Alert}, postings in decision order)."""
    bounds = [0, *sorted(cuts), len(events)]
    states: dict = {}
    outs: list[str] = []
    latest: dict[str, Alert] = {}
    postings: list[Posting] = []
    for a, b in zip(bounds, bounds[1:]):
        result = decide(events[a:b], states, rulebook=rulebook)
        states = apply(states, result)
        outs += result.outcomes
        keep_latest(latest, result.alerts.values())
        postings += result.postings
    return states, outs, latest, postings


def decide_households_stream(postings: Sequence[Posting], cuts: Iterable[int] = (), *,
                             rulebook: Rulebook | None = None):
    """The household stage over `postings` cut into batches at `cuts`. Returns (states,
    {alert_id: latest Alert})."""
    bounds = [0, *sorted(cuts), len(postings)]
    states: dict = {}
    latest: dict[str, Alert] = {}
    for a, b in zip(bounds, bounds[1:]):
        result = decide_households(postings[a:b], states, rulebook=rulebook)
        states = {**states, **result.changed}
        keep_latest(latest, result.alerts.values())
    return states, latest


from hypothesis import strategies as st  # noqa: E402

# Most payments go to the household of two and to one period, so that cases of every rule,
# stacking included, come up often.
payment_specs = st.tuples(
    st.sampled_from((0, 1, 0, 1, 2, 3)),
    st.integers(0, len(STREAM_PROGRAMMES) - 1),
    st.sampled_from((STREAM_PERIODS[1], STREAM_PERIODS[1], STREAM_PERIODS[0])),
    st.sampled_from(STREAM_AMOUNTS),
)


@st.composite
def settled_streams(draw, max_payments: int = 10):
    """Payments and reversals whose final effect cannot depend on order: per payment, reversals
    that fit together, plus some that exceed it on their own (refused or left unapplied in every
    order); reversals of such fitting reversals; reversals of payments that never come. Returns
    (the events in a canonical order, the same events reordered with some delivered twice)."""
    payments = [stream_payment(n, *spec) for n, spec in enumerate(draw(st.lists(payment_specs, max_size=max_payments)))]
    reversals = []
    n = 0
    for payment in payments:
        room = payment.amount_idr
        for _ in range(draw(st.integers(0, 2))):
            if draw(st.booleans()):
                amount = draw(st.integers(1, 4)) * room // 4
                if amount == 0:
                    continue
                room -= amount
            else:
                amount = payment.amount_idr + draw(st.sampled_from((1, 250_000)))
            reversals.append(stream_reversal(n, member_of(payment), payment.source_ref, amount))
            n += 1
    amounts = {p.source_ref: p.amount_idr for p in payments}
    fitting = [r for r in reversals if r.amount_idr <= amounts[r.original_source_ref]]
    for _ in range(draw(st.integers(0, 2))):
        if fitting:
            original = draw(st.sampled_from(fitting))
            reversals.append(stream_reversal(n, member_of(original), original.source_ref, 100_000))
            n += 1
    for _ in range(draw(st.integers(0, 2))):
        reversals.append(stream_reversal(n, draw(st.integers(0, len(STREAM_MEMBERS) - 1)), f"P-NEVER-{n}", 100_000))
        n += 1
    canonical = payments + reversals
    reordered = list(draw(st.permutations(canonical)))
    for _ in range(draw(st.integers(0, 6))):
        if reordered:
            reordered.insert(draw(st.integers(0, len(reordered))), draw(st.sampled_from(reordered)))
    return canonical, reordered


REVERSAL_AMOUNTS = (100_000, 200_000, 750_000, 1_500_000, 2_000_001)


@st.composite
def mixed_streams(draw):
    """Payments and reversals in any order: reversals of earlier or later payments, of reversals,
    of payments that never come, and of more than is left; with exact redeliveries."""
    payments = [stream_payment(n, *spec) for n, spec in enumerate(draw(st.lists(payment_specs, max_size=12)))]
    reversals = []
    for n in range(draw(st.integers(0, 10))):
        target = draw(st.sampled_from(["payment", "reversal", "unknown"]))
        amount = draw(st.sampled_from(REVERSAL_AMOUNTS))
        if target == "payment" and payments:
            original = draw(st.sampled_from(payments))
            reversals.append(stream_reversal(n, member_of(original), original.source_ref, amount))
        elif target == "reversal" and reversals:
            original = draw(st.sampled_from(reversals))
            reversals.append(stream_reversal(n, member_of(original), original.source_ref, amount))
        else:
            reversals.append(stream_reversal(n, draw(st.integers(0, len(STREAM_MEMBERS) - 1)), f"P-NEVER-{n}", amount))
    events = draw(st.permutations(payments + reversals))
    for _ in range(draw(st.integers(0, 4))):
        if events:
            events.insert(draw(st.integers(0, len(events))), draw(st.sampled_from(events)))
    return events


# --- the budget side ------------------------------------------------------------------------------


def raw_allocation(**overrides: Any) -> dict:
    """A valid allocation: the budget line of the default payment gives KEMENSOS money for PKH."""
    record: dict[str, Any] = {
        "record_type": "allocation",
        "source_system": "SIPD-RI",
        "source_ref": "DIPA-2026-PKH-001",
        "source_type": "APBN",
        "funding_account": "APBN-2026-KEMENSOS-PKH",
        "agency_code": "KEMENSOS",
        "programme_code": "PKH",
        "fiscal_year": 2026,
        "amount_idr": 5_000_000_000,
        "allocated_at": "2026-01-05T09:00:00+07:00",
    }
    for name, value in overrides.items():
        if value is DROP:
            record.pop(name, None)
        else:
            record[name] = value
    return record


def raw_release(**overrides: Any) -> dict:
    """A valid release: the APBN treasury sends KEMENSOS cash against the default budget line."""
    record: dict[str, Any] = {
        "record_type": "release",
        "source_system": "SPAN",
        "source_ref": "SP2D-2026-000001",
        "source_type": "APBN",
        "funding_account": "APBN-2026-KEMENSOS-PKH",
        "agency_code": "KEMENSOS",
        "amount_idr": 2_000_000_000,
        "released_at": "2026-02-02T10:00:00+07:00",
    }
    for name, value in overrides.items():
        if value is DROP:
            record.pop(name, None)
        else:
            record[name] = value
    return record


def allocation(*, now_us: int = NOW_US, **overrides: Any) -> intake.BudgetAllocation:
    outcome = intake.validate_any(raw_allocation(**overrides), reference=reference(), token_key=TOKEN_KEY, now_us=now_us)
    assert isinstance(outcome, intake.AcceptedBudget), f"builder allocation was rejected: {outcome}"
    return outcome.record  # type: ignore[return-value]


def release(*, now_us: int = NOW_US, **overrides: Any) -> intake.TreasuryRelease:
    outcome = intake.validate_any(raw_release(**overrides), reference=reference(), token_key=TOKEN_KEY, now_us=now_us)
    assert isinstance(outcome, intake.AcceptedBudget), f"builder release was rejected: {outcome}"
    return outcome.record  # type: ignore[return-value]
