"""NetBSD command plans for tasks/dkim.py (no NetBSD host; see test_netbsd_plans.py): DKIM signing in
place of qmail-remote (QMAILREMOTE in qmailsend's rc.conf.d postenv: qmail-run's script runs
`env - ${qmailsend_postenv} qmail-start ...`, and notqmail's qmail-rspawn reads it) and the
Authentication-Results filter in front of qmail-queue (QMAILQUEUE in qmailsmtpd's postenv).

dkimpy and pyspf come from pkgin's binary packages for pkgsrc's default Python (313):
py313-dkim (mail/py-dkim; its key maker is bin/dknewkey, unsuffixed) and py313-spf
(mail/py-spf). Keys are made on the host by /usr/pkg/bin/dknewkey, once per domain and
selector; the model host (harness/netbsd_host.py) makes a new pair each time the command
runs, so a test sees exactly which keys a run made (NetBSDHost.keys_made), and its dkim_keys
probe reads them back from the key files.
"""

from __future__ import annotations

import re

import pytest
from pyinfra.api import FunctionCommand

from harness import netbsd_host
from harness.netbsd_host import HEALTH_PACKAGES, NetBSDHost, converged_host, deploy_data
from harness.plan_harness import commands_of, index, plan_deploy, uploaded
from qmailhost import checks, recovery
from qmailhost import platform as platforms
from qmailhost.files import read
from qmailhost.settings import Settings
from tasks import dkim
from tasks.health import SETTINGS_COPY
from tests.test_netbsd_checks import CheckedHost
from tests.test_netbsd_recovery_plans import RESTORE, execute, old_backup
from tests.test_netbsd_recovery_plans import plan as recovery_plan

NETBSD = platforms.netbsd("10")
PYTHON, DKNEWKEY = "/usr/pkg/bin/python3.13", "/usr/pkg/bin/dknewkey"
MINE = "/usr/pkg/etc/qmailhost/dkim"
KEYS, TABLE, SIGNER, FILTER, INBOUND = (f"{MINE}/keys", f"{MINE}/signing", f"{MINE}/qmail-remote",
                                        f"{MINE}/qmail-queue", f"{MINE}/inbound")
HERMETIC = {"backup_dir": "/nonexistent/qmailhost-backups"}  # no backup on this laptop holds a key back
SEND_ENV = f'qmailsend_postenv="PATH=/usr/pkg/bin:/usr/bin:/bin QMAILREMOTE={SIGNER}"\n'
SMTPD_ENV = ('qmailsmtpd_postenv="OPENSSL_CONF=/usr/pkg/etc/qmailhost/tls/openssl-policy.cnf '
             f'QMAILQUEUE={FILTER}"\n')
# What must never reach a NetBSD host: Debian's packages and paths, Linux's service tools, GNU-only flags.
LINUX_ONLY = ("apt-get", "dpkg", "python3-dkim", "python3-spf", "/usr/bin/python3", "/usr/bin/dknewkey",
              "systemctl", "update-rc.d", "/etc/service", "svc ", "svstat", "/etc/init.d", "root:root",
              "sha256sum", "stat -c", "getent shadow", "mv -fT", "install -D", "chown --", "readlink -f",
              "xargs -r", "sed -i ", "cp -a", "hostname -I", "ip addr", "ip -o", "/var/qmail/bin/")


@pytest.fixture(autouse=True)
def password_env(monkeypatch):
    monkeypatch.setenv("QMAILHOST_TEST_PASSWORD", "correct horse")


@pytest.fixture(scope="module")
def bare():
    """A bare model host and its plan with dkim and authentication_results on (the defaults)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QMAILHOST_TEST_PASSWORD", "correct horse")
        host = NetBSDHost()
        return host, plan_deploy(deploy_data(**HERMETIC), host.answer)


@pytest.fixture(scope="module")
def converged():
    """A model host the bare plan was applied to (it plans nothing more); copy before changing it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QMAILHOST_TEST_PASSWORD", "correct horse")
        return converged_host(**HERMETIC)


def key_command(domain: str, selector: str, ed25519: bool = False) -> str:
    folder = f"{KEYS}/{domain}"
    new = f"{selector}.new"
    return (f"umask 077 && mkdir -p {folder} && chown qmailr {folder} && chmod 700 {folder} && cd {folder} && "
            f"rm -f {new}.key {new}.dns && {DKNEWKEY} {'--ktype ed25519 ' if ed25519 else ''}{new} 2>/dev/null && "
            f"chown qmailr {new}.key {new}.dns && chmod 400 {new}.key && chmod 444 {new}.dns && "
            f"mv -f {new}.key {selector}.key && mv -f {new}.dns {selector}.dns")


def key_commands(plan) -> list[str]:
    return [c for c in commands_of(plan) if DKNEWKEY in c]


def installed(plan, dest: str, mode: str) -> bool:
    return (f"chown root:wheel {dest}.qmailhost-new && chmod {mode} {dest}.qmailhost-new "
            f"&& mv -f {dest}.qmailhost-new {dest}") in commands_of(plan)


def table(*keys: tuple[str, str, str]) -> str:
    return ("# qmailhost (dkim/): what the signer in place of qmail-remote signs with. Written by the deploy.\n"
            "remote\t/usr/pkg/bin/qmail-remote\n"
            + "".join(f"sign\t{d}\t{s}\t{a}\t{KEYS}/{d}/{s}.key\n" for d, s, a in keys))


def planned_texts(plan) -> list[str]:
    """Every command of PLAN and every file it uploads; of the signer and the filter, the interpreter
    line (the rest is the component's own file, the same on every platform, as the test above says)."""
    scripts = (f"{SIGNER}.qmailhost-new", f"{FILTER}.qmailhost-new")
    return [c if isinstance(c, str) else f"{c[2]}\n{c[1].split(chr(10))[0] if c[2] in scripts else c[1]}"
            for _, commands in plan for c in commands if not isinstance(c, FunctionCommand)]


def assert_netbsd_only(*texts: str) -> None:
    for text in texts:
        for linux in LINUX_ONLY:
            assert linux not in text, f"{linux!r} on a NetBSD host: {text[:300]}"


def public(value: str) -> str:
    return re.fullmatch(r"v=DKIM1; k=(?:rsa|ed25519); p=([A-Za-z0-9+/=]+)", value)[1]


# --- pkgsrc's dkimpy and pyspf


def test_the_netbsd_paths_are_pkgsrcs_dkimpy_and_pyspf():
    # mail/py-dkim: PKGNAME ${PYPKGPREFIX}-${DISTNAME:S/py//} (dkimpy-1.1.8: py313-dkim), PLIST bin/dknewkey
    # (PYTHON_SELF_CONFLICT=yes: no -3.13 suffix); mail/py-spf: py313-spf; lang/python313: bin/python3.13.
    assert dkim.PATHS["netbsd"] == dkim.Paths(DKNEWKEY, ("py313-dkim", "py313-spf")) and NETBSD.python == PYTHON
    paths = dkim.PATHS["netbsd"]  # the model host's are the same (what its dknewkey insists on)
    assert (NETBSD.python, paths.dknewkey, paths.packages) == (netbsd_host.PYTHON, netbsd_host.DKNEWKEY,
                                                               netbsd_host.DKIM_PACKAGES)
    assert dkim.files(NETBSD) == {"signer": SIGNER, "table": TABLE, "filter": FILTER, "inbound": INBOUND}
    assert dkim.key_dir(NETBSD) == KEYS == netbsd_host.DKIM_KEYS


# --- a bare host: the packages, one key per domain, the signer and the filter in the services' env


def test_a_bare_host_installs_the_packages_and_makes_one_key(bare):
    _, plan = bare
    commands = commands_of(plan)
    install = commands[0]
    assert install.startswith("PKG_RCD_SCRIPTS=YES /usr/pkg/bin/pkgin -y install ")
    assert install.split()[6:8] == ["py313-dkim", "py313-spf"]  # after python313 and checkpassword: in component order
    assert key_commands(plan) == [key_command("example.org", "mail")]
    assert [name for name, c in plan if key_command("example.org", "mail") in c] == [
        "Make the DKIM rsa key mail for example.org"]
    # the package and qmailr before the key; the key directory (qmailr's alone) before the key in it
    assert f"chown qmailr:wheel {KEYS} && chmod 700 {KEYS}" in commands
    assert index(commands, "py313-dkim") < index(commands, "useradd -g qmail -d /var/qmail -s /sbin/nologin qmailr") \
        < index(commands, f"chown qmailr:wheel {KEYS} ") < index(commands, DKNEWKEY)
    assert uploaded(plan, TABLE) == table(("example.org", "mail", "rsa"))
    assert index(commands, DKNEWKEY) < index(commands, f"upload {TABLE}.qmailhost-new")


def test_a_bare_host_writes_the_signer_and_the_filter_with_pkgsrcs_python(bare):
    _, plan = bare
    commands = commands_of(plan)
    for script, source in ((SIGNER, "dkim/sign.py"), (FILTER, "dkim/authres.py")):
        text = uploaded(plan, script)
        assert text.startswith(f"#!{PYTHON}\n") and text == f"#!{PYTHON}\n" + read(source)
        assert installed(plan, script, "755")
    assert installed(plan, TABLE, "644") and installed(plan, INBOUND, "644")
    assert uploaded(plan, INBOUND) == ("authserv-id mail.example.org\nqueue /usr/pkg/bin/qmail-queue\nresolver 127.0.0.1\n"
                                       "rspamd http://127.0.0.1:11333/checkv2\nrspamd-seconds 20\n")  # (spam/)
    # qmail-send runs the signer as qmail-remote, qmail-smtpd queues through the filter: both in place first
    assert SEND_ENV in uploaded(plan, "/etc/rc.conf.d/qmailsend")
    assert SMTPD_ENV in uploaded(plan, "/etc/rc.conf.d/qmailsmtpd")
    assert index(commands, f"mv -f {SIGNER}.qmailhost-new") < index(commands, "/etc/rc.d/qmailsend start")
    assert index(commands, f"mv -f {FILTER}.qmailhost-new") < index(commands, "/etc/rc.d/qmailsmtpd start")
    assert not [c for c in commands if c.endswith(" restart")], "a bare host restarts nothing"


def test_a_bare_host_applied_holds_a_private_key_and_then_plans_nothing(bare):
    host, plan = bare
    host = host.copy()
    host.apply(plan)
    assert host.keys_made == [("example.org", "mail", "rsa")]
    key, folder = host.tree[f"{KEYS}/example.org/mail.key"], host.tree[f"{KEYS}/example.org"]
    assert (key["mode"], key["user"]) == ("400", "qmailr") and (folder["mode"], folder["user"]) == ("700", "qmailr")
    assert {"qmailsend", "qmailsmtpd"} <= host.running
    # the probe reports the public half as DNS publishes it (dknewkey's h=sha256 left out)
    keys = host.answer("HostState", {"script": _script()})["dkim_keys"]
    dns = host.tree[f"{KEYS}/example.org/mail.dns"]["data"].decode()
    assert keys == {("example.org", "mail"): f"v=DKIM1; k=rsa; p={public(dns.replace(' h=sha256;', ''))}"}
    assert plan_deploy(deploy_data(**HERMETIC), host.answer) == []
    assert host.keys_made == [("example.org", "mail", "rsa")]


def _script() -> str:
    """The HostState script a deploy of the default settings runs on NetBSD."""
    from qmailhost.registry import for_platform

    settings = Settings.from_host_data(deploy_data(**HERMETIC), inventory_name="mail.example.org")
    return "\n".join(probe.script(NETBSD, settings) for component in for_platform(NETBSD)
                     for probe in component.probes)


def test_each_domain_gets_its_key_and_ed25519_its_own():
    settings = {**HERMETIC, "domains": ["example.org", "example.net"], "dkim_ed25519": True}
    host = NetBSDHost()
    plan = plan_deploy(deploy_data(**settings), host.answer)
    assert key_commands(plan) == [key_command("example.org", "mail"),
                                  key_command("example.org", "mail-ed25519", ed25519=True),
                                  key_command("example.net", "mail"),
                                  key_command("example.net", "mail-ed25519", ed25519=True)]
    assert uploaded(plan, TABLE) == table(("example.org", "mail", "rsa"), ("example.org", "mail-ed25519", "ed25519"),
                                          ("example.net", "mail", "rsa"), ("example.net", "mail-ed25519", "ed25519"))
    host.apply(plan)
    assert sorted(host.keys_made) == sorted([(d, s, a) for d in ("example.org", "example.net")
                                             for s, a in (("mail", "rsa"), ("mail-ed25519", "ed25519"))])
    keys = host.answer("HostState", {"script": _script()})["dkim_keys"]
    assert set(keys) == {(d, s) for d in ("example.org", "example.net") for s in ("mail", "mail-ed25519")}
    assert keys[("example.net", "mail-ed25519")].startswith("v=DKIM1; k=ed25519; p=")
    assert len({public(v) for v in keys.values()}) == 4, "a key of its own for each"
    assert plan_deploy(deploy_data(**settings), host.answer) == []
    assert len(host.keys_made) == 4


# --- keys are made once


def test_a_converged_host_plans_nothing_and_makes_no_key(converged):
    host = converged.copy()
    made = list(host.keys_made)
    assert plan_deploy(deploy_data(**HERMETIC), host.answer) == []
    plan = plan_deploy(deploy_data(**HERMETIC, tls_policy="modern"), host.answer)  # something else changes
    assert plan and key_commands(plan) == []
    host.apply(plan)
    assert host.keys_made == made


def test_a_host_that_has_the_key_makes_none(converged):
    host = NetBSDHost()  # e.g. a reinstalled host whose key directory was kept
    for path, entry in converged.tree.items():
        if path.startswith(f"{KEYS}/"):
            host.tree[path] = dict(entry)
    before = host.key_files()
    plan = plan_deploy(deploy_data(**HERMETIC), host.answer)
    assert key_commands(plan) == [] and "Make the DKIM rsa key mail for example.org" not in [n for n, _ in plan]
    assert uploaded(plan, TABLE) == table(("example.org", "mail", "rsa"))
    host.apply(plan)
    assert host.keys_made == [] and host.key_files() == before
    assert plan_deploy(deploy_data(**HERMETIC), host.answer) == []


def test_a_key_without_its_public_half_is_made_again(converged):
    host = converged.copy()  # dknewkey died before the .dns was renamed: never published
    del host.tree[f"{KEYS}/example.org/mail.dns"]
    plan = plan_deploy(deploy_data(**HERMETIC), host.answer)
    assert key_commands(plan) == [key_command("example.org", "mail")]


def test_a_rotation_plans_exactly_the_new_key_and_the_table(converged):
    host = converged.copy()
    old = host.key_files()[("example.org", "mail")]
    settings = {**HERMETIC, "dkim_selector": "mail2", "dkim_retired_selectors": ["mail"]}
    plan = plan_deploy(deploy_data(**settings), host.answer)
    assert [name for name, _ in plan] == ["Make the DKIM rsa key mail2 for example.org", "Write the DKIM signing table",
                                          SETTINGS_COPY]
    assert plan[0][1] == [key_command("example.org", "mail2")]
    assert uploaded(plan, TABLE) == table(("example.org", "mail2", "rsa"))
    host.restarted.clear()
    host.apply(plan)
    assert host.restarted == [], "the signer reads the table per message"
    assert host.keys_made[-1] == ("example.org", "mail2", "rsa")
    assert host.key_files()[("example.org", "mail")] == old, "the old key stays on the host"
    state = host.answer("HostState", {"script": _script()})
    records = dkim.dns_records(Settings.from_host_data(deploy_data(**settings), inventory_name="mail.example.org"),
                               state)
    assert [(r.name, r.comment) for r in records] == [
        ("mail2._domainkey.example.org", "DKIM rsa key (signs)"),
        ("mail._domainkey.example.org", "DKIM rsa key (retired: remove once mail signed with it is read)")]
    assert records[1].value == state["dkim_keys"][("example.org", "mail")] != records[0].value
    assert plan_deploy(deploy_data(**settings), host.answer) == []


# --- switched off


def test_dkim_off_removes_the_signer_the_table_and_qmailremote_and_keeps_the_keys(converged):
    host = converged.copy()
    keys = host.key_files()
    plan = plan_deploy(deploy_data(**HERMETIC, dkim=False), host.answer)
    names = [name for name, _ in plan]
    assert names == ["Write /var/qmail/rc", "Remove the DKIM signing table (dkim is off; keys kept)",
                     "Remove the DKIM signer (dkim is off; keys kept)", "Configure qmailsend (/etc/rc.conf.d/qmailsend)",
                     "Run qmailsend (restart on change)", SETTINGS_COPY]
    commands = commands_of(plan)
    assert f"rm -f {TABLE}" in commands and f"rm -f {SIGNER}" in commands
    rc_conf = uploaded(plan, "/etc/rc.conf.d/qmailsend")
    assert 'qmailsend_postenv="PATH=/usr/pkg/bin:/usr/bin:/bin"\n' in rc_conf and "QMAILREMOTE" not in rc_conf
    assert "QMAILREMOTE" not in uploaded(plan, "/var/qmail/rc")
    assert [c for c in commands if c.endswith(" restart")] == ["/etc/rc.d/qmailsend restart"]
    assert not [c for c in commands if KEYS in c or "pkgin" in c], "keys and packages stay (the filter uses them)"
    host.restarted.clear()
    host.apply(plan)
    assert host.restarted == ["qmailsend"]
    assert SIGNER not in host.files and TABLE not in host.files and FILTER in host.files
    assert host.key_files() == keys
    assert plan_deploy(deploy_data(**HERMETIC, dkim=False), host.answer) == []
    # and on again: the key it kept signs; no new one
    plan = plan_deploy(deploy_data(**HERMETIC), host.answer)
    assert key_commands(plan) == [] and SEND_ENV in uploaded(plan, "/etc/rc.conf.d/qmailsend")
    host.apply(plan)
    assert host.restarted == ["qmailsend", "qmailsend"] and len(host.keys_made) == 1


def test_authentication_results_off_keeps_the_filter_for_the_spam_verdict_alone(converged):
    host = converged.copy()
    plan = plan_deploy(deploy_data(**HERMETIC, authentication_results=False), host.answer)
    assert [name for name, _ in plan] == ["Write the inbound filter's config", SETTINGS_COPY]
    assert uploaded(plan, INBOUND) == ("queue /usr/pkg/bin/qmail-queue\nrspamd http://127.0.0.1:11333/checkv2\n"
                                       "rspamd-seconds 20\n")  # read per message: nothing restarts


def test_authentication_results_and_spam_filter_off_remove_qmailqueue_and_the_filter(converged):
    host = converged.copy()
    off = {"authentication_results": False, "spam_filter": False}
    plan = plan_deploy(deploy_data(**HERMETIC, **off), host.answer)
    assert [name for name, _ in plan] == [
        "Remove the inbound filter's config (authentication_results and spam_filter are off)",
        "Remove the inbound filter (authentication_results and spam_filter are off)",
        "Disable rspamd (/etc/rc.conf.d/rspamd)", "Stop rspamd", "Disable redis (/etc/rc.conf.d/redis)", "Stop redis",
        "Configure qmailsmtpd (/etc/rc.conf.d/qmailsmtpd)", "Run qmailsmtpd (restart on change)", SETTINGS_COPY]
    rc_conf = uploaded(plan, "/etc/rc.conf.d/qmailsmtpd")
    assert 'qmailsmtpd_postenv="OPENSSL_CONF=/usr/pkg/etc/qmailhost/tls/openssl-policy.cnf"\n' in rc_conf
    assert "QMAILQUEUE" not in rc_conf
    commands = commands_of(plan)
    assert f"rm -f {FILTER}" in commands and f"rm -f {INBOUND}" in commands
    assert [c for c in commands if c.endswith(" restart")] == ["/etc/rc.d/qmailsmtpd restart"]
    host.restarted.clear()
    host.apply(plan)
    assert host.restarted == ["qmailsmtpd"] and FILTER not in host.files and SIGNER in host.files
    assert plan_deploy(deploy_data(**HERMETIC, **off), host.answer) == []


def test_both_off_installs_neither_package():
    plan = plan_deploy(deploy_data(**HERMETIC, dkim=False, authentication_results=False, spam_filter=False),
                       NetBSDHost().answer)
    commands = commands_of(plan)
    assert commands[0].split()[4:] == ["python313", "checkpassword", *HEALTH_PACKAGES, "dovecot", "qmail-run", "ucspi-tcp",
                                       "unbound", "stunnel"]
    assert not [c for c in commands if MINE in c]
    assert "QMAILREMOTE" not in uploaded(plan, "/etc/rc.conf.d/qmailsend")
    assert "QMAILQUEUE" not in uploaded(plan, "/etc/rc.conf.d/qmailsmtpd")


# --- after a disk failure: the backup's key, not a new one


def test_a_bare_host_whose_newest_backup_holds_the_key_makes_none(converged, tmp_path, caplog, monkeypatch):
    settings = {"backup_dir": str(tmp_path / "backups")}
    old = converged.copy()
    old_backup(old, deploy_data(**settings))
    _, records = recovery.read_manifest(recovery.backups_in(tmp_path / "backups")[-1])
    assert f"{KEYS}/example.org/mail.key" in {r.path for r in records}
    new = CheckedHost()  # the model host, answering the status checks too
    new.sent, new.blocklist_answers = [], {}
    plan = plan_deploy(deploy_data(**settings), new.answer)
    assert key_commands(plan) == [], "DNS publishes the backup's key: restore.py puts it back"
    assert uploaded(plan, TABLE) == table(("example.org", "mail", "rsa"))  # it signs once the key is back
    assert "restore.py" in caplog.text and "DKIM key mail of example.org" in caplog.text
    new.apply(plan)
    assert new.keys_made == [] and new.key_files() == {}
    # Held back for the restore while its mail waits: an error naming the next step, not a warning.
    monkeypatch.setenv(netbsd_host.PASSWORD_ENV, "correct horse")
    target = checks.Target(Settings.from_host_data(deploy_data(**settings), inventory_name="mail.example.org"),
                           NETBSD, "model.invalid", shell=new.shell)
    status, reason = dkim.check_dkim_keys(target)
    assert status == checks.ERROR and "not yet restored" in reason and "run restore.py now" in reason, reason
    # restore.py: the backup's key is back, qmailr's alone; the next deploy makes none
    execute(new, recovery_plan(new, RESTORE, deploy_data(**settings)))
    assert new.key_files() == old.key_files()
    key = new.tree[f"{KEYS}/example.org/mail.key"]
    assert (key["data"], key["mode"], key["user"]) == (old.tree[f"{KEYS}/example.org/mail.key"]["data"], "400",
                                                        "qmailr")
    assert plan_deploy(deploy_data(**settings), new.answer) == [] and new.keys_made == []


def test_a_bare_host_whose_backup_lacks_the_key_makes_it(converged, tmp_path):
    settings = {"backup_dir": str(tmp_path / "backups")}
    old = converged.copy()
    for path in [p for p in old.tree if p.startswith(f"{KEYS}/")]:
        del old.tree[path]  # a backup from before tasks/dkim.py
    old_backup(old, deploy_data(**settings))
    assert key_commands(plan_deploy(deploy_data(**settings), NetBSDHost().answer)) == [
        key_command("example.org", "mail")]


# --- nothing but NetBSD commands


def test_only_netbsd_commands_are_planned(bare, converged):
    _, plan = bare
    texts = planned_texts(plan)
    texts += planned_texts(plan_deploy(deploy_data(**HERMETIC, dkim_ed25519=True, domains=["example.org", "example.net"]),
                                       NetBSDHost().answer))
    for settings in ({"dkim_selector": "mail2", "dkim_retired_selectors": ["mail"]}, {"dkim": False},
                     {"authentication_results": False}):
        texts += planned_texts(plan_deploy(deploy_data(**HERMETIC, **settings), converged.copy().answer))
    assert_netbsd_only(*texts)
    script = _script()  # the probes: the key files with sh and tr, the addresses with ifconfig
    assert "ifconfig -a" in script
    assert_netbsd_only(script)
