"""The PMO dashboard: a web app for officers, auditors and agencies. The alert feed (live over
server-sent events), filters, an alert's case with its history and workflow actions, a
recipient's money trail, and a per-regency summary. Pages are rendered on the server; a small
script (static/dashboard.js) keeps the feed live. No build step.

A thin shell like the gateway: who may see and do what is decided by `aidcore.cases`, sessions
and CSRF tokens by `aidcore.sessions`; reads and writes are `projections.cases` functions, passed
in as `DashboardContext.cases` (connectors do not import projections; the CLI wires them).

Every route checks the signed-in user's role on the server: a regency officer sees only cases,
people and figures of their own regency, an auditor only reads, an agency sees only cases and
payments that involve its own submissions. Every POST carries the session's CSRF token; the
session cookie is HttpOnly and SameSite=Strict. A NIK is shown masked; PMO officers and auditors
may unmask one with a written reason, which the vault's access log records.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from types import ModuleType
from typing import Any, Callable
from urllib.parse import parse_qs, quote, urlencode

import orjson
import psycopg
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from aidcore import cases as rules
from aidcore import sessions
from aidcore.cases import STATUSES, User
from aidcore.reference import Reference
from aidcore.settings import DashboardSettings
from connectors import users
from connectors.gateway import Connections, GatewayError, TokenBuckets

log = logging.getLogger(__name__)

SESSION_COOKIE = "aid_session"
LOGIN_COOKIE = "aid_login"  # a pre-session nonce, so the sign-in form carries a CSRF token too
FORM_MAX_BYTES = 65_536
FEED_LIMIT = 300
STREAM_MAX_S = 600.0  # a stream ends after this; the browser reconnects and is authenticated again
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class DashboardContext:
    database_url: str
    reference: Reference
    session_key: bytes
    cases: ModuleType  # projections.cases
    trail: Callable[..., dict]  # projections.queries.trail
    clock: Callable[[], float] = time.time


class Refusal(Exception):
    """A page that cannot be shown or an action that cannot be done: status, code and words."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(code)
        self.status, self.code, self.message = status, code, message


class SignInNeeded(Exception):
    pass


# --- HTML ----------------------------------------------------------------------------------------

def e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def rp(amount: int | None) -> str:
    return "-" if amount is None else f"Rp {amount:,}".replace(",", ".")


def _page(title: str, body: str, user: User | None = None, csrf: str = "", status: int = 200,
          attrs: str = "") -> HTMLResponse:
    nav = ""
    if user is not None:
        scope = {"regency": f" · regency {user.regency_code}", "agency": f" · agency {user.agency_code}"}.get(user.role, "")
        nav = (f'<nav><a href="/">Alerts</a> <a href="/regencies">Regencies</a>'
               f'<span class="who">{e(user.username)} ({e(user.role)}{e(scope)})</span>'
               f'<form method="post" action="/logout" class="inline"><input type="hidden" name="csrf" value="{e(csrf)}">'
               f'<button>Sign out</button></form></nav>')
    text = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{e(title)} · aidledger</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<link rel="stylesheet" href="/static/dashboard.css"><script src="/static/dashboard.js" defer></script>'
            f'</head><body{attrs}><header><strong>aidledger PMO</strong>{nav}</header><main><h1>{e(title)}</h1>'
            f'{body}</main></body></html>')
    return HTMLResponse(text, status_code=status, headers=SECURITY_HEADERS)


def _table(headers: list[str], rows: list[str], table_id: str = "") -> str:
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    ident = f' id="{table_id}"' if table_id else ""
    return f'<table{ident}><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _select(name: str, options: list[tuple[str, str]], chosen: str | None, blank: str = "all") -> str:
    opts = [f'<option value="">{e(blank)}</option>'] + [
        f'<option value="{e(v)}"{" selected" if v == chosen else ""}>{e(label)}</option>' for v, label in options]
    return f'<label>{e(name.replace("_", " "))} <select name="{e(name)}">{"".join(opts)}</select></label>'


def alert_summary(a: dict) -> dict:
    """What the feed shows of an alert (and streams): no lines, no NIK."""
    return {k: a[k] for k in ("alert_id", "rule_id", "regency_code", "regency_name", "programme_code", "period",
                              "amount_idr_at_stake", "case_status", "status", "message", "raised_at",
                              "subject_kind", "subject_token")}


def _alert_row(a: dict) -> str:
    return (f'<tr id="alert-{e(a["alert_id"])}" data-alert-id="{e(a["alert_id"])}">'
            f'<td>{e(a["raised_at"][:19].replace("T", " "))}</td><td>{e(a["rule_id"])}</td>'
            f'<td>{e(a["regency_name"])}</td><td>{e(a["programme_code"])}</td><td>{e(a["period"])}</td>'
            f'<td class="num">{e(rp(a["amount_idr_at_stake"]))}</td>'
            f'<td class="status status-{e(a["case_status"])}">{e(a["case_status"])}</td><td>{e(a["status"])}</td>'
            f'<td><a href="/alerts/{e(a["alert_id"])}">{e(a["message"])}</a></td></tr>')


ALERT_HEADERS = ["raised", "rule", "regency", "programme", "period", "at stake", "case", "detection", "alert"]


def _bar_chart(items: list[dict], value: str, label: str) -> str:
    """An inline SVG bar chart, one bar per regency."""
    if not items:
        return ""
    top = max(r[value] for r in items) or 1
    bar_h, width, left = 22, 640, 190
    bars = []
    for i, r in enumerate(items):
        w = int((width - left - 110) * r[value] / top)
        y = i * bar_h
        bars.append(f'<text x="{left - 6}" y="{y + 15}" text-anchor="end">{e(r["regency_name"])}</text>'
                    f'<rect x="{left}" y="{y + 3}" width="{max(w, 1)}" height="{bar_h - 6}" fill="#b94a48"></rect>'
                    f'<text x="{left + w + 6}" y="{y + 15}">{e(rp(r[value]))}</text>')
    return (f'<figure><svg id="chart" role="img" aria-label="{e(label)}" width="{width}" height="{len(items) * bar_h}"'
            f' viewBox="0 0 {width} {len(items) * bar_h}" font-size="12">{"".join(bars)}</svg>'
            f'<figcaption>{e(label)}</figcaption></figure>')


# --- the live feed ----------------------------------------------------------------------------------

class Feed:
    """One listener for the whole process: LISTEN aid_alerts (signalled at commit by every write
    of alerts and case transitions, see migration 011), polled each second as a fallback; reads
    what changed past the last marks and hands it to every open stream's queue."""

    def __init__(self, ctx: DashboardContext):
        self.ctx = ctx
        self.queues: set[asyncio.Queue] = set()
        self.marks: tuple[int, int] | None = None

    def _read(self, conn_holder: list) -> list[dict]:
        if not conn_holder or conn_holder[0].closed:
            conn_holder[:] = [psycopg.connect(self.ctx.database_url, autocommit=True, connect_timeout=5)]
        conn = conn_holder[0]
        if self.marks is None or not self.queues:  # no page is watching: only keep the place
            self.marks = tuple(self.ctx.cases.change_marks(conn))
            return []
        found, self.marks = self.ctx.cases.changes(conn, self.ctx.reference, self.marks)
        return found

    async def run(self) -> None:
        holder: list = []
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.ctx.database_url, autocommit=True) as listen:
                    await listen.execute("LISTEN aid_alerts")
                    while True:
                        found = await run_in_threadpool(self._read, holder)
                        for item in found:
                            for q in list(self.queues):
                                q.put_nowait(item)
                        async for _ in listen.notifies(timeout=1.0, stop_after=1):
                            pass
            except asyncio.CancelledError:
                break
            except psycopg.Error as err:
                log.warning("feed listener: %s; reconnecting", type(err).__name__)
                holder.clear()
                await asyncio.sleep(1.0)
        for conn in holder:
            conn.close()


# --- the application ---------------------------------------------------------------------------------

def create_app(settings: DashboardSettings, ctx: DashboardContext) -> FastAPI:
    pool = Connections(ctx.database_url, settings.connections)
    logins = TokenBuckets(rate_per_s=0.5, burst=20)  # sign-in attempts per address: scrypt is costly
    feed = Feed(ctx)
    static = resources.files("connectors").joinpath("static")
    cookie_flags = "; HttpOnly; SameSite=Strict; Path=/" + ("; Secure" if settings.secure_cookies else "")

    async def db(fn: Callable[..., Any], *args, **kwargs) -> Any:
        def work():
            with pool.connection() as conn:
                return fn(conn, *args, **kwargs)
        return await run_in_threadpool(work)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(feed.run())
        yield
        task.cancel()
        pool.close()

    app = FastAPI(title="aidledger dashboard", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    @app.exception_handler(SignInNeeded)
    async def _sign_in(request: Request, exc: SignInNeeded):
        if request.url.path.startswith("/feed/"):
            return Response("sign in first", status_code=401, headers=SECURITY_HEADERS)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)

    @app.exception_handler(Refusal)
    async def _refused(request: Request, exc: Refusal):
        found = getattr(request.state, "session", None)
        user, csrf = found if found else (None, "")
        return _page(f"{exc.status} {'Forbidden' if exc.status == 403 else 'Refused'}",
                     f'<p class="refusal" data-code="{e(exc.code)}">{e(exc.message)} (<code>{e(exc.code)}</code>)</p>',
                     user, csrf, status=exc.status)

    @app.exception_handler(GatewayError)
    async def _storage(request: Request, exc: GatewayError):
        return _page("Unavailable", f"<p>{e(exc.message)}</p>", status=503)

    async def session(request: Request) -> tuple[User, str]:
        """(user, CSRF token) of the signed-in user, read fresh from the database."""
        opened = sessions.open_session(ctx.session_key, request.cookies.get(SESSION_COOKIE, ""), ctx.clock())
        if opened is None:
            raise SignInNeeded()
        username, nonce = opened
        user = await db(users.load, username)
        if user is None:
            raise SignInNeeded()
        request.state.session = (user, sessions.csrf_token(ctx.session_key, nonce))
        request.state.nonce = nonce
        return request.state.session

    async def form(request: Request, nonce: str) -> dict[str, str]:
        """The posted form, after its CSRF token is checked against the session's nonce."""
        body = await request.body()
        if len(body) > FORM_MAX_BYTES:
            raise Refusal(413, "form_too_large", "the form is too large")
        fields = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}
        if not sessions.csrf_matches(ctx.session_key, nonce, fields.get("csrf")):
            raise Refusal(403, "csrf_token_invalid", "the form's security token is missing or stale; reload the page")
        return fields

    def filters_of(request: Request, user: User) -> dict[str, str | None]:
        q = request.query_params
        chosen = {name: (q.get(name) or "").strip() or None for name in ctx.cases.FILTERS}
        if user.role == "regency":
            chosen["regency_code"] = user.regency_code
        return chosen

    def scope(user: User) -> dict[str, str | None]:
        return {"scope_regency": user.regency_code if user.role == "regency" else None,
                "scope_agency": user.agency_code if user.role == "agency" else None}

    def visible(user: User, a: dict) -> bool:
        return rules.may_see(user, a["regency_code"], a["agency_codes"])

    def filter_form(f: dict, user: User, rule_ids: list[str], fields: tuple[str, ...]) -> str:
        parts = []
        if "rule_id" in fields:
            parts.append(_select("rule_id", [(r, r) for r in rule_ids], f["rule_id"]))
        if "regency_code" in fields and user.role != "regency":
            parts.append(_select("regency_code", sorted(ctx.reference.regencies.items()), f["regency_code"]))
        parts.append(_select("programme_code", [(p, p) for p in sorted(ctx.reference.programmes)], f["programme_code"]))
        parts.append(f'<label>period <input name="period" placeholder="YYYY-MM" pattern="[0-9]{{4}}-[0-9]{{2}}"'
                     f' value="{e(f["period"] or "")}" size="8"></label>')
        if "case_status" in fields:
            parts.append(_select("case_status", [(s, s) for s in STATUSES], f["case_status"]))
        return f'<form method="get" class="filters">{"".join(parts)}<button>Filter</button></form>'

    # -- signing in ---------------------------------------------------------------------------------
    @app.get("/login", response_class=HTMLResponse)
    async def login_page(request: Request, next: str = "/", failed: str = ""):
        nonce = sessions.new_nonce()
        note = '<p class="refusal">Wrong name or password.</p>' if failed else ""
        body = (f'{note}<form method="post" action="/login" class="login">'
                f'<input type="hidden" name="csrf" value="{e(sessions.csrf_token(ctx.session_key, nonce))}">'
                f'<input type="hidden" name="next" value="{e(next)}">'
                f'<label>User name <input name="username" autocomplete="username" required></label>'
                f'<label>Password <input name="password" type="password" autocomplete="current-password" required></label>'
                f'<button>Sign in</button></form>')
        response = _page("Sign in", body)
        response.headers["Set-Cookie"] = f"{LOGIN_COOKIE}={nonce}; Max-Age=1800{cookie_flags}"
        return response

    @app.post("/login")
    async def login(request: Request):
        fields = await form(request, request.cookies.get(LOGIN_COOKIE, ""))
        if logins.take(request.client.host if request.client else "?") > 0:
            raise Refusal(429, "rate_limited", "too many sign-ins from this address; wait a minute")
        user = await db(users.check_password, fields.get("username", "").strip(), fields.get("password", ""))
        target = fields.get("next") or "/"
        if not target.startswith("/") or target.startswith("//"):
            target = "/"
        if user is None:
            log.info("sign-in refused")
            return RedirectResponse("/login?" + urlencode({"next": target, "failed": "1"}), status_code=303)
        expires = int(ctx.clock()) + settings.session_hours * 3600
        value = sessions.sign_session(ctx.session_key, user.username, expires, sessions.new_nonce())
        log.info("signed in: %s (%s)", user.username, user.role)
        response = RedirectResponse(target, status_code=303)
        response.headers.append("Set-Cookie", f"{SESSION_COOKIE}={value}; Max-Age={settings.session_hours * 3600}{cookie_flags}")
        response.headers.append("Set-Cookie", f"{LOGIN_COOKIE}=; Max-Age=0{cookie_flags}")
        return response

    @app.post("/logout")
    async def logout(request: Request):
        await session(request)
        await form(request, request.state.nonce)
        response = RedirectResponse("/login", status_code=303)
        response.headers["Set-Cookie"] = f"{SESSION_COOKIE}=; Max-Age=0{cookie_flags}"
        return response

    # -- the alert feed --------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    async def feed_page(request: Request):
        user, csrf = await session(request)
        f = filters_of(request, user)

        def read(conn):
            marks = ctx.cases.change_marks(conn)
            found = ctx.cases.cases(conn, ctx.reference, f, limit=FEED_LIMIT, **scope(user))
            rule_ids = [r[0] for r in conn.execute("SELECT DISTINCT rule_id FROM ledger.alerts ORDER BY 1")]
            return marks, found, rule_ids

        marks, found, rule_ids = await db(read)
        rows = [_alert_row(a) for a in found if visible(user, a)]
        query = urlencode({k: v for k, v in f.items() if v})
        body = (filter_form(f, user, rule_ids, ctx.cases.FILTERS)
                + f'<p class="live">feed: <span id="live">connecting</span> · {len(rows)} shown'
                + (f" (newest {FEED_LIMIT})" if len(found) >= FEED_LIMIT else "") + "</p>"
                + _table(ALERT_HEADERS, rows, "alerts"))
        attrs = (f' data-feed="/feed/events?{e(query + ("&" if query else "") + f"since={marks[0]}.{marks[1]}")}"')
        return _page("Alerts", body, user, csrf, attrs=attrs)

    @app.get("/feed/events")
    async def feed_events(request: Request, since: str = ""):
        user, _ = await session(request)
        f = filters_of(request, user)

        def wanted(a: dict) -> bool:
            return visible(user, a) and all(not f[name] or a[name] == f[name] for name in ctx.cases.FILTERS)

        try:
            start = tuple(int(x) for x in since.split(".")) if since else None
            assert start is None or len(start) == 2
        except (ValueError, AssertionError):
            raise Refusal(422, "since_invalid", "since is two numbers, e.g. 12.3") from None

        async def stream():
            queue: asyncio.Queue = asyncio.Queue()
            feed.queues.add(queue)  # before the catch-up read: what lands between is seen twice, never missed
            try:
                catch_up = (await db(ctx.cases.changes, ctx.reference, start))[0] if start else []
                yield b"retry: 1000\nevent: ready\ndata: {}\n\n"
                for a in catch_up:
                    if wanted(a):
                        yield b"event: alert\ndata: " + orjson.dumps(alert_summary(a)) + b"\n\n"
                ends = time.monotonic() + STREAM_MAX_S
                while time.monotonic() < ends:
                    try:
                        a = await asyncio.wait_for(queue.get(), timeout=15.0)
                    except asyncio.TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    if wanted(a):
                        yield b"event: alert\ndata: " + orjson.dumps(alert_summary(a)) + b"\n\n"
            finally:
                feed.queues.discard(queue)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    # -- a case -----------------------------------------------------------------------------------------
    async def visible_case(alert_id: str, user: User) -> tuple[dict, list[dict]]:
        def read(conn):
            found = ctx.cases.case(conn, ctx.reference, alert_id)
            return found, (ctx.cases.history(conn, alert_id) if found else [])

        found, past = await db(read)
        if found is None:
            raise Refusal(404, "not_found", "no such alert")
        if not visible(user, found):
            log.info("refused: %s (%s) opening a case outside their scope", user.username, user.role)
            raise Refusal(403, "case_out_of_scope", "this case is outside what your role may see")
        return found, past

    @app.get("/alerts/{alert_id}", response_class=HTMLResponse)
    async def case_page(request: Request, alert_id: str):
        user, csrf = await session(request)
        a, past = await visible_case(alert_id, user)
        facts = [("rule", a["rule_id"]), ("rulebook", a["rulebook_version"]), ("case status", a["case_status"]),
                 ("detection status", a["status"]), ("regency", f'{a["regency_name"]} ({a["regency_code"]})'),
                 ("village", a["region_code"]), ("programme", a["programme_code"]), ("period", a["period"]),
                 ("at stake", rp(a["amount_idr_at_stake"])), ("total", rp(a["amount_idr_total"])),
                 ("first raised", a["first_raised_at"]), ("last raised", a["raised_at"]),
                 ("subject", f'{a["subject_kind"]} {a["subject_token"][:16]}…')]
        dl = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in facts)
        person = a["subject_token"] if a["subject_kind"] == "PERSON" else ""
        lines = [f'<tr><td>{e(ln["source_system"])}/{e(ln["source_ref"])}</td><td>{e(ln["programme_code"])}</td>'
                 f'<td>{e(ln["source_type"])}</td><td class="num">{e(rp(ln["amount_idr"]))}</td>'
                 f'<td>{e(ln["disbursed_at"])}</td><td>' + (f'<a href="/people/{e(ln["member_token"] or person)}">recipient</a>'
                                                             if ln["member_token"] or person else "") + "</td></tr>"
                 for ln in a["events"]]
        hist = [f'<tr data-step="{t["step"]}"><td>{e(t["at"])}</td><td>{e(t["actor"])}</td><td>{e(t["role"])}</td>'
                f'<td>{e(t["action"])}</td><td>{e(t["from_status"])} → {e(t["to_status"])}</td><td>{e(t["reason"])}</td>'
                f'<td>{e((t["reversal_source_system"] or "") + ("/" + t["reversal_source_ref"] if t["reversal_source_ref"] else ""))}</td></tr>'
                for t in past]
        forms = []
        for action in rules.actions_open_to(user, a["case_status"]):
            extra = ""
            if action == "resolve":
                extra = ('<label>reversal source system <input name="reversal_source_system" required></label>'
                         '<label>reversal source ref <input name="reversal_source_ref" required></label>')
            need = " required" if action in ("accept", "reopen") else ""
            label = {"accept": "Accept as allowed"}.get(action, action.capitalize())
            forms.append(f'<form method="post" action="/alerts/{e(alert_id)}/transitions" class="action" id="do-{action}">'
                         f'<input type="hidden" name="csrf" value="{e(csrf)}"><input type="hidden" name="action" value="{action}">'
                         f'<input type="hidden" name="step" value="{a["case_step"] + 1}">{extra}'
                         f'<label>reason <input name="reason" size="40"{need}></label><button>{e(label)}</button></form>')
        body = (f'<p class="message">{e(a["message"])}</p><dl>{dl}</dl><h2>Payments</h2>'
                + _table(["reference", "programme", "source", "amount", "disbursed", ""], lines)
                + "<h2>History</h2>" + (_table(["at", "who", "role", "action", "status", "reason", "reversal"], hist, "history")
                                        if hist else '<p id="history">No transitions yet: the case is open.</p>')
                + ("<h2>Act</h2>" + "".join(forms) if forms else ""))
        return _page(f"Alert {alert_id[:12]}", body, user, csrf)

    @app.post("/alerts/{alert_id}/transitions")
    async def transition(request: Request, alert_id: str):
        user, _ = await session(request)
        fields = await form(request, request.state.nonce)
        if not rules.may_act(user):  # before anything is read: a read-only role learns nothing here
            raise Refusal(403, "case_role_read_only", f"the {user.role} role reads cases but does not change them")
        a, _ = await visible_case(alert_id, user)
        reversal = (fields.get("reversal_source_system", ""), fields.get("reversal_source_ref", ""))
        has_reversal = all(x.strip() for x in reversal)
        found = has_reversal and await db(ctx.cases.reversal_recorded, *(x.strip() for x in reversal))
        decided = rules.decide_transition(user, a["regency_code"], a["agency_codes"], a["case_status"],
                                          fields.get("action", ""), fields.get("reason", ""),
                                          reversal if has_reversal else None, bool(found))
        if isinstance(decided, rules.Refused):
            raise Refusal(403 if decided.code in ("case_role_read_only", "case_out_of_scope") else 422,
                          decided.code, decided.message)
        try:
            step = int(fields.get("step", ""))
        except ValueError:
            step = -1
        if step != a["case_step"] + 1 or not await db(ctx.cases.record_transition, alert_id, step, decided,
                                                       user.username, user.role):
            raise Refusal(409, "case_changed_meanwhile", "someone changed this case since you opened it; reload and look again")
        log.info("case %s: %s by %s (%s)", alert_id, decided.action, user.username, user.role)
        return RedirectResponse(f"/alerts/{quote(alert_id)}", status_code=303)

    # -- a recipient --------------------------------------------------------------------------------------
    async def person_page(request: Request, token: str, user: User, csrf: str, clear: dict | None = None) -> HTMLResponse:
        def read(conn):
            who = f"dashboard:{user.username}"
            found = ctx.trail(conn, ctx.reference, token, who=who, why="dashboard", reveal_name=False)
            alerts = ctx.cases.cases(conn, ctx.reference, {"person_token": token}, **scope(user))
            return found, alerts, ctx.cases.masked_identity(conn, token)

        found, alerts, identity = await db(read)
        payments = [p for p in found["events"] if rules.may_see(user, p["region_code"][:4], [p["agency_code"]])]
        alerts = [a for a in alerts if visible(user, a)]
        if not payments and not alerts:
            raise Refusal(403 if found["events"] else 404, "person_out_of_scope" if found["events"] else "not_found",
                          "this person has no payments or cases you may see")
        if clear is not None:
            who = (f'<p class="unmasked">NIK <strong id="nik">{e(clear["nik"] or "-")}</strong>'
                   f'{" · provisional id " + e(clear["provisional_id"]) if clear["provisional_id"] else ""}'
                   f' · name {e(clear["recipient_name"])} <em>(this view is in the vault access log)</em></p>')
        else:
            who = f'<p>NIK <span id="nik">{e(identity["masked_nik"] or "-")}</span> ({e(identity["identity_kind"] or "unknown")})</p>'
            if rules.may_unmask(user):
                who += (f'<form method="post" action="/people/{e(token)}/unmask" class="action" id="unmask">'
                        f'<input type="hidden" name="csrf" value="{e(csrf)}"><label>reason to see the NIK'
                        f' <input name="reason" size="40" required></label><button>Show NIK</button></form>')
        rows = []
        for p in payments:
            path = p["path"]
            revs = "; ".join(f'{r["source_system"]}/{r["source_ref"]} {rp(r["amount_idr"])} {r["status"]}'
                             for r in p["reversals"])
            rows.append(f'<tr><td>{e(p["disbursed_at"][:10])}</td><td>{e(p["source_system"])}/{e(p["source_ref"])}</td>'
                        f'<td>{e(p["programme_code"])}</td><td>{e(p["period"])}</td><td class="num">{e(rp(p["amount_idr"]))}</td>'
                        f'<td class="num">{e(rp(p["net_amount_idr"]))}</td>'
                        f'<td>{e(", ".join(path["treasury"]) or "-")} → {e(p["funding_account"])} → {e(p["agency_code"])}'
                        f' → {e(p["programme_code"])} → {e(p["channel"])}</td><td>{e(p["outcome"])}</td><td>{e(revs)}</td></tr>')
        body = (who + "<h2>Money trail</h2>"
                + _table(["disbursed", "reference", "programme", "period", "amount", "net", "path (treasury → budget"
                          " line → agency → programme → channel)", "outcome", "reversals"], rows, "trail")
                + "<h2>Alerts</h2>" + _table(ALERT_HEADERS, [_alert_row(a) for a in alerts]))
        return _page(f"Recipient {token[:16]}…", body, user, csrf)

    @app.get("/people/{token}", response_class=HTMLResponse)
    async def person(request: Request, token: str):
        user, csrf = await session(request)
        return await person_page(request, token, user, csrf)

    @app.post("/people/{token}/unmask", response_class=HTMLResponse)
    async def unmask(request: Request, token: str):
        user, csrf = await session(request)
        fields = await form(request, request.state.nonce)
        if not rules.may_unmask(user):
            raise Refusal(403, "unmask_not_allowed", f"the {user.role} role sees NIKs masked only")
        reason = fields.get("reason", "").strip()
        if not reason:
            raise Refusal(422, "unmask_reason_required", "say why you need to see the NIK")
        await person_page(request, token, user, csrf)  # the same scope checks as the page itself
        clear = await db(ctx.cases.unmask, token, who=f"dashboard:{user.username} ({user.role})",
                         why=reason[:rules.REASON_MAX_CHARS])
        log.info("NIK unmasked by %s (%s)", user.username, user.role)
        return await person_page(request, token, user, csrf, clear)

    # -- the regencies ------------------------------------------------------------------------------------
    @app.get("/regencies", response_class=HTMLResponse)
    async def regencies(request: Request):
        user, csrf = await session(request)
        f = filters_of(request, user)
        summary = await db(ctx.cases.regency_summary, ctx.reference, f, **scope(user))
        never = (lambda r: f'{r["people_never_paid"]:,}'.replace(",", ".")) if summary["registry_available"] else (lambda r: "n/a")
        rows = [f'<tr data-regency="{e(r["regency_code"])}"><td>{e(r["regency_code"])}</td><td>{e(r["regency_name"])}</td>'
                f'<td class="num">{r["alerts"]}</td><td class="num">{e(rp(r["amount_idr_at_stake"]))}</td>'
                f'<td class="num">{r["people_reached"]}</td><td class="num">{e(never(r))}</td></tr>'
                for r in summary["regencies"]]
        note = "" if summary["registry_available"] else (
            '<p class="note">People registered but never paid: not available (no registry view in this ledger'
            + (", or not for an agency's view" if user.role == "agency" else "") + ").</p>")
        body = (filter_form(f, user, [], ("programme_code", "period")) + note
                + _table(["code", "regency", "alerts", "at stake", "people reached", "registered, never paid"], rows,
                         "regencies")
                + _bar_chart(summary["regencies"], "amount_idr_at_stake", "Rupiah at stake in alerts, by regency"))
        return _page("Regencies", body, user, csrf)

    # -- plumbing ---------------------------------------------------------------------------------------
    @app.get("/static/{name}")
    async def static_file(name: str):
        kinds = {".js": "text/javascript", ".css": "text/css"}
        kind = next((v for k, v in kinds.items() if name.endswith(k)), None)
        item = static.joinpath(name)
        if kind is None or "/" in name or not item.is_file():
            return Response("not found", status_code=404)
        return Response(item.read_bytes(), media_type=kind, headers={"Cache-Control": "max-age=300",
                                                                     "X-Content-Type-Options": "nosniff"})

    @app.get("/healthz")
    async def healthz():
        await db(lambda conn: conn.execute("SELECT 1"))
        return {"status": "ok"}

    return app


def serve(settings: DashboardSettings, ctx: DashboardContext) -> None:
    """Run the dashboard until SIGTERM/SIGINT. Uvicorn's access log is off: paths hold person
    tokens; the dashboard logs sign-ins, refusals and actions itself."""
    import uvicorn

    uvicorn.run(create_app(settings, ctx), host=settings.host, port=settings.port, access_log=False,
                log_level="warning", timeout_graceful_shutdown=3)
