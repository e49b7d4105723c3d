"""TMDA's retirement: what a TMDA-era host still has is archived, then removed.

Before the submission refactor, TMDA's tmda-ofmipd did SMTP AUTH behind stunnel on
127.0.0.1:8025 and tmda-filter sat in users' .qmail files. In every mode but "tmda",
each piece found (service or init script, the stunnel stanza for 8025, /etc/tmdarc,
~/.tmda, tmda-filter lines, programs, package, the tofmipd user) is archived under
/var/lib/qmailhost/tmda-archive/<time>/ and removed. Mail is never touched.
"""

from __future__ import annotations

from pyinfra import host, logger
from pyinfra.api import FactBase, operation

from tasks import ops
from tasks.facts import STATE_DIR
from tasks.templates import read

SCRIPT_DIR = f"{STATE_DIR}/tmda"
ARCHIVE_DIR = f"{STATE_DIR}/tmda-archive"


class TmdaPieces(FactBase):
    """[(kind, path)] of every TMDA piece on the host (files/tmda/pieces.sh)."""

    def command(self):
        return read("tmda/pieces.sh")

    @staticmethod
    def default():
        return []

    def process(self, output):
        return [tuple(line.split("\t", 1)) for line in output if "\t" in line]


@operation()
def retire(script: str):
    pieces = host.get_fact(TmdaPieces)
    if not pieces:
        host.noop("no TMDA piece on the host")
        return
    host.log(f"Will archive and remove {len(pieces)} TMDA pieces: "
             + ", ".join(f"{kind} {path}" for kind, path in pieces), logger.info)
    yield f"sh {script}"


def retire_all() -> None:
    ops.whole_file(name="Install the TMDA detection script", dest=f"{SCRIPT_DIR}/pieces.sh",
                   content=read("tmda/pieces.sh"))
    ops.whole_file(name="Install the TMDA retirement script", dest=f"{SCRIPT_DIR}/retire.sh",
                   content=read("tmda/retire.sh"), mode="755")
    retire(name="Retire TMDA (archive, then remove)", script=f"{SCRIPT_DIR}/retire.sh")
