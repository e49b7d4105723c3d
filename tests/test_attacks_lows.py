"""The Low findings of the security review (issue 24) that need no host: stunnel's account,
the cost of a password hash, and TMDA's retirement meeting a user's symbolic links.

- stunnel runs as an account of its own, the one its package makes (Debian's stunnel4:
  stunnel4; pkgsrc's security/stunnel: stunnel), never the shared nobody, and with the key's
  group, so it still reads the key (and again on a reload).
- A new password hash costs at least MIN_ROUNDS rounds, in the platform's scheme. A host
  hash of the right password with fewer rounds (glibc's default 5000, NetBSD's passwd
  about 24680) is made again at the next deploy, once: the hash it leaves verifies, and
  the run after plans nothing.
- TMDA's retirement runs as root over every home. A user who plants a symbolic link where
  a TMDA piece would be (~/.tmda, a .qmail file, the file a rewrite is written to), or a
  hard link to root's file, gets nothing outside their home archived, edited or removed:
  the script leaves it alone and says so, and still retires the real pieces beside it.
  The scripts run here for real (sh, as on the host), over a temporary directory that
  stands for the homes and the archive (their `tmda_homes` and `tmda_archive` knobs);
  NetBSD's stat(1) is modelled over GNU stat.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path
from unittest import mock

import pytest
from passlib.hash import sha1_crypt, sha512_crypt

from harness.plan_harness import plan_operation
from qmailhost import ops
from qmailhost import platform as platforms
from qmailhost.files import path as files_path
from qmailhost.settings import Settings
from tasks import stunnel, submission, tls

# --- stunnel's own account

# The account each platform's stunnel package makes (Debian: stunnel4's sysusers.d file;
# pkgsrc security/stunnel: STUNNEL_USER), and so none other runs as it.
PACKAGE_ACCOUNT = {"debian": "stunnel4", "netbsd": "stunnel"}
SHARED = {"nobody", "root", "daemon", "nogroup", "qmaild", "qmailr", "qmails"}


def _stunnel_plan(platform_name: str) -> tuple[str, str]:
    """(run script, config) that tasks/stunnel.py hands to the platform for stunnel."""
    platform = platforms.debian("13") if platform_name == "debian" else platforms.netbsd("10")
    settings = Settings.from_host_data({"hostname": "mail.example.org",
                                        "accounts": [{"name": "alice", "password_env": "QMAILHOST_TEST_PASSWORD"}]})
    got = {}
    with mock.patch.object(stunnel.ops, "differs", return_value=False), \
            mock.patch.object(stunnel.ops, "whole_file", lambda **kwargs: got.setdefault("config", kwargs["content"])), \
            mock.patch.object(stunnel.services, "declare", lambda _platform, service: got.setdefault("run", service.run)):
        stunnel.configure.__wrapped__(platform, settings, tls.Pair("fingerprint"), submission.mode_of(settings))
    return got["run"], got["config"]


@pytest.mark.parametrize("platform_name", PACKAGE_ACCOUNT)
def test_stunnel_runs_as_its_own_account_with_the_key_group(platform_name, monkeypatch):
    monkeypatch.setenv("QMAILHOST_TEST_PASSWORD", "correct horse")
    account = PACKAGE_ACCOUNT[platform_name]
    run, config = _stunnel_plan(platform_name)
    assert account not in SHARED
    if platform_name == "debian":  # never root: setpriv from the start
        assert f"exec setpriv --reuid={account} --regid={tls.KEY_GROUP} --clear-groups " in run
        assert "setuid =" not in config
        sysusers = Path("/usr/lib/sysusers.d/stunnel4.conf")  # where this machine has the package
        if sysusers.exists():
            assert f"u {account} " in sysusers.read_text(), "the stunnel4 package makes this account"
    else:  # reads the key as root, then stunnel's own setuid
        assert f"\nsetuid = {account}\nsetgid = {tls.KEY_GROUP}\n" in config
    for shared in SHARED:
        assert f"--reuid={shared} " not in run and f"setuid = {shared}\n" not in config


# --- password hashes: cost, and a weak host hash made again once

MIN_ROUNDS = 500_000
PASSWORD = "correct horse"
SCHEMES = {"sha512_crypt": (sha512_crypt, platforms.debian("13")), "sha1_crypt": (sha1_crypt, platforms.netbsd("10"))}
# What the host has from before: its own tools' default cost (glibc's crypt: 5000 rounds,
# written without "rounds="; NetBSD's passwd: pw_gensalt's about 24680).
WEAK = {"sha512_crypt": sha512_crypt.using(rounds=5000), "sha1_crypt": sha1_crypt.using(rounds=24680)}


def _recorded(hashed: str) -> dict:
    """The host's hash as tasks/accounts.py's probe records it: salt field and SHA256, never the hash."""
    return {"salt": hashed.rsplit("$", 1)[0], "hash_sha256": hashlib.sha256(hashed.encode()).hexdigest()}


def _plan_password(scheme: str, recorded: dict | None) -> tuple[list, str | None]:
    platform = SCHEMES[scheme][1]
    accounts = {"alice": recorded} if recorded else {}

    def answer(name, _kwargs):
        assert name == "HostState", name
        return {"stamps": {}, "accounts": accounts, "cert": None}

    return plan_operation(ops.account_password, {"user": "alice", "password": PASSWORD, "source": "env:ALICE",
                                                 "scheme": scheme, "apply": platform.password_apply}, answer)


def _uploaded_hash(commands: list) -> str:
    line = next(c[1] for c in commands if isinstance(c, list) and c[0] == "upload")
    user, hashed = line.strip().split(":", 1)
    assert user == "alice"
    return hashed


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_new_hash_costs_at_least_the_minimum_rounds(scheme):
    handler = SCHEMES[scheme][0]
    hashed = _uploaded_hash(_plan_password(scheme, None)[0])
    assert handler.from_string(hashed).rounds >= MIN_ROUNDS
    assert handler.verify(PASSWORD, hashed)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_weak_host_hash_is_made_again_once(scheme):
    handler = SCHEMES[scheme][0]
    weak = WEAK[scheme].hash(PASSWORD)
    assert handler.verify(PASSWORD, weak), "the host's hash is of the right password: only its cost is wrong"
    commands, _ = _plan_password(scheme, _recorded(weak))
    assert commands, "a hash with too few rounds is made again while the password is known"
    strong = _uploaded_hash(commands)
    assert handler.from_string(strong).rounds >= MIN_ROUNDS and handler.verify(PASSWORD, strong)
    # As the host records it after the run (sha512-crypt now says "rounds="): the next run plans nothing.
    assert _plan_password(scheme, _recorded(strong)) == ([], "password of alice verifies (env:ALICE)")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_costlier_host_hash_is_kept(scheme):
    handler = SCHEMES[scheme][0]
    costlier = handler.using(rounds=MIN_ROUNDS + 100_000).hash(PASSWORD)
    assert _plan_password(scheme, _recorded(costlier)) == ([], "password of alice verifies (env:ALICE)")


# --- TMDA's retirement and users' symbolic links

SCRIPTS = {"debian": ("tmda/pieces.sh", "tmda/retire.sh"), "netbsd": ("tmda/netbsd-pieces.sh", "tmda/netbsd-retire.sh")}
SECRET = "root's secret: never in a user's home or the archive\n"
# The tools the scripts find first in PATH, each a moment a user can act in, when a test asks:
# - stat(1): the first one once pieces.tar is there (between the archive and the rewrite),
#   race_path becomes the user's link (race_kind: symbolic, or hard) to race_target. Then
#   GNU stat on Debian; on NetBSD, NetBSD's stat over GNU stat: -f FORMAT (BSD's %OLp %Su
#   %Sg %l %HT spelt GNU's way, the type as BSD names it), -L, and with no operand the file
#   on standard input.
# - grep(1) -v (the rewrite, its new file made): that new file in race_new's directory
#   becomes the user's link to race_new_target.
# - mktemp(1) -u: guessed_name, where the user has planted a link (as if they had guessed
#   the name the rewrite is written to).
STAT = r"""#!/bin/sh
if [ -n "${race_path:-}" ] && [ ! -L "$race_path" ] && [ -n "$(ls "$tmda_archive"/*/pieces.tar 2>/dev/null)" ] \
    && [ ! -e "$race_path.raced" ]; then
  uid=$({stat} -c %u "$race_path") && : > "$race_path.raced"
  if [ "$race_kind" = hard ]; then ln -f "$race_target" "$race_path"
  else rm -f "$race_path" && ln -s "$race_target" "$race_path" && chown -h "$uid" "$race_path"; fi
fi
"""
GREP = r"""#!/bin/sh
if [ "$1" = -v ] && [ -n "${race_new:-}" ]; then
  for new in "$race_new"/.qmail*.qmailhost-*; do
    uid=$({stat} -c %u "$race_new")
    [ -f "$new" ] && rm -f "$new" && ln -s "$race_new_target" "$new" && chown -h "$uid" "$new"
  done
fi
exec {grep} "$@"
"""
GNU_STAT = 'exec {stat} "$@"\n'
NETBSD_STAT = r"""follow= format=
while [ $# -gt 0 ]; do
  case $1 in -L) follow=-L; shift ;; -f) format=$2; shift 2 ;; --) shift; break ;; *) break ;; esac
done
format=$(printf '%s' "$format" | sed -e 's/%OLp/%a/g' -e 's/%Su/%U/g' -e 's/%Sg/%G/g' -e 's/%l/%h/g' -e 's/%HT/%F/g')
[ $# -gt 0 ] || set -- -
{stat} $follow -c "$format" "$@" | sed -e 's/regular empty file/Regular File/' -e 's/regular file/Regular File/' \
  -e 's/directory/Directory/' -e 's/symbolic link/Symbolic Link/'
"""
MKTEMP = r"""#!/bin/sh
if [ "$1" = -u ] && [ -n "${guessed_name:-}" ]; then echo "$guessed_name"; exit 0; fi
exec {mktemp} "$@"
"""


class Host:
    """A temporary directory standing for a host's homes (HOMES/*) and TMDA's archive."""

    def __init__(self, root: Path, platform_name: str):
        self.root, self.platform_name = root, platform_name
        self.homes, self.outside, self.archive = root / "home", root / "outside", root / "archive"
        self.scripts, self.bin = root / "scripts", root / "bin"
        for folder in (self.homes, self.outside, self.scripts, self.bin):
            folder.mkdir()
        for name in SCRIPTS[platform_name]:
            shutil.copy(files_path(name), self.scripts / Path(name).name)
        stat_shim = STAT + (NETBSD_STAT if platform_name == "netbsd" else GNU_STAT)
        for name, text in (("stat", stat_shim), ("grep", GREP), ("mktemp", MKTEMP)):
            for tool in ("stat", "grep", "mktemp"):
                text = text.replace(f"{{{tool}}}", shutil.which(tool))
            (self.bin / name).write_text(text)
            (self.bin / name).chmod(0o755)
        self.env = {**os.environ, "PATH": f"{self.bin}:{os.environ['PATH']}", "LC_ALL": "C",
                    "tmda_homes": f"{self.homes}/*", "tmda_archive": str(self.archive)}

    def home(self, name: str) -> Path:
        home = self.homes / name
        home.mkdir()
        return home

    def file(self, path: Path, content: str, mode: int = 0o644) -> Path:
        path.write_text(content)
        path.chmod(mode)
        return path

    def _run(self, which: int) -> subprocess.CompletedProcess:
        script = self.scripts / Path(SCRIPTS[self.platform_name][which]).name
        return subprocess.run(["sh", str(script)], env=self.env, cwd=self.root, capture_output=True, text=True,
                              timeout=60)

    def pieces(self) -> list[tuple[str, str]]:
        listed = self._run(0)
        assert listed.returncode == 0, listed.stderr
        return [tuple(line.split("\t", 1)) for line in listed.stdout.splitlines()]

    def retire(self) -> str:
        """Runs the retirement, once the listing shows it would touch nothing outside ROOT."""
        foreign = [path for _, path in self.pieces() if not path.startswith(f"{self.root}/")]
        if foreign:
            pytest.fail(f"this machine has TMDA pieces of its own, not retiring them here: {foreign}")
        done = subprocess.run(["sh", str(self.scripts / Path(SCRIPTS[self.platform_name][1]).name)], env=self.env,
                              cwd=self.root, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    def archived(self) -> dict[str, bytes | str]:
        """Every member of the retirement's pieces.tar: path -> content (a link: "-> target")."""
        tars = list(self.archive.glob("*/pieces.tar"))
        assert len(tars) == 1, tars
        members = {}
        with tarfile.open(tars[0]) as archive:
            for member in archive.getmembers():
                extracted = archive.extractfile(member) if member.isfile() else None
                members["/" + member.name] = extracted.read() if extracted else f"-> {member.linkname}"
        return members

    def manifest(self) -> dict[str, str]:
        """The retirement's MANIFEST: path -> sha256 of each file ("link" for a link)."""
        manifests = list(self.archive.glob("*/MANIFEST"))
        assert len(manifests) == 1, manifests
        return {line.split("\t")[1]: line.split("\t")[2] for line in manifests[0].read_text().splitlines()}

    def holding(self, text: str) -> list[Path]:
        """Every regular file under the homes (links not followed) whose content holds TEXT."""
        found = []
        for folder, _, names in os.walk(self.homes):
            for name in names:
                path = Path(folder) / name
                if not path.is_symlink() and path.is_file() and text in path.read_text(errors="replace"):
                    found.append(path)
        return found


def _snapshot(path: Path) -> tuple:
    """What must not change of a file outside the homes: inode, mode, owner and content."""
    info = path.lstat()
    return info.st_ino, info.st_mode, info.st_uid, path.read_bytes()


@pytest.fixture(params=SCRIPTS, ids=list(SCRIPTS))
def host(request, tmp_path):
    return Host(tmp_path, request.param)


def _a_real_piece(host: Host, home: Path) -> Path:
    """A .qmail file that pipes to tmda-filter, as TMDA left it: retired whatever else is planted."""
    return host.file(home / ".qmail-lists", "|preline /usr/local/bin/tmda-filter\n./Maildir/\n", 0o600)


def _assert_real_piece_retired(host: Host, real: Path, output: str) -> None:
    assert real.read_text() == "./Maildir/\n", output
    assert host.archived()[str(real)] == b"|preline /usr/local/bin/tmda-filter\n./Maildir/\n"


def test_a_dotqmail_linked_to_a_root_file_is_left_alone(host):
    mallory = host.home("mallory")
    real = _a_real_piece(host, mallory)
    shadow = host.file(host.outside / "shadow", "root:$6$x:1:0:99999:7:::\ntmda-filter in a GECOS\n" + SECRET, 0o600)
    before = _snapshot(shadow)
    (mallory / ".qmail").symlink_to(shadow)
    output = host.retire()
    assert _snapshot(shadow) == before
    assert os.readlink(mallory / ".qmail") == str(shadow), "the link is left as it is"
    assert host.holding(SECRET) == [], "no copy of the file it points at lands in the home"
    archived = host.archived()
    assert str(mallory / ".qmail") not in archived and not any(SECRET.encode() in c for c in archived.values()
                                                                if isinstance(c, bytes))
    assert f"left alone: {mallory}/.qmail" in output
    _assert_real_piece_retired(host, real, output)


def test_a_tmda_dir_linked_out_of_its_home_is_left_alone(host):
    mallory = host.home("mallory")
    real = _a_real_piece(host, mallory)
    elsewhere = host.outside / "etc"
    elsewhere.mkdir()
    config = host.file(elsewhere / "config", SECRET, 0o600)
    before = _snapshot(config)
    (mallory / ".tmda").symlink_to(elsewhere)
    output = host.retire()
    assert _snapshot(config) == before
    assert os.readlink(mallory / ".tmda") == str(elsewhere), "the link is left as it is"
    assert not [path for path in host.archived() if path.startswith(f"{mallory}/.tmda")]
    assert f"left alone: {mallory}/.tmda" in output
    _assert_real_piece_retired(host, real, output)


def test_a_link_planted_where_the_rewrite_is_written_is_never_written_through(host):
    mallory = host.home("mallory")
    real = host.file(mallory / ".qmail", "|/usr/local/bin/tmda-filter\n./Maildir/\n", 0o600)
    victim = host.file(host.outside / "passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644)
    before = _snapshot(victim)
    (mallory / ".qmail.qmailhost-new").symlink_to(victim)  # the name the rewrite was written to
    output = host.retire()
    assert _snapshot(victim) == before
    assert real.read_text() == "./Maildir/\n" and not real.is_symlink(), output


ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="a home of another user, and root's file in it, need root")


@pytest.mark.parametrize("kind", ["symbolic", pytest.param("hard", marks=ROOT_ONLY)])
def test_a_link_swapped_in_after_the_listing_is_not_read_through(host, kind):
    """The user's .qmail was a file of theirs when listed, and is their link to root's file
    by the time it is rewritten: nothing of root's file is read into the home."""
    mallory = host.home("mallory")
    dotqmail = host.file(mallory / ".qmail", "|/usr/local/bin/tmda-filter\n./Maildir/\n", 0o600)
    if kind == "hard":  # a home and .qmail of a user's own, a file of root's
        os.chown(mallory, 4242, 4242)
        os.chown(dotqmail, 4242, 4242)
    shadow = host.file(host.outside / "shadow", "tmda-filter in a GECOS\n" + SECRET, 0o600)
    before = _snapshot(shadow)
    host.env.update(race_path=str(dotqmail), race_target=str(shadow), race_kind=kind)
    output = host.retire()
    assert (dotqmail.is_symlink() if kind == "symbolic" else dotqmail.stat().st_ino == shadow.stat().st_ino), \
        "the race was run"
    assert _snapshot(shadow) == before
    assert [path for path in host.holding(SECRET) if path.stat().st_ino != shadow.stat().st_ino] == [], output
    assert f"left alone: {dotqmail}" in output
    assert host.archived()[str(dotqmail)] == b"|/usr/local/bin/tmda-filter\n./Maildir/\n", "archived as listed"


@ROOT_ONLY
def test_a_link_swapped_for_the_new_file_is_not_followed(host):
    """The new file of the rewrite is visible in the user's home: made their link to root's
    file before its owner is set, it is that link that changes owner, not root's file."""
    mallory = host.home("mallory")
    os.chown(mallory, 4242, 4242)
    dotqmail = host.file(mallory / ".qmail", "|/usr/local/bin/tmda-filter\n./Maildir/\n", 0o600)
    os.chown(dotqmail, 4242, 4242)
    shadow = host.file(host.outside / "shadow", SECRET, 0o600)
    before = _snapshot(shadow)
    host.env.update(race_new=str(mallory), race_new_target=str(shadow))
    host.retire()
    assert os.readlink(dotqmail) == str(shadow), "the race was run (and the user's link is theirs to keep)"
    assert _snapshot(shadow) == before


def test_a_link_at_a_guessed_name_is_never_written_through(host):
    """Were the new file's name guessed and a link planted there, the rewrite is refused
    (created exclusively), not written through the link."""
    mallory = host.home("mallory")
    dotqmail = host.file(mallory / ".qmail", "|/usr/local/bin/tmda-filter\n./Maildir/\n", 0o600)
    victim = host.file(host.outside / "passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644)
    before = _snapshot(victim)
    guessed = mallory / ".qmail.qmailhost-guessed"
    guessed.symlink_to(victim)
    host.env.update(guessed_name=str(guessed))
    output = host.retire()
    assert _snapshot(victim) == before
    assert dotqmail.read_text() == "|/usr/local/bin/tmda-filter\n./Maildir/\n", "left as it was"
    assert f"left alone: {dotqmail}" in output


def test_a_home_that_is_a_link_is_not_entered(host):
    elsewhere = host.outside / "root-home"
    elsewhere.mkdir()
    (elsewhere / ".tmda").mkdir()
    secret = host.file(elsewhere / ".tmda" / "crypt_key", SECRET, 0o600)
    dotqmail = host.file(elsewhere / ".qmail", "|/usr/local/bin/tmda-filter\n" + SECRET, 0o600)
    before = (_snapshot(secret), _snapshot(dotqmail))
    (host.homes / "linked").symlink_to(elsewhere)
    real = _a_real_piece(host, host.home("mallory"))
    output = host.retire()
    assert (_snapshot(secret), _snapshot(dotqmail)) == before
    assert not [path for path in host.archived() if path.startswith(f"{host.homes}/linked")]
    assert f"left alone: {host.homes}/linked" in output
    _assert_real_piece_retired(host, real, output)


def test_links_inside_a_real_tmda_dir_are_archived_and_removed_as_links(host):
    mallory = host.home("mallory")
    (mallory / ".tmda").mkdir()
    host.file(mallory / ".tmda" / "config", "CRYPT_KEY_FILE = \"~/.tmda/crypt_key\"\n", 0o600)
    elsewhere = host.outside / "root"
    elsewhere.mkdir()
    secret = host.file(elsewhere / "id_ed25519", SECRET, 0o600)
    before = _snapshot(secret)
    (mallory / ".tmda" / "lists").symlink_to(elsewhere)
    (mallory / ".tmda" / "whitelist").symlink_to(secret)
    output = host.retire()
    assert _snapshot(secret) == before and sorted(elsewhere.iterdir()) == [secret]
    assert not (mallory / ".tmda").exists(), output
    archived = host.archived()
    assert archived[f"{mallory}/.tmda/lists"] == f"-> {elsewhere}"
    assert archived[f"{mallory}/.tmda/whitelist"] == f"-> {secret}"
    assert not [path for path in archived if path.startswith(f"{mallory}/.tmda/lists/")]
    manifest = host.manifest()
    assert (manifest[f"{mallory}/.tmda/lists"], manifest[f"{mallory}/.tmda/whitelist"]) == ("link", "link")
    assert not [path for path in manifest if path.startswith(f"{mallory}/.tmda/lists/")]


@ROOT_ONLY
def test_a_hard_link_to_a_root_file_in_a_users_home_is_left_alone(host):
    mallory = host.home("mallory")
    os.chown(mallory, 4242, 4242)
    real = _a_real_piece(host, mallory)
    os.chown(real, 4242, 4242)
    shadow = host.file(host.outside / "shadow", "tmda-filter in a GECOS\n" + SECRET, 0o600)
    os.link(shadow, mallory / ".qmail")  # what a user can do where hard links are not protected (NetBSD)
    before = _snapshot(shadow)
    output = host.retire()
    assert _snapshot(shadow) == before
    assert (mallory / ".qmail").stat().st_ino == shadow.stat().st_ino, "the link is left as it is"
    assert str(mallory / ".qmail") not in host.archived()
    assert f"left alone: {mallory}/.qmail" in output
    _assert_real_piece_retired(host, real, output)
    assert (real.stat().st_uid, stat.S_IMODE(real.stat().st_mode)) == (4242, 0o600), "kept its owner and mode"
