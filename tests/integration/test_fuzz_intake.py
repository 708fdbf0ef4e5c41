"""Bad input through both doors of the real stack, interleaved with good input: every bad record
gets exactly its expected code (the HTTP answer, the SDK's returned value, or a dead letter whose
headers name the code and the source position), every good record is in the ledger exactly once
(projection and the stream's state), the worker and the gateway never restart, and afterwards no
clear NIK is anywhere: not in any topic (keys, values, headers), the dead-letter table, the logs
or any process's /metrics. The SDK holds only the public submissions key, yet its records' clear
identities reach the vault, as the gateway's do.

Seeded: AIDLEDGER_FUZZ_SEED picks another run; a failure prints the seed."""

from __future__ import annotations

import json
import os
import random
import re
import time
import urllib.request
from collections import Counter, defaultdict

import psycopg
import pytest
from conftest import Cli, read_topic, stack_environ, wait_until
from gateway_client import batch, call, issued_key, post_large

from aidcore import intake
from aidcore.reference import default_reference
from aidcore.rulebook import default_rulebook_text
from connectors.sdk import AgencyProducer, Rejection, Sent
from infra.stack import Stack, submissions_keys, token_key
from schemas import codec, sealing
from schemas.submission import seal_record

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("AIDLEDGER_FUZZ_SEED", "20261122"))
GOOD = 10_000
BAD = 1_040  # at least 1,000, both doors, every category
AGENCY, OTHER_AGENCY = "FUZZ-DINSOS", "FUZZ-OTHER"
GW_SYSTEM, SDK_SYSTEM = "FUZZ-GW", "FUZZ-SDK"
WAIT_S = 2  # the rulebook's wait for a reversal's original

CATEGORIES = (
    "malformed_avro", "unknown_fingerprint", "schema_mismatch", "nik_length", "nik_non_ascii_digits",
    "nik_impossible_date", "nik_impossible_region", "amount_zero", "amount_negative", "amount_fraction",
    "amount_huge", "future_dated", "out_of_period", "programme_unknown", "same_ref_other_content",
    "reversal_of_unknown", "oversized", "null_value", "text_encoding", "out_of_scope_agency", "identity_seal_invalid",
)


def _nik(i: int) -> str:
    """A distinct valid Lampung NIK per index: regency, birth day and serial vary."""
    regency, rest = divmod(i, 9999 * 20)
    day, serial = divmod(rest, 9999)
    return f"18{71 + regency:02d}01{41 + day:02d}0485{serial + 1:04d}"


def _record(i: int, system: str, rng: random.Random) -> dict:
    body = {
        "source_system": system, "source_ref": f"{system}-{i:06d}", "source_type": "APBN", "agency_code": AGENCY,
        "programme_code": rng.choice(("PKH", "BPNT", "PIP")), "nik": _nik(i), "recipient_name": "Penerima",
        "amount_idr": rng.randrange(50, 900) * 1000, "kind": "CASH", "period": "2026-04",
        "disbursed_at": "2026-04-03T10:00:00+07:00", "channel": "BANK_TRANSFER", "region_code": "1871011001",
        "funding_account": "APBN-2026-FUZZ",
    }
    if i % 2:
        body["kk"] = f"18710101{i:08d}"
    return body


def _event_id_of(raw: dict, key: bytes) -> str:
    """The event id the door makes of a record (the SDK cannot: it holds no token key)."""
    outcome = intake.validate_any(raw, reference=default_reference(), token_key=key, now_us=time.time_ns() // 1000)
    return outcome.disbursement.event_id if isinstance(outcome, intake.Accepted) else outcome.reversal.event_id


# category -> (gateway: (path, body or raw bytes, status, code)), built per instance
def _gateway_case(category: str, raw: dict, rng: random.Random, sent_before: list[dict]):
    good_avro = codec.MARKER + rng.randbytes(8) + rng.randbytes(40)
    cases = {
        "malformed_avro": (None, rng.randbytes(60), 400, "body_not_json"),
        "unknown_fingerprint": (None, good_avro, 400, "body_not_json"),
        "schema_mismatch": ({**raw, "amount": raw["amount_idr"]}, None, 422, "field_unknown"),
        "nik_length": ({**raw, "nik": raw["nik"][:15]}, None, 422, "nik_must_be_16_ascii_digits"),
        "nik_non_ascii_digits": ({**raw, "nik": raw["nik"][:-1] + "\u0661"}, None, 422, "nik_must_be_16_ascii_digits"),
        "nik_impossible_date": ({**raw, "nik": raw["nik"][:6] + "32" + raw["nik"][8:]}, None, 422,
                                "nik_birth_date_invalid"),
        "nik_impossible_region": ({**raw, "nik": "99" + raw["nik"][2:]}, None, 422, "nik_province_invalid"),
        "amount_zero": ({**raw, "amount_idr": 0}, None, 422, "amount_idr_must_be_positive"),
        "amount_negative": ({**raw, "amount_idr": -rng.randrange(1, 10**6)}, None, 422, "amount_idr_must_be_positive"),
        "amount_fraction": ({**raw, "amount_idr": "1500.5"}, None, 422, "amount_idr_must_be_whole_rupiah"),
        "amount_huge": ({**raw, "amount_idr": 10**15}, None, 422, "amount_idr_too_large"),
        "future_dated": ({**raw, "disbursed_at": "2031-01-01T00:00:00+07:00"}, None, 422, "disbursed_at_in_future"),
        "out_of_period": ({**raw, "period": rng.choice(("2024-01", "2025-03", "2026-08"))}, None, 422,
                          "period_out_of_range"),
        "programme_unknown": ({**raw, "programme_code": "NOPE"}, None, 422, "programme_code_unknown"),
        "oversized": (None, b'{"pad": "' + b"x" * 1_100_000 + b'"}', 413, "body_too_large"),
        "null_value": (None, b"null", 422, "record_must_be_an_object"),
        "text_encoding": (None, json.dumps(raw).encode().replace(b"Penerima", b"Pener\xffma"), 400, "body_not_json"),
        "out_of_scope_agency": ({**raw, "agency_code": OTHER_AGENCY}, None, 403, "agency_out_of_scope"),
        # the gateway takes no seal: its nearest case is a record whose identity cannot be read
        "identity_seal_invalid": ({k: v for k, v in raw.items() if k != "nik"}, None, 422, "identity_required"),
    }
    if category == "same_ref_other_content":
        original = rng.choice(sent_before)
        return ("/v1/disbursements", {**original, "amount_idr": original["amount_idr"] + 1000}, None, 409,
                "exists_with_different_amount_idr")
    if category == "reversal_of_unknown":
        body = {"source_system": raw["source_system"], "source_ref": "REV-" + raw["source_ref"],
                "original_source_ref": "NONE-" + raw["source_ref"], "agency_code": AGENCY, "nik": raw["nik"],
                "amount_idr": 1000, "reason": "never paid", "reversed_at": "2026-04-05T09:00:00+07:00"}
        return ("/v1/reversals", body, None, 202, "reversal_original_unknown")
    return ("/v1/disbursements", *cases[category])


def _topic_case(category: str, raw: dict, rng: random.Random, public: bytes, sent_before: list[dict]):
    """("sdk", raw record, expected code) for what the SDK refuses or the door dead-letters, or
    ("bytes", key, value, code) for what a producer past the SDK sends (it has the public key too)."""
    token, good = seal_record(raw, public)
    if category == "malformed_avro":
        value, code = rng.choice(((b"\x00" + rng.randbytes(30), "avro_marker_invalid"),
                                  (good[:rng.randrange(11, 60)], "avro_body_malformed")))
        return ("bytes", token, value, code)
    if category == "unknown_fingerprint":
        return ("bytes", token, codec.MARKER + rng.randbytes(8) + good[10:], "schema_fingerprint_unknown")
    if category == "schema_mismatch":
        return ("bytes", token, codec.codec(codec.ALERT).header + good[10:], "schema_mismatch")
    sdk_refused = {
        "nik_length": ({**raw, "nik": raw["nik"] + "1"}, "nik_must_be_16_ascii_digits"),
        "nik_non_ascii_digits": ({**raw, "nik": "\uff11" + raw["nik"][1:]}, "nik_must_be_16_ascii_digits"),
        "nik_impossible_date": ({**raw, "nik": raw["nik"][:8] + "13" + raw["nik"][10:]}, "nik_birth_date_invalid"),
        "nik_impossible_region": ({**raw, "nik": "00" + raw["nik"][2:]}, "nik_province_invalid"),
        "amount_fraction": ({**raw, "amount_idr": 1234.5}, "amount_idr_must_be_whole_rupiah"),
    }
    if category in sdk_refused:
        return ("sdk", *sdk_refused[category])
    forged = {
        "amount_zero": ({"amount_idr": 0}, "amount_idr_must_be_positive"),
        "amount_negative": ({"amount_idr": -5000}, "amount_idr_must_be_positive"),
        "amount_huge": ({"amount_idr": 10**12}, "amount_idr_too_large"),  # fewer than 16 digits: the JSON is clear
        "future_dated": ({"disbursed_at": "2031-01-01T00:00:00+07:00"}, "disbursed_at_in_future"),
        "out_of_period": ({"period": "2027-02"}, "period_out_of_range"),
        "programme_unknown": ({"programme_code": "NOPE"}, "programme_code_unknown"),
    }
    if category in forged:
        changes, code = forged[category]
        return ("bytes", token, seal_record({**raw, **changes}, public)[1], code)
    if category == "identity_seal_invalid":
        how = rng.choice(("wrong_key", "tampered", "moved"))
        if how == "wrong_key":
            value = seal_record(raw, sealing.public_key(sealing.new_private_key()))[1]
        elif how == "tampered":
            value = good[:-1] + bytes([good[-1] ^ 0x40])
        else:  # the seal of another record's identity on this record
            other = codec.codec(codec.SUBMISSION).decode(seal_record({**raw, "source_ref": raw["source_ref"] + "-X"},
                                                                       public)[1])
            value = codec.codec(codec.SUBMISSION).encode({**codec.codec(codec.SUBMISSION).decode(good),
                                                          "record": other["record"]})
        return ("bytes", token, value, "identity_seal_invalid")
    if category == "same_ref_other_content":
        original = rng.choice(sent_before)
        return ("sdk", {**original, "amount_idr": original["amount_idr"] + 1000}, "exists_with_different_amount_idr")
    if category == "reversal_of_unknown":
        return ("sdk", {"record_type": "reversal", "source_system": raw["source_system"],
                        "source_ref": "REV-" + raw["source_ref"], "original_source_ref": "NONE-" + raw["source_ref"],
                        "agency_code": AGENCY, "nik": raw["nik"], "amount_idr": 1000, "reason": "never paid",
                        "reversed_at": "2026-04-05T09:00:00+07:00"}, "reversal_original_unknown")
    if category == "oversized":
        return ("bytes", token, good + rng.randbytes(100_000), "value_too_large")
    if category == "null_value":
        return ("bytes", token, None, "value_missing")
    if category == "text_encoding":
        i = good.index(b"Penerima") if b"Penerima" in good else good.index(SDK_SYSTEM.encode())
        return ("bytes", token, good[:i] + b"\xff" + good[i + 1:], "text_encoding_invalid")
    if category == "out_of_scope_agency":
        return ("sdk", {**raw, "agency_code": OTHER_AGENCY}, "agency_out_of_scope")
    raise AssertionError(category)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("fuzz-stack")
    book = home / "wait.toml"
    book.write_text(default_rulebook_text().replace('version = "2026-11-01"', 'version = "fuzz-wait"')
                    .replace("wait_seconds = 604_800", f"wait_seconds = {WAIT_S}"))
    env = stack_environ(home) | {"AIDLEDGER_GATEWAY_RATE_PER_S": "100000", "AIDLEDGER_GATEWAY_BURST": "100000",
                                 "AIDLEDGER_GATEWAY_MAX_BODY_BYTES": "1048576", "AIDLEDGER_RULEBOOK": str(book),
                                 "AIDLEDGER_WORKER_EXPIRY_INTERVAL_S": "0.5"}
    s = Stack(home, env)
    s.start()
    try:
        wait_until(lambda: _healthy(s.gateway_url()), 60, "the gateway to answer")
        yield s
    finally:
        s.stop()


def _healthy(base: str) -> bool:
    try:
        return call(base, "GET", "/healthz", timeout=5).status == 200
    except OSError:
        return False


def _dead_letters(stack) -> list:
    return read_topic(stack.bootstrap, stack.endpoints()["topics"]["deadletter"], stack.stack.partitions)


@pytest.fixture(scope="module")
def run(stack):
    """The fuzz run itself; returns what was sent and what came back."""
    rng = random.Random(SEED)
    cli = Cli(stack)
    api_key = issued_key(cli.run("agencies", "add", AGENCY, "--programmes", "PKH,BPNT,PIP", "--source-systems",
                                 f"{GW_SYSTEM},{SDK_SYSTEM}").stdout)
    cli.run("agencies", "add", OTHER_AGENCY, "--programmes", "PKH", "--source-systems", "FUZZ-ELSEWHERE")
    key = token_key(stack.stack, stack.home)  # the test's own, to know the event ids the doors make
    public = sealing.public_key(submissions_keys(stack.stack, stack.home)[0])  # all the SDK holds
    base = stack.gateway_url()
    pids = {name: c.process.pid for name, c in stack.children.items()}
    topics = stack.endpoints()["topics"]
    producer = AgencyProducer(stack.bootstrap, public_key=public.hex(), topic=topics["submissions"])

    # the interleaving: good and bad, each bad one a category, half of everything through each door
    plan = [("good", i) for i in range(GOOD)] + [("bad", i) for i in range(BAD)]
    rng.shuffle(plan)
    bad_categories = [CATEGORIES[i % len(CATEGORIES)] for i in range(BAD)]
    rng.shuffle(bad_categories)

    good_gateway, good_topic = [], []  # raw records accepted
    gateway_answers = []  # (category, expected status, expected code, answer)
    sdk_answers = []  # (category, expected code, returned Rejection)
    topic_sent = {}  # (partition, offset) -> (category, expected code)
    topic_raw = {}  # (partition, offset) -> the record the SDK sent there, for the records the door refuses
    by_event = {}  # event id -> (door, category, expected code) of records that dead-letter later in the stream
    sent_gateway, sent_topic, pending = [], [], []
    futures = []
    started = time.monotonic()

    def flush_gateway():
        if pending:
            answer = call(base, "POST", "/v1/batches", batch(pending), key=api_key, timeout=120)
            assert answer.status == 202, (answer.status, answer.body)
            sent_gateway.extend(pending)
            pending.clear()

    n_good = n_bad = 0
    for kind, _ in plan:
        door = "gateway" if (n_good if kind == "good" else n_bad) % 2 == 0 else "topic"
        if kind == "good":
            i, n_good = n_good, n_good + 1
            if door == "gateway":
                raw = _record(i, GW_SYSTEM, rng)
                pending.append(raw)
                good_gateway.append(raw)
                if len(pending) >= 500:
                    flush_gateway()
            else:
                raw = _record(i, SDK_SYSTEM, rng)
                sent = producer.send(raw)
                assert isinstance(sent, Sent), sent
                good_topic.append(raw)
                sent_topic.append(raw)
            continue
        j, n_bad = n_bad, n_bad + 1
        category = bad_categories[j]
        raw = _record(GOOD + j, GW_SYSTEM if door == "gateway" else SDK_SYSTEM, rng)
        if door == "gateway":
            if category == "same_ref_other_content" and not sent_gateway:
                flush_gateway()
            path, body, raw_bytes, status, code = _gateway_case(category, raw, rng, sent_gateway or pending)
            answer = (post_large(base, path, raw_bytes, api_key) if category == "oversized"
                      else call(base, "POST", path, body, key=api_key, raw=raw_bytes))
            gateway_answers.append((category, status, code, answer))
            if status == 202 and answer.status == 202:
                by_event[answer.body["event_id"]] = ("gateway", category, code)
            continue
        if category == "same_ref_other_content" and not sent_topic:
            category = "null_value"  # nothing sent before it yet: any other category
        case = _topic_case(category, raw, rng, public, sent_topic)
        if case[0] == "sdk":
            _, record, code = case
            outcome = producer.send(record)
            if isinstance(outcome, Rejection):
                sdk_answers.append((category, code, outcome))
            elif code == "reversal_original_unknown":
                by_event[_event_id_of(record, key)] = ("topic", category, code)
            else:
                futures.append((outcome.future, category, code, record))
        else:
            _, record_key, value, code = case
            futures.append((producer.send_raw(record_key, value), category, code, None))
    flush_gateway()
    producer.flush(60)
    for future, category, code, record in futures:
        meta = future.get(timeout=60)
        topic_sent[(meta.partition, meta.offset)] = (category, code)
        if record is not None:
            topic_raw[(meta.partition, meta.offset)] = record
    producer.close()
    sent_s = time.monotonic() - started

    good_ids = [_event_id_of(raw, key) for raw in good_gateway + good_topic]

    def projected() -> int:
        with psycopg.connect(stack.database_url) as conn:
            return conn.execute("SELECT count(*) FROM ledger.events WHERE event_id = ANY(%s::uuid[])",
                                (good_ids,)).fetchone()[0]

    wait_until(lambda: projected() == len(good_ids), 300, "every good record to be projected", poll_s=1.0)
    submissions = topics["submissions"]
    letters: dict = {}

    def all_dead_letters() -> bool:
        letters.clear()
        for r in _dead_letters(stack):
            headers = {k: v.decode() for k, v in r.headers}
            letters.setdefault((headers["source_topic"], int(headers["source_partition"]),
                                int(headers["source_offset"])), []).append((headers, r))
        from_topic = {(p, o) for t, p, o in letters if t == submissions}
        stream_ids = {_event_id(r.value) for position, items in letters.items() if position[0] != submissions
                      for _, r in items}
        return set(topic_sent) <= from_topic and set(by_event) <= stream_ids

    wait_until(all_dead_letters, 240, "every expected dead letter", poll_s=2.0)
    return {"stack": stack, "key": key, "good_ids": good_ids, "good_gateway": good_gateway, "good_topic": good_topic,
            "gateway_answers": gateway_answers, "sdk_answers": sdk_answers, "topic_sent": topic_sent,
            "topic_raw": topic_raw,
            "by_event": by_event, "letters": letters, "pids": pids, "sent_s": sent_s,
            "total_s": time.monotonic() - started, "categories": Counter(bad_categories)}


def _samples(url: str) -> dict[tuple[str, str], float]:
    """(metric, its outcome or code label) -> value, from a process's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    return {(s.name, s.labels.get("outcome") or s.labels.get("code", "")): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _event_id(value: bytes | None) -> str | None:
    if value is None:
        return None
    item = codec.decode_ledger_values([value])[0]
    return getattr(item, "event_id", None)


def test_every_bad_input_gets_its_code_and_every_good_one_is_in_the_ledger_once(run):
    stack = run["stack"]
    print(f"seed {SEED}: sent in {run['sent_s']:.1f}s, all decided in {run['total_s']:.1f}s; bad: gateway"
          f" {len(run['gateway_answers'])}, SDK refused {len(run['sdk_answers'])}, door dead letters"
          f" {len(run['topic_sent'])}, stream dead letters {len(run['by_event'])}")
    # every category went through both doors
    bad_total = len(run["gateway_answers"]) + len(run["sdk_answers"]) + len(run["topic_sent"]) + sum(
        1 for door, _, _ in run["by_event"].values() if door == "topic")
    assert bad_total >= 1000, bad_total
    gateway_cats = {c for c, _, _, _ in run["gateway_answers"]}
    topic_cats = {c for c, _, _ in run["sdk_answers"]} | {c for c, _ in run["topic_sent"].values()} | {
        c for door, c, _ in run["by_event"].values() if door == "topic"}
    assert gateway_cats == set(CATEGORIES) and topic_cats == set(CATEGORIES), (
        f"seed {SEED}", set(CATEGORIES) - gateway_cats, set(CATEGORIES) - topic_cats)

    wrong = [(c, status, code, a.status, a.code) for c, status, code, a in run["gateway_answers"]
             if a.status != status or (status != 202 and a.code != code)]
    assert not wrong, f"seed {SEED}: gateway answers {wrong[:10]}"
    wrong = [(c, code, r.code) for c, code, r in run["sdk_answers"] if r.code != code]
    assert not wrong, f"seed {SEED}: SDK answers {wrong[:10]}"

    submissions = stack.endpoints()["topics"]["submissions"]
    letters = run["letters"]
    for (partition, offset), (category, code) in run["topic_sent"].items():
        got = letters.get((submissions, partition, offset), [])
        codes = {h["code"] for h, _ in got}
        assert codes == {code}, f"seed {SEED}: {category} at {partition}:{offset} dead-lettered as {codes}"
        assert all(h["stage"] == "door" for h, _ in got)
    stream_letters = defaultdict(set)
    for (topic, _, _), items in letters.items():
        if topic != submissions:
            for h, r in items:
                stream_letters[_event_id(r.value)].add(h["code"])
    for event_id, (door, category, code) in run["by_event"].items():
        assert stream_letters[event_id] == {code}, f"seed {SEED}: {door} {category} {event_id}"
    # nothing else was dead-lettered: no good record, no record twice under another code
    expected_positions = {(submissions, p, o) for p, o in run["topic_sent"]}
    extra = [(k, [h["code"] for h, _ in v]) for k, v in letters.items()
             if k not in expected_positions and not {_event_id(r.value) for _, r in v} <= set(run["by_event"])]
    assert not extra, f"seed {SEED}: unexpected dead letters {extra[:10]}"

    # every good record: in the projection once, accepted, and in the stream's state once
    with psycopg.connect(stack.database_url) as conn:
        rows = conn.execute("SELECT event_id::text, accepted, person_token, source_system, source_ref FROM ledger.events"
                            " WHERE event_id = ANY(%s::uuid[])", (run["good_ids"],)).fetchall()
    assert len(rows) == len(set(run["good_ids"])) == 10_000
    assert all(accepted for _, accepted, _, _, _ in rows)
    keys = Counter()  # the stream's state as its changelog holds it (reversals that waited are there too)
    for record in read_topic(stack.bootstrap, stack.endpoints()["topics"]["state"], stack.stack.partitions):
        for d in codec.decode_ledger_values(codec.codec(codec.STATE_DELTA).decode(record.value)["events"]):
            keys[(getattr(d, "person_token", None), getattr(d, "source_system", None), getattr(d, "source_ref", None))] += 1
    not_once = [(t, s, r) for _, _, t, s, r in rows if keys[(t, s, r)] != 1]
    assert not not_once, f"seed {SEED}: {len(not_once)} good records not in the stream's state exactly once"

    # a counter by code at each door, equal to what was refused there
    counted = {name: _samples(url) for name, url in stack.endpoints()["metrics"].items()}
    gateway_codes = Counter(code for _, status, code, _ in run["gateway_answers"] if status != 202)
    door_codes = Counter(code for _, code in run["topic_sent"].values())
    for code, n in gateway_codes.items():
        assert counted["gateway"].get(("aidledger_gateway_records_total", code)) == n, code
    for code, n in door_codes.items():
        assert counted["gateway"].get(("aidledger_door_records_total", code)) == n, code
    assert counted["worker-0"].get(("aidledger_worker_dead_letters_total", "reversal_original_unknown")) == len(
        run["by_event"])

    # neither the worker nor the gateway (the door) restarted
    for name, pid in run["pids"].items():
        child = stack.children[name]
        assert child.process.poll() is None and child.process.pid == pid and child.restarts == 0, name


# --- no clear NIK anywhere -----------------------------------------------------------------------

_HEXISH = re.compile(rb"[0-9a-f]+")
_DIGITS16 = re.compile(rb"[0-9]{16}")
_ANY16 = re.compile(rb"(?=([0-9]{16}))")


def clear_nik_runs(data: bytes) -> list[bytes]:
    """Runs of 16 ASCII digits that could be a NIK. A 32- or 64-character lowercase hex run is a
    token or a digest (random hex holds 16 decimal digits in a row about once in 150 tokens), so
    it is not one; nor are the digits after a decimal point; any other run with 16 digits in a
    row is."""
    found = []
    for m in _HEXISH.finditer(data):
        run_, at = m.group(), m.start()
        if len(run_) in (32, 64) and not run_.isdigit():
            continue
        if data[at - 1:at] == b"." and data[at - 2:at - 1].isdigit():
            continue  # the fraction of a decimal number (1.7637953720389129e+09 in /metrics)
        found.extend(_DIGITS16.findall(run_))
    return found


def test_the_nik_scanner_finds_a_nik_and_passes_tokens():
    assert clear_nik_runs(b'{"nik": "1871014504850001"}') == [b"1871014504850001"]
    assert clear_nik_runs(b"NIK1871014504850001x") == [b"1871014504850001"]
    assert clear_nik_runs(b"\x00" + b"1871014504850001" + b"abcd") == [b"1871014504850001"]
    assert clear_nik_runs(b"@1234567890123456abcdefabcdefabcd\x00") == []  # a 32-hex token
    assert clear_nik_runs(b"1.7637953720389129e+09 0.04300000000000002 12345") == []
    assert clear_nik_runs(b'nik="1871014504850001"} 1.0') == [b"1871014504850001"]


def test_no_clear_nik_in_topics_dead_letters_logs_or_metrics(run):
    stack = run["stack"]
    niks = {raw["nik"].encode() for raw in run["good_gateway"] + run["good_topic"]}
    niks |= {raw["kk"].encode() for raw in run["good_gateway"] + run["good_topic"] if "kk" in raw}
    leaks = []

    def scan(where: str, data: bytes | None) -> None:
        if not data:
            return
        runs = clear_nik_runs(data)
        submitted = set(_ANY16.findall(data)) & niks  # each NIK and KK submitted, wherever it sits
        if runs or submitted:
            leaks.append((where, runs[:3] + sorted(submitted)[:3]))

    from kafka import KafkaConsumer

    lister = KafkaConsumer(bootstrap_servers=stack.bootstrap)
    try:
        names = {t: len(lister.partitions_for_topic(t) or ()) for t in lister.topics()}
    finally:
        lister.close()
    assert stack.endpoints()["topics"]["submissions"] in names
    records = 0
    for topic, partitions in sorted(names.items()):
        for r in read_topic(stack.bootstrap, topic, partitions):
            records += 1
            where = f"topic {topic}[{r.partition}]@{r.offset}"
            scan(where + " key", r.key)
            scan(where + " value", r.value)
            for name, value in r.headers:
                scan(f"{where} header {name}", name.encode() + b"=" + (value or b""))
    assert records > 10_000
    letters = len({(h["source_topic"], h["source_partition"], h["source_offset"], h["code"])
                   for r in _dead_letters(stack) for h in [{k: v.decode() for k, v in r.headers}]})

    def table_rows() -> int:
        with psycopg.connect(stack.database_url) as conn:
            return conn.execute("SELECT count(*) FROM ledger.deadletters").fetchone()[0]

    wait_until(lambda: table_rows() >= letters, 120, "the projector to hold every dead letter", poll_s=1.0)
    with psycopg.connect(stack.database_url) as conn:
        rows = conn.execute("SELECT concat_ws(' ', source_topic, source_partition, source_offset, code, detail, stage,"
                            " topic, partition, \"offset\"), value FROM ledger.deadletters").fetchall()
        assert len(rows) == letters >= 400
        for text, value in rows:
            scan(f"ledger.deadletters row {text[:60]}", text.encode())
            scan(f"ledger.deadletters value of {text[:60]}", bytes(value) if value is not None else None)
    logs = sorted(p for p in stack.home.rglob("*") if p.is_file() and (p.suffix == ".log" or "log" in p.parent.name))
    assert logs, "the stack writes logs"
    for path in logs:
        scan(f"log {path.name}", path.read_bytes())
    for name, url in stack.endpoints()["metrics"].items():
        with urllib.request.urlopen(url, timeout=30) as response:
            scan(f"/metrics of {name}", response.read())
    assert not leaks, f"clear NIK-like digits found: {leaks[:10]}"


def test_dead_letters_of_the_door_replay_once_after_the_registry_is_fixed(run):
    """The direct producer's records refused as out of scope are listed by code; once the agency
    is registered for them, a replay puts each in the ledger once, and a second replay sends none."""
    stack = run["stack"]
    cli = Cli(stack)
    listed = json.loads(cli.run("deadletters", "--code", "agency_out_of_scope", "--json").stdout)
    submissions = stack.endpoints()["topics"]["submissions"]
    mine = [d for d in listed["deadletters"] if d["source"]["topic"] == submissions]
    expected = sum(1 for category, _ in run["topic_sent"].values() if category == "out_of_scope_agency")
    assert len(mine) == expected > 0 and all(d["stage"] == "door" and d["record"] for d in mine)
    # the listing shows a sealed record's source reference; its event id is the door's to make
    sent = {(r["source_system"], r["source_ref"]): r for r in run["topic_raw"].values()}
    event_ids = [_event_id_of(sent[(d["record"]["source_system"], d["record"]["source_ref"])], run["key"]) for d in mine]
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM ledger.events WHERE event_id = ANY(%s::uuid[])",
                            (event_ids,)).fetchone()[0] == 0
        # the fix: the agency is now registered for that source system and those programmes
        conn.execute("UPDATE ledger.agencies SET source_systems = source_systems || %s::text,"
                     " programmes = ARRAY['PKH', 'BPNT', 'PIP'] WHERE agency_code = %s", (SDK_SYSTEM, OTHER_AGENCY))
    first = json.loads(cli.run("deadletters", "replay", "--code", "agency_out_of_scope", "--json").stdout)
    assert first["queued"] == expected and first["skipped"] == 0
    second = json.loads(cli.run("deadletters", "replay", "--code", "agency_out_of_scope", "--json").stdout)
    assert second["queued"] == 0 and second["already_replayed"] == expected

    def in_ledger() -> int:
        with psycopg.connect(stack.database_url) as conn:
            return conn.execute("SELECT count(*) FROM ledger.events WHERE accepted AND event_id = ANY(%s::uuid[])",
                                (event_ids,)).fetchone()[0]

    wait_until(lambda: in_ledger() == len(set(event_ids)), 120, "the replayed records in the ledger", poll_s=1.0)
    with psycopg.connect(stack.database_url) as conn:
        outbox = conn.execute("SELECT count(*) FROM ledger.outbox WHERE topic = %s", (submissions,)).fetchone()[0]
        again = conn.execute("SELECT count(*) FROM ledger.deadletters WHERE code = 'agency_out_of_scope'"
                             " AND replayed_at IS NULL").fetchone()[0]
    assert outbox == expected  # each replayed once
    assert again == 0  # none refused again


def test_records_the_sdk_sends_twice_are_in_the_ledger_once(run):
    """A record retried by the same producer and sent again by a restarted agency system is one
    ledger entry: the door answers the second `exists`."""
    stack = run["stack"]
    public = sealing.public_key(submissions_keys(stack.stack, stack.home)[0])
    topic = stack.endpoints()["topics"]["submissions"]
    rng = random.Random(SEED + 1)
    records = [_record(50_000 + i, SDK_SYSTEM, rng) for i in range(200)]
    before = _samples(stack.endpoints()["metrics"]["gateway"]).get(("aidledger_door_records_total", "exists"), 0)
    for attempt in range(2):  # the second time as a restarted system would: a new producer
        with AgencyProducer(stack.bootstrap, public_key=public, topic=topic) as producer:
            sent = [producer.send(r) for r in records] + [producer.send(r) for r in records[:50]]
            producer.flush(60)
        assert all(isinstance(s, Sent) for s in sent)
    ids = sorted({_event_id_of(r, run["key"]) for r in records})
    assert len(ids) == 200

    def counts() -> tuple[int, int, int]:
        with psycopg.connect(stack.database_url) as conn:
            return conn.execute(
                "SELECT (SELECT count(*) FROM ledger.events WHERE event_id = ANY(%(ids)s::uuid[])),"
                " (SELECT count(*) FROM ledger.outbox WHERE event_id = ANY(%(ids)s::uuid[])),"
                " (SELECT count(*) FROM ledger.intake_keys WHERE event_id = ANY(%(ids)s::uuid[]))",
                {"ids": ids}).fetchone()

    wait_until(lambda: counts()[0] == 200, 120, "the records in the ledger", poll_s=0.5)
    wait_until(lambda: _samples(stack.endpoints()["metrics"]["gateway"]).get(("aidledger_door_records_total", "exists"),
                                                                            0) - before == 300,
               60, "the door to have read every resend", poll_s=0.5)
    assert counts() == (200, 200, 200)


def test_the_vault_holds_the_clear_identity_of_what_the_sdk_sealed(run):
    """The SDK has only the public key, yet `aidledger trail NIK` finds its records by NIK and
    shows the recipient's name from the vault, as for a gateway record."""
    stack = run["stack"]
    cli = Cli(stack)
    rng = random.Random(SEED + 2)
    for raw in rng.sample(run["good_topic"], 3) + rng.sample(run["good_gateway"], 1):
        trail = json.loads(cli.run("trail", raw["nik"], "--json", "--why", "fuzz test").stdout)
        assert trail["identity_kind"] == "NIK" and trail["recipient_name"] == raw["recipient_name"], raw["source_ref"]
        assert (raw["source_system"], raw["source_ref"]) in {(e["source_system"], e["source_ref"]) for e in trail["events"]}
    with psycopg.connect(stack.database_url) as conn:
        tokens = conn.execute("SELECT DISTINCT person_token FROM ledger.events WHERE source_system = %s",
                              (SDK_SYSTEM,)).fetchall()
        in_vault = conn.execute("SELECT count(*) FROM vault.identity WHERE person_token = ANY(%s) AND nik IS NOT NULL",
                                ([t for (t,) in tokens],)).fetchone()[0]
        households = conn.execute("SELECT count(*) FROM vault.household h JOIN ledger.events e ON e.kk_token = h.kk_token"
                                  " WHERE e.source_system = %s", (SDK_SYSTEM,)).fetchone()[0]
    assert len(tokens) >= 5000 and in_vault == len(tokens)
    assert households >= 2000  # every other record has a KK
