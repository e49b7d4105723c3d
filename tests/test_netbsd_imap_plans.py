"""NetBSD command plans for IMAP (no NetBSD host needed; see test_netbsd_plans.py).

Dovecot comes from pkgsrc's binary package "dovecot" (mail/dovecot2: IMAP and POP3 in one
package, the rc.d script "dovecot", the users dovecot and dovenull). qmailhost writes
/usr/pkg/etc/dovecot/dovecot.conf (the path the rc.d script requires) in Dovecot 2.3's
language, logging to syslog, and checks that the installed Dovecot speaks 2.3 before it
starts it: on a converged host from the fact, on a bare host when the run gets there.
Dovecot is restarted when its config changes and reloaded when only the TLS pair does.
"""

from __future__ import annotations

import pytest
from pyinfra.api.exceptions import OperationError

from harness.netbsd_host import NetBSDHost, bare_plan, converged_host, deploy_data
from harness.plan_harness import commands_of, index, plan_deploy, plan_operation, uploaded
from qmailhost import platform as platforms
from qmailhost.settings import Settings
from tasks import imap, tls
from tasks.health import SETTINGS_COPY

CONFIG = "/usr/pkg/etc/dovecot/dovecot.conf"
RC_CONF = "/etc/rc.conf.d/dovecot"
CERT, KEY = "/usr/pkg/etc/qmailhost/tls/cert.pem", "/usr/pkg/etc/qmailhost/tls/key.pem"
SPEAKS = "v=$(/usr/pkg/sbin/dovecot --version | cut -d' ' -f1); case \"$v\" in 2.3|2.3.*) ;;"
REWRITE = ["Write Dovecot's config", "Run dovecot (restart on change)", SETTINGS_COPY]  # (the checks read them too)
REFUSAL = ("the installed Dovecot is {}, but qmailhost writes Dovecot 2.3's configuration for this release: "
           "install the release's own Dovecot package")


@pytest.fixture(autouse=True)
def password_env(monkeypatch):
    monkeypatch.setenv("QMAILHOST_TEST_PASSWORD", "correct horse")


def restarted(plan) -> list[str]:
    return [c for c in commands_of(plan) if c.endswith(" restart")]


def listener(config: str, name: str) -> str:
    """The body of inet_listener NAME in CONFIG."""
    return config.split(f"  inet_listener {name} {{\n", 1)[1].split("  }\n", 1)[0]


@pytest.fixture(scope="module")
def bare():
    return bare_plan()


# --- a bare host: the package, the 2.3 config, the rc.d service


def test_a_bare_host_installs_the_dovecot_package_checks_it_then_configures_and_starts_it(bare):
    _, plan = bare
    commands = commands_of(plan)
    install = commands[0]
    assert install.startswith("PKG_RCD_SCRIPTS=YES /usr/pkg/bin/pkgin -y install ")
    assert "dovecot" in install.split()
    # The installed Dovecot proves its language before its config is written and it starts.
    assert index(commands, "pkgin -y install") < index(commands, SPEAKS) < index(commands, f"upload {CONFIG}") \
        < index(commands, f"upload {RC_CONF}") < index(commands, "/etc/rc.d/dovecot start")
    assert "install -o root -g wheel -m 555 /usr/pkg/share/examples/rc.d/dovecot /etc/rc.d/dovecot" in commands
    assert uploaded(plan, RC_CONF).endswith("\ndovecot=YES\n")
    assert "/etc/rc.d/dovecot restart" not in commands


def test_a_bare_host_gets_dovecots_23_config_logging_to_syslog(bare):
    _, plan = bare
    config = uploaded(plan, CONFIG)
    assert config.startswith("# Dovecot 2.3 for qmailhost")
    assert "dovecot_config_version" not in config and "dovecot_storage_version" not in config  # 2.4's words
    assert "protocols = imap\nlisten = *\n" in config  # each setting on its own line
    assert "log_path" not in config, "NetBSD: Dovecot's default, syslog"
    assert "\nmail_location = maildir:~/Maildir:INDEX=~/.dovecot-index\n" in config
    assert "\ndisable_plaintext_auth = yes\n" in config
    # PAM through the base system's /etc/pam.d/imap and pop3: the service is the protocol
    assert "\npassdb {\n  driver = pam\n  args = %s\n}\n" in config and "\nuserdb {\n  driver = passwd\n}\n" in config
    assert "\nssl = required\n" in config
    assert tls.paths(platforms.netbsd("10")) == (CERT, KEY)
    assert f"\nssl_cert = <{CERT}\nssl_key = <{KEY}\n" in config
    policy = tls.POLICIES["intermediate"]
    assert f"\nssl_min_protocol = {policy.min_protocol}\n" in config and policy.min_protocol == "TLSv1.2"
    assert f"\nssl_cipher_list = {policy.ciphers}\n" in config
    assert listener(config, "imaps") == "    port = 993\n    ssl = yes\n"
    assert listener(config, "imap") == "    port = 143\n"
    assert "pop3" not in config


def test_a_bare_host_applied_runs_dovecot_and_then_plans_nothing(bare):
    host, plan = bare
    host = host.copy()
    host.apply(plan)
    assert "dovecot" in host.packages and "dovecot" in host.rc_scripts and "dovecot" in host.running
    assert {"dovecot", "dovenull"} <= set(host.users)
    assert host.contents[CONFIG] == uploaded(plan, CONFIG)
    assert plan_deploy(deploy_data(), host.answer) == []


# --- the ports: from a converged host, the config rewritten and Dovecot alone restarted


def test_imap_port_null_closes_143_and_keeps_993():
    host = converged_host()
    plan = plan_deploy(deploy_data(imap_port=None), host.answer)
    assert [name for name, _ in plan] == REWRITE
    assert restarted(plan) == ["/etc/rc.d/dovecot restart"]
    config = uploaded(plan, CONFIG)
    assert listener(config, "imap") == "    port = 0\n"
    assert listener(config, "imaps") == "    port = 993\n    ssl = yes\n"
    host.apply(plan)
    assert plan_deploy(deploy_data(imap_port=None), host.answer) == []


def test_pop3s_port_adds_pop3_on_995_from_the_same_package():
    host = converged_host()
    plan = plan_deploy(deploy_data(pop3s_port=995), host.answer)
    assert [name for name, _ in plan] == REWRITE, "no package to add: the one package has POP3"
    assert restarted(plan) == ["/etc/rc.d/dovecot restart"]
    config = uploaded(plan, CONFIG)
    assert "\nprotocols = imap pop3\nlisten = *\n" in config
    assert listener(config, "pop3s") == "    port = 995\n    ssl = yes\n"
    assert listener(config, "pop3") == "    port = 0\n"  # no POP3 before TLS
    assert listener(config, "imaps") == "    port = 993\n    ssl = yes\n"
    host.apply(plan)
    assert plan_deploy(deploy_data(pop3s_port=995), host.answer) == []


def test_pop3_on_a_bare_host_installs_the_same_packages(bare):
    _, plan = bare
    with_pop3 = plan_deploy(deploy_data(pop3s_port=995), NetBSDHost().answer)
    assert commands_of(with_pop3)[0] == commands_of(plan)[0]
    netbsd = platforms.netbsd("10")
    settings = Settings.from_host_data(deploy_data(pop3s_port=995), inventory_name="mail.example.org")
    assert imap.packages(netbsd, settings) == ("dovecot",)


# --- the TLS policy and the pair


def test_the_modern_policy_rewrites_dovecots_config_and_restarts_it():
    host = converged_host()
    plan = plan_deploy(deploy_data(tls_policy="modern"), host.answer)
    config = uploaded(plan, CONFIG)
    assert "\nssl_min_protocol = TLSv1.3\n" in config
    names = [name for name, _ in plan]
    assert names[-3:] == REWRITE
    assert restarted(plan) == ["/etc/rc.d/stunnel restart", "/etc/rc.d/dovecot restart"]
    assert "Reload dovecot" not in names
    host.apply(plan)
    assert plan_deploy(deploy_data(tls_policy="modern"), host.answer) == []


def made_anew(host: NetBSDHost) -> None:
    host.cert = {**host.cert, "sha256": "made by hand"}  # e.g. openssl run by hand, or a restore
    host.files[CERT]["sha256"] = "made by hand"


def near_expiry(host: NetBSDHost) -> None:
    host.cert = {**host.cert, "renew": True}


@pytest.mark.parametrize("change, made", [(made_anew, []), (near_expiry, ["Make a self-signed certificate for "
                                                                          "mail.example.org"])])
def test_a_new_pair_reloads_dovecot_and_restarts_stunnel(change, made):
    host = converged_host()
    change(host)
    plan = plan_deploy(deploy_data(), host.answer)
    assert [name for name, _ in plan] == [*made, "Run stunnel (restart on change)", "Reload dovecot"]
    commands = commands_of(plan)
    assert restarted(plan) == ["/etc/rc.d/stunnel restart"], "Dovecot's sessions stay up"
    reload = "if /etc/rc.d/dovecot onestatus >/dev/null 2>&1; then /etc/rc.d/dovecot reload; fi"
    assert reload in commands
    if made:
        assert index(commands, "openssl req -x509") < index(commands, reload)
    host.reloaded.clear()
    host.apply(plan)
    assert host.reloaded == ["dovecot"]
    assert plan_deploy(deploy_data(), host.answer) == [], "the new pair is recorded as the one Dovecot serves"


# --- the language the installed Dovecot speaks


def test_an_installed_dovecot_24_stops_the_run_before_anything_changes():
    host = converged_host()
    host.dovecot_version = "2.4.1-4"  # e.g. a newer pkgsrc branch
    before = host.copy()
    for settings in ({}, {"tls_policy": "modern"}):  # even with other changes to make
        with pytest.raises(OperationError) as refused:
            plan_deploy(deploy_data(**settings), host.answer)
        message = str(refused.value)
        assert "\n" not in message
        assert message == REFUSAL.format("2.4.1-4")
    assert host == before, "no plan: nothing ran"


def test_on_a_bare_host_the_run_checks_the_installed_dovecot_and_stops_on_a_24(bare):
    host, plan = bare
    check = [commands for name, commands in plan if name == "Check that the installed Dovecot is 2.3"]
    assert check == [[commands_of(plan)[index(commands_of(plan), SPEAKS)]]]
    assert check[0][0].endswith(f'*) echo "{REFUSAL.format("$v")}" >&2; exit 1 ;; esac')
    newer = host.copy()
    newer.dovecot_version = "2.4.0"
    with pytest.raises(AssertionError, match=r"^the run stops: the installed Dovecot is 2\.4\.0, but qmailhost"):
        newer.apply(plan)
    assert "dovecot" in newer.packages
    assert CONFIG not in newer.contents and "dovecot" not in newer.running, "stopped before its config and start"


@pytest.mark.parametrize("version, expected", [
    ("2.3.21.1", "noop"),
    ("2.3", "noop"),
    ("2.4.1-4", "refused"),
    ("2.30.0", "refused"),  # not a 2.3
    (None, "checked when it runs"),
])
def test_speaks(version, expected):
    asked = {}

    def answer(name, kwargs):
        asked[name] = kwargs
        return {"dovecot": version}  # HostState, read once with the run's other facts

    kwargs = {"program": "/usr/pkg/sbin/dovecot", "language": "2.3"}
    if expected == "refused":
        with pytest.raises(OperationError, match=f"^the installed Dovecot is {version}, but"):
            plan_operation(imap.speaks, kwargs, answer)
        return
    commands, noop = plan_operation(imap.speaks, kwargs, answer)
    assert list(asked) == ["HostState"]
    if expected == "noop":
        assert (commands, noop) == ([], f"Dovecot {version} speaks 2.3")
    else:
        assert len(commands) == 1 and commands[0].startswith(SPEAKS)


def test_the_version_probe_reads_the_first_word():
    script = imap.COMPONENT.probes[0].script(platforms.netbsd("10"), None)
    assert script == ("[ -x /usr/pkg/sbin/dovecot ] && printf 'dovecot\\t%s\\n' "
                      "\"$(/usr/pkg/sbin/dovecot --version 2>/dev/null | cut -d' ' -f1)\"")
    assert imap._version([["2.3.21.1"]]) == "2.3.21.1"
    assert imap._version([]) is None and imap._version([[""]]) is None
    assert imap.language(platforms.netbsd("10")) == imap.language(platforms.netbsd("9")) == "2.3"
