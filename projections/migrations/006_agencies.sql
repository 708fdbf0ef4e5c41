-- Agencies that submit over HTTP: their scope (agency code, programmes, source systems whose
-- references they own) and their API keys. A key is stored as a salted scrypt digest of its
-- secret, never in clear; revoking sets revoked_at and the key stops working at once.

CREATE TABLE ledger.agencies (
    agency_code     text PRIMARY KEY,
    programmes      text[]      NOT NULL,
    source_systems  text[]      NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz
);

CREATE TABLE ledger.agency_keys (
    key_id       text PRIMARY KEY,
    agency_code  text        NOT NULL REFERENCES ledger.agencies,
    salt         bytea       NOT NULL,
    digest       bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);
CREATE INDEX agency_keys_agency ON ledger.agency_keys (agency_code);
