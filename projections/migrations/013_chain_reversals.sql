-- Reversals join the archive's hash chain (docs/design.md, "The archive is hash-chained and
-- sealed"). The event and what the stream decided about it are kept apart:
--
-- ledger.reversal_events: the archive, one append-only row per reversal event as the projector
-- read it from the ledger topic (its canonical bytes in `value`, its own log position), whatever
-- the stream later decides; chained with the payments and budget records of its partition, in
-- offset order.
--
-- ledger.reversal_status: the projection, one row per reversal the person stage took into its
-- state, as its changelog says: `pending` while it waits for its original, `applied` once it took
-- effect, `removed` when the stream dropped it (its dead letter says why); `applied_at` and
-- `original_event_id` once its legs are posted. Neither hashed nor append-only. person_token,
-- source_system and source_ref are the state's key of the entry, which the changelog's removals
-- name (a removal may come before the projector reads the reversal from the ledger topic).
--
-- ledger.reversals, the table these replace, becomes a view joining the two: a reversal the
-- stream took in, once archived, with the same columns as before.

CREATE TABLE ledger.reversal_events (
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
    topic                   text   NOT NULL,
    partition               int    NOT NULL,
    "offset"                bigint NOT NULL,
    projected_at            timestamptz NOT NULL DEFAULT now(),
    value                   bytea  NOT NULL
);
CREATE INDEX reversal_events_person ON ledger.reversal_events (person_token);
CREATE INDEX reversal_events_original ON ledger.reversal_events (original_source_system, original_source_ref);
CREATE INDEX reversal_events_key ON ledger.reversal_events (source_system, source_ref);

CREATE TABLE ledger.reversal_status (
    event_id           uuid PRIMARY KEY,
    person_token       text NOT NULL,
    source_system      text NOT NULL,
    source_ref         text NOT NULL,
    status             text NOT NULL CHECK (status IN ('pending', 'applied', 'removed')),
    original_event_id  uuid,
    applied_at         timestamptz
);
CREATE INDEX reversal_status_person ON ledger.reversal_status (person_token);
CREATE INDEX reversal_status_to_post ON ledger.reversal_status (event_id) WHERE status = 'applied' AND applied_at IS NULL;

-- What the old table held. Its position was the changelog's word for where the reversal sat on
-- the ledger topic (-1 in changelog records written before they carried offsets).
INSERT INTO ledger.reversal_events (event_id, source_system, source_ref, original_source_system, original_source_ref,
                                    agency_code, person_token, identity_kind, amount_idr, reason, reversed_at,
                                    reversed_at_offset_min, recorded_at, topic, partition, "offset", projected_at, value)
SELECT event_id, source_system, source_ref, original_source_system, original_source_ref, agency_code, person_token,
       identity_kind, amount_idr, reason, reversed_at, reversed_at_offset_min, recorded_at, topic, partition, "offset",
       projected_at, value
  FROM ledger.reversals;
INSERT INTO ledger.reversal_status (event_id, person_token, source_system, source_ref, status, original_event_id,
                                    applied_at)
SELECT event_id, person_token, source_system, source_ref, status, original_event_id, applied_at FROM ledger.reversals;
DROP TABLE ledger.reversals;

CREATE VIEW ledger.reversals AS
SELECT e.event_id, e.source_system, e.source_ref, e.original_source_system, e.original_source_ref, e.agency_code,
       e.person_token, e.identity_kind, e.amount_idr, e.reason, e.reversed_at, e.reversed_at_offset_min, e.recorded_at,
       s.status, s.original_event_id, s.applied_at, e.topic, e.partition, e."offset", e.projected_at, e.value
  FROM ledger.reversal_events e JOIN ledger.reversal_status s USING (event_id);

CREATE OR REPLACE VIEW ledger.archived_records AS
    SELECT event_id, topic, partition, "offset", value FROM ledger.events
    UNION ALL
    SELECT event_id, topic, partition, "offset", value FROM ledger.budget_events
    UNION ALL
    SELECT event_id, topic, partition, "offset", value FROM ledger.reversal_events;

CREATE TRIGGER append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger.reversal_events
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();

-- Reversals archived before this migration are chained now, after each partition's head, in the
-- order they were archived (the batch's transaction time, then the offset). Reversals the stream
-- refused on arrival were never archived before: they join the archive only if the ledger topic
-- is projected again (`aidledger audit replay` into a fresh database, or a projector that read
-- the log again from offset zero).
DO $$
DECLARE
    r       record;
    part    int;
    pos     bigint;
    prev    bytea;
    digest  bytea;
    h       bytea;
BEGIN
    FOR r IN SELECT v.event_id, v.partition, v."offset", v.value FROM ledger.reversal_events v
             WHERE NOT EXISTS (SELECT 1 FROM ledger.chain c WHERE c.event_id = v.event_id)
             ORDER BY v.partition, v.projected_at, v."offset" LOOP
        IF part IS DISTINCT FROM r.partition THEN
            part := r.partition;
            SELECT position, hash INTO pos, prev FROM ledger.chain WHERE partition = part
                ORDER BY position DESC LIMIT 1;
            IF NOT FOUND THEN
                pos := 0;
                prev := sha256('aidledger archive chain v1'::bytea || int4send(part));
            END IF;
        END IF;
        pos := pos + 1;
        digest := sha256(r.value);
        h := sha256(prev || int4send(part) || int8send(pos) || int8send(r."offset") || digest);
        INSERT INTO ledger.chain (partition, position, "offset", event_id, value_sha256, prev_hash, hash)
            VALUES (part, pos, r."offset", r.event_id, digest, prev, h);
        prev := h;
    END LOOP;
END
$$;
