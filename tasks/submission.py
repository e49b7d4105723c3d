"""Mail submission: ofmipd on 127.0.0.1:26, in one of the submission modes.

A mode says who does SMTP AUTH behind stunnel; each is a small object of the same
shape: the program tcpserver runs (wrapper, ofmipd, its arguments), the files it
needs, the packages it adds, which listener takes submissions (ofmipd, or TMDA's
tmda-ofmipd on 8025) and whether TMDA's pieces stay. Applying a mode writes its
files, removes every other mode's, reconfigures the submission service through the
platform's service backend and restarts that one service; the ofmipd builds are
already on the host. The host records the active mode in /var/lib/qmailhost/submission-mode.
"""

from __future__ import annotations

from dataclasses import dataclass

from tasks import ops, services, tcprules
from tasks.checkpassword import SERVICE_GROUP
from tasks.facts import MODE_FILE
from tasks.platform import Platform
from tasks.settings import SUBMISSION_MODES, Settings, SettingsError
from tasks.templates import render

USER = "ofmipd"


@dataclass(frozen=True)
class Mode:
    name: str
    description: str
    listener: str = "ofmipd"  # who listens behind stunnel: "ofmipd" or TMDA's "tmda-ofmipd"
    listener_port: int | None = None  # None: the ofmipd_port setting
    packages: tuple[str, ...] = ()  # packages this mode adds (where the platform has them)
    keeps_tmda: bool = False  # every other mode retires TMDA's pieces (tasks/tmda.py)

    def spamdyke_config(self, platform: Platform) -> str:
        return f"{platform.config_dir}/spamdyke-ofmipd.conf"

    def wrapper(self, platform: Platform) -> str:
        """What runs ofmipd (spamdyke, doing AUTH), or nothing."""
        if self.name == "spamdyke":
            return f"{platform.spamdyke} -f {self.spamdyke_config(platform)}"
        return ""

    def ofmipd(self, platform: Platform) -> str:
        return platform.ofmipd(with_auth=self.name != "spamdyke")

    def ofmipd_args(self, platform: Platform, settings: Settings) -> str:
        """The AUTH-patched ofmipd's arguments: '' HOSTNAME CHECKPASSWORD TRUE (none when spamdyke does AUTH)."""
        if self.name == "spamdyke":
            return ""
        return f"'' {settings.hostname} {platform.checkpassword} {platform.true_command}"

    def program(self, platform: Platform, settings: Settings) -> str:
        parts = (self.wrapper(platform), self.ofmipd(platform), self.ofmipd_args(platform, settings))
        return " ".join(part for part in parts if part)

    def upstream_port(self, settings: Settings) -> int:
        """Where stunnel sends submissions."""
        return self.listener_port or settings.ofmipd_port

    def files(self, platform: Platform) -> dict[str, str]:
        """The files this mode needs: path -> content."""
        if self.name == "spamdyke":
            return {self.spamdyke_config(platform): render(
                "spamdyke/ofmipd.conf", checkpassword=platform.checkpassword, control_dir=platform.control_dir,
                true_command=platform.true_command)}
        return {}


MODES = {
    "ofmipd": Mode("ofmipd", "ofmipd built with the SMTP AUTH patch does AUTH itself"),
    "spamdyke": Mode("spamdyke", "spamdyke does AUTH with checkpassword in front of stock ofmipd"),
    "tmda": Mode("tmda", "TMDA's tmda-ofmipd does AUTH (NetBSD only)", listener="tmda-ofmipd",
                 listener_port=8025, packages=("tmda",), keeps_tmda=True),
}
assert tuple(MODES) == SUBMISSION_MODES


def mode_for(settings: Settings, platform: Platform) -> Mode:
    if settings.submission not in platform.submission_modes:
        raise SettingsError("submission", f"mode {settings.submission!r} is not available on {platform.name} "
                            "(TMDA needs Python 2, which Debian no longer ships)",
                            f"use one of: {', '.join(platform.submission_modes)}")
    return MODES[settings.submission]


def user(platform: Platform) -> None:
    ops.group(name=f"Create group {SERVICE_GROUP}", group=SERVICE_GROUP, tools=platform.accounts)
    ops.user(name=f"Create user {USER}", user=USER, group=SERVICE_GROUP, system=True,
             home="/nonexistent", shell=platform.nologin, tools=platform.accounts)


def configure(platform: Platform, settings: Settings, mode: Mode) -> None:
    cdb = tcprules.rules(platform, "ofmip", render("tcprules/ofmip.rules", port=settings.ofmipd_port))
    wanted = mode.files(platform)
    for other in MODES.values():
        for path in other.files(platform):
            if path not in wanted:
                ops.absent_file(name=f"Remove {path} (mode {other.name})", path=path)
    for path, content in wanted.items():
        ops.whole_file(name=f"Write {path}", dest=path, content=content)
    services.backend(platform).submission(platform, settings, mode, cdb)
    ops.whole_file(name="Record the submission mode", dest=MODE_FILE, content=mode.name + "\n")
