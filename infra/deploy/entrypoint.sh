#!/bin/sh
# Entrypoint of the aidledger image: runs `aidledger "$@"` (or, for `deploy STEP`, the deployment
# step `python -m aidledger.deploy STEP`), after two adaptations to containers.
#
# 1. DB_PASSWORD_FILE: the code reads one database URL (AIDLEDGER_DATABASE_URL). The compose file
#    gives it without a password and this exports the password from the secret file as PGPASSWORD,
#    which libpq (under psycopg) uses when the URL has none. The password never enters the URL.
# 2. The worker, the projector and the relay serve /metrics on 127.0.0.1 only (the address is fixed
#    in the code). For Prometheus in another container to scrape them, socat listens on the
#    container's own IPv4 address(es), same port, and forwards to loopback. Remove this once the
#    code can bind its metrics endpoint to another address.
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
  worker|project|relay)
    port="$(python -m aidledger.deploy metrics-port "$1")"
    for address in $(hostname -i); do
      case "$address" in
        *:*|127.*) continue ;;  # IPv6 and loopback: not how Prometheus reaches the container
      esac
      socat "TCP-LISTEN:${port},bind=${address},fork,reuseaddr" "TCP:127.0.0.1:${port}" &
    done
    ;;
esac

exec aidledger "$@"
