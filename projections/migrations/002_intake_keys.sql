-- Every idempotency key intake has accepted, with what it was accepted for. The stream keeps
-- keys per person (its state is partitioned by person); keys are global only here, so a
-- reference resent under another NIK is caught at the door.
CREATE TABLE ledger.intake_keys (
    source_system    text   NOT NULL,
    source_ref       text   NOT NULL,
    event_id         uuid   NOT NULL,
    person_token     text   NOT NULL,
    digests          bytea  NOT NULL,
    programme_code   text   NOT NULL,
    period           text   NOT NULL,
    amount_idr       bigint NOT NULL,
    disbursed_at_us  bigint NOT NULL,
    region_code      text   NOT NULL,
    source_type      text   NOT NULL,
    PRIMARY KEY (source_system, source_ref)
);
