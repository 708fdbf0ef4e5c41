"""aidcore.cases (who sees and does what on a case, and which transitions are allowed) and
aidcore.sessions (signed session cookies, CSRF tokens)."""

from __future__ import annotations

import pytest

from aidcore import cases, sessions
from aidcore.cases import ACTIONS, STATUSES, Refused, Transition, User

PMO = User("pmo1", "pmo")
OWN = User("bdl1", "regency", regency_code="1871")
OTHER = User("lsel1", "regency", regency_code="1801")
AUDITOR = User("audit1", "auditor")
AGENCY = User("kemensos1", "agency", agency_code="KEMENSOS")


def decide(user=PMO, status="open", action="acknowledge", reason="", reversal=None, found=False,
           regency="1871", agencies=("KEMENSOS",)):
    return cases.decide_transition(user, regency, agencies, status, action, reason, reversal, found)


@pytest.mark.parametrize("user, regency, agencies, seen", [
    (PMO, "1871", [], True), (AUDITOR, "1801", [], True), (OWN, "1871", [], True), (OTHER, "1871", [], False),
    (AGENCY, "1871", ["KEMENSOS", "DINSOS"], True), (AGENCY, "1871", ["DINSOS"], False), (AGENCY, "1871", [], False),
])
def test_who_sees_a_case(user, regency, agencies, seen):
    assert cases.may_see(user, regency, agencies) is seen


def test_only_pmo_and_auditors_unmask_and_only_officers_act():
    assert [u.role for u in (PMO, OWN, AUDITOR, AGENCY) if cases.may_unmask(u)] == ["pmo", "auditor"]
    assert [u.role for u in (PMO, OWN, AUDITOR, AGENCY) if cases.may_act(u)] == ["pmo", "regency"]


def test_the_allowed_transitions():
    assert decide() == Transition("acknowledge", "open", "acknowledged", "", None, None)
    assert decide(status="acknowledged", action="accept", reason=" within the rules ") == Transition(
        "accept", "acknowledged", "accepted", "within the rules", None, None)
    assert decide(action="resolve", reversal=(" SIKS ", "R-1"), found=True) == Transition(
        "resolve", "open", "resolved", "", "SIKS", "R-1")
    assert decide(status="resolved", action="reopen", reason="came back").to_status == "open"


@pytest.mark.parametrize("status", STATUSES)
def test_every_action_from_every_status_is_decided(status):
    for action, (starts, to) in ACTIONS.items():
        got = decide(status=status, action=action, reason="why", reversal=("S", "R"), found=True)
        if status in starts:
            assert isinstance(got, Transition) and (got.from_status, got.to_status) == (status, to)
        else:
            assert got == Refused("case_transition_not_allowed", got.message)


@pytest.mark.parametrize("kwargs, code", [
    ({"user": AUDITOR}, "case_role_read_only"),
    ({"user": AGENCY}, "case_role_read_only"),
    ({"user": OTHER}, "case_out_of_scope"),
    ({"user": OTHER, "action": "nonsense"}, "case_out_of_scope"),  # scope before anything about the action
    ({"action": "close"}, "case_action_unknown"),
    ({"status": "resolved"}, "case_transition_not_allowed"),
    ({"action": "accept", "reason": "   "}, "case_reason_required"),
    ({"action": "reopen", "status": "accepted"}, "case_reason_required"),
    ({"action": "accept", "reason": "x" * (cases.REASON_MAX_CHARS + 1)}, "case_reason_required"),
    ({"action": "resolve"}, "case_reversal_required"),
    ({"action": "resolve", "reversal": ("S", " ")}, "case_reversal_required"),
    ({"action": "resolve", "reversal": ("S", "R"), "found": False}, "case_reversal_not_found"),
])
def test_refusals_are_named_in_precedence_order(kwargs, code):
    got = decide(**kwargs)
    assert isinstance(got, Refused) and got.code == code and got.code in cases.CASE_CODES


def test_actions_offered_follow_role_and_status():
    assert cases.actions_open_to(PMO, "open") == ["acknowledge", "resolve", "accept"]
    assert cases.actions_open_to(OWN, "resolved") == ["reopen"]
    assert cases.actions_open_to(AUDITOR, "open") == []


@pytest.mark.parametrize("role, regency, agency, ok", [
    ("pmo", None, None, True), ("auditor", None, None, True), ("regency", "1871", None, True),
    ("agency", None, "KEMENSOS", True), ("regency", None, None, False), ("regency", "18710", None, False),
    ("regency", "１８７１", None, False), ("pmo", "1871", None, False), ("agency", None, None, False),
    ("auditor", None, "KEMENSOS", False), ("admin", None, None, False),
])
def test_user_attributes_fit_the_role(role, regency, agency, ok):
    assert (cases.user_problem(role, regency, agency) is None) is ok


KEY = b"k" * 32


def test_a_session_opens_until_it_expires_and_only_under_its_key():
    value = sessions.sign_session(KEY, "pmo1", 1_000, "nonce1")
    assert sessions.open_session(KEY, value, 999.0) == ("pmo1", "nonce1")
    assert sessions.open_session(KEY, value, 1_000.0) is None
    assert sessions.open_session(b"x" * 32, value, 0.0) is None


@pytest.mark.parametrize("tamper", [
    lambda v: v.replace("pmo1", "pmo2", 1),
    lambda v: v.replace(".1000.", ".9999.", 1),
    lambda v: v[:-2] + ("AA" if not v.endswith("AA") else "BB"),
    lambda v: v + ".x", lambda v: "", lambda v: "a.b.c.d",
])
def test_a_changed_session_does_not_open(tamper):
    assert sessions.open_session(KEY, tamper(sessions.sign_session(KEY, "pmo1", 1_000, "n")), 0.0) is None


def test_a_csrf_token_belongs_to_its_session():
    token = sessions.csrf_token(KEY, "nonce1")
    assert sessions.csrf_matches(KEY, "nonce1", token)
    assert not sessions.csrf_matches(KEY, "nonce2", token)
    assert not sessions.csrf_matches(KEY, "nonce1", None)
    assert not sessions.csrf_matches(KEY, "nonce1", "")
    assert token != sessions.sign_session(KEY, "", 0, "nonce1").rsplit(".", 1)[1]  # its own domain


@pytest.mark.parametrize("name, ok", [("pmo1", True), ("a.b", False), ("", False), ("x" * 65, False),
                                      ("nama@dinas", True), ("budi santoso", False), ("bü", False)])
def test_usernames_cannot_break_the_cookie(name, ok):
    assert (sessions.username_problem(name) is None) is ok
