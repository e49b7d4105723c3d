"""TMDA: retired with an archive in every mode but "tmda"; restored from it in mode "tmda".

Before the submission refactor, TMDA's tmda-ofmipd did SMTP AUTH behind stunnel on
127.0.0.1:8025 and tmda-filter sat in users' .qmail files. In every mode but "tmda",
each piece found (service or rc.d script, its rc.conf.d file, the stunnel stanza for
8025, /etc/tmdarc, TMDA's config directory, ~/.tmda, tmda-filter lines, programs,
package, the tofmipd user) is archived under /var/lib/qmailhost/tmda-archive/<time>/
and removed. What "a TMDA piece" is, is written once per platform, in the script
that lists them (pieces.sh, netbsd-pieces.sh): retirement removes what it lists, and
the status check reports what it still lists. Both run as root over users' homes and
follow none of their links: a ~/.tmda or .qmail file is a piece only when it is no link
and its home's owner's, a .qmail file is rewritten through one descriptor into a file
made exclusively, and what is left alone is said on stderr. In mode "tmda" (NetBSD: pkgsrc
mail/tmda), the newest archive, if any, is unpacked once, so rolling back puts the
original configuration back. Backups carry the archive. Mail is never touched.
"""

from __future__ import annotations

from pyinfra import host, logger
from pyinfra.api import FactBase, deploy, operation

from qmailhost import ops
from qmailhost.checks import ERROR, OK, SKIPPED
from qmailhost.component import BackupPart, Component
from qmailhost.facts import STATE_DIR
from qmailhost.files import read
from qmailhost.platform import Platform
from tasks import submission

SCRIPT_DIR = f"{STATE_DIR}/tmda"
ARCHIVE_DIR = f"{STATE_DIR}/tmda-archive"
# The scripts that list and retire a platform's TMDA pieces: (pieces, retire).
SCRIPTS = {"debian": ("tmda/pieces.sh", "tmda/retire.sh"),
           "netbsd": ("tmda/netbsd-pieces.sh", "tmda/netbsd-retire.sh")}


class TmdaPieces(FactBase):
    """[(kind, path)] of every TMDA piece on the host (the platform's pieces script)."""

    def command(self, script="tmda/pieces.sh"):
        return read(script)

    @staticmethod
    def default():
        return []

    def process(self, output):
        return [tuple(line.split("\t", 1)) for line in output if "\t" in line]


class TmdaArchive(FactBase):
    """{"archive": path of the newest pieces.tar, "restored": bool}, or None when there is none."""

    def command(self):
        return (f"a=$(ls -1d {ARCHIVE_DIR}/*/pieces.tar 2>/dev/null | tail -n 1); "
                "[ -n \"$a\" ] && { printf 'archive\\t%s\\n' \"$a\"; "
                "[ -e \"${a%/pieces.tar}/restored\" ] && echo restored; }; true")

    def process(self, output):
        archive = next((line.split("\t", 1)[1] for line in output if line.startswith("archive\t")), None)
        return {"archive": archive, "restored": "restored" in output} if archive else None


@operation()
def retire(script: str, pieces_script: str = "tmda/pieces.sh"):
    pieces = host.get_fact(TmdaPieces, script=pieces_script)
    if not pieces:
        host.noop("no TMDA piece on the host")
        return
    host.log(f"Will archive and remove {len(pieces)} TMDA pieces: "
             + ", ".join(f"{kind} {path}" for kind, path in pieces), logger.info)
    yield f"sh {script}"


@operation()
def restore():
    """Unpack the newest TMDA archive over / once (marked restored), if there is one."""
    found = host.get_fact(TmdaArchive)
    if not found:
        host.noop("no TMDA archive to restore")
        return
    if found["restored"]:
        host.noop(f"{found['archive']} was restored")
        return
    archive_dir = found["archive"].rsplit("/", 1)[0]
    yield f"tar -C / -xpf {found['archive']} && touch {archive_dir}/restored"


def retire_all(platform: Platform) -> None:
    pieces, retire_script = SCRIPTS[platform.name]
    pieces_name, retire_name = pieces.rsplit("/", 1)[1], retire_script.rsplit("/", 1)[1]
    ops.whole_file(name="Install the TMDA detection script", dest=f"{SCRIPT_DIR}/{pieces_name}",
                   content=read(pieces))
    ops.whole_file(name="Install the TMDA retirement script", dest=f"{SCRIPT_DIR}/{retire_name}",
                   content=read(retire_script), mode="755")
    retire(name="Retire TMDA (archive, then remove)", script=f"{SCRIPT_DIR}/{retire_name}", pieces_script=pieces)


@deploy("tmda")
def converge(platform: Platform, mode) -> None:
    """Mode "tmda" keeps TMDA (and puts an archived configuration back); every other retires it."""
    if mode.keeps_tmda:
        restore(name="Restore the archived TMDA configuration")
    else:
        retire_all(platform)


def check_no_tmda_leftovers(target):
    """No piece of TMDA remains once its mode is retired (the pieces retirement removes)."""
    if submission.mode_of(target.settings).keeps_tmda:
        return SKIPPED, "the tmda mode is active"
    found = TmdaPieces().process(target.run(read(SCRIPTS[target.platform.name][0])).splitlines())
    if found:
        return ERROR, "TMDA left behind: " + ", ".join(f"{path} ({kind})" for kind, path in found)
    return OK, "no TMDA piece left"


COMPONENT = Component(
    name="tmda",
    checks=(check_no_tmda_leftovers,),
    backup=BackupPart(paths=lambda settings, platform: (ARCHIVE_DIR,)),
)
