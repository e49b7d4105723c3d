"""stunnel: TLS for submission in front of the submission mode's listener (tasks/submission.py:
ofmipd on 127.0.0.1:26; tmda-ofmipd on 127.0.0.1:8025): STARTTLS on 587, and implicit
TLS on 465 (RFC 8314; ``submissions_port``, null turns it off), both under the one TLS
policy (tasks/tls.py). It runs as an account of its own, the one its package makes
(Debian's stunnel4: stunnel4; pkgsrc's security/stunnel: stunnel), which no other daemon
is, in the key's group qmailtls. Under daemontools it runs in the foreground, so from its
start (setpriv: never root, only allowed to bind ports below 1024); under rc.d it
detaches, reading the key as root before its own setuid. Restarted by a deploy when its
config or the TLS pair changes; reloaded (HUP: sessions stay up) when a renewal or a
restore replaces the pair (restarted under rc.d). Its status check: 587 offers STARTTLS
and no AUTH before it.
"""

from dataclasses import dataclass

from pyinfra.api import deploy

from qmailhost import ops
from qmailhost.backends import services
from qmailhost.checks import ERROR, OK
from qmailhost.component import Component, Listener, Needs, PairReader, Setting, TlsPort
from qmailhost.files import render
from qmailhost.platform import Platform
from qmailhost.settings import Settings, optional_port, port
from tasks import dns, tls


@dataclass(frozen=True)
class Paths:
    program: str
    config: str
    # It runs as this user, which its package makes (no other daemon is it), and the key's
    # group (a reload re-reads the pair).
    user: tuple[str, str]
    foreground: bool  # daemontools supervises it; rc.d expects it to detach
    # How it gets there. "setpriv": started so by its run script, never root, with only the
    # capability to bind ports below 1024, which a reload (HUP) needs to bind them again
    # (stunnel's own setuid would leave it unable to: "Permission denied" and no listener).
    # "setuid": stunnel's own setuid/setgid after binding (rc.d, where a new pair restarts it).
    drop: str


PATHS = {
    "debian": Paths("/usr/bin/stunnel4", "/etc/qmailhost/stunnel.conf", ("stunnel4", tls.KEY_GROUP), foreground=True,
                    drop="setpriv"),
    "netbsd": Paths("/usr/pkg/bin/stunnel", "/usr/pkg/etc/stunnel/stunnel.conf", ("stunnel", tls.KEY_GROUP),
                    foreground=False, drop="setuid"),
}


@deploy("stunnel")
def configure(platform: Platform, settings: Settings, pair: tls.Pair, mode) -> None:
    cert, key = tls.paths(platform)
    paths = PATHS[platform.name]
    user, group = paths.user
    config = render("stunnel/stunnel.conf.j2", submission_port=settings.submission_port,
                    submissions_port=settings.submissions_port, ofmipd_port=mode.upstream_port(settings),
                    cert=cert, key=key, policy=tls.policy(settings),
                    foreground="yes" if paths.foreground else "no", user=user, group=group,
                    setuid=paths.drop == "setuid")
    rewritten = ops.differs(paths.config, config) or pair.rewritten
    ops.whole_file(name="Write stunnel's config", dest=paths.config, content=config)
    services.declare(platform, services.Service(
        name="stunnel", description="TLS on the submission ports",
        run=render("stunnel/stunnel.run.j2", stunnel=paths.program, config=paths.config,
                   setpriv=(user, group) if paths.drop == "setpriv" else None),
        rcd=services.Rcd("stunnel", (("flags", paths.config),)),
        reads_at_start=(config, pair.fingerprint), rewritten=rewritten, measured=pair.measured,
    ))


def check_submission_starttls_first(target):
    """The submission port offers STARTTLS and no AUTH before it."""
    with target.smtp(target.settings.submission_port) as client:
        client.ehlo()
        offered = set(client.esmtp_features)
    if "auth" in offered:
        return ERROR, "AUTH is offered before STARTTLS: passwords could cross in the clear"
    if "starttls" not in offered:
        return ERROR, "STARTTLS is not offered"
    return OK, "offers STARTTLS, no AUTH before it"


NEEDS = {"debian": Needs(packages=("stunnel4",)), "netbsd": Needs(packages=("stunnel",))}


COMPONENT = Component(
    name="stunnel",
    needs=lambda platform, _settings: NEEDS[platform.name],
    settings=(
        Setting("submission_port", 587, port("submission_port"), "stunnel, STARTTLS", port=True),
        Setting("submissions_port", 465, optional_port("submissions_port"),
                "stunnel, implicit TLS (RFC 8314); `null` turns it off", port=True),
    ),
    listeners=lambda settings: (
        Listener("stunnel", "stunnel", "submission (STARTTLS)", settings.submission_port, public=True),),
    tls_ports=lambda settings: (
        TlsPort(settings.submission_port, "submission, STARTTLS", starttls=True),
        *([TlsPort(settings.submissions_port, "submission, implicit TLS", starttls=False)]
          if settings.submissions_port else []),
    ),
    checks=(check_submission_starttls_first,),
    dns_records=lambda settings, _state: dns.service_records(
        settings, (("submission", settings.submission_port), ("submissions", settings.submissions_port)), "submission"),
    # A deploy restarts it for a new pair; a renewal or restore reloads it. pkgsrc's rc.d script
    # has no reload command: restarted there.
    pair_readers=(PairReader("stunnel", stamp="restart", rcd_reload=False),),
)
