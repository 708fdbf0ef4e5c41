"""The PMO dashboard through its public doors, against the real stack: a real headless browser
(Debian's chromium, driven by Playwright) sees a planted duplicate appear live and acknowledges
it; plain HTTP checks the roles, the CSRF tokens, the NIK masking and its access log."""

from __future__ import annotations

import http.cookiejar
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest

from aidcore import nik as nikmod

from conftest import wait_until

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
NIK_LIVE = "1871014504850101"  # regency 1871 (Kota Bandar Lampung)
NIK_HTTP = "1871014504850202"


def payment(ref: str, nik: str, **extra) -> dict:
    row = {"source_system": "DASH", "source_ref": ref, "source_type": "APBN", "agency_code": "KEMENSOS",
           "programme_code": "PIP", "nik": nik, "provisional_id": "", "kk": "", "recipient_name": "Warga Uji",
           "amount_idr": 450000, "kind": "CASH", "period": "2026-04", "disbursed_at": "2026-04-03T10:00:00+07:00",
           "channel": "BANK_TRANSFER", "region_code": "1871011001", "funding_account": "FA-PIP"}
    row.update(extra)
    return row


def ingest(cli, tmp_path: Path, name: str, rows: list[dict]) -> None:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = json.loads(cli.run("ingest", str(path), "--json").stdout)
    assert out["accepted"] == len(rows), out


def alert_of(stack, nik: str) -> str | None:
    from infra.stack import token_key

    token = nikmod.person_token(token_key(stack.stack, stack.home), nik)
    with psycopg.connect(stack.database_url) as conn:
        row = conn.execute("SELECT alert_id FROM ledger.alerts WHERE subject_token = %s", (token,)).fetchone()
    return row[0] if row else None


@pytest.fixture(scope="module")
def accounts(stack, cli):
    def add(name, *args):
        return cli.run("users", "add", name, *args).stdout.strip().splitlines()[-1]

    made = {
        "pmo": ("pmo1", add("pmo1", "--role", "pmo")),
        "own": ("bdl1", add("bdl1", "--role", "regency", "--regency", "1871")),
        "other": ("lsel1", add("lsel1", "--role", "regency", "--regency", "1801")),
        "auditor": ("audit1", add("audit1", "--role", "auditor")),
        "agency": ("kemensos1", add("kemensos1", "--role", "agency", "--agency", "KEMENSOS")),
        "other_agency": ("dinsos1", add("dinsos1", "--role", "agency", "--agency", "DINSOS-LAMPUNG")),
    }
    return made


@pytest.fixture(scope="module")
def url(stack):
    base = stack.endpoints()["dashboard"]

    def up():
        try:
            return urllib.request.urlopen(base + "/healthz", timeout=2).status == 200
        except OSError:
            return False

    wait_until(up, 60, "the dashboard to answer")
    return base


class Browser:
    """A plain HTTP client with its own cookies, redirects not followed."""

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    def __init__(self, base: str):
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), self._NoRedirect)

    def request(self, path: str, form: dict | None = None) -> tuple[int, str, Any]:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        try:
            with self.opener.open(self.base + path, data=data, timeout=30) as r:
                return r.status, r.read().decode(), r.headers
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(), err.headers

    def csrf(self, path: str) -> str:
        status, page, _ = self.request(path)
        assert status == 200, (status, page[:300])
        return re.search(r'name="csrf" value="([^"]+)"', page).group(1)

    def sign_in(self, name: str, password: str) -> "Browser":
        token = self.csrf("/login")
        status, _, headers = self.request("/login", {"csrf": token, "username": name, "password": password, "next": "/"})
        assert status == 303 and headers["Location"] == "/", (status, headers)
        return self


def test_a_duplicate_appears_live_is_acknowledged_and_other_regencies_are_refused(stack, cli, url, accounts, tmp_path):
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "chromium is missing: `make test` installs it (infra/system-packages.sh)"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(url + "/")
            assert "/login" in page.url
            page.fill("input[name=username]", accounts["pmo"][0])
            page.fill("input[name=password]", accounts["pmo"][1])
            page.click("form.login button")
            page.wait_for_selector("body[data-live=on]", timeout=15_000)
            assert page.locator("#alerts tbody tr").count() == 0
            page.evaluate("window.notReloaded = true")

            ingest(cli, tmp_path, "planted.jsonl", [payment("LIVE-1", NIK_LIVE),
                                                    payment("LIVE-2", NIK_LIVE, disbursed_at="2026-04-04T10:00:00+07:00")])
            alert_id = wait_until(lambda: alert_of(stack, NIK_LIVE), 90, "the planted duplicate's alert", poll_s=0.05)
            projected = time.monotonic()
            row = page.locator(f"#alert-{alert_id}")
            row.wait_for(timeout=5_000)  # the assertion below is the 1 s; a slower row fails it, not this wait
            shown_after_s = time.monotonic() - projected
            assert shown_after_s < 1.0, f"the alert showed {shown_after_s:.2f}s after it was projected"
            assert page.evaluate("window.notReloaded === true")  # the same page: the row came over the stream
            assert "duplicate_person_programme_period" in row.inner_text()

            row.locator("a").click()
            page.wait_for_url(f"**/alerts/{alert_id}")
            page.fill("#do-acknowledge input[name=reason]", "looking into it")
            page.click("#do-acknowledge button")
            page.wait_for_selector("#history tr[data-step='1']")
            history = page.inner_text("#history")
            assert "acknowledge" in history and accounts["pmo"][0] in history and "open → acknowledged" in history
            assert "looking into it" in history

            other = browser.new_page()  # its own context: signed in as nobody yet
            other.goto(url + "/login")
            other.fill("input[name=username]", accounts["other"][0])
            other.fill("input[name=password]", accounts["other"][1])
            other.click("form.login button")
            other.wait_for_selector("#alerts")
            assert other.locator(f"#alert-{alert_id}").count() == 0
            response = other.goto(f"{url}/alerts/{alert_id}")
            assert response.status == 403
            assert "Forbidden" in other.inner_text("h1")
            assert other.locator("#history").count() == 0
        finally:
            browser.close()


@pytest.fixture(scope="module")
def case_http(stack, cli, url, tmp_path_factory):
    """A second planted duplicate, with a reversal of its second payment on record."""
    tmp = tmp_path_factory.mktemp("dash")
    ingest(cli, tmp, "http.jsonl", [payment("HTTP-1", NIK_HTTP),
                                    payment("HTTP-2", NIK_HTTP, disbursed_at="2026-04-05T10:00:00+07:00")])
    ingest(cli, tmp, "reversal.jsonl", [{
        "record_type": "reversal", "source_system": "DASH", "source_ref": "HTTP-2-REV", "original_source_ref": "HTTP-2",
        "agency_code": "KEMENSOS", "nik": NIK_HTTP, "amount_idr": 450000, "reason": "paid twice",
        "reversed_at": "2026-04-09T09:00:00+07:00"}])
    return wait_until(lambda: alert_of(stack, NIK_HTTP), 90, "the second planted duplicate's alert")


def test_signing_in_is_required_everywhere(url, case_http):
    anon = Browser(url)
    for path in ("/", f"/alerts/{case_http}", "/regencies", "/people/x"):
        status, _, headers = anon.request(path)
        assert status == 303 and headers["Location"].startswith("/login?next="), path
    assert anon.request("/feed/events")[0] == 401
    assert anon.request(f"/alerts/{case_http}/transitions", {"action": "acknowledge", "step": "1"})[0] == 303
    status, _, headers = anon.request("/login")
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie


def test_a_wrong_password_is_refused(url, accounts):
    b = Browser(url)
    token = b.csrf("/login")
    status, _, headers = b.request("/login", {"csrf": token, "username": accounts["pmo"][0], "password": "nope"})
    assert status == 303 and "failed=1" in headers["Location"]
    assert b.request("/")[0] == 303


def test_posts_need_the_sessions_csrf_token(url, accounts, case_http):
    pmo = Browser(url).sign_in(*accounts["pmo"])
    other = Browser(url).sign_in(*accounts["own"])
    form = {"action": "accept", "reason": "allowed", "step": "1"}
    for token in (None, "forged", other.csrf("/")):
        fields = dict(form) if token is None else {**form, "csrf": token}
        status, page, _ = pmo.request(f"/alerts/{case_http}/transitions", fields)
        assert status == 403 and "csrf_token_invalid" in page
    status, page, _ = pmo.request(f"/alerts/{case_http}", None)
    assert "No transitions yet" in page
    login = Browser(url)
    status, page, _ = login.request("/login", {"username": accounts["pmo"][0], "password": accounts["pmo"][1]})
    assert status == 403 and "csrf_token_invalid" in page


def test_roles_are_checked_on_the_server(stack, url, accounts, case_http):
    auditor = Browser(url).sign_in(*accounts["auditor"])
    status, page, _ = auditor.request(f"/alerts/{case_http}")
    assert status == 200 and 'id="do-' not in page  # reads, and is offered no action
    status, page, _ = auditor.request(f"/alerts/{case_http}/transitions",
                                      {"csrf": auditor.csrf("/"), "action": "acknowledge", "step": "1"})
    assert status == 403 and "case_role_read_only" in page

    other = Browser(url).sign_in(*accounts["other"])
    assert other.request(f"/alerts/{case_http}")[0] == 403
    status, page, _ = other.request(f"/alerts/{case_http}/transitions",
                                    {"csrf": other.csrf("/"), "action": "acknowledge", "step": "1"})
    assert status == 403 and "case_out_of_scope" in page
    status, page, _ = other.request("/regencies")
    assert status == 200 and 'data-regency="1871"' not in page

    agency = Browser(url).sign_in(*accounts["agency"])
    status, page, _ = agency.request(f"/alerts/{case_http}")
    assert status == 200 and 'id="do-' not in page
    assert Browser(url).sign_in(*accounts["other_agency"]).request(f"/alerts/{case_http}")[0] == 403

    with psycopg.connect(stack.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM ledger.case_transitions WHERE alert_id = %s",
                            (case_http,)).fetchone()[0] == 0


def test_resolving_links_a_recorded_reversal_and_history_is_append_only(stack, url, accounts, case_http):
    own = Browser(url).sign_in(*accounts["own"])
    path = f"/alerts/{case_http}/transitions"
    status, page, _ = own.request(path, {"csrf": own.csrf("/"), "action": "resolve", "step": "1",
                                         "reversal_source_system": "DASH", "reversal_source_ref": "NO-SUCH"})
    assert status == 422 and "case_reversal_not_found" in page
    status, page, _ = own.request(path, {"csrf": own.csrf("/"), "action": "accept", "step": "1", "reason": " "})
    assert status == 422 and "case_reason_required" in page
    # the reversal may still be on its way through the stream: intake's record of it is enough
    status, _, headers = own.request(path, {"csrf": own.csrf("/"), "action": "resolve", "step": "1",
                                            "reversal_source_system": "DASH", "reversal_source_ref": "HTTP-2-REV"})
    assert status == 303, status
    status, page, _ = own.request(path, {"csrf": own.csrf("/"), "action": "reopen", "step": "1", "reason": "stale page"})
    assert status == 409 and "case_changed_meanwhile" in page
    status, page, _ = own.request(f"/alerts/{case_http}")
    assert "DASH/HTTP-2-REV" in page and "open → resolved" in page and accounts["own"][0] in page
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        row = conn.execute("SELECT actor, role, to_status, reversal_source_ref, at FROM ledger.case_transitions"
                           " WHERE alert_id = %s", (case_http,)).fetchone()
        assert row[:4] == (accounts["own"][0], "regency", "resolved", "HTTP-2-REV") and row[4] is not None
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE ledger.case_transitions SET actor = 'someone else'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM ledger.case_transitions")


def test_nik_is_masked_and_every_unmasked_view_is_logged(stack, url, accounts, case_http):
    from infra.stack import token_key

    token = nikmod.person_token(token_key(stack.stack, stack.home), NIK_HTTP)
    own = Browser(url).sign_in(*accounts["own"])
    status, page, _ = own.request(f"/people/{token}")
    assert status == 200 and nikmod.mask(NIK_HTTP) in page and NIK_HTTP not in page
    assert "DASH/HTTP-1" in page and 'id="unmask"' not in page
    assert own.request(f"/people/{token}/unmask", {"csrf": own.csrf("/"), "reason": "curious"})[0] == 403
    assert Browser(url).sign_in(*accounts["other"]).request(f"/people/{token}")[0] == 403

    auditor = Browser(url).sign_in(*accounts["auditor"])
    status, page, _ = auditor.request(f"/people/{token}/unmask", {"csrf": auditor.csrf("/"), "reason": ""})
    assert status == 422 and NIK_HTTP not in page
    status, page, headers = auditor.request(f"/people/{token}/unmask",
                                            {"csrf": auditor.csrf("/"), "reason": "field check of case 7"})
    assert status == 200 and NIK_HTTP in page and headers["Cache-Control"] == "no-store"
    with psycopg.connect(stack.database_url) as conn:
        logged = conn.execute("SELECT who, why FROM vault.access_log WHERE person_token = %s", (token,)).fetchall()
    assert logged == [(f"dashboard:{accounts['auditor'][0]} (auditor)", "field check of case 7")]


def test_regency_summary_and_the_registry_column(stack, url, accounts, case_http):
    pmo = Browser(url).sign_in(*accounts["pmo"])
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        has_registry = conn.execute("SELECT to_regclass('ledger.registered_people') IS NOT NULL").fetchone()[0]
        at_stake = conn.execute("SELECT sum(amount_idr_at_stake) FROM ledger.alerts WHERE region_code LIKE '1871%'"
                                ).fetchone()[0]
    status, page, _ = pmo.request("/regencies")
    assert status == 200 and '<svg id="chart"' in page
    row = re.search(r'<tr data-regency="1871">(.*?)</tr>', page).group(1)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
    assert cells[2] == "2" and cells[4] == "2"  # two cases, two people paid
    assert cells[3] == f"Rp {at_stake:,}".replace(",", ".") and at_stake > 0
    if has_registry:
        assert cells[5].replace(".", "").isdigit()
        return
    assert cells[5] == "n/a" and "not available" in page
    # the registry view comes with the registry import; a stand-in of its shape, for this test only
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        paid = conn.execute("SELECT person_token FROM ledger.person_totals LIMIT 1").fetchone()[0]
        conn.execute("CREATE VIEW ledger.registered_people AS SELECT * FROM (VALUES (%s, 'DTKS', '1871', '1871011001', 1),"
                     " ('never-paid-1', 'DTKS', '1871', '1871011001', 2), ('never-paid-2', 'DTKS', '1801', '1801011001', 1))"
                     " AS r(person_token, registry, regency_code, village_code, decile)".replace("%s", "'" + paid + "'"))
        try:
            status, page, _ = pmo.request("/regencies")
        finally:
            conn.execute("DROP VIEW ledger.registered_people")
    never = dict(re.findall(r'<tr data-regency="(\d+)">(?:<td[^>]*>.*?</td>){5}<td[^>]*>(.*?)</td></tr>', page))
    assert never == {"1801": "1", "1871": "1"} and "not available" not in page
