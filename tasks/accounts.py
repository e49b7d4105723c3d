"""Accounts: the mail users, as system users with a ~/Maildir, and their passwords.

Passwords come from the laptop (environment or a file the inventory names), are
hashed there with passlib in the platform's scheme (Debian: sha512-crypt; NetBSD:
sha1-crypt, its native one) and set on the host through a file, only when the host's
current hash does not verify the password; the hash itself never crosses the wire
back. checkpassword reads them from /etc/shadow (NetBSD: /etc/master.passwd).
Backups carry every account's Maildir (a restore adds the messages the host lacks)
and its password hash (qmailhost/recovery/, through the platform's password file).
"""

import shlex

from pyinfra.api import deploy

from qmailhost import ops
from qmailhost.component import BackupPart, Component, Probe
from qmailhost.platform import Platform
from qmailhost.settings import Settings


@deploy("accounts")
def configure(platform: Platform, settings: Settings) -> None:
    for account in settings.accounts:
        home = f"/home/{account.name}"
        ops.user(name=f"Create mail user {account.name}", user=account.name, group=None, home=home,
                 shell=platform.nologin, create_home=True, tools=platform.accounts)
        ops.account_password(name=f"Set the password of {account.name}", user=account.name,
                             password=account.password, source=account.password_source,
                             scheme=platform.password_scheme, apply=platform.password_apply)
        for sub in ("", "/cur", "/new", "/tmp"):
            ops.directory(name=f"Create {home}/Maildir{sub}", path=f"{home}/Maildir{sub}",
                          user=account.name, group=account.name, mode="700")


def _hashes_probe(platform: Platform, settings: Settings) -> str:
    """Each account's salt and the SHA256 of its whole hash: never the hash itself."""
    users = " ".join(shlex.quote(a.name) for a in settings.accounts) or "''"
    shell = platform.shell
    return (f"for u in {users}; do\n  h=$({shell.password_field})\n"
            f"  [ -n \"$h\" ] && printf 'accounts\\t%s\\t%s\\t%s\\n' \"$u\" \"${{h%\\$*}}\" "
            f"\"$(printf %s \"$h\" | {shell.sha256} | cut -c1-64)\"\ndone")


def _hashes(lines: list[list[str]]) -> dict[str, dict]:
    return {fields[0]: {"salt": fields[1], "hash_sha256": fields[2]} for fields in lines if len(fields) == 3}


COMPONENT = Component(
    name="accounts",
    managed_roots=lambda platform: ("1:/home/*/Maildir",),
    probes=(Probe("accounts", _hashes_probe, _hashes, dict),),
    backup=BackupPart(paths=lambda settings, platform: tuple(f"~{a.name}/Maildir" for a in settings.accounts)),
)
