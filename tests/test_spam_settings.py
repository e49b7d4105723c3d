"""tasks/spam.py without a host: its settings (defaults; each bad value refused before anything
runs, in one line naming the setting), what it writes into rspamd's local.d/ and Redis's config
for each platform and release, the inbound filter's config lines, and the spam_filter check's
reading of what rspamd says. The filter itself is tests/test_spam_filter.py's; the plans on
NetBSD tests/test_netbsd_spam_plans.py's.
"""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest

from qmailhost.checks import ERROR, OK, SKIPPED, WARNING
from qmailhost.platform import debian, netbsd
from qmailhost.settings import Settings, SettingsError
from tasks import dkim, spam


@pytest.fixture(autouse=True)
def password(monkeypatch):
    monkeypatch.setenv("QMAILHOST_TEST_PASSWORD", "correct horse")


def parse(**settings) -> Settings:
    return Settings.from_host_data({"hostname": "mail.example.org",
                                    "accounts": [{"name": "alice", "password_env": "QMAILHOST_TEST_PASSWORD"}],
                                    **settings}, inventory_name="mail.example.org")


def test_defaults_judge_port_25_refuse_from_15_mark_from_6_and_enforce_dmarc():
    settings = parse()
    assert (settings.spam_filter, settings.spam_reject_score, settings.spam_junk_score, settings.dmarc_enforce) == \
        (True, 15, 6, True)
    assert parse(spam_reject_score=12.5, spam_junk_score=5.5).spam_reject_score == 12.5


@pytest.mark.parametrize(("setting", "value", "says"), [
    ("spam_filter", "yes", "is not true or false"),
    ("spam_filter", 1, "is not true or false"),
    ("dmarc_enforce", "no", "is not true or false"),
    ("spam_reject_score", "15", "is not a score above 0"),
    ("spam_reject_score", True, "is not a score above 0"),
    ("spam_reject_score", 0, "is not a score above 0"),
    ("spam_reject_score", float("nan"), "is not a score above 0"),
    ("spam_reject_score", 1e9, "is not a score above 0"),
    ("spam_junk_score", -3, "is not a score above 0"),
    ("spam_junk_score", None, "is not a score above 0"),
])
def test_a_bad_value_is_one_line_naming_its_setting(setting, value, says):
    with pytest.raises(SettingsError) as refused:
        parse(**{setting: value})
    assert refused.value.setting == setting, refused.value
    assert says in str(refused.value) and f"'{setting}'" in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize(("reject", "junk"), [(6, 6), (5, 6), (10, 12.5)])
def test_the_reject_score_must_be_above_the_junk_score(reject, junk):
    with pytest.raises(SettingsError) as refused:
        parse(spam_reject_score=reject, spam_junk_score=junk)
    assert refused.value.setting == "spam_reject_score" and "is not above spam_junk_score" in str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("port", [spam.NORMAL_PORT, spam.CONTROLLER_PORT, spam.REDIS_PORT])
def test_a_port_of_rspamd_or_redis_is_no_other_services(port):
    with pytest.raises(SettingsError) as refused:
        parse(imap_port=port)
    assert refused.value.setting == "imap_port" and "spam_filter" in str(refused.value)
    assert parse(imap_port=port, spam_filter=False).imap_port == port  # off: the port is free


# --- what lands on the host ------------------------------------------------------------------


def test_every_local_d_file_is_whole_ours_and_says_so_in_its_first_line():
    for platform in (debian("12"), debian("13"), netbsd("10")):
        written = spam.local_d(platform, parse())
        assert set(written) == set(spam.LOCAL_D)
        for name, content in written.items():
            first, *_rest = content.splitlines()
            assert first.startswith("# Written by qmailhost (spam/): "), (platform.name, name)
            assert content.endswith("\n") and "{{" not in content, name


def test_rspamd_listens_on_loopback_its_controller_wants_a_password_and_the_proxy_is_off():
    written = spam.local_d(debian("13"), parse())
    assert 'bind_socket = "127.0.0.1:11333";' in written["worker-normal.inc"]
    controller = written["worker-controller.inc"]
    assert 'bind_socket = "127.0.0.1:11334";' in controller and 'secure_ip = "192.0.2.1";' in controller
    # the hash is in a root-only include (at local.d's priority, so the stock "q1" does not stay beside it)
    assert '.include(priority=1) "/etc/qmailhost/spam/controller.inc"' in controller
    assert "password =" not in controller
    assert "enabled = false;" in written["worker-proxy.inc"]
    assert 'servers = "127.0.0.1:6379";' in written["redis.conf"]
    assert 'nameserver = ["127.0.0.1:53"];' in written["options.inc"]  # the host's unbound (resolver/)
    assert 'type = "console";' in written["logging.inc"]
    assert 'type = "syslog";' in spam.local_d(netbsd("10"), parse())["logging.inc"]


def test_the_gtube_option_follows_the_release_and_only_the_standard_string_counts():
    assert "enable_test_patterns = false;" in spam.local_d(debian("12"), parse())["options.inc"]  # rspamd 3.4
    for platform in (debian("13"), netbsd("9"), netbsd("10")):  # rspamd 3.8 and later
        assert 'gtube_patterns = "reject";' in spam.local_d(platform, parse())["options.inc"]


def test_scores_dmarc_and_headers_follow_the_settings():
    written = spam.local_d(debian("13"), parse(spam_reject_score=12.5, spam_junk_score=5))
    assert re.search(r"^reject = 12\.5;\nadd_header = 5;\ngreylist = null;$", written["actions.conf"], re.M)
    assert "enabled = false;" in written["greylist.conf"]
    assert 'use = ["x-spam-status", "x-spamd-bar"];' in written["milter_headers.conf"]
    assert "authentication-results" not in written["milter_headers.conf"]  # dkim/'s filter writes that one
    assert 'reject = "reject";' in written["dmarc.conf"] and 'quarantine = "add_header";' in written["dmarc.conf"]
    off = spam.local_d(debian("13"), parse(dmarc_enforce=False))["dmarc.conf"]
    assert "actions" not in off and off.startswith("# Written by qmailhost (spam/): ")
    bayes = written["classifier-bayes.conf"]
    assert 'backend = "redis";' in bayes and "autolearn = false;" in bayes


def test_redis_keeps_its_snapshot_in_the_foreground_on_debian_and_forks_on_netbsd():
    mine = spam.redis_config(debian("13"))
    assert "bind 127.0.0.1\nport 6379\n" in mine and "daemonize no\n" in mine and "dir /var/lib/redis\n" in mine
    assert "save 3600 1\n" in mine and "appendonly no\n" in mine and "pidfile" not in mine
    theirs = spam.redis_config(netbsd("10"))
    assert "daemonize yes\n" in theirs and "pidfile /var/db/redis/redis.pid\n" in theirs
    assert "syslog-enabled yes\n" in theirs and "dir /var/db/redis\n" in theirs


def test_the_password_command_never_puts_the_password_on_a_command_line():
    command = spam.password_command(debian("13"))
    assert "umask 077" in command and " -p " not in command.replace("mkdir -p ", "") and " pw " not in command
    assert "< /etc/qmailhost/spam/controller.password)" in command  # read by rspamadm's Lua on stdin
    assert "mv -f /etc/qmailhost/spam/controller.inc.new /etc/qmailhost/spam/controller.inc" in command


def test_the_inbound_filters_config_turns_on_each_of_its_jobs():
    platform = debian("13")
    both = dkim.inbound_config(platform, parse())
    assert both == ("authserv-id mail.example.org\nqueue /var/qmail/bin/qmail-queue\nresolver 127.0.0.1\n"
                    "rspamd http://127.0.0.1:11333/checkv2\nrspamd-seconds 20\n")
    assert dkim.inbound_config(platform, parse(spam_filter=False)) == \
        "authserv-id mail.example.org\nqueue /var/qmail/bin/qmail-queue\nresolver 127.0.0.1\n"
    assert dkim.inbound_config(platform, parse(authentication_results=False)) == \
        "queue /var/qmail/bin/qmail-queue\nrspamd http://127.0.0.1:11333/checkv2\nrspamd-seconds 20\n"
    assert dkim.inbound_queue(platform, parse(authentication_results=False)) == "/etc/qmailhost/dkim/qmail-queue"
    assert dkim.inbound_queue(platform, parse(authentication_results=False, spam_filter=False)) is None


# --- the spam_filter check -------------------------------------------------------------------


def _target(answer: dict | str, **settings):
    said = []

    def run(command):
        said.append(command)
        return answer if isinstance(answer, str) else json.dumps(answer) + "\n"

    return SimpleNamespace(settings=parse(**settings), platform=debian("13"), run=run), said


STAT = {"version": "3.12.1", "scanned": 40, "actions": {"reject": 3, "add header": 5, "no action": 32},
        "statfiles": [{"symbol": "BAYES_SPAM", "revision": 210}, {"symbol": "BAYES_HAM", "revision": 250}]}


def test_the_check_reports_what_rspamd_scanned_and_learned_in_one_line():
    target, said = _target({"ping": "pong", "open": 401, "stat": STAT})
    status, reason = spam.check_spam_filter(target)
    assert status == OK and "\n" not in reason
    assert reason == ("rspamd 3.12.1 answers; 40 scanned (3 refused, 5 marked spam); Bayes learned 210 spam, "
                      "250 ham; the controller wants its password")
    assert said[0].startswith("/usr/bin/python3 -c ") and "/etc/qmailhost/spam/controller.password 127.0.0.1" in said[0]


@pytest.mark.parametrize(("seen", "status", "says"), [
    ({"ping": "ConnectionRefusedError: [Errno 111] Connection refused", "open": None, "stat": "x"}, ERROR,
     "does not answer on 11333"),
    ({"ping": "pong", "open": 200, "stat": STAT}, ERROR, "without its password"),
    ({"ping": "pong", "open": 401, "stat": "HTTP 401"}, WARNING, "did not give statistics"),
    ("", ERROR, "printed no answer"),
])
def test_the_check_says_what_is_wrong(seen, status, says):
    target, _ = _target(seen)
    found, reason = spam.check_spam_filter(target)
    assert found == status and says in reason and "\n" not in reason


def test_the_check_skips_when_spam_filter_is_off():
    target, said = _target({})
    target.settings = parse(spam_filter=False)
    assert spam.check_spam_filter(target) == (SKIPPED, "spam_filter is off: mail on port 25 is not judged")
    assert said == []
