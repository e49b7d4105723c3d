"""NetBSD command plans for the host's own scheduled checks (tasks/health.py) on the model host
(harness/netbsd_host.py): no NetBSD host, no network beyond PyPI's pure wheels.

A bare host gets pkgsrc's apprise and the compiled packages the project's code imports there,
the code itself with pyinfra's pure wheels as one tar (unpacked once, then stamped), its
settings without a secret, the alert URLs and the heartbeat URL as root-only secrets, the
runner, and one line in root's crontab that runs it when due; the next plan is empty. A
changed setting rewrites what the runs read, and nothing else of theirs. health_every null
takes it all away, the cron line with its name. No URL is in any plan.
"""

from __future__ import annotations

import json

import pytest

from harness.netbsd_host import HEALTH_CRON, HEALTH_PACKAGES, ROOT_CRONTAB, NetBSDHost, converged_host, deploy_data
from harness.plan_harness import commands_of, plan_deploy, uploaded
from qmailhost.settings import Settings
from tasks import health

TOKEN = "t0ken-n3ver-sh0wn"
MINE = "/usr/pkg/etc/qmailhost/health"
ROOT = "/usr/pkg/lib/qmailhost"


@pytest.fixture(autouse=True)
def password_env(monkeypatch):
    monkeypatch.setenv("QMAILHOST_TEST_PASSWORD", "correct horse")
    monkeypatch.setenv("QMAILHOST_ALERTS", f"json://alerts.example.net/{TOKEN}")
    monkeypatch.setenv("QMAILHOST_HEARTBEAT", f"https://hc.example.net/{TOKEN}/{{status}}")


SECRETS = {"alert_urls": {"env": "QMAILHOST_ALERTS"}, "heartbeat_url": {"env": "QMAILHOST_HEARTBEAT"}}


def ours(planned) -> list[tuple[str, list]]:
    return [(name.split(" | ", 1)[1], commands) for name, commands in planned if name.startswith("health | ")]


def test_a_bare_host_gets_the_code_the_settings_the_secrets_and_a_cron_line():
    host = NetBSDHost()
    planned = plan_deploy(deploy_data(**SECRETS), host.answer, grouped=True)
    assert commands_of(planned)[0].split()[4:][4:4 + len(HEALTH_PACKAGES)] == list(HEALTH_PACKAGES)
    names = [name for name, _ in ours(planned)]
    assert names == ["Create the directory of qmailhost's own code",
                     "Upload qmailhost's own code and Python packages (the host's scheduled runs)",
                     "Unpack qmailhost's own code and Python packages", "Create the health directory (root's alone)",
                     health.SETTINGS_COPY, "Install the alert URLs (a secret)", "Install the heartbeat URL (a secret)",
                     "Write the scheduled checks' runner", "Run the status checks when due (cron, every 5 min)"]
    for name, commands in planned:  # the URLs go only into their own root-only files
        assert TOKEN not in name
        assert not [c for c in commands if TOKEN in str(c) and not (isinstance(c, list) and c[2] in (
            f"{MINE}/alerts.qmailhost-new", f"{MINE}/heartbeat.qmailhost-new"))], name
    assert uploaded(planned, f"{MINE}/alerts") == f"json://alerts.example.net/{TOKEN}\n"
    tar = uploaded(planned, f"{ROOT}/runtime.tar.gz")
    assert isinstance(tar, bytes) and tar[:2] == b"\x1f\x8b"  # the tar, gzipped
    config = json.loads(uploaded(planned, f"{MINE}/health.json"))
    deployed = Settings.from_deployed(json.dumps(config["settings"]))
    assert config["platform"] == ["netbsd", "10"] and deployed.alert_urls.urls is None
    assert deployed.alert_urls.source == "env:QMAILHOST_ALERTS" and deployed.health_every == 3600
    assert not hasattr(deployed, "verify_after_deploy"), "left out: only the laptop's runs read it"
    runner = uploaded(planned, f"{MINE}/run")
    assert f"PYTHONPATH={ROOT}/app:{ROOT}/site exec /usr/pkg/bin/python3.13 -s -m tasks.health {MINE}/health.json" \
        in runner
    host.apply(planned)
    assert host.crontab == [*ROOT_CRONTAB, *HEALTH_CRON] and host.runtime_unpacked
    assert plan_deploy(deploy_data(**SECRETS), host.answer) == []


def test_a_changed_setting_rewrites_what_the_runs_read_and_nothing_else_of_theirs():
    host = converged_host()
    planned = plan_deploy(deploy_data(health_every="10m"), host.answer, grouped=True)
    assert [name for name, _ in ours(planned)] == [health.SETTINGS_COPY, "Write the scheduled checks' runner"]
    assert "-ge 600 ]" in uploaded(planned, f"{MINE}/run")
    assert plan_deploy(deploy_data(verify_after_deploy=False), host.answer) == [], "a laptop-only setting"


def test_health_every_null_takes_it_all_away():
    host = converged_host()
    planned = plan_deploy(deploy_data(health_every=None), host.answer, grouped=True)
    assert [name for name, _ in ours(planned)] == [
        "Stop the scheduled status checks (cron)", "Remove the health config file (health_every is null)",
        "Remove the health run file (health_every is null)"]  # (the converged host has no alert or heartbeat URL)
    host.apply(planned)
    assert host.crontab == [*ROOT_CRONTAB, ""], "the line and its name go (pyinfra's blank line before them stays)"
    assert plan_deploy(deploy_data(health_every=None), host.answer) == []
