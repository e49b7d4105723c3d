"""Fixtures: fresh throwaway Debian hosts, and the pyinfra CLI run against them.

End-to-end tests need root on Linux (namespaces, overlayfs, debootstrap); tests that
build the mail stack also need the upstream sources in a distfile cache (see README).
Without either, they skip with one loud line saying why.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import shutil
import socket
from pathlib import Path

import pytest

from harness import sandbox
from harness.pyinfra_cli import LOCAL_MIRROR, sources_available

_counter = itertools.count(1)
_getaddrinfo = socket.getaddrinfo


def _this_machine(name) -> bool:
    if name is None or isinstance(name, bytes | bytearray):
        name = name.decode() if name else None
    if name in (None, "", "localhost", socket.gethostname()) or str(name).endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(str(name).split("%")[0])
    except ValueError:
        return False
    return True


def _local_getaddrinfo(host, *args, **kwargs):
    if not _this_machine(host):
        raise socket.gaierror(socket.EAI_NONAME, f"the tests look up no name beyond this machine: {host}")
    return _getaddrinfo(host, *args, **kwargs)


@pytest.fixture(autouse=True, scope="session")
def _no_names_beyond_this_machine():
    """No test in this process resolves a name beyond this machine (the machines reach only
    loopback and the test hosts' addresses): a check that would ask the internet fails fast
    and loudly instead of sending a question out."""
    socket.getaddrinfo = _local_getaddrinfo
    yield
    socket.getaddrinfo = _getaddrinfo


def _why_no_sandbox() -> str | None:
    if os.geteuid() != 0:
        return "SKIPPED (needs root): the throwaway hosts need namespaces and overlayfs; run as root"
    if shutil.which("debootstrap") is None:
        return "SKIPPED (no debootstrap): run ./run setup (apt-get install debootstrap)"
    if not Path("/proc/filesystems").read_text().count("overlay"):
        return "SKIPPED (no overlayfs): this kernel cannot mount overlay"
    return None


@pytest.fixture(scope="session")
def sandbox_ready():
    reason = _why_no_sandbox()
    if reason:
        pytest.skip(reason)
    with sandbox.locked():
        sandbox.reap_leftovers()
    return True


def _new_host(suite: str) -> sandbox.Host:
    return sandbox.create(f"t{os.getpid()}-{next(_counter)}", suite=suite)


@pytest.fixture
def fresh_host(sandbox_ready):
    """A bare Debian 13 host, destroyed after the test (pass or fail)."""
    host = _new_host(sandbox.DEFAULT_SUITE)
    try:
        yield host
    finally:
        sandbox.destroy(host.name)


@pytest.fixture
def make_host(sandbox_ready):
    """A factory of bare hosts (make_host("bookworm")), all destroyed after the test."""
    made = []

    def make(suite: str = sandbox.DEFAULT_SUITE) -> sandbox.Host:
        made.append(_new_host(suite))
        return made[-1]

    try:
        yield make
    finally:
        for host in made:
            sandbox.destroy(host.name)


@pytest.fixture(scope="session")
def sources():
    """The distfile cache with the upstream sources, or a loud skip."""
    if not sources_available():
        pytest.skip(
            f"SKIPPED (no sources): upstream release sites are unreachable here and no distfile cache "
            f"was found; set QMAILHOST_DISTFILES or fill {LOCAL_MIRROR} (files + SHA512SUMS)")
    return True
