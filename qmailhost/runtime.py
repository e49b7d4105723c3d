"""qmailhost's own code on the host, for what the host runs by itself between deploys.

The host runs the very code the laptop deployed with (the status checks, for one: tasks/
health.py), not a second copy: the laptop's ``qmailhost/``, ``tasks/`` and ``files/``,
and the Python packages they import (pyinfra and libpass at the laptop's versions, with
their dependencies), in one tar (``runtime.tar.gz``) that the host unpacks under
``<prefix>/lib/qmailhost/`` into ``app/`` and ``site/``, and runs with its own Python
(``PYTHONPATH=app:site``). The tar is made the same byte for byte from the same inputs
(sorted names, no times, no owners), so an unchanged revision uploads nothing and a dry run
predicts no change; a changed one is unpacked beside the old and swapped in whole.

Wheels, not pip on the host: the laptop asks PyPI (pip download, cached in
``~/.cache/qmailhost/wheels/``) for the wheels of the host's Python (the platform's
``python_version``) and machine, and unpacks them (a wheel is a zip; none of these needs
more than its files). Debian takes every package as a wheel: Debian 12's own
python3-pydantic and python3-typeguard are too old for pyinfra 3. NetBSD takes the
compiled ones from pkgsrc (``Runtime.packages``) and only the pure-Python rest as wheels,
since PyPI has no NetBSD wheels. Without PyPI and without a cache, the deploy stops on the
laptop, before the host changes, with one line saying so.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from pyinfra.api.exceptions import PyinfraError

from qmailhost.platform import Platform

PROJECT = Path(__file__).resolve().parent.parent
CODE = ("qmailhost", "tasks", "files")  # what app/ holds (the project's own code and templates)
WHEEL_CACHE = Path.home() / ".cache/qmailhost/wheels"
BUNDLE_CACHE = Path.home() / ".cache/qmailhost/runtime"
BUNDLES_KEPT = 4
# What the project imports on the host; each at the version the laptop runs.
REQUIREMENTS = ("pyinfra", "libpass")


@dataclass(frozen=True)
class Runtime:
    """How a platform gets the Python packages: all as wheels (binary ones for its machine),
    or the compiled ones from its packages and only PURE as wheels (with no dependencies)."""

    binary_wheels: bool
    packages: tuple[str, ...] = ()  # the platform's own packages the code imports
    pure: tuple[str, ...] = ()  # (without binary_wheels) the wheels fetched, dependencies left out


RUNTIMES = {
    "debian": Runtime(binary_wheels=True),
    # pkgsrc's py313-* for everything compiled (and what it packages anyway); pyinfra itself,
    # typeguard 4 and libpass from PyPI as pure wheels.
    "netbsd": Runtime(binary_wheels=False,
                      packages=("py313-gevent", "py313-paramiko", "py313-pydantic", "py313-jinja2",
                                "py313-click", "py313-dateutil", "py313-distro", "py313-packaging",
                                "py313-typing-extensions"),
                      pure=("pyinfra", "libpass", "typeguard")),
}


@dataclass(frozen=True)
class Layout:
    root: str  # <prefix>/lib/qmailhost
    tar: str  # the uploaded runtime.tar.gz
    app: str
    site: str

    def python_path(self) -> str:
        return f"{self.app}:{self.site}"


def layout(platform: Platform) -> Layout:
    root = f"{platform.prefix}/lib/qmailhost"
    return Layout(root, f"{root}/runtime.tar.gz", f"{root}/app", f"{root}/site")


def requirements() -> list[str]:
    return [f"{name}=={metadata.version(name)}" for name in REQUIREMENTS]


def wheels(platform: Platform, machine: str) -> list[Path]:
    """The wheels the host's Python needs (downloaded once into the cache): [paths]."""
    runtime = RUNTIMES[platform.name]
    wanted = requirements() if runtime.binary_wheels else [
        f"{name}=={metadata.version(name)}" for name in runtime.pure]
    key = hashlib.sha256("\n".join([platform.name, platform.python_version, machine, *wanted]).encode()).hexdigest()
    cache = WHEEL_CACHE / f"{platform.name}-py{platform.python_version}-{machine}-{key[:12]}"
    done = cache / ".complete"
    if not done.exists():
        _download(wanted, cache, platform, machine, runtime)
        done.write_text("\n".join(wanted) + "\n")
    return sorted(cache.glob("*.whl"))


def _download(wanted: list[str], cache: Path, platform: Platform, machine: str, runtime: Runtime) -> None:
    if runtime.binary_wheels:
        tags = [f"{tag}_{machine}" for tag in ("manylinux_2_28", "manylinux_2_26", "manylinux_2_24",
                                               "manylinux_2_17", "manylinux2014", "manylinux_2_5", "manylinux1")]
        where = [arg for tag in tags for arg in ("--platform", tag)] + ["--implementation", "cp"]
    else:
        where = ["--platform", "any", "--no-deps"]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
               "--only-binary=:all:", "--python-version", platform.python_version, *where,
               "--dest", str(cache), *wanted]
    cache.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        error = next((line for line in reversed(result.stderr.splitlines()) if "ERROR" in line),
                     result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "no output")
        raise PyinfraError(f"the host's own Python packages ({', '.join(wanted)}) for Python "
                           f"{platform.python_version} on {machine} could not be fetched from PyPI into {cache}: "
                           f"{error.strip()}; connect this laptop to the Internet once, or set health_every to null")


def code_files() -> list[tuple[str, Path]]:
    """(name in app/, local path) of the project's own code and templates, sorted."""
    found = []
    for top in CODE:
        for path in sorted((PROJECT / top).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                found.append((path.relative_to(PROJECT).as_posix(), path))
    return found


def bundle(platform: Platform, machine: str) -> Path:
    """runtime.tar.gz (made once per inputs, kept in the cache): app/ (the project's code) and
    site/ (the wheels' files), the same bytes for the same inputs."""
    code = code_files()
    found = wheels(platform, machine)
    digest = hashlib.sha256()
    for name, path in code:
        digest.update(f"{name}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\0".encode())
    digest.update("\0".join(wheel.name for wheel in found).encode())
    made = BUNDLE_CACHE / f"runtime-{digest.hexdigest()[:16]}.tar.gz"
    if not made.exists():
        BUNDLE_CACHE.mkdir(parents=True, exist_ok=True)
        partial = made.with_suffix(".partial")
        partial.write_bytes(_tar(code, found))
        partial.rename(made)
        for old in sorted(BUNDLE_CACHE.glob("runtime-*.tar.gz"), key=lambda p: p.stat().st_mtime)[:-BUNDLES_KEPT]:
            old.unlink(missing_ok=True)  # (one per revision of the code: the newest few are kept)
    return made


def _tar(code: list[tuple[str, Path]], found: list[Path]) -> bytes:
    members: dict[str, bytes] = {}
    for name, path in code:
        members[f"app/{name}"] = path.read_bytes()
    for wheel in found:
        with zipfile.ZipFile(wheel) as archive:
            for info in archive.infolist():
                if not info.is_dir() and not info.filename.split("/", 1)[0].endswith(".data"):
                    members[f"site/{info.filename}"] = archive.read(info)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name in sorted(members):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(members[name]), 0o644, 0
            archive.addfile(info, io.BytesIO(members[name]))
    return gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)


def unpack_command(paths: Layout) -> str:
    """Unpack the uploaded tar beside app/ and site/, then swap both in (the old ones go)."""
    new, old = f"{paths.root}/.new", f"{paths.root}/.old"
    return (f"rm -rf {new} {old} && mkdir -p {new} && tar -xzf {paths.tar} -C {new} && "
            f"chmod -R go-w {new} && mkdir -p {old} && "
            f"for d in app site; do if [ -d {paths.root}/$d ]; then mv {paths.root}/$d {old}/$d; fi; "
            f"mv {new}/$d {paths.root}/$d; done && rm -rf {new} {old}")
