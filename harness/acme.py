"""A real ACME server for tests: Debian's pebble (Let's Encrypt's test CA) with
pebble-challtestsrv as its DNS, on the laptop's side of a sandbox host's veth.

- ``Pebble(gateway, workdir)``: challtestsrv answers DNS on 127.0.0.1 (every name without
  a record of its own gets no address: ``-defaultIPv4 ""``, ``-defaultIPv6 ""``, so pebble
  never validates over IPv6 or loopback); ``add_a(name, address)`` gives the host's name its
  sandbox address. pebble listens for ACME on GATEWAY (the host side of the veth, which the
  sandbox host reaches), with its own HTTPS pair signed by a CA made here (``ca_file``: what
  the host's ACME client must trust, the setting ``acme_ca_bundle``), and validates HTTP-01
  on port 80 of the address DNS gives. Its issuing root, which pebble makes anew each start,
  is ``root()`` (from the management interface).
- ``orders()``: how many new orders pebble has taken (its log), so a test can say "the CA was
  asked nothing". ``stop()`` ends both processes (by PID); ``start()`` again is a new CA.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

PEBBLE, CHALLTESTSRV = "/usr/bin/pebble", "/usr/bin/pebble-challtestsrv"


def available() -> str | None:
    """None when pebble can run here, else why not (one line)."""
    for program in (PEBBLE, CHALLTESTSRV):
        if not os.access(program, os.X_OK):
            return f"SKIPPED (no pebble): {program} is missing; run ./run setup (apt-get install pebble)"
    return None


def _free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


class Pebble:
    def __init__(self, gateway: str, workdir: Path):
        self.gateway, self.workdir = gateway, Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ca_file = self.workdir / "https-ca.pem"
        self.port, self.management_port = _free_port(gateway), _free_port(gateway)
        self.dns_port, self.dns_management_port = _free_port("127.0.0.1"), _free_port("127.0.0.1")
        self.log_file = self.workdir / "pebble.log"
        self._pebble: subprocess.Popen | None = None
        self._dns: subprocess.Popen | None = None
        self._records: dict[str, str] = {}
        self._https_pair()

    @property
    def directory(self) -> str:
        return f"https://{self.gateway}:{self.port}/dir"

    def _https_pair(self) -> None:
        """pebble's own HTTPS certificate (for its address), signed by a CA the client trusts."""
        d = self.workdir
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=qmailhost test ACME CA",
                 "-keyout", str(d / "https-ca.key"), "-out", str(self.ca_file))
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={self.gateway}",
                 "-keyout", str(d / "https.key"), "-out", str(d / "https.csr"))
        (d / "san.cnf").write_text(f"subjectAltName=IP:{self.gateway}\n")
        _openssl("x509", "-req", "-in", str(d / "https.csr"), "-CA", str(self.ca_file), "-CAkey",
                 str(d / "https-ca.key"), "-CAcreateserial", "-days", "2", "-extfile", str(d / "san.cnf"),
                 "-out", str(d / "https.pem"))

    def start(self) -> Pebble:
        self._dns = subprocess.Popen(
            [CHALLTESTSRV, "-dns01", f"127.0.0.1:{self.dns_port}", "-http01", "", "-https01", "", "-tlsalpn01", "",
             "-management", f"127.0.0.1:{self.dns_management_port}", "-defaultIPv4", "",
             "-defaultIPv6", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        config = {"pebble": {
            "listenAddress": f"{self.gateway}:{self.port}",
            "managementListenAddress": f"{self.gateway}:{self.management_port}",
            "certificate": str(self.workdir / "https.pem"), "privateKey": str(self.workdir / "https.key"),
            "httpPort": 80, "tlsPort": 443, "ocspResponderURL": "", "externalAccountBindingRequired": False}}
        (self.workdir / "pebble.json").write_text(json.dumps(config))
        env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"}
        with open(self.log_file, "ab") as log:
            self._pebble = subprocess.Popen(
                [PEBBLE, "-config", str(self.workdir / "pebble.json"), "-dnsserver", f"127.0.0.1:{self.dns_port}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        self._wait(lambda: self._get(self.directory))
        for name, address in self._records.items():
            self._wait(lambda name=name, address=address: self.add_a(name, address))
        return self

    def _wait(self, probe, seconds: float = 20) -> None:
        deadline = time.monotonic() + seconds
        while True:
            try:
                probe()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def _get(self, url: str) -> bytes:
        with urllib.request.urlopen(url, context=self._context(), timeout=10) as response:
            return response.read()

    def _dns_api(self, path: str, body: dict) -> None:
        request = urllib.request.Request(f"http://127.0.0.1:{self.dns_management_port}/{path}",
                                         data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def add_a(self, name: str, address: str) -> None:
        """NAME resolves (for pebble) to ADDRESS, also after a restart of the CA."""
        self._records[name] = address
        self._dns_api("add-a", {"host": name.rstrip(".") + ".", "addresses": [address]})

    def root(self) -> str:
        """The root pebble issues under (PEM): what a client that trusts this CA trusts."""
        return self._get(f"https://{self.gateway}:{self.management_port}/roots/0").decode()

    def orders(self) -> int:
        """New orders pebble has taken since this object first started it."""
        return self.log_file.read_text(errors="replace").count("POST /order-plz")

    def running(self) -> bool:
        return self._pebble is not None and self._pebble.poll() is None

    def stop(self) -> None:
        for process in (self._pebble, self._dns):
            if process is not None and process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.kill(process.pid, signal.SIGKILL)
                    process.wait()
        self._pebble = self._dns = None

    def __enter__(self) -> Pebble:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
