"""Operations of qmailhost's own, where pyinfra's stock ones do not fit.

- ``whole_file``: a managed file, shown as a unified diff under ``--diff`` and
  replaced atomically (written beside, then renamed), so a run cut off halfway
  never leaves half a file.
- ``secret_file``: the same for keys and other secrets, but never diffed or printed:
  not even a digest of the content is shown.
- ``stamped``: commands that run only when their stamp (a digest of their inputs)
  differs from the one the host recorded after the last successful run: builds,
  cdb compiles, restarts. The stamp is written last, so an interrupted step reruns.
- ``account_password``: sets a password hash through a file, never a command line,
  and only when the host's hash does not verify the password, or costs fewer rounds than
  ``ROUNDS`` (the hash scheme and the command that applies the file are platform data:
  chpasswd, or NetBSD's master.passwd).
- ``user``/``group``: useradd/groupadd with the platform's flags; ``permissions``: the
  owner and mode of a file a package installed.
"""

from __future__ import annotations

import hashlib
import shlex
from io import BytesIO

from passlib.hash import sha1_crypt, sha512_crypt
from pyinfra import host, logger, state
from pyinfra.api import FactBase, FileUploadCommand, operation
from pyinfra.facts.files import FileContents, FindFiles
from pyinfra.operations.util.files import generate_color_diff

from qmailhost.facts import STAMP_DIR, ManagedTree, cached_fact, covered, host_state, managed_roots
from qmailhost.platform import DEBIAN_ACCOUNTS, DEBIAN_PASSWORD_APPLY, AccountTools, root_group
from qmailhost.platform import current as current_platform
from qmailhost.platform import shell as shell_dialect


class ManagedFile(FactBase):
    """SHA256, mode, owner and group of one file, or None when it is absent."""

    def command(self, path, sha256="sha256sum", stat="stat -c '%a %U %G'"):
        quoted = shlex.quote(path)
        return (f"if [ -f {quoted} ]; then {sha256} < {quoted} | cut -c1-64; "
                f"{stat} {quoted}; fi; true")

    def process(self, output):
        if len(output) < 2:
            return None
        mode, user, group = output[1].split()
        return {"sha256": output[0].strip(), "mode": mode.lstrip("0") or "0", "user": user, "group": group}


def managed_path(path: str) -> dict | None:
    """What PATH is on the host (file, dir or link), from the one ManagedTree listing
    when the platform's managed roots cover it; None when it is absent."""
    platform = current_platform()
    roots = managed_roots(platform) if platform else ()
    if covered(path, roots):
        dialect = shell_dialect()
        return cached_fact(ManagedTree, roots=roots, sha256=dialect.sha256, stat=dialect.stat,
                           gnu=dialect.gnu_find).get(path)
    return None


def managed_file(path: str) -> dict | None:
    """SHA256, mode, owner and group of the file PATH (None: absent), in the current
    host's shell dialect: from the managed tree when it covers PATH, else on its own."""
    if covered_here(path):
        entry = managed_path(path)
        return entry if entry and entry["type"] == "file" else None
    dialect = shell_dialect()
    return host.get_fact(ManagedFile, path=path, sha256=dialect.sha256, stat=dialect.stat)


def files_in(directory: str) -> list[str]:
    """The files directly in DIRECTORY on the host now (to remove the ones no longer wanted):
    from the managed tree when it covers them, else asked alone."""
    platform = current_platform()
    roots = managed_roots(platform) if platform else ()
    if covered(f"{directory}/-", roots):
        dialect = shell_dialect()
        tree = cached_fact(ManagedTree, roots=roots, sha256=dialect.sha256, stat=dialect.stat, gnu=dialect.gnu_find)
        return sorted(path for path, entry in tree.items()
                      if entry["type"] == "file" and path.rsplit("/", 1)[0] == directory)
    return sorted(host.get_fact(FindFiles, path=directory, maxdepth=1) or [])


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _install_commands(dest: str, data: bytes, mode: str, user: str, group: str):
    """Upload beside DEST, set owner and mode there, then rename over DEST. The file beside
    is made empty and mode 600 before it is filled, so what it holds (a key, say) is readable
    by nobody else at any moment, even when a run is cut off right after the upload."""
    temp = f"{dest}.qmailhost-new"
    quoted, quoted_temp = shlex.quote(dest), shlex.quote(temp)
    yield f"mkdir -p {shlex.quote(dest.rsplit('/', 1)[0] or '/')} && {private_file_command(temp)}"
    yield FileUploadCommand(BytesIO(data), temp, remote_temp_filename=temp)
    yield f"chown {user}:{group} {quoted_temp} && chmod {mode} {quoted_temp} && mv -f {quoted_temp} {quoted}"


@operation()
def whole_file(dest: str, content: str, mode: str = "644", user: str = "root", group: str | None = None):
    """Manage DEST as exactly CONTENT (a whole file), with a diff under --diff.
    GROUP defaults to root's group (root on Debian, wheel on NetBSD)."""
    group = group or root_group()
    data = content.encode()
    current = managed_file(dest)
    if current and current["sha256"] == _sha256(data):
        if (current["mode"], current["user"], current["group"]) == (mode.lstrip("0") or "0", user, group):
            host.noop(f"{dest} is up to date")
            return
        yield f"chown {user}:{group} {shlex.quote(dest)} && chmod {mode} {shlex.quote(dest)}"
        return
    if state.config.DIFF:
        old_lines = [line + "\n" for line in (host.get_fact(FileContents, path=dest) or [])] if current else []
        host.log(f"Will {'modify' if current else 'create'} {dest}", logger.info)
        for line in generate_color_diff(old_lines, content.splitlines(keepends=True)):
            logger.info("  %s", line)
        logger.info("")
    yield from _install_commands(dest, data, mode, user, group)


@operation()
def secret_file(dest: str, data: bytes, mode: str = "600", user: str = "root", group: str | None = None):
    """Manage DEST as DATA without ever showing it, nor any digest of it (a password's digest
    is a way to test guesses at it)."""
    group = group or root_group()
    current = managed_file(dest)
    new = _sha256(data)
    if current and current["sha256"] == new:
        if (current["mode"], current["user"], current["group"]) == (mode.lstrip("0") or "0", user, group):
            host.noop(f"{dest} is up to date")
            return
        yield f"chown {user}:{group} {shlex.quote(dest)} && chmod {mode} {shlex.quote(dest)}"
        return
    host.log(f"Will {'replace' if current else 'write'} secret {dest} (its content is never shown)", logger.info)
    yield from _install_commands(dest, data, mode, user, group)


def private_file_command(path: str) -> str:
    """The command making PATH an empty file only its owner (root) can read, before a secret fills it."""
    quoted = shlex.quote(path)
    return f"(umask 077 && rm -f {quoted} && : > {quoted})"


def differs(path: str, content: str | bytes | None) -> bool:
    """Will this run change PATH (CONTENT; None: absent) on the host? Decided when the deploy
    is read, from the same facts the file's own operation uses (its mode and owner aside)."""
    current = managed_file(path)
    if content is None:
        return current is not None
    data = content.encode() if isinstance(content, str) else content
    return current is None or current["sha256"] != _sha256(data)


@operation()
def put_file(dest: str, src: str, mode: str = "644", user: str = "root", group: str | None = None):
    """Upload the local file SRC as DEST when their SHA256 differ, atomically."""
    with open(src, "rb") as handle:
        data = handle.read()
    current = managed_file(dest)
    if current and current["sha256"] == _sha256(data):
        host.noop(f"{dest} is up to date")
        return
    yield from _install_commands(dest, data, mode, user, group or root_group())


@operation()
def stamped(stamp: str, inputs: str, commands: list[str], description: str = "", lock: str | None = None,
            rewritten: bool = False, measured: tuple[str, str | None] | None = None):
    """Run COMMANDS when the host's stamp STAMP does not hold the digest of INPUTS, or when
    REWRITTEN (this run rewrites something they depend on, which the host has otherwise).
    MEASURED (a shell command printing a digest of files on the host, and that digest now,
    None when this run makes them anew) joins the stamp as measured on the host when it is
    recorded, so files made on the host count by their bytes. With LOCK, each command runs
    under flock(1) on that file, so a remnant of an interrupted run still at work finishes first."""
    digest = stamp_digest(inputs)
    recorded = host_state()["stamps"].get(stamp)
    wanted = digest if measured is None else f"{digest} {measured[1]}"
    if recorded == wanted and not rewritten and (measured is None or measured[1] is not None):
        host.noop(f"{description or stamp} is current (stamp {digest[:8]})")
        return
    why = "what it reads was rewritten" if recorded == wanted else \
        f"stamp {recorded and recorded[:8]} → {digest[:8]}"
    host.log(f"Will {description or 'run ' + stamp} ({why})", logger.info)
    value = digest if measured is None else f'"{digest} $({measured[0]})"'
    yield from stamp_commands(stamp, value, commands, lock)


def stamp_digest(inputs: str) -> str:
    return _sha256(inputs.encode())[:32]


def stamp_commands(stamp: str, digest: str, commands: list[str], lock: str | None = None):
    """COMMANDS between removing STAMP and recording DIGEST in it (an interrupted run reruns them)."""
    yield clear_stamps(stamp)
    for command in commands:
        yield f"flock {lock} sh -c {shlex.quote(command)}" if lock else command
    yield record_stamp(stamp, digest)


def clear_stamps(*stamps: str) -> str:
    """The command removing STAMPS: what they recorded must be done again."""
    return f"mkdir -p {STAMP_DIR} && rm -f " + " ".join(f"{STAMP_DIR}/{stamp}" for stamp in stamps)


def remeasure_stamp(stamp: str, measure: str) -> str:
    """The command measuring again the measured part of STAMP (see stamped's MEASURED) after
    something else changed those files and restarted what depends on them (restore.py)."""
    return (f"s={STAMP_DIR}/{stamp}; if [ -f $s ]; then echo \"$(cut -d' ' -f1 $s) $({measure})\" > $s.new "
            "&& mv -f $s.new $s; fi")


def record_stamp(stamp: str, value: str) -> str:
    """The command recording VALUE (a shell word) as STAMP, atomically: the last step of what it stamps."""
    path = f"{STAMP_DIR}/{stamp}"
    return f"echo {value} > {path}.new && mv -f {path}.new {path}"


# passlib handlers by the platform's scheme name (qmailhost/platform.py): Debian's shadow
# file takes sha512-crypt ($6$), NetBSD's master.passwd its native sha1-crypt ($sha1$).
# (yescrypt, Debian's own default, is neither in passlib nor in NetBSD's crypt(3).)
_SCHEMES = {"sha512_crypt": sha512_crypt, "sha1_crypt": sha1_crypt}
_PREFIXES = {"sha512_crypt": "$6$", "sha1_crypt": "$sha1$"}
# The rounds of every new hash, and the fewest a host's hash may have: one with fewer is
# made again at the next run (the password is known then), so a host's old hashes (glibc's
# default 5000 rounds, NetBSD's passwd about 24680) are replaced once. Each costs about
# 0.4 s of passlib on the laptop per account and run (to check the host's hash), and a
# few tenths of a second of crypt(3) on the host per login.
ROUNDS = {"sha512_crypt": 500_000, "sha1_crypt": 500_000}


def password_hash(password: str, salt: str | None = None, scheme: str = "sha512_crypt",
                  rounds: int | None = None) -> str:
    """PASSWORD hashed with SCHEME: a new hash (ROUNDS), or with SALT and ROUNDS to check an existing one."""
    settings = {"rounds": rounds or ROUNDS[scheme]}
    if salt is not None:
        settings["salt"] = salt
    return _SCHEMES[scheme].using(**settings).hash(password)


def hash_settings(recorded: dict | None, scheme: str = "sha512_crypt") -> tuple[int, str] | None:
    """(rounds, salt) of the host's hash from its salt field ("$6$[rounds=N$]SALT" with
    glibc's 5000 rounds unsaid; "$sha1$N$SALT"), or None when it is not one of SCHEME's
    that passlib can compute."""
    if not recorded or not recorded["salt"].startswith(_PREFIXES[scheme]):
        return None
    fields = recorded["salt"].split("$")[2:]
    if scheme == "sha512_crypt":
        rounds = "5000"
        if len(fields) == 2 and fields[0].startswith("rounds="):
            rounds = fields.pop(0).removeprefix("rounds=")
    else:
        rounds = fields.pop(0) if len(fields) == 2 else ""
    handler = _SCHEMES[scheme]
    if len(fields) != 1 or not rounds.isdigit() or int(rounds) > handler.max_rounds or not fields[0] \
            or any(c not in handler.salt_chars for c in fields[0]):
        return None
    return int(rounds), fields[0]


def password_matches(password: str, recorded: dict | None, scheme: str = "sha512_crypt") -> bool:
    """Does the host's hash (salt and SHA256 of the whole hash) verify PASSWORD, at no fewer
    rounds than ROUNDS? A weaker one counts as not verifying, so it is made again."""
    found = hash_settings(recorded, scheme)
    if found is None or found[0] < ROUNDS[scheme]:
        return False
    rounds, salt = found
    return _sha256(password_hash(password, salt=salt, scheme=scheme, rounds=rounds).encode()) == recorded["hash_sha256"]


@operation()
def account_password(user: str, password: str, source: str, scheme: str = "sha512_crypt",
                     apply: str = DEBIAN_PASSWORD_APPLY):
    """Set USER's password hash from PASSWORD (from SOURCE) when the host's does not verify it,
    or is weaker than ROUNDS. The hash travels in an uploaded "user:hash" file that APPLY
    ({file}) feeds to the password database and removes; never on a command line."""
    recorded = host_state()["accounts"].get(user)
    if password_matches(password, recorded, scheme):
        host.noop(f"password of {user} verifies ({source})")
        return
    found = hash_settings(recorded, scheme)
    if found and found[0] < ROUNDS[scheme]:
        host.log(f"Will hash the password of {user} again: {found[0]} rounds on the host, "
                 f"fewer than {ROUNDS[scheme]}", logger.info)
    line = f"{user}:{password_hash(password, scheme=scheme)}\n".encode()
    temp = f"/root/.qmailhost-chpasswd-{user}"
    yield private_file_command(temp)
    yield FileUploadCommand(BytesIO(line), temp, remote_temp_filename=temp)
    yield apply.format(file=temp)


class Accounts(FactBase):
    """Every user's passwd entry (never the shadow entry) and every group, in one round
    trip: {"users": {name: {uid, home, shell, group}}, "groups": {name: gid}}."""

    def command(self):
        return "getent passwd; echo '::groups::'; getent group; true"

    def process(self, output):
        users, groups, in_groups = {}, {}, False
        for line in output:
            if line == "::groups::":
                in_groups = True
                continue
            fields = line.split(":")
            if in_groups and len(fields) >= 3:
                groups[fields[0]] = fields[2]
            elif not in_groups and len(fields) >= 7:
                users[fields[0]] = {"uid": fields[2], "gid": fields[3], "home": fields[5], "shell": fields[6]}
        names = {gid: name for name, gid in groups.items()}
        for entry in users.values():
            entry["group"] = names.get(entry.pop("gid"), "")
        return {"users": users, "groups": groups}


def accounts() -> dict:
    return cached_fact(Accounts)


@operation()
def group(group: str, system: bool = True, tools: AccountTools = DEBIAN_ACCOUNTS):
    """GROUP exists (groupadd, with the platform's system-group flags)."""
    if group in accounts()["groups"]:
        host.noop(f"group {group} exists")
        return
    flags = list(tools.system_group) if system else []
    yield " ".join(["groupadd", *flags, shlex.quote(group)])


@operation()
def user(user: str, group: str | None, home: str, shell: str, system: bool = False, create_home: bool = False,
         tools: AccountTools = DEBIAN_ACCOUNTS):
    """USER exists with this primary GROUP, HOME and SHELL. Unlike server.user, it never
    reads /etc/shadow and never changes the owner of an existing home directory."""
    current = accounts()["users"].get(user)
    quoted = shlex.quote(user)
    if current is None:
        flags = list(tools.system_user) if system else []
        flags += ["-g", shlex.quote(group)] if group else list(tools.own_group)
        flags += ["-d", shlex.quote(home), "-s", shlex.quote(shell)]
        flags += list(tools.create_home if create_home else tools.no_home)
        yield f"useradd {' '.join(flags)} {quoted}"
        return
    changes = []
    if current["home"] != home:
        changes += ["-d", shlex.quote(home)]
    if current["shell"] != shell:
        changes += ["-s", shlex.quote(shell)]
    if group and current["group"] != group:
        changes += ["-g", shlex.quote(group)]
    if not changes:
        host.noop(f"user {user} exists")
        return
    yield f"usermod {' '.join(changes)} {quoted}"


@operation()
def decided(command: str, needed: bool, why_not: str):
    """COMMAND when NEEDED, decided once by its caller from the facts (so the dry run and the
    run agree, also under -y); else nothing, saying WHY_NOT (an ACME order, a DKIM key)."""
    if not needed:
        host.noop(why_not)
        return
    yield command


@operation()
def permissions(path: str, mode: str, user: str, group: str):
    """PATH (installed by a package) has this owner, group and MODE (e.g. 4750)."""
    current = managed_file(path)
    if current and (current["mode"], current["user"], current["group"]) == (mode.lstrip("0"), user, group):
        host.noop(f"{path} is {mode} {user}:{group}")
        return
    yield f"chown {user}:{group} {shlex.quote(path)} && chmod {mode} {shlex.quote(path)}"


@operation()
def absent_file(path: str):
    """PATH does not exist; under --diff the removal shows as a diff of every line."""
    current = managed_file(path)
    if current is None:
        host.noop(f"{path} is absent")
        return
    if state.config.DIFF:
        host.log(f"Will remove {path}", logger.info)
        old_lines = [line + "\n" for line in (host.get_fact(FileContents, path=path) or [])]
        for line in generate_color_diff(old_lines, []):
            logger.info("  %s", line)
        logger.info("")
    yield f"rm -f {shlex.quote(path)}"


@operation()
def directory(path: str, user: str, group: str, mode: str):
    """PATH is a directory with this owner and MODE (never touching what is inside)."""
    current = managed_path(path) if covered_here(path) else _stock_directory(path)
    quoted = shlex.quote(path)
    if current and current.get("type", "dir") == "dir" and \
            (current["mode"], current["user"], current["group"]) == (mode.lstrip("0"), user, group):
        host.noop(f"{path} exists")
        return
    if not current:
        yield f"mkdir -p {quoted}"
    yield f"chown {user}:{group} {quoted} && chmod {mode} {quoted}"


@operation()
def link(path: str, target: str):
    """PATH is a symbolic link to TARGET (replaced atomically)."""
    current = managed_path(path) if covered_here(path) else _stock_link(path)
    if current and current.get("type", "link") == "link" and current["target"] == target:
        host.noop(f"{path} points at {target}")
        return
    quoted = shlex.quote(path)
    yield f"ln -sfn {shlex.quote(target)} {quoted}.qmailhost-new && mv -fT {quoted}.qmailhost-new {quoted}"


def covered_here(path: str) -> bool:
    platform = current_platform()
    return bool(platform and covered(path, managed_roots(platform)))


def _stock_directory(path: str) -> dict | None:
    from pyinfra.facts.files import Directory

    found = host.get_fact(Directory, path=path)
    if not found:
        return None
    return {"type": "dir", "mode": str(found["mode"]), "user": found["user"], "group": found["group"]}


def _stock_link(path: str) -> dict | None:
    from pyinfra.facts.files import Link

    found = host.get_fact(Link, path=path)
    return {"type": "link", "target": found["link_target"]} if found else None


# --- root's crontab ---------------------------------------------------------------------------


def cron(name: str, command: str, cron_name: str, minute: str, hour: str = "*", present: bool = True) -> None:
    """Root's crontab line running COMMAND, under pyinfra's name comment for CRON_NAME
    (server.crontab). Taken away (PRESENT false), its name comment goes with it, in one
    rewrite: pyinfra's own removal leaves the comment, which its Crontab fact then hangs on the
    next entry, so a named entry after it would be taken for this one (and removed next run)."""
    from pyinfra.facts.crontab import Crontab
    from pyinfra.operations import server

    if present:
        server.crontab(name=name, command=command, cron_name=cron_name, minute=minute, hour=hour, user="root")
        return
    label = f"# pyinfra-name={cron_name}"
    listed = host.get_fact(Crontab, user="root")
    found = any(label in (item.get("comments") or []) for item in (listed.commands if listed else []))
    scripts = " ".join(f"-e {shlex.quote(f'/{_basic_re(text)}/d')}" for text in (f"^{label}$", command))
    decided(name=name, needed=found, why_not="no such cron entry", command=(
        f"t=$(mktemp) && crontab -l -u root > $t && sed -i.bak {scripts} $t && crontab -u root $t; "
        "s=$?; rm -f $t $t.bak; exit $s"))


def _basic_re(text: str) -> str:
    """TEXT as a sed basic RE matching it literally (its ^ and $ anchors kept), / escaped."""
    head, tail = ("^", text[1:]) if text.startswith("^") else ("", text)
    tail, end = (tail[:-1], "$") if tail.endswith("$") else (tail, "")
    return head + "".join("\\" + c if c in "\\/.*[]^$" else c for c in tail) + end
