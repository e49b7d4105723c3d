"""NetBSD command plans for security updates (tasks/updates.py) on the model host
(harness/netbsd_host.py): no NetBSD host, no network.

NetBSD's own daily(5) and security(5) fetch pkgsrc's vulnerability list and audit the installed
packages when /etc/daily.conf and /etc/security.conf say so: a bare host gets one line of ours
in each (appended below NetBSD's "Add local overrides below"), the owner's lines stay as they
are, a later line of the owner's that would turn ours off is moved below by the next deploy, and
the next plan is empty. security_updates off removes our lines and nothing else. The updates
check reads the model's pkg_admin: a list never fetched warns that the fetch has not run; after
a night (the model's daily()) it is ok; vulnerable packages are named. Nothing Debian's (apt,
restart-stale, svc) is ever planned here.
"""

from __future__ import annotations

import pytest

from harness.netbsd_host import PERIODIC_CONF, NetBSDHost, converged_host, deploy_data
from harness.plan_harness import plan_deploy
from qmailhost.checks import OK, WARNING, Target
from qmailhost.platform import netbsd
from qmailhost.settings import Settings
from tasks import updates

DAILY, SECURITY = "/etc/daily.conf", "/etc/security.conf"
FETCH = "fetch_pkg_vulnerabilities=YES # managed by qmailhost"
AUDIT = "check_pkg_vulnerabilities=YES # managed by qmailhost"
SET_FETCH, SET_AUDIT = f"Set fetch_pkg_vulnerabilities=YES in {DAILY}", f"Set check_pkg_vulnerabilities=YES in {SECURITY}"
OFF = {"security_updates": False}
LINUX_ONLY = ("apt", "dpkg", "unattended-upgrades", "restart-stale", "svc ", "svstat", "/etc/service", "/proc/",
              "sed -i", "stat -c", "sha256sum")


@pytest.fixture(autouse=True)
def password_env(monkeypatch):
    monkeypatch.setenv("QMAILHOST_TEST_PASSWORD", "correct horse")


def ours(planned) -> list[tuple[str, list]]:
    """The operations of tasks/updates.py in a plan grouped as pyinfra prints it."""
    return [(name.split(" | ", 1)[1], commands) for name, commands in planned if name.startswith("updates | ")]


def plan(host: NetBSDHost, **settings) -> list:
    return plan_deploy(deploy_data(**settings), host.answer, grouped=True)


def test_a_bare_host_gets_one_line_of_ours_in_each_config():
    host = NetBSDHost()
    planned = plan(host)
    assert ours(planned) == [(SET_FETCH, [f"echo '{FETCH}' >> {DAILY}"]),
                             (SET_AUDIT, [f"echo '{AUDIT}' >> {SECURITY}"])]
    host.apply(planned)
    assert host.periodic_conf == {DAILY: [*PERIODIC_CONF[DAILY], FETCH], SECURITY: [*PERIODIC_CONF[SECURITY], AUDIT]}
    assert host.conf_value(DAILY, "fetch_pkg_vulnerabilities") == "YES"
    assert host.conf_value(SECURITY, "check_pkg_vulnerabilities") == "YES"
    for name, commands in ours(planned):
        for linux in LINUX_ONLY:
            assert linux not in name + str(commands), f"{linux!r} on a NetBSD host: {name}"


def test_the_converged_host_plans_nothing():
    host = converged_host()
    assert host.periodic_conf[DAILY][-1] == FETCH
    assert plan_deploy(deploy_data(), host.answer) == []


def test_the_owners_lines_stay_and_ours_comes_last():
    host = NetBSDHost()
    host.periodic_conf[DAILY] += ["run_msgs=NO", "fetch_pkg_vulnerabilities=NO"]  # the owner's
    host.periodic_conf[SECURITY] += ["check_passwd=NO"]
    host.apply(plan(host))
    assert host.periodic_conf[DAILY] == [*PERIODIC_CONF[DAILY], "run_msgs=NO", "fetch_pkg_vulnerabilities=NO", FETCH]
    assert host.periodic_conf[SECURITY] == [*PERIODIC_CONF[SECURITY], "check_passwd=NO", AUDIT]
    assert host.conf_value(DAILY, "fetch_pkg_vulnerabilities") == "YES"
    assert plan(host) == []
    # The owner later turns the fetch off below our line: the next deploy moves ours below theirs again.
    host.periodic_conf[DAILY].append("fetch_pkg_vulnerabilities=NO")
    moved = ours(plan(host))
    assert moved == [(SET_FETCH, [
        f"cp -p {DAILY} {DAILY}.qmailhost-new && {{ grep -v '^fetch_pkg_vulnerabilities=.*# managed by qmailhost$' "
        f"{DAILY}; echo '{FETCH}'; }} > {DAILY}.qmailhost-new && mv -f {DAILY}.qmailhost-new {DAILY}"])]
    host.apply(moved)
    assert host.periodic_conf[DAILY] == [*PERIODIC_CONF[DAILY], "run_msgs=NO", "fetch_pkg_vulnerabilities=NO",
                                         "fetch_pkg_vulnerabilities=NO", FETCH]
    assert not ours(plan(host))


def test_off_removes_our_lines_only_and_a_file_left_empty():
    host = converged_host()
    host.periodic_conf[DAILY].insert(3, "run_msgs=NO")  # the owner's, among NetBSD's lines
    host.periodic_conf[SECURITY] = [AUDIT]  # a file that held nothing but our line
    planned = plan(host, **OFF)
    assert [name for name, _ in ours(planned)] == [
        f"Remove qmailhost's fetch_pkg_vulnerabilities line from {DAILY} (security_updates is off)",
        f"Remove qmailhost's check_pkg_vulnerabilities line from {SECURITY} (security_updates is off)"]
    assert ours(planned)[0][1] == [
        f"cp -p {DAILY} {DAILY}.qmailhost-new && {{ grep -v '^fetch_pkg_vulnerabilities=.*# managed by qmailhost$' "
        f"{DAILY} || [ $? -eq 1 ]; }} > {DAILY}.qmailhost-new && if [ -s {DAILY}.qmailhost-new ]; then "
        f"mv -f {DAILY}.qmailhost-new {DAILY}; else rm -f {DAILY}.qmailhost-new {DAILY}; fi"]
    # nothing else changes (tasks/health.py, when there, rewrites the settings its scheduled checks read)
    assert [name for name, _ in planned if not name.startswith(("updates | ", "health | "))] == []
    host.apply(planned)
    expected = list(PERIODIC_CONF[DAILY])
    expected.insert(3, "run_msgs=NO")
    assert host.periodic_conf == {DAILY: expected}
    assert plan(host, **OFF) == []


def checked(host: NetBSDHost, **data) -> tuple[str, str]:
    """The updates check against the model (it answers only the NetBSD status script)."""
    def shell(command):
        output = host.updates_status(command)
        assert output is not None, f"not the NetBSD status script: {command[:200]}"
        return True, output

    settings = Settings.from_host_data(deploy_data(**data), inventory_name="mail.example.org")
    return updates.check_updates(Target(settings, netbsd("10"), "model.invalid", shell))


def test_the_check_says_the_list_was_never_fetched_until_a_night_after_the_deploy():
    bare = NetBSDHost()
    bare.daily()  # stock NetBSD: nothing fetches the list
    level, reason = checked(bare)
    assert level == WARNING and "`pkg_admin fetch-pkg-vulnerabilities` has not run yet" in reason
    host = converged_host()
    host.daily()
    level, reason = checked(host)
    assert level == OK and reason.startswith("no known vulnerability in the installed packages (list under a day old)")
    assert "no restart-stale on NetBSD" in reason


def test_the_check_names_the_vulnerable_packages():
    host = converged_host()
    host.vulnerabilities = {"age_days": 1, "findings": [
        "Package dovecot-2.3.21.1 has a denial-of-service vulnerability, see https://nvd.nist.gov/vuln/detail/"
        "CVE-2024-23184"]}
    level, reason = checked(host)
    assert level == WARNING
    assert reason.startswith("1 installed package with known vulnerabilities: dovecot-2.3.21.1 (pkgin upgrade)")
    assert checked(host, **OFF) == ("skipped", "security_updates is off")
