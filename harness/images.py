"""Deployed images: throwaway hosts that start where a default deploy of this revision left off.

Most end-to-end suites test what happens on a running host (settings changed, attacks,
checks, backups), not the bare deploy; the bare deploy and its dry run have suites of
their own (test_mailhost, test_trust, the drills in test_recovery, test_dkim, test_acme),
which never start from an image. A deployed image is made once per revision of everything
a deploy reads (deploy.py, tasks/, files/, qmailhost/, the sandbox inventory, the distfile
sums, the golden tree): a bare host of SUITE gets the sandbox inventory's default deploy,
is switched off, and what its disk gained is kept as an overlay layer
(harness/sandbox.freeze). A host made from it boots as that host would after a power cut
(svscan starts every service; the nftables caps are not loaded until the next deploy puts
them back, as on a host without systemd), and each suite's own deploy then converges it to
the suite's settings. Saves a bare deploy (about a minute on 2 cores) per suite.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from harness import sandbox
from harness.pyinfra_cli import LOCAL_MIRROR, PROJECT, pyinfra

IMAGES = sandbox.CACHE_DIR / "images"
WHAT_A_DEPLOY_READS = ("deploy.py", "inventory/sandbox.py", "tasks", "files", "qmailhost")


def revision(suite: str) -> str:
    """A digest of everything a default deploy of SUITE reads, the golden tree included."""
    digest = hashlib.sha256(suite.encode())
    for name in WHAT_A_DEPLOY_READS:
        top = PROJECT / name
        for path in sorted([top] if top.is_file() else top.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and not path.name.endswith(".pyc"):
                digest.update(str(path.relative_to(PROJECT)).encode() + b"\0" + path.read_bytes() + b"\0")
    for extra in (LOCAL_MIRROR / "SHA512SUMS", sandbox.golden_tree(suite) / ".qmailhost-ready"):
        if extra.exists():
            digest.update(extra.read_bytes() + str(extra.stat().st_mtime_ns).encode())
    return digest.hexdigest()[:20]


def deployed(suite: str = sandbox.DEFAULT_SUITE) -> Path:
    """The deployed image of SUITE for this revision, made now if there is none (one bare
    deploy); images of other revisions are removed."""
    image = IMAGES / f"deployed-{suite}-{revision(suite)}"
    if image.is_dir():
        return image
    with sandbox.locked(f"image-{suite}"):
        if image.is_dir():
            return image
        for old in IMAGES.glob(f"deployed-{suite}-*") if IMAGES.exists() else []:
            shutil.rmtree(old, ignore_errors=True)
        sandbox.log(f"making the deployed {suite} image {image.name} (one bare deploy)")
        host = sandbox.create(f"image-{suite}-{os.getpid()}", suite=suite)
        try:
            pyinfra(host, data={"verify_after_deploy": False})
        except BaseException:
            sandbox.destroy(host.name)
            raise
        return sandbox.freeze(host, image)


def create(name: str, suite: str = sandbox.DEFAULT_SUITE) -> sandbox.Host:
    """A host NAME of SUITE that starts deployed (see the module's header)."""
    return sandbox.create(name, suite=suite, lower=[deployed(suite)])
