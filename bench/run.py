"""Benchmarks against throwaway hosts: how fast the deploy converges, previews, rebuilds
and switches. Medians and spreads over several runs, written to bench/results.json and
printed as the README's table. Never part of the test suite's assertions.

    python -m bench.run [--runs 5] [--bare-runs 3] [--suite trixie] [--readme]

Needs what the end-to-end tests need (root, the distfile cache).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import smtplib
import statistics
import threading
import time
from pathlib import Path

import pyinfra as pyinfra_package

from harness import sandbox
from harness.mail import message, submit_when_up, tls_context, wait_for_delivery
from harness.pyinfra_cli import PROJECT, pyinfra

RESULTS = PROJECT / "bench" / "results.json"
QUIET = {"verify_after_deploy": False}  # the status checks are measured on their own rows
CHECKED = {}  # as a user runs it: the status checks at the end, without a verify_account
LOGGING_IN = {"verify_account": {"name": sandbox.SANDBOX_USER}}  # ... and the AUTH checks too
USER, DOMAIN = sandbox.SANDBOX_USER, sandbox.SANDBOX_DOMAIN


def timed(action) -> float:
    start = time.monotonic()
    action()
    return time.monotonic() - start


def summary(samples: list[float]) -> dict:
    return {"median": round(statistics.median(samples), 2), "min": round(min(samples), 2),
            "max": round(max(samples), 2), "runs": len(samples)}


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory = int(Path("/proc/meminfo").read_text().split()[1]) // (1024 * 1024)
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": memory, "kernel": platform.release(),
            "python": platform.python_version(), "pyinfra": pyinfra_package.__version__,
            "date": time.strftime("%Y-%m-%d")}


def mail_flows(host: sandbox.Host, timeout: float = 60) -> None:
    msg = message(f"{USER}@{DOMAIN}", f"{USER}@{DOMAIN}")
    submit_when_up(host, USER, sandbox.sandbox_password(), msg, timeout=timeout)
    wait_for_delivery(host, USER, msg["Subject"], timeout=timeout)


def bare_to_mail(suite: str) -> tuple[float, float, dict[str, float]]:
    """(bare host to mail flowing, package installs alone, bare build times) on fresh hosts."""
    host = sandbox.create(f"bench{os.getpid()}-bare", suite=suite)
    try:
        flowing = timed(lambda: (pyinfra(host, data=QUIET), mail_flows(host)))
        script = (PROJECT / "bench" / "build_times.sh").read_text()
        host.ssh("cat > /tmp/build_times.sh", input=script)
        builds = {line.split()[0]: float(line.split()[1])
                  for line in host.ssh("sh /tmp/build_times.sh", timeout=900).stdout.splitlines()}
    finally:
        sandbox.destroy(host.name)
    host = sandbox.create(f"bench{os.getpid()}-packages", suite=suite)
    try:
        packages = timed(lambda: pyinfra(host, deploy="tests/deploys/packages.py"))
    finally:
        sandbox.destroy(host.name)
    return flowing, packages, builds


class Prober(threading.Thread):
    """Reaches ofmipd through stunnel (STARTTLS, then EHLO answered by ofmipd) in a
    loop, and remembers the longest time in which that failed."""

    def __init__(self, host: sandbox.Host):
        super().__init__(daemon=True)
        self.host, self.stop, self.longest, self.failures = host, threading.Event(), 0.0, 0

    def run(self):
        failing_since = None
        while not self.stop.is_set():
            now = time.monotonic()
            try:
                with smtplib.SMTP(self.host.address, 587, timeout=5) as client:
                    client.ehlo("bench.test")
                    client.starttls(context=tls_context())
                    code, _ = client.ehlo("bench.test")
                    if code != 250:
                        raise smtplib.SMTPException(code)
                if failing_since is not None:
                    self.longest = max(self.longest, now - failing_since)
                    failing_since = None
            except (OSError, smtplib.SMTPException):
                self.failures += 1
                failing_since = failing_since or now
            time.sleep(0.01)


def remote_commands(host: sandbox.Host) -> int:
    run = pyinfra(host, "-vv", data=QUIET, json_output=False)
    return len(re.findall(r"\] >>> ", run.output))


def measure(runs: int, bare_runs: int, suite: str) -> dict:
    results: dict = {"machine": machine(), "suite": suite}
    bare = [bare_to_mail(suite) for _ in range(bare_runs)]
    build_sum = [sum(b[2].values()) for b in bare]
    results["bare_to_mail"] = summary([b[0] for b in bare])
    results["package_installs"] = summary([b[1] for b in bare])
    results["bare_builds"] = summary(build_sum)
    results["bare_builds_by_component"] = {k: round(v, 1) for k, v in bare[-1][2].items()}
    results["bare_ratio"] = round(results["bare_to_mail"]["median"]
                                  / (results["bare_builds"]["median"] + results["package_installs"]["median"]), 2)

    host = sandbox.create(f"bench{os.getpid()}-converged", suite=suite)
    try:
        pyinfra(host, data=QUIET)
        mail_flows(host)
        results["converged"] = summary([timed(lambda: pyinfra(host, data=QUIET)) for _ in range(runs)])
        results["floor"] = summary([timed(lambda: pyinfra(host, deploy="bench/floor.py")) for _ in range(runs)])
        results["converged_checked"] = summary([timed(lambda: pyinfra(host, data=CHECKED)) for _ in range(runs)])
        results["converged_logging_in"] = summary(
            [timed(lambda: pyinfra(host, data=LOGGING_IN)) for _ in range(runs)])
        floor = results["floor"]["median"]
        for key in ("converged", "converged_checked", "converged_logging_in"):
            results[f"{key}_ratio"] = round(results[key]["median"] / floor, 2)
        results["dry"] = summary([timed(lambda: pyinfra(host, "--dry", data=QUIET)) for _ in range(runs)])
        changed = {**QUIET, "domains": [DOMAIN, "bench.test"]}
        results["dry_diff_domain_change"] = summary(
            [timed(lambda: pyinfra(host, "--dry", "--diff", data=changed)) for _ in range(runs)])
        results["remote_commands_converged"] = remote_commands(host)
        switches, outages = [], []
        for _ in range(max(1, runs // 2)):
            prober = Prober(host)
            prober.start()
            time.sleep(1)
            switches.append(timed(lambda: (pyinfra(host, data={**QUIET, "submission": "spamdyke"}),
                                           pyinfra(host, data=QUIET))))
            time.sleep(2)
            prober.stop.set()
            prober.join()
            outages.append(prober.longest)
        results["mode_switch_round_trip"] = summary(switches)
        results["longest_submission_outage"] = summary(outages)
    finally:
        sandbox.destroy(host.name)
    return results


def table(results: dict) -> str:
    m = results["machine"]
    rows = [
        ("converged re-run of the full deploy, status checks included (as `./run deploy`)",
         results["converged_checked"], f"{results['converged_checked_ratio']}x the floor"),
        ("the same with `verify_account` (the AUTH checks log in)", results["converged_logging_in"],
         f"{results['converged_logging_in_ratio']}x the floor"),
        ("converged re-run without the checks (`verify_after_deploy=false`)", results["converged"],
         f"{results['converged_ratio']}x the floor"),
        ("floor: one trivial operation, same host", results["floor"], ""),
        ("`--dry` on a converged host", results["dry"], ""),
        ("`--dry --diff` after one domain change", results["dry_diff_domain_change"], ""),
        ("bare host to mail flowing (installs and builds included)", results["bare_to_mail"],
         f"{results['bare_ratio']}x builds + installs"),
        ("package installs alone (fresh host)", results["package_installs"], ""),
        ("bare builds of the components, summed", results["bare_builds"], ""),
        ("mode switch ofmipd → spamdyke → ofmipd", results["mode_switch_round_trip"], ""),
        ("longest window submission was refused during it", results["longest_submission_outage"], ""),
    ]
    lines = [f"Measured {m['date']} on {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, Linux "
             f"{m['kernel']}, pyinfra {m['pyinfra']}, Debian {results['suite']} hosts; medians (min–max) "
             f"over the runs shown. A converged re-run executes {results['remote_commands_converged']} remote "
             "commands.", "", "| measurement | median s | spread s | runs | note |", "|---|---|---|---|---|"]
    for name, s, note in rows:
        lines.append(f"| {name} | {s['median']} | {s['min']}–{s['max']} | {s['runs']} | {note} |")
    return "\n".join(lines)


def publish(results: dict, path: Path, text: str, readme: bool, marker: str) -> None:
    """RESULTS written to PATH (JSON), TEXT (its table) printed and, when README, put between
    the README's MARKER lines."""
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(text)
    if readme:
        update_readme(text, marker)


def update_readme(text: str, marker: str = "bench") -> None:
    """TEXT between the README's <!-- MARKER:start --> and <!-- MARKER:end --> lines."""
    readme = PROJECT / "README.md"
    content = readme.read_text()
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    if start in content:
        before, rest = content.split(start, 1)
        content = before + start + "\n" + text + "\n" + end + rest.split(end, 1)[1]
        readme.write_text(content)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--bare-runs", type=int, default=3)
    parser.add_argument("--suite", default=sandbox.DEFAULT_SUITE, choices=sorted(sandbox.SUITES))
    parser.add_argument("--readme", action="store_true", help="write the table into README.md")
    options = parser.parse_args()
    results = measure(options.runs, options.bare_runs, options.suite)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    text = table(results)
    print(text)
    if options.readme:
        update_readme(text)


if __name__ == "__main__":
    main()
