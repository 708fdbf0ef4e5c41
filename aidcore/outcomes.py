"""Named outcome codes, listed in the order they are checked.

An outcome is a value, never an exception: shells turn it into an HTTP status, a rejection-report
row, a dead-letter header or a counter label. The order here is the order of the checks in
`aidcore.intake.validate_record` and `aidcore.ledger.decide`; the first failing check wins.
"""

from __future__ import annotations

from aidcore.registries import REGISTRY_CODES
from aidcore.spreadsheet import SPREADSHEET_CODES

ACCEPTED = "accepted"
EXISTS = "exists"  # same idempotency key, same content: a harmless redelivery

# Intake checks, in precedence order.
INTAKE_CODES: tuple[str, ...] = (
    "record_must_be_an_object",
    "field_unknown",
    "source_system_required",
    "source_ref_required",
    "source_system_too_long",
    "source_ref_too_long",
    "source_type_unknown",
    "agency_code_required",
    "programme_code_required",
    "programme_code_unknown",
    "programme_inactive",
    "identity_required",
    "nik_must_be_16_ascii_digits",
    "nik_province_invalid",
    "nik_birth_date_invalid",
    "nik_serial_invalid",
    "provisional_id_invalid",
    "kk_must_be_16_ascii_digits",
    "amount_idr_required",
    "amount_idr_must_be_integer",
    "amount_idr_must_be_whole_rupiah",
    "amount_idr_must_be_positive",
    "amount_idr_too_large",
    "kind_unknown",
    "period_must_be_yyyy_mm",
    "disbursed_at_invalid",
    "disbursed_at_needs_offset",
    "disbursed_at_in_future",
    "period_out_of_range",
    "channel_unknown",
    "region_code_must_be_10_ascii_digits",
    "funding_account_required",
)

# A reversal's intake checks, in precedence order (codes shared with disbursements where the
# check is the same).
REVERSAL_INTAKE_CODES: tuple[str, ...] = (
    "record_type_unknown",
    "field_unknown",
    "source_system_required",
    "source_ref_required",
    "source_system_too_long",
    "source_ref_too_long",
    "original_source_ref_required",
    "original_source_ref_too_long",
    "reversal_names_itself",
    "agency_code_required",
    "identity_required",
    "nik_must_be_16_ascii_digits",
    "nik_province_invalid",
    "nik_birth_date_invalid",
    "nik_serial_invalid",
    "provisional_id_invalid",
    "amount_idr_required",
    "amount_idr_must_be_integer",
    "amount_idr_must_be_whole_rupiah",
    "amount_idr_must_be_positive",
    "amount_idr_too_large",
    "reason_required",
    "reason_too_long",
    "reversed_at_invalid",
    "reversed_at_needs_offset",
    "reversed_at_in_future",
)

# The budget side's intake checks (record_type "allocation" and "release"), in precedence order.
ALLOCATION_INTAKE_CODES: tuple[str, ...] = (
    "record_type_unknown",
    "field_unknown",
    "source_system_required",
    "source_ref_required",
    "source_system_too_long",
    "source_ref_too_long",
    "source_type_unknown",
    "funding_account_required",
    "funding_account_too_long",
    "agency_code_required",
    "programme_code_required",
    "programme_code_unknown",
    "programme_inactive",
    "fiscal_year_invalid",
    "amount_idr_required",
    "amount_idr_must_be_integer",
    "amount_idr_must_be_whole_rupiah",
    "amount_idr_must_be_positive",
    "amount_idr_too_large",
    "allocated_at_invalid",
    "allocated_at_needs_offset",
    "allocated_at_in_future",
)
RELEASE_INTAKE_CODES: tuple[str, ...] = (
    "record_type_unknown",
    "field_unknown",
    "source_system_required",
    "source_ref_required",
    "source_system_too_long",
    "source_ref_too_long",
    "source_type_unknown",
    "funding_account_required",
    "funding_account_too_long",
    "agency_code_required",
    "amount_idr_required",
    "amount_idr_must_be_integer",
    "amount_idr_must_be_whole_rupiah",
    "amount_idr_must_be_positive",
    "amount_idr_too_large",
    "released_at_invalid",
    "released_at_needs_offset",
    "released_at_in_future",
)

# Content fields compared for an idempotency key, in the order they are compared: the first
# field that differs names the outcome `exists_with_different_<field>`.
CONTENT_FIELDS: tuple[str, ...] = (
    "nik",
    "programme_code",
    "period",
    "amount_idr",
    "kind",
    "channel",
    "disbursed_at",
    "agency_code",
    "source_type",
    "funding_account",
    "region_code",
    "kk",
)

# The same for a reversal's content.
REVERSAL_CONTENT_FIELDS: tuple[str, ...] = (
    "nik",
    "original_source_system",
    "original_source_ref",
    "amount_idr",
    "reason",
    "reversed_at",
    "agency_code",
)

# The same for the budget side. No stream decides these: intake (and the projection, as a second
# line) keeps the first version under a key and refuses another with exists_with_different_<field>.
ALLOCATION_CONTENT_FIELDS: tuple[str, ...] = (
    "source_type",
    "funding_account",
    "agency_code",
    "programme_code",
    "fiscal_year",
    "amount_idr",
    "allocated_at",
)
RELEASE_CONTENT_FIELDS: tuple[str, ...] = (
    "source_type",
    "funding_account",
    "agency_code",
    "amount_idr",
    "released_at",
)
BUDGET_KEY_CODES: tuple[str, ...] = tuple(
    dict.fromkeys(f"exists_with_different_{f}" for f in ALLOCATION_CONTENT_FIELDS + RELEASE_CONTENT_FIELDS)
)

REVERSAL_PENDING = "reversal_pending"  # accepted; its original is not in the ledger yet
PASSED_BY = "passed_by"  # a budget record read by the person stage: it concerns no person, nothing to decide

# Reversal outcomes the stream decides (dead-lettered).
REVERSAL_CODES: tuple[str, ...] = (
    "reversal_exceeds_original",  # more than what is left of the original after earlier reversals
    "reversal_of_a_reversal",  # the named original is itself a reversal
    "reversal_original_unknown",  # the original did not arrive within the rulebook's wait
)

STREAM_CODES: tuple[str, ...] = tuple(
    dict.fromkeys(f"exists_with_different_{f}" for f in CONTENT_FIELDS + REVERSAL_CONTENT_FIELDS)
) + ("exists_with_different_content", "exists_with_different_record_type") + REVERSAL_CODES

# Dead-letter codes raised by shells before the core sees a record.
WIRE_CODES: tuple[str, ...] = (
    "value_missing",
    "avro_marker_invalid",
    "schema_fingerprint_unknown",
    "avro_body_malformed",
    "text_encoding_invalid",  # a string field whose bytes are not UTF-8
)

# Codes of the submissions topic's door (connectors.door), where agency systems produce directly
# (connectors.sdk). Checked after WIRE_CODES, in this order; then the opened input record is
# checked with the gateway's codes (INTAKE_CODES, REVERSAL_INTAKE_CODES), then for scope
# (`agency_out_of_scope`: no registered agency may submit it), then for its idempotency key.
DOOR_CODES: tuple[str, ...] = (
    "value_too_large",  # more bytes than the door reads (the dead letter keeps a cut copy)
    "schema_mismatch",  # a record of a known schema that this topic does not carry (e.g. an alert)
    "identity_not_sealed",  # identity fields (nik, provisional_id, kk, recipient_name) in the clear part
    "identity_seal_invalid",  # the sealed identity does not open: unknown key id, wrong key, changed or moved
)

# Codes of the HTTP gateway (connectors.gateway), in the order a request is checked. A record in
# a request is then checked with INTAKE_CODES, REVERSAL_INTAKE_CODES, ALLOCATION_INTAKE_CODES or
# RELEASE_INTAKE_CODES, then for scope, then for its idempotency key (`exists` or
# `exists_with_different_<field>`).
GATEWAY_CODES: tuple[str, ...] = (
    "body_too_large",  # more bytes than AIDLEDGER_GATEWAY_MAX_BODY_BYTES (declared or sent)
    "unauthenticated",  # no API key, a malformed one, an unknown one or a revoked one
    "rate_limited",  # the client's token bucket is empty
    "body_not_json",  # not UTF-8 JSON
    "batch_must_be_an_object",  # a batch is {"count": n, "total_idr": t, "records": [...]}
    "batch_declaration_invalid",  # count or total_idr not a whole number >= 0, records not a list
    "batch_too_large",  # more than 1,000 records
    "batch_declaration_mismatch",  # count or total_idr differ from the records sent
    "batch_has_rejected_records",  # some record failed intake: the batch is rejected whole
    "agency_out_of_scope",  # another agency's code, programme or source system
    "batch_has_conflicts",  # some record's key exists with other content: the batch is rejected whole
    "not_found",  # nothing under that key that this agency may read
    "request_invalid",  # a path or query parameter the framework could not read
    "storage_unavailable",  # PostgreSQL did not commit: nothing was accepted, retry
)

# Codes of file reading before intake: a line that is not JSON or UTF-8, and the typed cells of
# an Excel sheet (aidcore.spreadsheet), in the order a cell is checked.
FILE_CODES: tuple[str, ...] = ("invalid_json", "invalid_text_encoding") + SPREADSHEET_CODES

ALL_CODES: tuple[str, ...] = tuple(dict.fromkeys(INTAKE_CODES + REVERSAL_INTAKE_CODES + ALLOCATION_INTAKE_CODES
                                                 + RELEASE_INTAKE_CODES + STREAM_CODES + BUDGET_KEY_CODES
                                                 + WIRE_CODES + DOOR_CODES + GATEWAY_CODES + FILE_CODES
                                                 + REGISTRY_CODES))


def exists_with_different(field: str) -> str:
    return f"exists_with_different_{field}"
