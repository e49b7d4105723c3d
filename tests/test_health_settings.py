"""tasks/health.py without a host: its settings (each bad value one line naming the setting,
before anything runs; no URL ever shown), the settings as deployed (no secret crosses), what a
run tells and when (once on a change, "resolved", a daily reminder, again after a failed
send), the disk check's reading of df on Debian and NetBSD, and qmailhost/runtime.py's tar
(the same bytes from the same inputs). The end-to-end proof is tests/test_health.py's.
"""

from __future__ import annotations

import io
import json
import tarfile
import uuid
import zipfile

import pytest

from qmailhost import checks, runtime
from qmailhost.platform import debian, netbsd
from qmailhost.settings import Settings, SettingsError
from tasks import health

TOKEN = "s3cr3t-t0ken"


@pytest.fixture(autouse=True)
def password(monkeypatch):
    monkeypatch.setenv("QMAILHOST_TEST_PASSWORD", "correct horse")


def parse(**settings) -> Settings:
    return Settings.from_host_data({"hostname": "mail.example.org",
                                    "accounts": [{"name": "alice", "password_env": "QMAILHOST_TEST_PASSWORD"}],
                                    "verify_account": {"name": "alice"}, **settings}, inventory_name="mail.example.org")


def url_file(tmp_path, text: str, mode: int = 0o600) -> str:
    path = tmp_path / f"urls-{uuid.uuid4().hex[:8]}"
    path.write_text(text)
    path.chmod(mode)
    return str(path)


def test_defaults_every_hour_no_alerts_no_heartbeat():
    settings = parse()
    assert (settings.health_every, settings.alert_urls, settings.heartbeat_url) == (3600, None, None)
    assert parse(health_every="1m").health_every == 60 and parse(health_every=None).health_every is None


@pytest.mark.parametrize(("value", "says"), [("30s", "not a duration from 1m to 1d"), ("0m", "from 1m"),
                                             ("2d", "to 1d"), (60, "not a duration")])
def test_a_bad_health_every_is_one_line(value, says):
    with pytest.raises(SettingsError) as refused:
        parse(health_every=value)
    assert refused.value.setting == "health_every" and says in str(refused.value) and "\n" not in str(refused.value)


def test_bad_alert_urls_are_refused_in_one_line_that_never_shows_them(tmp_path, caplog):
    cases = [
        (f"json://example.org/{TOKEN}", "never go into the inventory"),
        ({"file": url_file(tmp_path, f"json://example.org/{TOKEN}\n", 0o644)}, "readable by others"),
        ({"file": url_file(tmp_path, f"json://example.org/{TOKEN}\nnot-a-url-{TOKEN}\n")},
         "URL 2 of file:"),
        ({"file": url_file(tmp_path, f"bogus{TOKEN}://x/y\n")}, "is not one Apprise can send to"),
        ({"file": str(tmp_path / "absent")}, "cannot be read"),
        ({"env": "QMAILHOST_NO_SUCH_VARIABLE"}, "is not set or empty"),
        ({"file": url_file(tmp_path, "# only a comment\n", 0o400)}, "holds no URL"),
    ]
    for value, says in cases:
        with pytest.raises(SettingsError) as refused:
            parse(alert_urls=value)
        message = str(refused.value)
        assert refused.value.setting == "alert_urls" and says in message, message
        assert TOKEN not in message and "\n" not in message
    assert TOKEN not in caplog.text, "Apprise's own log of the refused URL"


def test_good_alert_urls_from_a_file_or_the_environment(tmp_path, monkeypatch):
    found = parse(alert_urls={"file": url_file(tmp_path, f"# ops\njson://10.0.0.1:8080/{TOKEN}\nntfy://{TOKEN}\n")})
    assert found.alert_urls.urls == (f"json://10.0.0.1:8080/{TOKEN}", f"ntfy://{TOKEN}")
    assert TOKEN not in repr(found.alert_urls) and found.alert_urls.source.startswith("file:")
    monkeypatch.setenv("QMAILHOST_ALERTS", f"gotify://example.org/{TOKEN}")
    assert parse(alert_urls={"env": "QMAILHOST_ALERTS"}).alert_urls.urls == (f"gotify://example.org/{TOKEN}",)


@pytest.mark.parametrize("text", [f"ftp://example.org/{TOKEN}", f"https://a.example/{TOKEN}\nhttps://b.example/",
                                  "https:///nohost"])
def test_a_heartbeat_url_is_one_http_url(tmp_path, text):
    with pytest.raises(SettingsError) as refused:
        parse(heartbeat_url={"file": url_file(tmp_path, text)})
    assert refused.value.setting == "heartbeat_url" and TOKEN not in str(refused.value)
    good = parse(heartbeat_url={"file": url_file(tmp_path, f"https://hc-ping.example/{TOKEN}/{{status}}")})
    assert good.heartbeat_url.urls == (f"https://hc-ping.example/{TOKEN}/{{status}}",)


def test_alerts_without_scheduled_runs_are_refused(tmp_path):
    with pytest.raises(SettingsError) as refused:
        parse(health_every=None, alert_urls={"file": url_file(tmp_path, "json://example.org/x")})
    assert refused.value.setting == "alert_urls" and "health_every is null" in str(refused.value)


def test_the_settings_as_deployed_carry_no_secret_and_read_back_the_same(tmp_path, monkeypatch):
    settings = parse(alert_urls={"file": url_file(tmp_path, f"json://example.org/{TOKEN}")},
                     heartbeat_url={"file": url_file(tmp_path, f"https://hc.example/{TOKEN}")})
    text = settings.as_deployed()
    assert TOKEN not in text and "correct horse" not in text
    monkeypatch.delenv("QMAILHOST_TEST_PASSWORD")  # the host has none of the laptop's secrets
    back = Settings.from_deployed(text)
    assert back.accounts[0].name == "alice" and back.accounts[0].password is None
    assert back.verify_account.name == "alice" and back.verify_account.password is None
    assert back.alert_urls.urls is None and back.alert_urls.source == settings.alert_urls.source
    for name in ("hostname", "domains", "health_every", "spamdyke_filters", "distfiles", "submission_port"):
        assert getattr(back, name) == getattr(settings, name), name
    with pytest.raises(ValueError):
        Settings.from_deployed(json.dumps({"x": {"dataclass": "os:system", "fields": {}}}))


def test_on_the_host_the_login_checks_skip_and_say_why():
    target = checks.Target(parse(), debian("13"), "192.0.2.1", lambda command: (True, ""), on_host=True)
    assert checks.login_account(target) == (None, "logs in from the laptop only (the host keeps no password)")
    target = checks.Target(parse(), debian("13"), "192.0.2.1", lambda command: (True, ""))
    assert checks.login_account(target)[0].name == "alice"


# --- what a run tells, and when


def results(**statuses) -> list[checks.Result]:
    return [checks.Result(name, status, f"{name} is {status}") for name, status in statuses.items()]


def test_a_change_is_told_once_then_resolved_with_a_reminder_a_day_later():
    state, alerts, events = health.changes({}, results(services_up="ok", queue="skipped"), 1000)
    assert alerts == [] and events == []
    state, alerts, events = health.changes(state, results(services_up="error", queue="skipped"), 2000)
    assert [(a["name"], a["status"], a["kind"]) for a in alerts] == [("services_up", "error", "new")]
    assert [(e["name"], e["from"], e["to"]) for e in events] == [("services_up", "ok", "error")]
    state["services_up"].update(told="error", told_at=2000)  # sent
    state, alerts, events = health.changes(state, results(services_up="error", queue="skipped"), 3000)
    assert alerts == [] and events == [], "never once per run"
    state, alerts, _ = health.changes(state, results(services_up="error", queue="skipped"), 2000 + health.REMIND)
    assert [(a["name"], a["kind"]) for a in alerts] == [("services_up", "still")]
    state["services_up"].update(told_at=2000 + health.REMIND)
    state, alerts, events = health.changes(state, results(services_up="ok", queue="skipped"), 99999)
    assert [(a["name"], a["status"], a["kind"]) for a in alerts] == [("services_up", "ok", "resolved")]
    assert state["services_up"]["since"] == 99999


def test_an_alert_that_could_not_be_sent_is_due_again_and_a_warning_that_worsens_is_told():
    state, alerts, _ = health.changes({}, results(disk_space="warning"), 10)
    assert [a["kind"] for a in alerts] == ["new"]
    state, alerts, _ = health.changes(state, results(disk_space="warning"), 20)  # (the send failed: not told)
    assert [a["kind"] for a in alerts] == ["new"]
    state["disk_space"].update(told="warning", told_at=20)
    state, alerts, _ = health.changes(state, results(disk_space="error"), 30)
    assert [(a["status"], a["kind"]) for a in alerts] == [("error", "new")]


def test_the_message_names_the_host_the_check_and_its_reason():
    title, body, kind = health.message("mail.example.org", [
        {"name": "services_up", "status": "error", "reason": "down: stunnel", "kind": "new"}])
    assert (title, body, kind) == ("qmailhost mail.example.org: services_up error", "services_up: error: down: stunnel",
                                   "failure")
    title, body, kind = health.message("mail.example.org", [
        {"name": "services_up", "status": "ok", "reason": "8 up", "kind": "resolved"},
        {"name": "disk_space", "status": "warning", "reason": "/ 12% free", "kind": "still"}])
    assert title == "qmailhost mail.example.org: 2 checks changed" and kind == "warning"
    assert body == "services_up: resolved (8 up)\ndisk_space: warning still: / 12% free"


# --- disk_space


DEBIAN_DF = """Filesystem     1024-blocks    Used Available Capacity Mounted on
overlay           10000000 5000000   5000000      50% /
tmpfs                 2048    2000        48      98% /home/alice
---
Filesystem      Inodes  IUsed   IFree IUse% Mounted on
overlay         600000  30000  570000    5% /
tmpfs           100000     20   99980    1% /home/alice
"""
NETBSD_DF = """Filesystem  1024-blocks     Used    Avail Capacity  Mounted on
/dev/wd0a     20000000  9000000 11000000      45%  /
---
Filesystem  1K-blocks     Used    Avail %Cap  iUsed    iAvail %iCap Mounted on
/dev/wd0a    20000000  9000000 11000000  45%  990000    10000   99% /
"""


def test_disk_space_reads_blocks_and_inodes_on_debian_and_netbsd():
    asked = []

    def shell(output):
        def run(command):
            asked.append(command)
            return True, output
        return run

    target = checks.Target(parse(), debian("13"), "192.0.2.1", shell(DEBIAN_DF))
    status, reason = health.check_disk_space(target)
    assert status == "error" and "/home/alice has 2.3% of its space free" in reason, reason
    assert asked[-1] == "df -P -k /var/qmail/queue ~alice; echo ---; df -P -i /var/qmail/queue ~alice"
    target = checks.Target(parse(), netbsd("10"), "192.0.2.1", shell(NETBSD_DF))
    status, reason = health.check_disk_space(target)
    assert status == "error" and "/ has 1.0% of its inodes free" in reason, reason
    assert asked[-1].endswith("df -i /var/qmail/queue ~alice")
    target = checks.Target(parse(), debian("13"), "192.0.2.1", shell(DEBIAN_DF.replace("2000        48", "1740 308")))
    assert health.check_disk_space(target)[0] == "ok"
    target = checks.Target(parse(), debian("13"), "192.0.2.1", shell(DEBIAN_DF.replace("2000        48", "1800 248")))
    assert health.check_disk_space(target) == ("warning", "/home/alice has 12.1% of its space free (under 15%)")


# --- the runtime's tar


def _wheel(path, files: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)


def test_the_runtime_tar_is_the_same_bytes_from_the_same_inputs(tmp_path):
    first, second = tmp_path / "a-1.0-py3-none-any.whl", tmp_path / "b-2.0-cp313-cp313-manylinux_2_28_x86_64.whl"
    _wheel(first, {"a/__init__.py": b"A = 1\n", "a-1.0.dist-info/METADATA": b"Name: a\n"})
    _wheel(second, {"b/_b.so": b"\x7fELF", "b-2.0.data/headers/b.h": b"/* not needed */"})
    code = runtime.code_files()
    made = runtime._tar(code, [first, second])
    assert made == runtime._tar(code, [first, second])
    with tarfile.open(fileobj=io.BytesIO(made)) as archive:
        names = archive.getnames()
        assert all(m.mtime == 0 and m.uid == 0 and m.mode == 0o644 for m in archive.getmembers())
    assert {"site/a/__init__.py", "site/b/_b.so", "app/tasks/health.py", "app/files/health/run.sh.j2",
            "app/qmailhost/checks.py"} <= set(names)
    assert not [n for n in names if ".data/" in n or "__pycache__" in n or n.startswith("app/tests/")]
    assert names == sorted(names)
