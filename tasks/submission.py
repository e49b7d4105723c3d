"""Mail submission: ofmipd on 127.0.0.1:26, in one of the submission modes.

A mode says who does SMTP AUTH behind stunnel; each is a small object of the same
shape: the program tcpserver runs and the files it needs. Applying a mode writes its
files, removes every other mode's, rewrites the ofmipd service's run script and
restarts that one service; the builds of both ofmipds are already on the host.
The host records the active mode in /var/lib/qmailhost/submission-mode.
"""

from __future__ import annotations

from dataclasses import dataclass

from tasks import daemontools, ops, tcprules
from tasks.checkpassword import SERVICE_GROUP
from tasks.facts import MODE_FILE
from tasks.platform import Platform
from tasks.settings import SUBMISSION_MODES, Settings, SettingsError
from tasks.templates import render

SERVICE = "qmail-ofmipd"
USER = "ofmipd"


@dataclass(frozen=True)
class Mode:
    name: str
    description: str

    def spamdyke_config(self, platform: Platform) -> str:
        return f"{platform.config_dir}/spamdyke-ofmipd.conf"

    def program(self, platform: Platform, settings: Settings) -> str:
        if self.name == "spamdyke":
            return f"{platform.spamdyke} -f {self.spamdyke_config(platform)} {platform.ofmipd(with_auth=False)}"
        return f"{platform.ofmipd(with_auth=True)} '' {settings.hostname} {platform.checkpassword} /bin/true"

    def files(self, platform: Platform) -> dict[str, str]:
        """The files this mode needs: path -> content."""
        if self.name == "spamdyke":
            return {self.spamdyke_config(platform): render(
                "spamdyke/ofmipd.conf", checkpassword=platform.checkpassword, control_dir=platform.control_dir)}
        return {}


MODES = {
    "ofmipd": Mode("ofmipd", "ofmipd built with the SMTP AUTH patch does AUTH itself"),
    "spamdyke": Mode("spamdyke", "spamdyke does AUTH with checkpassword in front of stock ofmipd"),
    "tmda": Mode("tmda", "TMDA's tmda-ofmipd does AUTH (NetBSD only)"),
}
assert tuple(MODES) == SUBMISSION_MODES


def mode_for(settings: Settings, platform: Platform) -> Mode:
    if settings.submission not in platform.submission_modes:
        raise SettingsError("submission", f"mode {settings.submission!r} is not available on {platform.name} "
                            "(TMDA needs Python 2, which Debian no longer ships)",
                            f"use one of: {', '.join(platform.submission_modes)}")
    return MODES[settings.submission]


def user(platform: Platform) -> None:
    ops.group(name=f"Create group {SERVICE_GROUP}", group=SERVICE_GROUP)
    ops.user(name=f"Create user {USER}", user=USER, group=SERVICE_GROUP, system=True,
             home="/nonexistent", shell=platform.nologin)


def configure(platform: Platform, settings: Settings, mode: Mode) -> None:
    cdb = tcprules.rules(platform, "ofmip", render("tcprules/ofmip.rules", port=settings.ofmipd_port))
    wanted = mode.files(platform)
    for other in MODES.values():
        for path in other.files(platform):
            if path not in wanted:
                ops.absent_file(name=f"Remove {path} (mode {other.name})", path=path)
    for path, content in wanted.items():
        ops.whole_file(name=f"Write {path}", dest=path, content=content)
    run = render("daemontools/qmail-ofmipd.run", port=settings.ofmipd_port, tcprules=cdb,
                 submission_port=settings.submission_port, mode=mode.name, description=mode.description,
                 hostname=settings.hostname, connections=settings.submission_connections,
                 program=mode.program(platform, settings))
    daemontools.service(platform, SERVICE, run, start_inputs=[])
    ops.whole_file(name="Record the submission mode", dest=MODE_FILE, content=mode.name + "\n")
