-- When a dead letter was sent back to the ledger topic (`aidledger deadletters replay`).
ALTER TABLE ledger.deadletters ADD COLUMN replayed_at timestamptz;
CREATE INDEX deadletters_code ON ledger.deadletters (code);
