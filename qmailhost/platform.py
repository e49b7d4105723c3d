"""Platform data: every path, user, tool and backend that differs between systems, decided once.

``detect()`` reads the OS facts and returns one ``Platform``; component code uses its
fields (and the package and service backends they name) and never asks which OS it is
on. What only one component needs to know (stunnel's paths, TMDA's pieces, sendmail's
links) is that component's own platform data, a table keyed by ``Platform.name`` in its
folder.

- Debian 13 and 12 build qmail, mess822, checkpassword and spamdyke from pinned sources,
  install the rest with apt and run services under daemontools.
- NetBSD 9 and 10 take binary packages from pkgin (qmail's with its default tls option,
  verified), build mess822 (SMTP AUTH) and spamdyke (TLS) from pkgsrc with options, and
  run services through qmail-run's and stunnel's rc.d scripts, configured by one file per
  service in /etc/rc.conf.d.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyinfra import host
from pyinfra.api.exceptions import PyinfraError
from pyinfra.facts.server import LinuxDistribution, Os, OsVersion


@dataclass(frozen=True)
class AccountTools:
    """How this system's useradd/groupadd spell what qmailhost asks of them."""

    system_user: tuple[str, ...]  # a system account (a uid below the login range)
    system_group: tuple[str, ...]
    own_group: tuple[str, ...]  # a group of the user's own name as its primary group
    no_home: tuple[str, ...]  # do not create the home directory
    create_home: tuple[str, ...] = ("-m",)


@dataclass(frozen=True)
class Shell:
    """How this system's shell tools answer qmailhost's facts."""

    sha256: str  # reads stdin, prints the hex digest first
    stat: str  # prefix of a command printing "MODE USER GROUP" of the file appended to it
    password_field: str  # prints the password hash of user "$u"
    find_mtimes: str  # find(1) arguments printing each file's mtime (seconds since the epoch)
    gnu_find: bool = False  # find -printf and sha256sum over many files: a tree in two processes
    # What restore (qmailhost/recovery/) runs. The defaults are Debian's (GNU).
    # find(1) arguments printing each path found as "{tag}<TAB>path<NUL>".
    find_print: str = "-printf '{tag}\\t%p\\0'"
    # Reads a tar stream and adds its members under /, owners, modes and mtimes kept, never
    # overwriting a file that is there; tar_format: what Python's tarfile writes for it.
    tar_extract: str = "tar -C / --skip-old-files --same-owner -xpf -"
    tar_format: str = "pax"  # "pax" (POSIX.1-2001: exact mtimes, any name length) or "ustar"


DEBIAN_PASSWORD_APPLY = "chmod 600 {file} && chpasswd -e < {file}; status=$?; rm -f {file}; exit $status"


@dataclass(frozen=True)
class Platform:
    name: str
    release: str
    qmail_home: str
    prefix: str  # where qmailhost's own builds install
    service_dir: str  # what svscan scans (daemontools)
    supervise_dir: str  # where the service directories live (daemontools)
    log_dir: str
    tcprules_dir: str
    config_dir: str  # qmailhost's own config files (spamdyke, TLS)
    nologin: str
    # Backends, chosen once here; the registry finds the modules by these names.
    package_manager: str = "apt"  # "apt" | "pkgin"
    service_backend: str = "daemontools"  # "daemontools" | "rcd"
    qmail_bin: str = "/var/qmail/bin"  # qmail's programs (pkgsrc: under its prefix)
    root_group: str = "root"
    accounts: AccountTools = field(default_factory=lambda: DEBIAN_ACCOUNTS)
    shell: Shell = field(default_factory=lambda: DEBIAN_SHELL)
    password_scheme: str = "sha512_crypt"  # passlib handler name
    # Applies a "user:hash" file ({file}) to the password database, then removes it.
    password_apply: str = DEBIAN_PASSWORD_APPLY
    tcprules: str = "tcprules"
    tcprules_suffix: str = ".rules"  # NAME.rules beside NAME.cdb (qmail-run: NAME, NAME.cdb)
    conflicting_services: tuple[str, ...] = ()  # base-system MTAs to stop and disable
    # The interpreter qmailhost's host scripts run with (the DKIM signer and filters, the login
    # brake, the sender check), and its package. pkgsrc: its default Python
    # (lang/python/pyversion.mk: 313), lang/python313's bin/python3.13.
    python: str = "/usr/bin/python3"
    python_package: str = "python3"
    python_version: str = "3.13"  # its X.Y (which wheels the host's own Python runs: tasks/health.py)
    rcd_dir: str = "/etc/rc.d"
    rc_conf_d: str = "/etc/rc.conf.d"
    rcd_examples: str = "/usr/pkg/share/examples/rc.d"
    # One ManagedTree fact lists every path the components manage (their managed_roots), so
    # a converged run asks the host once, not once per file; elsewhere each file is asked alone.
    lists_managed_tree: bool = False

    @property
    def control_dir(self) -> str:
        return f"{self.qmail_home}/control"

    @property
    def tls_dir(self) -> str:
        return f"{self.config_dir}/tls"

    def tcprules_paths(self, name: str) -> tuple[str, str]:
        """(rules source, compiled cdb) of tcprules NAME."""
        return f"{self.tcprules_dir}/{name}{self.tcprules_suffix}", f"{self.tcprules_dir}/{name}.cdb"


DEBIAN_ACCOUNTS = AccountTools(system_user=("-r",), system_group=("-r",), own_group=("-U",), no_home=("-M",))
DEBIAN_SHELL = Shell(sha256="sha256sum", stat="stat -c '%a %U %G'",
                     password_field='getent shadow "$u" | cut -d: -f2', find_mtimes="-printf '%T@\\n'",
                     gnu_find=True)

def debian(release: str) -> Platform:
    return Platform(
        name="debian", release=release, qmail_home="/var/qmail", prefix="/usr/local",
        service_dir="/etc/service", supervise_dir="/var/qmail/supervise", log_dir="/var/log/qmail",
        tcprules_dir="/etc/tcp", config_dir="/etc/qmailhost",
        nologin="/usr/sbin/nologin", lists_managed_tree=True,
        python_version={"12": "3.11"}.get(release, "3.13"),
    )


# NetBSD: no -r (system accounts are a uid range in /etc/usermgmt.conf), useradd does not
# make a home unless told (-m), and "-g =uid" makes a group of the user's own name.
NETBSD_ACCOUNTS = AccountTools(system_user=(), system_group=(), own_group=("-g", "=uid"), no_home=())
# Restore on NetBSD uses base-system tools only (no GNU find or GNU tar): the stream is
# pax(1), NetBSD's POSIX archiver, in ustar format (what it writes by default; its manual
# lists no POSIX.1-2001 extended headers, so Python's tarfile writes ustar for it too):
# -r -k -pe extracts without overwriting (-k) and keeps owners, modes and mtimes (-pe).
# ustar holds whole-second mtimes and a path only as a 155-byte prefix and a 100-byte name
# split at a "/"; recovery refuses a longer one.
NETBSD_SHELL = Shell(sha256="openssl dgst -sha256 -r", stat="stat -f '%OMp%OLp %Su %Sg'",
                     password_field="awk -F: -v u=\"$u\" '$1 == u { print $2 }' /etc/master.passwd",
                     find_mtimes="-exec stat -f %m {} +",
                     find_print="-exec printf '{tag}\\t%s\\0' {{}} +",
                     tar_extract="cd / && pax -r -k -pe", tar_format="ustar")
# The password database is rewritten the way vipw(8) does it: /etc/ptmp (created
# exclusively: it is the lock), then pwd_mkdb installs it as /etc/master.passwd. The
# hash is read from the uploaded file by awk, never from a command line.
NETBSD_PASSWORD_APPLY = (
    "chmod 600 {file} && umask 077 && if (set -C && : > /etc/ptmp) 2>/dev/null; then "
    "awk -F: -v OFS=: 'NR == FNR {{ hash[$1] = $2; next }} $1 in hash {{ $2 = hash[$1] }} {{ print }}' "
    "{file} /etc/master.passwd > /etc/ptmp && pwd_mkdb -p /etc/ptmp || {{ rm -f /etc/ptmp; false; }}; "
    "else echo '/etc/ptmp exists: the password file is being edited' >&2; false; fi; "
    "status=$?; rm -f {file}; exit $status"
)

def netbsd(release: str) -> Platform:
    return Platform(
        name="netbsd", release=release, qmail_home="/var/qmail", prefix="/usr/pkg",
        service_dir="", supervise_dir="", log_dir="/var/log",
        tcprules_dir="/var/qmail/control/tcprules", config_dir="/usr/pkg/etc/qmailhost",
        nologin="/sbin/nologin", package_manager="pkgin", service_backend="rcd",
        qmail_bin="/usr/pkg/bin", root_group="wheel",
        accounts=NETBSD_ACCOUNTS, shell=NETBSD_SHELL,
        password_scheme="sha1_crypt", password_apply=NETBSD_PASSWORD_APPLY,
        tcprules="/usr/pkg/bin/tcprules", tcprules_suffix="",
        conflicting_services=("postfix",),
        python="/usr/pkg/bin/python3.13", python_package="python313",
    )


SUPPORTED = "Debian 12 or 13, NetBSD 9 or 10"


def by_name(name: str, release: str) -> Platform:
    """The Platform called NAME at RELEASE (what detect() chose, written down for the host's own runs)."""
    return {"debian": debian, "netbsd": netbsd}[name](release)
_DETECTED: dict[str, Platform] = {}


def detect() -> Platform:
    """The current host's Platform, from its facts (remembered for current())."""
    os_name = host.get_fact(Os)
    if os_name == "Linux":
        distro = host.get_fact(LinuxDistribution) or {}
        if distro.get("name") == "Debian" and str(distro.get("major")) in ("12", "13"):
            return _remember(debian(str(distro["major"])))
        raise PyinfraError(f"host {host.name}: {distro.get('name')} {distro.get('major')} is not supported; "
                           f"qmailhost runs on {SUPPORTED}")
    if os_name == "NetBSD":
        release = str(host.get_fact(OsVersion) or "")
        if release.split(".")[0] in ("9", "10"):
            return _remember(netbsd(release.split(".")[0]))
        raise PyinfraError(f"host {host.name}: NetBSD {release} is not supported; qmailhost runs on {SUPPORTED}")
    raise PyinfraError(f"host {host.name}: {os_name} is not supported; qmailhost runs on {SUPPORTED}")


def _remember(platform: Platform) -> Platform:
    _DETECTED[host.name] = platform
    return platform


def current() -> Platform | None:
    """The platform detect() chose for the current host (None before detect())."""
    return _DETECTED.get(host.name)


def shell() -> Shell:
    """The current host's shell dialect (Debian's until detect() says otherwise)."""
    platform = current()
    return platform.shell if platform else DEBIAN_SHELL


def root_group() -> str:
    platform = current()
    return platform.root_group if platform else "root"
