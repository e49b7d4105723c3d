"""NetBSD command plans for `tls: acme` (no NetBSD host, no CA, no network; see test_netbsd_plans.py).

certbot comes from pkgsrc's binary package (security/py-certbot for pkgsrc's default Python:
py313-certbot, its program /usr/pkg/bin/certbot-3.13, its config dir PKG_SYSCONFDIR/letsencrypt).
On a bare host the deploy installs it, writes the deploy hook and the renewal script into
/usr/pkg/etc/qmailhost/acme, orders the certificate once (certbot certonly, standalone HTTP-01
on port 80), and puts a named line for the renewal script in root's crontab (pyinfra's
server.crontab with a cron_name). The model host (harness/netbsd_host.py) runs what is planned:
certbot issues the lineage from a model CA and runs the hook in its environment. Under the
deploy (QMAILHOST_INSTALL_ONLY=1, on certonly and on the deploy's own run of the hook) the hook
only installs the pair: the deploy's restart of stunnel and reload of Dovecot re-read it, once.
Run by a renewal (no such variable), the hook reloads Dovecot and restarts stunnel (pkgsrc's
stunnel rc.d script has no reload), each of them only if it runs, and measures their stamps.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pyinfra.api import FunctionCommand

from harness import netbsd_host
from harness.netbsd_host import (
    HEALTH_CRON,
    HEALTH_PACKAGES,
    ROOT_CRONTAB,
    SPAM_PACKAGES,
    NetBSDHost,
    converged_host,
    deploy_data,
)
from harness.plan_harness import commands_of, index, plan_deploy, uploaded
from qmailhost import platform as platforms
from qmailhost import recovery
from qmailhost.settings import Settings, SettingsError
from tasks import acme, tls
from tasks.health import SETTINGS_COPY
from tests.test_netbsd_recovery_plans import RESTORE, execute, old_backup
from tests.test_netbsd_recovery_plans import plan as recovery_plan

NETBSD = platforms.netbsd("10")
MINE = "/usr/pkg/etc/qmailhost/acme"
HOOK, RENEW, CA = f"{MINE}/deploy-hook", f"{MINE}/renew", f"{MINE}/ca.pem"
CERT, KEY = "/usr/pkg/etc/qmailhost/tls/cert.pem", "/usr/pkg/etc/qmailhost/tls/key.pem"
CERTBOT = "/usr/pkg/bin/certbot-3.13"
DIRS = "--config-dir /usr/pkg/etc/letsencrypt --work-dir /var/letsencrypt --logs-dir /var/letsencrypt/log"
CONTACT = "postmaster@example.org"
# hermetic: no backup on this laptop can hold back an order (acme._restorable)
ACME = {"tls": "acme", "acme_contact": CONTACT, "backup_dir": "/nonexistent/qmailhost-backups"}
ORDER = "Order a certificate for mail.example.org from the ACME CA"
INSTALL = "Install the ACME certificate where the TLS listeners read it"
LIVE = "/usr/pkg/etc/letsencrypt/live/qmailhost"
INSTALL_ONLY = "QMAILHOST_INSTALL_ONLY=1 "  # the deploy's runs of the hook: it installs, the deploy re-reads
CRON = f"17 */12 * * * {RENEW} >/dev/null 2>&1"  # its output nowhere: the outcome is in last-renewal
# pyinfra 3's server.crontab: a cron_name is a comment line above the entry, found by it again
CRON_NAME = "# pyinfra-name=qmailhost: renew the ACME certificate"
RELOAD_DOVECOT = "if /etc/rc.d/dovecot onestatus >/dev/null 2>&1; then /etc/rc.d/dovecot reload; fi"
RESTART_STUNNEL = "if /etc/rc.d/stunnel onestatus >/dev/null 2>&1; then /etc/rc.d/stunnel restart; fi"
# What must never reach a NetBSD host: Linux's service tools and GNU tools, Debian's certbot paths.
LINUX_ONLY = ("apt-get", "dpkg", "systemctl", "update-rc.d", "/etc/service", "svc ", "svok", "svstat",
              "supervise", "sha256sum", "stat -c", "getent shadow", "/etc/init.d", "root:root", "/usr/local/",
              "/usr/bin/certbot", " /etc/letsencrypt", "/var/lib/letsencrypt", "/var/log/letsencrypt",
              "crontab -e", "sed -i ")


@pytest.fixture(autouse=True)
def password_env(monkeypatch):
    monkeypatch.setenv("QMAILHOST_TEST_PASSWORD", "correct horse")


@pytest.fixture(scope="module")
def bare():
    """A bare model host and its plan under tls: acme; each test applies a copy."""
    host = NetBSDHost()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QMAILHOST_TEST_PASSWORD", "correct horse")
        return host, plan_deploy(deploy_data(**ACME), host.answer)


@pytest.fixture(scope="module")
def converged():
    """A model host the bare plan was applied to (it plans nothing more); copy before changing it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QMAILHOST_TEST_PASSWORD", "correct horse")
        return converged_host(**ACME)


@pytest.fixture
def ca_bundle(tmp_path) -> Path:
    key, cert = tmp_path / "ca.key", tmp_path / "ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "30", "-subj", "/CN=Test ACME CA", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert


def restarted(plan) -> list[str]:
    return [c for c in commands_of(plan) if c.endswith(" restart")]


def assert_netbsd_only(*texts: str) -> None:
    for text in texts:
        for linux in LINUX_ONLY:
            assert linux not in text, f"{linux!r} on a NetBSD host: {text[:300]}"


def planned_texts(plan) -> list[str]:
    """Every command of PLAN and every file it uploads (the hook and the renewal script among them)."""
    return [c if isinstance(c, str) else f"{c[2]}\n{c[1]}" for _, commands in plan for c in commands]


def order_command(**settings) -> str:
    bundle = INSTALL_ONLY + (f"REQUESTS_CA_BUNDLE={CA} " if settings.get("ca") else "")
    return (f"{bundle}{CERTBOT} certonly --standalone --preferred-challenges http --http-01-port 80 "
            f"--non-interactive --agree-tos --no-eff-email --email {CONTACT} "
            f"--server {settings.get('server', 'https://acme-v02.api.letsencrypt.org/directory')} "
            f"--cert-name qmailhost -d mail.example.org --key-type rsa --rsa-key-size 3072 --deploy-hook {HOOK} {DIRS}")


# --- pkgsrc's certbot


def test_the_netbsd_paths_are_pkgsrcs_certbot():
    paths = acme.PATHS["netbsd"]
    # security/py-certbot: PKGNAME ${PYPKGPREFIX}-certbot for the default Python (pyversion.mk: 313),
    # PLIST bin/certbot-${PYVERSSUFFIX}, PKG_SYSCONFSUBDIR=letsencrypt, VARBASE/letsencrypt(/log).
    assert paths == acme.Paths(CERTBOT, ("py313-certbot",), "/usr/pkg/etc/letsencrypt", "/var/letsencrypt",
                               "/var/letsencrypt/log")
    # The model host's package is the same one (what its certonly insists on).
    assert (paths.certbot, paths.packages) == (netbsd_host.CERTBOT, (netbsd_host.CERTBOT_PACKAGE,))
    assert {"config": paths.config_dir, "work": paths.work_dir, "logs": paths.logs_dir} == netbsd_host.LETSENCRYPT
    assert acme.files(NETBSD) == {"hook": HOOK, "renew": RENEW, "ca": CA, "status": f"{MINE}/last-renewal",
                                  "live": "/usr/pkg/etc/letsencrypt/live/qmailhost"}


def test_the_probes_read_the_lineage_and_roots_crontab_with_netbsd_tools():
    lineage, cron = (probe.script(NETBSD, None) for probe in acme.COMPONENT.probes)
    live = "/usr/pkg/etc/letsencrypt/live/qmailhost"
    assert lineage.startswith(f"[ -f /usr/pkg/etc/letsencrypt/renewal/qmailhost.conf ] && [ -f {live}/fullchain.pem ]")
    assert f"openssl dgst -sha256 -r < {live}/fullchain.pem | cut -c1-64" in lineage
    assert cron == f"crontab -l 2>/dev/null | grep -qF {RENEW} && echo acme_cron"
    assert_netbsd_only(lineage, cron)


# --- a bare host: the package, the scripts, one order, the cron line


def test_a_bare_host_installs_certbot_and_writes_the_hook_and_renewal_script(bare):
    _, plan = bare
    commands = commands_of(plan)
    install = commands[0]
    assert install.startswith("PKG_RCD_SCRIPTS=YES /usr/pkg/bin/pkgin -y install ")
    # pkgsrc's certbot beside the other components' packages (in component order: tasks/)
    assert install.split()[4:] == ["python313", "py313-certbot", "checkpassword", "py313-dkim", "py313-spf",
                                   *HEALTH_PACKAGES, "dovecot", "qmail-run", "ucspi-tcp", "unbound", *SPAM_PACKAGES,
                                   "stunnel"]
    assert f"mkdir -p {MINE}" in commands and f"chown root:wheel {MINE} && chmod 700 {MINE}" in commands
    for script in (HOOK, RENEW):  # root's only, written whole, before the order runs the hook
        assert f"chown root:wheel {script}.qmailhost-new && chmod 700 {script}.qmailhost-new " \
               f"&& mv -f {script}.qmailhost-new {script}" in commands
        assert index(commands, f"upload {script}.qmailhost-new") < index(commands, " certonly ")
    hook = uploaded(plan, HOOK)
    assert "\nlineage=${RENEWED_LINEAGE:-/usr/pkg/etc/letsencrypt/live/qmailhost}\n" in hook
    assert "\nmkdir -p /usr/pkg/etc/qmailhost/tls && cd /usr/pkg/etc/qmailhost/tls\numask 077\n" in hook
    assert "\nchgrp qmailtls key.pem.qmailhost-new && chmod 640 key.pem.qmailhost-new\n" in hook
    renew = uploaded(plan, RENEW)
    assert f"if out=$({CERTBOT} renew --non-interactive --no-random-sleep-on-renew --cert-name qmailhost \\\n" \
           f"        --deploy-hook {HOOK} {DIRS} \"$@\" 2>&1); then\n" in renew
    assert f"\nstatus={MINE}/last-renewal\n" in renew
    assert "REQUESTS_CA_BUNDLE" not in renew and CA not in commands_of(plan)
    assert "QMAILHOST_INSTALL_ONLY" not in renew, "a renewal's hook reloads the readers and measures their stamps"
    assert_netbsd_only(*planned_texts(plan))


def test_a_bare_host_orders_once_with_the_settings_before_the_listeners_start(bare):
    _, plan = bare
    orders = [commands for name, commands in plan if name == ORDER]
    assert orders == [[order_command()]]
    commands = commands_of(plan)
    assert sum(" certonly " in c for c in commands) == 1
    # the CA's pair is in place before stunnel and Dovecot first start
    assert index(commands, "groupadd qmailtls") < index(commands, " certonly ") \
        < index(commands, "/etc/rc.d/stunnel start") < index(commands, "/etc/rc.d/dovecot start")
    assert "openssl req -x509" not in " ".join(commands), "no self-signed pair under tls: acme"


def test_a_bare_host_gets_a_line_for_the_renewal_in_roots_crontab(bare):
    host, plan = bare
    cron = [commands for name, commands in plan if name == "Renew the ACME certificate twice a day (cron)"]
    assert len(cron) == 1
    temp = cron[0][0].rsplit(" ", 1)[1]
    assert temp.startswith("/tmp/pyinfra-")
    # NetBSD's root crontab has entries: pyinfra lists it, appends a blank line, the name's
    # comment and the line, and installs the file
    assert f"# pyinfra-name={acme.CRON_NAME}" == CRON_NAME
    assert cron[0] == [f"crontab -l -u root > {temp}", f"echo '' >> {temp}", f"echo '{CRON_NAME}' >> {temp}",
                       f"echo '{CRON}' >> {temp}", f"crontab -u root {temp}"]
    host = host.copy()
    host.apply(plan)
    assert host.crontab == [*ROOT_CRONTAB, "", CRON_NAME, CRON, *HEALTH_CRON], "the base system's lines are kept"
    assert host.acme_cron


def test_a_bare_host_applied_serves_the_lineage_and_then_plans_nothing(bare):
    host, plan = bare
    host = host.copy()
    host.apply(plan)
    assert host.orders == [{"domain": "mail.example.org", "email": CONTACT, "ca_bundle": None,
                            "server": "https://acme-v02.api.letsencrypt.org/directory"}]
    # certbot ran the deploy hook once, in its environment: under the deploy it only installs
    assert host.hook_runs == [{"lineage": LIVE, "install_only": True}]
    assert host.acme["cn"] == "mail.example.org"
    assert host.cert == {"cn": "mail.example.org", "sha256": host.acme["sha256"], "renew": False, "self": False}
    assert (host.files[KEY]["mode"], host.files[KEY]["user"], host.files[KEY]["group"]) == ("640", "root", "qmailtls")
    assert host.files[CERT]["mode"] == "644"
    # the listeners started with the pair the hook installed: measured into their stamps
    for stamp in ("service-stunnel", "service-dovecot-h"):
        assert host.stamps[stamp].split()[1] == host.acme["sha256"]
    assert {"stunnel", "dovecot"} <= host.running
    assert plan_deploy(deploy_data(**ACME), host.answer) == []


def test_the_ca_bundle_reaches_the_order_and_the_renewal(ca_bundle):
    host = NetBSDHost()
    settings = {**ACME, "acme_directory": "https://acme.test:14000/dir", "acme_ca_bundle": str(ca_bundle)}
    plan = plan_deploy(deploy_data(**settings), host.answer)
    assert uploaded(plan, CA) == ca_bundle.read_text()
    assert [c for name, c in plan if name == ORDER] == [[order_command(ca=True, server="https://acme.test:14000/dir")]]
    commands = commands_of(plan)
    assert index(commands, f"upload {CA}.qmailhost-new") < index(commands, " certonly ")
    assert f"\nREQUESTS_CA_BUNDLE={CA}; export REQUESTS_CA_BUNDLE\n" in uploaded(plan, RENEW)
    host.apply(plan)
    assert host.orders[0]["ca_bundle"] == CA and host.orders[0]["server"] == "https://acme.test:14000/dir"
    assert plan_deploy(deploy_data(**settings), host.answer) == []


def test_the_staging_directory_is_named_by_its_alias():
    plan = plan_deploy(deploy_data(**ACME, acme_directory="letsencrypt-staging"), NetBSDHost().answer)
    assert [c for name, c in plan if name == ORDER] == [
        [order_command(server="https://acme-staging-v02.api.letsencrypt.org/directory")]]


# --- a converged host asks the CA nothing; another name or another pair does


def test_a_converged_host_orders_nothing_even_when_other_things_change(converged):
    host = converged.copy()
    assert plan_deploy(deploy_data(**ACME), host.answer) == []
    plan = plan_deploy(deploy_data(**ACME, tls_policy="modern"), host.answer)
    assert plan and not [c for c in commands_of(plan) if "certbot" in c or "crontab" in c or HOOK in c]
    host.apply(plan)
    assert len(host.orders) == 1 and len(host.hook_runs) == 1


def test_a_lineage_for_another_name_orders_again(converged):
    host = converged.copy()
    host.issue("old.example.org")  # e.g. the lineage of the host's name before it was renamed
    plan = plan_deploy(deploy_data(**ACME), host.answer)
    names = [name for name, _ in plan]
    assert names == [ORDER, "Run stunnel (restart on change)", "Reload dovecot"]
    assert [c for name, c in plan if name == ORDER] == [[order_command()]]
    host.apply(plan)
    assert host.orders[-1]["domain"] == "mail.example.org" and host.acme["cn"] == host.cert["cn"] == "mail.example.org"
    assert host.cert["sha256"] == host.acme["sha256"]
    assert plan_deploy(deploy_data(**ACME), host.answer) == []


def test_a_pair_that_is_not_the_lineages_is_installed_by_the_hook(converged):
    host = converged.copy()
    host.issue("mail.example.org")  # e.g. renewed by cron while the hook failed: the old pair still serves
    served = host.cert["sha256"]
    assert served != host.acme["sha256"]
    plan = plan_deploy(deploy_data(**ACME), host.answer)
    assert [name for name, _ in plan] == [INSTALL, "Run stunnel (restart on change)", "Reload dovecot"]
    assert [c for name, c in plan if name == INSTALL] == [[f"{INSTALL_ONLY}{HOOK}"]]
    assert not [c for c in commands_of(plan) if "certbot" in c], "the CA is not asked"
    assert restarted(plan) == ["/etc/rc.d/stunnel restart"]
    assert RELOAD_DOVECOT in commands_of(plan)
    host.restarted.clear()
    host.reloaded.clear()
    host.apply(plan)
    assert host.cert["sha256"] == host.acme["sha256"] and host.cert["self"] is False
    assert host.hook_runs[-1] == {"lineage": LIVE, "install_only": True}
    assert (host.restarted, host.reloaded) == (["stunnel"], ["dovecot"]), "by the deploy, not by the hook"
    for stamp in ("service-stunnel", "service-dovecot-h"):
        assert host.stamps[stamp].split()[1] == host.acme["sha256"]
    assert plan_deploy(deploy_data(**ACME), host.answer) == []


@pytest.mark.parametrize("change", ["renewed", "ordered"])
def test_each_reader_rereads_a_new_pair_once(converged, change):
    host = converged.copy()
    host.issue("mail.example.org" if change == "renewed" else "old.example.org")
    host.restarted.clear()
    host.reloaded.clear()
    plan = plan_deploy(deploy_data(**ACME), host.answer)
    assert [name for name, _ in plan] == [INSTALL if change == "renewed" else ORDER,
                                          "Run stunnel (restart on change)", "Reload dovecot"]
    host.apply(plan)
    assert host.hook_runs[-1] == {"lineage": LIVE, "install_only": True}, "the hook left its readers to the deploy"
    assert (host.restarted, host.reloaded) == (["stunnel"], ["dovecot"])
    for stamp in ("service-stunnel", "service-dovecot-h"):  # measured by the deploy, after its re-reads
        assert host.stamps[stamp].split()[1] == host.acme["sha256"] == host.cert["sha256"]
    assert plan_deploy(deploy_data(**ACME), host.answer) == []


# --- back to self-signed


def test_switching_back_to_self_signed_removes_the_cron_line_and_makes_a_self_signed_pair(converged):
    host = converged.copy()
    assert host.cert["cn"] == "mail.example.org" and not host.cert["self"]
    plan = plan_deploy(deploy_data(tls="self-signed"), host.answer)
    names = [name for name, _ in plan]
    # a CA-issued certificate for the same name is not kept as the self-signed pair
    assert names == ["Make a self-signed certificate for mail.example.org", "Run stunnel (restart on change)",
                     "Reload dovecot", "Stop renewing an ACME certificate (cron)", SETTINGS_COPY]
    cron = [c for name, c in plan if name == "Stop renewing an ACME certificate (cron)"][0]
    # the line and its name comment go in one rewrite (qmailhost/ops.py cron: pyinfra's own removal
    # leaves the comment, which would then name the health entry after it)
    assert cron == ["t=$(mktemp) && crontab -l -u root > $t && sed -i.bak -e '/^# pyinfra-name=qmailhost: renew "
                    "the ACME certificate$/d' -e '/\\/usr\\/pkg\\/etc\\/qmailhost\\/acme\\/renew >\\/dev\\/null 2>&1/d' $t && "
                    "crontab -u root $t; s=$?; rm -f $t $t.bak; exit $s"]
    assert not [c for c in commands_of(plan) if "certbot" in c or HOOK in c]
    host.apply(plan)
    assert host.crontab == [*ROOT_CRONTAB, "", *HEALTH_CRON] and not host.acme_cron
    assert host.cert["self"] and host.cert["sha256"] != host.acme["sha256"]
    assert plan_deploy(deploy_data(tls="self-signed"), host.answer) == []
    # and back to acme: the lineage is the host's name's, so the hook installs it; no order
    plan = plan_deploy(deploy_data(**ACME), host.answer)
    assert INSTALL in [name for name, _ in plan] and not [c for c in commands_of(plan) if "certbot" in c]
    host.apply(plan)
    assert host.acme_cron and len(host.orders) == 1
    # no leftover comment: the line is appended again under its name, after the health entry
    assert host.crontab == [*ROOT_CRONTAB, "", *HEALTH_CRON, "", CRON_NAME, CRON]
    assert plan_deploy(deploy_data(**ACME), host.answer) == []


# --- backup and restore: certbot's config dir goes along, its live/ links are made again


def test_a_backup_carries_certbots_config_dir_and_a_restore_puts_the_lineage_back(converged, tmp_path):
    settings = {**ACME, "backup_dir": str(tmp_path / "backups")}
    old = converged.copy()
    assert recovery.part_paths(recovery.backup_parts(NETBSD), Settings.from_host_data(deploy_data(**settings)),
                               NETBSD)[:4] == ["~alice/Maildir", "/usr/pkg/etc/letsencrypt",
                                               "/usr/pkg/etc/qmailhost/dkim/keys", "/usr/pkg/etc/qmailhost/tls/cert.pem"]
    old_backup(old, deploy_data(**settings))
    _, records = recovery.read_manifest(recovery.backups_in(tmp_path / "backups")[-1])
    carried = {r.path: r for r in records if r.path.startswith("/usr/pkg/etc/letsencrypt")}
    archive = "/usr/pkg/etc/letsencrypt/archive/qmailhost"
    assert {"/usr/pkg/etc/letsencrypt/renewal/qmailhost.conf", "/usr/pkg/etc/letsencrypt/accounts",
            f"{archive}/cert1.pem", f"{archive}/fullchain1.pem", f"{archive}/privkey1.pem"} <= set(carried)
    assert not [path for path in carried if "/live/" in path], "live/ holds links: made again on restore"
    assert (carried[f"{archive}/privkey1.pem"].mode, carried[f"{archive}/privkey1.pem"].owner) == ("600", "root")

    new = NetBSDHost()  # a bare host, deployed, then restored from the backup
    new.apply(plan_deploy(deploy_data(**settings), new.answer))
    planned = recovery_plan(new, RESTORE, deploy_data(**settings))
    names = [name for name, _ in planned]
    assert "Restore ACME file /renewal/qmailhost.conf" in names
    assert names.index("Restore ACME file /archive/qmailhost/fullchain1.pem") \
        < names.index("Link the restored ACME certificate (live/)") < names.index("Restore the TLS certificate")
    # (the deploy made no DKIM key, the backup holds it: restore.py sends it from the laptop)
    assert_netbsd_only(*planned_texts([(name, [c for c in commands if not isinstance(c, FunctionCommand)])
                                       for name, commands in planned]))
    execute(new, planned)
    assert new.acme == old.acme and new.cert == old.cert, "the backup's lineage and pair serve again"
    assert new.key_files() == old.key_files() and new.keys_made == [], "and the DKIM key DNS publishes"
    assert plan_deploy(deploy_data(**settings), new.answer) == []


def test_a_bare_host_whose_backup_holds_a_valid_certificate_orders_nothing(converged, tmp_path):
    settings = {**ACME, "backup_dir": str(tmp_path / "backups")}
    old = converged.copy()
    old_backup(old, deploy_data(**settings))
    new = NetBSDHost()
    plan = plan_deploy(deploy_data(**settings), new.answer)
    names = [name for name, _ in plan]
    assert ORDER not in names, "CAs limit duplicate certificates: restore.py puts the backup's back"
    assert "Make a self-signed certificate for mail.example.org (until restore.py)" in names
    new.apply(plan)
    assert new.orders == [] and new.acme is None and new.cert["self"], "a self-signed stand-in serves"
    assert new.acme_cron, "the renewal is in place for the lineage restore.py brings"
    # restore.py: the backup's lineage and pair serve again, each reader re-reads them once
    planned = recovery_plan(new, RESTORE, deploy_data(**settings))
    new.restarted.clear()
    new.reloaded.clear()
    execute(new, planned)
    assert (new.acme, new.cert) == (old.acme, old.cert)
    assert (new.restarted, new.reloaded) == (["stunnel"], ["dovecot"])
    assert plan_deploy(deploy_data(**settings), new.answer) == [] and new.orders == []


# --- refusals: one line naming the setting, before any fact or operation


@pytest.mark.parametrize("settings, setting, says", [
    ({"tls": "acme"}, "acme_contact", "tls is 'acme' but no contact address is set"),
    ({"tls": "acme", "acme_contact": "postmaster"}, "acme_contact", "'postmaster' is not a mail address"),
    ({**ACME, "acme_directory": "http://acme.example/directory"}, "acme_directory",
     "'http://acme.example/directory' is not an ACME directory"),
    ({**ACME, "acme_directory": "letsencrypt-stage"}, "acme_directory", "'letsencrypt-stage' is not an ACME directory"),
    ({**ACME, "acme_ca_bundle": "MISSING"}, "acme_ca_bundle", "cannot be read (No such file or directory)"),
    ({**ACME, "acme_ca_bundle": "NOT-PEM"}, "acme_ca_bundle", "holds no PEM certificate"),
    ({**ACME, "tls_cert": "CERT", "tls_key": "KEY"}, "tls", "is 'acme' but tls_cert and tls_key are set"),
])
def test_bad_settings_are_refused_before_anything(tmp_path, settings, setting, says):
    (tmp_path / "not.pem").write_text("not a certificate\n")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-subj", "/CN=mail.example.org", "-keyout", str(tmp_path / "key.pem"),
                    "-out", str(tmp_path / "cert.pem")], check=True, capture_output=True)
    files = {"MISSING": tmp_path / "missing.pem", "NOT-PEM": tmp_path / "not.pem", "CERT": tmp_path / "cert.pem",
             "KEY": tmp_path / "key.pem"}
    settings = {k: str(files[v]) if v in files else v for k, v in settings.items()}
    host = NetBSDHost()
    asked = []

    def answer(name, kwargs):
        asked.append(name)
        return host.answer(name, kwargs)

    with pytest.raises(SettingsError) as refused:
        plan_deploy(deploy_data(**settings), answer)
    message = str(refused.value)
    assert refused.value.setting == setting and message.startswith(f"setting {setting!r}: ")
    assert says in message and "\n" not in message
    assert asked == [], "refused before the host was asked anything"


# --- the hook's readers on NetBSD, and nothing but NetBSD commands


def test_the_hook_reloads_dovecot_and_restarts_stunnel_on_netbsd(bare, converged):
    _, plan = bare
    readers = tls.reader_commands(NETBSD)
    measure = "openssl dgst -sha256 -r < /usr/pkg/etc/qmailhost/tls/cert.pem | cut -c1-64"
    remeasure = ("s=/var/lib/qmailhost/stamps/{}; if [ -f $s ]; then echo \"$(cut -d' ' -f1 $s) $(" + measure +
                 ")\" > $s.new && mv -f $s.new $s; fi")
    assert readers == [("Reload", "dovecot", [RELOAD_DOVECOT, remeasure.format("service-dovecot-h")]),
                       ("Restart", "stunnel", [RESTART_STUNNEL, remeasure.format("service-stunnel")])]
    assert "/etc/rc.d/stunnel reload" not in str(readers), "pkgsrc's stunnel rc.d script has no reload"
    hook = uploaded(plan, HOOK)
    for how, service, commands in readers:
        assert f"\n# {how} {service}\n" + "".join(f"{c}\n" for c in commands) in hook
    # under the deploy (QMAILHOST_INSTALL_ONLY set) it stops once the pair is in place
    install_only = ('\nif [ -n "${QMAILHOST_INSTALL_ONLY:-}" ]; then\n'
                    '    echo "qmailhost: installed the certificate of $lineage (the deploy restarts its readers)"\n'
                    '    exit 0\nfi\n')
    assert hook.index("mv -f key.pem.qmailhost-new key.pem") < hook.index(install_only) < hook.index(RELOAD_DOVECOT)
    assert hook.endswith('echo "qmailhost: serving the certificate of $lineage; re-read by dovecot, stunnel"\n')
    # The model runs the hook: with the readers up, Dovecot is reloaded (its rc.d script has a
    # reload) and stunnel restarted; a reload of stunnel would stop the model ("no reload command").
    # This is the hook as a renewal runs it (renew.sh from cron: no QMAILHOST_INSTALL_ONLY).
    host = converged.copy()
    host.issue("mail.example.org")
    host.restarted.clear()
    host.reloaded.clear()
    host.run_hook()
    assert (host.restarted, host.reloaded) == (["stunnel"], ["dovecot"])
    assert host.cert["sha256"] == host.acme["sha256"]
    for stamp in ("service-stunnel", "service-dovecot-h"):  # measured again: the next deploy restarts nothing
        assert host.stamps[stamp].split()[1] == host.acme["sha256"]
    assert host.hook_runs[-1] == {"lineage": LIVE, "install_only": False}
    assert plan_deploy(deploy_data(**ACME), host.answer) == []
    # With QMAILHOST_INSTALL_ONLY set, it installs the pair and touches no reader and no stamp.
    host = converged.copy()
    stamps = dict(host.stamps)
    host.issue("mail.example.org")
    host.restarted.clear()
    host.reloaded.clear()
    host.run_hook(install_only=True)
    assert host.cert["sha256"] == host.acme["sha256"]
    assert (host.restarted, host.reloaded, host.stamps) == ([], [], stamps)


def test_only_netbsd_commands_are_planned(bare, converged, ca_bundle):
    _, plan = bare
    texts = planned_texts(plan)
    host = converged.copy()
    host.issue("mail.example.org")
    texts += planned_texts(plan_deploy(deploy_data(**ACME), host.answer))
    texts += planned_texts(plan_deploy(deploy_data(tls="self-signed"), converged.copy().answer))
    texts += planned_texts(plan_deploy(deploy_data(**ACME, acme_ca_bundle=str(ca_bundle)), NetBSDHost().answer))
    assert_netbsd_only(*texts)
    # no supervised renewal loop on NetBSD: cron runs it
    assert not [t for t in texts if "acme-renew" in t]
