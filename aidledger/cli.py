"""`aidledger`: the command line. Each subcommand is a thin shell over the packages below it."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import logging
import os
import sys
import time
from pathlib import Path

import orjson

from aidcore import nik as nikmod
from aidcore.reference import default_reference
from aidcore.settings import ALL_GROUPS, ProjectorSettings, RelaySettings, StackSettings, WorkerSettings


def _stack(environ=None) -> StackSettings:
    return StackSettings.from_env(environ if environ is not None else os.environ)


def _home(args) -> Path:
    return Path(args.home or _stack().home).resolve()


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for noisy in ("kafka", "aiokafka"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


class NoStack(SystemExit):
    pass


def resolve_endpoints(home: Path) -> tuple[str, str]:
    """(kafka bootstrap, database url): from the environment, else from the running stack."""
    from infra.stack import load_endpoints

    stack = _stack()
    bootstrap, dsn = stack.kafka_bootstrap, stack.database_url
    if bootstrap and dsn:
        return bootstrap, dsn
    recorded = load_endpoints(home)
    if recorded is None:
        print(f"aidledger: no running stack under {home}; start one with `aidledger up --home {home}` "
              "or set AIDLEDGER_KAFKA_BOOTSTRAP and AIDLEDGER_DATABASE_URL", file=sys.stderr)
        raise NoStack(2)
    return bootstrap or recorded["kafka_bootstrap"], dsn or recorded["database_url"]


def _dump(obj) -> None:
    sys.stdout.buffer.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n")
    sys.stdout.flush()


# --- stack ----------------------------------------------------------------------------------

def cmd_up(args) -> int:
    from infra.stack import Stack

    from infra.embedded import EmbeddedServerError
    from infra.stack import StackError

    _setup_logging(_stack().log_level)
    stack = Stack(_home(args), os.environ, workers=args.workers)
    try:
        stack.start()
    except (StackError, EmbeddedServerError) as exc:
        print(f"aidledger up: {exc}", file=sys.stderr)
        return 2
    _print_endpoints(stack.endpoints())
    print("running; Ctrl-C stops the stack", flush=True)
    try:
        stack.run_until_stopped()
    finally:
        print("stopping...", flush=True)
        stack.stop()
    return 0


def _print_endpoints(ep: dict) -> None:
    print(f"home:            {ep['home']}")
    print(f"kafka bootstrap: {ep['kafka_bootstrap']}{' (embedded)' if ep['embedded_broker'] else ''}")
    print(f"database url:    {ep['database_url']}{' (embedded)' if ep['embedded_postgres'] else ''}")
    if ep.get("gateway"):
        print(f"gateway:         {ep['gateway']} (OpenAPI {ep['gateway']}/openapi.json, docs {ep['gateway']}/docs)")
    if ep.get("dashboard"):
        print(f"dashboard:       {ep['dashboard']} (PMO web dashboard; `aidledger users add` makes sign-ins)")
    for name, url in ep["metrics"].items():
        print(f"metrics {name + ':':<12} {url}")
    print(f"topics:          {', '.join(ep['topics'].values())}", flush=True)


def cmd_worker(args) -> int:
    from streams.worker import run_worker

    stack = _stack()
    _setup_logging(stack.log_level)
    run_worker(stack, WorkerSettings.from_env(os.environ), args.index)
    return 0


def _return_free_memory(interval_s: float = 30.0) -> None:
    """For a long-running service: every `interval_s`, hand the memory glibc holds free back to
    the system (malloc_trim). A service's batches vary in size, and glibc keeps the holes they
    leave between long-lived objects mapped, in one arena per thread that allocated; measured,
    that is most of what a process's resident size gains over hours while its live objects stay
    flat. A daemon thread (malloc_trim takes the arenas' locks); nothing where glibc is absent.
    Not in the worker: its state is most of its memory and is packed into long-lived buckets; it
    trims once after each rebuild (`streams.state.release_free_memory`)."""
    import threading

    from streams.state import release_free_memory

    def loop() -> None:
        while True:
            time.sleep(interval_s)
            release_free_memory()

    threading.Thread(target=loop, name="return-free-memory", daemon=True).start()


def _run_service(coro_factory) -> int:
    import signal

    async def main():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for s in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(s, stop.set)
        await coro_factory(stop)

    asyncio.run(main())
    return 0


def cmd_baseline(args) -> int:
    from streams.baseline import run_baseline

    stack = _stack()
    _setup_logging(stack.log_level)
    run_baseline(stack, args.metrics_port)
    return 0


def cmd_project(args) -> int:
    from prometheus_client import start_http_server

    from projections.projector import run_projector

    stack = _stack()
    _setup_logging(stack.log_level)
    _return_free_memory()
    settings = ProjectorSettings.from_env(os.environ)
    start_http_server(settings.metrics_port, addr=stack.metrics_addr)
    return _run_service(lambda stop: run_projector(stack.database_url, stack, settings, stop))


def cmd_relay(args) -> int:
    from prometheus_client import start_http_server

    from connectors.relay import run_relay

    stack = _stack()
    _setup_logging(stack.log_level)
    _return_free_memory()
    settings = RelaySettings.from_env(os.environ)
    start_http_server(settings.metrics_port, addr=stack.metrics_addr)
    return _run_service(lambda stop: run_relay(stack.database_url, stack.kafka_bootstrap, settings, stop))


def cmd_gateway(args) -> int:
    from aidcore.settings import GatewaySettings
    from connectors.door import Door
    from connectors.door import group_id as door_group_id
    from connectors.gateway import GatewayContext, serve
    from infra.stack import submissions_keys, token_key
    from schemas.sealing import Opener
    from schemas.topics import declared_topics

    stack = _stack()
    _setup_logging(stack.log_level)
    _return_free_memory()
    topics = declared_topics(stack)
    key = token_key(stack, _home(args))
    door = None
    if stack.kafka_bootstrap:  # the submissions topic's door runs beside the HTTP door
        door = Door(bootstrap=stack.kafka_bootstrap, database_url=stack.database_url, reference=default_reference(),
                    topics={role: spec.name for role, spec in topics.items()},
                    group=door_group_id(stack), token_key=key,
                    opener=Opener(submissions_keys(stack, _home(args))), fetch_max_wait_ms=stack.fetch_max_wait_ms)
        door.start()
    try:
        serve(GatewaySettings.from_env(os.environ), GatewayContext(
            stack.database_url, key, default_reference(), topics["ledger"].name, topics["alerts"].name))
    finally:
        if door is not None:
            door.close()
    return 0


def cmd_dashboard(args) -> int:
    from aidcore.settings import DashboardSettings
    from connectors.dashboard import DashboardContext, serve
    from infra.stack import dashboard_session_key
    from projections import cases, queries

    stack = _stack()
    _setup_logging(stack.log_level)
    _return_free_memory()
    settings = DashboardSettings.from_env(os.environ)
    serve(settings, DashboardContext(stack.database_url, default_reference(),
                                     dashboard_session_key(_home(args), settings.session_key_file), cases, queries.trail))
    return 0


def cmd_users(args) -> int:
    """add NAME --role R [--regency C] [--agency C] | reset NAME | disable NAME | list."""
    import psycopg

    from connectors import users

    _, dsn = resolve_endpoints(_home(args))
    if args.action != "list" and not args.name:
        print(f"aidledger users {args.action}: name the user", file=sys.stderr)
        return 2
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            if args.action == "list":
                rows = users.listing(conn)
                if args.json:
                    _dump({"users": rows})
                for u in rows if not args.json else ():
                    scope = u["regency_code"] or u["agency_code"] or "all"
                    print(f"{u['username']:<24} {u['role']:<8} {scope:<10}{'  DISABLED' if u['disabled_at'] else ''}")
                return 0
            if args.action == "disable":
                users.disable(conn, args.name)
                print(f"disabled {args.name}; their sessions end at their next request")
                return 0
            if args.action == "add":
                if not args.role:
                    print("aidledger users add: --role is required (pmo, regency, auditor or agency)", file=sys.stderr)
                    return 2
                issued = users.add_user(conn, args.name, args.role, args.regency, args.agency)
            else:
                issued = users.reset_password(conn, args.name)
        except users.UserError as err:
            print(f"aidledger users: {err}", file=sys.stderr)
            return 1
    print(f"password of {args.name} ({issued.user.role}); it is shown only now, hand it over safely:")
    print(issued.password)
    return 0


def cmd_agencies(args) -> int:
    """add CODE --programmes P,Q [--source-systems S] | key CODE | revoke CODE [--key KEY_ID] | list."""
    import psycopg

    from aidcore.agencies import check_codes, parse_codes
    from connectors import agencies

    _, dsn = resolve_endpoints(_home(args))
    if args.action != "list" and not args.code:
        print(f"aidledger agencies {args.action}: name the agency code", file=sys.stderr)
        return 2
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            if args.action == "list":
                rows = [a.as_dict() for a in agencies.listing(conn)]
                if args.json:
                    _dump({"agencies": rows})
                for a in rows if not args.json else ():
                    live = ",".join(k["key_id"] for k in a["keys"] if not k["revoked_at"]) or "-"
                    print(f"{a['agency_code']:<20} programmes {','.join(a['programmes'])}  source systems "
                          f"{','.join(a['source_systems'])}  keys {live}{'  REVOKED' if a['revoked_at'] else ''}")
                return 0
            if args.action == "revoke":
                n = agencies.revoke(conn, args.code, args.key)
                print(f"revoked {n} key(s) of {args.code}{'' if args.key else ' and the agency'}")
                return 0
            if args.action == "add":
                programmes = parse_codes(args.programmes or "")
                unknown = check_codes(programmes, default_reference().programmes)
                if unknown or not programmes:
                    print(f"aidledger agencies add: --programmes needs known programme codes (unknown: {unknown})",
                          file=sys.stderr)
                    return 2
                key = agencies.add_agency(conn, args.code, programmes, parse_codes(args.source_systems or args.code))
            else:
                key = agencies.add_key(conn, args.code)
        except agencies.AgencyError as err:
            print(f"aidledger agencies: {err}", file=sys.stderr)
            return 1
    print(f"API key of {args.code} (key id {key.key_id}); it is shown only now, store it safely:")
    print(key.clear_key)
    return 0


# --- intake ---------------------------------------------------------------------------------

def cmd_ingest(args) -> int:
    import psycopg

    from connectors.files import read_rows
    from connectors.intake import ingest_rows
    from infra.stack import token_key
    from schemas.topics import declared_topics

    home = _home(args)
    _, dsn = resolve_endpoints(home)
    stack = _stack()
    opened = _input_file(args, home, "ingest")
    if isinstance(opened, int):
        return opened
    path, report_path, bar = opened
    with psycopg.connect(dsn, autocommit=True) as conn:
        report = ingest_rows(
            conn, _counting(read_rows(path), bar), source_name=path.name,
            ledger_topic=declared_topics(stack)["ledger"].name, alerts_topic=declared_topics(stack)["alerts"].name,
            token_key=token_key(stack, home), reference=default_reference(), report_path=report_path,
        )
    bar.close()
    if args.json:
        _dump(report.as_dict())
        return 0
    print(f"{report.rows:,} rows: {report.accepted:,} accepted, {report.redelivered:,} already recorded "
          f"(redelivered), {report.rejected:,} rejected in {report.seconds:.1f}s")
    _print_intake_totals(report)
    return 0


def _input_file(args, home: Path, command: str):
    """(path, rejection report path, progress bar) of an input file, or the exit code when it
    cannot be read. The bar draws on a terminal only, and never with --json."""
    from connectors.files import estimated_rows, file_format
    from connectors.intake import Progress

    path = Path(args.file)
    if not path.exists():
        print(f"aidledger: {path} does not exist", file=sys.stderr)
        return 2
    try:
        file_format(path)
    except ValueError as err:
        print(f"aidledger {command}: {err}", file=sys.stderr)
        return 2
    report_path = Path(args.report) if args.report else home / "reports" / f"{path.name}.rejections.csv"
    bar = Progress(0, f"{command.split()[0]} {path.name}", enabled=None if not args.json else False)
    if bar.enabled:
        bar.total = estimated_rows(path)
    return path, report_path, bar


def _print_intake_totals(report) -> None:
    """Accepted records and rupiah per programme (reversals and budget records on their own
    lines), then the rejections by code."""
    for programme in sorted(report.accepted_by_programme):
        print(f"  accepted {report.accepted_by_programme[programme]:>7,}  {programme:<16} "
              f"{_rp(report.accepted_idr_by_programme[programme])}")
    for code, n in report.rejections_by_code.most_common():
        print(f"  rejected {n:>7,}  {code}")
    if report.rejected:
        print(f"rejection report: {report.report_path}")


def _counting(rows, bar):
    n = 0
    for item in rows:
        n += 1
        if n % 1000 == 0:
            bar.update(min(n, bar.total), n)
        yield item
    bar.total = max(n, 1)
    bar.update(n, n)


# --- database and registry sources -------------------------------------------------------------

def cmd_poll_db(args) -> int:
    """Poll an agency table by its watermark column and submit its new rows."""
    import signal
    import threading

    import psycopg

    from connectors import dbsource
    from connectors.rulebooks import active_rulebook
    from infra.stack import token_key
    from schemas.topics import declared_topics

    home = _home(args)
    _, dsn = resolve_endpoints(home)
    stack = _stack()
    reference = default_reference()
    try:
        source = dbsource.TableSource(args.name or args.table, args.table, args.watermark, args.key,
                                      dbsource.parse_mapping(args.map))
    except dbsource.SourceError as err:
        print(f"aidledger poll-db: {err}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *_: stop.set())
    topics = declared_topics(stack)

    def progress(report) -> None:
        if not args.json and sys.stderr.isatty():
            sys.stderr.write(f"\rpoll-db {source.name}: {report.rows:,} rows read, {report.accepted:,} accepted,"
                             f" {report.rejected:,} rejected")
            sys.stderr.flush()

    try:
        with psycopg.connect(args.dsn, autocommit=True) as agency, psycopg.connect(dsn, autocommit=True) as ledger:
            agency.execute("SET TimeZone = 'UTC'")  # the watermark's text form must read back the same
            report = dbsource.poll(
                agency, ledger, source, batch_rows=args.batch_rows, poll_interval_s=args.poll_interval_s,
                once=args.once, should_stop=stop.is_set, wait=stop.wait, ledger_topic=topics["ledger"].name,
                alerts_topic=topics["alerts"].name, token_key=token_key(stack, home), reference=reference,
                rulebook_of=lambda: active_rulebook(ledger, reference), on_batch=progress)
            position = next(p for p in dbsource.positions(ledger) if p["source"] == source.name)
    except dbsource.SourceError as err:
        print(f"aidledger poll-db: {err}", file=sys.stderr)
        return 2
    if not args.json and sys.stderr.isatty():
        sys.stderr.write("\n")
    if args.json:
        _dump({**report.as_dict(), "position": position})
        return 0
    print(f"{source.table}: {report.rows:,} rows read: {report.accepted:,} accepted, {report.redelivered:,} already"
          f" recorded, {report.rejected:,} rejected; position {source.watermark} = {position['watermark']}"
          f" ({position['keys_at_watermark']} row(s) at that value)")
    _print_intake_totals(report)
    if report.rejected:
        print(f"rejections: ledger.intake_rejections, batch {report.batch_id}")
    return 0


def cmd_registries(args) -> int:
    """import --registry NAME --extract-date DATE FILE | report [--regency CODE] | extracts."""
    from datetime import date

    import psycopg

    from aidcore.registries import REGISTRIES
    from projections.registries import disagreement_report, extracts

    home = _home(args)
    _, dsn = resolve_endpoints(home)
    if args.action == "report":
        with psycopg.connect(dsn) as conn:
            report = disagreement_report(conn, args.regency, examples_per_kind=args.examples)
        if args.json:
            _dump(report.as_dict())
            return 0
        _print_disagreements(report.as_dict(), args.regency)
        return 0
    if args.action == "extracts":
        with psycopg.connect(dsn) as conn:
            items = extracts(conn)
        if args.json:
            _dump({"extracts": items})
        for e in items if not args.json else ():
            print(f"{e['registry']:<9} {e['extract_date']} {e['people']:>10,} people{'  (current)' if e['current'] else ''}")
        return 0
    if not args.file or not args.registry or not args.extract_date:
        print("aidledger registries import: give --registry, --extract-date and the extract file", file=sys.stderr)
        return 2
    registry = args.registry.upper()
    if registry not in REGISTRIES:
        print(f"aidledger registries import: --registry must be one of {', '.join(REGISTRIES)}", file=sys.stderr)
        return 2
    try:
        extract_date = date.fromisoformat(args.extract_date).isoformat()
    except ValueError:
        print("aidledger registries import: --extract-date must be YYYY-MM-DD", file=sys.stderr)
        return 2
    return _registry_import(args, home, dsn, registry, extract_date)


def _registry_import(args, home: Path, dsn: str, registry: str, extract_date: str) -> int:
    import psycopg

    from connectors.files import read_rows
    from connectors.registries import import_rows
    from infra.stack import token_key
    from schemas.topics import declared_topics

    stack = _stack()
    from aidcore.registries import REGISTRY_FIELDS

    mapping = {}
    for item in args.map:
        name, _, column = item.partition("=")
        if name.strip() not in REGISTRY_FIELDS or not column.strip():
            print(f"aidledger registries import: --map {item!r}: write FIELD=COLUMN, FIELD one of"
                  f" {', '.join(REGISTRY_FIELDS)}", file=sys.stderr)
            return 2
        mapping[column.strip()] = name.strip()
    opened = _input_file(args, home, "registries import")
    if isinstance(opened, int):
        return opened
    path, report_path, bar = opened
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = _renamed(read_rows(path), mapping) if mapping else read_rows(path)
        report = import_rows(conn, _counting(rows, bar), registry=registry, extract_date=extract_date,
                             source_name=path.name, registry_topic=declared_topics(stack)["registry"].name,
                             token_key=token_key(stack, home), reference=default_reference(), report_path=report_path)
    bar.close()
    if args.json:
        _dump(report.as_dict())
        return 0
    print(f"{registry} extract of {extract_date}: {report.rows:,} rows: {report.accepted:,} people recorded, "
          f"{report.redelivered:,} already recorded, {report.rejected:,} rejected in {report.seconds:.1f}s")
    for regency, n in sorted(report.accepted_by_regency.items()):
        print(f"  recorded {n:>9,}  {regency} {default_reference().regency_name(regency)}")
    for code, n in report.rejections_by_code.most_common():
        print(f"  rejected {n:>9,}  {code}")
    if report.rejected:
        print(f"rejection report: {report.report_path}")
    return 0


def _renamed(rows, mapping: dict[str, str]):
    """Rows with their columns renamed COLUMN -> FIELD; a column that a field was mapped away from
    is dropped, so a mapping never leaves two sources for one field."""
    for number, row in rows:
        if isinstance(row, dict):
            row = {mapping.get(k, k): v for k, v in row.items() if k in mapping or k not in mapping.values()}
        yield number, row


def _print_disagreements(report: dict, regency: str | None) -> None:
    names = default_reference().regency_name
    compared = ", ".join(report["registries"]) or "none"
    print(f"registries compared: {compared}; {report['people']:,} people"
          f"{' with an entry in ' + regency + ' ' + names(regency) if regency else ''}")
    if len(report["registries"]) < 2:
        print("import at least two registries to compare them")
    for kind, n in report["by_kind"].items():
        print(f"  {kind:<22} {n:>9,}")
    for code, kinds in report["by_regency"].items():
        print(f"  {code} {names(code):<28} " + "  ".join(f"{k} {n:,}" for k, n in kinds.items()))
    for kind, items in report["examples"].items():
        for e in items:
            print(f"  e.g. {kind}: {e['person_token']} {orjson.dumps(e['detail']).decode()}")


# --- wait -----------------------------------------------------------------------------------

def cmd_wait(args) -> int:
    from infra.stack import lag_report

    home = _home(args)
    bootstrap, dsn = resolve_endpoints(home)
    stack = _stack()
    deadline = time.monotonic() + args.timeout
    last = None
    while True:
        behind = lag_report(bootstrap, dsn, stack)
        if not any(behind.values()):
            if not args.quiet:
                print("caught up: every ingested record is processed and projected")
            return 0
        last = behind
        if time.monotonic() >= deadline:
            print(f"aidledger wait: timed out after {args.timeout:g}s; still behind:", file=sys.stderr)
            for stage, items in last.items():
                for item in items[:8]:
                    print(f"  {stage}: {item}", file=sys.stderr)
            return 1
        time.sleep(0.25)


# --- queries --------------------------------------------------------------------------------

def cmd_alerts(args) -> int:
    import psycopg

    from projections.queries import alerts

    _, dsn = resolve_endpoints(_home(args))
    with psycopg.connect(dsn) as conn:
        items = alerts(conn, default_reference(), rule_id=args.rule, limit=args.limit)
    if args.json:
        _dump({"alerts": items})
        return 0
    if not items:
        print("no alerts")
    for a in items:
        print(f"[{a['rule_id']}] {a['regency_name']} {a['programme_code']} {a['period']}  "
              f"at stake Rp {a['amount_idr_at_stake']:,}".replace(",", "."))
        print(f"    {a['message']}")
    return 0


def _as_of(text: str | None):
    """The moment of --as-of: ISO 8601 with a UTC offset (a moment without one is ambiguous)."""
    from datetime import datetime

    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise SystemExit("aidledger: --as-of must be an ISO 8601 timestamp, e.g. 2026-04-10T12:00:00+07:00") from None
    if moment.utcoffset() is None:
        raise SystemExit("aidledger: --as-of needs a UTC offset, e.g. 2026-04-10T12:00:00+07:00")
    return moment


def _rp(amount: int) -> str:
    return f"Rp {amount:,}".replace(",", ".")


def cmd_trail(args) -> int:
    import psycopg

    from infra.stack import token_key
    from projections.queries import record_trail, trail

    home = _home(args)
    as_of = _as_of(args.as_of)
    if (args.identity is None) == (args.source_ref is None):
        print("aidledger trail: name a NIK (or provisional id), or --source-ref SYSTEM REF", file=sys.stderr)
        return 2
    _, dsn = resolve_endpoints(home)
    who = args.who or getpass.getuser()
    if args.source_ref:
        system, ref = args.source_ref
        with psycopg.connect(dsn) as conn:
            found = record_trail(conn, default_reference(), system, ref, who=who, why=args.why, as_of=as_of)
        if found is None:
            print(f"aidledger trail: nothing recorded under {system}/{ref}"
                  f"{' by ' + args.as_of if as_of else ''}", file=sys.stderr)
            return 1
        if args.json:
            _dump(found)
            return 0
        _print_record_trail(found)
        return 0
    key = token_key(_stack(), home)
    if args.provisional:
        token = nikmod.provisional_token(key, args.identity.strip())
    else:
        nik = nikmod.normalize(args.identity)
        problem = nikmod.nik_problem(nik)
        if problem:
            print(f"aidledger trail: {problem}", file=sys.stderr)
            return 2
        token = nikmod.person_token(key, nik)
    with psycopg.connect(dsn) as conn:
        result = trail(conn, default_reference(), token, who=who, why=args.why, as_of=as_of)
    if args.json:
        _dump(result)
        return 0
    print(f"person {token} ({result['identity_kind'] or 'unknown identity'}): {result['recipient_name'] or '-'}"
          f"{'  as of ' + result['as_of'] if result['as_of'] else ''}")
    if not result["events"]:
        print("no disbursements recorded")
    for e in result["events"]:
        flag = "" if e["accepted"] else f"  NOT ACCEPTED: {e['outcome']}"
        print(f"  {e['disbursed_at'][:10]} {e['programme_code']:<13} {e['period']} Rp {e['amount_idr']:>12,} "
              f"{e['source_system']}/{e['source_ref']} via {e['channel']} ({e['agency_code']}){flag}".replace(",", "."))
        _print_path(e, "      ")
    for r in result["reversals_without_payment"]:
        print(f"  reversal {r['source_system']}/{r['source_ref']} of {r['original_source_system']}/"
              f"{r['original_source_ref']}: {_rp(r['amount_idr'])} {r['status']}")
    print(f"  balance {_rp(result['balance_idr'])} (net of reversals)")
    for a in result["alerts"]:
        print(f"  ALERT [{a['rule_id']}] {a['message']}")
    return 0


def _print_path(e: dict, indent: str) -> None:
    """budget line -> agency -> programme -> channel -> recipient, and what was taken back."""
    path = e["path"]
    line = path["budget_line"]
    treasury = "/".join(path["treasury"]) or "no release recorded"
    print(f"{indent}treasury {treasury} -> budget line {line['funding_account']} (allocated "
          f"{_rp(line['allocated_idr'])}, released to the agency {_rp(line['released_to_agency_idr'])})"
          f" -> agency {path['agency']['agency_code']} -> programme {path['programme']['programme_code']}"
          f" -> {path['channel']} -> recipient")
    for r in e["reversals"]:
        print(f"{indent}reversal {r['source_system']}/{r['source_ref']} {_rp(r['amount_idr'])}: {r['status']}"
              f" ({r['reason']})")
    if e["accepted"] and e["reversals"]:
        print(f"{indent}net {_rp(e['net_amount_idr'])}")


def _print_record_trail(found: dict) -> None:
    print(f"{found['record_type']} {found['source_system']}/{found['source_ref']}"
          f"{'  as of ' + found['as_of'] if found['as_of'] else ''}")
    if found["record_type"] in ("allocation", "release"):
        record, line = found["budget_record"], found["budget_line"]
        if record is None:
            print("  recorded, not projected yet")
            return
        print(f"  {_rp(record['amount_idr'])} {record['source_type']} budget line {record['funding_account']} -> agency"
              f" {record['agency_code']}{' programme ' + record['programme_code'] if 'programme_code' in record else ''}"
              f"{'' if record['accepted'] else '  NOT ACCEPTED: ' + record['outcome']}")
        for leg in found["postings"]:
            print(f"    {leg['account']:<48} {leg['amount_idr']:>+18,}".replace(",", "."))
        print(f"  the line for {line['agency_code']}: allocated {_rp(line['allocated_idr'])}, released"
              f" {_rp(line['released_to_agency_idr'])}")
        return
    print(f"  person {found['person_token']} ({found['identity_kind'] or 'unknown identity'}):"
          f" {found['recipient_name'] or '-'}")
    e = found["payment"]
    if e is None:
        print("  the payment it names is not in the ledger")
    else:
        print(f"  payment {e['source_system']}/{e['source_ref']} {e['programme_code']} {e['period']}"
              f" {_rp(e['amount_idr'])}{'' if e['accepted'] else '  NOT ACCEPTED: ' + e['outcome']}")
        _print_path(e, "    ")
        for leg in e["postings"]:
            print(f"    {leg['account']:<48} {leg['amount_idr']:>+18,}".replace(",", "."))
    if found.get("reversal") is not None:
        r = found["reversal"]
        print(f"  this reversal: {_rp(r['amount_idr'])} {r['status']} ({r['reason']})")


def cmd_audit(args) -> int:
    """The audit commands: the money (overspend, balances), the archive's chain (verify, seal), the
    projections rebuilt from the log and compared (replay), a period's files for an auditor (export)."""
    if args.action == "replay":
        return _audit_replay(args)
    if args.action == "export":
        return _audit_export(args)
    return _audit_chain(args) if args.action in ("verify", "seal") else _audit_money(args)


def _audit_replay(args) -> int:
    """replay [--keep] [--json]: exit 0 when the rebuilt projections equal the live ones, 1 when not."""
    import psycopg

    from projections import replay

    bootstrap, dsn = resolve_endpoints(_home(args))
    stack = StackSettings.from_env({**os.environ, "AIDLEDGER_KAFKA_BOOTSTRAP": bootstrap, "AIDLEDGER_DATABASE_URL": dsn})
    try:
        report = replay.replay(dsn, stack, keep=args.keep, progress=replay.ProgressBar("replay"))
    except (RuntimeError, psycopg.Error) as err:  # exit 1 means "differs": anything that stopped the run is 2
        print(f"aidledger audit replay: could not replay: {err}", file=sys.stderr)
        return 2
    if args.json:
        _dump(report.as_dict())
        return 0 if report.ok else 1
    print(f"replayed {report.records:,} records from offset zero in {report.replay_seconds:.1f} s"
          f" ({report.records_per_s:,.0f}/s); compared in {report.compare_seconds:.1f} s")
    for t in report.tables:
        if t.same:
            print(f"  ledger.{t.table:<14} {t.live_rows:>12,} rows: identical")
            continue
        print(f"  ledger.{t.table:<14} DIFFERS: live {t.live_rows:,} rows, replay {t.replay_rows:,};"
              f" {t.only_live:,} only live, {t.only_replay:,} only in the replay, {t.differing:,} differ"
              + (f"; {t.schema}" if t.schema else ""))
        for e in t.examples:
            key = ", ".join(f"{k}={v}" for k, v in e["key"].items())
            print(f"    {e['kind']}: {key}" + (f" (columns: {', '.join(e['columns'])})" if e.get("columns") else ""))
    print(f"{'kept' if report.kept else 'dropped'} database {report.database}")
    print("ok: the live projections equal a rebuild from the log" if report.ok
          else "the live projections DIFFER from a rebuild from the log")
    return 0 if report.ok else 1


def _audit_export(args) -> int:
    """export --period YYYY-MM [--regency CODE] [--out DIR]: CSV files and a manifest of their hashes,
    signed with the audit seal key when `audit seal` made one."""
    import psycopg

    from infra.stack import StackError, seal_key
    from projections import export
    from schemas.topics import declared_topics

    if not args.period:
        print("aidledger audit export: --period YYYY-MM is required", file=sys.stderr)
        return 2
    home = _home(args)
    _, dsn = resolve_endpoints(home)
    stack = _stack()
    try:
        key = seal_key(stack, home)
    except StackError:
        key = None  # no seal key yet: the manifest goes unsigned, its hashes still hold
    out = Path(args.out) if args.out else home / "exports" / "-".join(filter(None, (args.period, args.regency)))
    try:
        with psycopg.connect(dsn) as conn:
            doc = export.export(conn, out, period=args.period, regency=args.regency,
                                ledger_topic=declared_topics(stack)["ledger"].name, private_key=key)
    except export.ExportError as err:
        print(f"aidledger audit export: {err}", file=sys.stderr)
        return 2
    if args.json:
        _dump({"folder": str(out), **doc})
        return 0
    for name, f in doc["manifest"]["files"].items():
        print(f"  {name:<14} {f['rows']:>10,} rows  sha256 {f['sha256']}")
    print(f"manifest {'signed' if doc['signature'] else 'unsigned (no audit seal key yet)'}; chain root"
          f" {doc['manifest']['chain']['root'][:16]}")
    print(f"export -> {out}")
    return 0


def _audit_money(args) -> int:
    """overspend | balances: the money audit from the projection."""
    import psycopg

    from projections.queries import money_audit

    as_of = _as_of(args.as_of)
    _, dsn = resolve_endpoints(_home(args))
    with psycopg.connect(dsn) as conn:
        report = money_audit(conn, as_of)
    if args.action == "balances":
        if args.json:
            _dump({"as_of": report["as_of"], "balances": report["balances"], "reconciliation": report["reconciliation"]})
            return 0
        for account, balance in sorted(report["balances"].items()):
            if args.all or not account.startswith("recipient:"):
                print(f"{account:<56} {balance:>+20,}".replace(",", "."))
        _print_reconciliation(report["reconciliation"])
        return 0
    if args.json:
        _dump({"as_of": report["as_of"], **report["overspending"], "reconciliation": report["reconciliation"]})
        return 0
    over = report["overspending"]
    if not any(over.values()):
        print("no programme, agency or budget line paid beyond its money")
    for r in over["programmes"]:
        print(f"programme {r['agency_code']} {r['programme_code']}: paid {_rp(r['disbursed_idr'])} of "
              f"{_rp(r['allocated_idr'])} allocated, {_rp(r['over_idr'])} over"
              f"{' (no allocation recorded)' if not r['allocated_idr'] else ''}")
    for r in over["agencies_over_allocation"]:
        print(f"agency {r['agency_code']}: paid {_rp(r['disbursed_idr'])} of {_rp(r['allocated_idr'])} allocated,"
              f" {_rp(r['over_idr'])} over")
    for r in over["agencies_over_releases"]:
        print(f"agency {r['agency_code']}: paid {_rp(r['disbursed_idr'])} of {_rp(r['received_idr'])} released to it,"
              f" {_rp(r['over_idr'])} over")
    for r in over["budget_lines"]:
        print(f"budget line {r['funding_account']}: charged {_rp(r['disbursed_idr'])} of {_rp(r['allocated_idr'])}"
              f" allocated, {_rp(r['over_idr'])} over")
    _print_reconciliation(report["reconciliation"])
    return 0


def _print_reconciliation(check: dict) -> None:
    print(f"books {'reconcile' if check['holds'] else 'DO NOT RECONCILE'}: sum of balances {_rp(check['sum_of_balances_idr'])},"
          f" treasuries paid out {_rp(check['treasury_outflow_idr'])}, agencies received {_rp(check['agency_inflow_idr'])}")


def cmd_deadletters(args) -> int:
    """List dead letters (optionally of one code), or send those of one code back to the ledger."""
    import psycopg

    from connectors import deadletters
    from schemas.topics import declared_topics

    _, dsn = resolve_endpoints(_home(args))
    with psycopg.connect(dsn, autocommit=True) as conn:
        if args.action == "replay":
            if not args.code:
                print("aidledger deadletters replay: --code is required", file=sys.stderr)
                return 2
            topics = declared_topics(_stack())
            result = deadletters.replay(conn, code=args.code, ledger_topic=topics["ledger"].name,
                                        submissions_topic=topics["submissions"].name)
            _dump(result) if args.json else print(
                f"{result['queued']} dead letters of {args.code} sent back to where they came from"
                f" ({result['already_replayed']} replayed before, {result['skipped']} not replayable)")
            return 0
        items = deadletters.listing(conn, code=args.code, limit=args.limit)
        if args.json:
            _dump({"deadletters": items, "by_code": deadletters.counts(conn)})
            return 0
    if not items:
        print("no dead letters")
    for d in items:
        src = d["source"]
        print(f"[{d['code']}] {src['topic']}[{src['partition']}]@{src['offset']} {d['stage']}"
              f"{' replayed ' + d['replayed_at'] if d['replayed_at'] else ''}: {d['detail']}")
    return 0


def _audit_chain(args) -> int:
    """verify [--seal FILE ...] [--public-key KEY] [--json] | seal [--out FILE] [--json]."""
    from datetime import datetime, timezone

    import psycopg

    from infra.stack import StackError, seal_key
    from projections import audit
    from schemas.topics import declared_topics

    home = _home(args)
    _, dsn = resolve_endpoints(home)
    stack = _stack()
    ledger = declared_topics(stack)["ledger"]
    partitions = range(ledger.partitions)
    with psycopg.connect(dsn) as conn:
        if args.action == "seal":
            try:
                key = seal_key(stack, home, new_key=audit.new_private_key)
            except StackError as err:
                print(f"aidledger audit seal: {err}", file=sys.stderr)
                return 2
            closed = datetime.now(timezone.utc).replace(microsecond=0)
            report, doc = audit.seal(conn, private_key=key, ledger_topic=ledger.name, partitions=partitions,
                                     closed_at=closed.isoformat())
            if doc is None:
                _print_audit(report, args.json)
                print("aidledger audit seal: the chain does not verify; nothing sealed", file=sys.stderr)
                return 1
            out = Path(args.out) if args.out else _free_name(home / "seals" / f"seal-{closed:%Y%m%dT%H%M%SZ}.json")
            audit.write_seal(doc, out)
            if args.json:
                _dump({"file": str(out), **doc})
            else:
                body = doc["seal"]
                print(f"sealed {body['events']:,} events in {len(body['heads'])} partitions at {body['closed_at']}")
                print(f"root {body['root']}")
                print(f"public key {body['public_key']}")
                print(f"seal -> {out} (give a copy to the auditor)")
            return 0
        public_key = None
        if args.public_key:
            text = Path(args.public_key).read_text() if Path(args.public_key).is_file() else args.public_key
            try:
                public_key = bytes.fromhex(text.strip())
            except ValueError:
                print("aidledger audit verify: --public-key must be hex (or a file holding it)", file=sys.stderr)
                return 2
        try:
            seals = [audit.read_seal(Path(f)) for f in args.seal]
        except audit.SealError as err:
            print(f"aidledger audit verify: {err}", file=sys.stderr)
            return 2
        report = audit.verify(conn, partitions=partitions, seals=seals, public_key=public_key)
    _print_audit(report, args.json)
    return 0 if report.ok else 1


def _free_name(path: Path) -> Path:
    n = 2
    candidate = path
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1
    return candidate


def _print_audit(report, as_json: bool) -> None:
    if as_json:
        _dump(report.as_dict())
        return
    print(f"{report.events:,} chained events in {len(report.partitions)} partitions checked in "
          f"{report.seconds:.1f} s ({report.events_per_s:,.0f} events/s)")
    for p, s in sorted(report.partitions.items()):
        bad = report.first_bad.get(p)
        if bad is None:
            print(f"  partition {p}: {s.length:,} positions hold; head {s.head.hex()[:16]}")
        else:
            print(f"  partition {p}: FIRST BAD POSITION {bad.position:,} ({bad.problem}): {bad.detail}")
    for f in report.findings:
        if f.partition is None or f.position is None:
            print(f"  {f.problem}: {f.detail}")
    for seal in report.seals:
        state = "signature holds" if seal.problem is None else f"NOT VALID: {seal.problem}"
        print(f"  seal {seal.name}, closed {seal.body.get('closed_at')}, key {seal.body.get('public_key', '')[:16]}: {state}")
    print("ok: the archive is as chained" + (" and sealed" if report.seals else "") if report.ok
          else f"{len(report.findings)} problem(s)")


def cmd_keys(args) -> int:
    """submissions-keypair: a new submissions key, first in the key file, its public key printed;
    submissions-public: the public keys of the configured ones (the first is the one to hand out)."""
    from infra.stack import StackError, add_submissions_key, submissions_key_path, submissions_keys
    from schemas.sealing import key_id, new_private_key, public_key

    stack = _stack()
    if args.key_file:
        stack = dataclasses.replace(stack, submissions_key="", submissions_key_file=args.key_file)
    if args.action == "submissions-keypair":
        if stack.submissions_key:
            print("aidledger keys: AIDLEDGER_SUBMISSIONS_KEY is set; unset it or name a --key-file", file=sys.stderr)
            return 2
        path = submissions_key_path(stack, _home(args))
        add_submissions_key(path, new_private_key())
        print(f"new submissions key first in {path}; restart the gateways, then hand agencies the public key:",
              file=sys.stderr)
    try:
        keys = submissions_keys(stack, _home(args))
    except StackError as err:
        print(f"aidledger keys: {err}", file=sys.stderr)
        return 1
    for private in keys[:1] if args.action == "submissions-keypair" else keys:
        public = public_key(private)
        print(f"{public.hex()}  key id {key_id(public)}")
    return 0


def cmd_status(args) -> int:
    import psycopg

    from projections.queries import summary

    _, dsn = resolve_endpoints(_home(args))
    with psycopg.connect(dsn) as conn:
        _dump(summary(conn, default_reference()))
    return 0


def cmd_settings(args) -> int:
    for group in ALL_GROUPS:
        print(f"## {group.__name__}: {group.__doc__.strip()}")
        for env, default, doc in group.describe():
            print(f"  {env:<36} default {default!r:<14} {doc}")
    return 0


def cmd_demo(args) -> int:
    from aidledger.demo import run_demo

    return run_demo(args)


def cmd_bench(args) -> int:
    from aidledger.bench import run_bench

    return run_bench(args)


def cmd_rules(args) -> int:
    """check | show | history | activate FILE | simulate --rulebook FILE."""
    import psycopg

    from aidcore.rulebook import RulebookError, configured_rulebook, default_rulebook

    reference = default_reference()
    if args.action == "check":
        if not args.file:
            print("aidledger rules check: name the rulebook file", file=sys.stderr)
            return 2
        try:
            book = configured_rulebook(args.file, reference)
        except RulebookError as err:
            print(f"aidledger: {err}", file=sys.stderr)
            return 1
        _dump(book.describe()) if args.json else print(f"{args.file}: rulebook {book.version} is valid "
                                                       f"({len(book.enabled)} rules on)")
        return 0
    from connectors.rulebooks import activate, active_rulebook, activation_history
    from schemas.topics import declared_topics

    home = _home(args)
    bootstrap, dsn = resolve_endpoints(home)
    stack = _stack()
    with psycopg.connect(dsn, autocommit=True) as conn:
        if args.action == "show":
            book = active_rulebook(conn, reference)
            _dump(book.describe()) if args.json else print(book.text or f"rulebook {book.version}")
            return 0
        if args.action == "history":
            _dump(activation_history(conn))
            return 0
        source = args.rulebook or args.file
        if not source:
            print(f"aidledger rules {args.action}: name the rulebook file", file=sys.stderr)
            return 2
        try:
            book = configured_rulebook(source, reference)
        except RulebookError as err:
            print(f"aidledger: {err}", file=sys.stderr)
            return 1
        ledger = declared_topics(stack)["ledger"]
        if args.action == "activate":
            done = activate(conn, book, ledger_topic=ledger.name, partitions=ledger.partitions,
                            by=args.who or os.environ.get("USER", "operator"))
            print(f"rulebook {book.version} {'is now in force' if done else 'was already in force'}")
            return 0
    from aidledger.simulate import render_table, simulate

    report = simulate(bootstrap, ledger.name, ledger.partitions, book, default_rulebook(reference), reference)
    _dump(report) if args.json else print(render_table(report))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aidledger", description="Event-sourced ledger for social assistance.")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, func, help_):
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--home", help="stack home directory (default: AIDLEDGER_HOME or .aidledger)")
        p.set_defaults(func=func)
        return p

    p = add("up", cmd_up, "run the stack in the foreground until Ctrl-C")
    p.add_argument("--workers", type=int, default=1, help="ledger worker processes (default 1)")
    p = add("demo", cmd_demo, "start a fresh stack, ingest a synthetic Lampung dataset, print a summary")
    p.add_argument("--records", type=int, default=120_000)
    p.add_argument("--seed", type=int, default=20261122)
    p.add_argument("--keep-running", action="store_true", help="leave the stack running after the summary")
    p = add("ingest", cmd_ingest, "validate a JSON Lines, CSV or Excel (.xlsx) file and record its disbursements")
    p.add_argument("file")
    p.add_argument("--report", help="rejection report path (default <home>/reports/<file>.rejections.csv)")
    p.add_argument("--json", action="store_true")
    p = add("wait", cmd_wait, "return once everything ingested is processed and projected")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--quiet", action="store_true")
    p = add("alerts", cmd_alerts, "list the alerts raised so far")
    p.add_argument("--json", action="store_true")
    p.add_argument("--rule")
    p.add_argument("--limit", type=int)
    p = add("trail", cmd_trail, "one person's full history, or one record's: the path of the money (budget line,"
                                " agency, programme, channel, recipient), reversals, totals, alerts")
    p.add_argument("identity", nargs="?", help="the NIK (or, with --provisional, the provisional id)")
    p.add_argument("--source-ref", nargs=2, metavar=("SYSTEM", "REF"),
                   help="instead of a person: the record under this source reference (payment, reversal or budget record)")
    p.add_argument("--as-of", metavar="TIMESTAMP",
                   help="the ledger as it stood then: ISO 8601 with offset, compared with intake times")
    p.add_argument("--provisional", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--who", help="recorded in the vault access log (default: the OS user)")
    p.add_argument("--why", default="trail", help="recorded in the vault access log")
    p = add("audit", cmd_audit, "the audit: who paid beyond the money allocated or released to them (overspend),"
                                " every account's balance (balances), both saying whether the books reconcile;"
                                " verify the archive's hash chain and seals (verify), or seal its heads (seal); rebuild every projection"
                                " from the log and compare it with the live one (replay); write a period's"
                                " ledger, balances and alerts as CSV files with a manifest (export)")
    p.add_argument("action", nargs="?", choices=["overspend", "balances", "verify", "seal", "replay", "export"],
                   default="overspend")
    p.add_argument("--as-of", metavar="TIMESTAMP", help="overspend, balances: as the ledger stood then (ISO 8601 with offset)")
    p.add_argument("--all", action="store_true", help="balances: recipients' accounts too")
    p.add_argument("--json", action="store_true")
    p.add_argument("--seal", action="append", default=[], metavar="FILE",
                   help="verify: also check against this seal file (repeatable)")
    p.add_argument("--public-key", help="verify: the seals must be signed by this Ed25519 key (hex, or a file holding it)")
    p.add_argument("--out", help="seal: where to write the seal (default <home>/seals/seal-<time>.json);"
                                 " export: the directory for the files (default <home>/exports/<period>[-<regency>])")
    p.add_argument("--keep", action="store_true", help="replay: keep the rebuilt database for inspection")
    p.add_argument("--period", help="export: the month, YYYY-MM")
    p.add_argument("--regency", help="export: only this regency (kabupaten/kota code, e.g. 1871)")
    p = add("rules", cmd_rules, "the detection rulebook: check a file, show the one in force, its history, "
                                "activate a new one, or simulate one on history")
    p.add_argument("action", choices=["check", "show", "history", "activate", "simulate"])
    p.add_argument("file", nargs="?", help="rulebook file (check, activate)")
    p.add_argument("--rulebook", help="the proposed rulebook file (simulate)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--who", help="recorded with an activation (default: the OS user)")
    p = add("deadletters", cmd_deadletters, "list dead letters, or replay those of one code after a fix")
    p.add_argument("action", nargs="?", choices=["list", "replay"], default="list")
    p.add_argument("--code", help="only this code (required for replay)")
    p.add_argument("--limit", type=int)
    p.add_argument("--json", action="store_true")
    p = add("keys", cmd_keys, "the submissions key: the SDK seals identities to its public key, the door opens them")
    p.add_argument("action", choices=("submissions-keypair", "submissions-public"),
                   help="submissions-keypair: make a new key (first in the key file, older ones kept) and print its"
                        " public key; submissions-public: print the public keys of the configured ones")
    p.add_argument("--key-file", help="the key file to use instead of AIDLEDGER_SUBMISSIONS_KEY(_FILE)")
    add("status", cmd_status, "summary of the ledger as JSON")
    add("settings", cmd_settings, "every setting with its environment variable and default")
    p = add("bench", cmd_bench, "measure throughput and latency; results to bench/results/")
    p.add_argument("--records", type=int, default=1_000_000, help="records per end-to-end round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--paced-rate", type=int, default=5000, help="offered events/s in the latency phase")
    p.add_argument("--paced-seconds", type=float, default=10.0)
    p.add_argument("--out", default="bench/results/latest.json")
    p = add("poll-db", cmd_poll_db, "poll an agency's PostgreSQL table by a watermark column and record its new rows"
                                     " (its position is kept in the ledger, committed with the rows)")
    p.add_argument("--dsn", required=True, help="the agency database (libpq connection string or URL)")
    p.add_argument("--table", required=True, help="schema.table to read")
    p.add_argument("--watermark", required=True, help="the column rows are read in order of (e.g. updated_at, id)")
    p.add_argument("--key", default="source_ref",
                   help="a unique column ordering rows that share a watermark value (default source_ref)")
    p.add_argument("--map", action="append", default=[], metavar="FIELD=COLUMN",
                   help="read input field FIELD from COLUMN (repeatable; default: the column of the field's name)")
    p.add_argument("--name", help="the source's name, under which its position is kept (default: the table)")
    p.add_argument("--batch-rows", type=int, default=1000, help="rows per transaction (default 1000)")
    p.add_argument("--poll-interval-s", type=float, default=5.0, help="wait between polls once caught up (default 5)")
    p.add_argument("--once", action="store_true", help="read until the table has nothing new, then exit")
    p.add_argument("--json", action="store_true")
    p = add("registries", cmd_registries, "national poverty registries: import an extract (DTKS, P3KE, REGSOSEK),"
                                          " list the extracts, report where the registries disagree")
    p.add_argument("action", choices=["import", "report", "extracts"])
    p.add_argument("file", nargs="?", help="import: the extract (.csv, .xlsx or .jsonl)")
    p.add_argument("--registry", help="import: DTKS, P3KE or REGSOSEK")
    p.add_argument("--extract-date", help="import: the date the extract was taken, YYYY-MM-DD")
    p.add_argument("--report", help="import: rejection report path (default <home>/reports/<file>.rejections.csv)")
    p.add_argument("--map", action="append", default=[], metavar="FIELD=COLUMN",
                   help="import: read FIELD (nik, kk, village_code, decile, row_ref, name) from COLUMN (repeatable)")
    p.add_argument("--regency", help="report: only people some registry places in this regency (4 digits)")
    p.add_argument("--examples", type=int, default=10, help="report: example tokens per kind (default 10)")
    p.add_argument("--json", action="store_true")
    p = add("worker", cmd_worker, "(internal) one ledger worker process")
    p.add_argument("--index", type=int, default=0)
    add("project", cmd_project, "(internal) the projector process")
    p = add("baseline", cmd_baseline, "(benchmark only) the straightforward per-event Faust worker")
    p.add_argument("--metrics-port", type=int, required=True)
    add("relay", cmd_relay, "(internal) the outbox relay process")
    add("gateway", cmd_gateway, "(internal) the HTTP gateway process")
    add("dashboard", cmd_dashboard, "(internal) the PMO web dashboard process")
    p = add("users", cmd_users, "users of the PMO dashboard: add one (prints a password once), issue a new"
                                " password (reset), disable, list")
    p.add_argument("action", choices=["add", "reset", "disable", "list"])
    p.add_argument("name", nargs="?", help="the user name")
    p.add_argument("--role", choices=["pmo", "regency", "auditor", "agency"],
                   help="add: pmo (PMO officer, all regions), regency (own regency), auditor (read-only), agency (own submissions)")
    p.add_argument("--regency", help="add, regency role: the 4-digit regency code, e.g. 1871")
    p.add_argument("--agency", help="add, agency role: the agency code")
    p.add_argument("--json", action="store_true")
    p = add("agencies", cmd_agencies, "agencies that submit over HTTP: add one (prints its API key once), "
                                      "issue another key, revoke, list")
    p.add_argument("action", choices=["add", "key", "revoke", "list"])
    p.add_argument("code", nargs="?", help="the agency code")
    p.add_argument("--programmes", help="add: programme codes it may submit for, e.g. PKH,BPNT")
    p.add_argument("--source-systems", help="add: source systems whose references it owns (default: the agency code)")
    p.add_argument("--key", help="revoke: only this key id")
    p.add_argument("--json", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.home:
        os.environ["AIDLEDGER_HOME"] = str(Path(args.home).resolve())
    try:
        return args.func(args) or 0
    except NoStack as exc:
        return int(exc.code)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
