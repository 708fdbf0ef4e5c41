"""aidcore.rulebook: the shipped rulebook parses, and every kind of mistake in a rulebook file is
refused with a RulebookError whose message names the key at fault."""

from __future__ import annotations

import pytest

from aidcore import rulebook as rb
from aidcore.rulebook import RulebookError, default_rulebook, default_rulebook_text, parse_rulebook
from builders import reference

TEXT = default_rulebook_text()
EXCLUSIONS = 'exclusions = [\n    { programme = "BLT_DD", excludes = ["PKH", "BPNT"] },\n]'


def parse(text: str) -> rb.Rulebook:
    return parse_rulebook(text, reference())


def edited(old: str, new: str, text: str = TEXT) -> str:
    """The shipped text with one exact fragment replaced (the fragment must be there once)."""
    assert text.count(old) == 1, f"{old!r} is not in the rulebook text exactly once"
    return text.replace(old, new)


def refused(text: str) -> str:
    with pytest.raises(RulebookError) as caught:
        parse(text)
    return str(caught.value)


# --- the shipped rulebook ------------------------------------------------------------------------


def test_the_shipped_rulebook_parses_with_every_rule_on():
    book = default_rulebook(reference())
    assert book.version == "2026-11-01"
    assert book.enabled == frozenset(rb.RULE_IDS)
    assert book.household_programmes == {"PKH", "BPNT", "BLT_DD"}
    assert book.exclusions == (("BLT_DD", frozenset({"PKH", "BPNT"})),)
    assert (book.person_max_programmes, book.household_max_programmes) == (3, 4)
    assert book.household_cap_idr == 3_000_000
    assert book.non_government_sources == {"CSR", "COMMUNITY"}
    assert book.reversal_wait_s == 604_800
    assert book.text == TEXT


def test_describe_gives_the_settings_as_plain_data():
    described = default_rulebook(reference()).describe()
    assert described["version"] == "2026-11-01"
    assert described["enabled"] == sorted(rb.RULE_IDS)
    assert described["exclusions"] == {"BLT_DD": ["BPNT", "PKH"]}
    assert described["household_cap_idr"] == 3_000_000


def test_the_digest_identifies_the_exact_text():
    book = parse(TEXT)
    assert book.digest == parse(TEXT).digest
    assert len(book.digest) == 64
    # a changed comment leaves every setting alone but is another text
    commented = parse(TEXT + "\n# reviewed\n")
    assert commented.digest != book.digest
    assert commented.describe() | {"digest": ""} == book.describe() | {"digest": ""}
    assert parse(edited("cap_idr = 3_000_000", "cap_idr = 3_000_001")).digest != book.digest


def test_a_disabled_rule_is_off_and_needs_no_settings():
    text = edited("enabled = true\ncap_idr = 3_000_000", "enabled = false")
    book = parse(text)
    assert not book.on(rb.HOUSEHOLD_CAP)
    assert book.enabled == frozenset(rb.RULE_IDS) - {rb.HOUSEHOLD_CAP}


def test_a_rule_left_out_of_the_file_is_off():
    section = TEXT[TEXT.index("[rules.non_government_same_kind]"):TEXT.index("[reversals]")]
    book = parse(edited(section, ""))
    assert not book.on(rb.NON_GOVERNMENT_SAME_KIND)
    assert book.enabled == frozenset(rb.RULE_IDS) - {rb.NON_GOVERNMENT_SAME_KIND}


def test_a_rule_table_without_enabled_is_on():
    book = parse(edited("[rules.household_monthly_cap]\n# Total aid to one household in a period above cap_idr "
                        "(exactly the cap is allowed).\nenabled = true\n",
                        "[rules.household_monthly_cap]\n"))
    assert book.on(rb.HOUSEHOLD_CAP)


def test_the_minimal_rulebook_has_a_version_only():
    book = parse('version = "v0"\n')
    assert book.version == "v0"
    assert book.enabled == frozenset()


def test_the_version_is_trimmed():
    assert parse(edited('version = "2026-11-01"', 'version = "  2026-12  "')).version == "2026-12"


# --- errors name the key -------------------------------------------------------------------------

ERRORS = {
    "unknown top-level key": (edited('version = "2026-11-01"', 'version = "2026-11-01"\nthreshold = 3'), "threshold"),
    "unknown rule": (TEXT + "\n[rules.duplicate_village]\nenabled = true\n", "rules.duplicate_village"),
    "unknown key in a rule table": (edited("max_programmes = 3", "max_programmes = 3\nnote = 'x'"),
                                    "rules.stacking_programmes_person.note"),
    "misspelt threshold": (edited("cap_idr = 3_000_000", "cap_rupiah = 3_000_000"),
                           "rules.household_monthly_cap.cap_rupiah"),
    "threshold as text": (edited("cap_idr = 3_000_000", 'cap_idr = "3000000"'), "rules.household_monthly_cap.cap_idr"),
    "threshold with a fraction": (edited("cap_idr = 3_000_000", "cap_idr = 3000000.5"),
                                  "rules.household_monthly_cap.cap_idr"),
    "threshold as a whole float": (edited("max_programmes = 4", "max_programmes = 4.0"),
                                   "rules.stacking_programmes_household.max_programmes"),
    "zero threshold": (edited("cap_idr = 3_000_000", "cap_idr = 0"), "rules.household_monthly_cap.cap_idr"),
    "negative threshold": (edited("max_programmes = 3", "max_programmes = -1"),
                           "rules.stacking_programmes_person.max_programmes"),
    "boolean threshold": (edited("max_programmes = 3", "max_programmes = true"),
                          "rules.stacking_programmes_person.max_programmes"),
    "enabled not a boolean": (edited("enabled = true\nmax_programmes = 3", 'enabled = "yes"\nmax_programmes = 3'),
                              "rules.stacking_programmes_person.enabled"),
    "unknown programme": (edited('programmes = ["PKH", "BPNT", "BLT_DD"]', 'programmes = ["PKH", "BNPT"]'),
                          "rules.duplicate_household_programme_period.programmes"),
    "empty programme list": (edited('programmes = ["PKH", "BPNT", "BLT_DD"]', "programmes = []"),
                             "rules.duplicate_household_programme_period.programmes"),
    "unknown source type": (edited('source_types = ["CSR", "COMMUNITY"]', 'source_types = ["CSR", "NGO"]'),
                            "rules.non_government_same_kind.source_types"),
    "unknown excluding programme": (edited('{ programme = "BLT_DD"', '{ programme = "BLT_DS"'),
                                    "rules.exclusive_programmes_household.exclusions[0].programme"),
    "unknown excluded programme": (edited('excludes = ["PKH", "BPNT"]', 'excludes = ["PKH", "KIS"]'),
                                   "rules.exclusive_programmes_household.exclusions[0].excludes"),
    "programme excluding itself": (edited('excludes = ["PKH", "BPNT"]', 'excludes = ["PKH", "BLT_DD"]'),
                                   "rules.exclusive_programmes_household.exclusions[0].excludes"),
    "exclusion naming a list as its programme": (edited('{ programme = "BLT_DD"', '{ programme = ["BLT_DD"]'),
                                                 "rules.exclusive_programmes_household.exclusions[0].programme"),
    "programme listed twice in exclusions": (edited(EXCLUSIONS, 'exclusions = [\n    { programme = "BLT_DD", '
                                                               'excludes = ["PKH"] },\n    { programme = "BLT_DD", '
                                                               'excludes = ["BPNT"] },\n]'),
                                             "rules.exclusive_programmes_household.exclusions[1].programme"),
    "exclusions not a list": (edited(EXCLUSIONS, 'exclusions = "BLT_DD"'),
                              "rules.exclusive_programmes_household.exclusions"),
    "exclusion not a table": (edited(EXCLUSIONS, 'exclusions = ["BLT_DD"]'),
                              "rules.exclusive_programmes_household.exclusions[0]"),
    "missing threshold of an enabled rule": (edited("cap_idr = 3_000_000\n", ""), "rules.household_monthly_cap.cap_idr"),
    "missing programmes of an enabled rule": (edited('programmes = ["PKH", "BPNT", "BLT_DD"]\n', ""),
                                              "rules.duplicate_household_programme_period.programmes"),
    "rule that is not a table": (TEXT.replace("[rules.duplicate_person_programme_period]\n# One person paid the same "
                                              "programme for the same period more than once, under any references.\n"
                                              "enabled = true\n", "")
                                 .replace('version = "2026-11-01"',
                                          'version = "2026-11-01"\nrules.duplicate_person_programme_period = 1'),
                                 "rules.duplicate_person_programme_period"),
    "empty version": (edited('version = "2026-11-01"', 'version = ""'), "version"),
    "blank version": (edited('version = "2026-11-01"', 'version = "   "'), "version"),
    "missing version": (edited('version = "2026-11-01"\n', ""), "version"),
    "version not a string": (edited('version = "2026-11-01"', "version = 20261101"), "version"),
    "unknown reversals key": (edited("wait_seconds = 604_800", "wait_second = 604_800"), "reversals.wait_second"),
    "zero reversal wait": (edited("wait_seconds = 604_800", "wait_seconds = 0"), "reversals.wait_seconds"),
}


@pytest.mark.parametrize(("text", "key"), list(ERRORS.values()), ids=list(ERRORS))
def test_each_error_names_its_key(text, key):
    message = refused(text)
    assert message.startswith("rulebook ")
    assert key in message, message


def test_an_unknown_key_error_lists_the_known_keys():
    message = refused(edited("cap_idr = 3_000_000", "cap_rupiah = 3_000_000"))
    assert "is not a known key" in message and "cap_idr" in message and "enabled" in message


def test_invalid_toml_is_a_rulebook_error():
    message = refused(TEXT + "\n[rules.household_monthly_cap\n")
    assert "not valid TOML" in message


def test_a_repeated_rule_table_is_invalid_toml():
    assert "not valid TOML" in refused(TEXT + "\n[rules.household_monthly_cap]\nenabled = false\n")


def test_a_programme_excluding_itself_is_named_in_the_message():
    message = refused(edited('excludes = ["PKH", "BPNT"]', 'excludes = ["BLT_DD"]'))
    assert "BLT_DD cannot exclude itself" in message


def test_two_exclusions_of_different_programmes_are_kept_apart():
    text = edited(EXCLUSIONS, 'exclusions = [\n    { programme = "BLT_DD", excludes = ["PKH", "BPNT"] },\n'
                              '    { programme = "CSR_PANGAN", excludes = ["BPNT"] },\n]')
    assert parse(text).exclusions == (("BLT_DD", frozenset({"PKH", "BPNT"})), ("CSR_PANGAN", frozenset({"BPNT"})))


def test_an_unknown_code_is_named_in_the_message():
    assert "BNPT" in refused(edited('programmes = ["PKH", "BPNT", "BLT_DD"]', 'programmes = ["BNPT"]'))
    assert "NGO" in refused(edited('source_types = ["CSR", "COMMUNITY"]', 'source_types = ["NGO"]'))


def test_the_threshold_of_a_disabled_rule_is_still_checked():
    text = edited("enabled = true\ncap_idr = 3_000_000", "enabled = false\ncap_idr = -5")
    assert "rules.household_monthly_cap.cap_idr" in refused(text)


def test_a_version_longer_than_64_characters_is_refused():
    assert parse(edited('version = "2026-11-01"', f'version = "{"v" * 64}"')).version == "v" * 64
    assert "version" in refused(edited('version = "2026-11-01"', f'version = "{"v" * 65}"'))
