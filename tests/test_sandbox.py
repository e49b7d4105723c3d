"""The throwaway host harness: a real Debian host over SSH, proven by a real deploy."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from harness import sandbox
from harness.pyinfra_cli import PROJECT, host_listing, pyinfra

pytestmark = pytest.mark.e2e
PACKAGES = ("build-essential", "ucspi-tcp", "daemontools", "daemontools-run", "stunnel4", "openssl", "libssl-dev")


@pytest.mark.slow  # the harness's own proof (3 min); every e2e suite deploys through it in every run
def test_deploy_installs_packages_is_idempotent_and_dry_changes_nothing(fresh_host):
    first = pyinfra(fresh_host, deploy="tests/deploys/packages.py")
    assert first.changed() == ["Install the base packages"]
    installed = fresh_host.ssh("dpkg-query -W -f '${Package} ${Status}\\n' " + " ".join(PACKAGES)).stdout
    for package in PACKAGES:
        assert f"{package} install ok installed" in installed
    assert fresh_host.ssh("cat /etc/debian_version").stdout.startswith("13.")

    second = pyinfra(fresh_host, deploy="tests/deploys/packages.py")
    assert second.changed() == [] and second.planned() == []

    before = host_listing(fresh_host, "/etc /usr")
    dry = pyinfra(fresh_host, "--dry", deploy="tests/deploys/packages.py")
    assert dry.changed() == []
    assert host_listing(fresh_host, "/etc /usr") == before


def test_bookworm_host_on_request(make_host):
    host = make_host("bookworm")
    assert host.ssh("cat /etc/debian_version").stdout.startswith("12.")
    assert host.ssh("hostname").stdout.strip() == host.name


def test_hosts_are_isolated_and_loopback_stays_inside(make_host):
    one, two = make_host(), make_host()
    assert one.address != two.address
    one.ssh("echo one > /root/mark")
    assert two.ssh("cat /root/mark", check=False).returncode != 0
    # A service bound to 127.0.0.1 inside the host is not reachable from here.
    one.ssh("nohup setsid perl -MIO::Socket::INET -e "
            "'$s=IO::Socket::INET->new(LocalAddr=>\"127.0.0.1\",LocalPort=>2626,Listen=>5,ReuseAddr=>1) or die; "
            "while($c=$s->accept){print $c \"hi\\n\";close $c}' >/dev/null 2>&1 </dev/null &")
    time.sleep(0.5)
    inside = one.ssh("perl -MIO::Socket::INET -e 'print IO::Socket::INET->new(\"127.0.0.1:2626\")->getline'")
    assert "hi" in inside.stdout

    with pytest.raises(OSError):
        socket.create_connection((one.address, 2626), timeout=2).close()


def _assert_nothing_left_of(host: sandbox.Host) -> None:
    left = sandbox.leftovers()
    assert not [m for m in left["mounts"] if str(host.directory) in m]
    assert host.netns not in left["netns"]
    assert host.veth not in left["veths"]
    assert not [p for p in left["processes"] if str(host.directory) in p]
    assert not host.directory.exists()
    assert sandbox.load(host.name) is None


def test_teardown_leaves_no_mount_namespace_veth_or_process(sandbox_ready):
    host = sandbox.create(f"t{os.getpid()}-teardown")
    host.ssh("nohup setsid sleep 600 >/dev/null 2>&1 </dev/null &")  # a process that outlives its session
    assert sandbox.destroy(host.name)
    _assert_nothing_left_of(host)


def test_leftovers_of_a_killed_run_are_reaped(sandbox_ready):
    """A test process killed mid-run leaves a host behind; the next run's start removes it."""
    code = ("import time; from harness import sandbox; h = sandbox.create('orphan-%d' % __import__('os').getpid()); "
            "print(h.name, flush=True); time.sleep(600)")
    child = subprocess.Popen([sys.executable, "-c", code], cwd=PROJECT, stdout=subprocess.PIPE, text=True)
    name = child.stdout.readline().strip()
    orphan = sandbox.load(name)
    assert orphan is not None and sandbox.is_running(orphan)
    child.send_signal(signal.SIGKILL)
    child.wait()
    with sandbox.locked():
        reaped = sandbox.reap_leftovers()
    assert name in reaped
    _assert_nothing_left_of(orphan)


def test_cli_status_json_gives_address_key_and_mail_account(sandbox_ready):
    env = {**os.environ}
    up = subprocess.run([sys.executable, "-m", "harness.sandbox", "up", "--name", "cli-check"], cwd=PROJECT,
                        capture_output=True, text=True, env=env, timeout=600)
    try:
        assert up.returncode == 0, up.stderr
        out = subprocess.run([sys.executable, "-m", "harness.sandbox", "status", "--json", "--name", "cli-check"],
                             cwd=PROJECT, capture_output=True, text=True, check=True).stdout
        info = json.loads(out)
        for key in ("address", "ssh_port", "ssh_key", "hostname", "domain", "user", "password"):
            assert info[key], key
        assert info["running"] is True and info["hostname"] == sandbox.SANDBOX_HOSTNAME
        assert sandbox.load("cli-check").address == info["address"]
        assert info["password"] == sandbox.sandbox_password()  # the same one every time
    finally:
        down = subprocess.run([sys.executable, "-m", "harness.sandbox", "down", "--name", "cli-check"],
                              cwd=PROJECT, capture_output=True, text=True)
        assert "destroyed" in down.stdout
    assert sandbox.load("cli-check") is None


def test_a_frozen_host_is_a_layer_later_hosts_start_from(sandbox_ready, tmp_path):
    """harness/images.py's base: what a host's disk gained (a new file, a removed one) is what
    a host made from its frozen layer starts with, and that host's own changes stay its own."""
    image = sandbox.CACHE_DIR / "images" / f"t{os.getpid()}-frozen"
    first = sandbox.create(f"t{os.getpid()}-to-freeze")
    try:
        first.ssh("echo kept > /etc/qmailhost-frozen && rm /etc/debian_version")
        sandbox.freeze(first, image)
        _assert_nothing_left_of(first)
        second = sandbox.create(f"t{os.getpid()}-from-frozen", lower=[image])
        try:
            assert second.ssh("cat /etc/qmailhost-frozen").stdout == "kept\n"
            assert second.ssh("test -e /etc/debian_version", check=False).returncode != 0
            second.ssh("echo changed > /etc/qmailhost-frozen")
        finally:
            sandbox.destroy(second.name)
        assert (image / "etc/qmailhost-frozen").read_text() == "kept\n"
    finally:
        sandbox.destroy(first.name)
        subprocess.run(["rm", "-rf", str(image)], check=True)
