"""The services_up check over daemontools' own words (svstat), on a clock of its own.

A service that is steady passes at once. A crash loop that a deploy has just ended (stunnel
given an invalid option by hand, restarting every second, then repaired: issue 26) restarts
once more and then stays up: it passes once steady, instead of failing the deploy that
repaired it. A service that still restarts after the settling time is "restarting over and
over", and one that is down is down.
"""

from __future__ import annotations

import itertools

import pytest

from qmailhost import checks
from qmailhost.platform import debian
from qmailhost.settings import Settings

DEBIAN = debian("13")


@pytest.fixture(autouse=True)
def password_env(monkeypatch):
    monkeypatch.setenv("QMAILHOST_TEST_PASSWORD", "correct horse")


@pytest.fixture
def clock(monkeypatch):
    """time.monotonic and time.sleep of the check, on a clock that moves only when it sleeps."""
    now = [1000.0]
    monkeypatch.setattr(checks.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(checks.time, "sleep", lambda seconds: now.__setitem__(0, now[0] + seconds))
    return now


def target(stunnel) -> checks.Target:
    """A host whose services are all long up but stunnel, whose svstat line STUNNEL(seconds
    since the check began) gives."""
    settings = Settings.from_host_data({"hostname": "mail.example.org",
                                        "accounts": [{"name": "alice", "password_env": "QMAILHOST_TEST_PASSWORD"}]},
                                       inventory_name="mail.example.org")
    started = []

    def shell(command: str) -> tuple[bool, str]:
        assert command.startswith("svstat ")
        started.append(len(started))
        lines = []
        for path in command.split()[1:-2]:
            words = stunnel(len(started) - 1) if path == f"{DEBIAN.service_dir}/stunnel" else "up (pid 42) 9999 seconds"
            lines.append(f"{path}: {words}")
        return True, "\n".join(lines) + "\n"

    return checks.Target(settings, DEBIAN, "192.0.2.1", shell)


def test_steady_services_pass_at_once(clock):
    status, reason = checks.check_services_up(target(lambda call: "up (pid 7) 600 seconds"))
    assert status == checks.OK and "stunnel 10 min" in reason, reason
    assert clock[0] == 1000.0, "nothing to wait for"


def test_a_crash_loop_a_deploy_just_ended_passes_once_steady(clock):
    pids = {0: "up (pid 100) 0 seconds", 1: "up (pid 101) 1 seconds"}  # one last restart, then up for good
    status, reason = checks.check_services_up(target(lambda call: pids.get(call, f"up (pid 101) {call * 3} seconds")))
    assert status == checks.OK, reason
    assert clock[0] - 1000.0 <= checks.SETTLE


def test_a_service_still_restarting_after_the_settling_time_is_an_error(clock):
    pids = itertools.count(200)
    status, reason = checks.check_services_up(target(lambda call: f"up (pid {next(pids)}) 1 seconds"))
    assert (status, reason) == (checks.ERROR, "restarting over and over: stunnel")


def test_a_service_that_is_down_is_named(clock):
    status, reason = checks.check_services_up(target(lambda call: "down 4 seconds, normally up"))
    assert status == checks.ERROR and reason.startswith("stunnel down 4 seconds"), reason
