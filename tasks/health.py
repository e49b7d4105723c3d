"""Health between deploys: the host runs the status checks itself, every ``health_every``, and
tells its owner through a channel that does not depend on its own mail.

- The checks are the laptop's own (qmailhost/checks.py and every component's), run by the
  host's Python from the code the deploy installed (qmailhost/runtime.py), with the settings
  the deploy wrote (Settings.as_deployed: no secret), a local shell and the host's own
  address (the one the laptop reaches). A check that needs the laptop (a password, the
  inventory, the Internet beyond the host) says skipped there.
- Schedule: Debian, a supervised loop (daemontools) that runs the checks when due and sleeps
  a minute; NetBSD, root's crontab every few minutes. Each run's results go to
  /var/lib/qmailhost/health/last.json; state.json remembers each check's status, since
  when, and what was last told; events.log the changes.
- Alerts: ``alert_urls``, Apprise URLs (ntfy, Gotify, Matrix, Telegram, webhooks, ...), a
  secret like a password (they hold tokens): read on the laptop from a file (mode 600) or an
  environment variable, checked by Apprise's own parser, uploaded root's alone, never shown;
  the host's apprise reads them from that file, never from a command line. An alert goes out
  when a check's state changes (ok or skipped to warning or error, between those, and back:
  "resolved"), and once a day while one stays broken; never once per run. One that could
  not be sent is sent at the next run.
- Heartbeat: ``heartbeat_url`` (a secret too) gets an HTTP POST after every run, with the
  run's worst status, so an outside service (healthchecks.io, Uptime Kuma) notices a dead
  host or a dead scheduler by the silence. ``{status}`` in it becomes ok, warning or error.
- The laptop sees it: verify.py prints the last scheduled run and the recent changes beside
  its own table, and the check ``health_runs`` says when the scheduled runs stopped.
- The check ``disk_space``: the filesystems holding the queue and the accounts' Maildirs,
  blocks and inodes: a warning below 15 % free, an error below 5 %.
"""

from __future__ import annotations

import json
import logging
import os
import re
import resource
import stat
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.facts.server import Arch

from qmailhost import checks, ops, runtime
from qmailhost.backends import services
from qmailhost.checks import ERROR, OK, SKIPPED, WARNING, connector_arguments, one_line
from qmailhost.component import Component, Needs, Setting
from qmailhost.facts import STATE_DIR, host_state
from qmailhost.files import render
from qmailhost.platform import Platform, by_name
from qmailhost.settings import Settings, SettingsError, duration

SERVICE = "qmailhost-health"
CRON_NAME = "qmailhost scheduled health"
POLL = 60  # seconds between the loop's looks (a run happens when health_every has passed)
CRON_MINUTES = 5  # NetBSD: cron looks this often
HEALTH_DIR = f"{STATE_DIR}/health"  # the runs' results, state and events
REMIND = 86400  # a check that stays broken is told again after this long
EVENTS_KEPT = 200
WARN_FREE, ERROR_FREE = 15, 5  # disk_space: percent free
# The operation every change of a setting the checks read makes (a dry run says so too).
SETTINGS_COPY = "Write what the scheduled checks read (the settings, no secret)"
# Settings only the laptop's runs read (where it keeps things, what a deploy or restore does
# next): left out of what the host's runs read, so changing one changes nothing on the host.
LAPTOP_ONLY = ("verify_after_deploy", "restore_from", "backup_dir", "backup_prune", "backup_prune_repository",
               "backup_password_file", "distfiles", "distfiles_explicit", "sources", "check_upstream_releases")


@dataclass(frozen=True)
class Paths:
    apprise: str
    packages: tuple[str, ...]
    inodes: tuple[str, int, int]  # df's inode report: (command, column of used, column of free)


PATHS = {
    "debian": Paths("/usr/bin/apprise", ("apprise",), ("df -P -i", 2, 3)),
    # pkgsrc comms/py-apprise for its default Python: bin/apprise-3.13, as py-certbot's certbot-3.13
    "netbsd": Paths("/usr/pkg/bin/apprise-3.13", ("py313-apprise",), ("df -i", 5, 6)),
}


def files(platform: Platform) -> dict[str, str]:
    """The health files on the host: the config dir (root's alone) and what is in it."""
    mine = f"{platform.config_dir}/health"
    return {"dir": mine, "config": f"{mine}/health.json", "alerts": f"{mine}/alerts",
            "heartbeat": f"{mine}/heartbeat", "run": f"{mine}/run"}


# --- settings ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SecretUrls:
    """URLs that hold tokens, and where the laptop read them (shown; the URLs never are)."""

    source: str
    urls: tuple[str, ...] = field(repr=False)


def _every(value, values: dict) -> int | None:
    return None if value is None else duration("health_every", 60, 86400)(value, values)


def _secret_urls(setting: str, value, example: str) -> SecretUrls | None:
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in ("file", "env"):
        raise SettingsError(setting, "URLs hold tokens, so they never go into the inventory",
                            f"set {setting} to {{\"file\": \"~/.config/qmailhost/{example}\"}} (mode 600, one URL "
                            "a line) or {\"env\": \"VARIABLE\"}")
    (kind, where), = value.items()
    if kind == "env":
        if not isinstance(where, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", where):
            raise SettingsError(setting, f"{where!r} is not an environment variable's name", "name one")
        text = os.environ.get(where, "")
        if not text.strip():
            raise SettingsError(setting, f"environment variable {where} is not set or empty",
                                f"export {where}=... before running pyinfra (its value is never shown)")
        return SecretUrls(f"env:{where}", tuple(text.split()))
    path = Path(os.path.expanduser(str(where)))
    try:
        found = path.stat()
        text = path.read_text() if stat.S_ISREG(found.st_mode) else None
    except (OSError, UnicodeDecodeError) as error:
        raise SettingsError(setting, f"{path} cannot be read ({getattr(error, 'strerror', error)})",
                            "create it (mode 600) with one URL a line") from None
    if text is None:
        raise SettingsError(setting, f"{path} is not a file", "name a file with one URL a line")
    if found.st_mode & 0o077:
        raise SettingsError(setting, f"{path} is readable by others (mode {stat.S_IMODE(found.st_mode):o})",
                            f"chmod 600 {path}")
    urls = tuple(line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))
    if not urls:
        raise SettingsError(setting, f"{path} holds no URL", "write one URL a line")
    return SecretUrls(f"file:{path}", urls)


def _alert_urls(value, values: dict) -> SecretUrls | None:
    found = _secret_urls("alert_urls", value, "alerts")
    if found is None:
        return None
    import apprise  # (the laptop's: its parser knows every service it can notify)

    quiet = logging.getLogger("apprise")  # (it would log a refused URL whole)
    was, quiet.disabled = quiet.disabled, True
    try:
        refused = [n for n, url in enumerate(found.urls, 1)
                   if apprise.Apprise.instantiate(url, suppress_exceptions=True) is None]
    finally:
        quiet.disabled = was
    if refused:
        raise SettingsError("alert_urls", f"URL {refused[0]} of {found.source} is not one Apprise can send to (it is "
                            "never shown: it holds a token)", "fix it as https://github.com/caronc/apprise/wiki lists")
    return found


def _heartbeat_url(value, values: dict) -> SecretUrls | None:
    found = _secret_urls("heartbeat_url", value, "heartbeat")
    if found is None:
        return None
    parsed = urllib.parse.urlsplit(found.urls[0]) if len(found.urls) == 1 else None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise SettingsError("heartbeat_url", f"{found.source} must hold exactly one http:// or https:// URL",
                            "write the URL your monitoring service gave you (healthchecks.io, Uptime Kuma push)")
    return found


def _validate(settings: Settings) -> None:
    if settings.health_every is None:
        for name in ("alert_urls", "heartbeat_url"):
            if getattr(settings, name) is not None:
                raise SettingsError(name, "is set but health_every is null (no scheduled runs to report)",
                                    "set health_every (e.g. \"1h\"), or unset " + name)


# --- the deploy --------------------------------------------------------------------------------


def runner_script(platform: Platform, settings: Settings) -> str:
    paths = runtime.layout(platform)
    return render("health/run.sh.j2", health_dir=HEALTH_DIR, every=settings.health_every,
                  python=platform.python, python_path=paths.python_path(), config=files(platform)["config"])


def config_document(platform: Platform, settings: Settings, address: str) -> str:
    """What a scheduled run reads: the platform, the address, the settings (no secret)."""
    return json.dumps({"platform": [platform.name, platform.release], "address": address,
                       "settings": json.loads(settings.as_deployed(LAPTOP_ONLY))}, indent=1, sort_keys=True) + "\n"


def alerts_config(settings: Settings) -> bytes:
    """Apprise's TEXT config: one URL a line."""
    return "".join(f"{url}\n" for url in settings.alert_urls.urls).encode()


@deploy("health")
def configure(platform: Platform, settings: Settings) -> None:
    """The code and its Python, the settings, the secrets and the schedule (or all retired)."""
    mine, paths = files(platform), runtime.layout(platform)
    if settings.health_every is None:
        _schedule(platform, settings, on=False)
        for name in ("alerts", "heartbeat", "config", "run"):
            ops.absent_file(name=f"Remove the health {name} file (health_every is null)", path=mine[name])
        return
    ops.directory(name="Create the directory of qmailhost's own code", path=paths.root, user="root",
                  group=platform.root_group, mode="755")
    machine = host.get_fact(Arch) if runtime.RUNTIMES[platform.name].binary_wheels else "any"
    bundle = runtime.bundle(platform, machine)
    ops.put_file(name="Upload qmailhost's own code and Python packages (the host's scheduled runs)",
                 src=str(bundle), dest=paths.tar)
    digest = ops.stamp_digest(bundle.name)
    ops.decided(name="Unpack qmailhost's own code and Python packages",
                needed=host_state()["stamps"].get("health-runtime") != digest, why_not="unpacked already",
                command=f"{runtime.unpack_command(paths)} && {ops.record_stamp('health-runtime', digest)}")
    ops.directory(name="Create the health directory (root's alone)", path=mine["dir"], user="root",
                  group=platform.root_group, mode="700")
    address = host.data.get("ssh_hostname") or host.name
    ops.whole_file(name=SETTINGS_COPY, dest=mine["config"],
                   content=config_document(platform, settings, address), mode="600")
    for name, what, setting, data in (
            ("alerts", "alert URLs", "alert_urls", alerts_config),
            ("heartbeat", "heartbeat URL", "heartbeat_url", lambda s: s.heartbeat_url.urls[0].encode())):
        if getattr(settings, setting) is None:
            ops.absent_file(name=f"Remove the {what} ({setting} is unset)", path=mine[name])
        else:
            ops.secret_file(name=f"Install the {what} (a secret)", dest=mine[name], data=data(settings),
                            group=platform.root_group)
    ops.whole_file(name="Write the scheduled checks' runner", dest=mine["run"], mode="700",
                   content=runner_script(platform, settings))
    _schedule(platform, settings, on=True)


def _schedule(platform: Platform, settings: Settings, on: bool) -> None:
    services.repeat(platform, services.Repeat(
        "health", SERVICE, "runs the status checks when due", "run the status checks when due",
        f"{files(platform)['run']} --if-due", POLL, CRON_NAME, cron_minute=f"*/{CRON_MINUTES}"),
        on, operation=f"Run the status checks when due (cron, every {CRON_MINUTES} min)" if on
        else "Stop the scheduled status checks (cron)", off_because="health_every is null")


# --- verify.py: the last scheduled run, beside the laptop's own table ------------------------------


def show_last_run(state, host) -> None:
    """(after verify.py's table) The host's last scheduled run, and the changes of the last week."""
    ok, output = host.run_shell_command(
        f"cat {HEALTH_DIR}/last.json 2>/dev/null; echo; echo ---; tail -n 20 {HEALTH_DIR}/events.log 2>/dev/null; true",
        print_output=False, **connector_arguments(state, host))
    lines = output.stdout.splitlines() if ok else []
    # (the marker may end the output: pyinfra drops a last newline, and a host whose runs have
    # seen no change yet has no events.log)
    split = lines.index("---") if "---" in lines else len(lines)
    last_text, events_text = "\n".join(lines[:split]), "\n".join(lines[split + 1:])
    try:
        last = json.loads(last_text)
    except ValueError:
        logger.info("--> The host's scheduled checks: none has run yet")
        return
    results = [checks.Result(r["name"], r["status"], r["reason"]) for r in last["results"]]
    when = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(last["time"]))
    title, *lines = checks.summary_table(f"The host's scheduled checks (last run {when}, "
                                         f"{checks.age(int(time.time() - last['time']))} ago)", results)
    logger.info(title)
    for line in lines:  # (marked, so that no reader takes these rows for the laptop's own)
        logger.info(f"    on host | {line}")
    week = time.time() - 7 * 86400
    events = [json.loads(line) for line in events_text.splitlines() if line.startswith("{")]
    for event in [e for e in events if e["time"] >= week][-10:]:
        logger.info(f"    {time.strftime('%m-%d %H:%M', time.gmtime(event['time']))}  {event['name']}: "
                    f"{event['from']} -> {event['to']}  {event['reason']}")


# --- status checks -------------------------------------------------------------------------------


def check_health_runs(target):
    """The host's scheduled checks ran within twice health_every (else the scheduler stopped)."""
    every = target.settings.health_every
    if every is None:
        return SKIPPED, "health_every is null: no scheduled checks"
    if target.on_host:
        return SKIPPED, "this is the scheduled run"
    runner = files(target.platform)["run"]
    output = target.run(f"date +%s; find {runner} {target.platform.shell.find_mtimes} 2>/dev/null; "
                        f"echo; cat {HEALTH_DIR}/last.json 2>/dev/null; true").strip()
    clock, _, output = output.partition("\n")
    installed, _, output = output.partition("\n")
    output = output.strip()
    if not output:
        young = clock.isdigit() and installed.split(".")[0].isdigit() and \
            int(clock) - int(installed.split(".")[0]) < 2 * every + POLL
        if young:  # (a deploy just set the runner up or changed it)
            return SKIPPED, "no scheduled run yet: the first follows within a minute of the deploy"
        return ERROR, "no scheduled run since the runner was installed: the scheduler is not running"
    try:
        last = json.loads(output)
        since = time.time() - float(last["time"])
    except (ValueError, KeyError, TypeError):
        return ERROR, f"{HEALTH_DIR}/last.json is not a run's record"
    worst = last.get("worst", OK)
    if since > 2 * every + POLL:
        return ERROR, f"the last scheduled run was {checks.age(int(since))} ago (every {checks.age(every)}): " \
                      "the scheduler has stopped"
    return OK, f"last run {checks.age(int(since))} ago, worst {worst}"


def check_disk_space(target):
    """Free blocks and inodes where the queue and the accounts' Maildirs live."""
    platform = target.platform
    words = [f"{platform.qmail_home}/queue", *(f"~{a.name}" for a in target.settings.accounts)]
    command, used_column, free_column = PATHS[platform.name].inodes
    output = target.run(f"df -P -k {' '.join(words)}; echo ---; {command} {' '.join(words)}")
    blocks, _, inodes = output.partition("---")
    found = {}  # mount point -> [(what, percent free)]
    for text, used_at, free_at, what in ((blocks, 2, 3, "space"), (inodes, used_column, free_column, "inodes")):
        for fields in (line.split() for line in text.strip().splitlines()[1:]):
            if len(fields) <= free_at or not fields[used_at].isdigit() or not fields[free_at].isdigit():
                continue
            used, free = int(fields[used_at]), int(fields[free_at])
            if used + free:
                found.setdefault(fields[-1], {})[what] = 100 * free / (used + free)
    if not found:
        return ERROR, "df printed nothing for the queue and the Maildirs"
    worst = min((percent, mount, what) for mount, seen in found.items() for what, percent in seen.items())
    summary = ", ".join(f"{mount} {seen.get('space', 100):.0f}% free" for mount, seen in sorted(found.items()))
    percent, mount, what = worst
    if percent < ERROR_FREE:
        return ERROR, f"{mount} has {percent:.1f}% of its {what} free (under {ERROR_FREE}%): mail will be refused soon"
    if percent < WARN_FREE:
        return WARNING, f"{mount} has {percent:.1f}% of its {what} free (under {WARN_FREE}%)"
    return OK, summary


COMPONENT = Component(
    name="health",
    settings=(
        Setting("health_every", "1h", _every,
                "how often the host runs its own status checks: a duration from `1m` to `1d`; null: never"),
        Setting("alert_urls", None, _alert_urls,
                "where alerts go: Apprise URLs (ntfy, Gotify, Matrix, webhooks, ...), secret: "
                "`{\"file\": PATH}` (mode 600, a URL a line) or `{\"env\": NAME}`"),
        Setting("heartbeat_url", None, _heartbeat_url,
                "pinged (HTTP POST) after every scheduled run, `{status}` in it its worst status; secret, "
                "as `alert_urls`"),
    ),
    validate=_validate,
    needs=lambda platform, settings: Needs(packages=PATHS[platform.name].packages + (
        runtime.RUNTIMES[platform.name].packages if settings.health_every is not None else ())),
    checks=(check_health_runs, check_disk_space),
)


# --- the scheduled run (on the host) ------------------------------------------------------------------


def _local_shell(command: str) -> tuple[bool, str]:
    result = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, timeout=300)
    return result.returncode == 0, result.stdout if result.returncode == 0 else result.stdout + result.stderr


def _problem(status: str) -> str:
    """What an alert is about: a warning or an error; ok and skipped are no problem."""
    return status if status in (WARNING, ERROR) else OK


def changes(state: dict, results: list[checks.Result], now: float) -> tuple[dict, list[dict], list[dict]]:
    """The new state, the alerts due (changes not yet told, reminders), and the events (changes)."""
    new, alerts, events = {}, [], []
    for result in results:
        before = state.get(result.name, {"problem": OK, "told": OK, "told_at": 0, "since": now})
        problem = _problem(result.status)
        entry = {"status": result.status, "problem": problem, "reason": result.reason,
                 "since": before["since"] if before["problem"] == problem else now,
                 "told": before.get("told", OK), "told_at": before.get("told_at", 0)}
        if before["problem"] != problem:
            events.append({"time": now, "name": result.name, "from": before["problem"], "to": problem,
                           "reason": result.reason})
        if entry["told"] != problem:
            alerts.append({"name": result.name, "status": problem, "reason": result.reason,
                           "kind": "resolved" if problem == OK else "new"})
        elif problem != OK and now - entry["told_at"] >= REMIND:
            alerts.append({"name": result.name, "status": problem, "reason": result.reason, "kind": "still"})
        new[result.name] = entry
    return new, alerts, events


def message(hostname: str, alerts: list[dict]) -> tuple[str, str, str]:
    """(title, body, Apprise's type) of one notification telling ALERTS."""
    lines = [f"{a['name']}: resolved ({a['reason']})" if a["kind"] == "resolved"
             else f"{a['name']}: {a['status']}{' still' if a['kind'] == 'still' else ''}: {a['reason']}"
             for a in alerts]
    if len(alerts) == 1:
        a = alerts[0]
        title = f"qmailhost {hostname}: {a['name']} " + ("resolved" if a["kind"] == "resolved" else a["status"])
    else:
        title = f"qmailhost {hostname}: {len(alerts)} checks changed"
    statuses = {a["status"] for a in alerts}
    kind = "failure" if ERROR in statuses else "warning" if WARNING in statuses else "success"
    return title, "\n".join(lines), kind


def _send_alerts(platform: Platform, hostname: str, alerts: list[dict]) -> str:
    config = files(platform)["alerts"]
    if not alerts:
        return "none due"
    if not os.path.exists(config):
        return "none sent: no alert_urls"
    title, body, kind = message(hostname, alerts)
    result = subprocess.run([PATHS[platform.name].apprise, "-c", config, "-n", kind, "-t", title, "-b", body],
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        return "failed: " + one_line(result.stderr or result.stdout or f"apprise exited {result.returncode}")
    return "sent"


def _heartbeat(platform: Platform, hostname: str, worst: str, counts: dict) -> str:
    path = files(platform)["heartbeat"]
    if not os.path.exists(path):
        return "none: no heartbeat_url"
    url = Path(path).read_text().strip().replace("{status}", worst)
    body = json.dumps({"host": hostname, "status": worst, "checks": counts}).encode()
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "qmailhost"})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return f"sent ({response.status})"
    except OSError as error:  # (urllib's errors are OSErrors; the URL is never shown)
        return f"failed: {type(error).__name__}"


def _write(path: str, text: str) -> None:
    partial = f"{path}.new"
    with open(partial, "w") as handle:
        handle.write(text)
    os.replace(partial, path)


def run(config_path: str) -> int:
    """One scheduled run: every check, the state, the alerts due, the heartbeat."""
    started = time.time()
    config = json.loads(Path(config_path).read_text())
    platform = by_name(*config["platform"])
    settings = Settings.from_deployed(json.dumps(config["settings"]))
    target = checks.Target(settings, platform, config["address"], _local_shell, on_host=True)
    results = checks.run_checks(target)
    os.makedirs(HEALTH_DIR, mode=0o700, exist_ok=True)
    state_path = f"{HEALTH_DIR}/state.json"
    try:
        state = json.loads(Path(state_path).read_text())
    except (OSError, ValueError):
        state = {}
    now = time.time()
    state, alerts, events = changes(state, results, now)
    told = _send_alerts(platform, settings.hostname, alerts)
    if told == "sent":
        for alert in alerts:
            state[alert["name"]].update(told=alert["status"], told_at=now)
    counts = {s: sum(r.status == s for r in results) for s in (OK, WARNING, ERROR, SKIPPED)}
    worst = ERROR if counts[ERROR] else WARNING if counts[WARNING] else OK
    beat = _heartbeat(platform, settings.hostname, worst, counts)
    _write(state_path, json.dumps(state, indent=1, sort_keys=True))
    if events:
        with open(f"{HEALTH_DIR}/events.log", "a") as log:
            log.writelines(json.dumps(event) + "\n" for event in events)
        kept = Path(f"{HEALTH_DIR}/events.log").read_text().splitlines()[-EVENTS_KEPT:]
        _write(f"{HEALTH_DIR}/events.log", "".join(line + "\n" for line in kept))
    record = {"time": started, "seconds": round(time.time() - started, 2), "worst": worst, "counts": counts,
              "results": [{"name": r.name, "status": r.status, "reason": r.reason} for r in results],
              "alerts": told, "alerted": [a["name"] for a in alerts], "heartbeat": beat,
              "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
    _write(f"{HEALTH_DIR}/last.json", json.dumps(record, sort_keys=True))
    print(f"qmailhost health: {worst} ({', '.join(f'{n} {s}' for s, n in counts.items())}); alerts {told}; "
          f"heartbeat {beat}")
    return 0


if __name__ == "__main__":  # the host's scheduled run: python -m tasks.health CONFIG
    sys.exit(run(sys.argv[1]))
