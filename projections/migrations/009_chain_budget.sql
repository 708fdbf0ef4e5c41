-- Budget records (allocations and treasury releases) join the archive's hash chain: the view of
-- everything chained gains ledger.budget_events, and the projector chains each batch's new
-- budget rows with its payments, in offset order per partition (docs/design.md, "The archive is
-- hash-chained and sealed"). Like the payments' archive, budget_events becomes append-only.
-- Reversals stay out of the chain: their rows change status as the stream decides them.
CREATE OR REPLACE VIEW ledger.archived_records AS
    SELECT event_id, topic, partition, "offset", value FROM ledger.events
    UNION ALL
    SELECT event_id, topic, partition, "offset", value FROM ledger.budget_events;

CREATE TRIGGER append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger.budget_events
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();

-- Budget records archived before this migration are chained now, after each partition's head,
-- in the order they were archived (the batch's transaction time, then the offset).
DO $$
DECLARE
    r       record;
    part    int;
    pos     bigint;
    prev    bytea;
    digest  bytea;
    h       bytea;
BEGIN
    FOR r IN SELECT b.event_id, b.partition, b."offset", b.value FROM ledger.budget_events b
             WHERE NOT EXISTS (SELECT 1 FROM ledger.chain c WHERE c.event_id = b.event_id)
             ORDER BY b.partition, b.projected_at, b."offset" LOOP
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
