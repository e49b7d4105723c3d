"""Builds: upload verified distfiles and build each component only when its inputs change.

The laptop fetches and verifies every distfile first (qmailhost/sources.py), so a bad
checksum stops the run before anything reaches the host. On the host, a component's
build script runs only when the digest of its inputs (distfile checksums, the build
script, its arguments) differs from the stamp its last successful build left.
"""

from __future__ import annotations

import shlex

from pyinfra import host, logger
from pyinfra.api import operation

from qmailhost import ops
from qmailhost.facts import STATE_DIR, host_state
from qmailhost.files import read
from qmailhost.sources import Distfile, fetch, resolve

DISTFILE_DIR = f"{STATE_DIR}/distfiles"
SCRIPT_DIR = f"{STATE_DIR}/build"


# The distfiles each component built from source needs.
NEEDS = {"notqmail": ("notqmail", "qmail-tls-patch"), "mess822": ("mess822", "mess822-auth-patch"),
         "checkpassword": ("checkpassword",), "spamdyke": ("spamdyke",)}


def fetch_all(settings, builds_from_source=tuple(NEEDS)) -> dict[str, tuple[Distfile, str]]:
    """Fetch and verify, on the laptop, every distfile the components in BUILDS_FROM_SOURCE
    need: {component: (distfile, local path)}."""
    explicit = settings.distfiles_explicit
    distfiles = resolve(settings.sources, settings.distfiles, explicit)
    wanted = {name for component in builds_from_source for name in NEEDS[component]}
    return {name: (d, str(fetch(d, settings.distfiles))) for name, d in distfiles.items() if name in wanted}


def upload(fetched: dict[str, tuple[Distfile, str]]) -> dict[str, str]:
    """Upload every distfile to the host: {component: remote path}."""
    remote = {}
    for name, (distfile, local) in fetched.items():
        remote[name] = f"{DISTFILE_DIR}/{distfile.filename}"
        ops.put_file(name=f"Upload {distfile.filename}", src=local, dest=remote[name])
    return remote


_PENDING: dict[str, list[dict]] = {}  # host name -> the builds its deploy asked for


def build(component: str, description: str, script: str, args: list[str], inputs: list[str],
          files: tuple[str, ...] = ()) -> None:
    """Install SCRIPT (files/<component>/NAME); its run with ARGS joins the builds run_all() starts when
    INPUTS (checksums, options, the script itself) changed since its last build. FILES (files/ names,
    our own patches) are installed beside the script, their paths follow ARGS and their text joins
    the inputs: a changed one rebuilds, as a changed distfile does."""
    text = read(script)
    remote_script = f"{SCRIPT_DIR}/{component}.sh"
    ops.whole_file(name=f"Install the {component} build script", dest=remote_script, content=text, mode="755")
    texts, paths = [], []
    for name in files:
        base = name.rsplit("/", 1)[-1]
        texts.append(read(name))
        paths.append(f"{SCRIPT_DIR}/{component}-{base}")  # beside the script, outside its work directory
        ops.whole_file(name=f"Install {base} for the {component} build", dest=paths[-1], content=texts[-1])
    _PENDING.setdefault(host.name, []).append({
        "component": component, "description": description, "stamp": f"build-{component}",
        "digest": ops.stamp_digest("\n".join([text, *args, *paths, *inputs, *texts])),
        "command": " ".join([remote_script, *args, *paths]),
    })


def run_all() -> None:
    """One operation that runs every build whose inputs changed, side by side (each in
    its own work directory), under a lock so a remnant of an interrupted run finishes
    first. A build's stamp is written when that build succeeds, so a failed or cut-off
    run redoes only what did not finish."""
    pending = _PENDING.pop(host.name, [])
    if pending:
        build_sources(name="Build and install the sources", builds=pending, lock=f"{STATE_DIR}/build.lock")


@operation()
def build_sources(builds: list[dict], lock: str):
    recorded = host_state()["stamps"]
    needed = [b for b in builds if recorded.get(b["stamp"]) != b["digest"]]
    if not needed:
        host.noop("every build is current: " + ", ".join(b["component"] for b in builds))
        return
    host.log("Will build " + ", ".join(f"{b['component']} (stamp {b['digest'][:8]})" for b in needed), logger.info)
    yield ops.clear_stamps(*(b["stamp"] for b in needed))
    jobs, results = [], []
    for b in needed:
        log, rc = f"{SCRIPT_DIR}/{b['component']}.log", f"{SCRIPT_DIR}/{b['component']}.rc"
        jobs.append(f"( {b['command']} > {log} 2>&1; echo $? > {rc} ) &")
        results.append(f"if [ \"$(cat {rc})\" = 0 ]; then {ops.record_stamp(b['stamp'], b['digest'])}; "
                       f"else echo '{b['description']} failed:' >&2; tail -20 {log} >&2; failed=1; fi")
    script = "\n".join(["failed=0", *jobs, "wait", *results, "exit $failed"])
    yield f"flock {lock} sh -c {shlex.quote(script)}"
