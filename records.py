"""The DNS records this mail host needs, printed in zone-file form; nothing on the host changes.

    pyinfra inventory/<site>.py records.py

Per domain: MX, the host's A/AAAA, SPF, DKIM (each key's public half, read from the host;
long values split into strings of at most 255 characters), DMARC, TLS-RPT and the SRV
records mail clients look for (RFC 6186, 8314). Every component declares its own
(tasks/dns.py collects them); the status checks dns_* compare DNS with this same list.
Paste them into the zones (the names are absolute), then run verify.py.
"""

from pyinfra import host

from qmailhost import facts
from qmailhost.platform import detect
from qmailhost.settings import Settings
from tasks import dns

settings = Settings.from_host_data(host.data.dict(), inventory_name=host.name)
platform = detect()
facts.watch(settings, platform)
print(dns.zone_text(settings, dns.records(settings, facts.host_state())), flush=True)
