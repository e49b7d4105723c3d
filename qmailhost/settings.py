"""Settings: every knob of a qmailhost, validated once, before any operation is planned.

Each component declares its own settings beside its code (``Setting``: name, default,
how to parse and check it, what it means; see qmailhost/component.py); this module declares
the host's own (its name, its domains, its mail accounts, where sources come from) and
builds one ``Settings`` from pyinfra host data (inventory or ``--data``) by collecting
every declaration. A bad value raises ``SettingsError`` with one line that names the
setting and says how to fix it, so nothing on the host has changed when a run is
refused. ``python -m qmailhost settings`` lists every setting with its default.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pyinfra import logger
from pyinfra.api.exceptions import PyinfraError

from qmailhost.component import Component, Setting
from qmailhost.registry import components

# Names a mail account may not take: the base systems' accounts, the users qmail and the
# packages the deploy installs run as, and the default user of Debian's cloud images. An
# account is a login for SMTP AUTH and IMAP; one of these would be locked to nologin, or
# would hand a daemon's identity a password.
RESERVED_USERS = {
    "root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp", "proxy",
    "www-data", "backup", "list", "irc", "gnats", "nobody", "_apt", "messagebus", "sshd", "debian", "admin",
    "systemd-network", "systemd-resolve", "systemd-timesync", "polkitd", "postfix", "Debian-exim",
    "alias", "qmaild", "qmaill", "qmailp", "qmailq", "qmailr", "qmails", "ofmipd", "tofmipd", "qmailtls",
    "dovecot", "dovenull", "unbound", "stunnel", "stunnel4", "redis", "_rspamd", "nginx", "operator", "toor",
    "postmaster", "mailer-daemon", "abuse",
}
HOSTNAME_MAX = 64  # a certificate's common name holds at most 64 characters (RFC 5280)
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
FQDN = re.compile(rf"^{_LABEL}(\.{_LABEL})+$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,30}$")
# Host data that belongs to pyinfra or its connectors, never a misspelt setting of ours.
_NOT_OURS = ("ssh_", "_", "winrm_", "docker_", "fake_", "chroot_", "local_", "terraform_", "vagrant_")


class SettingsError(PyinfraError):
    """A bad setting: the message is one line naming the setting and the fix."""

    def __init__(self, setting: str, problem: str, fix: str):
        # One line whatever a value holds: a newline or other control character is shown escaped.
        super().__init__(_one_line(f"setting {setting!r}: {problem}; {fix}"))
        self.setting = setting


def _one_line(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@dataclass(frozen=True)
class Account:
    name: str
    password_source: str  # "env:NAME" or "file:PATH": shown in output, never the password
    password: str = field(repr=False)


class Settings:
    """The validated settings of one host: ``settings.NAME`` for every declared setting."""

    def __init__(self, values: Mapping):
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, name: str):
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"no setting {name!r}") from None

    def __setattr__(self, name, value):
        raise AttributeError("settings are read-only")

    def __repr__(self) -> str:
        return f"Settings({self._values!r})"

    @classmethod
    def from_host_data(cls, data: dict, inventory_name: str = "") -> Settings:
        """Validate host data into Settings, or raise SettingsError (one line)."""
        declared = declared_settings()
        _no_unknown_setting(data, {setting.name for _, setting in declared})
        values: dict = {"inventory_name": inventory_name}
        for _, setting in declared:
            values[setting.name] = setting.parse(data.get(setting.name, setting.default), values)
        del values["inventory_name"]
        # A cache named by the inventory or $QMAILHOST_DISTFILES may carry a SHA512SUMS that overrides pins.
        values["distfiles_explicit"] = bool(data.get("distfiles") or os.environ.get("QMAILHOST_DISTFILES"))
        settings = cls(values)
        _no_port_clash(settings, [setting for _, setting in declared if setting.port])
        for component in components():
            if component.validate:
                component.validate(settings)
        return settings

    def as_deployed(self, leave_out: tuple[str, ...] = ()) -> str:
        """These settings as JSON for the host's own scheduled runs (tasks/health.py), read back by
        from_deployed: every value as parsed but those named in LEAVE_OUT, and no secret. A
        dataclass field declared ``repr=False`` (a password, an alert URL: never printed) is
        carried as None."""
        kept = {name: value for name, value in self._values.items() if name not in leave_out}
        return json.dumps(_encoded(kept), sort_keys=True)

    @classmethod
    def from_deployed(cls, text: str) -> Settings:
        """The settings as_deployed wrote (on the host: no laptop file is read, no secret is there)."""
        return cls(_decoded(json.loads(text)))

    @property
    def primary_domain(self) -> str:
        return self.domains[0]

    @property
    def self_signed(self) -> bool:
        return self.tls == "self-signed"


def _encoded(value):
    """VALUE as JSON data, its Python type kept in a tag where JSON has none."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, tuple | list):
        return {"tuple" if isinstance(value, tuple) else "list": [_encoded(v) for v in value]}
    if isinstance(value, dict):
        return {"dict": [[_encoded(k), _encoded(v)] for k, v in value.items()]}
    if isinstance(value, Path):
        return {"path": str(value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        kind = type(value)
        return {"dataclass": f"{kind.__module__}:{kind.__qualname__}",
                "fields": {f.name: _encoded(getattr(value, f.name)) if f.repr else None
                           for f in dataclasses.fields(value)}}
    raise TypeError(f"a setting's value of type {type(value).__name__} cannot go to the host")


def _decoded(data):
    if not isinstance(data, dict):
        return data
    if "dataclass" in data:
        module, name = data["dataclass"].split(":")
        if module.split(".")[0] not in ("qmailhost", "tasks"):
            raise ValueError(f"{data['dataclass']} is none of qmailhost's types")
        kind = importlib.import_module(module)
        for part in name.split("."):
            kind = getattr(kind, part)
        return kind(**{key: _decoded(value) for key, value in data["fields"].items()})
    (tag, inner), = data.items()
    if tag in ("tuple", "list"):
        items = [_decoded(value) for value in inner]
        return tuple(items) if tag == "tuple" else items
    if tag == "dict":
        return {_decoded(key): _decoded(value) for key, value in inner}
    if tag == "path":
        return Path(inner)
    raise ValueError(f"unknown tag {tag!r} in deployed settings")


def declared_settings() -> list[tuple[Component, Setting]]:
    return [(component, setting) for component in components() for setting in component.settings]


def _no_unknown_setting(data: dict, known: set[str]) -> None:
    """Refuse a key that is one of our settings spelt another way (``Hostname``, ``smtp-port``,
    ``submision``): its value would be ignored while its owner believes it set. Name every
    other key that is neither ours nor pyinfra's in one warning: an inventory may carry data
    of its own, but ``backup_repository`` set before that setting exists must not pass in
    silence."""
    unknown = []
    for key in data:
        if key in known or not isinstance(key, str) or key.startswith(_NOT_OURS):
            continue
        normalised = key.strip().lower().replace("-", "_")
        if normalised in known:
            raise SettingsError(key, "is not a setting, and would be ignored", f"spell it {normalised!r}")
        close = difflib.get_close_matches(normalised, known, n=1, cutoff=0.8)
        if close:
            raise SettingsError(key, "is not a setting, and would be ignored", f"did you mean {close[0]!r}?")
        unknown.append(key)
    if unknown:
        logger.warning(f"!!! qmailhost: not settings, ignored: {', '.join(sorted(unknown))} "
                       "(python -m qmailhost settings lists every setting)")


def _no_port_clash(settings: Settings, ports: list[Setting]) -> None:
    seen: dict[int, str] = {}
    for setting in ports:
        port = getattr(settings, setting.name)
        if port is None:
            continue  # that listener is off
        if port in seen:
            raise SettingsError(setting.name, f"port {port} is already used by {seen[port]}",
                                "give each service its own port")
        seen[port] = setting.name


# --- parsers the components share ----------------------------------------------------------


def whole_number(setting: str, low: int, high: int):
    """A parser: a whole number from LOW to HIGH."""

    def parse(value, _values=None) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise SettingsError(setting, f"{value!r} is not a whole number from {low} to {high}",
                                f"set {setting} to a number in that range")
        return value

    return parse


DURATION_UNITS = {"m": 60, "h": 3600, "d": 86400}


def duration(setting: str, low: int, high: int):
    """A parser: a duration written as minutes, hours or days ("30m", "6h", "2d"), from LOW to
    HIGH seconds; the number of seconds."""

    def shown(seconds: int) -> str:
        unit = next(u for u in ("d", "h", "m") if seconds % DURATION_UNITS[u] == 0)
        return f"{seconds // DURATION_UNITS[unit]}{unit}"

    def parse(value, _values=None) -> int:
        match = re.fullmatch(r"([1-9][0-9]{0,5})([mhd])", value) if isinstance(value, str) else None
        seconds = int(match[1]) * DURATION_UNITS[match[2]] if match else 0
        if not low <= seconds <= high:
            raise SettingsError(setting, f"{value!r} is not a duration from {shown(low)} to {shown(high)}",
                                "write it as minutes, hours or days: 30m, 6h, 24h, 2d")
        return seconds

    return parse


# Ports the host keeps for others: unbound answers on 127.0.0.1:53, and port 80 is ACME's
# HTTP-01 challenge (certbot's, later the web side's).
RESERVED_PORTS = {53: "the host's own resolver (unbound)", 80: "ACME's HTTP-01 challenge"}


def port(setting: str):
    """A parser: a port from 1 to 65535 that is not one the host keeps for others."""
    number = whole_number(setting, 1, 65535)

    def parse(value, _values=None) -> int:
        value = number(value)
        if value in RESERVED_PORTS:
            raise SettingsError(setting, f"port {value} is kept for {RESERVED_PORTS[value]}", "use another port")
        return value

    return parse


def optional_port(setting: str):
    """A parser: a port, or null (or false) for a listener that is off."""
    parse_port = port(setting)

    def parse(value, _values=None) -> int | None:
        if value is None or value is False:
            return None
        return parse_port(value)

    return parse


def boolean(setting: str):
    def parse(value, _values=None) -> bool:
        if not isinstance(value, bool):
            raise SettingsError(setting, f"{value!r} is not true or false", f"set {setting}=true or false")
        return value

    return parse


def mapping(setting: str, value) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SettingsError(setting, f"must be a mapping, not {type(value).__name__}",
                            f"write {setting} as {{\"key\": \"value\", ...}}")
    return value


def password_from(setting: str, entry: dict) -> tuple[str, str] | None:
    """(source, password) named by ENTRY's password_env or password_file, None when neither is
    set; a one-line SettingsError for SETTING when both are, or the source is empty or unreadable."""
    if "password" in entry:
        raise SettingsError(setting, "passwords never go into the inventory",
                            "use \"password_env\" or \"password_file\" instead of \"password\"")
    env, path = entry.get("password_env"), entry.get("password_file")
    if env and path:
        raise SettingsError(setting, "both password_env and password_file are set", "keep one of them")
    if env is not None and not (isinstance(env, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", env)):
        raise SettingsError(setting, f"password_env {env!r} is not an environment variable's name",
                            "name a variable like QMAILHOST_ALICE_PASSWORD")
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
    return None


# --- the host's own settings ---------------------------------------------------------------


def _hostname(value, values: dict) -> str:
    inventory_name = values["inventory_name"]
    if value is None and FQDN.fullmatch(inventory_name or ""):
        value = inventory_name
    if value is None:
        raise SettingsError("hostname", "not set and the inventory name is not a fully qualified name",
                            "set hostname=\"mail.example.org\"")
    if not isinstance(value, str) or not FQDN.fullmatch(value):
        raise SettingsError("hostname", f"{value!r} is not a fully qualified lower-case host name",
                            "use a name like \"mail.example.org\"")
    if len(value) > HOSTNAME_MAX:
        raise SettingsError("hostname", f"{len(value)} characters is longer than a certificate's name may be "
                            f"({HOSTNAME_MAX})", "use a shorter host name")
    return value


def _domains(value, values: dict) -> tuple[str, ...]:
    if value is None:
        value = [values["hostname"].split(".", 1)[1]]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not value:
        raise SettingsError("domains", "the list of local domains is empty",
                            "list at least one, e.g. domains=[\"example.org\"]")
    for domain in value:
        if not isinstance(domain, str) or not FQDN.fullmatch(domain):
            raise SettingsError("domains", f"{domain!r} is not a valid domain name",
                                "use lower-case names like \"example.org\"")
    if len(set(value)) != len(value):
        raise SettingsError("domains", "a domain is listed twice", "list each domain once")
    return tuple(value)


def _accounts(value, _values=None) -> tuple[Account, ...]:
    if not isinstance(value, list | tuple):
        raise SettingsError("accounts", "must be a list of {\"name\": ..., \"password_env\" or "
                            "\"password_file\": ...}", "see inventory/example.py")
    accounts, seen = [], set()
    for entry in value:
        if not isinstance(entry, dict) or "name" not in entry:
            raise SettingsError("accounts", f"entry {entry!r} has no name", "give each account a \"name\"")
        name = entry["name"]
        if not isinstance(name, str) or not _USER.fullmatch(name):
            raise SettingsError("accounts", f"{name!r} is not a valid user name",
                                "use lower-case letters, digits, _ and -, starting with a letter")
        if name in RESERVED_USERS:
            raise SettingsError("accounts", f"{name!r} is a system or qmail user", "choose another account name")
        if name in seen:
            raise SettingsError("accounts", f"{name!r} is listed twice", "list each account once")
        seen.add(name)
        source = password_from(f"accounts[{name}]", entry)
        if source is None:
            raise SettingsError(f"accounts[{name}]", "no password source",
                                "set \"password_env\" or \"password_file\"")
        accounts.append(Account(name, *source))
    return tuple(accounts)


def _sources(value, _values=None) -> dict:
    from qmailhost import sources  # sources reads SettingsError from here

    overrides = mapping("sources", value)
    sources.check_overrides(overrides)
    return overrides


def _distfiles(value, _values=None) -> Path:
    if value is None:
        value = os.environ.get("QMAILHOST_DISTFILES") or "~/.cache/qmailhost/distfiles"
    return Path(os.path.expanduser(str(value)))


COMPONENT = Component(
    name="host",
    settings=(
        Setting("hostname", None, _hostname,
                "qmail's `control/me`, the certificate's name; default: the inventory name, if fully qualified"),
        Setting("domains", None, _domains,
                "local domains (`control/locals`, `control/rcpthosts`); default: `hostname` minus its first label"),
        Setting("accounts", [], _accounts,
                "mail users: `{\"name\": \"alice\", \"password_env\": \"VAR\"}` or `\"password_file\": \"path\"`"),
        Setting("sources", {}, _sources,
                "per-component `version`, `url`, `sha512` overrides (see qmailhost/sources.py)"),
        Setting("distfiles", None, _distfiles,
                "the laptop's distfile cache; default: `$QMAILHOST_DISTFILES` or `~/.cache/qmailhost/distfiles`"),
    ),
)
