"""ACME: the TLS pair (tasks/tls.py) issued by a certificate authority, under ``tls: acme``.

- The client is certbot from the platform's packages, with its standalone HTTP-01 server on
  port 80 (no web server needed): the host's name must lead to this host, and port 80 must
  reach it from the CA. ``acme_directory`` names the CA (Let's Encrypt by default, its
  staging, or any directory URL), ``acme_contact`` the account's address, and
  ``acme_ca_bundle`` a CA the client trusts for the directory's own HTTPS (a test CA).
- A deploy orders a certificate only when the host has none for its name (one lineage,
  "qmailhost", in certbot's config dir): a converged run asks the CA nothing. On a bare
  host whose newest backup (on the laptop) holds a certificate for the name that is still
  valid, it orders none either (CAs limit duplicates): a self-signed pair stands in until
  restore.py puts the backup's lineage and pair back.
- certbot's deploy hook (``deploy-hook.sh``) copies the lineage's pair to where every TLS
  listener reads it, private from the first byte, and reloads every reader of the pair
  (each component's ``pair_readers``; see tls.reader_commands): no session is cut.
- Renewal runs on the host without the laptop: a supervised loop under daemontools (no
  systemd timer needed, as in the built-in host), cron on NetBSD; ``renew.sh`` records each
  outcome. A failure keeps the pair in service; the status check ``acme_renewal`` warns,
  and errors when the certificate is near expiry (tasks/tls.py's expiry check does too).
- Backups carry certbot's config dir (the account key, the lineage's archive and renewal
  config); its ``live/`` links are rebuilt on restore.
"""

from __future__ import annotations

import re
import shlex
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pyinfra import host, logger
from pyinfra.api import deploy, operation
from pyinfra.operations import server
from pyinfra.operations.util import any_changed

from qmailhost import ops, recovery
from qmailhost.backends import services
from qmailhost.checks import ERROR, OK, SKIPPED, WARNING, one_line
from qmailhost.component import BackupPart, Component, Needs, Probe, Setting
from qmailhost.facts import host_state
from qmailhost.files import render
from qmailhost.platform import Platform
from qmailhost.settings import Settings, SettingsError
from tasks import tls

LINEAGE = "qmailhost"  # certbot's --cert-name
SERVICE = "acme-renew"
RENEW_EVERY = 12 * 3600  # seconds between renewal checks (certbot's advice: twice a day)
INSTALL_ONLY = "QMAILHOST_INSTALL_ONLY"  # set: the hook installs the pair and leaves its readers to the deploy
CRON_NAME = "qmailhost: renew the ACME certificate"  # how pyinfra finds the line again
DIRECTORIES = {
    "letsencrypt": "https://acme-v02.api.letsencrypt.org/directory",
    "letsencrypt-staging": "https://acme-staging-v02.api.letsencrypt.org/directory",
}


@dataclass(frozen=True)
class Paths:
    certbot: str
    packages: tuple[str, ...]
    config_dir: str  # certbot's: tasks/accounts.py, archive/, live/, renewal/
    work_dir: str
    logs_dir: str


PATHS = {
    "debian": Paths("/usr/bin/certbot", ("certbot",), "/etc/letsencrypt", "/var/lib/letsencrypt",
                    "/var/log/letsencrypt"),
    # pkgsrc security/py-certbot, for pkgsrc's default Python (lang/python/pyversion.mk: 313):
    # the package PYPKGPREFIX-certbot installs bin/certbot-PYVERSSUFFIX (PLIST; bin/certbot is
    # only pkg_alternatives' wrapper, made when pkg_alternatives is installed). Its paths are
    # substituted to PKG_SYSCONFDIR (PKG_SYSCONFSUBDIR=letsencrypt) and VARBASE/letsencrypt.
    "netbsd": Paths("/usr/pkg/bin/certbot-3.13", ("py313-certbot",), "/usr/pkg/etc/letsencrypt", "/var/letsencrypt",
                    "/var/letsencrypt/log"),
}


def own_dir(platform: Platform) -> str:
    """qmailhost's ACME files: the hook, the renewal script, the CA bundle, the last outcome."""
    return f"{platform.config_dir}/acme"


def files(platform: Platform) -> dict[str, str]:
    mine = own_dir(platform)
    return {"hook": f"{mine}/deploy-hook", "renew": f"{mine}/renew", "ca": f"{mine}/ca.pem",
            "status": f"{mine}/last-renewal", "live": f"{PATHS[platform.name].config_dir}/live/{LINEAGE}"}


def _dirs(paths: Paths) -> str:
    return f"--config-dir {paths.config_dir} --work-dir {paths.work_dir} --logs-dir {paths.logs_dir}"


def packages(platform: Platform, settings: Settings) -> tuple[str, ...]:
    return PATHS[platform.name].packages if settings.tls == "acme" else ()


# --- settings ---------------------------------------------------------------------------------


def _directory(value, _values=None) -> str:
    if isinstance(value, str) and value in DIRECTORIES:
        return DIRECTORIES[value]
    if not isinstance(value, str) or not re.fullmatch(r"https://[^\s/]+(/\S*)?", value):
        raise SettingsError("acme_directory", f"{value!r} is not an ACME directory",
                            f"set it to {' or '.join(DIRECTORIES)}, or the CA's https:// directory URL")
    return value


def _contact(value, _values=None) -> str | None:
    if value is not None and (not isinstance(value, str) or not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", value)):
        raise SettingsError("acme_contact", f"{value!r} is not a mail address",
                            "set it to the address the CA writes to about this host's certificates")
    return value


def _ca_bundle(value, _values=None) -> Path | None:
    if value is None:
        return None
    path = Path(str(value)).expanduser()
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise SettingsError("acme_ca_bundle", f"{path} cannot be read ({getattr(error, 'strerror', error)})",
                            "point it at a PEM file of CA certificates on this laptop") from None
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise SettingsError("acme_ca_bundle", f"{path} holds no PEM certificate",
                            "point it at the CA certificate (PEM) the ACME directory's HTTPS is signed by")
    return path


def _validate(settings: Settings) -> None:
    if settings.tls == "acme" and settings.acme_contact is None:
        raise SettingsError("acme_contact", "tls is 'acme' but no contact address is set",
                            "set acme_contact to your mail address (the CA's expiry notices go there)")


# --- the deploy ----------------------------------------------------------------------------------


def _restorable(settings: Settings, platform: Platform) -> str | None:
    """The newest backup (a snapshot in backup_repository, else a backup directory on this
    laptop) when it holds this host's ACME lineage with a certificate for the host's name that
    is still valid (restore.py serves it again): its name, else None."""
    newest = recovery.newest_holding(settings, platform)
    if newest is None:
        return None
    by_path = {record.path: record for record in newest.records}
    renewal = f"{PATHS[platform.name].config_dir}/renewal/{LINEAGE}.conf"
    cert = by_path.get(tls.paths(platform)[0])
    if renewal not in by_path or cert is None:
        return None
    pem = newest.read(cert)
    # Two calls: openssl x509 stops after -checkend's answer and would never say whether the name matches.
    valid = subprocess.run(["openssl", "x509", "-noout", "-checkend", "0"], input=pem, capture_output=True)
    named = subprocess.run(["openssl", "x509", "-noout", "-checkhost", settings.hostname], input=pem,
                           capture_output=True)
    ok = valid.returncode == 0 and named.returncode == 0 and b"does match" in named.stdout
    return newest.label if ok else None


@deploy("acme")
def configure(platform: Platform, settings: Settings, pair: tls.Pair | None) -> tls.Pair:
    """Under ``tls: acme``, the CA's pair in place (ordered only when the host has none for its
    name), the hook and renewal script written; returns the pair as the TLS listeners' restarts
    see it. Otherwise PAIR (tasks/tls.py's) unchanged."""
    if settings.tls != "acme":
        return pair
    paths, mine = PATHS[platform.name], files(platform)
    cert, key = tls.paths(platform)
    ops.directory(name="Create qmailhost's ACME directory", path=own_dir(platform), user="root",
                  group=platform.root_group, mode="700")
    if settings.acme_ca_bundle:
        ops.whole_file(name="Install the CA bundle the ACME client trusts", dest=mine["ca"],
                       content=settings.acme_ca_bundle.read_text())
    ops.whole_file(name="Write the ACME deploy hook (install the pair, reload its readers)", dest=mine["hook"],
                   mode="700", content=render("acme/deploy-hook.sh.j2", lineage_name=LINEAGE, live=mine["live"],
                                              tls_dir=platform.tls_dir, key_group=tls.KEY_GROUP,
                                              key_mode=tls.KEY_MODE, readers=tls.reader_commands(platform)))
    ops.whole_file(name="Write the ACME renewal script", dest=mine["renew"], mode="700",
                   content=render("acme/renew.sh.j2", renew=mine["renew"], status=mine["status"],
                                  certbot=paths.certbot, lineage_name=LINEAGE, hook=mine["hook"],
                                  dirs=_dirs(paths), ca_bundle=mine["ca"] if settings.acme_ca_bundle else None))

    lineage, installed = host_state()["acme"], host_state()["cert"]
    restorable = _restorable(settings, platform) if lineage is None else None
    order = lineage["cn"] != settings.hostname if lineage else not restorable
    why_not = (f"the host holds an ACME certificate for {settings.hostname}" if lineage else
               f"the backup {restorable} holds a valid certificate for {settings.hostname}: restore.py serves it")
    # Run by the deploy (or by certbot under it), the hook installs the pair only: the deploy's
    # own restarts and reloads re-read it, once, as the dry run says (INSTALL_ONLY).
    trust = f"REQUESTS_CA_BUNDLE={shlex.quote(mine['ca'])} " if settings.acme_ca_bundle else ""
    bundle = f"{INSTALL_ONLY}=1 {trust}"
    ops.decided(
        name=f"Order a certificate for {settings.hostname} from the ACME CA",
        command=(f"{bundle}{paths.certbot} certonly --standalone --preferred-challenges http --http-01-port 80 "
                 f"--non-interactive --agree-tos --no-eff-email --email {shlex.quote(settings.acme_contact)} "
                 f"--server {shlex.quote(settings.acme_directory)} --cert-name {LINEAGE} "
                 f"-d {settings.hostname} --key-type rsa --rsa-key-size 3072 --deploy-hook {mine['hook']} "
                 f"{_dirs(paths)}"),
        needed=order, why_not=why_not)
    now = installed["sha256"] if installed else None  # the pair's digest now; None: this run puts another
    if order:
        now = None  # the hook installs what certbot issues
    elif lineage is None:  # held back for restore.py: a stand-in until then, if the host has no pair at all
        host.log(f"The newest backup ({restorable}) holds a valid certificate for {settings.hostname}: no new "
                 "order (CAs limit duplicates); restore.py puts it back", logger.warning)
        if installed is None:
            tls.self_signed_certificate(name=f"Make a self-signed certificate for {settings.hostname} (until "
                                             "restore.py)", hostname=settings.hostname, cert=cert, key=key)
    elif now != lineage["sha256"]:
        server.shell(name="Install the ACME certificate where the TLS listeners read it",
                     commands=[f"{INSTALL_ONLY}=1 {mine['hook']}"])
        now = None
    else:
        ops.permissions(name="Let only root and qmailtls read the TLS key", path=key, mode=tls.KEY_MODE,
                        user="root", group=tls.KEY_GROUP)
    return tls.Pair("acme", measured=(tls.measure(platform, cert), now))


@deploy("acme")
def renewal(platform: Platform, settings: Settings) -> None:
    """The renewal loop (or cron line) under ``tls: acme``; taken away otherwise."""
    on = settings.tls == "acme"
    if not on and not services.supervises(platform) and not host_state()["acme_cron"]:
        return  # no line to take away
    services.repeat(platform, services.Repeat(
        "acme", SERVICE, "renews the ACME certificate when due", "renew when due", files(platform)["renew"],
        RENEW_EVERY, CRON_NAME, cron_minute="17", cron_hour="*/12"),
        on, operation="Renew the ACME certificate twice a day (cron)" if on
        else "Stop renewing an ACME certificate (cron)", off_because="tls is not acme")


# --- backup and restore ---------------------------------------------------------------------------


@operation()
def lineage_links(config_dir: str):
    """certbot's live/ links of the lineage, to the newest files of its archive (backups carry
    no links)."""
    live, archive = f"{config_dir}/live/{LINEAGE}", f"../../archive/{LINEAGE}"
    yield (f"mkdir -p {live} && cd {live} && for f in cert chain fullchain privkey; do "
           f"n=$(ls {archive} | sed -n \"s/^$f\\([0-9][0-9]*\\)\\.pem$/\\1/p\" | sort -n | tail -1); "
           f"[ -n \"$n\" ] && ln -sfn {archive}/$f$n.pem $f.pem; done; true")


def restore(platform: Platform, settings: Settings, backup) -> None:
    """certbot's config dir from BACKUP (account, archive, renewal config) where the host's
    differs, its live/ links made again; the pair itself is tasks/tls.py's restore."""
    config_dir = PATHS[platform.name].config_dir
    records = sorted((r for r in backup.host_files().values()
                      if r.path == config_dir or r.path.startswith(config_dir + "/")), key=lambda r: r.path)
    if not records:
        return
    if settings.tls != "acme":
        host.log("The backup holds an ACME lineage but tls is not acme: not restored", logger.warning)
        return
    changed = []
    for record in records:
        relative = record.path[len(config_dir):] or "/"
        if record.kind == "dir":
            changed.append(ops.directory(name=f"Restore ACME directory {relative}", path=record.path,
                                         user=record.owner, group=record.group, mode=record.mode))
        else:
            changed.append(ops.secret_file(name=f"Restore ACME file {relative}", dest=record.path,
                                           data=backup.read(record), mode=record.mode, user=record.owner,
                                           group=record.group))
    lineage_links(name="Link the restored ACME certificate (live/)", config_dir=config_dir,
                  _if=any_changed(*changed))


# --- status check --------------------------------------------------------------------------------


def check_acme_renewal(target):
    """Under tls: acme, the host holds the CA's certificate and its last renewal did not fail
    (a failure warns, and errors once the certificate is near expiry)."""
    if target.settings.tls != "acme":
        return SKIPPED, f"tls is {target.settings.tls}, not acme"
    mine = files(target.platform)
    output = target.run(f"printf 'status\\t'; cat {mine['status']} 2>/dev/null || echo; "
                        f"openssl x509 -noout -enddate -in {mine['live']}/cert.pem 2>/dev/null || true")
    status = re.search(r"^status\t(.*)$", output, re.MULTILINE).group(1).split("\t")
    end = re.search(r"^notAfter=(.*)$", output, re.MULTILINE)
    if end is None:
        return WARNING, ("no certificate from the ACME CA on the host yet: deploy orders one (or restore.py "
                         "puts the backup's back)")
    days = int((ssl.cert_time_to_seconds(end.group(1).strip()) - time.time()) // 86400)
    if status[0] == "failed":
        why = one_line(status[2] if len(status) > 2 else "no reason recorded")
        level = ERROR if days < tls.CERT_ERROR_DAYS else WARNING
        return level, f"the renewal at {status[1]} failed ({why}); the certificate in service expires in {days} days"
    if status[0] == "ok":
        return OK, f"renewal checked at {status[1]}; the certificate expires in {days} days"
    return OK, f"issued; no renewal run yet; expires in {days} days"


# --- the host's state ---------------------------------------------------------------------------


def _lineage_probe(platform: Platform, settings: Settings) -> str:
    """The lineage's name (CN) and the SHA256 of its full chain (what the hook installs as cert.pem)."""
    paths = PATHS[platform.name]
    live = f"{paths.config_dir}/live/{LINEAGE}"
    return (f"[ -f {paths.config_dir}/renewal/{LINEAGE}.conf ] && [ -f {live}/fullchain.pem ] && "
            f"printf 'acme\\t%s\\t%s\\n' \"$(openssl x509 -noout -subject -nameopt multiline -in {live}/cert.pem "
            f"2>/dev/null | sed -n 's/^ *commonName *= *//p')\" \"$({platform.shell.sha256} < {live}/fullchain.pem "
            "| cut -c1-64)\"")


def _lineage(lines: list[list[str]]) -> dict | None:
    fields = lines[0] if lines else []
    return {"cn": fields[0], "sha256": fields[1]} if len(fields) == 2 else None


def _cron_probe(platform: Platform, settings: Settings) -> str:
    if services.supervises(platform):
        return "true"
    return f"crontab -l 2>/dev/null | grep -qF {shlex.quote(files(platform)['renew'])} && echo acme_cron"


COMPONENT = Component(
    name="acme",
    needs=lambda platform, settings: Needs(packages=packages(platform, settings)),
    settings=(
        Setting("acme_directory", "letsencrypt", _directory,
                "under `tls: acme`: the CA's directory: `letsencrypt`, `letsencrypt-staging` or an https:// URL"),
        Setting("acme_contact", None, _contact, "under `tls: acme`: the account's mail address (required)"),
        Setting("acme_ca_bundle", None, _ca_bundle,
                "a PEM file on the laptop: the CA the ACME client trusts for the directory's HTTPS (a test CA)"),
    ),
    validate=_validate,
    probes=(Probe("acme", _lineage_probe, _lineage, lambda: None),
            Probe("acme_cron", _cron_probe, bool, bool)),
    checks=(check_acme_renewal,),
    backup=BackupPart(paths=lambda settings, platform: (PATHS[platform.name].config_dir,)
                      if settings.tls == "acme" else (), restore=restore),
)
