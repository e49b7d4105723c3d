"""Updates that take effect (tasks/updates.py), without a host.

- the setting: on by default, a bad value is one line naming it; what it makes the host install;
- apt's files as rendered (security suite only, the daily run, the hook) and the Debian plans of
  the component alone (tests/deploys/updates.py, facts answered here): written on a bare host,
  nothing on a converged one, removed when the setting is off (20auto-upgrades only while it is ours);
- the status check's judgement of real-looking output: apt-get -s (security lines only; ok
  while they wait for unattended-upgrades' daily run, a warning once a run left them or none
  ran for days), restart-stale --list, pkg_admin audit; the Debian status script run under sh
  with a stand-in apt-get, so its sed and the parser agree;
- restart-stale itself, run by dash against a made-up /proc and service tree (stand-in svstat and
  svc on PATH): a service with a process that maps a deleted .so gets exactly one `svc -t`, its
  log service too when that is the stale one, nothing else is ever restarted, and with nothing
  stale it does nothing at all.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from harness.plan_harness import DEFAULT, PROJECT, commands_of, plan_deploy, uploaded
from qmailhost.checks import OK, SKIPPED, WARNING, Target
from qmailhost.files import read, render
from qmailhost.platform import debian, netbsd
from qmailhost.settings import Settings, SettingsError
from tasks import updates

DEBIAN = debian("13")
SCRIPT = "/etc/qmailhost/updates/restart-stale"
APT = "/etc/apt/apt.conf.d"
ALICE = [{"name": "alice", "password_env": "QMAILHOST_TEST_PASSWORD"}]
DEPLOY = PROJECT / "tests" / "deploys" / "updates.py"

# What `apt-get -s -o Debug::NoLocking=1 dist-upgrade` prints on a Debian 12 host with two
# security updates, a new kernel from the security suite, and a point-release update.
APT_SIMULATION = """\
NOTE: This is only a simulation!
      apt-get needs root privileges for real execution.
      Keep also in mind that locking is deactivated,
      so don't depend on the relevance to the real current situation!
Reading package lists...
Building dependency tree...
Reading state information...
Calculating upgrade...
The following NEW packages will be installed:
  linux-image-6.1.0-32-amd64
The following packages will be upgraded:
  libssl3 linux-image-amd64 openssl tzdata
4 upgraded, 1 newly installed, 0 to remove and 0 not upgraded.
Inst libssl3 [3.0.15-1~deb12u1] (3.0.16-1~deb12u1 Debian-Security:12/stable-security [amd64])
Inst linux-image-6.1.0-32-amd64 (6.1.129-1 Debian-Security:12/stable-security [amd64])
Inst linux-image-amd64 [6.1.128-1] (6.1.129-1 Debian:12.10/stable, Debian-Security:12/stable-security [amd64])
Inst openssl [3.0.15-1~deb12u1] (3.0.16-1~deb12u1 Debian-Security:12/stable-security [amd64])
Inst tzdata [2024b-0+deb12u1] (2025a-0+deb12u1 Debian:12.10/stable-updates [all])
Conf libssl3 (3.0.16-1~deb12u1 Debian-Security:12/stable-security [amd64])
Conf linux-image-6.1.0-32-amd64 (6.1.129-1 Debian-Security:12/stable-security [amd64])
Conf linux-image-amd64 (6.1.129-1 Debian:12.10/stable, Debian-Security:12/stable-security [amd64])
Conf openssl (3.0.16-1~deb12u1 Debian-Security:12/stable-security [amd64])
Conf tzdata (2025a-0+deb12u1 Debian:12.10/stable-updates [all])
"""
APT_NOTHING = """\
NOTE: This is only a simulation!
      apt-get needs root privileges for real execution.
      Keep also in mind that locking is deactivated,
      so don't depend on the relevance to the real current situation!
Reading package lists...
Building dependency tree...
Reading state information...
Calculating upgrade...
0 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.
"""
# What pkg_admin audit prints (pkg_install's audit.c: "Package %s has a %s vulnerability, see %s").
AUDIT = """\
Package openssl-3.0.13 has a denial-of-service vulnerability, see https://nvd.nist.gov/vuln/detail/CVE-2024-2511
Package openssl-3.0.13 has a information-leak vulnerability, see https://nvd.nist.gov/vuln/detail/CVE-2024-5535
Package python313-3.13.0 has a arbitrary-code-execution vulnerability, see https://nvd.nist.gov/vuln/detail/CVE-2024-9287
"""
NOW = 1_800_000_000


@pytest.fixture(autouse=True)
def password_env(monkeypatch):
    monkeypatch.setenv("QMAILHOST_TEST_PASSWORD", "correct horse")


def settings(**data) -> Settings:
    return Settings.from_host_data({"accounts": ALICE, **data}, inventory_name="mail.example.org")


# --- the setting --------------------------------------------------------------------------------


def test_security_updates_is_on_by_default_and_a_boolean():
    assert settings().security_updates is True
    assert settings(security_updates=False).security_updates is False
    with pytest.raises(SettingsError) as refused:
        settings(security_updates="yes")
    assert refused.value.setting == "security_updates"
    assert str(refused.value).startswith("setting 'security_updates': ") and "\n" not in str(refused.value)


def test_debian_needs_unattended_upgrades_only_while_on_and_netbsd_nothing():
    needs = updates.COMPONENT.needs
    assert needs(DEBIAN, settings()).packages == ("unattended-upgrades",)
    assert needs(DEBIAN, settings(security_updates=False)).packages == ()
    assert needs(netbsd("10"), settings()).packages == ()


# --- apt's files, and the Debian plans ------------------------------------------------------------


def test_apt_takes_the_security_suite_only_every_day_and_runs_restart_stale_after_dpkg():
    security = read("updates/52qmailhost-security-only")
    assert "\n#clear Unattended-Upgrade::Origins-Pattern;\n" in security
    assert ('\nUnattended-Upgrade::Origins-Pattern { "origin=Debian,codename=${distro_codename}-security,'
            'label=Debian-Security"; };\n') in security
    assert [line for line in security.splitlines() if line and not line.startswith("//")] == [
        "#clear Unattended-Upgrade::Origins-Pattern;",
        'Unattended-Upgrade::Origins-Pattern { "origin=Debian,codename=${distro_codename}-security,'
        'label=Debian-Security"; };']
    periodic = [line for line in read("updates/20auto-upgrades").splitlines() if not line.startswith("//")]
    assert periodic == ['APT::Periodic::Update-Package-Lists "1";', 'APT::Periodic::Unattended-Upgrade "1";']
    hook = render("updates/80qmailhost-restart-stale.j2", script=SCRIPT)
    assert [line for line in hook.splitlines() if not line.startswith("//")] == [
        f'DPkg::Post-Invoke {{ "if [ -x {SCRIPT} ]; then {SCRIPT} || true; fi"; }};']
    assert updates.script(DEBIAN) == SCRIPT
    assert updates.HOOK == APT + "/80qmailhost-restart-stale"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def wanted_files() -> dict[str, tuple[str, str]]:
    """What the Debian deploy writes: path -> (content, mode)."""
    return {
        f"{APT}/20auto-upgrades": (read("updates/20auto-upgrades"), "644"),
        f"{APT}/52qmailhost-security-only": (read("updates/52qmailhost-security-only"), "644"),
        SCRIPT: (render("updates/restart-stale.sh.j2", service_dir="/etc/service", log=updates.LOG,
                        hook=updates.HOOK), "755"),
        updates.HOOK: (render("updates/80qmailhost-restart-stale.j2", script=SCRIPT), "644"),
    }


def debian_plan(present: dict[str, tuple[str, str]], **data) -> list:
    """The plan of tests/deploys/updates.py on a Debian 13 host holding PRESENT (path -> (content, mode))."""
    files = {path: {"type": "file", "sha256": _digest(content), "mode": mode, "user": "root", "group": "root"}
             for path, (content, mode) in present.items()}

    def answer(name, kwargs):
        if name == "Os":
            return "Linux"
        if name == "LinuxDistribution":
            return {"name": "Debian", "major": 13}
        if name == "ManagedTree":  # /etc/qmailhost is one of the managed roots: restart-stale is listed there
            return {path: entry for path, entry in files.items() if path.startswith("/etc/qmailhost/")}
        if name == "ManagedFile":
            assert not kwargs["path"].startswith("/etc/qmailhost/"), kwargs
            assert (kwargs["sha256"], kwargs["stat"]) == ("sha256sum", "stat -c '%a %U %G'"), kwargs
            entry = files.get(kwargs["path"])
            return {k: entry[k] for k in ("sha256", "mode", "user", "group")} if entry else None
        if name == "FileContents":
            return present[kwargs["path"]][0].splitlines() if kwargs["path"] in present else None
        return DEFAULT

    return plan_deploy({"hostname": "mail.example.org", "accounts": ALICE, **data}, answer, deploy=DEPLOY)


def test_a_bare_debian_host_gets_the_apt_files_the_script_and_its_hook():
    planned = debian_plan({})
    assert [name for name, _ in planned] == [
        "Write apt's 20auto-upgrades", "Write apt's 52qmailhost-security-only",
        "Write restart-stale (restarts services that run a replaced library)",
        "Write apt's hook running restart-stale after dpkg"]
    commands = commands_of(planned)
    for path, (content, mode) in wanted_files().items():
        assert uploaded(planned, path) == content
        temp = f"{path}.qmailhost-new"
        assert f"chown root:root {temp} && chmod {mode} {temp} && mv -f {temp} {path}" in commands
    assert commands.index(f"upload {SCRIPT}.qmailhost-new") < commands.index(f"upload {updates.HOOK}.qmailhost-new")


def test_a_converged_debian_host_plans_nothing():
    assert debian_plan(wanted_files()) == []


def test_off_removes_what_the_deploy_wrote_and_nothing_else():
    planned = debian_plan(wanted_files(), security_updates=False)
    assert [(name, commands) for name, commands in planned] == [
        ("Remove apt's 20auto-upgrades (security_updates is off)", [f"rm -f {APT}/20auto-upgrades"]),
        ("Remove apt's 52qmailhost-security-only (security_updates is off)",
         [f"rm -f {APT}/52qmailhost-security-only"]),
        ("Remove restart-stale (restarts services that run a replaced library) (security_updates is off)",
         [f"rm -f {SCRIPT}"]),
        ("Remove apt's hook running restart-stale after dpkg (security_updates is off)", [f"rm -f {updates.HOOK}"])]
    assert debian_plan({}, security_updates=False) == []


def test_off_leaves_a_20auto_upgrades_that_is_not_ours():
    """One the package's own debconf question wrote (no qmailhost comment) is the owner's choice."""
    theirs = 'APT::Periodic::Update-Package-Lists "1";\nAPT::Periodic::Unattended-Upgrade "1";\n'
    present = {**wanted_files(), f"{APT}/20auto-upgrades": (theirs, "644")}
    commands = commands_of(debian_plan(present, security_updates=False))
    assert f"rm -f {APT}/20auto-upgrades" not in commands
    assert f"rm -f {APT}/52qmailhost-security-only" in commands and f"rm -f {updates.HOOK}" in commands


# --- the check's judgement ------------------------------------------------------------------------


def apt_status(simulation: str = APT_NOTHING, listed: str = "", lists_age_days: float = 0.5,
               upgraded_age_days: float | None = None, extra: str = "") -> str:
    """What the Debian status script prints (as its sed turns apt-get's lines); UPGRADED_AGE_DAYS:
    unattended-upgrades' last good run (None: never)."""
    inst = "".join(f"inst\t{line[5:]}\n" for line in simulation.splitlines() if line.startswith("Inst "))
    upgraded = "" if upgraded_age_days is None else str(int(NOW - upgraded_age_days * 86400))
    return f"now\t{NOW}\nlists\t{int(NOW - lists_age_days * 86400)}\nupgraded\t{upgraded}\n{extra}{inst}{listed}"


def judged(output: str, platform=DEBIAN) -> tuple[str, str]:
    return updates.WAYS[platform.name].verdict(updates.parsed(output), platform)


def test_only_the_security_suites_lines_count_as_security_updates():
    inst = [line[5:] for line in APT_SIMULATION.splitlines() if line.startswith("Inst ")]
    assert updates.security_updates(inst) == ["libssl3", "linux-image-6.1.0-32-amd64", "linux-image-amd64",
                                              "openssl"]
    assert updates.security_updates([line[5:] for line in APT_NOTHING.splitlines() if line.startswith("Inst ")]) \
        == []


PENDING = "libssl3, linux-image-6.1.0-32-amd64, linux-image-amd64, openssl"


def test_security_updates_waiting_for_the_daily_run_are_ok_and_said():
    """apt refreshed the lists after unattended-upgrades' last run, which was less than a day ago."""
    level, reason = judged(apt_status(APT_SIMULATION, lists_age_days=0.2, upgraded_age_days=0.8))
    assert (level, reason) == (OK, f"4 security updates wait for unattended-upgrades' next daily run: {PENDING}; "
                                   "no service runs a replaced library")


def test_security_updates_a_run_left_or_no_run_for_days_warn_with_how_many_and_which():
    left = judged(apt_status(APT_SIMULATION, lists_age_days=0.5, upgraded_age_days=0.1))
    assert left == (WARNING, f"4 security updates pending after unattended-upgrades' last run (under a day ago): "
                             f"{PENDING} (see /var/log/unattended-upgrades/; or apt-get upgrade)")
    stopped = judged(apt_status(APT_SIMULATION, lists_age_days=0.5, upgraded_age_days=5))
    assert stopped == (WARNING, f"4 security updates pending: {PENDING} (unattended-upgrades last ran 5 days ago; "
                                "apt-get upgrade installs them)")
    never = judged(apt_status(APT_SIMULATION))
    assert never == (WARNING, f"4 security updates pending: {PENDING} (unattended-upgrades has never run; "
                              "apt-get upgrade installs them)")
    assert "tzdata" not in left[1] + stopped[1] + never[1]


def test_many_pending_updates_are_named_five_at_most():
    simulation = "".join(f"Inst lib{i} [1] (2 Debian-Security:13/stable-security [amd64])\n" for i in range(8))
    assert judged(apt_status(simulation))[1].startswith(
        "8 security updates pending: lib0, lib1, lib2, lib3, lib4 and 3 more (")


def test_nothing_pending_and_nothing_stale_is_ok():
    assert judged(apt_status()) == (OK, "no security update pending, no service runs a replaced library")


def test_services_running_a_replaced_library_are_named_with_how_to_restart_them():
    listed = ("service\tqmail-smtpd\t1234\tqmail-smtpd\t/usr/lib/x86_64-linux-gnu/libssl.so.3\n"
              "service\tstunnel/log\t1300\tmultilog\t/usr/lib/x86_64-linux-gnu/libc.so.6\n")
    level, reason = judged(apt_status(listed=listed))
    assert level == WARNING
    assert reason == ("qmail-smtpd, stunnel/log still run a replaced library (/usr/lib/x86_64-linux-gnu/libssl.so.3): "
                      f"{SCRIPT} restarts them (apt runs it after every dpkg run), or svc -t /etc/service/qmail-smtpd, "
                      "svc -t /etc/service/stunnel/log")


def test_other_stale_processes_a_reboot_and_old_lists_are_said_too():
    listed = "other\t612\tsshd\t/usr/lib/x86_64-linux-gnu/libcrypto.so.3\n"
    level, reason = judged(apt_status(listed=listed, lists_age_days=5,
                                      extra="reboot\tlinux-image-6.1.0-32-amd64 \n"))
    assert level == WARNING
    assert reason == ("1 other process still runs a replaced library (sshd 612): not services of ours; restart them "
                      "or reboot; a reboot is pending (/run/reboot-required: linux-image-6.1.0-32-amd64); "
                      "apt's package lists were refreshed 5 days ago: pending updates may be unseen")


def test_no_record_of_a_list_refresh_a_missing_script_and_an_apt_error_warn():
    output = (f"now\t{NOW}\nlists\t\napt-error\tThe package lists or status file could not be parsed or opened.\n"
              f"no-script\t{SCRIPT}\n")
    level, reason = judged(output)
    assert level == WARNING
    assert reason == ("apt-get cannot simulate an upgrade: The package lists or status file could not be parsed or "
                      f"opened.; {SCRIPT} is missing: deploy again; apt has no record of refreshing its package "
                      "lists: pending updates may be unseen")


def test_the_debian_status_script_feeds_the_parser(tmp_path):
    """The status script under sh, with a stand-in apt-get printing APT_SIMULATION and a
    stand-in restart-stale: its sed makes the lines the judgement reads."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "simulation").write_text(APT_SIMULATION)
    fake_apt = bin_dir / "apt-get"
    fake_apt.write_text(f"#!/bin/sh\n[ \"$*\" = '-s -o Debug::NoLocking=1 dist-upgrade' ] || exit 9\n"
                        f"cat {tmp_path / 'simulation'}\n")
    restart_stale = tmp_path / "restart-stale"
    restart_stale.write_text("#!/bin/sh\n[ \"$1\" = --list ] || exit 9\n"
                             "printf 'service\\tqmail-send\\t77\\tqmail-send\\t/usr/lib/libz.so.1.3.1\\n'\n")
    for program in (fake_apt, restart_stale):
        program.chmod(0o755)
    script = render("updates/status.debian.sh.j2", script=str(restart_stale))
    result = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, check=True,
                            env={**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"})
    status = updates.parsed(result.stdout)
    assert status["now"][0].isdigit() and "lists" in status and "upgraded" in status
    assert updates.security_updates(status["inst"]) == ["libssl3", "linux-image-6.1.0-32-amd64",
                                                         "linux-image-amd64", "openssl"]
    assert status["service"] == ["qmail-send\t77\tqmail-send\t/usr/lib/libz.so.1.3.1"]
    assert "no-script" not in status


def test_vulnerable_netbsd_packages_are_listed_once_each():
    found, other = updates.vulnerable_packages(AUDIT.splitlines())
    assert found == {"openssl-3.0.13": ["denial-of-service", "information-leak"],
                     "python313-3.13.0": ["arbitrary-code-execution"]}
    assert other == []
    output = f"now\t{NOW}\nfetched\t{NOW - 3600}\n" + "".join(f"audit\t{line}\n" for line in AUDIT.splitlines())
    level, reason = judged(output, netbsd("10"))
    assert level == WARNING
    assert reason.startswith("2 installed packages with known vulnerabilities: openssl-3.0.13, python313-3.13.0 "
                             "(pkgin upgrade); no restart-stale on NetBSD (no /proc/PID/maps by default)")


def test_netbsd_without_a_vulnerability_list_says_the_fetch_has_not_run():
    level, reason = judged(f"now\t{NOW}\nmissing\t/usr/pkg/pkgdb/pkg-vulnerabilities\n", netbsd("10"))
    assert level == WARNING
    assert reason.startswith("no vulnerability list (/usr/pkg/pkgdb/pkg-vulnerabilities): "
                             "`pkg_admin fetch-pkg-vulnerabilities` has not run yet")
    assert "no restart-stale on NetBSD" in reason


def test_netbsd_with_an_old_list_or_a_complaint_warns_and_a_clean_audit_is_ok():
    old = judged(f"now\t{NOW}\nfetched\t{NOW - 9 * 86400}\n", netbsd("10"))
    assert old[0] == WARNING and "the vulnerability list is 9 days old" in old[1]
    odd = judged(f"now\t{NOW}\nfetched\t{NOW}\naudit\tpkg_admin: Cannot read pkg-vulnerabilities\n", netbsd("10"))
    assert odd[0] == WARNING and "pkg_admin audit says: pkg_admin: Cannot read pkg-vulnerabilities" in odd[1]
    level, reason = judged(f"now\t{NOW}\nfetched\t{NOW - 86400}\n", netbsd("10"))
    assert level == OK
    assert reason == ("no known vulnerability in the installed packages (list 1 day old); no restart-stale on "
                      "NetBSD (no /proc/PID/maps by default): restart a daemon after upgrading its package")


def test_the_check_asks_the_host_once_and_skips_when_off():
    sent = []

    def shell(command):
        sent.append(command)
        return True, apt_status(APT_SIMULATION)

    target = Target(settings(), DEBIAN, "192.0.2.1", shell)
    assert updates.check_updates(target)[0] == WARNING
    assert sent == [render("updates/status.debian.sh.j2", script=SCRIPT)]
    assert "apt-get -s -o Debug::NoLocking=1 dist-upgrade" in sent[0] and f"{SCRIPT} --list" in sent[0]
    on_host = Target(settings(), DEBIAN, "127.0.0.1", shell, on_host=True)
    assert updates.check_updates(on_host) == updates.check_updates(target)
    off = Target(settings(security_updates=False), DEBIAN, "192.0.2.1", lambda command: pytest.fail(command))
    assert updates.check_updates(off) == (SKIPPED, "security_updates is off")


# --- restart-stale, for real ----------------------------------------------------------------------


LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"
LIBSSL = "/usr/lib/x86_64-linux-gnu/libssl.so.3"


def _maps(*paths: str) -> str:
    return "".join(f"7f2c3b6{i:05x}000-7f2c3b6{i:05x}fff r-xp 00000000 08:01 {1835251 + i}                   {p}\n"
                   for i, p in enumerate(paths)) + "7ffd1c9e4000-7ffd1c9e6000 r-xp 00000000 00:00 0      [vdso]\n"


class World:
    """A made-up /proc, service tree (daemontools' /etc/service) and stand-ins for svstat and svc."""

    def __init__(self, root: Path):
        self.root, self.proc, self.services = root, root / "proc", root / "service"
        self.calls, self.log, self.bin = root / "svc-calls", root / "restart-stale.log", root / "bin"
        for directory in (self.proc, self.services, self.bin):
            directory.mkdir()
        # svstat as daemontools prints it, from each service's pid (a file of the stand-in's own)
        (self.bin / "svstat").write_text(
            "#!/bin/sh\nfor d; do if [ -f \"$d/stand-in-pid\" ]; then "
            "echo \"$d: up (pid $(cat \"$d/stand-in-pid\")) 3600 seconds\"; "
            "else echo \"unable to chdir: file does not exist\" >&2; fi; done\n")
        (self.bin / "svc").write_text(f"#!/bin/sh\necho \"$*\" >> {self.calls}\n")
        for tool in ("svstat", "svc"):
            (self.bin / tool).chmod(0o755)
        self.script = root / "restart-stale"
        self.script.write_text(render("updates/restart-stale.sh.j2", service_dir="/etc/service",
                                      log="/var/log/qmailhost-restart-stale.log", hook=updates.HOOK))

    def service(self, name: str, pid: int) -> None:
        directory = self.services / name
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "stand-in-pid").write_text(f"{pid}\n")

    def process(self, pid: int, parent: int, comm: str, *mapped: str) -> None:
        directory = self.proc / str(pid)
        directory.mkdir()
        (directory / "status").write_text(f"Name:\t{comm}\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t{pid}\n"
                                          f"Ngid:\t0\nPid:\t{pid}\nPPid:\t{parent}\nTracerPid:\t0\n")
        (directory / "comm").write_text(comm + "\n")
        (directory / "maps").write_text(_maps(*mapped))

    def run(self, *args: str) -> subprocess.CompletedProcess:
        env = {"PATH": f"{self.bin}:/usr/bin:/bin", "QMAILHOST_PROC": str(self.proc),
               "QMAILHOST_SERVICE_DIR": str(self.services), "QMAILHOST_RESTART_LOG": str(self.log)}
        return subprocess.run(["/bin/sh", str(self.script), *args], capture_output=True, text=True, env=env)

    def svc_calls(self) -> list[str]:
        return self.calls.read_text().splitlines() if self.calls.exists() else []


@pytest.fixture
def world(tmp_path) -> World:
    """svscan (1 → 10), supervise for each service and log, their processes; libssl replaced under
    qmail-smtpd's sessions, libc under stunnel's multilog, under sshd and under one supervise."""
    w = World(tmp_path)
    w.process(10, 1, "svscan", LIBC)
    w.service("qmail-smtpd", 100)
    w.process(20, 10, "supervise", f"{LIBC} (deleted)")  # supervise qmail-smtpd: not a service
    w.process(100, 20, "tcpserver", LIBC)
    w.process(101, 100, "sh", LIBC)  # a session: sh, then spamdyke, then qmail-smtpd
    w.process(102, 101, "spamdyke", LIBC, f"{LIBSSL} (deleted)")
    w.process(103, 102, "qmail-smtpd", f"{LIBSSL} (deleted)")
    w.process(104, 100, "sh", f"{LIBC}", f"{LIBSSL} (deleted)")  # another session
    w.service("qmail-smtpd/log", 110)
    w.process(110, 21, "multilog", LIBC)
    w.service("qmail-send", 200)
    w.process(200, 22, "qmail-send", LIBC)
    w.process(201, 200, "qmail-lspawn", LIBC, "/usr/lib/locale/locale-archive (deleted)")  # not a library
    w.service("stunnel", 300)
    w.process(300, 23, "stunnel4", LIBC, LIBSSL)
    w.service("stunnel/log", 310)
    w.process(310, 24, "multilog", f"{LIBC} (deleted)")
    w.process(612, 1, "sshd", f"{LIBC} (deleted)")  # not under svscan
    w.process(700, 690, "qmail-smtpd", f"{LIBSSL} (deleted)")  # a session its restarted tcpserver left behind
    return w


def test_each_stale_service_gets_one_restart_and_nothing_else_does(world):
    result = world.run()
    assert result.returncode == 0, result.stderr
    assert world.svc_calls() == [f"-t {world.services}/qmail-smtpd", f"-t {world.services}/stunnel/log"]
    said = result.stdout.splitlines()
    assert len(said) == 2
    assert said[0].endswith(f"restart-stale: restarted qmail-smtpd: pid 102 (spamdyke) ran the replaced {LIBSSL}")
    assert said[1].endswith(f"restart-stale: restarted stunnel/log: pid 310 (multilog) ran the replaced {LIBC}")
    assert world.log.read_text().splitlines() == said
    assert result.stderr == ""


def test_list_restarts_nothing_and_says_what_it_would(world):
    result = world.run("--list")
    assert result.returncode == 0, result.stderr
    assert world.svc_calls() == [] and not world.log.exists()
    assert result.stdout.splitlines() == [
        f"service\tqmail-smtpd\t102\tspamdyke\t{LIBSSL}",
        f"other\t20\tsupervise\t{LIBC}",
        f"service\tstunnel/log\t310\tmultilog\t{LIBC}",
        f"other\t612\tsshd\t{LIBC}",
        f"other\t700\tqmail-smtpd\t{LIBSSL}",
    ]
    status = updates.parsed(result.stdout)
    assert judged(apt_status(listed=result.stdout))[1].startswith(
        f"qmail-smtpd, stunnel/log still run a replaced library ({LIBSSL})")
    assert len(status["other"]) == 3


def test_with_nothing_stale_it_does_nothing(tmp_path):
    fresh = World(tmp_path)
    fresh.service("qmail-smtpd", 100)
    fresh.process(100, 20, "tcpserver", LIBC, LIBSSL)
    fresh.process(101, 100, "qmail-smtpd", LIBC, "/usr/lib/locale/locale-archive (deleted)")
    for args in ((), ("--list",)):
        result = fresh.run(*args)
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert fresh.svc_calls() == [] and not fresh.log.exists()


def test_a_failed_svc_is_said_and_the_others_still_restart(world):
    (world.bin / "svc").write_text(f"#!/bin/sh\necho \"$*\" >> {world.calls}\ncase $2 in *qmail-smtpd) exit 111;; esac\n")
    result = world.run()
    assert result.returncode == 1
    assert world.svc_calls() == [f"-t {world.services}/qmail-smtpd", f"-t {world.services}/stunnel/log"]
    assert f"svc -t {world.services}/qmail-smtpd failed" in result.stderr
    assert len(world.log.read_text().splitlines()) == 1


def test_a_bad_argument_is_refused():
    result = subprocess.run(["/bin/sh", "-c", render("updates/restart-stale.sh.j2", service_dir="/nonexistent",
                                                     log="/nonexistent/log", hook=updates.HOOK), "restart-stale",
                             "--now"], capture_output=True, text=True)
    assert result.returncode == 2 and "usage:" in result.stderr


def test_the_script_is_posix_sh_for_dash():
    """dash -n parses it; the deployed file is what the deploy renders for Debian."""
    script = wanted_files()[SCRIPT][0]
    assert script.startswith("#!/bin/sh\n")
    assert subprocess.run(["dash", "-n"], input=script, text=True).returncode == 0
    assert "services=${QMAILHOST_SERVICE_DIR:-/etc/service}" in script
    assert "log=${QMAILHOST_RESTART_LOG:-/var/log/qmailhost-restart-stale.log}" in script
