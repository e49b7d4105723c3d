"""Packages: what the components need from the platform's package system, installed by
its backend (backends/apt.py on Debian, backends/pkgsrc.py on NetBSD: pkgin binary
packages and pkgsrc builds with options). Each component declares its own (``Needs``);
the registry merges them, so no list of packages lives here.
"""

from qmailhost import registry
from qmailhost.platform import Platform


def install(platform: Platform, settings) -> None:
    """Everything the components need on PLATFORM under SETTINGS."""
    registry.package_backend(platform.package_manager).install(platform, registry.needs(platform, settings))
