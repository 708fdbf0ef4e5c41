-- The PMO dashboard: its users, the case workflow on alerts, and the signal of a changed alert.

-- Dashboard users. Only a salted scrypt digest of the password is kept (aidcore.agencies's
-- scrypt parameters); the clear password is shown once by `aidledger users add`.
CREATE TABLE ledger.dashboard_users (
    username      text PRIMARY KEY,
    role          text NOT NULL CHECK (role IN ('pmo', 'regency', 'auditor', 'agency')),
    regency_code  text CHECK ((role = 'regency') = (regency_code IS NOT NULL)),
    agency_code   text CHECK ((role = 'agency') = (agency_code IS NOT NULL)),
    salt          bytea NOT NULL,
    digest        bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    disabled_at   timestamptz
);

-- Every change of a case's workflow status: append-only, numbered per case. The current status
-- is the to_status of the highest step (open when there is none). The unique step makes two
-- officers acting on the same case at once record one transition, not two from the same state.
CREATE TABLE ledger.case_transitions (
    seq                     bigserial PRIMARY KEY,
    alert_id                text   NOT NULL REFERENCES ledger.alerts,
    step                    int    NOT NULL CHECK (step > 0),
    action                  text   NOT NULL,
    from_status             text   NOT NULL,
    to_status               text   NOT NULL,
    actor                   text   NOT NULL,
    role                    text   NOT NULL,
    reason                  text   NOT NULL DEFAULT '',
    reversal_source_system  text,
    reversal_source_ref     text,
    at                      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (alert_id, step)
);
CREATE TRIGGER append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger.case_transitions
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();

CREATE VIEW ledger.case_status AS
    SELECT DISTINCT ON (alert_id) alert_id, to_status AS status, step, actor, at
    FROM ledger.case_transitions ORDER BY alert_id, step DESC;

-- The live feed: every write of an alert takes the next change_seq, and every statement that
-- writes alerts or transitions signals the channel aid_alerts at commit. The dashboard listens
-- and reads what changed past the change_seq it last saw.
CREATE SEQUENCE ledger.alert_change_seq;
ALTER TABLE ledger.alerts ADD COLUMN change_seq bigint NOT NULL DEFAULT nextval('ledger.alert_change_seq');
CREATE INDEX alerts_change_seq ON ledger.alerts (change_seq);
CREATE INDEX alerts_raised_at ON ledger.alerts (raised_at DESC);  -- the feed, newest first

CREATE FUNCTION ledger.alert_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.change_seq := nextval('ledger.alert_change_seq');
    RETURN NEW;
END
$$;
CREATE TRIGGER change_seq BEFORE UPDATE ON ledger.alerts
    FOR EACH ROW EXECUTE FUNCTION ledger.alert_changed();

CREATE FUNCTION ledger.notify_alerts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NOTIFY aid_alerts;
    RETURN NULL;
END
$$;
CREATE TRIGGER notify_alerts AFTER INSERT OR UPDATE ON ledger.alerts
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.notify_alerts();
CREATE TRIGGER notify_alerts AFTER INSERT ON ledger.case_transitions
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.notify_alerts();
