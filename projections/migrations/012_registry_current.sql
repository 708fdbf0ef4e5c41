-- The registries' current contents read without scanning every extract ever imported: each
-- registry's latest extract date is found by walking the (registry, extract_date, person_token)
-- unique index, one registry at a time (a few index probes, whatever the size of the table), and
-- the latest extract's rows are then read through the same index.

-- Each registry's current extract: its latest extract date.
CREATE VIEW ledger.registry_current_extracts AS
WITH RECURSIVE registries(registry) AS (
    (SELECT registry FROM ledger.registry_records ORDER BY registry LIMIT 1)
    UNION ALL
    SELECT (SELECT r.registry FROM ledger.registry_records r WHERE r.registry > registries.registry
            ORDER BY r.registry LIMIT 1)
    FROM registries WHERE registries.registry IS NOT NULL
)
SELECT registry::text AS registry,
       (SELECT max(r.extract_date) FROM ledger.registry_records r WHERE r.registry = registries.registry) AS extract_date
FROM registries WHERE registry IS NOT NULL;

-- Same columns and rows as before; only the way to the latest extracts changes.
CREATE OR REPLACE VIEW ledger.registered_people AS
SELECT r.person_token::text AS person_token, r.registry::text AS registry, r.regency_code::text AS regency_code,
       r.village_code::text AS village_code, r.decile::int AS decile
FROM ledger.registry_records r
JOIN ledger.registry_current_extracts latest
  ON latest.registry = r.registry AND latest.extract_date = r.extract_date;
