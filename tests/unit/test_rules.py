"""aidcore.rules: every detection rule as a pure function over one subject's live payments of a
period, at its boundaries; and what every alert built from a case says (rule, rulebook version,
regency, village, every line)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from aidcore import explain, rules
from aidcore import rulebook as rb
from aidcore.ledger import case_alert, event_id_text
from aidcore.rules import Entry
from aidcore.rupiah import rupiah
from builders import REGENCY_NAME, REGION_CODE, reference

MEMBER = b"\x01" * 16
OTHER_MEMBER = b"\x02" * 16
THIRD_MEMBER = b"\x03" * 16


def entry(n: int, programme: str = "PKH", amount: int = 750_000, *, person: bytes = MEMBER,
          source: str = "APBN") -> Entry:
    """The n-th payment of a period: event ids and payment times both grow with n."""
    return Entry(n.to_bytes(16, "big"), person, programme, amount, source, 1_775_000_000_000_000 + n * 60_000_000)


def book(**changes) -> rb.Rulebook:
    return replace(rb.default_rulebook(reference()), **changes)


def without(rule_id: str) -> rb.Rulebook:
    shipped = book()
    return replace(shipped, enabled=shipped.enabled - {rule_id})


def ids(case) -> list[int]:
    return [int.from_bytes(e.event_id, "big") for e in case.entries]


# --- duplicate person ----------------------------------------------------------------------------


def test_one_payment_of_a_programme_is_no_duplicate():
    assert rules.duplicate_person([entry(1, "PKH"), entry(2, "BPNT")]) == []


def test_two_payments_of_a_programme_put_the_second_at_stake():
    (case,) = rules.duplicate_person([entry(1, amount=750_000), entry(2, amount=600_000)])
    assert (case.rule_id, case.fingerprint, case.programme_code) == (rb.DUPLICATE_PERSON, "PKH", "PKH")
    assert case.amount_idr_at_stake == 600_000
    assert case.amount_idr_total == 1_350_000


def test_three_payments_put_all_but_the_first_at_stake():
    (case,) = rules.duplicate_person([entry(1, amount=750_000), entry(2, amount=600_000), entry(3, amount=300_000)])
    assert case.amount_idr_at_stake == 900_000
    assert ids(case) == [1, 2, 3]


def test_the_first_payment_is_the_earliest_paid_not_the_first_listed():
    (case,) = rules.duplicate_person([entry(3, amount=300_000), entry(1, amount=750_000), entry(2, amount=600_000)])
    assert ids(case) == [1, 2, 3]
    assert case.amount_idr_at_stake == 900_000


def test_each_duplicated_programme_is_its_own_case():
    cases = rules.duplicate_person([entry(1, "PKH"), entry(2, "PKH"), entry(3, "BPNT", 200_000),
                                    entry(4, "BPNT", 200_000), entry(5, "PIP")])
    assert sorted((c.fingerprint, c.amount_idr_at_stake) for c in cases) == [("BPNT", 200_000), ("PKH", 750_000)]


# --- stacking ------------------------------------------------------------------------------------


def test_exactly_max_programmes_is_no_stacking():
    entries = [entry(1, "PKH"), entry(2, "BPNT"), entry(3, "PIP")]
    assert rules.stacking(rb.STACKING_PERSON, entries, 3) == []


def test_one_programme_more_than_max_puts_it_at_stake():
    entries = [entry(1, "PKH"), entry(2, "BPNT", 200_000), entry(3, "PIP", 450_000), entry(4, "PBI_JK", 42_000)]
    (case,) = rules.stacking(rb.STACKING_PERSON, entries, 3)
    assert (case.rule_id, case.fingerprint, case.programme_code) == (rb.STACKING_PERSON, "", "")
    assert case.amount_idr_at_stake == 42_000
    assert case.amount_idr_total == 750_000 + 200_000 + 450_000 + 42_000
    assert ids(case) == [1, 2, 3, 4]


def test_stacking_puts_at_stake_the_programmes_first_paid_beyond_the_limit_with_all_their_payments():
    # PKH is paid again late, but it was among the first three programmes: only PIP is beyond
    entries = [entry(1, "PKH"), entry(2, "BPNT", 200_000), entry(3, "PBI_JK", 42_000),
               entry(4, "PIP", 450_000), entry(5, "PIP", 450_000), entry(6, "PKH", 750_000)]
    (case,) = rules.stacking(rb.STACKING_PERSON, entries, 3)
    assert case.amount_idr_at_stake == 900_000


def test_stacking_two_beyond_the_limit_counts_both():
    entries = [entry(1, "PKH"), entry(2, "BPNT", 200_000), entry(3, "PIP", 450_000), entry(4, "PBI_JK", 42_000),
               entry(5, "RTLH", 1_000_000)]
    (case,) = rules.stacking(rb.STACKING_HOUSEHOLD, entries, 3)
    assert case.rule_id == rb.STACKING_HOUSEHOLD
    assert case.amount_idr_at_stake == 1_042_000


def test_household_stacking_at_exactly_its_max_is_no_case():
    entries = [entry(1, "PKH"), entry(2, "BPNT", 200_000), entry(3, "PIP", 450_000, person=OTHER_MEMBER),
               entry(4, "PBI_JK", 42_000, person=OTHER_MEMBER)]
    shipped = book()
    assert shipped.household_max_programmes == 4
    assert [c.rule_id for c in rules.household_cases(entries, shipped, reference())
            if c.rule_id == rb.STACKING_HOUSEHOLD] == []
    more = entries + [entry(5, "RTLH", 1_000_000, person=THIRD_MEMBER)]
    (case,) = [c for c in rules.household_cases(more, shipped, reference()) if c.rule_id == rb.STACKING_HOUSEHOLD]
    assert case.amount_idr_at_stake == 1_000_000


# --- household monthly cap -----------------------------------------------------------------------


def test_a_household_total_exactly_at_the_cap_is_no_case():
    entries = [entry(1, "PKH", 2_000_000), entry(2, "BPNT", 1_000_000, person=OTHER_MEMBER)]
    assert rules.cap(entries, 3_000_000) == []


def test_one_rupiah_over_the_cap_is_a_case_with_one_rupiah_at_stake():
    entries = [entry(1, "PKH", 2_000_000), entry(2, "BPNT", 1_000_001, person=OTHER_MEMBER)]
    (case,) = rules.cap(entries, 3_000_000)
    assert (case.rule_id, case.fingerprint, case.programme_code) == (rb.HOUSEHOLD_CAP, "", "")
    assert case.amount_idr_at_stake == 1
    assert case.amount_idr_total == 3_000_001


def test_one_payment_alone_over_the_cap_is_a_case():
    (case,) = [c for c in rules.household_cases([entry(1, "RTLH", 3_500_000)], book(), reference())]
    assert (case.rule_id, case.amount_idr_at_stake) == (rb.HOUSEHOLD_CAP, 500_000)


# --- duplicate household -------------------------------------------------------------------------

HOUSEHOLD_PROGRAMMES = frozenset({"PKH", "BPNT", "BLT_DD"})


def test_two_members_paid_a_per_household_programme_for_one_period_is_a_case():
    entries = [entry(1, "PKH", 750_000), entry(2, "PKH", 600_000, person=OTHER_MEMBER)]
    (case,) = rules.duplicate_household(entries, HOUSEHOLD_PROGRAMMES)
    assert (case.rule_id, case.fingerprint, case.programme_code) == (rb.DUPLICATE_HOUSEHOLD, "PKH", "PKH")
    assert case.amount_idr_at_stake == 600_000
    assert ids(case) == [1, 2]


def test_the_member_paid_first_keeps_the_payment_and_all_of_the_others_are_at_stake():
    entries = [entry(3, "BPNT", 200_000, person=MEMBER), entry(1, "BPNT", 200_000, person=OTHER_MEMBER),
               entry(2, "BPNT", 400_000, person=OTHER_MEMBER), entry(4, "BPNT", 200_000, person=THIRD_MEMBER)]
    (case,) = rules.duplicate_household(entries, HOUSEHOLD_PROGRAMMES)
    assert case.amount_idr_at_stake == 400_000  # MEMBER's and THIRD_MEMBER's, not OTHER_MEMBER's 600_000


def test_the_same_member_paid_twice_is_no_household_case():
    entries = [entry(1, "PKH"), entry(2, "PKH")]
    assert rules.duplicate_household(entries, HOUSEHOLD_PROGRAMMES) == []
    cases = rules.household_cases(entries, book(), reference())
    assert rb.DUPLICATE_HOUSEHOLD not in {c.rule_id for c in cases}


def test_a_per_person_programme_paid_to_two_members_is_no_household_case():
    entries = [entry(1, "PIP", 450_000), entry(2, "PIP", 450_000, person=OTHER_MEMBER)]
    assert rules.duplicate_household(entries, HOUSEHOLD_PROGRAMMES) == []
    assert rules.household_cases(entries, book(), reference()) == []


def test_two_members_paid_in_different_programmes_is_no_household_duplicate():
    entries = [entry(1, "PKH"), entry(2, "BPNT", 200_000, person=OTHER_MEMBER)]
    assert rules.duplicate_household(entries, HOUSEHOLD_PROGRAMMES) == []


# --- exclusive programmes ------------------------------------------------------------------------

EXCLUSIONS = (("BLT_DD", frozenset({"PKH", "BPNT"})),)


def test_blt_dd_with_pkh_puts_the_blt_dd_amount_at_stake():
    entries = [entry(1, "PKH", 750_000), entry(2, "BLT_DD", 300_000, person=OTHER_MEMBER, source="APBDES")]
    (case,) = rules.exclusive(entries, EXCLUSIONS)
    assert (case.rule_id, case.fingerprint, case.programme_code) == (rb.EXCLUSIVE_HOUSEHOLD, "BLT_DD", "BLT_DD")
    assert case.amount_idr_at_stake == 300_000
    assert ids(case) == [1, 2]


def test_blt_dd_with_bpnt_is_a_case_too_and_only_the_programmes_involved_are_lines():
    entries = [entry(1, "BPNT", 200_000), entry(2, "BLT_DD", 300_000, source="APBDES"),
               entry(3, "BLT_DD", 300_000, source="APBDES"), entry(4, "PIP", 450_000)]
    (case,) = rules.exclusive(entries, EXCLUSIONS)
    assert case.amount_idr_at_stake == 600_000
    assert ids(case) == [1, 2, 3]


@pytest.mark.parametrize("programmes", [["BLT_DD"], ["PKH", "BPNT"], ["BLT_DD", "PIP", "RTLH"]],
                         ids=["blt-dd-alone", "pkh-and-bpnt", "blt-dd-with-unrelated"])
def test_no_exclusive_case_without_an_excluded_pair(programmes):
    entries = [entry(i, p, 300_000) for i, p in enumerate(programmes, 1)]
    assert rules.exclusive(entries, EXCLUSIONS) == []
    assert rb.EXCLUSIVE_HOUSEHOLD not in {c.rule_id for c in rules.household_cases(entries, book(), reference())}


# --- non-government aid of the same kind ---------------------------------------------------------

NON_GOVERNMENT = frozenset({"CSR", "COMMUNITY"})


def test_csr_food_aid_with_government_food_aid_puts_the_csr_amount_at_stake():
    assert reference().programmes["CSR_PANGAN"].kind_group == reference().programmes["BPNT"].kind_group == "food"
    entries = [entry(1, "BPNT", 200_000), entry(2, "CSR_PANGAN", 150_000, person=OTHER_MEMBER, source="CSR")]
    (case,) = rules.non_government_same_kind(entries, NON_GOVERNMENT, reference())
    assert (case.rule_id, case.fingerprint, case.programme_code) == (rb.NON_GOVERNMENT_SAME_KIND, "food", "")
    assert case.amount_idr_at_stake == 150_000
    assert ids(case) == [1, 2]


def test_community_aid_of_the_same_kind_is_a_case_too():
    entries = [entry(1, "ZAKAT_FITRAH", 100_000, source="COMMUNITY"), entry(2, "PROV_SEMBAKO", 250_000,
                                                                             source="APBD_PROV")]
    (case,) = rules.non_government_same_kind(entries, NON_GOVERNMENT, reference())
    assert case.amount_idr_at_stake == 100_000


def test_csr_aid_of_another_kind_is_no_case():
    entries = [entry(1, "BPNT", 200_000), entry(2, "RTLH", 1_000_000, source="CSR")]
    assert rules.non_government_same_kind(entries, NON_GOVERNMENT, reference()) == []


def test_csr_aid_alone_is_no_case():
    entries = [entry(1, "CSR_PANGAN", 150_000, source="CSR"), entry(2, "ZAKAT_FITRAH", 100_000, source="COMMUNITY")]
    assert rules.non_government_same_kind(entries, NON_GOVERNMENT, reference()) == []


def test_only_the_listed_source_types_count_as_non_government():
    entries = [entry(1, "BPNT", 200_000), entry(2, "CSR_PANGAN", 150_000, source="CSR")]
    assert rules.non_government_same_kind(entries, frozenset({"COMMUNITY"}), reference()) == []


# --- the rulebook switches rules -----------------------------------------------------------------


def person_entries() -> list[Entry]:
    """One person's period that breaks both person rules."""
    return [entry(1, "PKH"), entry(2, "PKH"), entry(3, "BPNT", 200_000), entry(4, "PIP", 450_000),
            entry(5, "PBI_JK", 42_000)]


def household_entries() -> list[Entry]:
    """One household's period that breaks every household rule."""
    return [entry(1, "PKH", 750_000), entry(2, "PKH", 750_000, person=OTHER_MEMBER),
            entry(3, "BPNT", 200_000), entry(4, "BLT_DD", 300_000, source="APBDES"),
            entry(5, "CSR_PANGAN", 150_000, source="CSR"), entry(6, "RTLH", 2_000_000, source="APBD_KAB")]


def test_with_every_rule_on_each_rule_finds_its_case():
    assert {c.rule_id for c in rules.person_cases(person_entries(), book())} == {rb.DUPLICATE_PERSON,
                                                                                  rb.STACKING_PERSON}
    assert {c.rule_id for c in rules.household_cases(household_entries(), book(), reference())} == set(
        rb.HOUSEHOLD_RULES)


@pytest.mark.parametrize("rule_id", [rb.DUPLICATE_PERSON, rb.STACKING_PERSON])
def test_a_disabled_person_rule_finds_nothing(rule_id):
    found = {c.rule_id for c in rules.person_cases(person_entries(), without(rule_id))}
    assert found == {rb.DUPLICATE_PERSON, rb.STACKING_PERSON} - {rule_id}


@pytest.mark.parametrize("rule_id", rb.HOUSEHOLD_RULES)
def test_a_disabled_household_rule_finds_nothing(rule_id):
    found = {c.rule_id for c in rules.household_cases(household_entries(), without(rule_id), reference())}
    assert found == set(rb.HOUSEHOLD_RULES) - {rule_id}


def test_a_rulebook_with_no_rule_on_finds_nothing():
    off = book(enabled=frozenset())
    assert rules.person_cases(person_entries(), off) == []
    assert rules.household_cases(household_entries(), off, reference()) == []


def test_household_rules_are_not_person_rules_and_the_reverse():
    assert {c.rule_id for c in rules.person_cases(household_entries(), book())} <= set(rb.PERSON_RULES)
    assert {c.rule_id for c in rules.household_cases(person_entries(), book(), reference())} <= set(rb.HOUSEHOLD_RULES)


def test_a_case_depends_on_the_entry_set_not_its_order():
    entries = household_entries()
    forward = rules.household_cases(entries, book(), reference())
    backward = rules.household_cases(list(reversed(entries)), book(), reference())
    assert sorted(forward, key=lambda c: (c.rule_id, c.fingerprint)) == sorted(
        backward, key=lambda c: (c.rule_id, c.fingerprint))


# --- alerts built from cases ---------------------------------------------------------------------

HOUSEHOLD_TOKEN = "ab" * 16


def alerts_of(cases, subject_kind: str = "HOUSEHOLD", shipped: rb.Rulebook | None = None):
    shipped = shipped or book()
    return [case_alert(c, subject_kind, HOUSEHOLD_TOKEN, "2026-04", REGION_CODE, shipped, reference(),
                       "trigger", 1, 2, len(c.entries), {}) for c in cases]


def every_case() -> list[rules.Case]:
    return rules.person_cases(person_entries(), book()) + rules.household_cases(household_entries(), book(),
                                                                                 reference())


def test_every_alert_carries_its_rule_id_and_the_rulebook_version():
    shipped = book(version="2026-12-rev2")
    cases = every_case()
    alerts = alerts_of(cases, shipped=shipped)
    assert {a.rule_id for a in alerts} == set(rb.RULE_IDS) - {rb.MODIFIED_RESUBMISSION}
    assert [a.rule_id for a in alerts] == [c.rule_id for c in cases]
    assert all(a.rulebook_version == "2026-12-rev2" for a in alerts)


def test_every_alert_message_names_the_regency_the_village_and_every_line():
    for alert in alerts_of(every_case()):
        assert REGENCY_NAME in alert.message, alert.rule_id
        assert f"village {REGION_CODE}" in alert.message, alert.rule_id
        for line in alert.lines:
            assert explain.describe_line(line) in alert.message, (alert.rule_id, line)
            assert rupiah(line.amount_idr) in alert.message
        assert rupiah(alert.amount_idr_at_stake) in alert.message, alert.rule_id


def test_alert_lines_follow_the_case_entries_with_member_and_source():
    (case,) = rules.duplicate_household([entry(1, "PKH"), entry(2, "PKH", person=OTHER_MEMBER, source="APBD_PROV")],
                                        HOUSEHOLD_PROGRAMMES)
    (alert,) = alerts_of([case])
    assert [(x.event_id, x.amount_idr, x.programme_code, x.person_token, x.source_type) for x in alert.lines] == [
        (event_id_text(e.event_id), e.amount_idr, "PKH", e.person.hex(), e.source_type) for e in case.entries]
    assert alert.subject_kind == "HOUSEHOLD" and alert.subject_token == HOUSEHOLD_TOKEN
    assert alert.amount_idr_total == 1_500_000
    assert "2 different members" in alert.message


def test_thresholds_are_carried_and_named_for_the_cap_and_stacking():
    by_rule = {a.rule_id: a for a in alerts_of(every_case())}
    assert by_rule[rb.HOUSEHOLD_CAP].threshold == 3_000_000
    assert "Rp 3.000.000" in by_rule[rb.HOUSEHOLD_CAP].message
    assert by_rule[rb.STACKING_HOUSEHOLD].threshold == 4
    assert by_rule[rb.STACKING_PERSON].threshold == 3
    assert by_rule[rb.DUPLICATE_PERSON].threshold == 0


def test_a_void_alert_says_it_no_longer_holds():
    (case,) = rules.cap([entry(1, "RTLH", 3_500_000)], 3_000_000)
    alert = case_alert(case, "HOUSEHOLD", HOUSEHOLD_TOKEN, "2026-04", REGION_CODE, book(), reference(), "t", 1, 2, 3,
                       {}, status="void_reversed")
    assert (alert.status, alert.outcome_code) == ("void_reversed", "void_reversed")
    assert alert.message.startswith("No longer holds")
    assert REGENCY_NAME in alert.message
