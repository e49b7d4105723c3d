"""pkgsrc on NetBSD: binary packages from pkgin, and builds from the pkgsrc tree with options.

Binary packages are installed with pkgin, only those `pkg_info -e` does not find,
with PKG_RCD_SCRIPTS=YES so their rc.d scripts are copied to /etc/rc.d. A package
that needs a build option pkgsrc does not build by default (mess822 with `sasl`:
ofmipd with SMTP AUTH; spamdyke with `tls`: STARTTLS on port 25) gets one managed line
in /etc/mk.conf (the rest of the file is the user's) and is built from /usr/pkgsrc,
`replace` when installed, `install` when not, then `clean`; only when the installed
package's recorded PKG_OPTIONS (`pkg_info -Q PKG_OPTIONS`) lack the option. A binary
package whose default options qmailhost relies on (qmail with `tls`: qmail-remote's
TLS) is only verified the same way: one built without them stops the run before it
changes anything, with one line naming the fix (qmailhost never rebuilds what pkgin
installed as the system's MTA). A built program that can say whether an option took
(spamdyke's version line: "+TLS") is asked too, since a recorded option is a request,
not a proof.
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import FactBase, operation
from pyinfra.api.exceptions import OperationError

PACKAGE_BACKEND = "pkgin"  # found by qmailhost/registry.py under this name

PKGIN = "/usr/pkg/bin/pkgin"
MK_CONF = "/etc/mk.conf"
PKGSRC = "/usr/pkgsrc"
MARK = "# managed by qmailhost"


class InstalledPackages(FactBase):
    """{"pkgin": bool, "installed": [names]}: which of NAMES pkg_info finds, and whether pkgin exists."""

    def command(self, names):
        quoted = " ".join(shlex.quote(n) for n in names)
        return (f"[ -x {PKGIN} ] && echo pkgin; "
                f"for p in {quoted}; do pkg_info -e \"$p\" >/dev/null 2>&1 && echo \"$p\"; done; true")

    @staticmethod
    def default():
        return {"pkgin": False, "installed": []}

    def process(self, output):
        return {"pkgin": "pkgin" in output, "installed": [line for line in output if line != "pkgin"]}


@operation()
def binary_packages(packages: list[str]):
    """PACKAGES are installed (pkgin, with their rc.d scripts in /etc/rc.d)."""
    state = host.get_fact(InstalledPackages, names=list(packages))
    missing = [p for p in packages if p not in state["installed"]]
    if not missing:
        host.noop(f"{', '.join(packages)} are installed")
        return
    if not state["pkgin"]:
        raise OperationError(f"{PKGIN} is missing: install pkgin first (sysinst, or pkg_add pkgin)")
    yield f"PKG_RCD_SCRIPTS=YES {PKGIN} -y install {' '.join(missing)}"


@operation()
def removed_packages(packages: list[str]):
    """PACKAGES are not installed (pkgin remove)."""
    state = host.get_fact(InstalledPackages, names=list(packages))
    present = [p for p in packages if p in state["installed"]]
    if not present:
        host.noop(f"{', '.join(packages)} are not installed")
        return
    yield f"{PKGIN} -y remove {' '.join(present)}"


class MkConfLines(FactBase):
    """The lines of /etc/mk.conf qmailhost manages (those ending with its mark)."""

    def command(self):
        return f"[ -f {MK_CONF} ] && grep -F '{MARK}' {MK_CONF}; true"

    @staticmethod
    def default():
        return []

    def process(self, output):
        return list(output)


def option_line(package: str, options: tuple[str, ...]) -> str:
    return f"PKG_OPTIONS.{package}+=\t{' '.join(options)}\t{MARK}"


@operation()
def mk_conf_options(package: str, options: list[str]):
    """/etc/mk.conf has one managed line PKG_OPTIONS.PACKAGE+= OPTIONS; other lines stay as they are."""
    line = option_line(package, tuple(options))
    managed = host.get_fact(MkConfLines)
    prefix = f"PKG_OPTIONS.{package}+="
    ours = [existing for existing in managed if existing.startswith(prefix)]
    if ours == [line]:
        host.noop(f"{MK_CONF} builds {package} with {' '.join(options)}")
        return
    if not ours:
        yield f"echo {shlex.quote(line)} >> {MK_CONF}"
        return
    pattern = shlex.quote(f"^PKG_OPTIONS\\.{package}+=.*{MARK}$")
    yield (f"{{ grep -v {pattern} {MK_CONF}; echo {shlex.quote(line)}; }} > {MK_CONF}.qmailhost-new "
           f"&& mv -f {MK_CONF}.qmailhost-new {MK_CONF}")


class PackageOptions(FactBase):
    """{"installed": bool, "options": [..], "pkgsrc": bool}: PACKAGE's build options, and
    whether its pkgsrc directory PKGPATH is there to build from."""

    def command(self, package, pkgpath):
        quoted = shlex.quote(package)
        return (f"[ -f {PKGSRC}/{pkgpath}/Makefile ] && echo pkgsrc; "
                f"pkg_info -e {quoted} >/dev/null 2>&1 && echo installed "
                f"&& echo \"options $(pkg_info -Q PKG_OPTIONS {quoted})\"; true")

    @staticmethod
    def default():
        return {"installed": False, "options": [], "pkgsrc": False}

    def process(self, output):
        options = next((line.split()[1:] for line in output if line.startswith("options")), [])
        return {"installed": "installed" in output, "options": options, "pkgsrc": "pkgsrc" in output}


@operation()
def built_with_options(pkgpath: str, package: str, options: list[str]):
    """PACKAGE is installed and was built with OPTIONS; otherwise build it from PKGPATH."""
    current = host.get_fact(PackageOptions, package=package, pkgpath=pkgpath)
    if current["installed"] and all(o in current["options"] for o in options):
        host.noop(f"{package} is installed with {' '.join(options)}")
        return
    if not current["pkgsrc"]:
        raise OperationError(f"{PKGSRC}/{pkgpath} is missing: check out pkgsrc into {PKGSRC} to build {package}")
    target = "replace" if current["installed"] else "install"
    directory = f"{PKGSRC}/{pkgpath}"
    yield f"make -C {directory} {target} && make -C {directory} clean"


def _has_options_command(package: str, options: list[str], refusal: str) -> str:
    """Checks, when it runs, that PACKAGE's recorded PKG_OPTIONS hold OPTIONS (else REFUSAL, one line)."""
    return (f"o=\" $(pkg_info -Q PKG_OPTIONS {shlex.quote(package)} 2>/dev/null) \"; "
            f"for w in {' '.join(shlex.quote(o) for o in options)}; do case \"$o\" in *\" $w \"*) ;; "
            f"*) echo {shlex.quote(refusal)} >&2; exit 1 ;; esac; done")


def default_options_refusal(pkgpath: str, package: str, options: list[str]) -> str:
    """The one line a run stops with when binary PACKAGE lacks OPTIONS (pkgsrc's defaults)."""
    wanted = " ".join(options)
    return (f"{package} is installed without the pkgsrc option {wanted} (a pkgsrc default): rebuild it with it "
            f"(add PKG_OPTIONS.{package}+={wanted} to {MK_CONF}, then make -C {PKGSRC}/{pkgpath} replace clean) "
            f"or reinstall the binary package from pkgin")


@operation()
def has_default_options(pkgpath: str, package: str, options: list[str]):
    """PACKAGE (a binary package: pkgsrc builds it with OPTIONS by default) was built with
    OPTIONS; a package without them stops the run (never rebuilt here). Not installed yet
    (the base packages bring it in this run): checked when the run reaches this."""
    current = host.get_fact(PackageOptions, package=package, pkgpath=pkgpath)
    refusal = default_options_refusal(pkgpath, package, options)
    if current["installed"]:
        if any(o not in current["options"] for o in options):
            raise OperationError(refusal)
        host.noop(f"{package} is installed with {' '.join(options)}")
        return
    yield _has_options_command(package, options, refusal)


class ProgramReport(FactBase):
    """The first line COMMAND prints (None: PACKAGE is not installed)."""

    def command(self, package, report):
        return f"pkg_info -e {shlex.quote(package)} >/dev/null 2>&1 && echo \"report $({report})\"; true"

    @staticmethod
    def default():
        return None

    def process(self, output):
        return next((line[len("report "):] for line in output if line.startswith("report ")), None)


@operation()
def reports(package: str, report: str, marker: str, meaning: str, pkgpath: str | None = None,
            options: tuple[str, ...] = ()):
    """Installed PACKAGE's REPORT (a command printing one line) holds MARKER; a program whose
    line lacks it stops the run (MEANING: what that means). Not installed yet, or not yet
    built with OPTIONS (from PKGPATH, earlier in this run): checked when the run reaches this,
    after that build."""
    line = host.get_fact(ProgramReport, package=package, report=report)
    if pkgpath and line is not None:
        built = host.get_fact(PackageOptions, package=package, pkgpath=pkgpath)
        if any(o not in built["options"] for o in options):
            line = None  # this run rebuilds it first: what the old build says does not count
    refusal = f"{meaning}: `{report}` says {line!r}, without {marker!r}"
    if line is not None:
        if marker not in line:
            raise OperationError(refusal)
        host.noop(f"{package} says {marker}")
        return
    runtime = f"{meaning}: `{report}` does not say {marker!r}"
    yield (f"case \"$({report})\" in *{shlex.quote(marker)}*) ;; "
           f"*) echo {shlex.quote(runtime)} >&2; exit 1 ;; esac")


def install(platform, needs) -> None:
    """The binary packages the components need and the default options they rely on, then
    their pkgsrc builds, then what the built programs say of themselves (NEEDS: component.Needs)."""
    binary_packages(name="Install the base packages", packages=list(needs.packages))
    for pkgpath, package, options in needs.pkgsrc_default_options:
        has_default_options(name=f"Check that {package} has its default option(s) {' '.join(options)}",
                            pkgpath=pkgpath, package=package, options=list(options))
    for pkgpath, package, options in needs.pkgsrc_builds:
        mk_conf_options(name=f"Build {package} with {' '.join(options)} (/etc/mk.conf)",
                        package=package, options=list(options))
        built_with_options(name=f"Build and install {package} from pkgsrc", pkgpath=pkgpath,
                           package=package, options=list(options))
    builds = {package: (pkgpath, options) for pkgpath, package, options in needs.pkgsrc_builds}
    for package, report, marker, meaning in needs.pkgsrc_proofs:
        pkgpath, options = builds.get(package, (None, ()))
        reports(name=f"Check that {package} says {marker}", package=package, report=report, marker=marker,
                meaning=meaning, pkgpath=pkgpath, options=tuple(options))
