"""Accounts: the mail users, as system users with a ~/Maildir, and their passwords.

Passwords come from the laptop (environment or a file the inventory names), are
hashed there with passlib in the platform's scheme (Debian: sha512-crypt; NetBSD:
sha1-crypt, its native one) and set on the host through a file, only when the host's
current hash does not verify the password; the hash itself never crosses the wire
back. checkpassword reads them from /etc/shadow (NetBSD: /etc/master.passwd).
"""


from tasks import ops
from tasks.platform import Platform
from tasks.settings import Settings


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
