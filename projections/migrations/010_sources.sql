-- The doors in beyond files and HTTP: an agency table polled by watermark, and the national
-- poverty registries (DTKS, P3KE, Regsosek).

-- Where each polled agency table was read up to, written in the same transaction as the rows it
-- submitted (connectors.dbsource). `watermark` is the last watermark value read, as text in the
-- column's own type; `seen_keys` the unique keys already read at exactly that value, so rows that
-- arrive later with the same watermark are read and those already read are not read again.
CREATE TABLE ledger.db_source_positions (
    source_name       text PRIMARY KEY,
    table_name        text NOT NULL,
    watermark_column  text NOT NULL,
    key_column        text NOT NULL,
    watermark         text,
    seen_keys         text[] NOT NULL DEFAULT '{}',
    rows_read         bigint NOT NULL DEFAULT 0,
    rows_accepted     bigint NOT NULL DEFAULT 0,
    rows_redelivered  bigint NOT NULL DEFAULT 0,
    rows_rejected     bigint NOT NULL DEFAULT 0,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- One row per person per imported registry extract, projected from the registry topic.
CREATE TABLE ledger.registry_records (
    event_id        uuid PRIMARY KEY,
    registry        text     NOT NULL,
    extract_date    date     NOT NULL,
    person_token    text     NOT NULL,
    kk_token        text,
    regency_code    text     NOT NULL,
    village_code    text     NOT NULL,
    decile          smallint,
    source_row_ref  text     NOT NULL,
    recorded_at     timestamptz NOT NULL,
    topic           text     NOT NULL,
    partition       int      NOT NULL,
    "offset"        bigint   NOT NULL,
    UNIQUE (registry, extract_date, person_token)
);
CREATE INDEX registry_records_person ON ledger.registry_records (person_token);

-- Who the registries hold now: each registry's latest extract. Kept with exactly these columns:
-- dashboards read it (e.g. people registered but never paid).
CREATE VIEW ledger.registered_people AS
SELECT r.person_token::text AS person_token, r.registry::text AS registry, r.regency_code::text AS regency_code,
       r.village_code::text AS village_code, r.decile::int AS decile
FROM ledger.registry_records r
JOIN (SELECT registry, max(extract_date) AS extract_date FROM ledger.registry_records GROUP BY registry) latest
  ON latest.registry = r.registry AND latest.extract_date = r.extract_date;
