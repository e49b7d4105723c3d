"""What IMAP adds to a bare deploy, in one run: bare host to mail flowing (a submission on
587 delivered) with the tree before the imap component (a git worktree of BEFORE) and with
this tree, each on a fresh host, and, with this tree, the time from the deploy's end to the
first IMAP login on 993. Written to bench/results-imap.json and, with --readme, as the
README's IMAP table. Never an assertion of the test suite.

    python -m bench.imap_cost [--before 6a4571e] [--runs 1] [--readme]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.run import QUIET, machine, mail_flows, publish
from harness import imap, sandbox
from harness.pyinfra_cli import PROJECT, pyinfra

RESULTS = PROJECT / "bench" / "results-imap.json"
BEFORE = "6a4571e"  # main just before tasks/imap.py landed


def bare(project: Path, name: str, login: bool) -> dict[str, float]:
    host = sandbox.create(f"bench{os.getpid()}-{name}")
    try:
        started = time.monotonic()
        pyinfra(host, data=QUIET, project=project)
        deployed = time.monotonic() - started
        figures = {"deploy": deployed}
        if login:
            figures["first_imap_login"] = imap.login_when_up(host, sandbox.SANDBOX_USER, sandbox.sandbox_password(),
                                                             timeout=60)
        mail_flows(host)
        figures["bare_to_mail"] = time.monotonic() - started
        return figures
    finally:
        sandbox.destroy(host.name)


def measure(before: str, runs: int) -> dict:
    results: dict = {"machine": machine(), "before": before, "runs": runs}
    with tempfile.TemporaryDirectory(prefix="qmailhost-before-") as directory:
        worktree = Path(directory) / "tree"
        subprocess.run(["git", "-C", str(PROJECT), "worktree", "add", "--detach", str(worktree), before],
                       check=True, capture_output=True)
        try:
            old = [bare(worktree, "before", login=False) for _ in range(runs)]
        finally:
            subprocess.run(["git", "-C", str(PROJECT), "worktree", "remove", "--force", str(worktree)],
                           check=False, capture_output=True)
    new = [bare(PROJECT, "after", login=True) for _ in range(runs)]
    for key, samples in (("before", old), ("after", new)):
        results[key + "_figures"] = {name: round(statistics.median(s[name] for s in samples), 2)
                                     for name in samples[0]}
    return results


def table(results: dict) -> str:
    old, new = results["before_figures"], results["after_figures"]
    lines = [f"Measured {results['machine']['date']} on {results['machine']['cores']} cores, "
             f"{results['runs']} fresh Debian 13 host(s) each (medians), status checks off.", "",
             "| seconds | before imap/ | with imap/ | ratio |", "|---|---|---|---|"]
    for name, label in (("deploy", "bare deploy"), ("bare_to_mail", "bare host to mail flowing")):
        lines.append(f"| {label} | {old[name]:.0f} | {new[name]:.0f} | {new[name] / old[name]:.2f}x |")
    lines.append(f"| first IMAP login after the deploy ends | | {new['first_imap_login']:.2f} | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.imap_cost", description=__doc__.split("\n")[0])
    parser.add_argument("--before", default=BEFORE)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--readme", action="store_true", help="write the table into README.md")
    options = parser.parse_args()
    results = measure(options.before, options.runs)
    publish(results, RESULTS, table(results), options.readme, "bench-imap")


if __name__ == "__main__":
    main()
