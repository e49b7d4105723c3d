"""The status check upstream_releases (qmailhost/sources.py), without a host and without the Internet.

A plain HTTP server on 127.0.0.1 plays the three upstreams (GitHub's releases API, the TLS
patch's index page, spamdyke's page) and counts what it is asked; sources.UPSTREAMS is pointed
at it. Proven: a newer release warns naming both versions and where to look, versions compare
as numbers, the TLS patch counts only patches for the notqmail in use (or a newer one), the
inventory's version is the one compared, an upstream that is down, slow, unnamed, failing or
talking nonsense makes the check skip naming it (never an error), the host's own runs and the
setting switched off ask nothing, and the sandbox inventory switches it off.
"""

from __future__ import annotations

import json
import runpy
import socket
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from qmailhost import checks, sources
from qmailhost.checks import OK, SKIPPED, WARNING, Target
from qmailhost.platform import debian, netbsd
from qmailhost.settings import Settings, SettingsError, declared_settings

PROJECT = Path(__file__).resolve().parent.parent
ALICE = [{"name": "alice", "password_env": "QMAILHOST_TEST_PASSWORD"}]
FINAL = "mess822 0.58, mess822-auth-patch 2004, checkpassword 0.90: final releases"
ALL_CURRENT = f"notqmail 1.08, qmail-tls-patch 20231230, spamdyke 5.0.1 current; {FINAL}"
A_SHA512 = "ab" * 64  # an override of a version needs a sum; never checked here (nothing is fetched)

INOA_INDEX = """<html><body><h1>qmail-tls</h1><ul>
<li><a href="netqmail-1.06-tls-20231230.patch">netqmail-1.06-tls-20231230.patch</a></li>
<li><a href="notqmail-1.07-tls-20200107.patch">notqmail-1.07-tls-20200107.patch</a></li>
<li><a href="notqmail-1.08-tls-20210106.patch">notqmail-1.08-tls-20210106.patch</a></li>
<li><a href="notqmail-1.08-tls-20231230.patch">notqmail-1.08-tls-20231230.patch</a></li>
{more}</ul></body></html>"""
SPAMDYKE_PAGE = """<html><body><h2>Download</h2>
<a href="releases/spamdyke-4.3.1.tgz">spamdyke-4.3.1.tgz</a> (old)
<a href="releases/spamdyke-5.0.1.tgz">spamdyke-5.0.1.tgz</a> (current)
{more}</body></html>"""


def github(tag: str) -> tuple[int, str, str]:
    return 200, "application/json", json.dumps({"tag_name": tag, "name": tag, "draft": False})


def html(text: str) -> tuple[int, str, str]:
    return 200, "text/html", text


class Upstreams:
    """The three upstreams on 127.0.0.1: PAGES path -> (status, type, body); ASKED: (path, User-Agent)."""

    def __init__(self):
        self.pages = {
            "/repos/notqmail/notqmail/releases/latest": github("notqmail-1.08"),
            "/qmail-tls/": html(INOA_INDEX.format(more="")),
            "/spamdyke/": html(SPAMDYKE_PAGE.format(more="")),
        }
        self.asked: list[tuple[str, str]] = []
        self.delay = 0.0
        upstreams = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                upstreams.asked.append((self.path, self.headers.get("User-Agent", "")))
                time.sleep(upstreams.delay)
                status, kind, body = upstreams.pages.get(self.path, (404, "text/plain", "not found"))
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """The test account's password, and no proxy between requests and 127.0.0.1."""
    monkeypatch.setenv("QMAILHOST_TEST_PASSWORD", "correct horse")
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def point(monkeypatch, component: str, url: str) -> None:
    monkeypatch.setitem(sources.UPSTREAMS, component, replace(sources.UPSTREAMS[component], url=url))


@pytest.fixture
def upstreams(monkeypatch):
    """Every upstream the check asks, played on 127.0.0.1 (all current), and nothing else."""
    served = Upstreams()
    point(monkeypatch, "notqmail", f"{served.base}/repos/notqmail/notqmail/releases/latest")
    point(monkeypatch, "qmail-tls-patch", f"{served.base}/qmail-tls/")
    point(monkeypatch, "spamdyke", f"{served.base}/spamdyke/")
    assert all(u is None or u.url.startswith(served.base) for u in sources.UPSTREAMS.values())
    try:
        yield served
    finally:
        served.close()


def settings(**data) -> Settings:
    return Settings.from_host_data({"hostname": "mail.example.org", "accounts": ALICE, **data},
                                   inventory_name="mail.example.org")


def no_shell(command: str):
    raise AssertionError(f"upstream_releases ran a host command: {command}")


def check(on_host: bool = False, **data) -> tuple[str, str]:
    """The check's result, as the runner reports it (an exception would be an error there)."""
    target = Target(settings(**data), debian("13"), "192.0.2.1", no_shell, on_host=on_host)
    result = checks.run_checks(target, [sources.check_upstream_releases])[0]
    assert result.name == "upstream_releases"
    return result.status, result.reason


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- current, behind, compared as numbers ------------------------------------------------------


def test_all_pins_current_is_ok_listing_them_and_the_final_releases(upstreams):
    assert check() == (OK, ALL_CURRENT)
    assert sorted(path for path, _ in upstreams.asked) == ["/qmail-tls/", "/repos/notqmail/notqmail/releases/latest",
                                                          "/spamdyke/"]
    assert all("qmailhost" in agent for _, agent in upstreams.asked), upstreams.asked


def test_a_newer_notqmail_is_a_warning_naming_both_versions_and_where_to_look(upstreams):
    upstreams.pages["/repos/notqmail/notqmail/releases/latest"] = github("notqmail-1.09")
    status, reason = check()
    assert status == WARNING
    assert reason == "notqmail 1.08 pinned, 1.09 released: see https://github.com/notqmail/notqmail/releases"


def test_a_newer_spamdyke_is_a_warning_naming_the_highest_version_on_the_page(upstreams):
    upstreams.pages["/spamdyke/"] = html(SPAMDYKE_PAGE.format(more='<a href="releases/spamdyke-5.0.10.tgz">x</a> '
                                                                 '<a href="releases/spamdyke-5.0.9.tgz">y</a>'))
    assert check() == (WARNING, "spamdyke 5.0.1 pinned, 5.0.10 released: see https://www.spamdyke.org/")


def test_versions_compare_as_numbers_not_as_strings(upstreams):
    """1.10 is newer than 1.9 (as strings, "1.10" < "1.9"): with 1.9 in use 1.10 warns; with 1.10 in use 1.9 does not."""
    upstreams.pages["/repos/notqmail/notqmail/releases/latest"] = github("notqmail-1.10")
    status, reason = check(sources={"notqmail": {"version": "1.9", "sha512": A_SHA512}})
    assert status == WARNING and reason.startswith("notqmail 1.9 pinned by the inventory, 1.10 released: "), reason
    upstreams.pages["/repos/notqmail/notqmail/releases/latest"] = github("notqmail-1.9")
    status, reason = check(sources={"notqmail": {"version": "1.10", "sha512": A_SHA512}})
    assert status == OK and reason.startswith("notqmail 1.10, "), reason


def test_the_inventory_s_version_is_the_one_compared(upstreams):
    upstreams.pages["/repos/notqmail/notqmail/releases/latest"] = github("notqmail-1.09")
    assert check()[0] == WARNING, "the pin, 1.08, is behind"
    status, reason = check(sources={"notqmail": {"version": "1.09", "sha512": A_SHA512}})
    assert status == OK and reason.startswith("notqmail 1.09, "), reason
    # a local mirror's URL is no other version: the pinned one is compared
    status, reason = check(sources={"notqmail": {"url": "file:///srv/mirror/notqmail-1.08.tar.gz"}})
    assert status == WARNING and reason.startswith("notqmail 1.08 pinned by the inventory, 1.09 released"), reason


def test_a_newer_tls_patch_for_the_notqmail_in_use_warns_naming_the_file(upstreams):
    upstreams.pages["/qmail-tls/"] = html(INOA_INDEX.format(more='<li><a href="notqmail-1.08-tls-20240615.patch">'
                                                                 'notqmail-1.08-tls-20240615.patch</a></li>'))
    assert check() == (WARNING, "qmail-tls-patch 20231230 pinned, 20240615 released "
                                "(notqmail-1.08-tls-20240615.patch): see https://inoa.net/qmail-tls/")


def test_a_tls_patch_for_a_newer_notqmail_counts_and_one_for_an_older_does_not(upstreams):
    older = '<a href="notqmail-1.07-tls-20250101.patch">n</a> <a href="netqmail-1.06-tls-20250101.patch">n</a>'
    upstreams.pages["/qmail-tls/"] = html(INOA_INDEX.format(more=older))
    assert check() == (OK, ALL_CURRENT), "a patch for notqmail 1.07 is no update for 1.08"
    upstreams.pages["/qmail-tls/"] = html(INOA_INDEX.format(more=older + ' <a href="notqmail-1.10-tls-20240901.patch">n</a>'))
    status, reason = check()
    assert status == WARNING and "qmail-tls-patch 20231230 pinned, 20240901 released (notqmail-1.10-tls-20240901.patch)" \
        in reason, reason
    # with notqmail 1.10 in use, the 1.08 patches no longer count, nor do they make the patch "behind"
    upstreams.pages["/repos/notqmail/notqmail/releases/latest"] = github("notqmail-1.10")
    upstreams.pages["/qmail-tls/"] = html(INOA_INDEX.format(more=""))
    status, reason = check(sources={"notqmail": {"version": "1.10", "sha512": A_SHA512}})
    assert status == OK and "qmail-tls-patch 20231230" in reason, reason


# --- an upstream out of reach: skipped, naming it, never an error ------------------------------------


@pytest.mark.parametrize(("component", "path", "page", "why"), [
    ("notqmail", "/repos/notqmail/notqmail/releases/latest", (500, "text/plain", "oops"), "HTTP 500"),
    ("notqmail", "/repos/notqmail/notqmail/releases/latest", html("<html>rate limited</html>"),
     "its answer is not JSON"),
    ("notqmail", "/repos/notqmail/notqmail/releases/latest", (200, "application/json", '{"message": "Not Found"}'),
     "its answer has no 'tag_name'"),
    ("qmail-tls-patch", "/qmail-tls/", (503, "text/plain", "busy"), "HTTP 503"),
    ("spamdyke", "/spamdyke/", html("<html>under construction</html>"), "its answer names no release"),
])
def test_an_upstream_that_fails_or_talks_nonsense_is_skipped_naming_it(upstreams, component, path, page, why):
    upstreams.pages[path] = page
    status, reason = check()
    host = upstreams.base.removeprefix("http://")
    assert (status, reason) == (SKIPPED, f"{component}'s upstream {host} not reached: {why}")


def test_an_upstream_that_is_down_is_skipped_naming_it(upstreams, monkeypatch):
    port = closed_port()
    point(monkeypatch, "spamdyke", f"http://127.0.0.1:{port}/")
    assert check() == (SKIPPED, f"spamdyke's upstream 127.0.0.1:{port} not reached: Connection refused")


def test_an_upstream_that_never_answers_is_skipped_after_the_timeout(upstreams, monkeypatch):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts the connection in the kernel, never answers
    port = silent.getsockname()[1]
    monkeypatch.setattr(sources, "UPSTREAM_TIMEOUT", 1)
    point(monkeypatch, "qmail-tls-patch", f"http://127.0.0.1:{port}/")
    try:
        started = time.monotonic()
        status, reason = check()
    finally:
        silent.close()
    assert (status, reason) == (SKIPPED, f"qmail-tls-patch's upstream 127.0.0.1:{port} not reached: no answer within 1 s")
    assert time.monotonic() - started < 4


def test_an_upstream_whose_name_does_not_resolve_is_skipped_saying_so(upstreams, monkeypatch):
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):  # (no query leaves this machine)
        if str(host).endswith(".invalid"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    point(monkeypatch, "notqmail", "https://api.github.invalid/repos/notqmail/notqmail/releases/latest")
    status, reason = check()
    assert status == SKIPPED and reason.startswith("notqmail's upstream api.github.invalid not reached: "
                                                   "its name does not resolve"), reason


def test_a_pin_behind_is_still_a_warning_when_another_upstream_is_out_of_reach(upstreams, monkeypatch):
    upstreams.pages["/repos/notqmail/notqmail/releases/latest"] = github("notqmail-1.09")
    upstreams.pages["/spamdyke/"] = (500, "text/plain", "oops")
    status, reason = check()
    assert status == WARNING and reason.startswith("notqmail 1.08 pinned, 1.09 released") and \
        "spamdyke's upstream" in reason and "HTTP 500" in reason, reason


def test_the_upstreams_are_asked_side_by_side(upstreams):
    upstreams.delay = 1.0
    started = time.monotonic()
    assert check() == (OK, ALL_CURRENT)
    assert time.monotonic() - started < 2.5, "three answers of 1 s each, one after the other"


# --- when it asks nothing -----------------------------------------------------------------------


def test_the_host_s_scheduled_run_asks_nothing(upstreams):
    assert check(on_host=True) == (SKIPPED, "asks upstream from the laptop only")
    # as tasks/health.py runs it: the settings as deployed (the laptop-only ones left out)
    deployed = Settings.from_deployed(settings().as_deployed(("sources", "distfiles", "distfiles_explicit")))
    target = Target(deployed, netbsd("10"), "127.0.0.1", no_shell, on_host=True)
    assert sources.check_upstream_releases(target) == (SKIPPED, "asks upstream from the laptop only")
    assert upstreams.asked == []


def test_the_setting_on_by_default_and_off_asks_nothing(upstreams):
    assert settings().check_upstream_releases is True
    assert check(check_upstream_releases=False) == (SKIPPED, "check_upstream_releases is off")
    assert upstreams.asked == []
    assert check()[0] == OK and len(upstreams.asked) == 3


@pytest.mark.parametrize("value", ["no", 0, None, [False]])
def test_the_setting_refuses_a_non_boolean_in_one_line_naming_it(value):
    with pytest.raises(SettingsError) as refused:
        settings(check_upstream_releases=value)
    assert refused.value.setting == "check_upstream_releases"
    assert str(refused.value).startswith("setting 'check_upstream_releases': ") and "\n" not in str(refused.value)


def test_the_check_and_its_setting_are_registered_and_every_pin_has_an_upstream_entry():
    for platform in (debian("13"), netbsd("10")):
        assert sources.check_upstream_releases in checks.all_checks(platform)
    assert [s.name for _, s in declared_settings()].count("check_upstream_releases") == 1
    assert set(sources.UPSTREAMS) == set(sources.PINS), "a pin the check would call a final release unasked"


def test_the_sandbox_inventory_switches_it_off(monkeypatch, tmp_path):
    """inventory/sandbox.py's _data, read with a stand-in host (no sandbox is started)."""
    from harness import sandbox

    fake = SimpleNamespace(ssh_data=lambda: {"ssh_hostname": "10.213.0.2"})
    monkeypatch.setattr(sandbox, "load", lambda name: fake)
    monkeypatch.setattr(sandbox, "ensure_builtin", lambda *a, **k: pytest.fail("would start the sandbox"))
    monkeypatch.setattr(sandbox, "sandbox_password_file", lambda: str(tmp_path / "alice.password"))
    monkeypatch.setenv("QMAILHOST_SANDBOX_HOST", "stand-in")
    monkeypatch.delenv("QMAILHOST_SANDBOX_DATA", raising=False)
    monkeypatch.setenv("QMAILHOST_LOCAL_MIRROR", str(tmp_path / "no-mirror"))
    data = runpy.run_path(str(PROJECT / "inventory/sandbox.py"))["_data"]
    assert data["check_upstream_releases"] is False


def test_an_error_never_comes_from_an_upstream(upstreams, monkeypatch):
    """Every way an upstream can fail at once: the runner's table says skipped, not error."""
    upstreams.pages = {}  # 404 everywhere
    point(monkeypatch, "spamdyke", f"http://127.0.0.1:{closed_port()}/")
    status, reason = check()
    assert status == SKIPPED
    assert "notqmail's upstream" in reason and "qmail-tls-patch's upstream" in reason and "HTTP 404" in reason
    assert "spamdyke's upstream" in reason and "Connection refused" in reason
