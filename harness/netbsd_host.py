"""A model of a NetBSD 10 host with pkgsrc, for whole-deploy command plans.

It answers qmailhost's facts from its state, and ``apply(plan)`` changes that state
the way each planned command would on the real host (every command qmailhost plans
for NetBSD is understood here; an unknown one fails the test). So a test can plan a
bare host, apply the plan, and check that the converged host plans nothing, or
switch modes and see exactly what a switch runs.
"""

from __future__ import annotations

import copy
import hashlib
import re
import shlex
from dataclasses import dataclass, field

from harness.plan_harness import DEFAULT

PACKAGE_RC_SCRIPTS = {"qmail-run": ("qmailsend", "qmailsmtpd", "qmailofmipd", "qmailpop3d", "qmailqread"),
                      "stunnel": ("stunnel",), "tmda": ("tofmipd",), "unbound": ("unbound",)}
STAMPS = "/var/lib/qmailhost/stamps"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


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
    cert: dict | None = None  # the self-signed certificate: {"cn", "sha256", "renew"}
    tmda_pieces: list[tuple[str, str]] = field(default_factory=list)
    tmda_archive: dict | None = None
    executed: list[str] = field(default_factory=list)
    _uploads: dict[str, str] = field(default_factory=dict)

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
        if package not in self.packages:
            return {"installed": False, "options": [], "pkgsrc": True}
        return {"installed": True, "options": self.packages[package], "pkgsrc": True}

    def _fact_TmdaPieces(self, script):
        assert script == "tmda/netbsd-pieces.sh", script
        return list(self.tmda_pieces)

    def _fact_TmdaArchive(self):
        return copy.deepcopy(self.tmda_archive)

    def _fact_HostState(self, script):
        assert "openssl dgst -sha256 -r" in script and "/etc/master.passwd" in script, script
        assert "sha256sum" not in script and "getent shadow" not in script, script
        users = re.search(r"for u in (.*); do", script)[1].split()
        mode = self.contents.get("/var/lib/qmailhost/submission-mode")
        return {"systemd": False, "svscan": False, "stamps": dict(self.stamps),
                "mode": mode.strip() if mode else None,
                "accounts": {u: self.accounts[u] for u in users if u in self.accounts},
                "cert": copy.deepcopy(self.cert)}

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
                if isinstance(command, list):
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
        elif command.startswith("mkdir -p "):
            path = command.split()[2]
            if command == f"mkdir -p {path}" and path.startswith("/home/"):
                self.dirs.setdefault(path, {"mode": 755, "user": "root", "group": "wheel"})
        elif m := re.fullmatch(r"chmod (\d+) (/home/\S+)", command):
            self.dirs[m[2]]["mode"] = int(m[1])
        elif m := re.fullmatch(r"chown (\w+):(\w+) (/home/\S+)", command):
            self.dirs[m[3]].update(user=m[1], group=m[2])
        elif m := re.fullmatch(r"PKG_RCD_SCRIPTS=YES /usr/pkg/bin/pkgin -y install (.+)", command):
            for package in m[1].split():
                self.packages[package] = []
                self.rc_scripts.update(PACKAGE_RC_SCRIPTS.get(package, ()))
                if package == "qmail-run":  # pulls qmail and the binary mess822 (no options)
                    self.packages.setdefault("mess822", [])
                if package == "checkpassword":
                    self.files["/usr/pkg/bin/checkpassword"] = {"sha256": "package", "mode": "755",
                                                                "user": "root", "group": "wheel"}
        elif m := re.fullmatch(r"/usr/pkg/bin/pkgin -y remove (.+)", command):
            for package in m[1].split():
                self.packages.pop(package)
        elif m := re.fullmatch(r"echo (.+) >> /etc/mk.conf", command):
            self.mk_conf.append(shlex.split(m[1])[0])
        elif m := re.fullmatch(r"make -C /usr/pkgsrc/mail/mess822 (install|replace) "
                               r"&& make -C /usr/pkgsrc/mail/mess822 clean", command):
            # (pyinfra plans "install" on a bare host; when the command runs, the operation is
            # evaluated again and says "replace" if qmail-run pulled a binary mess822 in first)
            options = [line for line in self.mk_conf if line.startswith("PKG_OPTIONS.mess822+=")]
            self.packages["mess822"] = [w for line in options for w in line.split("#")[0].split()[1:]]
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
            self.running.add(m[1])
        elif m := re.fullmatch(r"/etc/rc.d/(\w+) onestop", command):
            self.running.discard(m[1])
        elif m := re.fullmatch(rf"mkdir -p {STAMPS} && rm -f {STAMPS}/(\S+)", command):
            self.stamps.pop(m[1], None)
        elif m := re.fullmatch(rf"echo (\w+) > {STAMPS}/(\S+)\.new && mv -f {STAMPS}/\2\.new {STAMPS}/\2", command):
            self.stamps[m[2]] = m[1]
        elif command.startswith("if /etc/rc.d/qmailsend onestatus"):
            pass  # a reload: nothing the facts show
        elif command.startswith("chmod 600 /root/.qmailhost-chpasswd-") and "pwd_mkdb -p /etc/ptmp" in command:
            path = command.split()[2]
            user, hashed = self._uploads.pop(path).strip().split(":", 1)
            self.accounts[user] = {"salt": hashed.rsplit("$", 1)[0], "hash_sha256": sha256(hashed)}
        elif command.startswith("mkdir -p /usr/pkg/etc/qmailhost/tls && chmod 755"):
            pass
        elif m := re.search(r"openssl req .* -subj /CN=(\S+) .* -out (\S+)\.qmailhost-new", command):
            made = sha256(f"{m[1]} {len(self.executed)}")  # each certificate made is another
            self.cert = {"cn": m[1], "sha256": made, "renew": False}
            self.files[m[2]] = {"sha256": made, "mode": "644", "user": "root", "group": "wheel"}
        elif command.startswith("chmod 644 ") and "mv -f" in command:
            pass  # the self-signed pair moved into place
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
        else:
            raise AssertionError(f"the NetBSD model does not know what this does: {command}")
