"""DKIM: outbound mail signed for the host's domains; inbound mail on port 25 told what it is.

- Signing, the qmail way: qmail-send runs ``sign.py`` in place of qmail-remote (notqmail's
  qmail-rspawn honours QMAILREMOTE, set in tasks/qmail.py's start), as qmailr. It signs mail whose
  envelope sender is in one of ``domains`` with that domain's keys and execs the real
  qmail-remote; any failure to sign is qmail-remote's temporary failure, so the message
  waits in the queue and nothing unsigned leaves. The signing table beside it lists the
  keys (written by the deploy, read per message: no restart).
- Keys are made on the host, once per domain and selector (python3-dkim's dknewkey:
  RSA-2048; ed25519 too with ``dkim_ed25519``, under selector SELECTOR-ed25519), in a
  directory only qmailr may enter, each key 400 qmailr from its first byte. Rotating is
  changing ``dkim_selector``: a new key is made and signs; the old stays on the host, and
  is still printed by records.py while it is in ``dkim_retired_selectors`` (publish both
  until mail signed with the old one has been read, then drop it from DNS and the list).
- A bare host whose newest backup (on the laptop) holds a domain's key makes no new one:
  restore.py puts the backup's back, so DNS needs no change; outbound mail from that
  domain waits in the queue until then.
- Inbound: qmail-smtpd queues through ``authres.py`` (QMAILQUEUE), which prepends an
  ``Authentication-Results:`` header with each DKIM signature's result and SPF of the
  envelope sender, asking the host's own resolver (tasks/resolver.py), and removes any forged one
  in this host's name (``authentication_results``). The same program asks rspamd for its
  verdict first (tasks/spam.py, ``spam_filter``): one Python start per message for both jobs.
- The DNS records it needs (one TXT per key) are declared for records.py and compared with
  DNS by the tasks/dns.py checks; its own check says each signing key is in place and private.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from pyinfra import host, logger
from pyinfra.api import deploy

from qmailhost import ops, recovery
from qmailhost.checks import ERROR, OK, SKIPPED
from qmailhost.component import BackupPart, Component, DnsRecord, Needs, Probe, Setting
from qmailhost.facts import host_state
from qmailhost.files import read
from qmailhost.platform import Platform
from qmailhost.settings import Settings, SettingsError, boolean
from tasks import resolver, spam

SIGNER_USER = "qmailr"  # qmail-remote's user: the only one that may read the keys
ED25519_SUFFIX = "-ed25519"
_SELECTOR = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class Paths:
    dknewkey: str  # python3-dkim's key maker
    packages: tuple[str, ...]  # dkimpy (with dnspython, and PyNaCl for ed25519) and pyspf


PATHS = {
    "debian": Paths("/usr/bin/dknewkey", ("python3-dkim", "python3-spf")),
    # pkgsrc for its default Python (lang/python/pyversion.mk: 313): mail/py-dkim (dkimpy, PKGNAME
    # py313-dkim; DEPENDS py-dns (dnspython), py-nacl (PyNaCl), py-authres, py-aiodns) installs
    # bin/dknewkey unsuffixed (PLIST; PYTHON_SELF_CONFLICT=yes), mail/py-spf (pyspf) is py313-spf.
    "netbsd": Paths("/usr/pkg/bin/dknewkey", ("py313-dkim", "py313-spf")),
}


@dataclass(frozen=True)
class Key:
    domain: str
    selector: str
    algorithm: str  # "rsa" or "ed25519"


def own_dir(platform: Platform) -> str:
    return f"{platform.config_dir}/dkim"


def key_dir(platform: Platform) -> str:
    return f"{own_dir(platform)}/keys"


def key_file(platform: Platform, key: Key, suffix: str = "key") -> str:
    return f"{key_dir(platform)}/{key.domain}/{key.selector}.{suffix}"


def files(platform: Platform) -> dict[str, str]:
    mine = own_dir(platform)
    return {"signer": f"{mine}/qmail-remote", "table": f"{mine}/signing",
            "filter": f"{mine}/qmail-queue", "inbound": f"{mine}/inbound"}


def signing_keys(settings: Settings) -> tuple[Key, ...]:
    """The keys that sign: each domain's under dkim_selector (and its ed25519 one)."""
    if not settings.dkim:
        return ()
    algorithms = (("rsa", ""), *((("ed25519", ED25519_SUFFIX),) if settings.dkim_ed25519 else ()))
    return tuple(Key(domain, settings.dkim_selector + suffix, algorithm)
                 for domain in settings.domains for algorithm, suffix in algorithms)


def published_keys(settings: Settings) -> tuple[Key, ...]:
    """The keys DNS must publish: those that sign and the retired ones still listed."""
    if not settings.dkim:
        return ()
    retired = tuple(Key(domain, selector, "ed25519" if selector.endswith(ED25519_SUFFIX) else "rsa")
                    for domain in settings.domains for selector in settings.dkim_retired_selectors)
    return (*signing_keys(settings), *retired)


def packages(platform: Platform, settings: Settings) -> tuple[str, ...]:
    return PATHS[platform.name].packages if settings.dkim or settings.authentication_results else ()


def signer(platform: Platform, settings: Settings) -> str | None:
    """What qmail-send runs as qmail-remote (QMAILREMOTE), or None: qmail-remote itself."""
    return files(platform)["signer"] if settings.dkim else None


def inbound_filter(settings: Settings) -> bool:
    """Does mail on port 25 pass the inbound filter (Authentication-Results, the spam verdict, or both)?"""
    return settings.authentication_results or settings.spam_filter


def inbound_queue(platform: Platform, settings: Settings) -> str | None:
    """What qmail-smtpd queues through (QMAILQUEUE), or None: qmail-queue itself."""
    return files(platform)["filter"] if inbound_filter(settings) else None


def inbound_config(platform: Platform, settings: Settings) -> str:
    """The inbound filter's config: the real qmail-queue, and a line or two turning on each of its jobs."""
    lines = [f"queue {platform.qmail_bin}/qmail-queue"]
    if settings.authentication_results:
        lines = [f"authserv-id {settings.hostname}", *lines, f"resolver {resolver.ADDRESS}"]
    if spam.checkv2_url(settings):
        lines += [f"rspamd {spam.checkv2_url(settings)}", f"rspamd-seconds {spam.TIME_BUDGET}"]
    return "\n".join(lines) + "\n"


# --- settings --------------------------------------------------------------------------------


def _selector(value, _values=None) -> str:
    if not isinstance(value, str) or not _SELECTOR.fullmatch(value) or value.endswith(ED25519_SUFFIX):
        raise SettingsError("dkim_selector", f"{value!r} is not a selector",
                            f"use a DNS label such as \"mail2026\" (lower-case letters, digits, -; not ending "
                            f"in {ED25519_SUFFIX})")
    return value


def _retired(value, values: dict) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and _SELECTOR.fullmatch(v) for v in value):
        raise SettingsError("dkim_retired_selectors", f"{value!r} is not a list of selectors",
                            "list the selectors still published after a rotation, e.g. [\"mail2025\"], or []")
    current = values.get("dkim_selector")
    if current in value or f"{current}{ED25519_SUFFIX}" in value:
        raise SettingsError("dkim_retired_selectors", f"{current!r} is the selector that signs",
                            "list only older selectors there, or change dkim_selector")
    return tuple(dict.fromkeys(value))


# --- the deploy ------------------------------------------------------------------------------


def _held_back(settings: Settings, platform: Platform, inventory: tuple[dict, str] | None = None) -> dict[str, str]:
    """Key file -> the newest backup that holds it (restore.py puts it back): a snapshot in
    backup_repository, else a backup directory on this laptop."""
    newest = recovery.newest_holding(settings, platform, inventory)
    if newest is None:
        return {}
    return {record.path: newest.label for record in newest.records
            if record.kind == "file" and record.path.startswith(key_dir(platform) + "/")}


def _new_key_command(platform: Platform, key: Key) -> str:
    """Make KEY with dknewkey where only qmailr can read it, under a temporary name first: the
    public half is renamed last, so a key without it is made again (it was never published)."""
    folder = shlex.quote(f"{key_dir(platform)}/{key.domain}")
    new, ktype = f"{key.selector}.new", "--ktype ed25519 " if key.algorithm == "ed25519" else ""
    return (f"umask 077 && mkdir -p {folder} && chown {SIGNER_USER} {folder} && chmod 700 {folder} && cd {folder} && "
            f"rm -f {new}.key {new}.dns && {PATHS[platform.name].dknewkey} {ktype}{new} 2>/dev/null && "
            f"chown {SIGNER_USER} {new}.key {new}.dns && chmod 400 {new}.key && chmod 444 {new}.dns && "
            f"mv -f {new}.key {key.selector}.key && mv -f {new}.dns {key.selector}.dns")


def _table(platform: Platform, settings: Settings) -> str:
    lines = ["# qmailhost (dkim/): what the signer in place of qmail-remote signs with. Written by the deploy.",
             f"remote\t{platform.qmail_bin}/qmail-remote"]
    lines += [f"sign\t{key.domain}\t{key.selector}\t{key.algorithm}\t{key_file(platform, key)}"
              for key in signing_keys(settings)]
    return "\n".join(lines) + "\n"


def _script(platform: Platform, name: str) -> str:
    return f"#!{platform.python}\n" + read(name)


@deploy("dkim")
def configure(platform: Platform, settings: Settings) -> None:
    """The keys (made once), the signer and its table; the inbound filter and its config."""
    mine = files(platform)
    wanted = settings.dkim or inbound_filter(settings)
    if wanted:
        ops.directory(name="Create qmailhost's DKIM directory", path=own_dir(platform), user="root",
                      group=platform.root_group, mode="755")
    if settings.dkim:
        ops.directory(name="Create the DKIM key directory (only qmailr may enter)", path=key_dir(platform),
                      user=SIGNER_USER, group=platform.root_group, mode="700")
        present, held = host_state()["dkim_keys"], None
        for key in signing_keys(settings):
            if (key.domain, key.selector) in present:
                needed, why_not = False, f"the host holds the {key.algorithm} key {key.selector} of {key.domain}"
            else:
                held = _held_back(settings, platform) if held is None else held
                backup = held.get(key_file(platform, key))
                needed = backup is None
                why_not = f"the backup {backup} holds it: restore.py puts it back"
                if backup:
                    host.log(f"The newest backup ({backup}) holds the DKIM key {key.selector} of {key.domain}: no "
                             "new key (DNS publishes the old one); mail from it waits until restore.py",
                             logger.warning)
            ops.decided(name=f"Make the DKIM {key.algorithm} key {key.selector} for {key.domain}",
                     command=_new_key_command(platform, key), needed=needed, why_not=why_not)
        ops.whole_file(name="Write the DKIM signing table", dest=mine["table"], content=_table(platform, settings))
        ops.whole_file(name="Install the DKIM signer (in place of qmail-remote)", dest=mine["signer"], mode="755",
                       content=_script(platform, "dkim/sign.py"))
    else:
        for path, what in ((mine["table"], "signing table"), (mine["signer"], "signer")):
            ops.absent_file(name=f"Remove the DKIM {what} (dkim is off; keys kept)", path=path)
    if inbound_filter(settings):
        ops.whole_file(name="Write the inbound filter's config", dest=mine["inbound"],
                       content=inbound_config(platform, settings))
        ops.whole_file(name="Install the inbound filter (Authentication-Results, spam verdict; before qmail-queue)",
                       dest=mine["filter"], mode="755", content=_script(platform, "dkim/authres.py"))
    else:
        for path, what in ((mine["inbound"], "inbound filter's config"), (mine["filter"], "inbound filter")):
            ops.absent_file(name=f"Remove the {what} (authentication_results and spam_filter are off)", path=path)


# --- DNS records, status check ---------------------------------------------------------------


def dns_records(settings: Settings, state: dict) -> tuple[DnsRecord, ...]:
    """One TXT record per published key, with the public key the host holds."""
    records, signing = [], signing_keys(settings)
    for key in published_keys(settings):
        name = f"{key.selector}._domainkey.{key.domain}"
        public = state["dkim_keys"].get((key.domain, key.selector))
        if public is None:
            records.append(DnsRecord(name, "TXT", f"v=DKIM1; k={key.algorithm}; p=(no key on the host yet)", "dkim",
                                     comment="DKIM: the deploy makes this key (or restore.py puts it back)"))
            continue
        role = "signs" if key in signing else "retired: remove once mail signed with it is read"
        records.append(DnsRecord(name, "TXT", public, "dkim", comment=f"DKIM {key.algorithm} key ({role})"))
    return tuple(records)


def check_dkim_keys(target):
    """Each domain's signing key is on the host, readable by qmailr alone; the signer is in place."""
    if not target.settings.dkim:
        return SKIPPED, "dkim is off: outbound mail is not signed"
    keys = signing_keys(target.settings)
    paths = " ".join(shlex.quote(key_file(target.platform, key)) for key in keys)
    signer_file = files(target.platform)["signer"]
    output = target.run(f"id -u {SIGNER_USER}; for f in {paths}; do if [ -f \"$f\" ]; then ls -ln \"$f\"; "
                        f"else echo \"absent $f\"; fi; done; [ -x {signer_file} ] || echo 'absent {signer_file}'")
    uid, *lines = output.strip().split("\n")
    absent = any(line.startswith("absent ") for line in lines)  # (only then asked: a repository is far)
    # (asked from the laptop only: the backups are read with its restic and password)
    held = _held_back(target.settings, target.platform, target.inventory) if absent and not target.on_host else {}
    problems = []
    waiting = []  # keys a restore brings back
    for line in lines:
        words = line.split()
        if words[:1] == ["absent"] and words[1] in held:
            waiting.append(f"{words[1]} (the backup {held[words[1]]} holds it)")
        elif words[:1] == ["absent"]:
            problems.append(f"{words[1]} is missing")
        elif len(words) >= 9 and (words[0][4:10] != "------" or words[2] != uid.strip()):
            problems.append(f"{words[-1]} is {words[0]} uid {words[2]}: only {SIGNER_USER} may read it")
    if problems:
        return ERROR, "; ".join(problems + waiting) + " (mail from those domains waits in the queue)"
    if waiting:
        return ERROR, (f"not yet restored: {'; '.join(waiting)}; mail from those domains waits in the queue: "
                       "run restore.py now (pyinfra inventory/<site>.py restore.py)")
    return OK, f"{len(keys)} key{'s' if len(keys) != 1 else ''} for {', '.join(target.settings.domains)}, " \
               f"readable by {SIGNER_USER} alone"


# --- the host's state --------------------------------------------------------------------------


def _keys_probe(platform: Platform, settings: Settings) -> str:
    """Each key the host holds, with the public half's DNS value (k= and p=, never the private key)."""
    return (f"for f in {key_dir(platform)}/*/*.dns; do [ -f \"$f\" ] && [ -f \"${{f%.dns}}.key\" ] && "
            "d=${f%/*} && s=${f##*/} && printf 'dkim_keys\\t%s\\t%s\\t%s\\n' \"${d##*/}\" \"${s%.dns}\" "
            "\"$(tr -d '\\n' < \"$f\")\"; done")


def _keys(lines: list[list[str]]) -> dict[tuple[str, str], str]:
    found = {}
    for fields in lines:
        if len(fields) == 3:
            tags = dict(tag.strip().split("=", 1) for tag in fields[2].split(";") if "=" in tag)
            if tags.get("p"):
                found[(fields[0], fields[1])] = f"v=DKIM1; k={tags.get('k', 'rsa')}; p={tags['p']}"
    return found


COMPONENT = Component(
    name="dkim",
    needs=lambda platform, settings: Needs(packages=packages(platform, settings)),
    settings=(
        Setting("dkim", True, boolean("dkim"), "sign outbound mail from `domains` with DKIM (keys made on the host)"),
        Setting("dkim_selector", "mail", _selector,
                "the DKIM selector that signs; change it to rotate the keys (a new key per domain)"),
        Setting("dkim_retired_selectors", [], _retired,
                "older selectors still published after a rotation (records.py prints them; keys stay on the host)"),
        Setting("dkim_ed25519", False, boolean("dkim_ed25519"),
                "also sign with an ed25519 key (selector SELECTOR-ed25519), beside RSA-2048"),
        Setting("authentication_results", True, boolean("authentication_results"),
                "add `Authentication-Results:` (DKIM, SPF) to mail arriving on port 25"),
    ),
    probes=(Probe("dkim_keys", _keys_probe, _keys, dict),),
    dns_records=dns_records,
    checks=(check_dkim_keys,),
    backup=BackupPart(paths=lambda settings, platform: (key_dir(platform),)),
)
