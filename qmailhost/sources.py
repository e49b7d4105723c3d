"""Sources: pinned upstream release files, fetched on the laptop and verified.

Each component's release file is downloaded with requests into the laptop's distfile
cache, checked against its pinned SHA512 and only then uploaded to the host, so a
rebuild after a disk failure does not depend on upstream sites still being there.
Inventory data (``sources``) can override a component's version, URL and checksum;
a distfile cache named explicitly (``distfiles`` or $QMAILHOST_DISTFILES) may carry
a SHA512SUMS file whose sums override the pins for the files it lists.
A checksum mismatch is refused before anything is installed.

The status check ``upstream_releases`` (run from the laptop only, off with
``check_upstream_releases``) asks each pin's upstream (``UPSTREAMS``) for its newest release
and warns when the version in use (after the inventory's overrides) is behind it.
"""

from __future__ import annotations

import hashlib
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from pyinfra import logger
from pyinfra.api.exceptions import PyinfraError

from qmailhost.component import Setting
from qmailhost.settings import SettingsError, boolean


@dataclass(frozen=True)
class Distfile:
    component: str
    version: str
    filename: str
    url: str
    sha512: str
    size: int | None = None
    pinned_by: str = "qmailhost's pins"


@dataclass(frozen=True)
class Pin:
    """A component's release file: where it is for any VERSION, and the sums of the pinned one."""

    component: str
    version: str
    filename: str  # with {version}
    url: str  # with {version}
    sha512: str
    size: int

    def distfile(self, version: str | None = None, **changes) -> Distfile:
        version = version or self.version
        pinned = version == self.version
        return Distfile(self.component, version, self.filename.format(version=version),
                        self.url.format(version=version), self.sha512 if pinned else "",
                        self.size if pinned else None, **changes)


# Checksums from NetBSD pkgsrc's distinfo files (see shared/upstream.md).
_PINS = (
    Pin("notqmail", "1.08", "notqmail-{version}.tar.gz",
        "https://github.com/notqmail/notqmail/releases/download/notqmail-{version}/notqmail-{version}.tar.gz",
        "eca97f74a20522e85435fa76015a72adcc040e1acc401cbdbd7f55f41a720fabc6f251e606ff1d236e44de295f066538"
        "ec42aca415b4344c1cd15964f38c7085", 225713),
    # Frederik Vermeulen's qmail-tls patch for notqmail 1.08 (its home: inoa.net/qmail-tls/).
    # No published checksum was found: this pin is the SHA512 of the patch as the notqmail
    # repository carries it (branch patches/history/smtp-tls: `git diff bf692cf bff4ee9`,
    # the 1.08 release commit and the patch's merge onto it). A file fetched from the home
    # page may differ: compare, then set sources.qmail-tls-patch.sha512 (README).
    Pin("qmail-tls-patch", "20231230", "notqmail-1.08-tls-{version}.patch",
        "https://inoa.net/qmail-tls/notqmail-1.08-tls-{version}.patch",
        "416b15e10dd429aedd9f75666a0fd994e445fff3572c707853bbf5ce1c7a9da71645aee6d8e4418331a8e2351d3310"
        "696843a5cfe2d4c1e5f76be38050882cfc", 42543),
    Pin("mess822", "0.58", "mess822-{version}.tar.gz", "http://cr.yp.to/software/mess822-{version}.tar.gz",
        "5fb30f06dfa08f60dc8760f9c5d692e59397ff848441bc94313a079bac8fb53b779133b48abae9b487dff6fbb277d5"
        "210a9690a138366bf4d34f052d661be65e", 64287),
    Pin("mess822-auth-patch", "2004", "mess822-smtp-auth-patch.txt",
        "http://qmail.gurus.org/mess822-smtp-auth-patch.txt",
        "6c8c3317fee977f091245f428225b34fc6a229814a6f4fee59249407ae3367afae7feff62c324d93b19b900fac03bb"
        "b7f28dff12f36995fc7c20c0ae87afeac3", 30031),
    Pin("checkpassword", "0.90", "checkpassword-{version}.tar.gz",
        "http://cr.yp.to/checkpwd/checkpassword-{version}.tar.gz",
        "301d574c9f2c4c7fef6afb98818f424a43f644e456c6268234e73da898710b0f4b6797a80d240c270c5319398574349"
        "bedf6a2c9757e432f293f85ec8c01f51f", 15631),
    Pin("spamdyke", "5.0.1", "spamdyke-{version}.tgz", "http://www.spamdyke.org/releases/spamdyke-{version}.tgz",
        "a022c8a8d4a8d74f5249f8e2d901d3de423ee853bbaffaf7e86cece1d19880d9039135892ef6ccb8a2a0fb11532c48"
        "7402dc97a8dd6d89c9de431752c55f6eb9", 383720),
)
RELEASES: dict[str, Pin] = {pin.component: pin for pin in _PINS}
PINS: dict[str, Distfile] = {pin.component: pin.distfile() for pin in _PINS}  # the pinned release files


class DistfileError(PyinfraError):
    """A distfile that cannot be had or does not match its checksum (one line)."""


def resolve(overrides: dict, cache: Path, explicit_cache: bool) -> dict[str, Distfile]:
    """The distfile of every component, after inventory overrides and SHA512SUMS."""
    check_overrides(overrides)
    distfiles = in_use(overrides)
    sums_file = cache / "SHA512SUMS"
    if explicit_cache and sums_file.exists():
        sums = _read_sums(sums_file)
        for name, distfile in distfiles.items():
            if distfile.filename in sums and sums[distfile.filename] != distfile.sha512:
                distfiles[name] = replace(distfile, sha512=sums[distfile.filename], size=None,
                                          pinned_by=str(sums_file))
        overridden = [d.filename for d in distfiles.values() if d.pinned_by == str(sums_file)]
        if overridden:
            logger.warning(
                f"!!! qmailhost: {sums_file} OVERRIDES the pinned SHA512 of {', '.join(overridden)}: "
                "these are not the upstream release files")
    return distfiles


def in_use(overrides: dict) -> dict[str, Distfile]:
    """The distfile of every component after the inventory's overrides (its version is the one
    built; a distfile cache's SHA512SUMS changes sums only, never a version)."""
    return {name: _override(release, overrides.get(name) or {}) for name, release in RELEASES.items()}


def check_overrides(overrides: dict) -> None:
    """Every override names a component and holds what _override accepts (or SettingsError)."""
    unknown = sorted(set(overrides) - set(PINS))
    if unknown:
        raise SettingsError("sources", f"unknown component {unknown[0]!r}", f"use one of: {', '.join(PINS)}")
    for name, override in overrides.items():
        _override(RELEASES[name], override or {})


def _override(pin: Pin, override: dict) -> Distfile:
    setting = f"sources.{pin.component}"
    if not isinstance(override, dict):
        raise SettingsError(setting, "must be a mapping", "give {\"version\": ..., \"url\": ..., \"sha512\": ...}")
    unknown = sorted(set(override) - {"version", "url", "sha512"})
    if unknown:
        raise SettingsError(setting, f"unknown key {unknown[0]!r}", "use version, url and sha512")
    if not override:
        return pin.distfile()
    version = str(override.get("version", pin.version))
    sha512 = override.get("sha512")
    if version != pin.version and not sha512:
        raise SettingsError(setting, f"no pinned checksum for version {version}",
                            f"set {setting}.sha512 to the release file's SHA512")
    if sha512 is not None and not (isinstance(sha512, str) and len(sha512) == 128
                                   and all(c in "0123456789abcdef" for c in sha512)):
        raise SettingsError(setting, "sha512 is not 128 lower-case hex digits", "paste the full SHA512 sum")
    distfile = pin.distfile(version, pinned_by="the inventory")
    if "url" in override:
        # The file's name is the URL's last segment, and it reaches the build's command line on the host.
        url = override["url"]
        if not isinstance(url, str) or not re.fullmatch(r"(https?|file)://[^\s]*/[A-Za-z0-9][A-Za-z0-9._+-]*", url):
            raise SettingsError(f"{setting}.url", f"{url!r} does not end in a plain file name",
                                "give the release file's URL, ending in a name such as spamdyke-5.0.1.tgz")
        distfile = replace(distfile, url=url, filename=url.rsplit("/", 1)[-1])
    return replace(distfile, sha512=sha512 or distfile.sha512, size=None if sha512 else distfile.size)


def _read_sums(path: Path) -> dict[str, str]:
    sums = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and len(parts[0]) == 128:
            sums[parts[1].lstrip("*")] = parts[0]
    return sums


def sha512_of(path: Path) -> str:
    digest = hashlib.sha512()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(distfile: Distfile, cache: Path) -> Path:
    """The verified local copy of DISTFILE, downloaded into CACHE when missing."""
    path = cache / distfile.filename
    if not path.exists():
        _download(distfile, cache, path)
    actual = sha512_of(path)
    if actual != distfile.sha512:
        raise DistfileError(
            f"distfile {path}: SHA512 {actual[:16]}… does not match {distfile.sha512[:16]}… "
            f"(pinned by {distfile.pinned_by}); delete the file to download it again, or set "
            f"sources.{distfile.component}.sha512 if you trust this file")
    return path


def _download(distfile: Distfile, cache: Path, path: Path) -> None:
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DistfileError(f"distfile cache {cache} cannot be created ({error.strerror}); "
                            "set distfiles or $QMAILHOST_DISTFILES to a writable directory") from None
    import requests  # only when a download is needed: a converged run never pays for the import

    partial = path.with_name(path.name + ".part")
    logger.info(f"qmailhost: downloading {distfile.url}")
    try:
        with requests.get(distfile.url, stream=True, timeout=30) as response:
            response.raise_for_status()
            with open(partial, "wb") as handle:
                for block in response.iter_content(1 << 16):
                    handle.write(block)
    except (requests.RequestException, OSError) as error:
        partial.unlink(missing_ok=True)
        reason = str(error).splitlines()[0][:160]
        raise DistfileError(
            f"distfile {distfile.filename} cannot be downloaded from {distfile.url} ({reason}); "
            f"put the file into {cache} by hand or point sources.{distfile.component}.url at a mirror"
        ) from None
    os.replace(partial, path)


# --- the status check: is a pin behind its upstream's newest release? --------------------------


@dataclass(frozen=True)
class Upstream:
    """Where a pin's releases are announced. URL: what the laptop asks; in its answer (FIELD: that
    field of a JSON answer, else the whole page) PATTERN's ``version`` group names each release;
    PAGE: where a person looks. BASE: a patch made for a release of another pin: only the names
    whose ``base`` group is that pin's version in use, or a newer one, count."""

    url: str
    pattern: str
    page: str
    field: str | None = None
    base: str | None = None


_VERSION = r"[0-9]+(?:\.[0-9]+)+"
# Every pin: where to ask, or None for a final release (never asked).
UPSTREAMS: dict[str, Upstream | None] = {
    "notqmail": Upstream("https://api.github.com/repos/notqmail/notqmail/releases/latest",
                         rf"notqmail-(?P<version>{_VERSION})", "https://github.com/notqmail/notqmail/releases",
                         field="tag_name"),
    "qmail-tls-patch": Upstream("https://inoa.net/qmail-tls/",
                                rf"notqmail-(?P<base>{_VERSION})-tls-(?P<version>[0-9]{{8}})\.patch",
                                "https://inoa.net/qmail-tls/", base="notqmail"),
    "mess822": None,  # djb's last release (1998)
    "mess822-auth-patch": None,  # 2004, never updated since
    "checkpassword": None,  # djb's last release
    "spamdyke": Upstream("https://www.spamdyke.org/", rf"spamdyke-(?P<version>{_VERSION})\.tgz",
                         "https://www.spamdyke.org/"),
}
UPSTREAM_TIMEOUT = 5  # seconds per request
USER_AGENT = "qmailhost (status check upstream_releases)"

UPSTREAM_SETTINGS = (
    Setting("check_upstream_releases", True, boolean("check_upstream_releases"),
            "ask each pinned source's upstream for a newer release (the check `upstream_releases`, from the laptop)"),
)


class _Unreached(Exception):
    """An upstream that gave no answer to read: the message says why (one line)."""


def _number(version: str) -> tuple[int, ...]:
    """VERSION compared as numbers: 1.10 is newer than 1.9."""
    return tuple(int(part) for part in re.findall(r"[0-9]+", version))


def _newest(upstream: Upstream, used: dict[str, Distfile]) -> re.Match | None:
    """The newest release UPSTREAM names (None: none for the version of its BASE in use), or _Unreached."""
    import requests  # only when the check asks: a deploy never pays for the import

    try:
        response = requests.get(upstream.url, timeout=UPSTREAM_TIMEOUT, headers={"User-Agent": USER_AGENT})
        response.raise_for_status()
        text = response.text if upstream.field is None else response.json()[upstream.field]
    except requests.Timeout:
        raise _Unreached(f"no answer within {UPSTREAM_TIMEOUT} s") from None
    except requests.HTTPError as error:
        raise _Unreached(f"HTTP {error.response.status_code}") from None
    except requests.ConnectionError as error:
        raise _Unreached(_connection_failure(error)) from None
    except ValueError:  # (requests' JSONDecodeError is one)
        raise _Unreached("its answer is not JSON") from None
    except requests.RequestException as error:
        raise _Unreached(type(error).__name__) from None
    except (KeyError, TypeError):
        raise _Unreached(f"its answer has no {upstream.field!r}") from None
    found = list(re.finditer(upstream.pattern, str(text)))
    if not found:
        raise _Unreached("its answer names no release")
    if upstream.base:
        floor = _number(used[upstream.base].version)
        found = [match for match in found if _number(match["base"]) >= floor]
    return max(found, key=lambda match: _number(match["version"]), default=None)


def _connection_failure(error: Exception) -> str:
    text = str(error)
    errno = re.search(r"\[Errno -?[0-9]+\] ([^'\")\]]+)", text)
    if "NameResolutionError" in text:
        return "its name does not resolve" + (f" ({errno[1].strip()})" if errno else "")
    if errno:
        return errno[1].strip()
    return "certificate not trusted" if "CERTIFICATE_VERIFY_FAILED" in text else type(error).__name__


def check_upstream_releases(target):
    """No pinned source is behind its upstream's newest release (asked from the laptop, side by side)."""
    from qmailhost.checks import OK, SKIPPED, WARNING  # (checks imports this module)

    if target.on_host:
        return SKIPPED, "asks upstream from the laptop only"
    if not target.settings.check_upstream_releases:
        return SKIPPED, "check_upstream_releases is off"
    used = in_use(target.settings.sources)
    asked = {name: upstream for name, upstream in UPSTREAMS.items() if upstream is not None}

    def ask(upstream: Upstream) -> re.Match | None | _Unreached:
        try:
            return _newest(upstream, used)
        except _Unreached as failure:
            return failure

    with ThreadPoolExecutor(max_workers=max(1, len(asked))) as pool:
        answers = dict(zip(asked, pool.map(ask, asked.values()), strict=True))
    behind, current, unreached = [], [], []
    for name, newest in answers.items():
        upstream, version = asked[name], used[name].version
        if isinstance(newest, _Unreached):
            unreached.append(f"{name}'s upstream {urlsplit(upstream.url).netloc} not reached: {newest}")
        elif newest is not None and _number(newest["version"]) > _number(version):
            pinned = "pinned" if used[name] == PINS[name] else f"pinned by {used[name].pinned_by}"
            named = f" ({newest[0]})" if upstream.base else ""
            behind.append(f"{name} {version} {pinned}, {newest['version']} released{named}: see {upstream.page}")
        else:
            current.append(f"{name} {version}")
    if behind:
        return WARNING, "; ".join(behind + unreached)
    if unreached:
        return SKIPPED, "; ".join(unreached)
    final = [f"{name} {used[name].version}" for name in used if name not in asked]
    return OK, "; ".join([*([f"{', '.join(current)} current"] if current else []),
                          *([f"{', '.join(final)}: final releases"] if final else [])])
