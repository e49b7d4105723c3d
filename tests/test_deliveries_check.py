"""The deliveries check (tasks/qmail.py) over qmail-send's log: a fake host answering the log
script with canned lines, and the script itself run by this machine's sh over log files laid
out as each platform keeps them (as the host's own scheduled run does, with a local shell).

Deferrals and bounces are counted per recipient domain within the last health_every; older
lines are ignored; a bounce warns, and so does a domain deferred more than DEFERRALS times
since its last success; a log of successes, or an empty one, is ok.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import subprocess
import time
from datetime import UTC, timedelta, timezone

import pytest

from qmailhost import checks
from qmailhost.files import render
from qmailhost.platform import debian, netbsd
from qmailhost.settings import Settings
from tasks import qmail

DEBIAN, NETBSD = debian("13"), netbsd("10")
NOW = 1_700_000_000  # 2023-11-14 22:13:20 UTC
DATA = {"hostname": "mail.example.org", "accounts": [{"name": "alice", "password_env": "QMAILHOST_TEST_PASSWORD"}]}
NO_CONNECTION = "Sorry,_I_wasn't_able_to_establish_an_SMTP_connection._(#4.4.1)/"
NO_MAILBOX = "192.0.2.9_does_not_like_recipient./Remote_host_said:_550_5.1.1_<bob@gone.example.net>_no_such_user/"
ACCEPTED = "192.0.2.7_accepted_message./Remote_host_said:_250_2.0.0_Ok:_queued_as_4Vx1/"


@pytest.fixture(autouse=True)
def password_env(monkeypatch):
    monkeypatch.setenv("QMAILHOST_TEST_PASSWORD", "correct horse")


def label(when: float) -> str:
    """multilog's TAI64N label for UNIX time WHEN (what tai64n writes)."""
    return f"@{int(when) + 2**62 + 10:016x}{int(when % 1 * 1e9):08x}"


def multilog(*lines: tuple[int, str], now: float = NOW) -> str:
    """qmail-send's multilog lines, each (seconds before NOW, message)."""
    return "".join(f"{label(now - ago)} {message}\n" for ago, message in lines)


def remote(number: int, ago: int, recipient: str, outcome: str, words: str, outcome_ago: int | None = None):
    """One remote delivery's two lines: its start AGO seconds back, its outcome OUTCOME_AGO back (default: then)."""
    return [(ago, f"starting delivery {number}: msg {1000 + number} to remote {recipient}"),
            (ago if outcome_ago is None else outcome_ago, f"delivery {number}: {outcome}: {words}")]


def check(log: str, platform=DEBIAN, **data) -> tuple[str, str]:
    """check_deliveries on a host whose log script prints the clock, then LOG."""
    sent = []

    def shell(command: str) -> tuple[bool, str]:
        sent.append(command)
        assert command.startswith("# qmail-send's deliveries"), command
        return True, f"now {NOW} +0000\n{log}"

    settings = Settings.from_host_data({**DATA, **data}, inventory_name=DATA["hostname"])
    status, reason = qmail.check_deliveries(checks.Target(settings, platform, "192.0.2.1", shell))
    assert len(sent) == 1 and "\n" not in reason
    return status, reason


# --- the timestamps ------------------------------------------------------------------------------


def test_a_tai64n_label_reads_as_tai64nlocal_reads_it():
    """tai64nlocal subtracts 4611686018427387914 (2^62 + 10): under TZ=UTC it prints this label
    as 2023-11-14 22:13:20.500000000."""
    assert qmail.tai64n_seconds("400000006553f10a1dcd6500") == NOW + 0.5
    assert label(NOW) == "@400000006553f10a00000000"


def test_a_syslog_stamp_reads_in_the_host_s_zone_and_the_year_before_new_year():
    assert qmail.syslog_seconds("Nov 14 22:13:20", NOW, UTC) == NOW
    assert qmail.syslog_seconds("Nov 14 23:13:20", NOW, timezone(timedelta(hours=1))) == NOW
    assert qmail.read_send_log(f"now {NOW} +0100\n")[:2] == (NOW, timezone(timedelta(hours=1)))
    new_year = 1_704_067_230  # 2024-01-01 00:00:30 UTC
    assert qmail.syslog_seconds("Dec 31 23:59:50", new_year, UTC) == new_year - 40


# --- counting --------------------------------------------------------------------------------------


def test_an_empty_log_is_ok():
    assert check("") == (checks.OK, "no remote deliveries in the last 1 h")


def test_a_log_of_successes_is_ok_with_the_count_and_local_deliveries_are_not_counted():
    log = multilog(*remote(1, 3000, "bob@peer.example.net", "success", ACCEPTED),
                   *remote(2, 2000, "carol@other.example.org", "success", ACCEPTED),
                   (1000, "starting delivery 3: msg 1003 to local alice@example.org"),
                   (1000, "delivery 3: success: did_0+0+1/"),
                   *remote(4, 10, "bob@peer.example.net", "success", ACCEPTED),
                   (5, "status: local 0/10 remote 0/20"))
    assert check(log) == (checks.OK, "3 remote deliveries in the last 1 h: 3 accepted")


def test_a_bounce_warns_naming_the_domain_and_qmail_remote_s_words():
    log = multilog(*remote(1, 600, "bob@gone.example.net", "failure", NO_MAILBOX),
                   *remote(2, 500, "carol@peer.example.net", "success", ACCEPTED))
    status, reason = check(log)
    assert status == checks.WARNING
    assert reason == ("remote deliveries failing in the last 1 h: gone.example.net 1 bounced; last, to "
                      "gone.example.net: 192.0.2.9 does not like recipient./Remote host said: 550 5.1.1 "
                      "<bob@gone.example.net> no such user")


def test_deferrals_are_counted_per_domain_within_the_window_and_older_lines_are_ignored():
    """One message to slow.example.net retried at 0, 7, 27 and 60 minutes (qmail-send's schedule)
    is deferred 4 times: more than DEFERRALS. A greylisting domain defers once, then accepts. An
    hour and more before, old.example.net bounced and was deferred: outside the window."""
    log = multilog(*remote(1, 7200, "dan@old.example.net", "failure", NO_MAILBOX),
                   *[line for n in range(5) for line in remote(2, 7000 - n * 10, "x@old.example.net", "deferral",
                                                               NO_CONNECTION)],
                   *remote(3, 3590, "eve@slow.example.net", "deferral", NO_CONNECTION),
                   *remote(4, 3190, "eve@slow.example.net", "deferral", NO_CONNECTION),
                   *remote(5, 1990, "eve@slow.example.net", "deferral", NO_CONNECTION),
                   *remote(6, 900, "fay@greylist.example.org", "deferral", "451_4.7.1_Greylisted/"),
                   *remote(7, 480, "fay@greylist.example.org", "success", ACCEPTED),
                   *remote(8, 0, "eve@slow.example.net", "deferral", NO_CONNECTION))
    assert check(log) == (checks.WARNING, "remote deliveries failing in the last 1 h: slow.example.net 4 deferred; "
                                          "last, to slow.example.net: Sorry, I wasn't able to establish an SMTP "
                                          "connection. (#4.4.1)")
    three = "".join(line for line in log.splitlines(keepends=True) if "delivery 8" not in line)
    assert check(three) == (checks.OK, "5 remote deliveries in the last 1 h: 1 accepted, 4 deferred")


def test_a_success_ends_a_domain_s_run_of_deferrals():
    log = multilog(*[line for n in range(5) for line in remote(n, 3000 - n * 100, "a@flaky.example.net", "deferral",
                                                               NO_CONNECTION)],
                   *remote(9, 100, "a@flaky.example.net", "success", ACCEPTED))
    assert check(log) == (checks.OK, "6 remote deliveries in the last 1 h: 1 accepted, 5 deferred")


def test_the_worst_three_domains_are_named_bounces_first_then_the_count_of_the_rest():
    lines = []
    for number, (domain, bounces, deferrals) in enumerate([("a.example.net", 0, 5), ("b.example.net", 1, 0),
                                                           ("c.example.net", 0, 9), ("d.example.net", 2, 0),
                                                           ("e.example.net", 0, 4)]):
        for n in range(bounces):
            lines += remote(number * 100 + n, 2000 - n, f"x@{domain}", "failure", NO_MAILBOX)
        for n in range(deferrals):
            lines += remote(number * 100 + 50 + n, 1000 - number * 10 - n, f"x@{domain}", "deferral", NO_CONNECTION)
    status, reason = check(multilog(*lines))
    assert status == checks.WARNING
    assert reason.startswith("remote deliveries failing in the last 1 h: d.example.net 2 bounced, b.example.net 1 "
                             "bounced, c.example.net 9 deferred and 2 more; last, to e.example.net: Sorry, I wasn't")


def test_an_outcome_belongs_to_the_latest_start_with_its_number():
    """Delivery numbers are reused: a local delivery's bounce is not a remote one's, and a start
    before the window still names the domain of an outcome inside it."""
    log = multilog(*remote(1, 5000, "bob@peer.example.net", "success", ACCEPTED),
                   (4000, "starting delivery 2: msg 7 to remote eve@slow.example.net"),
                   (300, "delivery 2: failure: Sorry,_I_couldn't_find_any_host_named_slow.example.net._(#5.1.2)/"),
                   (200, "starting delivery 1: msg 9 to local alice@example.org"),
                   (200, "delivery 1: failure: Sorry,_no_mailbox_here_by_that_name._(#5.1.1)/"))
    assert check(log) == (checks.WARNING, "remote deliveries failing in the last 1 h: slow.example.net 1 bounced; "
                                          "last, to slow.example.net: Sorry, I couldn't find any host named "
                                          "slow.example.net. (#5.1.2)")


def test_the_window_is_health_every():
    log = multilog(*remote(1, 5000, "bob@gone.example.net", "failure", NO_MAILBOX))
    assert check(log)[0] == checks.OK
    assert check(log, health_every="2h") == (checks.WARNING, (
        "remote deliveries failing in the last 2 h: gone.example.net 1 bounced; last, to gone.example.net: "
        "192.0.2.9 does not like recipient./Remote host said: 550 5.1.1 <bob@gone.example.net> no such user"))
    assert check("", health_every="30m") == (checks.OK, "no remote deliveries in the last 30 min")
    assert check("", health_every=None) == (checks.OK, "no remote deliveries in the last 1 h")


def test_a_missing_log_warns_that_deliveries_cannot_be_seen():
    assert check("missing /var/log/qmail/qmail-send/current\n") == (
        checks.WARNING, "/var/log/qmail/qmail-send/current is missing: qmail-send's deliveries cannot be seen")


def test_no_clock_line_is_a_one_line_error():
    with pytest.raises(checks.Failed, match="no clock line"):
        qmail.read_send_log("sh: date: not found\n")


def test_netbsd_reads_qmail_send_s_syslog_lines_and_no_other_program_s():
    def syslog(ago: int, message: str, tag: str = "nbqmail/send") -> str:
        return time.strftime("%b %e %H:%M:%S", time.gmtime(NOW - ago)) + f" mail {tag}: {message}\n"

    log = "".join([*(syslog(ago, message) for ago, message in remote(1, 600, "bob@gone.example.net", "failure",
                                                                       NO_MAILBOX)),
                   syslog(500, "starting delivery 2: msg 3 to remote x@other.example.net", tag="nbqmail/other"),
                   syslog(500, "delivery 2: failure: Sorry/", tag="nbqmail/other"),
                   *(syslog(ago, message) for ago, message in remote(3, 7200, "x@old.example.net", "failure",
                                                                       NO_MAILBOX))])
    status, reason = check(log, platform=NETBSD)
    assert status == checks.WARNING and reason.startswith(
        "remote deliveries failing in the last 1 h: gone.example.net 1 bounced; last, to gone.example.net: "), reason


# --- the script, run by this machine's sh over real files, as on the host --------------------------


def local_shell(command: str) -> tuple[bool, str]:
    run = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30)
    return run.returncode == 0, run.stdout if run.returncode == 0 else run.stdout + run.stderr


def on_host(platform) -> checks.Target:
    settings = Settings.from_host_data(DATA, inventory_name=DATA["hostname"])
    return checks.Target(settings, platform, "127.0.0.1", local_shell, on_host=True)


def test_the_script_reads_multilog_s_files_in_the_window_oldest_first(tmp_path):
    now = time.time()
    logs = tmp_path / "qmail-send"
    logs.mkdir()
    old = logs / f"{label(now - 3 * 3600)}.s"  # turned over 3 hours ago: not read at all
    old.write_text(multilog(*remote(1, 3 * 3600, "x@old.example.net", "failure", NO_MAILBOX), now=now))
    os.utime(old, (now - 3 * 3600, now - 3 * 3600))
    (logs / f"{label(now - 60)}.s").write_text(  # turned over a minute ago: holds the start
        multilog((120, "starting delivery 5: msg 55 to remote bob@gone.example.net"), now=now))
    (logs / "current").write_text(multilog((30, "status: local 0/10 remote 1/20"),
                                           (30, f"delivery 5: failure: {NO_MAILBOX}"), now=now))
    platform = dataclasses.replace(DEBIAN, log_dir=str(tmp_path))
    log = qmail.SEND_LOGS["debian"]
    files = [name.format(log_dir=tmp_path) for name in log.files]
    ok, output = local_shell(render("qmail/deliveries.sh.j2", files=" ".join(files), live=files[-1], minutes=62,
                                    lines=qmail.LOG_LINES))
    assert ok and output.splitlines()[0].startswith("now ")
    assert "old.example.net" not in output and "status:" not in output
    assert [line.split(" ", 1)[1] for line in output.splitlines()[1:]] == [
        "starting delivery 5: msg 55 to remote bob@gone.example.net", f"delivery 5: failure: {NO_MAILBOX}"]
    status, reason = qmail.check_deliveries(on_host(platform))
    assert status == checks.WARNING and "gone.example.net 1 bounced" in reason, reason


def test_the_script_reads_yesterday_s_compressed_maillog_then_today_s(tmp_path):
    now = time.time()

    def syslog(ago: int, message: str) -> str:
        return time.strftime("%b %e %H:%M:%S", time.localtime(now - ago)) + f" mail nbqmail/send: {message}\n"

    with gzip.open(tmp_path / "maillog.0.gz", "wt") as rotated:
        rotated.write(syslog(600, "starting delivery 5: msg 55 to remote bob@peer.example.net"))
    (tmp_path / "maillog").write_text(syslog(550, f"delivery 5: success: {ACCEPTED}")
                                      + syslog(540, "some other line of another program"))
    status, reason = qmail.check_deliveries(on_host(dataclasses.replace(NETBSD, log_dir=str(tmp_path))))
    assert (status, reason) == (checks.OK, "1 remote delivery in the last 1 h: 1 accepted")
    (tmp_path / "maillog").unlink()
    assert qmail.check_deliveries(on_host(dataclasses.replace(NETBSD, log_dir=str(tmp_path)))) == (
        checks.WARNING, f"{tmp_path}/maillog is missing: qmail-send's deliveries cannot be seen")
