"""The registry: finds the components (tasks/) and the backends (qmailhost/backends/) by
looking, never by a list, and collects what they declare.

A component is any module of the ``tasks`` package that defines ``COMPONENT``; a service
backend is any module of ``qmailhost.backends`` that defines ``SERVICE_BACKEND`` (its
name, which a platform's ``service_backend`` names), a package backend one that defines
``PACKAGE_BACKEND``. The library's own declarations (FRAMEWORK) come first.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from types import ModuleType

from qmailhost.component import Component, Needs, Probe

FRAMEWORK = ("qmailhost.settings", "qmailhost.facts", "qmailhost.checks", "qmailhost.recovery")
TASKS = "tasks"
BACKENDS = "qmailhost.backends"


def _modules(package_name: str) -> list[ModuleType]:
    package = importlib.import_module(package_name)
    return [importlib.import_module(f"{package_name}.{module.name}")
            for module in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name)]


@cache
def components() -> tuple[Component, ...]:
    """The library's declarations, then every task's, in name order."""
    found = [importlib.import_module(name).COMPONENT for name in FRAMEWORK]
    found += [module.COMPONENT for module in _modules(TASKS) if hasattr(module, "COMPONENT")]
    return tuple(found)


@cache
def _backends(kind: str) -> dict[str, ModuleType]:
    return {getattr(module, kind): module for module in _modules(BACKENDS) if hasattr(module, kind)}


def service_backend(name: str) -> ModuleType:
    """The service backend called NAME ("daemontools", "rcd")."""
    return _backends("SERVICE_BACKEND")[name]


def package_backend(name: str) -> ModuleType:
    """The package backend called NAME ("apt", "pkgin")."""
    return _backends("PACKAGE_BACKEND")[name]


def for_platform(platform) -> tuple[Component, ...]:
    """components(), plus what the platform's service backend declares."""
    backend = service_backend(platform.service_backend)
    return (*components(), *([backend.COMPONENT] if hasattr(backend, "COMPONENT") else []))


def every_probe() -> tuple[Probe, ...]:
    """The probes of every component and of every service backend (to read any HostState)."""
    found = [*components(), *(getattr(b, "COMPONENT", None) for b in _backends("SERVICE_BACKEND").values())]
    return tuple(probe for component in found if component for probe in component.probes)


def needs(platform, settings) -> Needs:
    """What every component needs from PLATFORM under SETTINGS, merged in component order."""
    total = Needs()
    for component in for_platform(platform):
        total = total + component.needs(platform, settings)
    return total
