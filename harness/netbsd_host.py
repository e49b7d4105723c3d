"""A model of a NetBSD 10 host with pkgsrc, for whole-deploy command plans.

It answers qmailhost's facts from its state, and ``apply(plan)`` changes that state
the way each planned command would on the real host (every command qmailhost plans
for NetBSD is understood here; an unknown one fails the test). So a test can plan a
bare host, apply the plan, and check that the converged host plans nothing, or
switch modes and see exactly what a switch runs.

For backup.py and restore.py, ``remote()`` stands in for recovery's Remote (the ssh
side): it answers the recovery scripts from the model's state (homes, hashes, the files
under the backed-up paths, as NetBSD's find, stat -f, awk and openssl print them), writes
the ustar stream ``pax -w`` would, and applies the one ``pax -r -k -pe`` reads.

Under ``tls: acme``, pkgsrc's certbot (``certbot certonly``) issues the lineage from a model
CA (real certificates, so openssl reads them) and runs the deploy hook qmailhost wrote, line
by line, in certbot's environment: the pair installed, then (unless QMAILHOST_INSTALL_ONLY is
set, as the deploy sets it for certonly and for its own run of the hook) each reader's reload
or restart and stamp, commands the model must know. Root's crontab is NetBSD's, edited as
pyinfra 3's server.crontab does (crontab -l into a temporary file, echo or sed -i.SUFFIX,
crontab FILE; a cron_name is a "# pyinfra-name=NAME" comment line above its entry);
``issue()`` stands for a renewal by cron, ``run_hook()`` for the hook certbot renew runs.

DKIM (tasks/dkim.py): pkgsrc's dkimpy (mail/py-dkim as py313-dkim) installs its key maker unsuffixed,
/usr/pkg/bin/dknewkey (PLIST bin/dknewkey, PYTHON_SELF_CONFLICT=yes); run in a key directory,
``dknewkey [--ktype ed25519] NAME`` writes NAME.key and NAME.dns there (base openssl for RSA,
PyNaCl for ed25519). The model makes a new key pair each time and the dkim_keys probe reads
them back from the files (so keys a restore put back are seen too); the addresses probe reads
NetBSD's ``ifconfig -a`` (``interfaces``), as the probe's awk does.

Spam (tasks/spam.py): pkgsrc's mail/rspamd and databases/redis, binary packages named rspamd
and redis, each installing its rc.d script (RCD_SCRIPTS rspamd, redis; rspamd's has a reload
command) and its user (PKG_USERS rspamd:rspamd, redis:redis). The controller's password is made
on the host by one command (a random password file, and the include with its hash from
rspamadm's Lua), which the model follows with a password of its own, never shown; ``rspamadm
configtest`` passes unless ``rspamd_config_ok`` says otherwise (the run stops there).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import io
import json
import re
import secrets
import shlex
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

from harness.plan_harness import DEFAULT, plan_deploy

PACKAGE_RC_SCRIPTS = {"qmail-run": ("qmailsend", "qmailsmtpd", "qmailofmipd", "qmailpop3d", "qmailqread"),
                      "stunnel": ("stunnel",), "tmda": ("tofmipd",), "unbound": ("unbound",),
                      "dovecot": ("dovecot",),  # mail/dovecot2: RCD_SCRIPTS=dovecot (files/dovecot.sh)
                      "rspamd": ("rspamd",), "redis": ("redis",)}  # mail/rspamd, databases/redis: RCD_SCRIPTS
# The users (each in its own group) a package's PKG_USERS creates when it is installed.
PACKAGE_USERS = {"dovecot": ("dovecot", "dovenull"),  # mail/dovecot2: dovecot:dovecot dovenull:dovenull
                 "rspamd": ("rspamd",), "redis": ("redis",)}  # RSPAMD_USER, REDIS_USER (and their groups)
# The rc.d scripts with a reload command (extra_commands="reload"): the others say "unknown command".
RC_RELOADS = {"qmailsend", "dovecot", "rspamd"}  # mail/rspamd's files/rspamd.sh: extra_commands="reload"
DOVECOT = "/usr/pkg/sbin/dovecot"
# The options pkgin's binary packages were built with: pkgsrc's PKG_SUGGESTED_OPTIONS
# (mail/qmail/options.mk: tls among them; mail/spamdyke and mail/mess822 suggest none).
BINARY_OPTIONS = {"qmail": ["eai", "syncdir", "tls", "qmail-customerror", "qmail-srs"]}
STAMPS = "/var/lib/qmailhost/stamps"
RESTORE_HASHES = "/root/.qmailhost-chpasswd-restore"
QUEUE = "/var/qmail/queue"
MTIME_NS = 1_700_000_000_123_456_789  # the mtime of what the model made without saying when
# certbot from pkgsrc (security/py-certbot, a binary package from pkgin): the package's name is
# PYPKGPREFIX-certbot for pkgsrc's default Python (lang/python/pyversion.mk: 313), and it
# installs its program as bin/certbot-PYVERSSUFFIX (PLIST; bin/certbot is only the
# pkg_alternatives wrapper, made when pkg_alternatives is installed). Its paths are
# substituted to PKG_SYSCONFDIR/letsencrypt and VARBASE/letsencrypt (Makefile's SUBST).
CERTBOT_PACKAGE = "py313-certbot"
CERTBOT = "/usr/pkg/bin/certbot-3.13"
LETSENCRYPT = {"config": "/usr/pkg/etc/letsencrypt", "work": "/var/letsencrypt", "logs": "/var/letsencrypt/log"}
LINEAGE = "qmailhost"  # the lineage's name (--cert-name)
ACME_DIR = "/usr/pkg/etc/qmailhost/acme"  # qmailhost's hook and renewal script
INSTALL_ONLY = "QMAILHOST_INSTALL_ONLY"  # set in the hook's environment: it installs the pair, nothing more
TLS_DIR = "/usr/pkg/etc/qmailhost/tls"
# What tasks/health.py installs from pkgsrc: apprise, and the compiled packages qmailhost's own
# code imports for the host's scheduled runs (qmailhost/runtime.py), in the order it asks.
HEALTH_PACKAGES = ("py313-apprise", "py313-gevent", "py313-paramiko", "py313-pydantic", "py313-jinja2", "py313-click",
                   "py313-dateutil", "py313-distro", "py313-packaging", "py313-typing-extensions")

# tasks/health.py's lines in root's crontab, as pyinfra's server.crontab appends them (after
# the backup's and the ACME renewal's: the components' order).
HEALTH_CRON = ("", "# pyinfra-name=qmailhost scheduled health",
               "*/5 * * * * /usr/pkg/etc/qmailhost/health/run --if-due >/dev/null 2>&1")

# root's crontab as NetBSD installs it (src/etc/crontab as /var/cron/tabs/root)
ROOT_CRONTAB = [
    "SHELL=/bin/sh",
    "PATH=/bin:/sbin:/usr/bin:/usr/sbin",
    "HOME=/var/log",
    "#",
    "#minute\thour\tmday\tmonth\twday\tcommand",
    "#",
    "*/10\t*\t*\t*\t*\t/usr/libexec/atrun",
    "#",
    "0\t*\t*\t*\t*\t/usr/bin/newsyslog",
    "#",
    "15\t3\t*\t*\t*\t/bin/sh /etc/daily 2>&1 | tee /var/log/daily.out | sendmail -t",
    "30\t4\t*\t*\t6\t/bin/sh /etc/weekly 2>&1 | tee /var/log/weekly.out | sendmail -t",
    "#30\t1\t1\t*\t*\t/bin/sh /etc/monthly 2>&1 | tee /var/log/monthly.out | sendmail -t",
]


# tasks/spam.py from pkgsrc: mail/rspamd (PKG_SYSCONFDIR etc/rspamd; rspamadm beside rspamd) and
# databases/redis (its rc.d script runs redis-server with PKG_SYSCONFDIR/redis.conf).
SPAM_PACKAGES = ("rspamd", "redis")
RSPAMADM = "/usr/pkg/bin/rspamadm"
RSPAMD_CONF = "/usr/pkg/etc/rspamd/rspamd.conf"
RSPAMD_LOCAL = "/usr/pkg/etc/rspamd/local.d"
REDIS_CONF = "/usr/pkg/etc/redis.conf"
SPAM_DIR = "/usr/pkg/etc/qmailhost/spam"  # the controller's password and the include with its hash

# tasks/dkim.py from pkgsrc for its default Python (lang/python/pyversion.mk: 313): mail/py-dkim (dkimpy,
# PKGNAME ${PYPKGPREFIX}-dkim) and mail/py-spf (pyspf); dknewkey is bin/dknewkey (not suffixed).
DKIM_PACKAGES = ("py313-dkim", "py313-spf")
DKNEWKEY = "/usr/pkg/bin/dknewkey"
PYTHON = "/usr/pkg/bin/python3.13"  # lang/python313, which py313-dkim depends on
DKIM_DIR = "/usr/pkg/etc/qmailhost/dkim"
DKIM_KEYS = f"{DKIM_DIR}/keys"
SIGNER_USER = "qmailr"
# What NetBSD 10's `ifconfig -a` prints (CIDR addresses; a link-local one scoped with %IF).
IFCONFIG = """\
wm0: flags=0x8843<UP,BROADCAST,RUNNING,SIMPLEX,MULTICAST> mtu 1500
\tec_capabilities=0x7<VLAN_MTU,VLAN_HWTAGGING,JUMBO_MTU>
\tec_enabled=0x2<VLAN_HWTAGGING>
\taddress: 52:54:00:12:34:56
\tmedia: Ethernet autoselect (1000baseT full-duplex)
\tstatus: active
\tinet6 fe80::5054:ff:fe12:3456%wm0/64 flags 0 scopeid 0x1
\tinet 192.0.2.25/24 broadcast 192.0.2.255 flags 0
\tinet6 2001:db8::25/64 flags 0
lo0: flags=0x8049<UP,LOOPBACK,RUNNING,MULTICAST> mtu 33624
\tstatus: active
\tinet6 ::1/128 flags 0x20<NODAD>
\tinet6 fe80::1%lo0/64 flags 0 scopeid 0x2
\tinet 127.0.0.1/8 flags 0
"""


PASSWORD_ENV = "QMAILHOST_TEST_PASSWORD"  # the test account's password source (a test sets it)


def deploy_data(**settings) -> dict:
    """Host data for a whole-deploy plan: mail.example.org, account alice, and SETTINGS."""
    return {"hostname": "mail.example.org", "accounts": [{"name": "alice", "password_env": PASSWORD_ENV}], **settings}


def bare_plan(**settings) -> tuple[NetBSDHost, list]:
    """A bare model host and the whole deploy's plan for it with SETTINGS (the test password set)."""
    host = NetBSDHost()
    with mock.patch.dict("os.environ", {PASSWORD_ENV: "correct horse"}):
        return host, plan_deploy(deploy_data(**settings), host.answer)


def converged_host(**settings) -> NetBSDHost:
    """A model host a bare plan with SETTINGS was applied to; it plans nothing more."""
    host = NetBSDHost()
    host.apply(plan_deploy(deploy_data(**settings), host.answer))
    assert plan_deploy(deploy_data(**settings), host.answer) == []
    return host


def sha256(text: str | bytes) -> str:
    return hashlib.sha256(text if isinstance(text, bytes) else text.encode()).hexdigest()


@dataclass
class NetBSDHost:
    release: str = "10.0"
    packages: dict[str, list[str]] = field(default_factory=dict)  # name -> build options
    mk_conf: list[str] = field(default_factory=lambda: ["# the user's own settings", "ACCEPTABLE_LICENSES+= x"])
    files: dict[str, dict] = field(default_factory=dict)  # ManagedFile facts
    contents: dict[str, str] = field(default_factory=dict)
    dirs: dict[str, dict] = field(default_factory=dict)
    groups: set[str] = field(default_factory=lambda: {"wheel", "nogroup"})
    users: dict[str, dict] = field(default_factory=dict)
    accounts: dict[str, dict] = field(default_factory=dict)
    stamps: dict[str, str] = field(default_factory=dict)
    rc_scripts: set[str] = field(default_factory=lambda: {"postfix"})
    running: set[str] = field(default_factory=lambda: {"postfix"})
    cert: dict | None = None  # the pair's certificate (the tls probe): {"cn", "sha256", "renew", "self"}
    acme: dict | None = None  # certbot's lineage: {"cn", "sha256"} (the acme probe); see issue()
    crontab: list[str] = field(default_factory=lambda: list(ROOT_CRONTAB))  # root's, as `crontab -l` prints it
    runtime_unpacked: str | None = None  # the sha256 of tasks/health.py's runtime tar, once unpacked
    orders: list[dict] = field(default_factory=list)  # what certbot certonly asked the CA, in order
    # each run of the deploy hook: {"lineage": what it installed, "install_only": whether INSTALL_ONLY was set}
    hook_runs: list[dict] = field(default_factory=list)
    # Whether a spamdyke built with the tls option has TLS compiled in (its version line says
    # "+TLS"): False is a build whose configure left HAVE_LIBSSL undefined.
    spamdyke_tls_compiled: bool = True
    # What `dovecot --version` prints first (pkgsrc's mail/dovecot2 was 2.3.x): a test may make it a 2.4.
    dovecot_version: str = "2.3.21.1"
    # Whether `rspamadm configtest` passes (a test may make the config one rspamd refuses).
    rspamd_config_ok: bool = True
    # What `ifconfig -a` prints (the addresses probe); a test may give the host other addresses.
    interfaces: str = IFCONFIG
    keys_made: list[tuple[str, str, str]] = field(default_factory=list)  # (domain, selector, ktype) by dknewkey
    tmda_pieces: list[tuple[str, str]] = field(default_factory=list)
    tmda_archive: dict | None = None
    executed: list[str] = field(default_factory=list)
    reloaded: list[str] = field(default_factory=list)  # rc.d services reloaded while running, in order
    restarted: list[str] = field(default_factory=list)  # rc.d services restarted while running, in order
    _uploads: dict[str, str] = field(default_factory=dict)
    _temp: dict[str, list[str]] = field(default_factory=dict)  # pyinfra's temporary files (crontab edits)
    # Recovery (backup.py, restore.py): what the recovery scripts and streams see.
    hashes: dict[str, str] = field(default_factory=dict)  # user -> its whole hash in /etc/master.passwd
    tree: dict[str, dict] = field(default_factory=dict)  # path -> {type, data, mode, user, group, mtime_ns}
    queue: dict[str, bytes] = field(default_factory=dict)  # "mess/0/123" ... under /var/qmail/queue
    sent: list[tuple[str, str, bytes]] = field(default_factory=list)  # (what, script, stdin) through remote()
    # tasks/updates.py (its section below): /etc/daily.conf and /etc/security.conf as lines, and
    # pkgsrc's vulnerability list (None: never fetched; else its age in days and what audit finds).
    periodic_conf: dict[str, list[str]] = field(default_factory=lambda: copy.deepcopy(PERIODIC_CONF))
    vulnerabilities: dict | None = None  # {"age_days": int, "findings": ["Package x has a y vulnerability, see z"]}

    def copy(self) -> NetBSDHost:
        return copy.deepcopy(self)

    # --- facts
    def answer(self, name: str, kwargs: dict):
        handler = getattr(self, f"_fact_{name}", None)
        if handler is None:
            raise AssertionError(f"the NetBSD model does not know fact {name}({kwargs})")
        return handler(**kwargs)

    def _fact_Os(self):
        return "NetBSD"

    def _fact_OsVersion(self):
        return self.release

    def _fact_InstalledPackages(self, names):
        return {"pkgin": True, "installed": [n for n in names if n in self.packages]}

    def _fact_MkConfLines(self):
        return [line for line in self.mk_conf if line.endswith("# managed by qmailhost")]

    def _fact_PackageOptions(self, package, pkgpath):
        assert pkgpath == f"mail/{package}", (package, pkgpath)
        if package not in self.packages:
            return {"installed": False, "options": [], "pkgsrc": True}
        return {"installed": True, "options": list(self.packages[package]), "pkgsrc": True}

    def _fact_ProgramReport(self, package, report):
        assert (package, report) == ("spamdyke", "/usr/pkg/bin/spamdyke -v 2>&1 </dev/null | head -1"), report
        return self.spamdyke_version() if package in self.packages else None

    def spamdyke_version(self) -> str:
        """The first line `spamdyke -v` prints (spamdyke.h's VERSION_STRING)."""
        tls = "+TLS" if "tls" in self.packages.get("spamdyke", []) and self.spamdyke_tls_compiled else ""
        return f"spamdyke 5.0.1{tls}+CONFIGTEST+DEBUG (C)2015 Sam Clippinger, samc (at) silence (dot) org"

    def dovecot_report(self) -> str:
        """What `dovecot --version` prints (the version, then the build's commit)."""
        return f"{self.dovecot_version} (0a1b2c3d4e)"

    def _fact_FindFiles(self, path, maxdepth):
        assert maxdepth == 1, maxdepth
        return sorted(f for f in self.files if f.rsplit("/", 1)[0] == path)

    def _fact_TmdaPieces(self, script):
        assert script == "tmda/netbsd-pieces.sh", script
        return list(self.tmda_pieces)

    def _fact_TmdaArchive(self):
        return copy.deepcopy(self.tmda_archive)

    def _fact_HostState(self, script):
        assert "openssl dgst -sha256 -r" in script and "/etc/master.passwd" in script, script
        assert "sha256sum" not in script and "getent shadow" not in script, script
        # tasks/acme.py's probes, read where pkgsrc's certbot keeps its lineage and where cron reads root's crontab
        live = f"{LETSENCRYPT['config']}/live/{LINEAGE}"
        assert f"[ -f {LETSENCRYPT['config']}/renewal/{LINEAGE}.conf ] && [ -f {live}/fullchain.pem ]" in script, \
            script
        assert f"openssl dgst -sha256 -r < {live}/fullchain.pem" in script, script
        assert f"crontab -l 2>/dev/null | grep -qF {ACME_DIR}/renew && echo acme_cron" in script, script
        users = re.search(r"for u in (.*); do", script)[1].split()
        return {"systemd": False, "stamps": dict(self.stamps),
                "accounts": {u: self.accounts[u] for u in users if u in self.accounts},
                "cert": copy.deepcopy(self.cert),
                "acme": copy.deepcopy(self.acme), "acme_cron": self.acme_cron,
                "dovecot": self.dovecot_version.split()[0] if "dovecot" in self.packages else None,
                **self._probed(script)}

    def _probed(self, script: str) -> dict:
        """tasks/dkim.py's and tasks/dns.py's probes: the lines NetBSD's sh prints for them, parsed as HostState does."""
        from qmailhost.facts import HostState

        # dkim_keys: each key directory's NAME.dns with its NAME.key beside it, newlines removed
        keys = (f"for f in {DKIM_KEYS}/*/*.dns; do [ -f \"$f\" ] && [ -f \"${{f%.dns}}.key\" ] && d=${{f%/*}} && "
                "s=${f##*/} && printf 'dkim_keys\\t%s\\t%s\\t%s\\n' \"${d##*/}\" \"${s%.dns}\" "
                "\"$(tr -d '\\n' < \"$f\")\"; done")
        assert keys in script, script
        # addresses: NetBSD's ifconfig (no hostname -I, no ip(8)), each inet/inet6 word's successor
        awk = ('{ for (i = 1; i < NF; i++) if ($i == "inet" || $i == "inet6") { a = $(i + 1); '
               'sub("/.*", "", a); sub("%.*", "", a); print "addresses\\t" a } }')
        assert f"{{ ifconfig -a; }} 2>/dev/null | awk '{awk}'" in script, script
        assert "hostname -I" not in script and "ip -o" not in script and "ip addr" not in script, script
        lines = [f"dkim_keys\t{domain}\t{selector}\t{value.replace(chr(10), '')}"
                 for (domain, selector), value in sorted(self.key_files().items())]
        for line in self.interfaces.splitlines():  # the awk program, word by word
            words = line.split()
            for i, word in enumerate(words[:-1]):
                if word in ("inet", "inet6"):
                    lines.append("addresses\t" + words[i + 1].split("/")[0].split("%")[0])
        parsed = HostState().process(lines)
        return {"dkim_keys": parsed["dkim_keys"], "addresses": parsed["addresses"]}

    def key_files(self) -> dict[tuple[str, str], str]:
        """(domain, selector) -> the .dns file's text, for each key pair in the key directory."""
        entries, found = self.entries(), {}
        for path, entry in entries.items():
            m = re.fullmatch(rf"{re.escape(DKIM_KEYS)}/([^/]+)/([^/]+)\.dns", path)
            if m and entry["type"] == "file" and entries.get(f"{path[:-4]}.key", {}).get("type") == "file":
                found[(m[1], m[2])] = entry["data"].decode()
        return found

    @property
    def acme_cron(self) -> bool:
        """Does root's crontab name the ACME renewal script (what the acme_cron probe greps)?"""
        return any(f"{ACME_DIR}/renew" in line for line in self.crontab)

    def _fact_Crontab(self, user):
        """root's crontab as pyinfra's Crontab fact parses `crontab -l -u root || true`."""
        from pyinfra.facts.crontab import Crontab

        assert user == "root", user
        return Crontab().process(list(self.crontab))

    def _fact_TmpDir(self):
        return ""  # ssh sessions on NetBSD have no TMPDIR: pyinfra's default, /tmp

    def _fact_Accounts(self):
        return {"users": copy.deepcopy(self.users), "groups": {g: str(100 + i) for i, g in enumerate(sorted(self.groups))}}

    def _fact_ManagedFile(self, path, sha256, stat):
        assert sha256 == "openssl dgst -sha256 -r" and stat.startswith("stat -f"), (sha256, stat)
        return copy.deepcopy(self.files.get(path))

    def _fact_Directory(self, path):
        return copy.deepcopy(self.dirs.get(path)) if path in self.dirs else DEFAULT

    def _fact_RcdService(self, service, rcd_dir):
        assert rcd_dir == "/etc/rc.d"
        return {"script": service in self.rc_scripts, "running": service in self.running}

    # --- commands
    def apply(self, plan: list[tuple[str, list]]) -> None:
        for _name, commands in plan:
            for command in commands:
                if isinstance(command, list) and command[0] == "call":
                    self.executed.append(f"call {command[1]}")  # runs on the laptop, reading the host
                elif isinstance(command, list):
                    kind, data, dest = command
                    assert kind == "upload"
                    self._uploads[dest] = data
                    self.executed.append(f"upload {dest}")
                else:
                    self.executed.append(command)
                    self._run(command)

    def _write(self, path: str, data: str, mode: str, user: str, group: str) -> None:
        self.contents[path] = data
        self.files[path] = {"sha256": sha256(data), "mode": mode.lstrip("0"), "user": user, "group": group}
        if path == f"{TLS_DIR}/cert.pem":  # what the tls probe reads
            if subject := _subject_and_issuer(data.encode()):  # a real certificate (a restored ACME one)
                self.cert = {"cn": subject[0], "sha256": sha256(data), "renew": False, "self": subject[0] == subject[1]}
            elif self.cert:
                self.cert = {**self.cert, "sha256": sha256(data)}

    def _run(self, command: str) -> None:  # noqa: C901 (one branch per command qmailhost plans)
        if m := re.fullmatch(r"chown (\S+):(\S+) (\S+)\.qmailhost-new && chmod (\d+) \3\.qmailhost-new "
                             r"&& mv -f \3\.qmailhost-new \3", command):
            user, group, path, mode = m.groups()
            self._write(path, self._uploads.pop(f"{path}.qmailhost-new"), mode, user, group)
        elif (m := re.fullmatch(r"chown (\S+):(\S+) (\S+) && chmod (\d+) \3", command)) and m[3] in self.dirs:
            user, group, path, mode = m.groups()
            self.dirs[path].update(mode=int(mode), user=user, group=group)
        elif m := re.fullmatch(r"chown (\S+):(\S+) (\S+) && chmod (\d+) \3", command):
            user, group, path, mode = m.groups()
            entry = self.files.setdefault(path, {"sha256": "package"})
            entry.update(mode=mode.lstrip("0"), user=user, group=group)
        elif m := re.fullmatch(r"/usr/pkg/bin/tcprules (\S+) \1\.tmp < (\S+)", command):
            cdb, rules = m.groups()  # the model's cdb: the digest of the rules it was compiled from
            self.files[cdb] = {"sha256": sha256(self.contents[rules]), "mode": "644", "user": "root", "group": "wheel"}
        elif m := re.fullmatch(rf'(?:mkdir -p {STAMPS} && )?echo "(\w+) \$\(openssl dgst -sha256 -r < (\S+) '
                               rf'\| cut -c1-64\)" > {STAMPS}/(\S+)\.new && mv -f {STAMPS}/\3\.new {STAMPS}/\3', command):
            digest, cdb, stamp = m.groups()
            self.stamps[stamp] = f"{digest} {self.files[cdb]['sha256']}"
        elif re.fullmatch(r"\(umask 077 && rm -f (\S+) && : > \1\)", command):
            pass  # an empty private file, filled by the upload that follows
        elif command == _LINEAGE_LINKS:  # restore.py: live/ linked to the newest archive files again
            live = f"{LETSENCRYPT['config']}/live/{LINEAGE}"
            assert f"{LETSENCRYPT['config']}/renewal/{LINEAGE}.conf" in self.entries(), "no renewal config restored"
            cert, fullchain = (self.lineage_file(live, name) for name in ("cert", "fullchain"))
            self.acme = {"cn": _common_name(cert), "sha256": hashlib.sha256(fullchain).hexdigest()}
        elif command.startswith("mkdir -p "):
            path = command.split()[2]
            if command == f"mkdir -p {path}":  # (a directory of its own: ops.directory sets its owner next)
                self.dirs.setdefault(path, {"mode": 755, "user": "root", "group": "wheel"})
        elif m := re.fullmatch(r"chmod (\d+) (/home/\S+)", command):
            self.dirs[m[2]]["mode"] = int(m[1])
        elif m := re.fullmatch(r"chown (\w+):(\w+) (/home/\S+)", command):
            self.dirs[m[3]].update(user=m[1], group=m[2])
        elif m := re.fullmatch(r"PKG_RCD_SCRIPTS=YES /usr/pkg/bin/pkgin -y install (.+)", command):
            for package in m[1].split():
                self.packages[package] = list(BINARY_OPTIONS.get(package, []))
                self.rc_scripts.update(PACKAGE_RC_SCRIPTS.get(package, ()))
                for user in PACKAGE_USERS.get(package, ()):
                    self.groups.add(user)
                    self.users.setdefault(user, {"uid": str(300 + len(self.users)), "home": "/nonexistent",
                                                 "shell": "/sbin/nologin", "group": user})
                if package == "qmail-run":  # pulls qmail (its default options) and the binary mess822 (none)
                    self.packages.setdefault("qmail", list(BINARY_OPTIONS["qmail"]))
                    self.packages.setdefault("mess822", [])
                if package == "checkpassword":
                    self.files["/usr/pkg/bin/checkpassword"] = {"sha256": "package", "mode": "755",
                                                                "user": "root", "group": "wheel"}
        elif m := re.fullmatch(r"/usr/pkg/bin/pkgin -y remove (.+)", command):
            for package in m[1].split():
                self.packages.pop(package)
        elif m := re.fullmatch(r"echo (.+) >> /etc/mk.conf", command):
            self.mk_conf.append(shlex.split(m[1])[0])
        elif m := re.fullmatch(r"make -C /usr/pkgsrc/mail/(\w+) (install|replace) "
                               r"&& make -C /usr/pkgsrc/mail/\1 clean", command):
            # (pyinfra plans "install" on a bare host; when the command runs, the operation is
            # evaluated again and says "replace" if qmail-run pulled a binary mess822 in first)
            package = m[1]
            options = [line for line in self.mk_conf if line.startswith(f"PKG_OPTIONS.{package}+=")]
            self.packages[package] = [w for line in options for w in line.split("#")[0].split()[1:]]
        elif m := re.fullmatch(r'o=" \$\(pkg_info -Q PKG_OPTIONS (\w+) 2>/dev/null\) "; for w in ([\w -]+); '
                               r'do case "\$o" in \*" \$w "\*\) ;; \*\) echo (.+) >&2; exit 1 ;; esac; done', command):
            # a binary package's default options, checked when the run gets there
            missing = [o for o in m[2].split() if o not in self.packages.get(m[1], [])]
            assert not missing, f"the run stops: {shlex.split(m[3])[0]}"
        elif m := re.fullmatch(r'case "\$\((/usr/pkg/bin/spamdyke -v 2>&1 </dev/null \| head -1)\)" in \*(\S+)\*\) ;; '
                               r'\*\) echo (.+) >&2; exit 1 ;; esac', command):
            # what the built program says of itself, checked when the run gets there
            assert m[2] in self.spamdyke_version(), f"the run stops: {shlex.split(m[3])[0]}"
        elif m := re.fullmatch(rf"v=\$\(({DOVECOT}) --version \| cut -d' ' -f1\); case \"\$v\" in "
                               r"([\d.]+)\|\2\.\*\) ;; \*\) echo \"(.+)\" >&2; exit 1 ;; esac", command):
            # the language the installed Dovecot speaks, checked when the run gets there (after the install)
            spoken = self.dovecot_report().split(" ")[0] if "dovecot" in self.packages else ""
            assert spoken == m[2] or spoken.startswith(f"{m[2]}."), f"the run stops: {m[3].replace('$v', spoken)}"
        elif m := re.fullmatch(r"groupadd (\w+)", command):
            self.groups.add(m[1])
        elif command.startswith("useradd "):
            words = shlex.split(command)
            name, flags = words[-1], dict(zip(words[1:-1:2], words[2:-1:2], strict=False))
            group = name if flags.get("-g") == "=uid" else flags["-g"]
            self.groups.add(group)
            self.users[name] = {"uid": str(1000 + len(self.users)), "home": flags["-d"], "shell": flags["-s"],
                                "group": group}
        elif m := re.fullmatch(r"install -o root -g wheel -m 555 /usr/pkg/share/examples/rc.d/(\w+) /etc/rc.d/\1",
                               command):
            self.rc_scripts.add(m[1])
        elif m := re.fullmatch(r"/etc/rc.d/(\w+) (start|restart)", command):
            assert m[1] in self.rc_scripts, f"no rc.d script for {command}"
            if m[2] == "restart" and m[1] in self.running:
                self.restarted.append(m[1])
            self.running.add(m[1])
        elif m := re.fullmatch(r"/etc/rc.d/(\w+) onestop", command):
            self.running.discard(m[1])
        elif m := re.fullmatch(rf"mkdir -p {STAMPS} && rm -f {STAMPS}/(\S+)", command):
            self.stamps.pop(m[1], None)
        elif m := re.fullmatch(rf"echo (\w+) > {STAMPS}/(\S+)\.new && mv -f {STAMPS}/\2\.new {STAMPS}/\2", command):
            self.stamps[m[2]] = m[1]
        elif m := re.fullmatch(r"if /etc/rc.d/(\w+) onestatus >/dev/null 2>&1; then /etc/rc.d/\1 reload; fi",
                               command):
            assert m[1] in self.rc_scripts, f"no rc.d script for {command}"
            assert m[1] in RC_RELOADS, f"/etc/rc.d/{m[1]} has no reload command"
            if m[1] in self.running:  # a reload: nothing the facts show
                self.reloaded.append(m[1])
        elif m := re.fullmatch(rf"s={STAMPS}/(\S+); if \[ -f \$s \]; then echo \"\$\(cut -d' ' -f1 \$s\) "
                               r"\$\(openssl dgst -sha256 -r < (\S+) \| cut -c1-64\)\" > \$s\.new && mv -f \$s\.new \$s; fi",
                               command):
            if m[1] in self.stamps:  # the stamp's measured part, measured again
                self.stamps[m[1]] = f"{self.stamps[m[1]].split()[0]} {self.files[m[2]]['sha256']}"
        elif m := re.fullmatch(r"if /etc/rc.d/(\w+) onestatus >/dev/null 2>&1; then /etc/rc.d/\1 restart; fi",
                               command):
            assert m[1] in self.rc_scripts, f"no rc.d script for {command}"  # a restart only if it runs
            if m[1] in self.running:
                self.restarted.append(m[1])
        elif command == f"umask 077 && : > {RESTORE_HASHES}":
            pass  # the (empty, private) file the restored hashes are uploaded into
        elif command.startswith(f"chmod 600 {RESTORE_HASHES} ") and "pwd_mkdb -p /etc/ptmp" in command:
            for line in self._uploads.pop(RESTORE_HASHES).splitlines():  # restore.py: every account at once
                user, hashed = line.split(":", 1)
                self.accounts[user] = {"salt": hashed.rsplit("$", 1)[0], "hash_sha256": sha256(hashed)}
                self.hashes[user] = hashed
        elif m := re.fullmatch(r"/usr/pkg/bin/qmail-queue <(\S+)\.msg 1<\1\.env && touch \1\.done "
                               r"&& rm -f \1\.msg \1\.env", command):
            number = 1000 + len([k for k in self.queue if k.startswith("mess/")])
            self.queue[f"mess/0/{number}"] = self._uploads.pop(f"{m[1]}.msg").encode()
            self.queue[f"todo/{number}"] = self._uploads.pop(f"{m[1]}.env").encode()
            self.tree[f"{m[1]}.done"] = _entry("file", b"", "644", "root", "wheel")
        elif command.startswith("chmod 600 /root/.qmailhost-chpasswd-") and "pwd_mkdb -p /etc/ptmp" in command:
            path = command.split()[2]
            user, hashed = self._uploads.pop(path).strip().split(":", 1)
            self.accounts[user] = {"salt": hashed.rsplit("$", 1)[0], "hash_sha256": sha256(hashed)}
            self.hashes[user] = hashed
        elif command.startswith("mkdir -p /usr/pkg/etc/qmailhost/tls && chmod 755"):
            pass
        elif m := re.search(r"openssl req .* -subj /CN=(\S+) .* -out (\S+)\.qmailhost-new", command):
            self._make_pair(command)  # each certificate made is another
            made = hashlib.sha256(self.tree[m[2]]["data"]).hexdigest()
            self.cert = {"cn": m[1], "sha256": made, "renew": False, "self": True}
            self.files[m[2]] = {"sha256": made, "mode": "644", "user": "root", "group": "wheel"}
        elif m := re.fullmatch(r"chgrp (\w+) (\S+)\.qmailhost-new && chmod (\d+) \2\.qmailhost-new "
                               r"&& chmod 644 (\S+)\.qmailhost-new && mv -f \2\.qmailhost-new \2 "
                               r"&& mv -f \4\.qmailhost-new \4", command):
            group, key, mode, _cert = m.groups()  # the self-signed pair moved into place, the key group-readable
            self.tree[key] = {**self.tree[key], "mode": mode, "group": group}
            self.files[key] = {"sha256": hashlib.sha256(self.tree[key]["data"]).hexdigest(), "mode": mode,
                               "user": "root", "group": group}
        elif command == "sh /var/lib/qmailhost/tmda/netbsd-retire.sh":
            self.tmda_archive = {"archive": "/var/lib/qmailhost/tmda-archive/20240101T000000Z/pieces.tar",
                                 "restored": False, "pieces": self.tmda_pieces}
            for kind, path in self.tmda_pieces:
                if kind == "package":
                    self.packages.pop(path, None)
                if kind == "rcscript":
                    self.running.discard("tofmipd")
                    self.rc_scripts.discard("tofmipd")
            self.tmda_pieces = []
        elif m := re.fullmatch(r"tar -C / -xpf (\S+) && touch (\S+)/restored", command):
            assert self.tmda_archive and self.tmda_archive["archive"] == m[1]
            self.tmda_archive["restored"] = True
            self.tmda_pieces = [p for p in self.tmda_archive["pieces"] if p[0] not in ("package", "user", "group")]
        elif m := re.fullmatch(r"crontab -l -u root > (/tmp/pyinfra-[0-9a-f]+)", command):
            self._temp[m[1]] = list(self.crontab)  # (pyinfra lists it only when it has entries)
        elif m := re.fullmatch(r"echo (\S+|'[^']*') >> (/tmp/pyinfra-[0-9a-f]+)", command):
            self._temp.setdefault(m[2], []).append(shlex.split(m[1])[0])
        elif m := re.fullmatch(r"sed -i\.(\d+) '(/(?:[^/\\']|\\/)*/d|s/(?:[^/\\']|\\.)*/(?:[^/\\']|\\.)*/)' "
                               r"(/tmp/pyinfra-[0-9a-f]+) && rm -f \3\.\1", command):
            self._temp[m[3]] = _sed(m[2], self._temp[m[3]])  # NetBSD's sed -i takes the suffix attached
        elif m := re.fullmatch(r"crontab -u root (/tmp/pyinfra-[0-9a-f]+)", command):
            self.crontab = self._temp.pop(m[1])
        elif m := re.fullmatch(r"t=\$\(mktemp\) && crontab -l -u root > \$t && sed -i\.bak -e '/\^(.+)\$/d' "
                               r"-e '/(.+)/d' \$t && crontab -u root \$t; s=\$\?; rm -f \$t \$t\.bak; exit \$s",
                               command):  # qmailhost/ops.py cron: an entry and its name comment taken away
            label, line = (re.sub(r"\\(.)", r"\1", text) for text in m.groups())
            self.crontab = [entry for entry in self.crontab if entry != label and line not in entry]
        elif m := re.fullmatch(r"rm -f ((?:/[\w./-]+ ?)+)", command):  # managed files removed (ops.absent_file)
            for path in m[1].split():
                for store in (self.files, self.contents, self.tree):
                    store.pop(path, None)
        elif m := re.fullmatch(r"ssh-keygen -q -t ed25519 -N '' -C (\S+) -f (\S+)", command):  # base's ssh-keygen
            self._write(m[2], "(the model host's private half, never a real key)\n", "600", "root", "wheel")
            self._write(f"{m[2]}.pub", f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAImodel {m[1]}\n", "644", "root", "wheel")
        elif m := re.fullmatch(_DKNEWKEY, command):
            self._dknewkey(m)
        elif m := re.fullmatch(_CERTONLY, command):
            self._certonly(m)
        elif m := re.fullmatch(rf"(?:({INSTALL_ONLY})=1 )?({ACME_DIR}/deploy-hook)", command):
            self.run_hook(m[2], install_only=bool(m[1]))
        elif m := re.fullmatch(_RUNTIME_UNPACK, command):  # tasks/health.py: qmailhost's own code, unpacked
            assert self.files[f"{m['root']}/runtime.tar.gz"]["sha256"], "unpacked before its upload"
            self.runtime_unpacked = self.files[f"{m['root']}/runtime.tar.gz"]["sha256"]
            self.stamps[m["stamp"]] = m["digest"]
        elif self._updates_command(command) or self._spam_command(command):  # updates.py's, spam.py's: below
            pass
        else:
            raise AssertionError(f"the NetBSD model does not know what this does: {command}")

    # --- tasks/spam.py: the controller's password, rspamadm configtest
    def _spam_command(self, command: str) -> bool:
        """Apply one of tasks/spam.py's commands (False: not one of them)."""
        password, include = f"{SPAM_DIR}/controller.password", f"{SPAM_DIR}/controller.inc"
        made = (f"umask 077 && mkdir -p {SPAM_DIR} && chmod 700 {SPAM_DIR} && if [ ! -s {password} ]; then "
                f"od -An -N24 -tx1 /dev/urandom | tr -d ' \\n' > {password}.new && mv -f {password}.new {password}; fi "
                f"&& h=$({RSPAMADM} lua -b -e 'print(require(\"rspamd_cryptobox\").pbkdf(io.read(\"*l\")))' "
                f"< {password}) && case \"$h\" in '$2$'*) ;; *) echo 'rspamadm made no password hash' >&2; exit 1 ;; "
                f"esac && printf 'password = \"%s\";\\n' \"$h\" > {include}.new && mv -f {include}.new {include}")
        if command == made:
            assert "rspamd" in self.packages, "rspamadm runs before rspamd is installed"
            self.dirs[SPAM_DIR] = {"mode": 700, "user": "root", "group": "wheel"}
            if not self.contents.get(password):  # (a password kept is used again)
                self._write(password, secrets.token_hex(24), "600", "root", "wheel")
            self._write(include, f'password = "$2$model{secrets.token_hex(16)}";\n', "600", "root", "wheel")
            return True
        if command == f"{RSPAMADM} configtest -c {RSPAMD_CONF}":
            assert "rspamd" in self.packages, "rspamadm runs before rspamd is installed"
            assert include in self.files, f"rspamd's config includes {include}, which is not there"
            assert f"{RSPAMD_LOCAL}/worker-controller.inc" in self.files, "configtest before local.d is written"
            assert self.rspamd_config_ok, "the run stops: rspamadm configtest says syntax BAD"
            return True
        return False

    def spam_stat(self, command: str) -> str | None:
        """What tasks/spam.py's check (files/spam/stat.py, run by pkgsrc's Python) prints here: rspamd
        answers when it runs, and its controller wants the password the host made (None: not that command)."""
        from qmailhost.platform import netbsd
        from tasks import spam

        if command != spam.stat_command(netbsd("10")):
            return None
        if "rspamd" not in self.running:
            return json.dumps({"ping": "ConnectionRefusedError: [Errno 61] Connection refused", "open": None,
                               "stat": "ConnectionRefusedError: [Errno 61] Connection refused"}) + "\n"
        stat = {"version": "3.10.2", "scanned": 0, "actions": {"reject": 0, "add header": 0, "no action": 0},
                "statfiles": [{"symbol": "BAYES_SPAM", "revision": 0}, {"symbol": "BAYES_HAM", "revision": 0}]}
        known = f"{SPAM_DIR}/controller.password" in self.files
        return json.dumps({"ping": "pong", "open": 401, "stat": stat if known else "HTTP 401"}) + "\n"

    # --- tasks/dkim.py: pkgsrc's dknewkey
    def _dknewkey(self, m: re.Match) -> None:
        """The key command: under umask 077, the domain's directory (qmailr's, 700), then dknewkey
        writes NAME.key and NAME.dns in it (root's, 600 under that umask, group from the parent as
        BSD's mkdir and open give it), given to qmailr, made 400 and 444, renamed into place."""
        folder, new, selector = m["folder"], m["new"], m["selector"]
        assert m["dknewkey"] == DKNEWKEY, f"pkgsrc's dknewkey is {DKNEWKEY}, not {m['dknewkey']}"
        assert "py313-dkim" in self.packages, "dknewkey runs before py313-dkim is installed"
        assert SIGNER_USER in self.users, f"chown: {SIGNER_USER}: no such user"
        assert folder.rsplit("/", 1)[0] == DKIM_KEYS and "/" not in m["domain"], folder
        keys = self.dirs.get(DKIM_KEYS)
        assert keys and keys["user"] == SIGNER_USER and keys["mode"] == 700, f"the key directory: {keys}"
        assert new == f"{selector}.new", (new, selector)
        ktype = m["ktype"] or "rsa"
        if ktype == "rsa":  # openssl genrsa 2048 (PKCS#8), then the public half's base64 (a 2048-bit SPKI: 294 bytes)
            private = ("-----BEGIN MODEL KEY-----\n" + base64.b64encode(secrets.token_bytes(1190)).decode()
                       + "\n-----END MODEL KEY-----\n")  # random bytes the size of one, never a real key
            public = "v=DKIM1; k=rsa; h=sha256; p=" + base64.b64encode(b"0\x82\x01\x22" + secrets.token_bytes(290)).decode()
        else:  # PyNaCl: the seed's base64, and the verify key's
            private = base64.b64encode(secrets.token_bytes(32)).decode() + "\n"
            public = "v=DKIM1; k=ed25519; p=" + base64.b64encode(secrets.token_bytes(32)).decode()
        self.tree.setdefault(folder, _entry("dir", b"", "700", SIGNER_USER, "wheel"))
        self.tree[folder] = {**self.tree[folder], "mode": "700", "user": SIGNER_USER}
        for suffix, data, mode in (("key", private, "400"), ("dns", public, "444")):
            self.tree[f"{folder}/{selector}.{suffix}"] = _entry("file", data.encode(), mode, SIGNER_USER, "wheel")
        self.keys_made.append((m["domain"], selector, ktype))

    # --- certbot (security/py-certbot) and qmailhost's deploy hook
    def issue(self, domain: str, days: int = 90) -> None:
        """What certbot does when the CA issues the lineage a certificate for DOMAIN (a real one,
        from a model CA: openssl can read it): the next files in archive/ (live/ links to
        them), the renewal config; the acme probe sees the lineage's name and full chain."""
        config = LETSENCRYPT["config"]
        archive = f"{config}/archive/{LINEAGE}"
        n = 1 + max((int(m[1]) for p in self.entries() if (m := re.fullmatch(rf"{archive}/cert(\d+)\.pem", p))),
                    default=0)
        cert, chain, key = _issued(domain, days)
        for path in (config, f"{config}/accounts", f"{config}/archive", archive, f"{config}/renewal"):
            self.tree.setdefault(path, _entry("dir", b"", "700" if "archive" in path or "accounts" in path
                                              else "755", "root", "wheel"))
        for name, data, mode in (("cert", cert, "644"), ("chain", chain, "644"), ("fullchain", cert + chain, "644"),
                                 ("privkey", key, "600")):
            self.tree[f"{archive}/{name}{n}.pem"] = _entry("file", data, mode, "root", "wheel")
        self.tree[f"{config}/renewal/{LINEAGE}.conf"] = _entry(
            "file", f"archive_dir = {archive}\ncert = {config}/live/{LINEAGE}/cert.pem\n".encode(), "644",
            "root", "wheel")
        self.acme = {"cn": domain, "sha256": hashlib.sha256(cert + chain).hexdigest()}

    def lineage_file(self, live: str, name: str) -> bytes:
        """What live/NAME.pem of the lineage in LIVE reads: its newest file in archive/ (certbot's
        own, or one restore.py put back)."""
        assert live == f"{LETSENCRYPT['config']}/live/{LINEAGE}", live
        archive, entries = live.replace("/live/", "/archive/"), self.entries()
        found = sorted((int(m[1]), p) for p in entries if (m := re.fullmatch(rf"{archive}/{name}(\d+)\.pem", p)))
        assert found, f"no {name}.pem in the lineage {live}"
        return entries[found[-1][1]]["data"]

    def _certonly(self, m: re.Match) -> None:
        """certbot certonly --standalone: the CA validates the name on port 80, issues the lineage,
        and certbot runs the deploy hook (RENEWED_LINEAGE: the lineage's live/ directory) in its
        own environment: INSTALL_ONLY, when the command sets it, reaches the hook."""
        assert m["certbot"] == CERTBOT, f"pkgsrc's certbot is {CERTBOT}, not {m['certbot']}"
        assert CERTBOT_PACKAGE in self.packages, f"certbot runs before {CERTBOT_PACKAGE} is installed"
        assert (m["config"], m["work"], m["logs"]) == (LETSENCRYPT["config"], LETSENCRYPT["work"], LETSENCRYPT["logs"])
        assert m["name"] == LINEAGE, m["name"]
        if m["bundle"]:
            assert m["bundle"] in self.contents, f"REQUESTS_CA_BUNDLE={m['bundle']}: no such file yet"
        hook = self.files.get(m["hook"])
        assert hook and hook["mode"] == "700" and hook["user"] == "root", f"the deploy hook {m['hook']}: {hook}"
        self.orders.append({"domain": m["domain"], "email": shlex.split(m["email"])[0],
                            "server": shlex.split(m["server"])[0], "ca_bundle": m["bundle"]})
        self.issue(m["domain"])
        self.run_hook(m["hook"], renewed_lineage=f"{LETSENCRYPT['config']}/live/{LINEAGE}",
                      install_only=bool(m["install_only"]))

    def run_hook(self, path: str = f"{ACME_DIR}/deploy-hook", renewed_lineage: str | None = None,
                 install_only: bool = False) -> None:
        """Run the deploy hook qmailhost wrote, line by line as sh -e would: the lineage's pair put
        where the listeners read it (the key private from its first byte), then, unless
        QMAILHOST_INSTALL_ONLY is set in its environment (INSTALL_ONLY: the deploy's runs), each
        reader's commands (commands the model knows, so a reader re-read in a way NetBSD cannot
        fails). Without arguments: the hook as certbot renew runs it (renew.sh, from cron)."""
        assert self.files[path]["mode"] == "700", self.files[path]
        lineage = cwd = None
        new: dict[str, dict] = {}
        block = None  # inside `if ...; then ... fi`: whether its condition held
        for line in self.contents[path].splitlines():
            if not line.strip() or line.lstrip().startswith("#") or line == "set -e":
                continue
            if line == f'if [ -n "${{{INSTALL_ONLY}:-}}" ]; then':
                assert block is None, "the model reads no nested if"
                block = install_only
                continue
            if line == "fi":
                assert block is not None, "fi without if"
                block = None
                continue
            if block is not None:  # the install-only branch: its lines are indented
                assert line.startswith("    "), line
                if not block:
                    continue
                line = line.strip()
                if line == "exit 0":
                    return
                assert line.startswith('echo "qmailhost: installed the certificate of $lineage'), line
                continue
            if m := re.fullmatch(r"lineage=\$\{RENEWED_LINEAGE:-(\S+)\}", line):
                lineage = renewed_lineage or m[1]
            elif m := re.fullmatch(r"mkdir -p (\S+) && cd \1", line):
                cwd = m[1]
            elif line == "umask 077":
                pass
            elif m := re.fullmatch(r'cp "\$lineage/(privkey|fullchain)\.pem" (key|cert)\.pem\.qmailhost-new'
                                   r"(?: && chmod (\d+) \2\.pem\.qmailhost-new)?", line):
                new[m[2]] = _entry("file", self.lineage_file(lineage, m[1]), m[3] or "600", "root", "wheel")
            elif m := re.fullmatch(r"chgrp (\w+) key\.pem\.qmailhost-new && chmod (\d+) key\.pem\.qmailhost-new", line):
                assert m[1] in self.groups, f"chgrp: {m[1]}: no such group"
                new["key"].update(group=m[1], mode=m[2])
            elif line == "mv -f key.pem.qmailhost-new key.pem && mv -f cert.pem.qmailhost-new cert.pem":
                assert cwd == TLS_DIR, cwd
                for name, entry in new.items():
                    path_ = f"{cwd}/{name}.pem"
                    self.tree[path_] = entry
                    self.files[path_] = {"sha256": hashlib.sha256(entry["data"]).hexdigest(), "mode": entry["mode"],
                                         "user": entry["user"], "group": entry["group"]}
                self.cert = {"cn": _common_name(new["cert"]["data"]),
                             "sha256": hashlib.sha256(new["cert"]["data"]).hexdigest(), "renew": False,
                             "self": False}  # (the tls probe: a full chain whose issuer is the CA)
                self.hook_runs.append({"lineage": lineage, "install_only": install_only})
            elif line.startswith('echo "qmailhost: serving the certificate of $lineage; re-read by '):
                pass
            else:
                self._run(line)  # a reader's reload or restart, its stamp measured again

    # --- recovery: what backup.py and restore.py ask the host (through remote())
    def remote(self, name: str = "mail.example.org") -> ModelRemote:
        """recovery.Remote, answered by this model instead of ssh."""
        return ModelRemote(self, name)

    def put_dir(self, path: str, user: str = "root", group: str = "wheel", mode: str = "700") -> None:
        self.tree[path] = _entry("dir", b"", mode, user, group)

    def put_mail(self, path: str, data: bytes, user: str = "alice", mode: str = "600",
                 mtime_ns: int = MTIME_NS) -> None:
        """A file (a message, an archived piece) on the host, its missing parents made as USER's."""
        parent = path.rsplit("/", 1)[0]
        while parent and parent not in self.dirs and parent not in self.tree and parent.count("/") > 2:
            self.tree[parent] = _entry("dir", b"", "700", user, user)
            parent = parent.rsplit("/", 1)[0]
        self.tree[path] = _entry("file", data, mode, user, user, mtime_ns)

    def entries(self) -> dict[str, dict]:
        """Every file and directory recovery can see: the deploy's directories, the model's own
        tree (mail, restored files, the generated TLS pair) and the files deploy wrote."""
        found = {path: _entry("dir", b"", str(d["mode"]), d["user"], d["group"]) for path, d in self.dirs.items()}
        found.update(self.tree)
        for path, meta in self.files.items():
            if path in self.contents:
                data = self.contents[path]
                found[path] = _entry("file", data if isinstance(data, bytes) else data.encode(), meta["mode"],
                                     meta["user"], meta["group"])
        return found

    def expand(self, word: str) -> str:
        """A shell word as the host's sh expands it: an unquoted ~user prefix, then the rest unquoted."""
        if m := re.fullmatch(r"~([A-Za-z0-9_][A-Za-z0-9_.-]*)(/.*)?", word):
            if m[1] not in self.users:
                return shlex.split(word)[0]  # no such user: the word stays as it is
            return self.users[m[1]]["home"] + (shlex.split(m[2])[0] if m[2] else "")
        return shlex.split(word)[0]

    def under(self, root: str) -> list[tuple[str, dict]]:
        return sorted((p, e) for p, e in self.entries().items() if p == root or p.startswith(root + "/"))

    def run_script(self, script: str) -> bytes:  # noqa: C901 (one branch per recovery script)
        """The output of a recovery script, as NetBSD's sh, find, stat, awk and openssl print it."""
        if m := re.fullmatch(_LISTING, script):
            out = []
            for word in _shell_words(m["paths"]):
                root = self.expand(word)
                for path, e in self.under(root):
                    mode = int(e["mode"], 8)  # stat's %OMp%OLp: special bits, then permissions
                    kind = "Regular File" if e["type"] == "file" else "Directory"
                    out.append(f"E\t{kind}\t{len(e['data'])}\t{e['mtime_ns'] // 10**9}.{e['mtime_ns'] % 10**9:09d}\t"
                               f"{(mode >> 9) & 7:o}{mode & 0o777:o}\t{e['user']}\t{e['group']}\t{vis(path.encode())}\n")
            return "".join(out).encode()
        if m := re.fullmatch(_HASHES, script):
            return "".join(f"{u}:{self.hashes[u]}\n" for u in m["users"].split() if self.hashes.get(u)).encode()
        if m := re.fullmatch(_HOST_VIEW, script):
            out = []
            for user in m["users"].split():
                if user in self.users:
                    out.append(f"A\t{user}\t{self.users[user]['home']}\0")
                    out.append(f"H\t{user}\t{sha256(self.hashes.get(user, ''))}\0")
            for word in _shell_words(m["paths"]):
                root = self.expand(word)
                out.append(f"X\t{root}\0")
                out += [f"P\t{path}\0" for path, _ in self.under(root)]
            out += [f"R\t{path}\0" for path, e in self.under(m["requeued"]) if e["type"] == "file"]
            out += [f"M\t{hashlib.sha256(v).hexdigest()}\0" for k, v in sorted(self.queue.items())
                    if k.startswith("mess/")]
            if "qmail-run" in self.packages:  # qmail's package installs /usr/pkg/bin/qmail-queue
                out.append("Q\0")
            return "".join(out).encode(errors="surrogateescape")
        raise AssertionError(f"the NetBSD model does not know this recovery script: {script[:300]}")

    def pax_write(self, script: str, feed: bytes) -> tuple[bytes, int]:
        """(the ustar archive pax -w writes, its exit status) for a recovery stream."""
        out, status = io.BytesIO(), 0
        with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as archive:
            if script == "cd / && pax -w -d -0 -x ustar":  # NUL-separated names on stdin, each alone
                entries = self.entries()
                for name in (n.decode(errors="surrogateescape") for n in feed.split(b"\0") if n):
                    entry = entries.get("/" + name)
                    if entry is None:
                        status = 1  # "pax: Unable to access ...": the file vanished
                        continue
                    _add_member(archive, name, entry)
            elif script == f"cd {QUEUE} && pax -w -x ustar mess info local remote todo":
                for key, data in sorted(self.queue.items()):
                    _add_member(archive, key, _entry("file", data, "600", "qmailq", "qmail"))
            else:
                raise AssertionError(f"the NetBSD model does not know this stream: {script}")
        return out.getvalue(), status

    def pax_read(self, script: str, data: bytes) -> None:
        """Apply `pax -r -k -pe` run from / to the archive DATA: add what is not there yet."""
        assert script == "cd / && pax -r -k -pe", script
        assert data[257:265] == b"ustar\x0000", "NetBSD's pax reads ustar archives"
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            assert not archive.pax_headers
            entries = self.entries()
            for member in archive:
                assert member.type in (tarfile.REGTYPE, tarfile.DIRTYPE) and not member.pax_headers, member.name
                path = "/" + member.name.rstrip("/")
                if path in entries:  # -k: never overwrite
                    continue
                data = archive.extractfile(member).read() if member.isfile() else b""
                self.tree[path] = _entry("file" if member.isfile() else "dir", data, format(member.mode, "o"),
                                         member.uname, member.gname, member.mtime * 10**9)  # ustar: whole seconds

    def _make_pair(self, command: str) -> None:
        """The self-signed pair openssl req writes (moved into place by the next command)."""
        key, cert = re.search(r"-keyout (\S+)\.qmailhost-new -out (\S+)\.qmailhost-new", command).groups()
        made = secrets.token_hex(32)  # a new pair every time, as openssl makes one
        self.tree[cert] = _entry("file", f"-----BEGIN CERTIFICATE-----\n{made}\n-----END CERTIFICATE-----\n".encode(),
                                 "644", "root", "wheel")
        self.tree[key] = _entry("file", f"-----BEGIN MODEL KEY-----\n{made[::-1]}\n-----END MODEL KEY-----\n"
                                .encode(), "600", "root", "wheel")

    # --- tasks/updates.py: the base system's daily(5) and security(5) configs, and pkg_admin
    # Each config is a list of lines, its owner's and at most one of qmailhost's per variable (see
    # conf_line). daily() does what /etc/daily does with them for the vulnerability list: it
    # fetches the list when the last line setting fetch_pkg_vulnerabilities says YES (unset is
    # taken as NO, as reported of stock NetBSD hosts). updates_status() answers the updates check.
    def _fact_ConfAssignments(self, path, variable):
        assert path in PERIODIC_CONF and re.fullmatch(r"[a-z_]+", variable), (path, variable)
        return [line for line in self.periodic_conf.get(path) or [] if re.match(rf"\s*{variable}=", line)]

    def _updates_command(self, command: str) -> bool:
        """Apply one of tasks/updates.conf_line's commands (False: not one of them)."""
        conf = r"(/etc/(?:daily|security)\.conf)"
        if m := re.fullmatch(rf"echo ('[^']*') >> {conf}", command):
            self.periodic_conf.setdefault(m[2], []).append(shlex.split(m[1])[0])
            return True
        if m := re.fullmatch(rf"cp -p {conf} \1\.qmailhost-new && \{{ grep -v ('[^']*') \1; echo ('[^']*'); \}} "
                             r"> \1\.qmailhost-new && mv -f \1\.qmailhost-new \1", command):
            path, pattern, line = m[1], _bre(shlex.split(m[2])[0]), shlex.split(m[3])[0]
            assert path in self.periodic_conf, f"cp: {path}: No such file or directory"
            self.periodic_conf[path] = [kept for kept in self.periodic_conf[path] if not pattern.search(kept)] + [line]
            return True
        if m := re.fullmatch(rf"cp -p {conf} \1\.qmailhost-new && \{{ grep -v ('[^']*') \1 \|\| \[ \$\? -eq 1 \]; \}} "
                             r"> \1\.qmailhost-new && if \[ -s \1\.qmailhost-new \]; then mv -f \1\.qmailhost-new \1; "
                             r"else rm -f \1\.qmailhost-new \1; fi", command):
            path, pattern = m[1], _bre(shlex.split(m[2])[0])
            assert path in self.periodic_conf, f"cp: {path}: No such file or directory"
            kept = [line for line in self.periodic_conf[path] if not pattern.search(line)]
            if kept:
                self.periodic_conf[path] = kept
            else:
                del self.periodic_conf[path]
            return True
        return False

    def conf_value(self, path: str, variable: str) -> str | None:
        """What sourcing PATH leaves VARIABLE set to (the last line that sets it; None: none)."""
        found = [line.split("=", 1)[1].split()[0].strip("\"'") for line in self._fact_ConfAssignments(path, variable)]
        return found[-1] if found else None

    def daily(self) -> None:
        """/etc/daily's night: the vulnerability list fetched when daily.conf says so."""
        if self.conf_value("/etc/daily.conf", "fetch_pkg_vulnerabilities") == "YES":
            self.vulnerabilities = {"age_days": 0, "findings": (self.vulnerabilities or {}).get("findings", [])}

    def updates_status(self, command: str) -> str | None:
        """What tasks/updates.py's NetBSD status script prints here (None: not that script)."""
        from qmailhost.files import read

        if command != read("updates/status.netbsd.sh"):
            return None
        now, vulnerabilities = 1_800_000_000, "/usr/pkg/pkgdb/pkg-vulnerabilities"  # PKGVULNDIR: PKG_DBDIR
        if self.vulnerabilities is None:
            return f"now\t{now}\nmissing\t{vulnerabilities}\n"
        fetched = now - self.vulnerabilities["age_days"] * 86400
        return f"now\t{now}\nfetched\t{fetched}\n" + "".join(f"audit\t{line}\n"
                                                                for line in self.vulnerabilities["findings"])


def _entry(kind: str, data: bytes, mode: str, user: str, group: str, mtime_ns: int = MTIME_NS) -> dict:
    return {"type": kind, "data": data, "mode": mode, "user": user, "group": group, "mtime_ns": mtime_ns}


def _add_member(archive: tarfile.TarFile, name: str, entry: dict) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.REGTYPE if entry["type"] == "file" else tarfile.DIRTYPE
    info.mode, info.uname, info.gname = int(entry["mode"], 8), entry["user"], entry["group"]
    info.mtime, info.size = entry["mtime_ns"] // 10**9, len(entry["data"])
    archive.addfile(info, io.BytesIO(entry["data"]) if entry["type"] == "file" else None)


_VIS_CSTYLE = {"\n": "\\n", "\t": "\\t", "\r": "\\r", " ": "\\s", "\a": "\\a", "\b": "\\b", "\f": "\\f",
               "\v": "\\v"}


def vis(name: bytes) -> str:
    """NAME as NetBSD's stat %#N prints it: strnvis(3) with VIS_WHITE | VIS_OCTAL | VIS_CSTYLE
    in the C locale (ssh sessions get no LANG): graphic ASCII as is, a backslash doubled,
    white space and controls C-style (\\s for a space), any other byte as \\ooo."""
    out = []
    for byte in name:
        char = chr(byte)
        if char == "\\":
            out.append("\\\\")
        elif 0x21 <= byte <= 0x7E:
            out.append(char)
        else:
            out.append(_VIS_CSTYLE.get(char, f"\\{byte:03o}"))
    return "".join(out)


def _shell_words(text: str) -> list[str]:
    """The words of a for list, each as written (quotes kept: the model expands them itself)."""
    return re.findall(r"(?:[^\s'\\]|'[^']*'|\\.)+", text)


_CERTONLY = (rf"(?:(?P<install_only>{INSTALL_ONLY})=1 )?(?:REQUESTS_CA_BUNDLE=(?P<bundle>\S+) )?"
             r"(?P<certbot>\S+) certonly --standalone "
             r"--preferred-challenges http --http-01-port 80 --non-interactive --agree-tos --no-eff-email "
             r"--email (?P<email>\S+) --server (?P<server>\S+) --cert-name (?P<name>\S+) -d (?P<domain>\S+) "
             r"--key-type rsa --rsa-key-size 3072 --deploy-hook (?P<hook>\S+) "
             r"--config-dir (?P<config>\S+) --work-dir (?P<work>\S+) --logs-dir (?P<logs>\S+)")


_DKNEWKEY = (r"umask 077 && mkdir -p (?P<folder>\S+/(?P<domain>[^/\s]+)) && chown qmailr (?P=folder) && "
             r"chmod 700 (?P=folder) && cd (?P=folder) && rm -f (?P<new>\S+)\.key (?P=new)\.dns && "
             r"(?P<dknewkey>\S+) (?:--ktype (?P<ktype>ed25519) )?(?P=new) 2>/dev/null && "
             r"chown qmailr (?P=new)\.key (?P=new)\.dns && chmod 400 (?P=new)\.key && chmod 444 (?P=new)\.dns && "
             r"mv -f (?P=new)\.key (?P<selector>[a-z0-9-]+)\.key && mv -f (?P=new)\.dns (?P=selector)\.dns")


_LINEAGE_LINKS = (
    f"mkdir -p {LETSENCRYPT['config']}/live/{LINEAGE} && cd {LETSENCRYPT['config']}/live/{LINEAGE} && "
    f"for f in cert chain fullchain privkey; do n=$(ls ../../archive/{LINEAGE} | "
    "sed -n \"s/^$f\\([0-9][0-9]*\\)\\.pem$/\\1/p\" | sort -n | tail -1); "
    f"[ -n \"$n\" ] && ln -sfn ../../archive/{LINEAGE}/$f$n.pem $f.pem; done; true")


def _issued(domain: str, days: int) -> tuple[bytes, bytes, bytes]:
    """(certificate, the CA's certificate, key): a certificate for DOMAIN from a model CA, valid
    for DAYS from now (EC keys: cheap to make)."""
    with tempfile.TemporaryDirectory() as scratch:
        new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        for args in (["-days", "3650", "-subj", "/CN=Model ACME CA", "-keyout", "ca.key", "-out", "ca.pem"],
                     ["-days", str(days), "-subj", f"/CN={domain}", "-addext", f"subjectAltName=DNS:{domain}",
                      "-CA", "ca.pem", "-CAkey", "ca.key", "-keyout", "key.pem", "-out", "cert.pem"]):
            subprocess.run(["openssl", "req", "-x509", *new_key, *args], check=True, capture_output=True,
                           cwd=scratch)
        return tuple((Path(scratch) / name).read_bytes() for name in ("cert.pem", "ca.pem", "key.pem"))


def _common_name(pem: bytes) -> str:
    return _subject_and_issuer(pem)[0]


def _subject_and_issuer(pem: bytes) -> tuple[str, str] | None:
    """The common names of a PEM certificate's subject and issuer; None when it is not one openssl reads."""
    if not pem.startswith(b"-----BEGIN CERTIFICATE-----\nMII"):
        return None  # (the model's own stand-ins for openssl's output are not)
    result = subprocess.run(["openssl", "x509", "-noout", "-subject", "-issuer", "-nameopt", "multiline"],
                            input=pem, capture_output=True, check=True)
    names = re.findall(rb"commonName\s*=\s*(\S+)", result.stdout)
    return names[0].decode(), names[1].decode()


def _sed(script: str, lines: list[str]) -> list[str]:
    """LINES after sed's '/RE/d' or 's/RE/REPLACEMENT/' (the basic REs pyinfra's crontab
    writes: literal text, \\/ and .*). A \\n in REPLACEMENT is a newline (NetBSD's sed,
    compile.c's unescape(): pyinfra puts a cron_name's comment line above a line it rewrites)."""
    def regex(text: str) -> str:
        assert re.fullmatch(r"(?:[\w .*>&:=-]|\\/)*", text), f"a basic RE the model does not read: {text}"
        return "".join(".*" if part == ".*" else re.escape(part.replace("\\/", "/"))
                       for part in re.split(r"(\.\*)", text) if part)

    if m := re.fullmatch(r"/((?:[^/\\]|\\/)*)/d", script):
        return [line for line in lines if not re.search(regex(m[1]), line)]
    m = re.fullmatch(r"s/((?:[^/\\]|\\.)*)/((?:[^/\\]|\\.)*)/", script)
    assert m[1].startswith(".*") and m[1].endswith(".*"), f"not a whole-line replacement: {script}"
    replacement = re.sub(r"\\(.)", lambda e: "\n" if e[1] == "n" else e[1], m[2]).split("\n")
    return [new for line in lines for new in (replacement if re.search(regex(m[1]), line) else [line])]


# tasks/health.py's unpacking of qmailhost/runtime.py's tar (app/ and site/ swapped in), then its stamp.
_RUNTIME_UNPACK = (r"rm -rf (?P<root>\S+)/\.new (?P=root)/\.old && mkdir -p (?P=root)/\.new && "
                   r"tar -xzf (?P=root)/runtime\.tar\.gz -C (?P=root)/\.new && chmod -R go-w (?P=root)/\.new && "
                   r"mkdir -p (?P=root)/\.old && for d in app site; do if \[ -d (?P=root)/\$d \]; then "
                   r"mv (?P=root)/\$d (?P=root)/\.old/\$d; fi; mv (?P=root)/\.new/\$d (?P=root)/\$d; done && "
                   r"rm -rf (?P=root)/\.new (?P=root)/\.old && echo (?P<digest>\w+) > \S+/stamps/(?P<stamp>\S+)\.new "
                   r"&& mv -f \S+\.new \S+")

# The recovery scripts the model answers: NetBSD's tools, spelt exactly (any other script,
# or a GNU spelling, fails the test). Field names: what the model reads out of a script.
_LISTING = re.escape(  # harness/old_backups.py's
    "\nlist() { find \"$@\" \\( -type f -o -type d \\) "
    "-exec stat -f 'E%t%HT%t%z%t%.9Fm%t%OMp%OLp%t%Su%t%Sg%t%#N' {} + 2>/dev/null; }\nfor p in ") + \
    r"(?P<paths>.+?)" + re.escape("; do [ -e \"$p\" ] && list \"$p\"; done\ntrue\n")
_HASHES = r"for u in (?P<users>[\w -]+|''); do " + re.escape(
    "h=$(awk -F: -v u=\"$u\" '$1 == u { print $2 }' /etc/master.passwd); "
    "[ -n \"$h\" ] && printf '%s:%s\\n' \"$u\" \"$h\"; done; true")
_HOST_VIEW = re.escape("\nfor u in ") + r"(?P<users>[\w -]+|'')" + re.escape(
    "; do\n  h=$(getent passwd \"$u\" | cut -d: -f6)\n  [ -n \"$h\" ] || continue\n"
    "  printf 'A\\t%s\\t%s\\0' \"$u\" \"$h\"\n"
    "  printf 'H\\t%s\\t%s\\0' \"$u\" \"$(awk -F: -v u=\"$u\" '$1 == u { print $2 }' /etc/master.passwd "
    "| tr -d '\\n' | openssl dgst -sha256 -r | cut -c1-64)\"\ndone\nfor p in ") + r"(?P<paths>.+?)" + re.escape(
    "; do printf 'X\\t%s\\0' \"$p\"; [ -e \"$p\" ] && find \"$p\" -exec printf 'P\\t%s\\0' {} +; done\n[ -d ") + \
    r"(?P<requeued>\S+)" + re.escape(" ] && find ") + r"(?P=requeued)" + re.escape(
    " -type f -exec printf 'R\\t%s\\0' {} +\n"
    f"for f in $(find {QUEUE}/mess -type f 2>/dev/null); do printf 'M\\t%s\\0' "
    "\"$(openssl dgst -sha256 -r < \"$f\" | cut -c1-64)\"; done\n"
    "[ -x /usr/pkg/bin/qmail-queue ] && printf 'Q\\0'\ntrue\n")


class ModelRemote:
    """recovery.Remote (run, output, input) with the model host on the other end: each script
    is answered from the model's state, each stream written or applied by it."""

    def __init__(self, host: NetBSDHost, name: str):
        self.host, self.name = host, name

    def run(self, script: str, what: str) -> bytes:
        self.host.sent.append((what, script, b""))
        return self.host.run_script(script)

    @contextlib.contextmanager
    def output(self, script: str, feed: bytes, what: str):
        self.host.sent.append((what, script, feed))
        data, status = self.host.pax_write(script, feed)
        assert status in (0, 1), status
        stream = io.BytesIO(data)
        yield stream
        stream.read()

    @contextlib.contextmanager
    def input(self, script: str, what: str):
        stream = io.BytesIO()
        yield stream
        self.host.sent.append((what, script, stream.getvalue()))
        self.host.pax_read(script, stream.getvalue())


# --- tasks/updates.py (the model's methods for it: NetBSDHost's section of its own)
# /etc/daily.conf and /etc/security.conf as NetBSD installs them (src/etc): the defaults sourced,
# then room for local overrides.
PERIODIC_CONF = {
    f"/etc/{name}.conf": [f"#\t$NetBSD: {name}.conf $", "#",
                          f"# see {name}.conf(5) for more information.", "",
                          f"if [ -r /etc/defaults/{name}.conf ]; then", f"\t. /etc/defaults/{name}.conf", "fi", "",
                          "# Add local overrides below", "#"]
    for name in ("daily", "security")
}


def _bre(pattern: str) -> re.Pattern:
    """A grep basic RE of tasks/updates.py's (literal text, ^, $ and .*) as Python's."""
    assert re.fullmatch(r"\^[\w =.*#]+\$", pattern), f"a basic RE the model does not read: {pattern}"
    return re.compile("^" + ".*".join(re.escape(part) for part in pattern[1:-1].split(".*")) + "$")
