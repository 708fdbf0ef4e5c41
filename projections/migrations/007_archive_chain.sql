-- Tamper evidence for the event archive (docs/design.md, "The archive is hash-chained and sealed").
--
-- ledger.chain: one hash chain per ledger partition over every record archived from the ledger
-- topic, in the order archived, numbered by position 1, 2, 3, ... The projector writes a batch's
-- chain rows in the same transaction as its archive rows, so the chain never lags or disagrees
-- with the archive. hash = SHA-256(prev_hash || partition || position || offset || value_sha256)
-- (integers big-endian: 4, 8 and 8 bytes); the hash before position 1 is
-- SHA-256('aidledger archive chain v1' || partition). `aidcore.chain` is the reference.
CREATE TABLE ledger.chain (
    partition     int    NOT NULL,
    position      bigint NOT NULL CHECK (position > 0),
    "offset"      bigint NOT NULL,
    event_id      uuid   NOT NULL,
    value_sha256  bytea  NOT NULL,
    prev_hash     bytea  NOT NULL,
    hash          bytea  NOT NULL,
    chained_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (partition, position)
);

-- Every record the archive keeps from the ledger topic, whatever table keeps it. Today the
-- disbursements in ledger.events; a table that archives other ledger records (reversals, for
-- one) joins this view with UNION ALL, and its rows are chained the same way.
CREATE VIEW ledger.archived_records AS
    SELECT event_id, topic, partition, "offset", value FROM ledger.events;

-- Seals made by `aidledger audit seal`: the signed body (canonical JSON) and its signature.
-- The auditor keeps the exported file; this copy gives each seal its period and predecessor.
CREATE TABLE ledger.seals (
    seal_no     bigserial PRIMARY KEY,
    closed_at   timestamptz NOT NULL,
    root        bytea       NOT NULL,
    public_key  bytea       NOT NULL,
    body        bytea       NOT NULL,
    signature   bytea       NOT NULL
);

-- Append-only. The refusal binds every role, owner included; only a superuser who sets
-- session_replication_role = replica, or an owner who disables the trigger, gets past it, and
-- that is what the seals are for.
CREATE FUNCTION ledger.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger.% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'a mistake is corrected by a new event, never by changing the archive';
END
$$;
CREATE TRIGGER append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger.events
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger.chain
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger.seals
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();

-- Records archived before this migration are chained now, per partition in the order they were
-- archived (the batch's transaction time, then the offset within the batch).
DO $$
DECLARE
    r       record;
    part    int;
    pos     bigint;
    prev    bytea;
    digest  bytea;
    h       bytea;
BEGIN
    FOR r IN SELECT event_id, partition, "offset", value FROM ledger.events
             ORDER BY partition, projected_at, "offset" LOOP
        IF part IS DISTINCT FROM r.partition THEN
            part := r.partition;
            pos := 0;
            prev := sha256('aidledger archive chain v1'::bytea || int4send(part));
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
