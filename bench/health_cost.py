"""What one scheduled run of the status checks costs on the host (tasks/health.py), in one run.

One throwaway host is deployed (from the deployed image) and left converged. The host's own
runner (/etc/qmailhost/health/run, as its scheduler starts it) then runs RUNS times, and
`verify.py` from the laptop RUNS times against the same host. Reported: the median wall
time of a scheduled run (from starting the runner to its exit: Python started, the code
imported, every check, the state written), the checks' own share of it (as last.json
records), the run's peak memory (its max RSS), and the ratio of a scheduled run to the
laptop's `verify.py`. Written to bench/results-health.json and, with --readme, between the
README's bench-health markers. Never an assertion of the test suite.

    python -m bench.health_cost [--runs 5] [--readme]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from bench.run import machine, publish
from harness import images, sandbox
from harness.pyinfra_cli import PROJECT, pyinfra

RESULTS = PROJECT / "bench" / "results-health.json"
RUNNER, LAST = "/etc/qmailhost/health/run", "/var/lib/qmailhost/health/last.json"


def measure(runs: int) -> dict:
    host = images.create(f"bench-health-{os.getpid()}")
    try:
        pyinfra(host, data={"verify_after_deploy": False}, json_output=False)
        walls, checks, memory = [], [], []
        for _ in range(runs):
            started = time.monotonic()
            host.ssh(RUNNER)
            walls.append(time.monotonic() - started)
            last = json.loads(host.ssh(f"cat {LAST}").stdout)
            checks.append(last["seconds"])
            memory.append(last["max_rss_kib"])
        verify = []
        for _ in range(runs):
            started = time.monotonic()
            pyinfra(host, deploy="verify.py", json_output=False, check=False)
            verify.append(time.monotonic() - started)
        return {"machine": machine(), "runs": runs, "scheduled_run_s": round(statistics.median(walls), 2),
                "checks_s": round(statistics.median(checks), 2), "max_rss_mib": round(max(memory) / 1024, 1),
                "verify_s": round(statistics.median(verify), 2), "results": last["counts"]}
    finally:
        sandbox.destroy(host.name)


def table(results: dict) -> str:
    ratio = results["scheduled_run_s"] / results["verify_s"]
    return "\n".join([
        f"One scheduled run on the host (median of {results['runs']}, {results['machine']['date']}, "
        f"{results['machine']['cores']} cores; bench/health_cost.py):",
        "",
        "| what | figure |",
        "|---|---|",
        f"| a scheduled run, start to exit | {results['scheduled_run_s']} s |",
        f"| of which the checks | {results['checks_s']} s |",
        f"| its peak memory (max RSS) | {results['max_rss_mib']} MiB |",
        f"| `verify.py` from the laptop, same host | {results['verify_s']} s |",
        f"| scheduled run / `verify.py` | {ratio:.2f} |",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--readme", action="store_true")
    options = parser.parse_args()
    results = measure(options.runs)
    publish(results, RESULTS, table(results), options.readme, "bench-health")


if __name__ == "__main__":
    main()
