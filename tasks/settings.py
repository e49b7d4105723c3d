"""Settings: every knob of a qmailhost, its default, and its validation, in one place.

Built once per host from pyinfra host data (inventory or ``--data``) by
``Settings.from_host_data``, before any operation is planned. A bad value raises
``SettingsError`` with one line that names the setting and says how to fix it, so
nothing on the host has changed when a run is refused.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from pyinfra.api.exceptions import PyinfraError

# Every setting with its default. The README's settings table mirrors this block.
DEFAULTS: dict = {
    # The host's fully qualified name: qmail's control/me, the TLS certificate's name.
    # Default: the inventory host name, when that is a fully qualified name.
    "hostname": None,
    # Domains delivered here (control/locals and control/rcpthosts). Default: the
    # host name without its first label (mail.example.org -> example.org).
    "domains": None,
    # Mail accounts: system users with ~/Maildir. Each names where its password comes
    # from on the laptop, never the repository: {"name": "alice", "password_env":
    # "ALICE_PASSWORD"} or {"name": "alice", "password_file": "~/.secrets/alice"}.
    "accounts": [],
    # Aliases to accounts (~alias/.qmail-NAME). postmaster, root, mailer-daemon and
    # abuse default to the first account when not given.
    "aliases": {},
    # control/virtualdomains entries: {"lists.example.org": "alice-lists"} (optional).
    "virtualdomains": {},
    # control/smtproutes entries: {"": "smarthost.example.net"} (optional).
    "smtproutes": {},
    # TLS certificate and key for port 587: paths on the laptop. Both unset: a
    # self-signed pair is generated on the host once and kept there.
    "tls_cert": None,
    "tls_key": None,
    # Ports: SMTP (qmail-smtpd via spamdyke), submission (stunnel, STARTTLS) and the
    # loopback-only port ofmipd listens on behind stunnel.
    "smtp_port": 25,
    "submission_port": 587,
    "ofmipd_port": 26,
    # Largest message accepted, in bytes (control/databytes).
    "databytes": 20_000_000,
    # qmail-send's parallel deliveries (control/concurrencyremote, concurrencylocal)
    # and tcpserver's connection limits for port 25 and for ofmipd.
    "concurrency_remote": 20,
    "concurrency_local": 10,
    "smtp_connections": 20,
    "submission_connections": 20,
    # spamdyke's filters on port 25. dns_blacklists needs working DNS on the host.
    "spamdyke_filters": {
        "reject_empty_rdns": True,
        "reject_unresolvable_rdns": True,
        "reject_ip_in_cc_rdns": True,
        "dns_blacklists": ["zen.spamhaus.org"],
        "greeting_delay_secs": 5,
        "max_recipients": 50,
    },
    # Who does SMTP AUTH on submission: "ofmipd" (ofmipd built with the AUTH patch),
    # "spamdyke" (spamdyke wrapping stock ofmipd) or "tmda" (NetBSD only).
    "submission": "ofmipd",
    # Per-component source overrides: {"notqmail": {"version": "1.09", "url": ...,
    # "sha512": ...}}. See tasks/sources.py for the pins.
    "sources": {},
    # The laptop's distfile cache. Default: $QMAILHOST_DISTFILES, else
    # ~/.cache/qmailhost/distfiles.
    "distfiles": None,
}

SUBMISSION_MODES = ("ofmipd", "spamdyke", "tmda")
SPAMDYKE_FILTERS = tuple(DEFAULTS["spamdyke_filters"])
RESERVED_USERS = {
    "root", "daemon", "bin", "sys", "alias", "qmaild", "qmaill", "qmailp", "qmailq",
    "qmailr", "qmails", "ofmipd", "nobody", "sshd",
}
ALIAS_NAMES = ("postmaster", "root", "mailer-daemon", "abuse")
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_FQDN = re.compile(rf"^{_LABEL}(\.{_LABEL})+$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,30}$")
_LOCALPART = re.compile(r"^[a-z0-9][a-z0-9._+-]{0,63}$")


class SettingsError(PyinfraError):
    """A bad setting: the message is one line naming the setting and the fix."""

    def __init__(self, setting: str, problem: str, fix: str):
        super().__init__(f"setting {setting!r}: {problem}; {fix}")
        self.setting = setting


@dataclass(frozen=True)
class Account:
    name: str
    password_source: str  # "env:NAME" or "file:PATH": shown in output, never the password
    password: str = field(repr=False)


@dataclass(frozen=True)
class Settings:
    hostname: str
    domains: tuple[str, ...]
    accounts: tuple[Account, ...]
    aliases: dict[str, str]
    virtualdomains: dict[str, str]
    smtproutes: dict[str, str]
    tls_cert: Path | None
    tls_key: Path | None
    smtp_port: int
    submission_port: int
    ofmipd_port: int
    databytes: int
    concurrency_remote: int
    concurrency_local: int
    smtp_connections: int
    submission_connections: int
    spamdyke_filters: dict
    submission: str
    sources: dict
    distfiles: Path
    distfiles_explicit: bool  # named by the inventory or $QMAILHOST_DISTFILES: SHA512SUMS honoured

    @classmethod
    def from_host_data(cls, data: dict, inventory_name: str = "") -> Settings:
        """Validate host data into Settings, or raise SettingsError (one line)."""
        raw = {key: data.get(key, default) for key, default in DEFAULTS.items()}
        hostname = _hostname(raw["hostname"], inventory_name)
        accounts = _accounts(raw["accounts"])
        names = {a.name for a in accounts}
        tls_cert, tls_key = _tls_pair(raw["tls_cert"], raw["tls_key"])
        filters = dict(DEFAULTS["spamdyke_filters"])
        filters.update(_mapping("spamdyke_filters", raw["spamdyke_filters"]))
        unknown = sorted(set(filters) - set(SPAMDYKE_FILTERS))
        if unknown:
            raise SettingsError("spamdyke_filters", f"unknown filter {unknown[0]!r}",
                                f"use only {', '.join(SPAMDYKE_FILTERS)}")
        settings = cls(
            hostname=hostname,
            domains=_domains(raw["domains"], hostname),
            accounts=accounts,
            aliases=_aliases(raw["aliases"], names, accounts),
            virtualdomains=_virtualdomains(raw["virtualdomains"]),
            smtproutes=_smtproutes(raw["smtproutes"]),
            tls_cert=tls_cert,
            tls_key=tls_key,
            smtp_port=_port("smtp_port", raw["smtp_port"]),
            submission_port=_port("submission_port", raw["submission_port"]),
            ofmipd_port=_port("ofmipd_port", raw["ofmipd_port"]),
            databytes=_int_between("databytes", raw["databytes"], 1_000, 2**31 - 1),
            concurrency_remote=_int_between("concurrency_remote", raw["concurrency_remote"], 1, 120),
            concurrency_local=_int_between("concurrency_local", raw["concurrency_local"], 1, 120),
            smtp_connections=_int_between("smtp_connections", raw["smtp_connections"], 1, 1000),
            submission_connections=_int_between(
                "submission_connections", raw["submission_connections"], 1, 1000),
            spamdyke_filters=filters,
            submission=_submission(raw["submission"]),
            sources=_mapping("sources", raw["sources"]),
            distfiles=_distfiles(raw["distfiles"]),
            distfiles_explicit=bool(raw["distfiles"] or os.environ.get("QMAILHOST_DISTFILES")),
        )
        _no_port_clash(settings)
        return settings

    @property
    def primary_domain(self) -> str:
        return self.domains[0]

    @property
    def self_signed(self) -> bool:
        return self.tls_cert is None


def _hostname(value, inventory_name: str) -> str:
    if value is None and _FQDN.match(inventory_name or ""):
        value = inventory_name
    if value is None:
        raise SettingsError("hostname", "not set and the inventory name is not a fully qualified name",
                            "set hostname=\"mail.example.org\"")
    if not isinstance(value, str) or not _FQDN.match(value):
        raise SettingsError("hostname", f"{value!r} is not a fully qualified lower-case host name",
                            "use a name like \"mail.example.org\"")
    return value


def _domains(value, hostname: str) -> tuple[str, ...]:
    if value is None:
        value = [hostname.split(".", 1)[1]]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not value:
        raise SettingsError("domains", "the list of local domains is empty",
                            "list at least one, e.g. domains=[\"example.org\"]")
    for domain in value:
        if not isinstance(domain, str) or not _FQDN.match(domain):
            raise SettingsError("domains", f"{domain!r} is not a valid domain name",
                                "use lower-case names like \"example.org\"")
    if len(set(value)) != len(value):
        raise SettingsError("domains", "a domain is listed twice", "list each domain once")
    return tuple(value)


def _accounts(value) -> tuple[Account, ...]:
    if not isinstance(value, list | tuple):
        raise SettingsError("accounts", "must be a list of {\"name\": ..., \"password_env\" or "
                            "\"password_file\": ...}", "see inventory/example.py")
    accounts, seen = [], set()
    for entry in value:
        if not isinstance(entry, dict) or "name" not in entry:
            raise SettingsError("accounts", f"entry {entry!r} has no name", "give each account a \"name\"")
        name = entry["name"]
        if not isinstance(name, str) or not _USER.match(name):
            raise SettingsError("accounts", f"{name!r} is not a valid user name",
                                "use lower-case letters, digits, _ and -, starting with a letter")
        if name in RESERVED_USERS:
            raise SettingsError("accounts", f"{name!r} is a system or qmail user",
                                "choose another account name")
        if name in seen:
            raise SettingsError("accounts", f"{name!r} is listed twice", "list each account once")
        seen.add(name)
        accounts.append(Account(name, *_password(name, entry)))
    return tuple(accounts)


def _password(name: str, entry: dict) -> tuple[str, str]:
    env, path = entry.get("password_env"), entry.get("password_file")
    setting = f"accounts[{name}]"
    if "password" in entry:
        raise SettingsError(setting, "passwords never go into the inventory",
                            "use \"password_env\" or \"password_file\" instead of \"password\"")
    if env and path:
        raise SettingsError(setting, "both password_env and password_file are set", "keep one of them")
    if env:
        password = os.environ.get(env, "")
        if not password:
            raise SettingsError(setting, f"environment variable {env} is not set or empty",
                                f"export {env}=... before running pyinfra")
        return f"env:{env}", password
    if path:
        file = Path(os.path.expanduser(path))
        try:
            password = file.read_text().strip("\n")
        except OSError as error:
            raise SettingsError(setting, f"password file {file} cannot be read ({error.strerror})",
                                "create it (mode 600) or fix password_file") from None
        if not password:
            raise SettingsError(setting, f"password file {file} is empty", "write the password into it")
        return f"file:{file}", password
    raise SettingsError(setting, "no password source", "set \"password_env\" or \"password_file\"")


def _aliases(value, names: set[str], accounts: tuple[Account, ...]) -> dict[str, str]:
    aliases = dict(_mapping("aliases", value))
    if accounts:
        for alias in ALIAS_NAMES:
            aliases.setdefault(alias, accounts[0].name)
    for alias, target in aliases.items():
        if not isinstance(alias, str) or not _LOCALPART.match(alias):
            raise SettingsError("aliases", f"{alias!r} is not a valid local part",
                                "use lower-case letters, digits and . _ + -")
        if target not in names:
            raise SettingsError("aliases", f"{alias} points at {target!r}, which is not an account",
                                f"point it at one of: {', '.join(sorted(names)) or '(add an account)'}")
    missing = [a for a in ALIAS_NAMES if a not in aliases]
    if missing:
        raise SettingsError("aliases", f"{missing[0]} has nowhere to go",
                            "add an account (it becomes the default target) or set the alias")
    return aliases


def _virtualdomains(value) -> dict[str, str]:
    entries = _mapping("virtualdomains", value)
    for domain, prefix in entries.items():
        if not _FQDN.match(str(domain)) or not _LOCALPART.match(str(prefix)):
            raise SettingsError("virtualdomains", f"{domain!r}: {prefix!r} is not domain: prefix",
                                "use entries like {\"lists.example.org\": \"alice-lists\"}")
    return dict(entries)


def _smtproutes(value) -> dict[str, str]:
    entries = _mapping("smtproutes", value)
    for domain, relay in entries.items():
        if (domain and not _FQDN.match(str(domain))) or not re.match(r"^[a-z0-9.\[\]-]+(:\d+)?$", str(relay)):
            raise SettingsError("smtproutes", f"{domain!r}: {relay!r} is not domain: relayhost[:port]",
                                "use entries like {\"\": \"smarthost.example.net\"}")
    return dict(entries)


def _tls_pair(cert, key) -> tuple[Path | None, Path | None]:
    if cert is None and key is None:
        return None, None
    if cert is None or key is None:
        missing = "tls_cert" if cert is None else "tls_key"
        raise SettingsError(missing, "only one of tls_cert and tls_key is set",
                            "set both, or neither for a self-signed pair")
    paths = {}
    for setting, value in (("tls_cert", cert), ("tls_key", key)):
        path = Path(os.path.expanduser(str(value)))
        try:
            path.read_bytes()
        except OSError as error:
            raise SettingsError(setting, f"{path} cannot be read ({error.strerror})",
                                "point it at a readable PEM file on this laptop") from None
        paths[setting] = path
    cert_key = _openssl("x509", "-noout", "-pubkey", "-in", str(paths["tls_cert"]))
    if cert_key is None:
        raise SettingsError("tls_cert", f"{paths['tls_cert']} is not a PEM certificate",
                            "point it at the certificate (PEM), not the key or a chain in another format")
    key_key = _openssl("pkey", "-pubout", "-in", str(paths["tls_key"]))
    if key_key is None:
        raise SettingsError("tls_key", f"{paths['tls_key']} is not an unencrypted PEM private key",
                            "point it at the private key (PEM, no passphrase)")
    if cert_key != key_key:
        raise SettingsError("tls_key", "the key does not match the certificate in tls_cert",
                            "use the key the certificate was issued for")
    return paths["tls_cert"], paths["tls_key"]


def _openssl(*args: str) -> str | None:
    """Run openssl locally; its stdout, or None on failure. Never echoes key material."""
    result = subprocess.run(["openssl", *args], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL)
    return result.stdout if result.returncode == 0 else None


def _port(setting: str, value) -> int:
    return _int_between(setting, value, 1, 65535)


def _int_between(setting: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SettingsError(setting, f"{value!r} is not a whole number from {low} to {high}",
                            f"set {setting} to a number in that range")
    return value


def _no_port_clash(settings: Settings) -> None:
    ports = {"smtp_port": settings.smtp_port, "submission_port": settings.submission_port,
             "ofmipd_port": settings.ofmipd_port}
    seen: dict[int, str] = {}
    for setting, port in ports.items():
        if port in seen:
            raise SettingsError(setting, f"port {port} is already used by {seen[port]}",
                                "give each service its own port")
        seen[port] = setting
    if settings.submission == "tmda" and 8025 in seen:
        raise SettingsError(seen[8025], "port 8025 is tmda-ofmipd's in tmda mode", "use another port")


def _submission(value) -> str:
    if value not in SUBMISSION_MODES:
        raise SettingsError("submission", f"unknown mode {value!r}",
                            f"use one of: {', '.join(SUBMISSION_MODES)}")
    return value


def _mapping(setting: str, value) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SettingsError(setting, f"must be a mapping, not {type(value).__name__}",
                            f"write {setting} as {{\"key\": \"value\", ...}}")
    return value


def _distfiles(value) -> Path:
    if value is None:
        value = os.environ.get("QMAILHOST_DISTFILES") or "~/.cache/qmailhost/distfiles"
    return Path(os.path.expanduser(str(value)))
