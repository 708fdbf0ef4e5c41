-- Rulebooks activated (the history the log also holds), outbox rows aimed at one partition
-- (a rulebook activation is written to every ledger partition), alert status and threshold.

CREATE TABLE ledger.rulebooks (
    seq            bigserial PRIMARY KEY,
    version        text        NOT NULL,
    digest         text        NOT NULL,
    text           text        NOT NULL,
    activated_at   timestamptz NOT NULL,
    activated_by   text        NOT NULL
);

ALTER TABLE ledger.outbox ADD COLUMN partition int;

ALTER TABLE ledger.alerts ADD COLUMN status text NOT NULL DEFAULT 'open';
ALTER TABLE ledger.alerts ADD COLUMN threshold bigint NOT NULL DEFAULT 0;
