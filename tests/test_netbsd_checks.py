"""The status checks on the model NetBSD host (harness/netbsd_host.py): after a deploy of
deploy.py, the checks that ask the host something over SSH send only NetBSD commands
(rc.d's onestatus, BSD stat, the NetBSD TMDA pieces script, no svstat or GNU find) and
report ok; the others never touch the host's shell (they are network probes, the same
on every platform, proven against a real Debian host in tests/test_verify.py).
"""

from __future__ import annotations

import json
import re
import time
from unittest import mock

import pytest

from harness.netbsd_host import NetBSDHost
from harness.plan_harness import plan_deploy
from qmailhost import checks
from qmailhost.files import read
from qmailhost.platform import netbsd
from qmailhost.settings import Settings

LINUX_ONLY = ("svstat", "svok", "/etc/service", "-printf", "getent shadow", "sha256sum", "stat -c", "dpkg",
              "/etc/init.d", "systemctl")
DATA = {"hostname": "mail.example.org", "accounts": [{"name": "alice", "password_env": "QMAILHOST_TEST_PASSWORD"}],
        "check_upstream_releases": False}  # the network probes below would ask the real upstreams
HOST_SIDE = {"services_up", "queue", "no_tmda_leftovers", "submission_mode", "blocklists_answer", "dkim_keys",
             "updates", "spam_filter"}
KEYS, SIGNER = "/usr/pkg/etc/qmailhost/dkim/keys", "/usr/pkg/etc/qmailhost/dkim/qmail-remote"


class CheckedHost(NetBSDHost):
    """The model host, answering the read-only commands the status checks send."""

    sent: list[str]
    blocklist_answers: dict  # (test point's first octet, zone) -> what dig prints; default: a working list

    def shell(self, command: str) -> tuple[bool, str]:
        self.sent.append(command)
        if status := re.findall(r"printf '%s\\t' (\w+); /etc/rc.d/\1 onestatus 2>&1 \| head -n 1", command):
            return True, "".join(f"{name}\t{name} is running as pid {100 + i}.\n" if name in self.running
                                 else f"{name}\t{name} is not running.\n" for i, name in enumerate(status))
        if command.startswith("# qmail's queue") and "find mess -type f -exec stat -f %m {} +" in command:
            return True, "0 0 0\n"
        if command == read("tmda/netbsd-pieces.sh"):
            return True, "".join(f"{kind}\t{path}\n" for kind, path in self.tmda_pieces)
        if m := re.fullmatch(r"dig @127\.0\.0\.1 \+short \+time=3 \+tries=2 A (\d+)\.0\.0\.127\.(\S+)", command):
            return True, self.blocklist_answers.get((m[1], m[2]), "127.0.0.2\n" if m[1] == "2" else "")
        if command == "cat /var/lib/qmailhost/submission-mode 2>/dev/null || true":
            return True, self.contents.get("/var/lib/qmailhost/submission-mode", "")
        if m := re.fullmatch(r"id -u qmailr; for f in (.+); do if \[ -f \"\$f\" \]; then ls -ln \"\$f\"; "
                             r"else echo \"absent \$f\"; fi; done; \[ -x (\S+) \] \|\| echo 'absent \2'", command):
            return True, self.key_listing(m[1].split(), m[2])
        if (answer := listed_and_deliveries_answer(self, command)) is not None:
            return answer
        if (output := self.updates_status(command)) is not None:  # tasks/updates.py: pkg_admin's list and audit
            return True, output
        if (output := health_answer(command)) is not None:  # tasks/health.py: its last run, and df
            return True, output
        if (output := self.spam_stat(command)) is not None:  # tasks/spam.py: what rspamd says
            return True, output
        raise AssertionError(f"the NetBSD model does not know this check command: {command[:200]}")


    def key_listing(self, paths: list[str], signer: str) -> str:
        """qmailr's uid, then `ls -ln` of each key as NetBSD's ls prints it (wheel is gid 0), then the signer."""
        out = [self.users["qmailr"]["uid"]]
        for path in paths:
            entry = self.entries().get(path)
            if entry is None or entry["type"] != "file":
                out.append(f"absent {path}")
                continue
            bits = int(entry["mode"], 8)
            mode = "-" + "".join(c if bits & (1 << (8 - i)) else "-" for i, c in enumerate("rwxrwxrwx"))
            uid = self.users[entry["user"]]["uid"] if entry["user"] in self.users else "0"
            gid = "0" if entry["group"] == "wheel" else "1001"
            out.append(f"{mode}  1 {uid}  {gid}  {len(entry['data'])} Nov 14 22:13 {path}")
        if not (signer in self.files and int(self.files[signer]["mode"], 8) & 0o111):
            out.append(f"absent {signer}")
        return "\n".join(out) + "\n"


@pytest.fixture
def deployed(monkeypatch):
    monkeypatch.setenv("QMAILHOST_TEST_PASSWORD", "correct horse")
    host = CheckedHost()
    host.sent, host.blocklist_answers = [], {}
    host.apply(plan_deploy(DATA, host.answer))
    host.daily()  # a night since the deploy: daily(5) fetched the vulnerability list (tasks/updates.py)
    return host, Settings.from_host_data(DATA, inventory_name="mail.example.org")


def host_side_checks():
    return [c for c in checks.all_checks(netbsd("10")) if checks.check_name(c) in HOST_SIDE]


def test_after_a_deploy_the_host_side_checks_are_ok_and_speak_netbsd(deployed):
    host, settings = deployed
    target = checks.Target(settings, netbsd("10"), "model.invalid", shell=host.shell)
    results = {r.name: (r.status, r.reason) for r in checks.run_checks(target, host_side_checks())}
    assert set(results) == HOST_SIDE
    assert all(status == checks.OK for name, (status, _) in results.items() if name != "listed"), results
    assert results["listed"] == (checks.SKIPPED, MODEL_NOT_LISTABLE)
    assert results["services_up"][1] == ("all up: dovecot pid 100, qmail-send pid 101, unbound pid 102, "
                                         "qmail-smtpd pid 103, redis pid 104, rspamd pid 105, stunnel pid 106, "
                                         "qmail-ofmipd pid 107")
    assert results["spam_filter"][1] == ("rspamd 3.10.2 answers; 0 scanned (0 refused, 0 marked spam); Bayes "
                                         "learned 0 spam, 0 ham; the controller wants its password")
    assert results["blocklists_answer"][1] == "zen.spamhaus.org answer their test points through the host's resolver"
    assert results["dkim_keys"][1] == "1 key for example.org, readable by qmailr alone"
    for command in host.sent:
        for linux in LINUX_ONLY:
            assert linux not in command, f"{linux!r} in a NetBSD check command: {command[:200]}"


def test_a_stopped_service_and_a_tmda_piece_are_errors_on_netbsd(deployed):
    host, settings = deployed
    host.running.discard("qmailsmtpd")
    host.tmda_pieces = [("rcscript", "/etc/rc.d/tofmipd")]
    target = checks.Target(settings, netbsd("10"), "model.invalid", shell=host.shell)
    results = {r.name: (r.status, r.reason) for r in checks.run_checks(target, host_side_checks())}
    assert results["services_up"] == (checks.ERROR, "qmail-smtpd qmailsmtpd is not running.")
    assert results["no_tmda_leftovers"] == (checks.ERROR, "TMDA left behind: /etc/rc.d/tofmipd (rcscript)")
    assert results["queue"][0] == results["submission_mode"][0] == checks.OK


def test_a_key_others_can_read_or_a_missing_signer_is_an_error_on_netbsd(deployed):
    host, settings = deployed
    key = f"{KEYS}/example.org/mail.key"
    host.tree[key] = {**host.tree[key], "mode": "444"}
    del host.files[SIGNER]
    target = checks.Target(settings, netbsd("10"), "model.invalid", shell=host.shell)
    result = {r.name: r for r in checks.run_checks(target, host_side_checks())}["dkim_keys"]
    uid = host.users["qmailr"]["uid"]
    assert (result.status, result.reason) == (checks.ERROR, (
        f"{key} is -r--r--r-- uid {uid}: only qmailr may read it; {SIGNER} is missing "
        "(mail from those domains waits in the queue)"))


def test_every_other_check_is_a_network_probe_that_never_asks_the_host(deployed):
    """What the host-side list leaves out must not depend on the platform's shell."""
    _, settings = deployed

    def no_shell(command):
        raise AssertionError(f"a network check ran a host command: {command}")

    target = checks.Target(settings, netbsd("10"), "model.invalid", shell=no_shell)
    others = [c for c in checks.all_checks(netbsd("10")) if checks.check_name(c) not in HOST_SIDE]
    assert len(others) >= 12
    refused = OSError("no network to a model host")
    with mock.patch("smtplib.SMTP.__init__", side_effect=refused), \
            mock.patch("socket.create_connection", side_effect=refused), \
            mock.patch("qmailhost.dns_lookup.Dns.lookup", side_effect=refused):
        for check in others:
            result = checks._run_one(check, target)  # an AssertionError from no_shell would propagate
            assert result.status in (checks.ERROR, checks.SKIPPED, checks.OK), result


def test_a_blocklist_that_refuses_the_resolver_is_an_error_naming_it(deployed):
    """Spamhaus answers 127.255.255.254 to queries through a public or shared resolver."""
    host, settings = deployed
    host.blocklist_answers = {("2", "zen.spamhaus.org"): "127.255.255.254\n", ("1", "zen.spamhaus.org"): "127.255.255.254\n"}
    target = checks.Target(settings, netbsd("10"), "model.invalid", shell=host.shell)
    result = {r.name: r for r in checks.run_checks(target, host_side_checks())}["blocklists_answer"]
    assert result.status == checks.ERROR
    assert result.reason.startswith("zen.spamhaus.org refuses the host's resolver (it answered 127.255.255.254")
    assert "spamdyke would refuse every sender" in result.reason


# --- the listed and deliveries checks (issue 26): what the model answers them ---------------------

HOST_SIDE.update({"listed", "deliveries"})


# --- tasks/health.py's checks: the last scheduled run (cron's, a minute ago) and NetBSD's df ------

HOST_SIDE.update({"health_runs", "disk_space"})
NETBSD_DF = ("Filesystem  1024-blocks     Used    Avail Capacity  Mounted on\n"
             "/dev/wd0a     20000000  9000000 11000000      45%  /\n"
             "/dev/wd0e     40000000 10000000 30000000      25%  /home\n---\n"
             "Filesystem  1K-blocks     Used    Avail %Cap  iUsed    iAvail %iCap Mounted on\n"
             "/dev/wd0a    20000000  9000000 11000000  45%  120000   880000   12% /\n"
             "/dev/wd0e    40000000 10000000 30000000  25%   40000  1960000    2% /home\n")


def health_answer(command: str) -> str | None:
    if command == ("date +%s; find /usr/pkg/etc/qmailhost/health/run -exec stat -f %m {} + 2>/dev/null; echo; "
                   "cat /var/lib/qmailhost/health/last.json 2>/dev/null; true"):
        now = int(time.time())
        return f"{now}\n{now - 600}\n\n" + json.dumps({"time": now - 60, "worst": "ok"})
    if command == "df -P -k /var/qmail/queue ~alice; echo ---; df -i /var/qmail/queue ~alice":
        return NETBSD_DF
    return None
# The model's only IPv4 address is 192.0.2.25 (documentation, not global) and example.org is reserved.
MODEL_NOT_LISTABLE = ("no public address: the host's addresses (192.0.2.25) are private (behind NAT?); "
                      "public_addresses names the one the Internet sees; no public domain (example.org: reserved, "
                      "never public)")
MODEL_CLOCK = 1_700_000_000  # 2023-11-14 22:13:20 UTC, the model's `date +%s`


def listed_and_deliveries_answer(host: CheckedHost, command: str) -> tuple[bool, str] | None:
    """NetBSD's ifconfig (the host's addresses), dig for a blocklist's name other than a test point
    (host.listings: name -> answer; default none), and the deliveries script over syslog's maillog
    (host.maillog: its lines; default empty, as syslogd leaves it)."""
    if command == "{ ifconfig -a; } 2>/dev/null":
        return True, host.interfaces
    if m := re.fullmatch(r"dig @127\.0\.0\.1 \+short \+time=3 \+tries=2 A (\S+)", command):
        return True, getattr(host, "listings", {}).get(m[1], "")
    if command.startswith("# qmail-send's deliveries"):
        assert "find /var/log/maillog.0.gz /var/log/maillog -prune" in command, command
        return True, f"now {MODEL_CLOCK} +0000\n" + getattr(host, "maillog", "")
    return None


def test_the_listed_check_asks_about_the_address_ifconfig_shows_on_netbsd(deployed):
    host, settings = deployed
    host.interfaces = host.interfaces.replace("192.0.2.25", "65.108.1.25")
    host.listings = {"25.1.108.65.zen.spamhaus.org": "127.0.0.2\n"}
    target = checks.Target(settings, netbsd("10"), "model.invalid", shell=host.shell)
    result = {r.name: r for r in checks.run_checks(target, host_side_checks())}["listed"]
    assert (result.status, result.reason) == (checks.ERROR, "listed: 65.108.1.25 on zen.spamhaus.org (127.0.0.2)")


def test_the_deliveries_check_reads_qmail_send_s_lines_in_maillog_on_netbsd(deployed):
    host, settings = deployed
    host.maillog = ("Nov 14 22:03:20 mail nbqmail/send: starting delivery 7: msg 12 to remote bob@gone.example.net\n"
                    "Nov 14 22:03:21 mail nbqmail/send: delivery 7: failure: Sorry,_no_mailbox_here_by_that_name./\n")
    target = checks.Target(settings, netbsd("10"), "model.invalid", shell=host.shell)
    result = {r.name: r for r in checks.run_checks(target, host_side_checks())}["deliveries"]
    assert (result.status, result.reason) == (checks.WARNING, (
        "remote deliveries failing in the last 1 h: gone.example.net 1 bounced; last, to gone.example.net: "
        "Sorry, no mailbox here by that name."))
