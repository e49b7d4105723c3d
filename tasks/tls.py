"""TLS: the one certificate, key and policy every TLS listener serves: stunnel on 587 and
465 (tasks/stunnel.py), spamdyke's STARTTLS on 25 (tasks/smtpd.py, tasks/spamdyke.py), Dovecot (tasks/imap.py).

The pair (``tls``) is from the laptop (``files``: the key transferred as a secret, never
diffed or printed), self-signed on the host once (``self-signed``: kept across runs, made
again only when the host name changes or it nears expiry), or issued by an ACME CA
(``acme``: tasks/acme.py puts it here). The key is 640 root:qmailtls: stunnel reads it as root
(and as stunnel4:qmailtls on a reload), spamdyke as qmaild with the group qmailtls
(tasks/smtpd.py), nobody else. It never leaves the host, except into a backup: a pair made on the
host is carried by backups and put back by a restore, which then reloads every reader of
the pair (``reader_commands``: each component's ``pair_readers``). The policy (``tls_policy``,
POLICIES) is data rendered once per consumer: stunnel's options, and an OpenSSL config
(``openssl-policy.cnf``) for spamdyke, which has no protocol options of its own. Its status
checks, on every TLS port from outside: the policy holds (no TLS below the floor, no CBC or
non-forward-secret suite), one certificate everywhere, naming the host, not about to expire.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import ssl
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pyinfra import host, logger
from pyinfra.api import deploy, operation
from pyinfra.operations import server
from pyinfra.operations.util import any_changed

from qmailhost import ops
from qmailhost.backends import services
from qmailhost.checks import (
    ERROR,
    OK,
    SESSION_ERRORS,
    SKIPPED,
    TIMEOUT,
    WARNING,
    Failed,
    one_line,
    tls_context,
)
from qmailhost.component import BackupPart, Component, Needs, Probe, Setting
from qmailhost.facts import host_state
from qmailhost.files import render
from qmailhost.platform import Platform
from qmailhost.registry import components
from qmailhost.settings import Settings, SettingsError

CERT_WARN_DAYS, CERT_ERROR_DAYS = 21, 7
# The policy probes at once, across ports: a few, so that with the other checks the laptop stays
# under the per-address connection caps (tasks/limits.py).
PROBES_AT_ONCE = 3
KEY_GROUP = "qmailtls"  # the group that may read the key besides root: spamdyke's on port 25
KEY_MODE = "640"


def paths(platform: Platform) -> tuple[str, str]:
    return f"{platform.tls_dir}/cert.pem", f"{platform.tls_dir}/key.pem"


def policy_config_path(platform: Platform) -> str:
    return f"{platform.tls_dir}/openssl-policy.cnf"


# --- the policy ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """What every TLS listener offers, in OpenSSL's words."""

    name: str
    min_protocol: str  # "TLSv1.2" | "TLSv1.3"
    ciphers: str  # TLS 1.2 suites, in the server's order of preference
    ciphersuites: str  # TLS 1.3 suites
    meaning: str


# Mozilla's "intermediate" profile, tightened to forward-secret AEAD suites only (no DHE:
# ECDHE everywhere), and "modern" (TLS 1.3 only). The server's order wins on TLS 1.2.
AEAD_ECDHE = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
))
TLS13_SUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
POLICIES = {
    "intermediate": Policy("intermediate", "TLSv1.2", AEAD_ECDHE, TLS13_SUITES,
                           "TLS 1.2 (ECDHE with AES-GCM or ChaCha20 only) and TLS 1.3"),
    "modern": Policy("modern", "TLSv1.3", AEAD_ECDHE, TLS13_SUITES, "TLS 1.3 only"),
}


def policy(settings: Settings) -> Policy:
    return POLICIES[settings.tls_policy]


def _tls_policy(value, _values=None) -> str:
    if value not in POLICIES:
        raise SettingsError("tls_policy", f"{value!r} is not a TLS policy",
                            f"set tls_policy to one of: {', '.join(POLICIES)}")
    return value


RENEW_DAYS = 30  # a self-signed pair is made anew this long before it expires: before the check warns
assert RENEW_DAYS > CERT_WARN_DAYS


@dataclass(frozen=True)
class Pair:
    """The pair the TLS listeners serve, as their restarts see it: what is meant (FINGERPRINT),
    whether this run rewrites it where the host has another (REWRITTEN), and for a pair made on
    the host, how to measure it there and its digest now (MEASURED; None: made anew this run)."""

    fingerprint: str
    rewritten: bool = False
    measured: tuple[str, str | None] | None = None


def measure(platform: Platform, cert: str) -> str:
    """The command printing the SHA256 of the certificate on the host (what a restart is stamped with)."""
    return f"{platform.shell.sha256} < {shlex.quote(cert)} | cut -c1-64"


def _remade(hostname: str) -> bool:
    """Will this run make the self-signed pair anew (none, another name, one a CA issued, or
    about to expire)?"""
    current = host_state()["cert"]
    return current is None or current["cn"] != hostname or current["renew"] or not current["self"]


@operation()
def self_signed_certificate(hostname: str, cert: str, key: str, days: int = 825):
    """A self-signed certificate for HOSTNAME, made when none for that name exists, or when the
    one there expires within RENEW_DAYS (so it is renewed before any check would warn)."""
    if not _remade(hostname):
        host.noop(f"the certificate for {hostname} exists")
        return
    new_cert, new_key = shlex.quote(cert + ".qmailhost-new"), shlex.quote(key + ".qmailhost-new")
    yield f"mkdir -p {shlex.quote(cert.rsplit('/', 1)[0])} && chmod 755 {shlex.quote(cert.rsplit('/', 1)[0])}"
    yield (f"umask 077 && openssl req -x509 -newkey rsa:3072 -sha256 -nodes -days {days} -subj /CN={hostname} "
           f"-addext subjectAltName=DNS:{hostname} -keyout {new_key} -out {new_cert} 2>/dev/null")
    yield (f"chgrp {KEY_GROUP} {new_key} && chmod {KEY_MODE} {new_key} && chmod 644 {new_cert} "
           f"&& mv -f {new_key} {shlex.quote(key)} && mv -f {new_cert} {shlex.quote(cert)}")


@deploy("tls")
def group(platform: Platform) -> None:
    """The group port 25's processes run with (and no one else): it may read the key, and run
    spamdyke-qrv (tasks/spamdyke.py). Made with the other users, before the builds."""
    ops.group(name=f"Create group {KEY_GROUP} (may read the TLS key)", group=KEY_GROUP, tools=platform.accounts)


@deploy("tls")
def configure(platform: Platform, settings: Settings) -> Pair | None:
    """Put the policy in place, and a self-signed or the laptop's pair; returns the pair as the
    TLS listeners' restarts see it (None under ``tls: acme``: tasks/acme.py puts that pair in place)."""
    ops.whole_file(name="Write the TLS policy for OpenSSL (spamdyke)", dest=policy_config_path(platform),
                   content=render("tls/openssl-policy.cnf.j2", policy=policy(settings)))
    cert, key = paths(platform)
    if settings.tls == "acme":
        return None
    if settings.self_signed:
        remade = _remade(settings.hostname)
        self_signed_certificate(name=f"Make a self-signed certificate for {settings.hostname}",
                                hostname=settings.hostname, cert=cert, key=key)
        if not remade:  # a pair made anew has them from the first byte
            ops.permissions(name="Let only root and qmailtls read the TLS key", path=key, mode=KEY_MODE,
                            user="root", group=KEY_GROUP)
        now = None if remade else host_state()["cert"]["sha256"]
        return Pair("self-signed", measured=(measure(platform, cert), now))
    cert_data, key_data = settings.tls_cert.read_bytes(), settings.tls_key.read_bytes()
    rewritten = ops.differs(cert, cert_data) or ops.differs(key, key_data)
    ops.whole_file(name="Install the TLS certificate", dest=cert, content=cert_data.decode())
    ops.secret_file(name="Install the TLS key", dest=key, data=key_data, mode=KEY_MODE, group=KEY_GROUP)
    return Pair(hashlib.sha256(cert_data + key_data).hexdigest(), rewritten=rewritten)


# --- settings -----------------------------------------------------------------------------


def _readable(setting: str, value) -> Path:
    path = Path(os.path.expanduser(str(value)))
    try:
        path.read_bytes()
    except OSError as error:
        raise SettingsError(setting, f"{path} cannot be read ({error.strerror})",
                            "point it at a readable PEM file on this laptop") from None
    return path


def _tls_cert(value, _values=None) -> Path | None:
    return None if value is None else _readable("tls_cert", value)


SOURCES = {
    "self-signed": "made on the host once, renewed there",
    "files": "the laptop's `tls_cert` and `tls_key`",
    "acme": "issued by an ACME CA and renewed on the host (tasks/acme.py)",
}


def _tls(value, values: dict) -> str:
    """Where the pair comes from; unset: the laptop's files when tls_cert is set, else self-signed."""
    files = values["tls_cert"] is not None
    if value is None:
        return "files" if files else "self-signed"
    if value not in SOURCES:
        raise SettingsError("tls", f"{value!r} is not a source of the TLS pair",
                            f"set tls to one of: {', '.join(SOURCES)}")
    if files and value != "files":
        raise SettingsError("tls", f"is {value!r} but tls_cert and tls_key are set",
                            "remove tls_cert and tls_key, or set tls to 'files'")
    if value == "files" and not files:
        raise SettingsError("tls_cert", "tls is 'files' but tls_cert and tls_key are not set",
                            "set both to PEM files on this laptop")
    return value


def _tls_key(value, values: dict) -> Path | None:
    cert = values["tls_cert"]
    if cert is None and value is None:
        return None
    if cert is None or value is None:
        missing = "tls_cert" if cert is None else "tls_key"
        raise SettingsError(missing, "only one of tls_cert and tls_key is set",
                            "set both, or neither for a self-signed pair")
    key = _readable("tls_key", value)
    cert_key = _openssl("x509", "-noout", "-pubkey", "-in", str(cert))
    if cert_key is None:
        raise SettingsError("tls_cert", f"{cert} is not a PEM certificate",
                            "point it at the certificate (PEM), not the key or a chain in another format")
    key_key = _openssl("pkey", "-pubout", "-in", str(key))
    if key_key is None:
        raise SettingsError("tls_key", f"{key} is not an unencrypted PEM private key",
                            "point it at the private key (PEM, no passphrase)")
    if cert_key != key_key:
        raise SettingsError("tls_key", "the key does not match the certificate in tls_cert",
                            "use the key the certificate was issued for")
    return key


def _openssl(*args: str) -> str | None:
    """Run openssl locally; its stdout, or None on failure. Never echoes key material."""
    result = subprocess.run(["openssl", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return result.stdout if result.returncode == 0 else None


# --- backup and restore ---------------------------------------------------------------------


def reader_commands(platform: Platform) -> list[tuple[str, str, list[str]]]:
    """For every reader of the pair (each component's ``pair_readers``): how it re-reads it
    ("Reload", or "Restart" where its rc.d script cannot reload), its service, and the
    commands that do so if it runs, then measure its stamp again (so the next deploy restarts
    nothing). What a renewal's hook (tasks/acme.py) and a restore run after replacing the pair."""
    backend = services.backend(platform)
    measured = measure(platform, paths(platform)[0])  # as configure() measures it
    stamps = {"restart": backend.restart_stamp, "reload": backend.reload_stamp}
    found = []
    for reader in (reader for component in components() for reader in component.pair_readers):
        reloads = reader.rcd_reload or platform.service_backend != "rcd"
        command = (backend.reload_command if reloads else backend.restart_command)(platform, reader.service)
        found.append(("Reload" if reloads else "Restart", reader.service,
                      [command, ops.remeasure_stamp(stamps[reader.stamp](reader.service), measured)]))
    return found


def restore(platform: Platform, settings: Settings, backup) -> None:
    """The pair from BACKUP (self-signed, or the one ACME issued) when the host's differs;
    then every reader of it reloaded, only then."""
    cert_path, key_path = paths(platform)
    files = backup.host_files()
    cert, key = files.get(cert_path), files.get(key_path)
    if cert is None or key is None:
        host.log("The backup holds no TLS pair (the inventory's pair was in use): none to restore", logger.info)
        return
    if settings.tls == "files":
        host.log("tls_cert and tls_key are set: the inventory's pair stays, the backup's is not restored",
                 logger.warning)
        return
    cert_op = ops.whole_file(name="Restore the TLS certificate", dest=cert_path, content=backup.read(cert).decode(),
                             mode=cert.mode, user=cert.owner, group=cert.group)
    key_op = ops.secret_file(name="Restore the TLS key", dest=key_path, data=backup.read(key), mode=key.mode,
                             user=key.owner, group=key.group)
    for how, service, commands in reader_commands(platform):
        server.shell(name=f"{how} {service} (the TLS pair changed)", _if=any_changed(cert_op, key_op),
                     commands=commands)


# --- status checks --------------------------------------------------------------------------

# What a client offers to probe the policy with: each must be refused by every TLS port.
CBC_SUITES = "ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA:ECDHE-RSA-AES128-SHA256:AES128-SHA:AES256-SHA256"
STATIC_RSA_SUITES = "AES128-GCM-SHA256:AES256-GCM-SHA384:AES128-SHA"


class _CannotOffer(Exception):
    """This laptop's OpenSSL cannot make the offer (it has no TLS 1.1, say)."""


def _refused(target, tls_port, context) -> str | None:
    """None when TLS_PORT refuses a client offering only what CONTEXT offers; else what was agreed."""
    try:
        with target.tls_session(tls_port, context) as client:
            return f"{client.sock.version()} {client.sock.cipher()[0]}"
    except ssl.SSLError as error:
        if "NO_PROTOCOLS_AVAILABLE" in str(error) or "NO_CIPHERS_AVAILABLE" in str(error):
            raise _CannotOffer() from None
        return None
    except SESSION_ERRORS:
        return None


def _offer(maximum: ssl.TLSVersion, ciphers: str = "DEFAULT:@SECLEVEL=0") -> ssl.SSLContext:
    context = tls_context(maximum=maximum)
    context.set_ciphers(ciphers)
    return context


def check_tls_policy(target):
    """Every TLS port (25, 465, 587) holds the policy from outside: TLS below its floor refused,
    and under "intermediate" no CBC suite and no suite without forward secrecy on TLS 1.2."""
    wanted = policy(target.settings)
    probes = [("TLS 1.1", _offer(ssl.TLSVersion.TLSv1_1))]
    if wanted.min_protocol == "TLSv1.3":
        probes.append(("TLS 1.2", _offer(ssl.TLSVersion.TLSv1_2)))
    else:
        probes += [("a CBC suite", _offer(ssl.TLSVersion.TLSv1_2, CBC_SUITES)),
                   ("static RSA (no forward secrecy)", _offer(ssl.TLSVersion.TLSv1_2, STATIC_RSA_SUITES))]
    problems, served, unprobed = [], [], set()
    handshakes = target.handshakes()
    ready = [tls_port for tls_port in target.tls_ports if isinstance(handshakes[tls_port.port], tuple)]
    jobs = [(tls_port, what, context) for tls_port in ready for what, context in probes]
    with ThreadPoolExecutor(max_workers=PROBES_AT_ONCE) as pool:  # (port 25 answers each after 0.5 s)
        results = list(pool.map(lambda job: _probe(target, *job), jobs))
    for tls_port in target.tls_ports:
        found = handshakes[tls_port.port]
        if not isinstance(found, tuple):
            problems.append(f"port {tls_port.port} ({tls_port.role}) gives no TLS session: {one_line(str(found))}")
            continue
        agreed = []
        for (port, what, _), result in zip(jobs, results, strict=True):
            if port is not tls_port:
                continue
            if result is _CannotOffer:
                unprobed.add(what)
            elif result is not None:
                agreed.append(f"{what} ({result})")
        if agreed:
            problems.append(f"port {tls_port.port} accepts " + ", ".join(agreed))
        served.append(f"{tls_port.port} {found[0]}")
    if problems:
        return ERROR, "; ".join(problems)
    note = f" (this laptop's OpenSSL cannot offer {', '.join(sorted(unprobed))}: not probed)" if unprobed else ""
    return OK, f"policy {wanted.name} on {', '.join(served)}{note}"


def _probe(target, tls_port, what: str, context) -> str | None | type[_CannotOffer]:
    try:
        return _refused(target, tls_port, context)
    except _CannotOffer:
        return _CannotOffer


def check_one_certificate(target):
    """Every TLS port serves the certificate the submission port serves."""
    different, handshakes = [], target.handshakes()
    for tls_port in target.tls_ports:
        found = handshakes[tls_port.port]
        if not isinstance(found, tuple):
            raise Failed(f"port {tls_port.port} ({tls_port.role}) gives no TLS session: {one_line(str(found))}")
        if found[1] != target.certificate:
            different.append(str(tls_port.port))
    if different:
        return ERROR, f"port {', '.join(different)} serves another certificate than port " \
                      f"{target.settings.submission_port}"
    return OK, f"the same certificate on {', '.join(str(p.port) for p in target.tls_ports)}"


def check_certificate_name(target):
    """The certificate names the host (SAN, or CN without one)."""
    hostname = target.settings.hostname
    text = _openssl_x509(target.certificate, "-subject", "-issuer", "-checkhost", hostname, "-nameopt", "RFC2253")
    if text is None:
        return SKIPPED, "no openssl on this laptop to read the certificate"
    if "does match certificate" not in text:
        return ERROR, f"the certificate does not name {hostname} ({_field(text, 'subject')})"
    self_signed = _field(text, "subject") == _field(text, "issuer")
    return OK, f"names {hostname}" + (" (self-signed)" if self_signed else f", issued by {_field(text, 'issuer')}")


def check_certificate_expiry(target):
    """The certificate is not about to expire."""
    text = _openssl_x509(target.certificate, "-enddate")
    if text is None:
        return SKIPPED, "no openssl on this laptop to read the certificate"
    not_after = _field(text, "notAfter")
    days = int((ssl.cert_time_to_seconds(not_after) - time.time()) // 86400)
    if days < 0:
        return ERROR, f"expired {-days} days ago ({not_after})"
    if days < CERT_ERROR_DAYS:
        return ERROR, f"expires in {days} days ({not_after})"
    if days < CERT_WARN_DAYS:
        return WARNING, f"expires in {days} days ({not_after})"
    return OK, f"expires in {days} days"


def _openssl_x509(der: bytes, *args: str) -> str | None:
    """openssl x509 on this laptop over a certificate (public data); None without openssl."""
    with tempfile.NamedTemporaryFile(suffix=".der") as file:
        file.write(der)
        file.flush()
        try:
            result = subprocess.run(["openssl", "x509", "-inform", "DER", "-in", file.name, "-noout", *args],
                                    capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=TIMEOUT)
        except FileNotFoundError:
            return None
    if result.returncode != 0:
        raise Failed(f"openssl cannot read the certificate: {one_line(result.stderr)}")
    return result.stdout


def _field(text: str, name: str) -> str:
    match = re.search(rf"^{name}\s*=\s*(.*)$", text, re.MULTILINE)
    return match.group(1).strip() if match else "?"


def _cert_probe(platform: Platform, settings: Settings) -> str:
    """The certificate's name, its SHA256, whether it expires within RENEW_DAYS, and whether
    it is self-signed (its issuer is its subject)."""
    cert = shlex.quote(paths(platform)[0])
    x509 = f"openssl x509 -noout -nameopt RFC2253 -in {cert} 2>/dev/null"
    return (f"[ -f {cert} ] && printf 'cert\\t%s\\t%s\\t%s\\t%s\\n' "
            f"\"$(openssl x509 -noout -subject -nameopt multiline "
            f"-in {cert} 2>/dev/null | sed -n 's/^ *commonName *= *//p')\" "
            f"\"$({platform.shell.sha256} < {cert} | cut -c1-64)\" "
            f"\"$(openssl x509 -noout -checkend {RENEW_DAYS * 86400} -in {cert} >/dev/null 2>&1 "
            "&& echo keep || echo renew)\" "
            f"\"$([ \"$({x509} -subject | sed 's/^subject=//')\" = \"$({x509} -issuer | sed 's/^issuer=//')\" ] "
            "&& echo self || echo issued)\"")


def _cert(lines: list[list[str]]) -> dict | None:
    fields = lines[0]
    if len(fields) != 4:
        return None
    return {"cn": fields[0], "sha256": fields[1], "renew": fields[2] != "keep", "self": fields[3] == "self"}


NEEDS = {"debian": Needs(packages=("openssl", "ca-certificates")), "netbsd": Needs(packages=())}


COMPONENT = Component(
    name="tls",
    needs=lambda platform, _settings: NEEDS[platform.name],
    settings=(
        Setting("tls_cert", None, _tls_cert,
                "PEM certificate on the laptop; unset (with `tls_key`): self-signed, made on the host once"),
        Setting("tls_key", None, _tls_key, "PEM key on the laptop, matching `tls_cert`"),
        Setting("tls", None, _tls,
                "where the pair comes from: `self-signed`, `files` (`tls_cert`/`tls_key`) or `acme` (see acme_*); "
                "default: `files` when `tls_cert` is set, else `self-signed`"),
        Setting("tls_policy", "intermediate", _tls_policy,
                "every TLS port: `intermediate` (TLS 1.2 with ECDHE and AES-GCM/ChaCha20 only, and 1.3; "
                "the server's order) or `modern` (TLS 1.3 only)"),
    ),
    probes=(Probe("cert", _cert_probe, _cert, lambda: None),),
    checks=(check_tls_policy, check_one_certificate, check_certificate_name, check_certificate_expiry),
    backup=BackupPart(paths=lambda settings, platform: paths(platform) if settings.tls != "files" else (),
                      restore=restore),
)
