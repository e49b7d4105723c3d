"""Builds: upload verified distfiles and build each component only when its inputs change.

The laptop fetches and verifies every distfile first (tasks/sources.py), so a bad
checksum stops the run before anything reaches the host. On the host, a component's
build script runs only when the digest of its inputs (distfile checksums, the build
script, its arguments) differs from the stamp its last successful build left.
"""

from __future__ import annotations

from tasks import ops
from tasks.facts import STATE_DIR
from tasks.sources import Distfile, fetch, resolve
from tasks.templates import read

DISTFILE_DIR = f"{STATE_DIR}/distfiles"
SCRIPT_DIR = f"{STATE_DIR}/build"


# The distfiles each component built from source needs.
NEEDS = {"notqmail": ("notqmail",), "mess822": ("mess822", "mess822-auth-patch"),
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


def build(component: str, description: str, script: str, args: list[str], inputs: list[str]) -> None:
    """Install files/SCRIPT and run it with ARGS when INPUTS (checksums, options) change."""
    text = read(script)
    remote_script = f"{SCRIPT_DIR}/{component}.sh"
    ops.whole_file(name=f"Install the {component} build script", dest=remote_script, content=text, mode="755")
    ops.stamped(
        name=description,
        stamp=f"build-{component}",
        inputs="\n".join([text, *args, *inputs]),
        commands=[" ".join([remote_script, *args])],
        description=description[0].lower() + description[1:],
        lock=f"{STATE_DIR}/build.lock",
    )
