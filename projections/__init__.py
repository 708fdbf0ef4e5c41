"""PostgreSQL: migrations, the projector (batch writers with tracking records), read queries.

Owns everything the ledger keeps in PostgreSQL. Must not decide anything itself: idempotency and
rules come from `aidcore`; bytes become events only through `schemas.codec`.
"""
