"""Updates that take effect: security updates installed without the laptop, and the host told
what still runs the old code (issue 26). One setting, ``security_updates`` (on by default).

- Debian: unattended-upgrades, run daily by apt (``20auto-upgrades``; apt's systemd timers,
  or cron's apt-compat where systemd does not run), installs updates from Debian's security
  suite only (``52qmailhost-security-only`` replaces the package's list of origins, which
  also takes point releases). An update that replaces a shared library leaves every daemon
  that loaded it running the old one until it restarts; needrestart cannot restart our
  daemons (it knows systemd units and init scripts, not services under svscan). So apt runs
  ``restart-stale`` after every dpkg run (``80qmailhost-restart-stale``, a DPkg::Post-Invoke
  hook): each daemontools service (or its log) with a process that maps a deleted ``.so``
  gets one ``svc -t``, logged in /var/log/qmailhost-restart-stale.log; nothing else is ever
  restarted, and with nothing stale it does nothing. A kernel update still needs a reboot
  (the check says so).
- NetBSD: the base system's daily(5) and security(5) already fetch pkgsrc's vulnerability
  list and run ``pkg_admin audit`` (its findings are mailed to root, whose mail the aliases
  send to an account): one line of ours in /etc/daily.conf (``fetch_pkg_vulnerabilities=YES``)
  and one in /etc/security.conf (``check_pkg_vulnerabilities=YES``), each the last to set its
  variable, every other line the owner's. Nothing upgrades packages unattended (``pkgin
  upgrade`` stays a person's decision), and nothing finds stale daemons: NetBSD has no
  /proc/PID/maps by default, so restart-stale does not exist there.
- Off, the deploy removes what it wrote (the apt files, the script and its hook; our lines in
  the daily and security configs), and leaves the packages.
- The status check ``updates``: Debian, the security updates apt would install now (ok while
  they wait for the daily run; a warning once a run left them, or none ran for days),
  services (and other processes) still mapping a replaced library, a pending reboot, package
  lists not refreshed for days; NetBSD, the vulnerable packages ``pkg_admin audit`` names, or
  a vulnerability list that is missing or old. Each a warning; nothing of the sort: ok.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass

from pyinfra import host
from pyinfra.api import FactBase, deploy, operation

from qmailhost import ops
from qmailhost.checks import OK, SKIPPED, WARNING
from qmailhost.component import Component, Needs, Setting
from qmailhost.files import read, render
from qmailhost.platform import Platform
from qmailhost.settings import Settings, boolean

APT_CONF = "/etc/apt/apt.conf.d"
HOOK = f"{APT_CONF}/80qmailhost-restart-stale"
LOG = "/var/log/qmailhost-restart-stale.log"
MARK = "# managed by qmailhost"  # ends each line of ours in a config the owner shares
LISTS_DAYS = 2  # package lists older than this: the daily refresh is not running
VULNERABILITIES_DAYS = 7  # pkg-vulnerabilities older than this: the daily fetch is not running (pkg_admin's own limit)
SHOWN = 5  # packages named in a warning; the rest counted


def script(platform: Platform) -> str:
    """restart-stale on the host."""
    return f"{platform.config_dir}/updates/restart-stale"


# --- the status check's reading of the host (pure: tests/test_updates.py feeds it real output) ----


def parsed(output: str) -> dict[str, list[str]]:
    """The status script's lines "KEY<TAB>rest" as {KEY: [rest, ...]}."""
    found: dict[str, list[str]] = {}
    for line in output.splitlines():
        key, _, rest = line.partition("\t")
        found.setdefault(key, []).append(rest)
    return found


def security_updates(inst_lines: list[str]) -> list[str]:
    """The packages of apt-get -s "Inst" lines (without "Inst ") that come from a security suite:
    "libssl3 [3.0.15-1~deb12u1] (3.0.16-1~deb12u1 Debian-Security:12/stable-security [amd64])"."""
    names = []
    for line in inst_lines:
        origins = re.search(r"\((.*)\)\s*$", line)
        if origins and re.search(r"Debian-Security:|[\w.-]-security\b", origins[1]):
            names.append(line.split()[0])
    return list(dict.fromkeys(names))


def vulnerable_packages(audit_lines: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """pkg_admin audit's lines: ({package: [vulnerability type, ...]}, lines it did not expect)."""
    found: dict[str, list[str]] = {}
    other = []
    for line in audit_lines:
        if m := re.fullmatch(r"Package (\S+) has an? (.+?) vulnerability, see (\S+)", line.strip()):
            found.setdefault(m[1], []).append(m[2])
        elif line.strip():
            other.append(line.strip())
    return found, other


def _some(names: list[str]) -> str:
    more = len(names) - SHOWN
    return ", ".join(names[:SHOWN]) + (f" and {more} more" if more > 0 else "")


def _days(now: str, then: str) -> int | None:
    return (int(now) - int(then)) // 86400 if now.isdigit() and then.isdigit() else None


def _age(days: int | None) -> str:
    return "an unknown time" if days is None else "under a day" if days < 1 else f"{days} day{'s' if days > 1 else ''}"


def _pending(pending: list[str], status: dict[str, list[str]]) -> tuple[bool, str]:
    """(a warning?, what to say) of security updates PENDING. They are only waiting (ok) while
    unattended-upgrades has not run since the lists that brought them and ran within
    LISTS_DAYS: apt refreshes the lists some hours before its daily upgrade run. Left by a run
    that saw them, or with no run for days (or ever), they are a warning."""
    now = (status.get("now") or [""])[0]
    lists, upgraded = ((status.get(key) or [""])[0] for key in ("lists", "upgraded"))
    some = f"{len(pending)} security update{'s' if len(pending) > 1 else ''}"
    if upgraded.isdigit() and lists.isdigit() and int(upgraded) >= int(lists):
        return True, (f"{some} pending after unattended-upgrades' last run ({_age(_days(now, upgraded))} ago): "
                      f"{_some(pending)} (see /var/log/unattended-upgrades/; or apt-get upgrade)")
    ran = _days(now, upgraded)
    if ran is None or ran > LISTS_DAYS:
        when = "has never run" if ran is None else f"last ran {_age(ran)} ago"
        return True, f"{some} pending: {_some(pending)} (unattended-upgrades {when}; apt-get upgrade installs them)"
    return False, f"{some} wait for unattended-upgrades' next daily run: {_some(pending)}"


def apt_verdict(status: dict[str, list[str]], platform: Platform) -> tuple[str, str]:
    """Debian: the status script's output (parsed()) judged: (status, one-line reason)."""
    found, waiting = [], []
    if errors := status.get("apt-error"):
        found.append(f"apt-get cannot simulate an upgrade: {errors[0]}")
    if pending := security_updates(status.get("inst", [])):
        warn, said = _pending(pending, status)
        (found if warn else waiting).append(said)
    services = [line.split("\t") for line in status.get("service", [])]
    if services:
        names = [fields[0] for fields in services]
        found.append(f"{_some(names)} still run{'s' if len(names) == 1 else ''} a replaced library "
                     f"({services[0][3]}): {script(platform)} restarts them (apt runs it after every dpkg "
                     "run), or " + ", ".join(f"svc -t {platform.service_dir}/{name}" for name in names))
    others = [line.split("\t") for line in status.get("other", [])]
    if others:
        shown = [f"{fields[1]} {fields[0]}" for fields in others]
        many = len(others) > 1
        found.append(f"{len(others)} other process{'es' if many else ''} still run{'' if many else 's'} a replaced "
                     f"library ({_some(shown)}): not services of ours; restart them or reboot")
    if "reboot" in status:
        packages = status["reboot"][0].split()
        found.append("a reboot is pending (/run/reboot-required" + (f": {_some(packages)})" if packages else ")"))
    if "no-script" in status:
        found.append(f"{status['no-script'][0]} is missing: deploy again")
    now = (status.get("now") or [""])[0]
    lists = _days(now, (status.get("lists") or [""])[0])
    if lists is None:
        found.append("apt has no record of refreshing its package lists: pending updates may be unseen")
    elif lists > LISTS_DAYS:
        found.append(f"apt's package lists were refreshed {_age(lists)} ago: pending updates may be unseen")
    if found:
        return WARNING, "; ".join(found + waiting)
    if waiting:
        return OK, f"{waiting[0]}; no service runs a replaced library"
    return OK, "no security update pending, no service runs a replaced library"


def audit_verdict(status: dict[str, list[str]], platform: Platform) -> tuple[str, str]:
    """NetBSD: the status script's output (parsed()) judged: (status, one-line reason)."""
    not_here = "no restart-stale on NetBSD (no /proc/PID/maps by default): restart a daemon after upgrading its package"
    if "missing" in status:
        return WARNING, (f"no vulnerability list ({status['missing'][0]}): `pkg_admin fetch-pkg-vulnerabilities` "
                         "has not run yet (daily(5) runs it at night); " + not_here)
    age = _days((status.get("now") or [""])[0], (status.get("fetched") or [""])[0])
    found, other = vulnerable_packages(status.get("audit", []))
    problems = []
    if found:
        problems.append(f"{len(found)} installed package{'s' if len(found) > 1 else ''} with known vulnerabilities: "
                        f"{_some(list(found))} (pkgin upgrade)")
    if other:
        problems.append(f"pkg_admin audit says: {other[0]}")
    if age is not None and age > VULNERABILITIES_DAYS:
        problems.append(f"the vulnerability list is {_age(age)} old: daily(5)'s fetch is not running or fails")
    if problems:
        return WARNING, "; ".join(problems) + "; " + not_here
    return OK, f"no known vulnerability in the installed packages (list {_age(age)} old); {not_here}"


# --- the platforms -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Way:
    """How one platform keeps up with security updates."""

    packages: tuple[str, ...] = ()
    # apt's config: (path, files/ name, the owner's too): whole files of ours. A file the owner's
    # package may write as well (20auto-upgrades) is removed only while it holds exactly ours.
    apt_files: tuple[tuple[str, str, bool], ...] = ()
    restart_stale: bool = False  # restart-stale and apt's hook (needs /proc/PID/maps)
    conf_lines: tuple[tuple[str, str, str], ...] = ()  # (a config the base system sources, variable, value)
    status: str = ""  # files/ name: the status check's read-only script
    verdict: Callable[[dict, Platform], tuple[str, str]] = apt_verdict


WAYS = {
    "debian": Way(packages=("unattended-upgrades",),
                  apt_files=((f"{APT_CONF}/20auto-upgrades", "updates/20auto-upgrades", True),
                             (f"{APT_CONF}/52qmailhost-security-only", "updates/52qmailhost-security-only", False)),
                  restart_stale=True, status="updates/status.debian.sh.j2", verdict=apt_verdict),
    "netbsd": Way(conf_lines=(("/etc/daily.conf", "fetch_pkg_vulnerabilities", "YES"),
                              ("/etc/security.conf", "check_pkg_vulnerabilities", "YES")),
                  status="updates/status.netbsd.sh", verdict=audit_verdict),
}


# --- the deploy --------------------------------------------------------------------------------


class ConfAssignments(FactBase):
    """The lines of the shell-syntax config PATH that set VARIABLE, in order ([]: none, or no file)."""

    def command(self, path, variable):
        return f"[ -f {shlex.quote(path)} ] && grep -E '^[[:space:]]*{variable}=' {shlex.quote(path)}; true"

    @staticmethod
    def default():
        return []

    def process(self, output):
        return list(output)


def conf_line_text(variable: str, value: str) -> str:
    return f"{variable}={value} {MARK}"


@operation()
def conf_line(path: str, variable: str, value: str | None):
    """In PATH (a config the base system sources as sh, such as /etc/daily.conf), VARIABLE is
    VALUE through one line of ours, the last that sets it (an earlier line of the owner's
    stays, and loses); VALUE None: no line of ours (a file left empty by that is removed)."""
    lines = host.get_fact(ConfAssignments, path=path, variable=variable)
    ours = [line for line in lines if line.endswith(MARK)]
    quoted, new = shlex.quote(path), shlex.quote(f"{path}.qmailhost-new")
    without = f"grep -v {shlex.quote(f'^{variable}=.*{MARK}$')} {quoted}"
    if value is None:
        if not ours:
            host.noop(f"{path} has no line of qmailhost's for {variable}")
            return
        yield (f"cp -p {quoted} {new} && {{ {without} || [ $? -eq 1 ]; }} > {new} && "
               f"if [ -s {new} ]; then mv -f {new} {quoted}; else rm -f {new} {quoted}; fi")
        return
    line = conf_line_text(variable, value)
    if ours == [line] and lines[-1] == line:
        host.noop(f"{path} sets {variable}={value}")
        return
    if not ours:
        yield f"echo {shlex.quote(line)} >> {quoted}"
        return
    yield f"cp -p {quoted} {new} && {{ {without}; echo {shlex.quote(line)}; }} > {new} && mv -f {new} {quoted}"


def _keep(path: str, content: str, on: bool, what: str, mode: str = "644", shared: bool = False) -> None:
    """PATH is CONTENT (WHAT it is for) when ON; else absent (SHARED: only while it holds exactly CONTENT)."""
    if on:
        ops.whole_file(name=f"Write {what}", dest=path, mode=mode, content=content)
    elif shared and ops.differs(path, content) and ops.managed_file(path):
        ops.decided(name=f"Leave {path} (security_updates is off)", command="", needed=False,
                    why_not=f"{path} is not the one qmailhost wrote: left as it is")
    else:
        ops.absent_file(name=f"Remove {what} (security_updates is off)", path=path)


@deploy("updates")
def configure(platform: Platform, settings: Settings) -> None:
    way, on = WAYS[platform.name], settings.security_updates
    for path, name, shared in way.apt_files:
        _keep(path, read(name), on, f"apt's {path.rsplit('/', 1)[1]}", shared=shared)
    if way.restart_stale:
        mine = script(platform)
        _keep(mine, render("updates/restart-stale.sh.j2", service_dir=platform.service_dir, log=LOG, hook=HOOK),
              on, "restart-stale (restarts services that run a replaced library)", mode="755")
        _keep(HOOK, render("updates/80qmailhost-restart-stale.j2", script=mine), on,
              "apt's hook running restart-stale after dpkg")
    for path, variable, value in way.conf_lines:
        conf_line(name=(f"Set {variable}={value} in {path}" if on else
                        f"Remove qmailhost's {variable} line from {path} (security_updates is off)"),
                  path=path, variable=variable, value=value if on else None)


# --- status check --------------------------------------------------------------------------------


def status_script(platform: Platform) -> str:
    name = WAYS[platform.name].status
    return render(name, script=script(platform)) if name.endswith(".j2") else read(name)


def check_updates(target):
    """Under security_updates: no security update waits (Debian) and no installed package has a
    known vulnerability (NetBSD); no service still runs a library an update replaced (Debian)."""
    if not target.settings.security_updates:
        return SKIPPED, "security_updates is off"
    return WAYS[target.platform.name].verdict(parsed(target.run(status_script(target.platform))), target.platform)


COMPONENT = Component(
    name="updates",
    settings=(Setting("security_updates", True, boolean("security_updates"),
                      "install security updates unattended and restart the services they leave running old "
                      "libraries (Debian); report vulnerable packages daily (NetBSD)"),),
    needs=lambda platform, settings: Needs(packages=WAYS[platform.name].packages if settings.security_updates
                                           else ()),
    checks=(check_updates,),
)
