"""Accounts: the mail users, as system users with a ~/Maildir, and their passwords.

Passwords come from the laptop (environment or a file the inventory names), are
hashed there with passlib in the platform's scheme (Debian: sha512-crypt; NetBSD:
sha1-crypt, its native one) and set on the host through a file, only when the host's
current hash does not verify the password; the hash itself never crosses the wire
back. checkpassword reads them from /etc/shadow (NetBSD: /etc/master.passwd).

Only these accounts may log in: ``mail_accounts_file`` lists them, and after a good
password checkpassword runs ``gate`` (files/accounts/only-mail-accounts.sh.j2) as the
account, which refuses any name not listed (root, system users). Dovecot reads the same
list through PAM (tasks/imap.py).
Password guessing meets one brake (files/accounts/login-brake.py) on every port that takes a
password: SMTP AUTH runs checkpassword through it (``login_command``), Dovecot's PAM service
asks it before and tells it after each check. Its counts live in ``BRAKE_STATE``.
Backups carry every account's Maildir (a restore adds the messages the host lacks)
and its password hash (qmailhost/recovery/, through the platform's password file).
"""

import shlex

from pyinfra.api import deploy

from qmailhost import ops
from qmailhost.component import BackupPart, Component, Needs, Probe
from qmailhost.facts import STATE_DIR
from qmailhost.files import read, render
from qmailhost.platform import Platform
from qmailhost.settings import Settings


def mail_accounts_file(platform: Platform) -> str:
    """The list of the accounts that may log in, one name a line (readable by all: names only)."""
    return f"{platform.config_dir}/mail-accounts"


def gate(platform: Platform) -> str:
    """What checkpassword runs after a good password: succeeds only for a listed mail account."""
    return f"{platform.config_dir}/only-mail-accounts"


BRAKE_STATE = f"{STATE_DIR}/login-brake"  # the brake's counts (its STATE)


def brake(platform: Platform) -> str:
    """The brake on password guessing (files/accounts/login-brake.py)."""
    return f"{platform.config_dir}/login-brake"


def login_command(platform: Platform, checkpassword: str) -> str:
    """What SMTP AUTH runs as its checkpassword: the brake, then CHECKPASSWORD, then the gate."""
    return f"{brake(platform)} checkpassword {checkpassword} {gate(platform)}"


@deploy("accounts")
def configure(platform: Platform, settings: Settings, brake_user: str) -> None:
    """The mail accounts; the gate and the brake every login passes (BRAKE_USER: who runs
    SMTP AUTH, and so keeps the brake's counts with root, Dovecot's PAM)."""
    ops.whole_file(name="Write the list of mail accounts (who may log in)", dest=mail_accounts_file(platform),
                   content="".join(f"{account.name}\n" for account in settings.accounts))
    ops.whole_file(name="Install the gate checkpassword runs (only mail accounts log in)", dest=gate(platform),
                   mode="755", content=render("accounts/only-mail-accounts.sh.j2",
                                              accounts_file=mail_accounts_file(platform)))
    ops.whole_file(name="Install the brake on password guessing", dest=brake(platform), mode="755",
                   content=f"#!{platform.python}\n" + read("accounts/login-brake.py"))
    ops.directory(name="Create the brake's directory (its counts)", path=BRAKE_STATE, user=brake_user,
                  group=platform.root_group, mode="700")
    ops.whole_file(name="Create the brake's lock", dest=f"{BRAKE_STATE}/.lock", content="", mode="600",
                   user=brake_user)
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
    needs=lambda platform, _settings: Needs(packages=(platform.python_package,)),
    managed_roots=lambda platform: ("1:/home/*/Maildir",),
    probes=(Probe("accounts", _hashes_probe, _hashes, dict),),
    backup=BackupPart(paths=lambda settings, platform: tuple(f"~{a.name}/Maildir" for a in settings.accounts)),
)
