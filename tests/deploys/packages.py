"""A deploy of the base packages only: the harness's proof, and the benchmark floor."""

from pyinfra import host

from qmailhost.backends import packages
from qmailhost.platform import detect
from qmailhost.settings import Settings

Settings.from_host_data(host.data.dict(), inventory_name=host.name)
packages.install(detect(), Settings.from_host_data(host.data.dict(), inventory_name=host.name))
