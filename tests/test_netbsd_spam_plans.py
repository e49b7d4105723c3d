"""NetBSD command plans for tasks/spam.py on the model host (harness/netbsd_host.py): no NetBSD host.

pkgsrc's mail/rspamd and databases/redis come as binary packages (rspamd, redis) with their rc.d
scripts and users. A bare host gets both packages, Redis's config (ours, at the path the redis rc.d
script reads: it forks and logs to syslog, as rc.d wants), rspamd's local.d/ files, the
controller's password made on the host (nothing of it in any plan), a config test, and both
services through rc.d (NAME=YES and every variable in /etc/rc.conf.d/NAME); port 25's filter asks
rspamd. The next plan is empty. A changed score rewrites one file, tests the config and reloads
rspamd, nothing more; a config rspamd refuses stops the run before the reload. A controller
include gone is made again (the password kept) and rspamd restarted. spam_filter false disables
and stops both (the packages stay), and the filter asks no one.
"""

from __future__ import annotations

import pytest

from harness import netbsd_host
from harness.netbsd_host import NetBSDHost, converged_host, deploy_data
from harness.plan_harness import commands_of, index, plan_deploy, uploaded
from qmailhost import platform as platforms
from qmailhost.settings import Settings
from tasks import spam
from tests.test_netbsd_dkim_plans import INBOUND, assert_netbsd_only

NETBSD = platforms.netbsd("10")
LOCAL = "/usr/pkg/etc/rspamd/local.d"
MINE = "/usr/pkg/etc/qmailhost/spam"
PASSWORD, INCLUDE = f"{MINE}/controller.password", f"{MINE}/controller.inc"
REDIS_CONF = "/usr/pkg/etc/redis.conf"
CONFIGTEST = "/usr/pkg/bin/rspamadm configtest -c /usr/pkg/etc/rspamd/rspamd.conf"
RSPAMD_RC = ('# rspamd: rspamd on 127.0.0.1:11333 (controller 11334)\n'
             '# Managed by qmailhost: every variable is set, whatever the rc.d defaults.\nrspamd=YES\nrspamd_flags=""\n')
REDIS_RC = ('# redis: Redis for rspamd on 127.0.0.1:6379\n'
            '# Managed by qmailhost: every variable is set, whatever the rc.d defaults.\n'
            'redis=YES\nredis_user="redis"\nredis_flags=""\n')


@pytest.fixture(autouse=True)
def password_env(monkeypatch):
    monkeypatch.setenv("QMAILHOST_TEST_PASSWORD", "correct horse")


@pytest.fixture(scope="module")
def bare():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QMAILHOST_TEST_PASSWORD", "correct horse")
        host = NetBSDHost()
        return host, plan_deploy(deploy_data(), host.answer, grouped=True)


@pytest.fixture(scope="module")
def converged():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QMAILHOST_TEST_PASSWORD", "correct horse")
        return converged_host()


def spam_settings() -> Settings:
    return Settings.from_host_data(deploy_data(), inventory_name="mail.example.org")


def ours(plan) -> list[str]:
    return [name.split(" | ", 1)[1] for name, _ in plan if name.startswith("spam | ")]


def test_the_netbsd_paths_are_pkgsrcs():
    paths = spam.PATHS["netbsd"]
    assert paths.packages == netbsd_host.SPAM_PACKAGES == ("rspamd", "redis")
    assert (paths.rspamd, paths.rspamadm, paths.config) == ("/usr/pkg/bin/rspamd", netbsd_host.RSPAMADM,
                                                             netbsd_host.RSPAMD_CONF)
    assert (paths.redis, paths.redis_config, paths.user, paths.redis_user) == (
        "/usr/pkg/bin/redis-server", netbsd_host.REDIS_CONF, "rspamd", "redis")
    assert spam.local_dir(NETBSD) == LOCAL == netbsd_host.RSPAMD_LOCAL
    assert spam.files(NETBSD) == {"dir": MINE, "password": PASSWORD, "include": INCLUDE}
    assert MINE == netbsd_host.SPAM_DIR


def test_a_bare_host_installs_both_packages_and_runs_both_services(bare):
    host, plan = bare
    commands = commands_of(plan)
    assert commands[0].startswith("PKG_RCD_SCRIPTS=YES /usr/pkg/bin/pkgin -y install ")
    assert {"rspamd", "redis"} <= set(commands[0].split()[5:])
    assert ours(plan) == [
        "Write Redis's config",
        "Install the rc.d script redis", "Configure redis (/etc/rc.conf.d/redis)", "Run redis (restart on change)",
        *(f"Write rspamd's local.d/{name}" for name in spam.LOCAL_D),
        *(f"Write rspamd's override.d/{name}" for name in spam.OVERRIDE_D),
        "Make rspamd's controller password (root's alone, never shown)",
        "Check rspamd's config (rspamadm configtest)",
        "Install the rc.d script rspamd", "Configure rspamd (/etc/rc.conf.d/rspamd)", "Reload rspamd",
        "Run rspamd (restart on change)"]
    assert uploaded(plan, "/etc/rc.conf.d/rspamd") == RSPAMD_RC
    assert uploaded(plan, "/etc/rc.conf.d/redis") == REDIS_RC
    for name, content in spam.local_d(NETBSD, spam_settings()).items():
        assert uploaded(plan, f"{LOCAL}/{name}") == content
    redis = uploaded(plan, REDIS_CONF)
    assert "bind 127.0.0.1\nport 6379\n" in redis and "daemonize yes\n" in redis and "dir /var/db/redis\n" in redis
    assert "pidfile /var/db/redis/redis.pid\n" in redis and "syslog-enabled yes\n" in redis
    assert 'type = "syslog";' in uploaded(plan, f"{LOCAL}/logging.inc")
    assert 'gtube_patterns = "reject";' in uploaded(plan, f"{LOCAL}/options.inc")
    # in order: the packages, the config and the password, the test, then rspamd started; port 25 after it
    assert index(commands, "pkgin -y install") < index(commands, f"upload {LOCAL}/worker-controller.inc") \
        < index(commands, f"> {INCLUDE}.new") < index(commands, CONFIGTEST) < index(commands, "/etc/rc.d/rspamd start") \
        < index(commands, "/etc/rc.d/qmailsmtpd start")
    assert index(commands, "/etc/rc.d/redis start") < index(commands, "/etc/rc.d/rspamd start")
    mine = [c if isinstance(c, str) else f"{c[2]}\n{c[1]}" for name, cs in plan if name.startswith("spam | ")
            for c in cs]
    assert_netbsd_only(*commands, *mine)
    assert not [c for c in mine if "install -d" in c or "setuidgid" in c or "/run/" in c]  # (Debian's run scripts)


def test_port_25s_filter_asks_rspamd(bare):
    _, plan = bare
    assert uploaded(plan, INBOUND) == ("authserv-id mail.example.org\nqueue /usr/pkg/bin/qmail-queue\n"
                                       "resolver 127.0.0.1\nrspamd http://127.0.0.1:11333/checkv2\nrspamd-seconds 20\n")
    assert "QMAILQUEUE=/usr/pkg/etc/qmailhost/dkim/qmail-queue" in uploaded(plan, "/etc/rc.conf.d/qmailsmtpd")


def test_the_password_is_made_on_the_host_and_shown_nowhere(bare):
    host, plan = bare
    host = host.copy()
    host.apply([(name.split(" | ", 1)[-1], commands) for name, commands in plan])
    secret, hashed = host.contents[PASSWORD], host.contents[INCLUDE]
    assert host.files[PASSWORD]["mode"] == host.files[INCLUDE]["mode"] == "600"
    assert hashed.startswith('password = "$2$')
    for name, commands in plan:
        for text in (name, *(str(c) for c in commands)):
            assert secret not in text and hashed not in text and "$2$model" not in text
    assert {"rspamd", "redis"} <= host.running and {"rspamd", "redis"} <= set(host.users)
    assert plan_deploy(deploy_data(), host.answer) == []


def test_a_changed_score_rewrites_one_file_tests_the_config_and_reloads_rspamd(converged):
    host = converged.copy()
    plan = plan_deploy(deploy_data(spam_reject_score=20), host.answer, grouped=True)
    assert ours(plan) == ["Write rspamd's local.d/actions.conf", "Check rspamd's config (rspamadm configtest)",
                          "Reload rspamd"]
    assert "reject = 20;\n" in uploaded(plan, f"{LOCAL}/actions.conf")
    commands = commands_of(plan)
    assert index(commands, CONFIGTEST) < index(commands, "/etc/rc.d/rspamd reload")
    host.apply(plan)
    assert host.reloaded == ["rspamd"] and host.restarted == []
    assert plan_deploy(deploy_data(spam_reject_score=20), host.answer) == []


def test_a_config_rspamd_refuses_stops_the_run_before_the_reload(converged):
    host = converged.copy()
    host.rspamd_config_ok = False
    plan = plan_deploy(deploy_data(dmarc_enforce=False), host.answer)
    with pytest.raises(AssertionError, match="rspamadm configtest says syntax BAD"):
        host.apply(plan)
    assert host.reloaded == [] and "service-rspamd-h" in host.stamps  # the old config still runs


def test_a_controller_include_gone_is_made_again_with_the_same_password(converged):
    host = converged.copy()
    secret = host.contents[PASSWORD]
    del host.files[INCLUDE], host.contents[INCLUDE]
    plan = plan_deploy(deploy_data(), host.answer, grouped=True)
    assert ours(plan) == ["Make rspamd's controller password (root's alone, never shown)",
                          "Check rspamd's config (rspamadm configtest)", "Run rspamd (restart on change)"]
    host.apply(plan)
    assert host.contents[PASSWORD] == secret and INCLUDE in host.files and host.restarted == ["rspamd"]
    assert plan_deploy(deploy_data(), host.answer) == []


def test_redis_config_edited_by_hand_is_put_back_and_redis_restarted(converged):
    host = converged.copy()
    host.files[REDIS_CONF] = {**host.files[REDIS_CONF], "sha256": "edited by hand"}
    plan = plan_deploy(deploy_data(), host.answer, grouped=True)
    assert ours(plan) == ["Write Redis's config", "Run redis (restart on change)"]
    host.apply(plan)
    assert host.restarted == ["redis"]


def test_spam_filter_off_disables_and_stops_both_and_the_filter_asks_no_one(converged):
    host = converged.copy()
    plan = plan_deploy(deploy_data(spam_filter=False), host.answer, grouped=True)
    assert ours(plan) == ["Disable rspamd (/etc/rc.conf.d/rspamd)", "Stop rspamd",
                          "Disable redis (/etc/rc.conf.d/redis)", "Stop redis"]
    assert uploaded(plan, "/etc/rc.conf.d/rspamd").endswith("rspamd=NO\n")
    assert uploaded(plan, INBOUND) == "authserv-id mail.example.org\nqueue /usr/pkg/bin/qmail-queue\nresolver 127.0.0.1\n"
    assert not [c for c in commands_of(plan) if "pkgin" in c and "remove" in c]  # the packages stay
    host.apply(plan)
    assert not {"rspamd", "redis"} & host.running and {"rspamd", "redis"} <= set(host.packages)
    assert plan_deploy(deploy_data(spam_filter=False), host.answer) == []
    # on again: both run, with the password kept
    secret = host.contents[PASSWORD]
    plan = plan_deploy(deploy_data(), host.answer, grouped=True)
    host.apply(plan)
    assert {"rspamd", "redis"} <= host.running and host.contents[PASSWORD] == secret
    assert "Make rspamd's controller password (root's alone, never shown)" not in ours(plan)
