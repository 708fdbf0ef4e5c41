-- The ledger's PostgreSQL side. Schema `ledger` holds the outbox (the durable copy of every
-- accepted record before the broker has it), the projections and their tracking offsets.
-- Schema `vault` holds clear identities and is the only place a NIK is stored.

CREATE SCHEMA IF NOT EXISTS ledger;
CREATE SCHEMA IF NOT EXISTS vault;

-- Intake ------------------------------------------------------------------------------------
CREATE TABLE ledger.outbox (
    seq          bigserial PRIMARY KEY,
    event_id     uuid        NOT NULL UNIQUE,      -- the same record submitted twice is stored once
    topic        text        NOT NULL,
    key          bytea       NOT NULL,
    value        bytea       NOT NULL,
    recorded_at  timestamptz NOT NULL
);

CREATE TABLE ledger.relay_cursor (
    relay     text PRIMARY KEY,
    last_seq  bigint NOT NULL
);

-- one past the last offset the relay saw acknowledged, per partition (for `aidledger wait`)
CREATE TABLE ledger.relay_offsets (
    topic        text   NOT NULL,
    partition    int    NOT NULL,
    next_offset  bigint NOT NULL,
    PRIMARY KEY (topic, partition)
);

CREATE TABLE ledger.intake_batches (
    batch_id     uuid PRIMARY KEY,
    source_name  text        NOT NULL,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz,
    accepted     int NOT NULL DEFAULT 0,
    redelivered  int NOT NULL DEFAULT 0,
    rejected     int NOT NULL DEFAULT 0
);

CREATE TABLE ledger.intake_rejections (
    batch_id       uuid   NOT NULL REFERENCES ledger.intake_batches,
    row_number     int    NOT NULL,
    code           text   NOT NULL,
    field          text,
    message        text   NOT NULL,
    source_system  text,
    source_ref     text,
    PRIMARY KEY (batch_id, row_number)
);

-- Projections -------------------------------------------------------------------------------
-- The event archive: every ledger record as it was on the log, with the position it was first
-- projected from. `accepted` is false for a modified resubmission (same reference, other content).
CREATE TABLE ledger.events (
    event_id                 uuid PRIMARY KEY,
    topic                    text   NOT NULL,
    partition                int    NOT NULL,
    "offset"                 bigint NOT NULL,
    source_system            text   NOT NULL,
    source_ref               text   NOT NULL,
    source_type              text   NOT NULL,
    agency_code              text   NOT NULL,
    programme_code           text   NOT NULL,
    person_token             text   NOT NULL,
    identity_kind            text   NOT NULL,
    kk_token                 text,
    amount_idr               bigint NOT NULL CHECK (amount_idr > 0),
    kind                     text   NOT NULL,
    period                   text   NOT NULL,
    disbursed_at             timestamptz NOT NULL,
    disbursed_at_offset_min  int    NOT NULL,
    channel                  text   NOT NULL,
    region_code              text   NOT NULL,
    funding_account          text   NOT NULL,
    recorded_at              timestamptz NOT NULL,
    accepted                 boolean NOT NULL,
    outcome                  text   NOT NULL,
    projected_at             timestamptz NOT NULL DEFAULT now(),
    value                    bytea  NOT NULL
);
CREATE UNIQUE INDEX events_idempotency_key ON ledger.events (source_system, source_ref) WHERE accepted;
CREATE INDEX events_person ON ledger.events (person_token);

CREATE TABLE ledger.person_totals (
    person_token      text   NOT NULL,
    programme_code    text   NOT NULL,
    period            text   NOT NULL,
    amount_idr_total  bigint NOT NULL,
    payments          int    NOT NULL,
    region_code       text   NOT NULL,
    PRIMARY KEY (person_token, programme_code, period)
);

CREATE TABLE ledger.alerts (
    alert_id             text PRIMARY KEY,
    revision             int    NOT NULL,
    rule_id              text   NOT NULL,
    rulebook_version     text   NOT NULL,
    outcome_code         text   NOT NULL,
    subject_kind         text   NOT NULL,
    subject_token        text   NOT NULL,
    programme_code       text   NOT NULL,
    period               text   NOT NULL,
    region_code          text   NOT NULL,
    lines                jsonb  NOT NULL,
    amount_idr_at_stake  bigint NOT NULL,
    amount_idr_total     bigint NOT NULL,
    message              text   NOT NULL,
    first_raised_at      timestamptz NOT NULL,
    raised_at            timestamptz NOT NULL,
    trigger_event_id     text   NOT NULL,
    latency_ms           double precision NOT NULL  -- intake of the triggering event to the alert
);
CREATE INDEX alerts_subject ON ledger.alerts (subject_token);
CREATE INDEX alerts_rule ON ledger.alerts (rule_id);

CREATE TABLE ledger.deadletters (
    source_topic      text   NOT NULL,
    source_partition  int    NOT NULL,
    source_offset     bigint NOT NULL,
    code              text   NOT NULL,
    detail            text   NOT NULL,
    stage             text   NOT NULL,
    topic             text   NOT NULL,
    partition         int    NOT NULL,
    "offset"          bigint NOT NULL,
    value             bytea,
    projected_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source_topic, source_partition, source_offset, code)
);

-- Tracking records: the next offset each projector will read, written in the same transaction
-- as the rows it produced from those offsets.
CREATE TABLE ledger.tracking (
    projector    text   NOT NULL,
    topic        text   NOT NULL,
    partition    int    NOT NULL,
    next_offset  bigint NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projector, topic, partition)
);

-- Identity vault ------------------------------------------------------------------------------
CREATE TABLE vault.identity (
    person_token    text PRIMARY KEY,
    identity_kind   text NOT NULL,
    nik             text,
    provisional_id  text,
    recipient_name  text NOT NULL,
    first_seen_at   timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE vault.household (
    kk_token  text PRIMARY KEY,
    kk        text NOT NULL
);
CREATE TABLE vault.access_log (
    at            timestamptz NOT NULL DEFAULT now(),
    who           text NOT NULL,
    why           text NOT NULL,
    person_token  text NOT NULL
);
