#!/bin/sh
# Entrypoint of the aidledger image: runs `aidledger "$@"` (or, for `deploy STEP`, the deployment
# step `python -m aidledger.deploy STEP`), after one adaptation to containers.
#
# DB_PASSWORD_FILE: the code reads one database URL (AIDLEDGER_DATABASE_URL). The compose file
# gives it without a password and this exports the password from the secret file as PGPASSWORD,
# which libpq (under psycopg) uses when the URL has none. The password never enters the URL.
#
# The /metrics endpoints listen where AIDLEDGER_METRICS_ADDR says (0.0.0.0 in compose.yaml).
set -eu

if [ -n "${DB_PASSWORD_FILE:-}" ]; then
  PGPASSWORD="$(cat "$DB_PASSWORD_FILE")"
  export PGPASSWORD
fi

case "${1:-}" in
  deploy)
    shift
    exec python -m aidledger.deploy "$@"
    ;;
esac

exec aidledger "$@"
