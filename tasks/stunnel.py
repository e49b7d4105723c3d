"""stunnel: STARTTLS on the submission port (587), TLS 1.2 or newer, in front of
ofmipd on 127.0.0.1:26. Runs under daemontools in the foreground; it reads the key
as root, then runs as nobody. Restarted when its config or the TLS pair changes.
"""

from tasks import daemontools, ops, tls
from tasks.platform import Platform
from tasks.settings import Settings
from tasks.templates import render


def configure(platform: Platform, settings: Settings, tls_fingerprint: str) -> None:
    cert, key = tls.paths(platform)
    config_path = f"{platform.config_dir}/stunnel.conf"
    config = render("stunnel/stunnel.conf", submission_port=settings.submission_port,
                    ofmipd_port=settings.ofmipd_port, cert=cert, key=key)
    ops.whole_file(name="Write stunnel's config", dest=config_path, content=config)
    run = render("daemontools/stunnel.run", stunnel=platform.stunnel, config=config_path)
    daemontools.service(platform, "stunnel", run, start_inputs=[config, tls_fingerprint])
