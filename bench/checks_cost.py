"""What each status check costs on a converged host, before and after a change, in one run.

One throwaway host is deployed (from the deployed image) and left converged. Each check
then runs alone, RUNS times, against it, with a fresh view of the host each time (nothing
cached between runs), first with the tree at BEFORE (a git worktree, run in a child
process), then with this tree; and `verify.py` (every check, side by side, as the owner
runs it) with each tree. Medians in seconds, written to bench/results-checks.json and, with
--readme, as the README's checks table. Never an assertion of the test suite.

    python -m bench.checks_cost [--before REV] [--runs 5] [--readme]
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.run import machine, publish
from harness import sandbox
from harness.pyinfra_cli import PROJECT, pyinfra

RESULTS = PROJECT / "bench" / "results-checks.json"
BEFORE = "3123318"  # main before issue 26's cheaper checks
SHOWN = ("services_up", "tls_policy", "one_certificate", "certificate_name", "certificate_expiry")


def checks_alone(host_name: str, runs: int) -> dict[str, float]:
    """(in the tree this process imports) check name -> median seconds, each check alone."""
    from qmailhost import checks
    from qmailhost.platform import debian
    from qmailhost.settings import Settings

    os.environ["QMAILHOST_SANDBOX_HOST"] = host_name
    data = runpy.run_path(str(Path.cwd() / "inventory/sandbox.py"))["_data"]
    host = sandbox.load(host_name)
    settings = Settings.from_host_data(data, inventory_name=host_name)

    def shell(command: str) -> tuple[bool, str]:
        done = host.ssh(command, check=False)
        return done.returncode == 0, done.stdout if done.returncode == 0 else done.stderr

    figures = {}
    for check in checks.all_checks(debian("13")):
        name = checks.check_name(check)
        samples = []
        for _ in range(runs):
            target = checks.Target(settings, debian("13"), host.address, shell)
            started = time.monotonic()
            checks.run_checks(target, [check])
            samples.append(time.monotonic() - started)
        figures[name] = round(statistics.median(samples), 3)
    return figures


def measure_tree(project: Path, host: sandbox.Host, runs: int) -> dict:
    # This file's checks_alone, importing the checks of PROJECT (which may predate this file).
    code = (f"import json, runpy; alone = runpy.run_path({str(Path(__file__).resolve())!r})['checks_alone']; "
            f"print(json.dumps(alone({host.name!r}, {runs})))")
    child = subprocess.run([sys.executable, "-c", code],
                           cwd=project, capture_output=True, text=True, timeout=3600,
                           env={**os.environ, "PYTHONPATH": str(project)})
    if child.returncode != 0:
        raise SystemExit(child.stderr[-3000:])
    alone = json.loads(child.stdout.strip().splitlines()[-1])
    verify = []
    for _ in range(runs):
        started = time.monotonic()
        pyinfra(host, deploy="verify.py", json_output=False, check=False, project=project)
        verify.append(time.monotonic() - started)
    return {"alone": alone, "verify": round(statistics.median(verify), 2)}


def measure(before: str, runs: int) -> dict:
    from harness import images

    results: dict = {"machine": machine(), "before": before, "runs": runs}
    host = images.create(f"bench{os.getpid()}-checks")
    try:
        pyinfra(host)
        with tempfile.TemporaryDirectory(prefix="qmailhost-before-") as directory:
            worktree = Path(directory) / "tree"
            subprocess.run(["git", "-C", str(PROJECT), "worktree", "add", "--detach", str(worktree), before],
                           check=True, capture_output=True)
            try:
                results["before_figures"] = measure_tree(worktree, host, runs)
            finally:
                subprocess.run(["git", "-C", str(PROJECT), "worktree", "remove", "--force", str(worktree)],
                               check=False, capture_output=True)
        results["after_figures"] = measure_tree(PROJECT, host, runs)
    finally:
        sandbox.destroy(host.name)
    return results


def table(results: dict) -> str:
    old, new = results["before_figures"], results["after_figures"]
    lines = [f"Measured {results['machine']['date']} on {results['machine']['cores']} cores, one converged Debian 13 "
             f"host, {results['runs']} runs each (medians), before = {results['before']}.", "",
             "| seconds | before | after | ratio |", "|---|---|---|---|"]
    for name in SHOWN:
        if name in old["alone"] and name in new["alone"]:
            a, b = old["alone"][name], new["alone"][name]
            lines.append(f"| `{name}` alone | {a:.2f} | {b:.2f} | {b / a:.2f}x |")
    lines.append(f"| `verify.py`: every check, side by side | {old['verify']:.2f} | {new['verify']:.2f} | "
                 f"{new['verify'] / old['verify']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.checks_cost", description=__doc__.split("\n")[0])
    parser.add_argument("--before", default=BEFORE)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--readme", action="store_true", help="write the table into README.md")
    options = parser.parse_args()
    results = measure(options.before, options.runs)
    publish(results, RESULTS, table(results), options.readme, "bench-checks")


if __name__ == "__main__":
    main()
