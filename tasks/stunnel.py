"""stunnel: STARTTLS on the submission port (587), TLS 1.2 or newer, in front of the
submission mode's listener (ofmipd on 127.0.0.1:26; tmda-ofmipd on 127.0.0.1:8025).
Under daemontools it runs in the foreground, under rc.d it detaches; it reads the key
as root, then drops to an unprivileged user. Restarted when its config or the TLS
pair changes.
"""

from tasks import ops, services, tls
from tasks.platform import Platform
from tasks.settings import Settings
from tasks.templates import render


def configure(platform: Platform, settings: Settings, tls_fingerprint: str, mode) -> None:
    cert, key = tls.paths(platform)
    config_path = platform.stunnel_config
    user, group = platform.stunnel_user
    config = render("stunnel/stunnel.conf", submission_port=settings.submission_port,
                    ofmipd_port=mode.upstream_port(settings), cert=cert, key=key,
                    foreground="yes" if platform.stunnel_foreground else "no", user=user, group=group)
    ops.whole_file(name="Write stunnel's config", dest=config_path, content=config)
    services.backend(platform).stunnel(platform, config_path, start_inputs=[config, tls_fingerprint])
