-- The money trail, treasury to recipient: budget records as they came, reversals as the stream
-- decided them, the postings (legs) of every event, and balances per account. Written by the
-- projector in the same transaction as the archive rows and the tracking records.
-- The chart of accounts and the legs of each event are aidcore.postings'.

-- What kind of record intake accepted under each key (NULL for keys recorded before: a
-- reversal's row is then the one without a programme).
ALTER TABLE ledger.intake_keys ADD COLUMN record_type text;

-- Allocations (a budget line's money for an agency's programme) and treasury releases (cash
-- to an agency). `accepted` is false for another version under a key already recorded.
CREATE TABLE ledger.budget_events (
    event_id                 uuid PRIMARY KEY,
    record_type              text   NOT NULL CHECK (record_type IN ('allocation', 'release')),
    source_system            text   NOT NULL,
    source_ref               text   NOT NULL,
    source_type              text   NOT NULL,
    funding_account          text   NOT NULL,
    agency_code              text   NOT NULL,
    programme_code           text,            -- allocations only
    fiscal_year              int,             -- allocations only
    amount_idr               bigint NOT NULL CHECK (amount_idr > 0),
    effective_at             timestamptz NOT NULL,  -- allocated_at or released_at
    effective_at_offset_min  int    NOT NULL,
    recorded_at              timestamptz NOT NULL,
    accepted                 boolean NOT NULL,
    outcome                  text   NOT NULL,
    topic                    text   NOT NULL,
    partition                int    NOT NULL,
    "offset"                 bigint NOT NULL,
    projected_at             timestamptz NOT NULL DEFAULT now(),
    value                    bytea  NOT NULL
);
CREATE UNIQUE INDEX budget_events_idempotency_key ON ledger.budget_events (source_system, source_ref) WHERE accepted;
CREATE INDEX budget_events_line ON ledger.budget_events (funding_account, agency_code);

-- Reversals the person stage took into its state, as its changelog says: `pending` while it
-- waits for its original, `applied` once it took effect, `removed` when the stream dropped it
-- (its dead letter says why). `applied_at` is set when its legs are posted: the later of its
-- own and its original's intake time. The position is where it was on the ledger topic.
CREATE TABLE ledger.reversals (
    event_id                uuid PRIMARY KEY,
    source_system           text   NOT NULL,
    source_ref              text   NOT NULL,
    original_source_system  text   NOT NULL,
    original_source_ref     text   NOT NULL,
    agency_code             text   NOT NULL,
    person_token            text   NOT NULL,
    identity_kind           text   NOT NULL,
    amount_idr              bigint NOT NULL CHECK (amount_idr > 0),
    reason                  text   NOT NULL,
    reversed_at             timestamptz NOT NULL,
    reversed_at_offset_min  int    NOT NULL,
    recorded_at             timestamptz NOT NULL,
    status                  text   NOT NULL CHECK (status IN ('pending', 'applied', 'removed')),
    original_event_id       uuid,
    applied_at              timestamptz,
    topic                   text   NOT NULL,
    partition               int    NOT NULL,
    "offset"                bigint NOT NULL,
    projected_at            timestamptz NOT NULL DEFAULT now(),
    value                   bytea  NOT NULL
);
CREATE INDEX reversals_person ON ledger.reversals (person_token);
CREATE INDEX reversals_original ON ledger.reversals (original_source_system, original_source_ref);
CREATE INDEX reversals_to_post ON ledger.reversals (event_id) WHERE status = 'applied' AND applied_at IS NULL;

-- The legs of budget records and applied reversals. A payment's legs are a function of its
-- archive row, so ledger.journal derives them instead of storing four more rows per payment.
CREATE TABLE ledger.postings (
    event_id     uuid     NOT NULL,
    leg          smallint NOT NULL,
    account      text     NOT NULL,
    amount_idr   bigint   NOT NULL,
    at           timestamptz NOT NULL,
    record_type  text     NOT NULL,
    topic        text     NOT NULL,
    partition    int      NOT NULL,
    "offset"     bigint   NOT NULL,
    PRIMARY KEY (event_id, leg)
);
CREATE INDEX postings_account ON ledger.postings (account, at);

-- Balances of the treasury, budget-line, agency and programme accounts. A recipient's balance
-- is the sum of its person_totals (net of reversals); ledger.account_balances shows both.
CREATE TABLE ledger.balances (
    account      text   PRIMARY KEY,
    balance_idr  bigint NOT NULL
);

-- Every leg of every event. The legs of a payment here must equal aidcore.postings.disbursement_legs
-- (a test compares them).
CREATE VIEW ledger.journal AS
SELECT p.event_id, p.leg, p.account, p.amount_idr, p.at, p.record_type, p.topic, p.partition, p."offset"
  FROM ledger.postings p
UNION ALL
SELECT e.event_id, l.leg, l.account, l.amount_idr, e.recorded_at, 'disbursement', e.topic, e.partition, e."offset"
  FROM ledger.events e
 CROSS JOIN LATERAL (VALUES
       (0::smallint, 'agency:' || e.agency_code, -e.amount_idr),
       (1::smallint, 'recipient:' || e.person_token, e.amount_idr),
       (2::smallint, 'programme:' || e.agency_code || ':' || e.programme_code, -e.amount_idr),
       (3::smallint, 'budget:' || e.funding_account, e.amount_idr)) AS l(leg, account, amount_idr)
 WHERE e.accepted;

CREATE VIEW ledger.account_balances AS
SELECT account, balance_idr FROM ledger.balances
UNION ALL
SELECT 'recipient:' || person_token, sum(amount_idr_total)::bigint FROM ledger.person_totals GROUP BY person_token;
