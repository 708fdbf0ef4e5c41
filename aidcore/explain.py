"""Alerts in words a PMO officer understands.

The message is a pure function of the alert's content (rule, subject, period, lines, amounts,
threshold, status), so the projection can render it again once it knows the source references of
lines the stream only knew by event id.
"""

from __future__ import annotations

from typing import Sequence

from aidcore import rulebook as rb
from aidcore.reference import Reference
from aidcore.rupiah import local_time, rupiah


def describe_line(line) -> str:
    source = f"by {line.source_system} ref {line.source_ref}" if line.source_system else f"in event {line.event_id[:8]}"
    what = f"{line.programme_code} " if getattr(line, "programme_code", "") else ""
    return f"{what}{rupiah(line.amount_idr)} {source} on {local_time(line.disbursed_at_us)[:10]}"


def _programme(code: str, reference: Reference) -> str:
    p = reference.programmes.get(code)
    return f"{code} ({p.name})" if p is not None else code


def _where(subject_kind: str, region_code: str, reference: Reference) -> str:
    who = "One household" if subject_kind == "HOUSEHOLD" else "One person"
    if not region_code:  # a case a reversal changed in the person stage: the reversal names no village
        return f"{who} (village not known to this event)"
    return f"{who} in {reference.regency_name(region_code)} (village {region_code})"


def message(rule_id: str, subject_kind: str, region_code: str, programme_code: str, period: str,
            lines: Sequence, at_stake: int, threshold: int, status: str, reference: Reference) -> str:
    listed = "; ".join(describe_line(x) for x in lines)
    where = _where(subject_kind, region_code, reference)
    members = len({getattr(x, "person_token", "") for x in lines})
    if rule_id == rb.DUPLICATE_PERSON:
        text = (f"{where} was paid {_programme(programme_code, reference)} for {period} {len(lines)} times: "
                f"{listed}. {rupiah(at_stake)} paid beyond the first payment.")
    elif rule_id == rb.DUPLICATE_HOUSEHOLD:
        text = (f"{where} was paid {_programme(programme_code, reference)}, a per-household programme, for {period} "
                f"through {members} different members: {listed}. {rupiah(at_stake)} paid to members after the first.")
    elif rule_id == rb.EXCLUSIVE_HOUSEHOLD:
        others = sorted({x.programme_code for x in lines} - {programme_code})
        text = (f"{where} was paid {_programme(programme_code, reference)} for {period} while also receiving "
                f"{', '.join(others)}, which the rules exclude together: {listed}. "
                f"{rupiah(at_stake)} of {programme_code} is at stake.")
    elif rule_id in (rb.STACKING_PERSON, rb.STACKING_HOUSEHOLD):
        programmes = sorted({x.programme_code for x in lines})
        text = (f"{where} received {len(programmes)} different programmes for {period} ({', '.join(programmes)}), "
                f"more than the {threshold} the rulebook allows: {listed}. "
                f"{rupiah(at_stake)} came from the programmes beyond the limit.")
    elif rule_id == rb.HOUSEHOLD_CAP:
        total = sum(x.amount_idr for x in lines)
        text = (f"{where} received {rupiah(total)} in aid for {period}, above the monthly cap of {rupiah(threshold)}: "
                f"{listed}. {rupiah(at_stake)} above the cap.")
    elif rule_id == rb.NON_GOVERNMENT_SAME_KIND:
        text = (f"{where} received aid from CSR or community sources of the same kind as government aid it already "
                f"got for {period}: {listed}. {rupiah(at_stake)} of non-government aid duplicates it.")
    else:
        text = f"{where}: rule {rule_id} for {period}: {listed}."
    if status == "void_reversed":
        text = ("No longer holds: a payment of this case was reversed, and without it the rule is not broken. "
                "Was: " + text)
    return text
