"""The status checks (verify.py, qmailhost/checks.py and each component's) against one deployed throwaway host.

The host is deployed once for the module; then it is broken one way at a time over
SSH, and each time exactly the matching check must report an error while every other
check reports what it did on the healthy host. Each break is undone before the next.
The DNS checks, which have no DNS here, are in tests/test_dns_records.py.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass

import pytest

from harness import images, sandbox
from harness.pyinfra_cli import pyinfra
from qmailhost import checks
from qmailhost.platform import debian
from qmailhost.settings import Settings, SettingsError

pytestmark = pytest.mark.e2e

ACCOUNT = {"name": sandbox.SANDBOX_USER, "password_file": sandbox.sandbox_password_file()}
ROW = re.compile(r"^\s*(?P<name>[a-z_]+)\s+(?P<status>ok|warning|error|skipped)\s+(?P<reason>.*)$")


@dataclass
class Verified:
    returncode: int
    results: dict[str, tuple[str, str]]  # check -> (status, reason)
    output: str

    def statuses(self) -> dict[str, str]:
        return {name: status for name, (status, _) in self.results.items()}


def verify(host: sandbox.Host, **data) -> Verified:
    """`pyinfra inventory/sandbox.py verify.py` with the test account, and its table."""
    run = pyinfra(host, deploy="verify.py", data={"verify_account": ACCOUNT, **data}, json_output=False,
                  check=False, timeout=300)
    names = {checks.check_name(c) for c in checks.all_checks(debian("13"))}
    results = {m["name"]: (m["status"], m["reason"]) for line in run.stderr.splitlines()
               if (m := ROW.match(line)) and m["name"] in names}
    assert set(results) == names, run.output[-3000:]
    return Verified(run.returncode, results, run.output)


@pytest.fixture(scope="module")
def deployed(sandbox_ready, sources):
    """One host for the whole module, deployed once, and the checks' view of it healthy."""
    host = images.create(f"t{os.getpid()}-verify")
    try:
        pyinfra(host, data={"verify_after_deploy": False})
        host.ssh("/etc/qmailhost/health/run >/dev/null")  # its scheduled run, now: health_runs is ok throughout
        yield host, verify(host)
    finally:
        sandbox.destroy(host.name)


def test_a_healthy_host_passes_every_check_and_dns_says_why_it_is_skipped(deployed):
    host, healthy = deployed
    assert healthy.returncode == 0, healthy.output[-3000:]
    for name, (status, reason) in healthy.results.items():
        if name.startswith("dns_"):
            assert status == "skipped" and "no DNS" in reason, (name, reason)
        elif name == "blocklists_answer":  # the sandbox asks no blocklist; tests/test_drift.py makes one
            assert (status, reason) == ("skipped", "no dns_blacklists in spamdyke_filters")
        elif name == "listed":  # no blocklist, a private address, a .test domain: nothing to ask about
            assert (status, reason) == ("skipped", "no dns_blacklists in spamdyke_filters; no public domain "
                                                   "(sandbox.test: reserved, never public)")
        elif name == "acme_renewal":  # tests/test_acme.py issues and renews against pebble
            assert (status, reason) == ("skipped", "tls is self-signed, not acme")
        elif name == "backup_age":  # tests/test_backup.py gives its host a repository
            assert (status, reason) == ("skipped", "backup_repository is not set")
        elif name == "upstream_releases":  # inventory/sandbox.py: nothing leaves this machine
            assert (status, reason) == ("skipped", "check_upstream_releases is off")
        elif name == "spam_filter":  # inventory/sandbox.py: no DNS for rspamd; tests/test_spam.py turns it on
            assert (status, reason) == ("skipped", "spam_filter is off: mail on port 25 is not judged")
        elif name == "health_runs" and status == "skipped":  # the image's host may not have run it yet
            assert reason == "no scheduled run yet: the first follows within a minute of the deploy", reason
        elif name == "updates" and status == "warning":
            # a throwaway host runs no apt timer (no systemd): its lists age and unattended-upgrades
            # never runs, which the check says; no service of ours runs a replaced library
            assert "unattended-upgrades has never run" in reason or "package lists" in reason, reason
            assert "still run" not in reason, reason
        else:
            assert status == "ok", (name, reason)
    counts = {s: sum(status == s for status, _ in healthy.results.values()) for s in ("ok", "warning", "skipped")}
    assert len(healthy.results) == 37 and counts["skipped"] in (14, 15) and counts["warning"] <= 1, counts
    assert (f"37 checks: {counts['ok']} ok, {counts['warning']} warning, 0 error, {counts['skipped']} skipped"
            in healthy.output)
    assert sandbox.sandbox_password() not in healthy.output


def test_without_a_verify_account_the_password_checks_say_they_are_skipped(deployed):
    host, _ = deployed
    result = verify(host, verify_account=None)
    assert result.returncode == 0
    for name in ("wrong_password_refused", "account_can_submit"):
        assert result.results[name] == ("skipped", "no verify_account in the inventory")


# Each way to break the host: the check that must catch it, the commands that break it
# and those that undo it, and settings for that one run.
@dataclass
class Breakage:
    check: str
    breaks: str
    repairs: str
    data: dict | None = None

    def __str__(self) -> str:
        return self.check


RUN = "/var/qmail/supervise/qmail-ofmipd/run"
STUNNEL_CONF = "/etc/qmailhost/stunnel.conf"
TLS = "/etc/qmailhost/tls"


def _restart_and_wait(service: str, port: int) -> str:
    """Restart SERVICE, then wait (up to 10 s, a loaded machine is slow) until PORT answers again."""
    return (f"svc -t /etc/service/{service} && sleep 0.5 && for i in $(seq 100); do "
            f"bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}' 2>/dev/null && break; sleep 0.1; done")


def _edit_and_restore(path: str, sed: str, after: str, before: str = "true") -> tuple[str, str]:
    """Commands that run BEFORE, edit PATH with SED then run AFTER, and that put PATH back and run AFTER."""
    return (f"{before} && cp -p {path} {path}.verify-orig && sed -i {sed} {path} && {after}",
            f"mv -f {path}.verify-orig {path} && {after}")


# A checkpassword that takes any password: it reads what ofmipd writes on fd 3 (or ofmipd
# may find the pipe closed and answer 454 to the right password too), sets USER to the name
# given there as checkpassword does, then runs the rest (the gate: mail accounts only).
ACCEPT_ANY = "/usr/local/bin/verify-accept-any"
_WRITE_ACCEPT_ANY = (f"printf '#!/bin/sh\\nUSER=$(tr \"\\\\\\\\000\" \"\\\\\\\\n\" <&3 | sed -n 1p)\\n"
                     f"export USER\\nexec \"$@\"\\n' > {ACCEPT_ANY} && chmod 755 {ACCEPT_ANY}")


def _rules(name: str, sed: str) -> tuple[str, str]:
    compile_ = f"tcprules /etc/tcp/{name}.cdb /etc/tcp/{name}.cdb.tmp < /etc/tcp/{name}.rules"
    return _edit_and_restore(f"/etc/tcp/{name}.rules", sed, compile_)


def _certificate(openssl_options: str) -> tuple[str, str]:
    """Replace the pair (a new key too), restart stunnel and reload Dovecot, as a renewal
    by hand would (every TLS port then serves the new one); undo."""
    restart = "svc -h /etc/service/dovecot && " + _restart_and_wait("stunnel", 587)
    return (f"cp -p {TLS}/cert.pem {TLS}/cert.verify-orig && cp -p {TLS}/key.pem {TLS}/key.verify-orig && "
            f"openssl req -x509 -newkey rsa:2048 -nodes -keyout {TLS}/key.pem -out {TLS}/cert.pem "
            f"{openssl_options} 2>/dev/null && {restart}",
            f"mv -f {TLS}/cert.verify-orig {TLS}/cert.pem && mv -f {TLS}/key.verify-orig {TLS}/key.pem && {restart}")


_QUEUE_A_STUCK_MESSAGE = (
    "echo stuck | /var/qmail/bin/qmail-inject -f alice@sandbox.test nobody@unroutable.example.net && "
    "for i in $(seq 50); do grep -q deferral /var/log/qmail/qmail-send/current && break; sleep 0.2; done; sleep 1"
)
# With qmail-send stopped, a message leaves the queue by removing its files everywhere.
_EMPTY_THE_QUEUE = (
    "svc -d /etc/service/qmail-send && until svstat /etc/service/qmail-send | grep -q ': down'; do sleep 0.2; done"
    " && find /var/qmail/queue/mess /var/qmail/queue/info /var/qmail/queue/remote /var/qmail/queue/local"
    " /var/qmail/queue/todo /var/qmail/queue/intd /var/qmail/queue/bounce -type f -delete"
    " && svc -u /etc/service/qmail-send && sleep 1"
)

RESTART_OFMIPD = _restart_and_wait("qmail-ofmipd", 26)
BREAKAGES = [
    Breakage("smtp_refuses_relay", *_rules("smtp", "'s/^:allow$/:allow,RELAYCLIENT=\"\"/'")),
    Breakage("loopback_ports_closed", *_edit_and_restore(RUN, "'s/ 127\\.0\\.0\\.1 26 / 0 26 /'", RESTART_OFMIPD)),
    Breakage("submission_requires_auth",
             *_rules("ofmip", "'s/^127\\.0\\.0\\.1:allow$/127.0.0.1:allow,RELAYCLIENT=\"\"/'")),
    Breakage("wrong_password_refused", *_edit_and_restore(
        RUN, f"'s| /usr/local/bin/checkpassword | {ACCEPT_ANY} |'", RESTART_OFMIPD, before=_WRITE_ACCEPT_ANY)),
    Breakage("certificate_name",
             *_certificate("-days 30 -subj /CN=other.example -addext subjectAltName=DNS:other.example")),
    Breakage("certificate_expiry", *_certificate(
        "-subj /CN=mail.sandbox.test -addext subjectAltName=DNS:mail.sandbox.test "
        "-not_before 20190101000000Z -not_after 20200101000000Z")),
    Breakage("tls_policy", *_edit_and_restore(
        STUNNEL_CONF, "-e 's/^sslVersionMin = .*/sslVersionMin = TLSv1/' -e 's/^ciphers = .*/ciphers = DEFAULT:@SECLEVEL=0/'",
        _restart_and_wait("stunnel", 587))),
    Breakage("services_up", "svc -d /etc/service/qmail-send && sleep 1", "svc -u /etc/service/qmail-send && sleep 1"),
    Breakage("submission_mode", *_edit_and_restore("/var/lib/qmailhost/submission-mode", "s/ofmipd/spamdyke/", "true")),
    Breakage("no_tmda_leftovers", "touch /etc/tmdarc", "rm -f /etc/tmdarc"),
    Breakage("queue", _QUEUE_A_STUCK_MESSAGE, _EMPTY_THE_QUEUE, data={"queue_max_age_hours": 0}),
]


@pytest.mark.parametrize("breakage", BREAKAGES, ids=str)
def test_each_check_catches_its_failure_and_only_its_own(deployed, breakage):
    host, healthy = deployed
    host.ssh(breakage.breaks)
    try:
        broken = verify(host, **(breakage.data or {}))
    finally:
        host.ssh(breakage.repairs)
    status, reason = broken.results[breakage.check]
    assert status == "error", (breakage.check, reason)
    assert {**broken.statuses(), breakage.check: "ok"} == healthy.statuses(), broken.output[-3000:]
    assert broken.returncode != 0
    assert f"status checks failed: {breakage.check}" in broken.output
    assert sandbox.sandbox_password() not in broken.output


def test_once_every_break_is_undone_the_host_is_healthy_again(deployed):
    """Each break above finds the earlier ones undone (the other checks stay as healthy);
    this one checks that the last undo worked too."""
    host, healthy = deployed
    again = verify(host)
    assert again.statuses() == healthy.statuses() and again.returncode == 0, again.output[-3000:]


def test_the_checks_at_the_end_of_a_deploy_see_what_its_operations_did(deployed, tmp_path):
    """after_deploy's operation runs after the others, at execution time, and can be switched off."""
    host, _ = deployed
    deploy = tmp_path / "leave_tmdarc.py"
    deploy.write_text(
        "from pyinfra import host\nfrom pyinfra.operations import server\n"
        "from qmailhost import checks\nfrom qmailhost.platform import detect\n"
        "from qmailhost.settings import Settings\n"
        "settings = Settings.from_host_data(host.data.dict(), inventory_name=host.name)\n"
        "platform = detect()\n"
        "server.shell(name='Leave a TMDA piece behind', commands=['touch /etc/tmdarc'])\n"
        "checks.after_deploy(settings, platform)\n"
    )
    try:
        run = pyinfra(host, deploy=str(deploy), json_output=False, check=False)
        assert run.returncode != 0
        assert re.search(r"no_tmda_leftovers\s+error\s+TMDA left behind: /etc/tmdarc", run.stderr), run.output[-3000:]
        off = pyinfra(host, deploy=str(deploy), data={"verify_after_deploy": False}, json_output=False)
        assert checks.OPERATION_NAME not in off.output
    finally:
        host.ssh("rm -f /etc/tmdarc")


def test_a_crash_loop_that_a_deploy_repairs_passes_the_deploys_own_check(deployed):
    """Issue 26: stunnel given an invalid option by hand restarts over and over; the deploy puts
    its config back and restarts it, and its own services_up waits for it to settle."""
    host, _ = deployed
    host.ssh("echo 'no_such_option = yes' >> /etc/qmailhost/stunnel.conf && svc -t /etc/service/stunnel")
    pids, deadline = set(), time.monotonic() + 30
    while len(pids) < 3:  # three different pids: restarting over and over
        assert time.monotonic() < deadline, f"stunnel did not crash-loop: {pids}"
        pids.add(host.ssh("svstat /etc/service/stunnel").stdout.split("pid ")[-1].split(")")[0])
        time.sleep(0.5)
    run = pyinfra(host, data={}, json_output=False, check=False)
    rows = [line.strip() for line in run.output.splitlines() if line.strip().startswith("services_up")]
    assert run.returncode == 0 and rows and rows[0].split()[1] == "ok", run.output[-3000:]


# --- the checks' settings ---------------------------------------------------------------


HOSTNAME, DOMAIN, ADDRESS = "mail.qmailhost-verify.net", "qmailhost-verify.net", "192.0.2.25"
SECRET = "s3cret-not-shown"


@pytest.fixture
def settings(tmp_path) -> Settings:
    return settings_with(tmp_path)


def settings_with(tmp_path, **data) -> Settings:
    password_file = tmp_path / "alice"
    password_file.write_text(SECRET + "\n")
    return Settings.from_host_data({"hostname": HOSTNAME, "accounts": [{"name": "alice",
                                                                      "password_file": str(password_file)}], **data})


@pytest.mark.parametrize("data, setting", [
    ({"verify_after_deploy": "yes"}, "verify_after_deploy"),
    ({"queue_max_age_hours": -1}, "queue_max_age_hours"),
    ({"queue_warn_messages": 1.5}, "queue_warn_messages"),
    ({"verify_account": {"name": "bob"}}, "verify_account"),
    ({"verify_account": {"name": "bob", "password": "x"}}, "verify_account"),
    ({"verify_account": {"name": "bob", "password_file": "/nonexistent/bob"}}, "verify_account"),
])
def test_bad_check_settings_are_refused_in_one_line_naming_the_setting(tmp_path, data, setting):
    with pytest.raises(SettingsError) as refused:
        settings_with(tmp_path, **data)
    assert refused.value.setting == setting and "\n" not in str(refused.value)


def test_verify_account_takes_its_password_from_accounts_and_never_shows_it(tmp_path):
    settings = settings_with(tmp_path, verify_account="alice")
    assert settings.verify_account.password == SECRET
    assert SECRET not in repr(settings)
