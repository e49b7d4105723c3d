"""The card's layout, kept true: tasks/<component>.py and files/<component>/ in step, a
library that names no component, and the README's component table matching both.

- every files/ folder belongs to a task of the same name (no orphan folder);
- every file a task or the library names under files/ exists (a template ends in .j2),
  and every file under files/<component>/ is named by tasks/<component>.py (no orphan file);
- qmailhost/ imports no task, and holds no package list of a component;
- the README's table lists exactly the tasks, each with its files/ folder when it has one;
- deploy.py's operations are grouped under their component's name, as pyinfra prints them.
"""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

import pytest

from harness.netbsd_host import NetBSDHost, deploy_data
from harness.plan_harness import plan_deploy
from qmailhost import files, registry

PROJECT = Path(__file__).resolve().parent.parent
TASKS = PROJECT / "tasks"
FILES = PROJECT / "files"
LIBRARY = PROJECT / "qmailhost"

TASK_NAMES = sorted(p.stem for p in TASKS.glob("*.py") if p.stem != "__init__")
FOLDERS = sorted(p.name for p in FILES.iterdir() if p.is_dir())


def _strings(path: Path) -> list[str]:
    """Every string constant in PATH, f-strings as globs ("imap/dovecot-*.conf.j2")."""
    found, tree = [], ast.parse(path.read_text())
    parts = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in parts:
            found.append(node.value)
        elif isinstance(node, ast.JoinedStr):
            found.append("".join(v.value if isinstance(v, ast.Constant) else "*" for v in node.values))
    return found


def _named_files(path: Path) -> set[str]:
    """The names under files/ that module PATH names ("stunnel/stunnel.conf.j2")."""
    pattern = re.compile(rf"^({'|'.join(map(re.escape, FOLDERS))})/[\w.*-]+$")
    return {text for text in _strings(path) if pattern.match(text)}


def _existing(name: str) -> list[str]:
    return [str(p.relative_to(FILES)) for p in FILES.glob(name) if p.is_file()]


def test_every_files_folder_belongs_to_a_task_of_its_name():
    assert not set(FOLDERS) - set(TASK_NAMES), f"files/ folders without a task: {set(FOLDERS) - set(TASK_NAMES)}"


@pytest.mark.parametrize("module", [*(TASKS / f"{n}.py" for n in TASK_NAMES), *LIBRARY.rglob("*.py")],
                         ids=lambda p: str(p.relative_to(PROJECT)))
def test_every_file_a_module_names_exists(module):
    for name in _named_files(module):
        assert _existing(name), f"{module.relative_to(PROJECT)} names files/{name}, which does not exist"


def test_every_file_under_files_is_named_by_its_task():
    for folder in FOLDERS:
        named = _named_files(TASKS / f"{folder}.py")
        for path in sorted((FILES / folder).iterdir()):
            relative = f"{folder}/{path.name}"
            assert any(fnmatch.fnmatchcase(relative, name) for name in named), \
                f"files/{relative} is named by no line of tasks/{folder}.py"


def test_templates_end_in_j2_and_the_loader_refuses_what_is_not_there():
    with pytest.raises(files.MissingFile, match=r"^files/stunnel/nothing\.conf\.j2 does not exist"):
        files.render("stunnel/nothing.conf.j2")
    with pytest.raises(files.MissingFile, match=r"^files/tmda/nothing\.sh does not exist"):
        files.read("tmda/nothing.sh")
    with pytest.raises(files.MissingFile, match="is not a template"):
        files.render("tmda/retire.sh")
    with pytest.raises(files.MissingFile, match="is a template"):
        files.read("stunnel/stunnel.conf.j2")


def test_the_library_imports_no_task():
    for module in LIBRARY.rglob("*.py"):
        tree = ast.parse(module.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n == "tasks" or n.startswith("tasks.")], \
                f"{module.relative_to(PROJECT)} imports a task"


def test_the_registry_finds_every_task_and_both_backend_kinds():
    found = {c.name for c in registry.components()}
    assert set(TASK_NAMES) <= found
    assert registry.service_backend("daemontools").SERVICE_BACKEND == "daemontools"
    assert registry.service_backend("rcd").SERVICE_BACKEND == "rcd"
    assert registry.package_backend("apt").PACKAGE_BACKEND == "apt"
    assert registry.package_backend("pkgin").PACKAGE_BACKEND == "pkgin"


def test_the_readme_table_lists_the_tasks_and_their_files():
    readme = (PROJECT / "README.md").read_text()
    rows = re.findall(r"^\| `tasks/(\w+)\.py` \| (?:`files/(\w+)/`)? *\|", readme, flags=re.M)
    assert sorted(task for task, _ in rows) == TASK_NAMES, "README's component table and tasks/ differ"
    for task, folder in rows:
        assert folder == (task if task in FOLDERS else ""), f"README: tasks/{task}.py's files/ folder is wrong"


def test_deploy_groups_each_components_operations_under_its_name(monkeypatch):
    monkeypatch.setenv("QMAILHOST_TEST_PASSWORD", "correct horse")
    plan = plan_deploy(deploy_data(), NetBSDHost().answer, grouped=True)
    groups = {name.split(" | ")[0] for name, _ in plan if " | " in name}
    assert groups and groups <= set(TASK_NAMES), groups
    assert {"qmail", "stunnel", "submission", "tls"} <= groups
    ungrouped = [name for name, _ in plan if " | " not in name]
    # Only the library's own steps stand alone: the one package install and the pkgsrc builds
    # it runs for the components, and the service backend's (rc.d: the base system's MTA stopped).
    library_steps = r"(Install the base packages|Build |Check that |Disable postfix|Stop postfix)"
    assert ungrouped and all(re.match(library_steps, n) for n in ungrouped), ungrouped
