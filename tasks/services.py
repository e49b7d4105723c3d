"""Service backends: one interface, chosen once from the platform's data.

``backend(platform)`` returns the module that runs services on that platform:
tasks/daemontools.py (Debian: run scripts under svscan) or tasks/rcd.py (NetBSD:
qmail-run's and stunnel's rc.d scripts, configured in /etc/rc.conf.d). Each offers:

- ``supervisor(platform)``: what must run before any service (svscan; or stopping the
  base system's MTA so port 25 is free);
- ``qmail_send(platform, start_inputs, reload_inputs)``;
- ``smtpd(platform, settings, cdb, spamdyke_conf)``: port 25;
- ``submission(platform, settings, mode, cdb)``: the active mode's listener behind stunnel;
- ``stunnel(platform, config_path, start_inputs)``: port 587;
- ``settle(platform)``: once every service is declared, wait until new ones run.

Each service restarts only when what it reads at start changed (its inputs).
"""

from __future__ import annotations

from types import ModuleType

from tasks.platform import Platform


def backend(platform: Platform) -> ModuleType:
    from tasks import daemontools, rcd

    return {"daemontools": daemontools, "rcd": rcd}[platform.service_backend]
