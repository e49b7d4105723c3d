"""Command plans without a host: pyinfra's own State and Inventory (an @fake host), with
every fact answered by a function of ours instead of a connection.

``plan_deploy(data, answer)`` loads deploy.py as the pyinfra CLI does (CLI mode, so
operations are ordered by the call stack exactly as ``pyinfra ... deploy.py`` orders
them) and returns [(operation name, [commands])] for the operations that would change
something. ``plan_operation(op, kwargs, answer)`` does the same for one operation's
``_inner``. Commands are serialised as pyinfra-testing's operation tests do: strings,
["upload", content, dest] for uploads, and ["call", function name, keyword arguments] for
python.call (pyinfra-testing itself is not imported: it loads pyinfra_cli, whose gevent
monkey-patching would reach the other tests).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import pyinfra
from pyinfra.api import Config, FileUploadCommand, FunctionCommand, Inventory, State, StringCommand
from pyinfra.api.host import Host
from pyinfra.api.state import StateStage
from pyinfra.context import ctx_config, ctx_host, ctx_state

from qmailhost.recovery import snapshots

PROJECT = Path(__file__).resolve().parent.parent
DEPLOY = str(PROJECT / "deploy.py")

# answer(fact class name, fact keyword arguments) -> the fact's value, or DEFAULT for
# the fact's own default (what pyinfra returns when the fact's command finds nothing)
Answer = Callable[[str, dict], Any]
DEFAULT = object()


def _fact_kwargs(cls, args, kwargs) -> dict:
    from inspect import getcallargs

    kwargs = {k: v for k, v in (kwargs or {}).items() if not k.startswith("_")}
    if args:
        kwargs = getcallargs(cls().command, *args, **kwargs)
        kwargs.pop("self", None)
    return kwargs


def parse_commands(commands) -> list:
    parsed = []
    for command in commands:
        if isinstance(command, str):
            command = StringCommand(command.strip())
        if isinstance(command, StringCommand):
            parsed.append(command.get_raw_value())
        elif isinstance(command, FileUploadCommand):
            if hasattr(command.src, "read"):
                command.src.seek(0)
                data = command.src.read()
                if isinstance(data, bytes):  # text as text; a binary file (a tar) stays bytes
                    with contextlib.suppress(UnicodeDecodeError):
                        data = data.decode()
            else:
                data = str(command.src)
            parsed.append(["upload", data, str(command.dest)])
        elif isinstance(command, FunctionCommand):  # python.call: what it calls, and with what
            parsed.append(["call", command.function.__name__, dict(command.kwargs)])
        else:
            raise AssertionError(f"unexpected command {command!r}")
    return parsed


@contextmanager
def _answering(answer: Answer):
    def get_fact(self, cls, *args, **kwargs):
        value = answer(cls.__name__, _fact_kwargs(cls, args, kwargs))
        return cls.default() if value is DEFAULT else value

    with mock.patch.object(Host, "get_fact", get_fact):
        yield


@contextmanager
def _empty_repositories():
    """The model host's backup_repository is a name in a test (sftp:bk@nas.example.org:...): no
    restic on this laptop asks it (no traffic leaves); it holds no snapshot yet, as before a first
    backup. Repositories with snapshots are tests/test_snapshots.py's (a real one, on this laptop)."""
    with mock.patch.object(snapshots.Repository, "snapshots", lambda repository: []):
        yield


def plan_deploy(data: dict, answer: Answer, name: str = "mail.example.org",
                deploy: str = DEPLOY, grouped: bool = False) -> list[tuple[str, list]]:
    """The change plan of DEPLOY (deploy.py; or backup.py, restore.py, ...) for one host with
    DATA whose facts ANSWER gives. Each operation is named by its own name; with GROUPED, as
    pyinfra prints it, after the component it belongs to ("stunnel | Write stunnel's config")."""
    deploy = str(deploy)
    inventory = Inventory(([(f"@fake/{name}", {**data, "fake_delay": 0, "fake_delay_jitter": 0})], {}))
    state = State(inventory, Config())
    state.current_stage = StateStage.Prepare
    state.current_deploy_filename = deploy
    host = inventory.get_host(f"@fake/{name}")
    plan = []
    with mock.patch.object(pyinfra, "is_cli", True), _answering(answer), ctx_state.use(state), \
            ctx_config.use(state.config.copy()), ctx_host.use(host), _empty_repositories():
        code = compile(Path(deploy).read_text(), deploy, "exec")
        exec(code, {"__file__": deploy})
        for op_hash in state.get_op_order():
            op_data = state.get_op_data_for_host(host, op_hash)
            commands = parse_commands(list(op_data.command_generator()))
            if commands:
                full_name = sorted(state.get_op_meta(op_hash).names)[0]
                plan.append((full_name if grouped else full_name.rsplit(" | ", 1)[-1], commands))
    return plan


class _Noops:
    description = None


def plan_operation(op, kwargs: dict, answer: Answer, host_name: str = "mail.example.org") -> tuple[list, str | None]:
    """(commands, noop description) of operation OP's _inner with KWARGS and facts from ANSWER."""
    inventory = Inventory(([(f"@fake/{host_name}", {})], {}))
    state = State(inventory, Config())
    host = inventory.get_host(f"@fake/{host_name}")
    noted = _Noops()

    def noop(self, description):
        noted.description = description

    with _answering(answer), mock.patch.object(Host, "noop", noop), ctx_state.use(state), ctx_host.use(host):
        commands = parse_commands(list(op._inner(**kwargs)))
    return commands, noted.description


def commands_of(plan) -> list[str]:
    """Every command of a plan, uploads shown as "upload DEST", python.calls as "call FUNCTION"."""
    return [c if isinstance(c, str) else f"{c[0]} {c[1] if c[0] == 'call' else c[2]}"
            for _, commands in plan for c in commands]


def uploaded(plan, dest: str) -> str:
    """What a plan uploads as DEST (through its private file beside it)."""
    return next(c[1] for _, commands in plan for c in commands
                if isinstance(c, list) and c[2] == f"{dest}.qmailhost-new")


def index(commands: list[str], wanted: str) -> int:
    """Where the first command containing WANTED stands (it must be there)."""
    found = [i for i, command in enumerate(commands) if wanted in command]
    assert found, f"no command contains {wanted!r}"
    return found[0]
