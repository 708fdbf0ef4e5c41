"""The case workflow on alerts and who may see and do what on the PMO dashboard. Pure: no
database, no clock, no environment.

An alert is a case. Its workflow status starts `open` and moves only by transitions, each
recorded append-only with who, in which role, why and when; the current status is the `to` of
the latest transition. This status is the people's decision about the case. It is separate
from the alert's own `status` (`open` or `void_reversed`), which the stream sets when a reversal
takes away the payment an alert rested on.

Roles:
  pmo       PMO officer: every regency; acts on cases; may unmask a NIK, with a reason
  regency   regency officer: the cases and people of one regency only; acts on them
  auditor   read-only, every regency; may unmask a NIK, with a reason
  agency    read-only, only cases and payments that involve the agency's own submissions
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

ROLES = ("pmo", "regency", "auditor", "agency")
STATUSES = ("open", "acknowledged", "resolved", "accepted")

# action -> (statuses it starts from, status it ends in)
ACTIONS: dict[str, tuple[frozenset[str], str]] = {
    "acknowledge": (frozenset({"open"}), "acknowledged"),
    "resolve": (frozenset({"open", "acknowledged"}), "resolved"),  # corrected: names the reversal that did it
    "accept": (frozenset({"open", "acknowledged"}), "accepted"),  # allowed after all: a written reason
    "reopen": (frozenset({"acknowledged", "resolved", "accepted"}), "open"),
}
ACTING_ROLES = frozenset({"pmo", "regency"})
UNMASKING_ROLES = frozenset({"pmo", "auditor"})

# Refusals of a transition, in the order they are checked.
CASE_CODES: tuple[str, ...] = (
    "case_role_read_only",
    "case_out_of_scope",
    "case_action_unknown",
    "case_transition_not_allowed",
    "case_reason_required",
    "case_reversal_required",
    "case_reversal_not_found",
    "case_changed_meanwhile",  # another transition was recorded since the page was read
)
REASON_MAX_CHARS = 2000


@dataclass(frozen=True, slots=True)
class User:
    username: str
    role: str
    regency_code: str | None = None  # regency role: the 4-digit regency
    agency_code: str | None = None  # agency role: the agency


@dataclass(frozen=True, slots=True)
class Transition:
    action: str
    from_status: str
    to_status: str
    reason: str
    reversal_source_system: str | None
    reversal_source_ref: str | None


@dataclass(frozen=True, slots=True)
class Refused:
    code: str
    message: str


def user_problem(role: str, regency_code: str | None, agency_code: str | None) -> str | None:
    """Why a user with these attributes cannot be made, or None."""
    if role not in ROLES:
        return f"role must be one of {', '.join(ROLES)}"
    if role == "regency" and not (regency_code and len(regency_code) == 4 and regency_code.isascii()
                                  and regency_code.isdigit()):
        return "a regency officer needs --regency with the 4-digit regency code"
    if role != "regency" and regency_code:
        return "only a regency officer has a regency"
    if role == "agency" and not agency_code:
        return "an agency user needs --agency with the agency code"
    if role != "agency" and agency_code:
        return "only an agency user has an agency"
    return None


def may_see(user: User, regency_code: str, agency_codes: Iterable[str]) -> bool:
    """Whether `user` may see a case (or a payment) in `regency_code` that involves the
    submissions of `agency_codes`."""
    if user.role in ("pmo", "auditor"):
        return True
    if user.role == "regency":
        return regency_code == user.regency_code
    if user.role == "agency":
        return user.agency_code in set(agency_codes)
    return False


def may_unmask(user: User) -> bool:
    return user.role in UNMASKING_ROLES


def may_act(user: User) -> bool:
    return user.role in ACTING_ROLES


def actions_open_to(user: User, status: str) -> list[str]:
    """The actions `user` may take on a case in `status` they may see, in ACTIONS order."""
    if not may_act(user):
        return []
    return [a for a, (starts, _) in ACTIONS.items() if status in starts]


def decide_transition(user: User, case_regency: str, case_agencies: Iterable[str], status: str, action: str,
                      reason: str, reversal: tuple[str, str] | None, reversal_found: bool) -> Transition | Refused:
    """The transition `user` asks for on a case now in `status`, or why it is refused.
    `reversal` is the (source system, source ref) a resolution links; `reversal_found` whether
    the ledger holds a reversal under it."""
    if not may_act(user):
        return Refused("case_role_read_only", f"the {user.role} role reads cases but does not change them")
    if not may_see(user, case_regency, case_agencies):
        return Refused("case_out_of_scope", "this case is outside your regency")
    if action not in ACTIONS:
        return Refused("case_action_unknown", f"action must be one of {', '.join(ACTIONS)}")
    starts, to = ACTIONS[action]
    if status not in starts:
        return Refused("case_transition_not_allowed", f"a case that is {status} cannot be {action}d")
    reason = reason.strip()
    if action in ("accept", "reopen") and not reason:
        return Refused("case_reason_required", f"say why the case is {'accepted as allowed' if action == 'accept' else 'reopened'}")
    if len(reason) > REASON_MAX_CHARS:
        return Refused("case_reason_required", f"a reason has at most {REASON_MAX_CHARS} characters")
    linked = None
    if action == "resolve":
        if reversal is None or not reversal[0].strip() or not reversal[1].strip():
            return Refused("case_reversal_required", "a resolution names the corrective reversal (source system and reference)")
        if not reversal_found:
            return Refused("case_reversal_not_found", "no reversal is recorded under that source system and reference")
        linked = (reversal[0].strip(), reversal[1].strip())
    return Transition(action, status, to, reason, linked[0] if linked else None, linked[1] if linked else None)
