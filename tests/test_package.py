"""Packaging and structure: the import name, the layers, and the `daemon/` source folder.

The source folder is named ``daemon/`` (fixed by the users) but the import name is ``docwatch``:
PyPI's ``python-daemon`` installs a top-level module ``daemon``, so we must never ship one.
"""

from __future__ import annotations

import ast
import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SOURCE_ROOT = REPO / "daemon"  # what `[tool.setuptools.packages.find] where` points at
PACKAGE_DIR = SOURCE_ROOT / "docwatch"

# The layers of docwatch, lowest first.  A module may import from its own layer or a lower one,
# never from a higher one, so each layer can be read, tested and reused without the layers above:
#   0  the pure core: file names, ids, the attempt model, task facts, the error types (no I/O);
#   1  process setup: configuration and logging;
#   2  storage: the index, the document directories, locks, the fault seam;
#   3  the batch work on top of storage: ingest (list, probe, plan, write, scan, verify) and the
#      read side (`reader`, the public `DocumentsIndex`; `status`);
#   4  the live daemon: file events, readiness, sd_notify, the watch loop;
#   5  the Dagster integration: run records the daemon reads, the pipeline's reader resource;
#   6  the entry points: the CLI and `python -m docwatch`.
# A key names a module and, for a package, every module under it.  `docwatch` itself (the root
# package: `__version__` and re-exports) is layer 0; a name a package's `__init__` re-exports is
# charged to the module that defines it.  Package `__init__` files are exempt as importers (they
# re-export).  Imports under `if TYPE_CHECKING:` are exempt (never run); imports inside functions
# count.  Every module must be covered here: a new module or subpackage is placed deliberately.
LAYERS: dict[str, int] = {
    "docwatch": 0,
    "docwatch.core": 0,
    "docwatch.errors": 0,
    "docwatch.config": 1,
    "docwatch.configvalues": 1,
    "docwatch.logs": 1,
    "docwatch.children": 1,
    "docwatch.store": 2,
    "docwatch.ingest": 3,
    "docwatch.reader": 3,
    "docwatch.status": 3,
    "docwatch.live": 4,
    "docwatch.dagster": 5,
    "docwatch.cli": 6,
    "docwatch.cliviews": 6,
    "docwatch.__main__": 6,
}

PIP_FLAGS = ["--disable-pip-version-check", "-q", "--timeout", "60"]


# ---------------------------------------------------------------------------------------------
# 1. python-daemon and docwatch installed side by side


def _clean_env() -> dict[str, str]:
    """The environment minus anything that would point Python at this checkout or this venv."""
    drop = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "__PYVENV_LAUNCHER__"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("DOCWATCH_")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _run(cmd: list, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _ok(proc: subprocess.CompletedProcess, what: str) -> str:
    assert proc.returncode == 0, (
        f"{what} failed (exit {proc.returncode}): {proc.args}\n"
        f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    return proc.stdout


def _pypi_diagnosis() -> str:
    try:
        with urllib.request.urlopen("https://pypi.org/simple/python-daemon/", timeout=15) as r:
            return f"pypi.org answers (HTTP {r.status}), so the failure is not the network"
    except Exception as exc:  # any failure is the diagnosis
        return (
            f"pypi.org is UNREACHABLE ({type(exc).__name__}: {exc}). This test needs the "
            "network to PyPI (python-daemon is not on the local indexes); it fails rather than "
            "skips on purpose."
        )


def _copy_source(dest: Path) -> Path:
    """What the sdist holds, copied away from the checkout: an in-tree build would write
    `build/` and `*.egg-info` next to files another process may be editing."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    shutil.copytree(
        PACKAGE_DIR,
        dest / "daemon" / "docwatch",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
    )
    return dest


# Runs inside the throwaway venv; prints one JSON document.
PROBE = r"""
import importlib.metadata as md, importlib.util, json, sys
out = {"prefix": sys.prefix}
spec = importlib.util.find_spec("daemon")
out["daemon_origin"] = spec and spec.origin
if spec:
    import daemon
    out["daemon_file"] = daemon.__file__
    out["daemon_has_DaemonContext"] = hasattr(daemon, "DaemonContext")
    out["daemon_dist_files"] = [
        str(f.locate()) for f in md.files("python-daemon") if f.name.endswith(".py")
    ]
from docwatch import DocumentNotFound, DocumentsIndex
import docwatch
out["reader_api"] = [DocumentsIndex.__module__, DocumentNotFound.__module__]
out["docwatch_file"] = docwatch.__file__
out["docwatch_files"] = [str(f) for f in md.files("docwatch")]
print(json.dumps(out))
"""


def test_python_daemon_installs_next_to_docwatch(tmp_path):
    """A user's venv with python-daemon and a regular (wheel) install of docwatch: `daemon` is
    python-daemon, docwatch works, and docwatch ships no top-level `daemon`."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    version = project["version"]
    work = tmp_path  # also the cwd of every command: nothing named `daemon` is importable here
    venv = work / "venv"
    py, bin_dir = venv / "bin" / "python", venv / "bin"

    _ok(_run([sys.executable, "-m", "venv", venv], work), "python -m venv")
    src = _copy_source(work / "src")
    wheels = work / "wheels"
    _ok(
        _run([py, "-m", "pip", "wheel", *PIP_FLAGS, "--no-deps", "-w", wheels, src], work, 300),
        "building the docwatch wheel",
    )
    (wheel,) = wheels.glob("docwatch-*.whl")

    # One resolver run: python-daemon, and the wheel with the dependencies its metadata declares
    # (the [project] dependencies of pyproject.toml).  Regular install, not editable.
    install = _run([py, "-m", "pip", "install", *PIP_FLAGS, "python-daemon", wheel], work, 300)
    if install.returncode != 0:
        pytest.fail(
            "pip install python-daemon + the docwatch wheel failed: "
            f"{_pypi_diagnosis()}\n--- stdout\n{install.stdout}\n--- stderr\n{install.stderr}",
            pytrace=False,
        )
    _ok(_run([py, "-m", "pip", "check"], work), "pip check")
    requires = _ok(
        _run([py, "-c", "import importlib.metadata as m; print(m.requires('docwatch'))"], work),
        "reading docwatch's installed requirements",
    )
    for dep in project["dependencies"]:
        assert re.match(r"[A-Za-z0-9._-]+", dep)[0] in requires, (dep, requires)

    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    found = json.loads(_ok(_run([py, "-c", PROBE], work), "the import probe"))

    # `import daemon` is python-daemon, found in the venv's site-packages, not in our tree.
    assert found["daemon_has_DaemonContext"], f"`import daemon` is not python-daemon: {found}"
    origin = Path(found["daemon_origin"])
    assert origin.is_relative_to(site) and not origin.is_relative_to(REPO), origin
    assert str(origin) in found["daemon_dist_files"], (origin, "is not a python-daemon file")
    # docwatch: the reader API, from the installed wheel (not the checkout).
    assert found["reader_api"] == ["docwatch.reader", "docwatch.errors"], found["reader_api"]
    assert Path(found["docwatch_file"]).is_relative_to(site), found["docwatch_file"]

    # The wheel's files: one top-level package, `docwatch`, holding every source module.
    files = [Path(f) for f in found["docwatch_files"]]
    tops = {f.parts[0] for f in files if not f.parts[0].endswith((".dist-info", ".data"))}
    tops.discard("..")  # the console script lives in ../../../bin
    assert tops == {"docwatch"}, f"the docwatch wheel installs top-level {sorted(tops)}"
    assert not [f for f in files if f.parts[0].split(".")[0] == "daemon"], files
    shipped = {f.as_posix() for f in files if f.suffix == ".py"}
    source = {p.relative_to(SOURCE_ROOT).as_posix() for p in PACKAGE_DIR.rglob("*.py")}
    assert source <= shipped, f"missing from the wheel: {sorted(source - shipped)}"

    def both_entry_points_work() -> None:
        for cmd in ([py, "-m", "docwatch", "--version"], [bin_dir / "docwatch", "--version"]):
            out = _ok(_run(cmd, work), " ".join(map(str, cmd[-3:])))
            assert "docwatch" in out and version in out, out

    both_entry_points_work()

    # Without python-daemon, docwatch is unaffected and nothing answers to `daemon` any more.
    _ok(
        _run([py, "-m", "pip", "uninstall", *PIP_FLAGS, "-y", "python-daemon"], work),
        "pip uninstall python-daemon",
    )
    found = json.loads(_ok(_run([py, "-c", PROBE], work), "the import probe, after uninstall"))
    assert found["daemon_origin"] is None, found["daemon_origin"]
    assert found["reader_api"] == ["docwatch.reader", "docwatch.errors"], found["reader_api"]
    both_entry_points_work()


# ---------------------------------------------------------------------------------------------
# 2. The layers


def _modules() -> dict[str, Path]:
    """Every module under daemon/docwatch by dotted name (a package by its own name)."""
    mods = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = path.relative_to(SOURCE_ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _layer(module: str) -> int | None:
    """The layer of the longest LAYERS key that is `module` or a package above it (never the
    root package's, for a module under it: each is placed deliberately)."""
    parts = module.split(".")
    for n in range(len(parts), 1 if len(parts) > 1 else 0, -1):
        key = ".".join(parts[:n])
        if key in LAYERS:
            return LAYERS[key]
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST):
    """Every Import/ImportFrom, at any depth, except the bodies of `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _reexports(modules: dict[str, Path]) -> dict[str, dict[str, str]]:
    """package → {name: defining module} for the top-level `from X import name` of its __init__."""
    out: dict[str, dict[str, str]] = {}
    for name, path in modules.items():
        if path.name != "__init__.py":
            continue
        for node in ast.parse(path.read_text(), str(path)).body:
            if isinstance(node, ast.ImportFrom):
                src = _absolute(name, True, node)
                for alias in node.names:
                    sub = f"{src}.{alias.name}"
                    out.setdefault(name, {})[alias.asname or alias.name] = (
                        sub if sub in modules else src
                    )
    return out


def _targets(module: str, path: Path, modules: dict[str, Path], reexports) -> set[str]:
    """The docwatch modules `module` imports (name re-exported by a package → its definer)."""
    found = set()
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
            continue
        src = _absolute(module, path.name == "__init__.py", node)
        for alias in node.names:
            if f"{src}.{alias.name}" in modules:
                found.add(f"{src}.{alias.name}")
            else:
                found.add(reexports.get(src, {}).get(alias.name, src))
    return {t for t in found if t == "docwatch" or t.startswith("docwatch.")}


def test_imports_only_go_down_the_layers():
    modules = _modules()
    assert "docwatch.cli" in modules and "docwatch.store.index" in modules, sorted(modules)
    problems = [
        f"{m}: not in LAYERS (place it in a layer deliberately)"
        for m in modules
        if _layer(m) is None
    ]
    problems += [f"LAYERS[{k!r}] matches no module" for k in LAYERS if k not in modules]

    reexports = _reexports(modules)
    violations = []
    for module, path in modules.items():
        if path.name == "__init__.py":
            continue  # packages re-export; their importers are charged instead
        for target in sorted(_targets(module, path, modules, reexports)):
            if target not in modules:
                problems.append(f"{module} imports {target}, which does not exist")
            elif (_layer(target) or 0) > (_layer(module) or 0):
                violations.append(
                    f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"
                )
    if violations:
        problems.append(f"{len(violations)} import(s) go up the layers:")
        problems += [f"  {v}" for v in violations]
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


# ---------------------------------------------------------------------------------------------
# 3. The `daemon/` source folder


def test_no_top_level_daemon_module_in_the_source_tree():
    """`daemon/` is only where the `docwatch` package lives: it is not itself a package, it
    holds no module of its own, and nothing in docwatch imports anything named `daemon`."""
    assert not (SOURCE_ROOT / "__init__.py").exists(), "daemon/__init__.py makes `daemon` a package"
    # On sys.path (as pyproject's `where` puts it), daemon/ offers exactly one top-level name.
    names = {m.name for m in pkgutil.iter_modules([str(SOURCE_ROOT)])}
    assert names == {"docwatch"}, f"daemon/ offers top-level modules {sorted(names)}"
    # Nothing else lives there but the (git-ignored) egg-info a setuptools build leaves.
    others = [
        p.name
        for p in SOURCE_ROOT.iterdir()
        if p.name != "docwatch" and not p.name.endswith(".egg-info")
    ]
    assert not others, f"daemon/ should hold only the docwatch package, not {sorted(others)}"
    # No module named `daemon` beside it, at the repository root (the cwd of `make`, the tests).
    stray = [p.name for p in REPO.iterdir() if p.name.split(".")[0] == "daemon" and p.is_file()]
    assert not stray, f"files importable as `daemon` at the repository root: {stray}"
    # And the code never imports the source folder's name.
    imports_daemon = []
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            imported = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""] * (node.level == 0)
            )
            imports_daemon += [
                f"{module}: {n}" for n in imported if n == "daemon" or n.startswith("daemon.")
            ]
    assert not imports_daemon, imports_daemon
