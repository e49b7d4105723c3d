"""stunnel: STARTTLS on the submission port (587), TLS 1.2 or newer, in front of the
submission mode's listener (submission/: ofmipd on 127.0.0.1:26; tmda-ofmipd on
127.0.0.1:8025). Under daemontools it runs in the foreground, under rc.d it detaches;
it reads the key as root, then drops to an unprivileged user. Restarted when its config
or the TLS pair (tls/) changes. Its status checks: STARTTLS is offered and AUTH is not
before it; TLS below 1.2 is refused.
"""

import ssl
from dataclasses import dataclass

from qmailhost import tls
from qmailhost.backends import services
from qmailhost.core import ops
from qmailhost.core.checks import ERROR, OK, SKIPPED, tls_context
from qmailhost.core.component import Component, Listener, Setting
from qmailhost.core.platform import Platform
from qmailhost.core.settings import Settings, port
from qmailhost.core.templates import render


@dataclass(frozen=True)
class Paths:
    program: str
    config: str
    user: tuple[str, str]  # it drops to this user and group once the key is read
    foreground: bool  # daemontools supervises it; rc.d expects it to detach


PATHS = {
    "debian": Paths("/usr/bin/stunnel4", "/etc/qmailhost/stunnel.conf", ("nobody", "nogroup"), foreground=True),
    "netbsd": Paths("/usr/pkg/bin/stunnel", "/usr/pkg/etc/stunnel/stunnel.conf", ("stunnel", "stunnel"),
                    foreground=False),
}


def configure(platform: Platform, settings: Settings, pair: tls.Pair, mode) -> None:
    cert, key = tls.paths(platform)
    paths = PATHS[platform.name]
    user, group = paths.user
    config = render("stunnel/stunnel.conf", submission_port=settings.submission_port,
                    ofmipd_port=mode.upstream_port(settings), cert=cert, key=key,
                    foreground="yes" if paths.foreground else "no", user=user, group=group)
    rewritten = ops.differs(paths.config, config) or pair.rewritten
    ops.whole_file(name="Write stunnel's config", dest=paths.config, content=config)
    services.declare(platform, services.Service(
        name="stunnel", description="STARTTLS on the submission port",
        run=render("stunnel/stunnel.run", stunnel=paths.program, config=paths.config),
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


def check_old_tls_refused(target):
    """TLS below 1.2 is refused on the submission port."""
    try:
        with target.submission(tls_context(maximum=ssl.TLSVersion.TLSv1_1)) as client:
            version = client.sock.version()
    except (ssl.SSLError, ConnectionResetError) as error:
        if "NO_PROTOCOLS_AVAILABLE" in str(error) or "NO_SUPPORTED_VERSIONS" in str(error):
            return SKIPPED, "this laptop's OpenSSL cannot offer TLS 1.0 or 1.1"
        return OK, f"TLS 1.0 and 1.1 refused ({getattr(error, 'reason', None) or type(error).__name__})"
    return ERROR, f"the submission port accepts {version}"


COMPONENT = Component(
    name="stunnel",
    settings=(Setting("submission_port", 587, port("submission_port"), "stunnel, STARTTLS", port=True),),
    listeners=lambda settings: (
        Listener("stunnel", "stunnel", "submission (STARTTLS)", settings.submission_port, public=True),),
    checks=(check_submission_starttls_first, check_old_tls_refused),
)
