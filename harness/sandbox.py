"""Throwaway Debian hosts on this one Linux machine, reachable over SSH.

Each host is a real Debian 13 (trixie, default) or 12 (bookworm) userland:

- a golden root tree made once by debootstrap and cached outside the repository
  (``$QMAILHOST_SANDBOX_DIR``, default /var/lib/qmailhost-sandbox);
- an overlayfs over it per host, so every host starts bare and a "disk failure"
  is a fresh upper dir;
- its own network namespace with a veth /30 (host side .1, target .2; a distinct
  /30 per host), so 127.0.0.1 services on the target are unreachable from here;
- its own PID, mount, UTS and IPC namespaces with sshd as PID 1;
- a small TCP relay on the host side of the veth to the Debian mirror, the only
  way out of the namespace (apt works, nothing else leaves);
- for the built-in host, a name server on the host side of its veth serving its zone
  (harness/builtin.py writes it from records.py), so its DNS checks have DNS to ask;
- freeze: a host switched off, what its disk gained kept as a layer later hosts start
  from (harness/images.py's deployed images).

State lives in /run/qmailhost-sandbox/NAME.json. Hosts whose owning process is
gone are reaped at the next create, as are resources no state file claims.

Command line (for people and tools)::

    python -m harness.sandbox up|down|status [--json] [--name NAME] [--suite SUITE]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

CACHE_DIR = Path(os.environ.get("QMAILHOST_SANDBOX_DIR", "/var/lib/qmailhost-sandbox"))
RUN_DIR = Path("/run/qmailhost-sandbox")
SUITES = {"trixie": "13", "bookworm": "12"}
DEFAULT_SUITE = os.environ.get("QMAILHOST_SANDBOX_SUITE", "trixie")
MIRROR_HOST = "deb.debian.org"
BUILTIN_NAME = "sandbox"
PREFIX = "qh-"  # names of namespaces and veths this harness owns
SUBNET = "10.213"  # host n gets 10.213.n.0/30
# The built-in host's mail settings (inventory/sandbox.py gives these to the deploy).
SANDBOX_HOSTNAME = "mail.sandbox.test"
SANDBOX_DOMAIN = "sandbox.test"
SANDBOX_USER = "alice"


class SandboxError(RuntimeError):
    pass


def log(message: str) -> None:
    print(f"sandbox: {message}", file=sys.stderr, flush=True)


def run(*argv: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise SandboxError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


@contextlib.contextmanager
def locked(name: str = "harness"):
    """Serialise harness changes across processes (pytest workers, the CLI)."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    with open(RUN_DIR / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


# --- the SSH key and the golden tree -------------------------------------------------


def ssh_key() -> Path:
    key = CACHE_DIR / "ssh" / "id_ed25519"
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "qmailhost-sandbox", "-f", str(key))
    return key


# How golden trees are made; a new one is made beside the old (hosts may still run on it).
# 2: with the suite's security updates, so a new host has none pending (no systemd runs in a
# throwaway host, so its unattended-upgrades never would).
GOLDEN_FORMAT = "2"


def golden_tree(suite: str) -> Path:
    """The cached, prepared root tree for a suite; made on first use (about a minute)."""
    if suite not in SUITES:
        raise SandboxError(f"unknown suite {suite!r}: use one of {', '.join(SUITES)}")
    root = CACHE_DIR / "golden" / f"{suite}-{GOLDEN_FORMAT}"
    if (root / ".qmailhost-ready").exists():
        return root
    with locked(f"golden-{suite}"):
        if (root / ".qmailhost-ready").exists():
            return root
        if shutil.which("debootstrap") is None:
            raise SandboxError("debootstrap is missing: apt-get install debootstrap")
        partial = root.with_name(f"{suite}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.parent.mkdir(parents=True, exist_ok=True)
        log(f"creating the golden {suite} tree in {root} (once per machine, about a minute)")
        started = time.monotonic()
        run(
            "debootstrap", "--variant=minbase", "--include=openssh-server",
            suite, str(partial), f"http://{MIRROR_HOST}/debian",
        )
        _prepare_golden(partial, suite)
        partial.rename(root)
        (root / ".qmailhost-ready").write_text(f"{time.monotonic() - started:.1f}\n")
        log(f"golden {suite} tree ready in {time.monotonic() - started:.0f} s")
    return root


def _prepare_golden(root: Path, suite: str) -> None:
    ssh_dir = root / "root" / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(Path(f"{ssh_key()}.pub").read_text())
    (ssh_dir / "authorized_keys").chmod(0o600)
    (root / "etc/ssh/sshd_config.d/qmailhost-sandbox.conf").write_text(
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n"
    )
    # runit's and other packages' scripts must never stop the harness's sshd.
    (root / "etc/ssh/sshd_not_to_be_run").touch()
    (root / "etc/apt/sources.list").write_text(
        f"deb http://{MIRROR_HOST}/debian {suite} main\n"
        f"deb http://{MIRROR_HOST}/debian {suite}-updates main\n"
        f"deb http://{MIRROR_HOST}/debian-security {suite}-security main\n"
    )
    (root / "etc/apt/apt.conf.d/90qmailhost-sandbox").write_text(
        'Acquire::Languages "none";\nAcquire::Retries "3";\nAcquire::http::Timeout "30";\n'
    )
    policy = root / "usr/sbin/policy-rc.d"  # no daemon starts from a package's postinst
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    run("mount", "-t", "proc", "proc", str(root / "proc"))
    try:
        run("chroot", str(root), "apt-get", "-q", "update")
        run("chroot", str(root), "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-q", "-y",
            "dist-upgrade")
    finally:
        run("umount", str(root / "proc"), check=False)
    run("chroot", str(root), "apt-get", "clean")


# --- hosts -----------------------------------------------------------------------------


@dataclass
class Host:
    name: str
    suite: str
    index: int
    owner_pid: int | None  # None: persistent (the built-in host), else reaped when gone
    namespace_pid: int | None = None
    relay_pid: int | None = None
    dns_pid: int | None = None  # the built-in host's name server (start_name_server)
    created: float = field(default_factory=time.time)

    @property
    def address(self) -> str:
        return f"{SUBNET}.{self.index}.2"

    @property
    def gateway(self) -> str:
        return f"{SUBNET}.{self.index}.1"

    def client_address(self, number: int) -> str:
        """Another address on the laptop's side of the veth (a second client, a stranger): added to
        the veth once, with a route to it inside the host's namespace. NUMBER: 1 to 9."""
        address = f"{SUBNET}.{self.index}.{10 + number}"
        if f" {address}/" not in run("ip", "-o", "addr", "show", "dev", self.veth).stdout:
            run("ip", "addr", "add", f"{address}/32", "dev", self.veth)
            run("ip", "-n", self.netns, "route", "replace", f"{address}/32", "dev", "eth0")
        return address

    @property
    def netns(self) -> str:
        return f"{PREFIX}{self.name}"

    @property
    def veth(self) -> str:
        return f"{PREFIX}v{self.index}"

    @property
    def directory(self) -> Path:
        return CACHE_DIR / "hosts" / self.name

    @property
    def root(self) -> Path:
        return self.directory / "root"

    @property
    def upper(self) -> Path:
        return self.directory / "upper"

    @property
    def ssh_key(self) -> str:
        return str(ssh_key())

    def ssh_data(self) -> dict:
        """pyinfra host data that reaches this host."""
        return {
            "ssh_hostname": self.address,
            "ssh_user": "root",
            "ssh_port": 22,
            "ssh_key": self.ssh_key,
            "ssh_strict_host_key_checking": "off",
            "ssh_known_hosts_file": "/dev/null",
            "ssh_allow_agent": False,
            "ssh_look_for_keys": False,
        }

    def ssh(self, command: str, check: bool = True, timeout: float = 300, **kwargs):
        """Run a shell command on the host over SSH (as a remote user would)."""
        argv = [*self.ssh_argv(), command]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
        if check and result.returncode != 0:
            raise SandboxError(f"on {self.name}: {command!r} exited {result.returncode}: {result.stderr.strip()}")
        return result

    def ssh_argv(self) -> list[str]:
        """ssh to this host as root, for a command appended (streams: stdin and stdout as bytes)."""
        return ["ssh", "-q", "-i", self.ssh_key, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10", f"root@{self.address}"]

    def service_pids(self) -> dict[str, str]:
        """{service: pid} of the daemontools services up on the host (a restart changes the pid)."""
        lines = self.ssh("svstat /etc/service/*").stdout.splitlines()
        return {line.split(":")[0]: line.split("(pid ")[1].split(")")[0] for line in lines if "(pid " in line}

    def state_file(self) -> Path:
        return RUN_DIR / f"{self.name}.json"

    def save(self) -> None:
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file().with_suffix(".tmp")
        # A field added later is left out while unset, so an older tree's harness (bench/'s
        # "before" trees) still reads the state of hosts made by this one.
        state = {k: v for k, v in asdict(self).items() if not (k == "dns_pid" and v is None)}
        tmp.write_text(json.dumps(state))
        tmp.rename(self.state_file())


def move_disk(old: Host, new: Host, path: str) -> None:
    """The directory PATH of OLD (a second disk that outlived it) put into NEW at the same place,
    owners and modes kept, streamed as one tar."""
    sender = subprocess.Popen([*old.ssh_argv(), f"tar -C / -cf - {shlex.quote(path.lstrip('/'))}"],
                              stdout=subprocess.PIPE)
    received = subprocess.run([*new.ssh_argv(), "tar -C / -xpf -"], stdin=sender.stdout, capture_output=True)
    sender.stdout.close()
    if sender.wait() != 0 or received.returncode != 0:
        raise SandboxError(f"moving {path} from {old.name} to {new.name}: {received.stderr.decode().strip()}")


def load(name: str) -> Host | None:
    path = RUN_DIR / f"{name}.json"
    if not path.exists():
        return None
    return Host(**json.loads(path.read_text()))


def all_hosts() -> list[Host]:
    if not RUN_DIR.exists():
        return []
    return [Host(**json.loads(p.read_text())) for p in sorted(RUN_DIR.glob("*.json"))]


def _pid_matches(pid: int | None, needle: str) -> bool:
    """True when PID is alive and its command line contains NEEDLE (PIDs get reused)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return needle in cmdline


def is_running(host: Host) -> bool:
    return _pid_matches(host.namespace_pid, str(host.root)) and _ssh_answers(host.address, timeout=1)


def _ssh_answers(address: str, timeout: float) -> bool:
    try:
        with socket.create_connection((address, 22), timeout=timeout) as conn:
            conn.settimeout(timeout)
            return conn.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def create(name: str, suite: str = DEFAULT_SUITE, persistent: bool = False, lower: list[Path] | None = None) -> Host:
    """Bring up a bare host NAME (destroying any earlier one of that name)."""
    golden = golden_tree(suite)
    with locked():
        reap_leftovers()
        if load(name):
            _destroy(load(name))
        used = {h.index for h in all_hosts()}
        index = next(i for i in range(1, 250) if i not in used)
        host = Host(name=name, suite=suite, index=index, owner_pid=None if persistent else os.getpid())
        host.save()  # claim the name and index before making anything
    try:
        _make_root(host, [*(lower or []), golden])
        _make_network(host)
        _start_relay(host)
        _start_namespace(host)
        host.save()
        _wait_for_ssh(host)
    except BaseException:
        with locked():
            _destroy(host)
        raise
    return host


def _make_root(host: Host, lowers: list[Path]) -> None:
    for sub in ("upper", "work", "root"):
        (host.directory / sub).mkdir(parents=True, exist_ok=True)
    lowerdir = ":".join(str(p) for p in lowers)
    run("mount", "-t", "overlay", "overlay", "-o",
        f"lowerdir={lowerdir},upperdir={host.upper},workdir={host.directory / 'work'}", str(host.root))
    (host.root / "etc/hostname").write_text(f"{host.name}\n")
    # The mirror's name leads to the relay; every other name fails fast (no DNS inside).
    (host.root / "etc/hosts").write_text(
        f"127.0.0.1\tlocalhost\n{host.address}\t{host.name}\n{host.gateway}\t{MIRROR_HOST}\n"
    )
    (host.root / "etc/resolv.conf").unlink(missing_ok=True)
    (host.root / "etc/resolv.conf").write_text("# no DNS inside the qmailhost sandbox\n")


def _make_network(host: Host) -> None:
    run("ip", "netns", "add", host.netns)
    run("ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
    run("ip", "addr", "add", f"{host.gateway}/30", "dev", host.veth)
    run("ip", "link", "set", host.veth, "up")
    run("ip", "-n", host.netns, "addr", "add", f"{host.address}/30", "dev", "eth0")
    run("ip", "-n", host.netns, "link", "set", "eth0", "up")
    run("ip", "-n", host.netns, "link", "set", "lo", "up")


def _start_relay(host: Host) -> None:
    with open(host.directory / "relay.log", "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "harness.sandbox", "relay", host.gateway, MIRROR_HOST],
            cwd=Path(__file__).resolve().parent.parent, stdin=subprocess.DEVNULL,
            stdout=log_file, stderr=log_file, start_new_session=True,
        )
    host.relay_pid = process.pid


_NAMESPACE_INIT = """
set -e
R="$1"; NAME="$2"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts "$R/dev/pts"
touch "$R/dev/ptmx"; mount --bind "$R/dev/pts/ptmx" "$R/dev/ptmx"
mount -t tmpfs -o mode=755 tmpfs "$R/run"; mkdir -p "$R/run/sshd" "$R/run/lock"
mkdir -p "$R/dev/shm"; mount -t tmpfs tmpfs "$R/dev/shm"
mount -t sysfs -o ro sysfs "$R/sys" || true
hostname "$NAME"
# Boot as a host would: sshd, and svscanboot once daemontools-run is installed (the job of
# daemontools-run's systemd unit on a real host; no systemd runs here). sshd is PID 1 and
# reaps orphans.
exec chroot "$R" /bin/sh -c '
  ( while [ ! -x /usr/bin/svscanboot ] || [ ! -d /etc/service ]; do sleep 1; done
    exec /usr/bin/svscanboot ) </dev/null >/dev/null 2>&1 &
  exec /usr/sbin/sshd -D -e -o PidFile=none -o ListenAddress=0.0.0.0 -p 22'
"""


def _start_namespace(host: Host) -> None:
    with open(host.directory / "sshd.log", "ab") as log_file:
        process = subprocess.Popen(
            [
                "nsenter", f"--net=/run/netns/{host.netns}",
                "unshare", "--mount", "--uts", "--ipc", "--pid", "--fork", "--kill-child",
                f"--mount-proc={host.root}/proc",
                "sh", "-c", _NAMESPACE_INIT, "init", str(host.root), host.name,
            ],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, start_new_session=True,
        )
    host.namespace_pid = process.pid


def _wait_for_ssh(host: Host, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _ssh_answers(host.address, timeout=0.5):
            return
        time.sleep(0.05)
    tail = (host.directory / "sshd.log").read_text(errors="replace")[-800:]
    raise SandboxError(f"host {host.name}: sshd did not answer on {host.address}:22 within {timeout} s\n{tail}")


def _kill(pid: int | None, needle: str) -> None:
    if not _pid_matches(pid, needle):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)  # ours: reap it; not ours: ChildProcessError
    for _ in range(200):
        if not _pid_matches(pid, needle):
            return
        time.sleep(0.01)


def destroy(name: str) -> bool:
    with locked():
        host = load(name)
        if host is None:
            return False
        _destroy(host)
        return True


def _destroy(host: Host) -> None:
    _kill(host.namespace_pid, str(host.root))
    _kill(host.relay_pid, "harness.sandbox relay")
    _kill(host.dns_pid, "harness.sandbox dns")
    if Path(f"/run/netns/{host.netns}").exists():
        run("ip", "netns", "del", host.netns, check=False)
    if Path(f"/sys/class/net/{host.veth}").exists():
        run("ip", "link", "del", host.veth, check=False)
    _unmount(host.root)
    shutil.rmtree(host.directory, ignore_errors=True)
    host.state_file().unlink(missing_ok=True)


def freeze(host: Host, image: Path) -> Path:
    """Shut HOST down and keep what its disk gained over the golden tree (its overlay's upper
    layer) as IMAGE, a layer later hosts start from (create(..., lower=[IMAGE])) as if that
    host had been switched off and its disk copied. HOST is gone afterwards."""
    with locked():
        _kill(host.namespace_pid, str(host.root))
        _unmount(host.root)
        partial = image.with_name(f"{image.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        image.parent.mkdir(parents=True, exist_ok=True)
        (host.directory / "upper").rename(partial)  # one filesystem: CACHE_DIR holds both
        partial.rename(image)
        _destroy(host)
    return image


def _unmount(path: Path) -> None:
    for _ in range(50):
        if not os.path.ismount(path):
            return
        if run("umount", str(path), check=False).returncode == 0:
            return
        time.sleep(0.1)
    raise SandboxError(f"could not unmount {path}")


def reap_leftovers() -> list[str]:
    """Remove hosts whose owner is gone, and resources that no state claims."""
    reaped = []
    hosts = all_hosts()
    for host in hosts:
        owner_gone = host.owner_pid is not None and not Path(f"/proc/{host.owner_pid}").exists()
        if owner_gone:
            _destroy(host)
            reaped.append(host.name)
    claimed = {h.name for h in all_hosts()}
    claimed_netns = {f"{PREFIX}{n}" for n in claimed}
    claimed_veth = {h.veth for h in all_hosts()}
    for netns in Path("/run/netns").glob(f"{PREFIX}*") if Path("/run/netns").exists() else []:
        if netns.name not in claimed_netns:
            run("ip", "netns", "del", netns.name, check=False)
            reaped.append(netns.name)
    for veth in Path("/sys/class/net").glob(f"{PREFIX}v*"):
        if veth.name not in claimed_veth:
            run("ip", "link", "del", veth.name, check=False)
            reaped.append(veth.name)
    hosts_dir = CACHE_DIR / "hosts"
    for directory in hosts_dir.glob("*") if hosts_dir.exists() else []:
        if directory.name not in claimed:
            _kill_processes_under(directory)
            _unmount(directory / "root")
            shutil.rmtree(directory, ignore_errors=True)
            reaped.append(str(directory))
    if reaped:
        log(f"reaped leftovers of earlier runs: {', '.join(reaped)}")
    return reaped


def _kill_processes_under(directory: Path) -> None:
    """Kill harness processes (namespace inits, relays) that refer to DIRECTORY."""
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if str(directory) in cmdline and ("unshare" in cmdline or "harness.sandbox" in cmdline):
                _kill(int(proc.name), str(directory))


def leftovers() -> dict[str, list[str]]:
    """Everything of the harness's kind that exists now (for tests of teardown)."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
              if line.split()[1].startswith(str(CACHE_DIR / "hosts"))]
    netns = [p.name for p in Path("/run/netns").glob(f"{PREFIX}*")] if Path("/run/netns").exists() else []
    veths = [p.name for p in Path("/sys/class/net").glob(f"{PREFIX}v*")]
    processes = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if (str(CACHE_DIR / "hosts") in cmdline and "unshare" in cmdline) or "harness.sandbox relay" in cmdline \
                    or "harness.sandbox dns" in cmdline:
                processes.append(f"{proc.name}: {cmdline.strip()}")
    return {"mounts": mounts, "netns": netns, "veths": veths, "processes": processes}


# --- the relay to the Debian mirror ----------------------------------------------------


def relay(listen: str, target: str, port: int = 80) -> None:
    """Forward LISTEN:PORT to TARGET:PORT, byte for byte, until killed."""
    server = socket.create_server((listen, port), reuse_port=False)

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def serve(client: socket.socket) -> None:
        try:
            upstream = socket.create_connection((target, port), timeout=30)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        threads = [threading.Thread(target=pipe, args=pair, daemon=True)
                   for pair in ((client, upstream), (upstream, client))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        client.close()
        upstream.close()

    while True:
        client, _ = server.accept()
        threading.Thread(target=serve, args=(client,), daemon=True).start()


# --- the built-in host and its mail account --------------------------------------------


def sandbox_password() -> str:
    """The built-in host's test mail password: generated once, kept outside the repo."""
    path = CACHE_DIR / "secrets" / f"{SANDBOX_USER}.password"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(18) + "\n")
    return path.read_text().strip()


def sandbox_password_file() -> str:
    sandbox_password()
    return str(CACHE_DIR / "secrets" / f"{SANDBOX_USER}.password")


def ensure_builtin(name: str = BUILTIN_NAME, suite: str = DEFAULT_SUITE) -> Host:
    host = load(name)
    if not (host and is_running(host) and host.suite == suite):
        if host:
            log(f"host {name} is not running (or is another suite): recreating it bare")
        host = create(name, suite=suite, persistent=True)
    if not _pid_matches(host.dns_pid, "harness.sandbox dns"):
        start_name_server(host)
    return host


def zone_file(host: Host) -> Path:
    """The zone the built-in host's name server serves (records.py's output, and its PTR)."""
    return host.directory / "zone"


def start_name_server(host: Host) -> None:
    """A name server on the host side of HOST's veth (port 53), serving zone_file(host) as it is
    written: the DNS the built-in inventory's checks (dns_server) and the host's own runs ask."""
    zone_file(host).touch()
    with open(host.directory / "dns.log", "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "harness.sandbox", "dns", host.gateway, str(zone_file(host))],
            cwd=Path(__file__).resolve().parent.parent, stdin=subprocess.DEVNULL,
            stdout=log_file, stderr=log_file, start_new_session=True,
        )
    host.dns_pid = process.pid
    host.save()


def status(name: str = BUILTIN_NAME) -> dict:
    host = load(name)
    info = {
        "name": name,
        "running": bool(host and is_running(host)),
        "hostname": SANDBOX_HOSTNAME,
        "domain": SANDBOX_DOMAIN,
        "user": SANDBOX_USER,
        "password": sandbox_password(),
        "address": host.address if host else None,
        "ssh_port": 22,
        "ssh_user": "root",
        "ssh_key": str(ssh_key()),
        "suite": host.suite if host else None,
    }
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.sandbox", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["up", "down", "status", "reap", "relay", "dns"])
    parser.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--name", default=BUILTIN_NAME)
    parser.add_argument("--suite", default=DEFAULT_SUITE, choices=sorted(SUITES))
    parser.add_argument("--json", action="store_true", help="print status as one JSON object")
    options = parser.parse_args(argv)
    try:
        if options.command == "relay":
            relay(*options.args)
        elif options.command == "dns":
            from harness.dns_server import serve_zone_file

            serve_zone_file(*options.args)
        elif options.command == "up":
            host = ensure_builtin(options.name, options.suite)
            print(f"{host.name} is up: ssh -i {host.ssh_key} root@{host.address}")
        elif options.command == "down":
            print(f"{options.name} destroyed" if destroy(options.name) else f"{options.name} was not up")
        elif options.command == "reap":
            with locked():
                print("\n".join(reap_leftovers()) or "nothing to reap")
        elif options.command == "status":
            info = status(options.name)
            if options.json:
                print(json.dumps(info))
            else:
                for key, value in info.items():
                    print(f"{key:10} {value}")
    except SandboxError as error:
        print(f"sandbox: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
