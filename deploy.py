"""qmailhost: a personal qmail mail host, as code. The table of contents.

    pyinfra inventory/<site>.py deploy.py [--dry --diff]

Settings are read and validated once (tasks/settings.py) before any operation; then
each component's module adds its operations in order.
"""

from pyinfra import host

from tasks import packages
from tasks.platform import detect
from tasks.settings import Settings

settings = Settings.from_host_data(host.data.dict(), inventory_name=host.name)
platform = detect()

packages.install(platform)
