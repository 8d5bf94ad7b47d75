"""The systemd units: `systemd-analyze verify` clean, `security` exposure ≤ 2.0, settings present.

No systemd runs as PID 1 here, so only offline modes are used: `verify` loads the unit file into a
throw-away manager (it checks that ExecStart's binary exists, so the unit is copied into tmp_path
with an existing executable), and `security --offline=true` scores the unit file itself. `verify`
exits 0 even on unknown keys or unparsable values (it only warns on stderr), so its output is
checked as well as its exit status.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

UNIT_DIR = Path(__file__).resolve().parent.parent / "systemd"
UNITS = ["docwatch.service", "docwatch@.service"]
DOCWATCH = "/usr/local/bin/docwatch"
MAX_EXPOSURE = 2.0


def _analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed")
    return exe


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYSTEMD_PAGER": "cat", "SYSTEMD_COLORS": "0", "LC_ALL": "C.UTF-8"}
    return subprocess.run(
        [_analyze(), *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def _checkable_copy(unit: str, tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at an executable that exists on this machine."""
    text = (UNIT_DIR / unit).read_text()
    if not os.access(DOCWATCH, os.X_OK):
        text = text.replace(f"ExecStart={DOCWATCH} ", f"ExecStart={sys.executable} ")
    path = tmp_path / unit
    path.write_text(text)
    return path


def _settings(unit: str) -> list[tuple[str, str, str]]:
    """(section, key, value) in file order; repeated keys are kept (systemd appends/overrides)."""
    return _settings_of(UNIT_DIR / unit)


def _last(unit: str, key: str) -> str:
    values = [v for _, k, v in _settings(unit) if k == key]
    assert values, f"{unit}: {key}= missing"
    return values[-1]


@pytest.mark.parametrize("unit", UNITS)
def test_verify_is_clean(unit, tmp_path):
    path = _checkable_copy(unit, tmp_path)
    result = _run("verify", "--man=no", str(path))
    output = result.stdout + result.stderr
    about_us = [line for line in output.splitlines() if "docwatch" in line]
    assert result.returncode == 0 and not about_us, (
        f"systemd-analyze verify {path} exited {result.returncode}:\n{output}"
    )


@pytest.mark.parametrize("unit", UNITS)
def test_security_exposure(unit, tmp_path):
    path = _checkable_copy(unit, tmp_path)
    result = _run("security", "--no-pager", "--offline=true", str(path))
    output = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", output)
    assert result.returncode == 0 and match, f"systemd-analyze security failed:\n{output}"
    exposure = float(match.group(1))
    print(f"{unit}: overall exposure {exposure}")
    assert exposure <= MAX_EXPOSURE, f"exposure {exposure} > {MAX_EXPOSURE}:\n{output}"


def test_verify_does_catch_a_bad_unit(tmp_path):
    """Guard for the check above: a broken unit must produce output mentioning it."""
    path = tmp_path / "docwatch-broken.service"
    path.write_text(f"[Service]\nExecStart={sys.executable}\nNoSuchKey=1\nProtectSystem=bogus\n")
    result = _run("verify", "--man=no", str(path))
    assert "NoSuchKey" in result.stdout + result.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_required_settings(unit):
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "WatchdogSec": "60s",
        "Restart": "on-failure",
        "TimeoutStopSec": "30",
        "KillSignal": "SIGTERM",
        "KillMode": "mixed",  # SIGTERM to the daemon alone; it ends its children
        "User": "docwatch",
        "Group": "docwatch",
        "UMask": "0022",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "PrivateNetwork": "yes",
        "PrivateUsers": "yes",
        "IPAddressDeny": "any",
        "RestrictAddressFamilies": "AF_UNIX",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
        "DevicePolicy": "closed",
        "ProtectProc": "invisible",
        "ProcSubset": "pid",
    }
    for key, value in expected.items():
        assert _last(unit, key) == value, key
    assert "DynamicUser" not in {k for _, k, _ in _settings(unit)}
    filters = [v for _, k, v in _settings(unit) if k == "SystemCallFilter"]
    assert filters == ["@system-service", "~@privileged @resources"]
    config = "config.toml" if unit == "docwatch.service" else "%i.toml"
    assert _last(unit, "ExecStart") == f"{DOCWATCH} watch --config /etc/docwatch/{config}"
    root = "/srv/daydreaming/data" if unit == "docwatch.service" else "/srv/daydreaming/%i"
    assert _last(unit, "ReadWritePaths") == f"{root}/docs {root}/db"


@pytest.mark.parametrize("unit", [*UNITS, "docwatch.service.d/postgres.conf"])
def test_every_setting_has_a_comment(unit):  # the units and the PostgreSQL drop-in
    previous = ""
    for number, line in enumerate((UNIT_DIR / unit).read_text().splitlines(), 1):
        if line and line[0] not in "#;[" and "=" in line:
            assert previous.startswith("#"), f"{unit}:{number}: {line!r} has no comment above"
        previous = line


def test_template_matches_the_plain_unit():
    """docwatch@data.service is docwatch.service except the config file and the journal tag."""
    plain = _settings("docwatch.service")
    template = [
        (s, k, v.replace("%i.toml", "config.toml").replace("%i", "data"))
        for s, k, v in _settings("docwatch@.service")
    ]
    allowed = {"Description", "SyslogIdentifier"}
    assert [x for x in plain if x[1] not in allowed] == [x for x in template if x[1] not in allowed]


_MDWE_CHILD = textwrap.dedent(
    """
    import ctypes, mmap, sqlite3, struct, sys, tempfile, time, pathlib

    # What MemoryDenyWriteExecute=yes installs (systemd's seccomp filter, x86-64): mmap with
    # PROT_WRITE|PROT_EXEC, and mprotect/pkey_mprotect adding PROT_EXEC, fail with EPERM.
    ALLOW, EPERM = 0x7FFF0000, 0x00050001
    def op(code, k, jt=0, jf=0):
        return struct.pack("HBBI", code, jt, jf, k)
    LD, JEQ, JSET, AND, RET = 0x20, 0x15, 0x45, 0x54, 0x06
    prog = [
        op(LD, 4), op(JEQ, 0xC000003E, 0, 10),           # arch x86-64, else allow
        op(LD, 0),
        op(JEQ, 9, 3, 0),                                 # mmap -> 7
        op(JEQ, 10, 5, 0), op(JEQ, 329, 4, 0),            # mprotect, pkey_mprotect -> 10
        op(RET, ALLOW),
        op(LD, 32), op(AND, 6), op(JEQ, 6, 3, 2),         # 7: W|X both set -> deny
        op(LD, 32), op(JSET, 4, 1, 0),                    # 10: PROT_EXEC -> deny
        op(RET, ALLOW), op(RET, EPERM),
    ]
    code = b"".join(prog)
    buf = ctypes.create_string_buffer(code)
    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    fprog = Fprog(len(prog), ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(38, 1, 0, 0, 0) == 0                # PR_SET_NO_NEW_PRIVS
    assert libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0, ctypes.get_errno()  # SECCOMP filter
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except PermissionError:
        pass
    else:
        sys.exit("filter not active")

    # What the daemon does: inotify via watchdog (ctypes foreign calls), sqlite WAL, json, hashlib.
    import hashlib, json, logging, click
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers.inotify import InotifyObserver
    seen = []
    class H(FileSystemEventHandler):
        def on_closed(self, event):
            seen.append(event.src_path)
    root = pathlib.Path(tempfile.mkdtemp())
    obs = InotifyObserver()
    obs.schedule(H(), str(root), recursive=True)
    obs.start()
    (root / "a.txt").write_text("x")
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        time.sleep(0.05)
    obs.stop(); obs.join()
    assert seen, "no inotify event"
    db = sqlite3.connect(root / "t.sqlite")
    assert db.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    db.execute("create table t(x)"); db.execute("insert into t values (?)", (json.dumps(seen),))
    db.commit()
    print("ok", hashlib.sha256(b"x").hexdigest()[:8])
    """
)


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.uname().machine != "x86_64",
    reason="the hand-written seccomp filter is for Linux x86-64",
)
def test_python_runs_under_memory_deny_write_execute(tmp_path):
    """MemoryDenyWriteExecute=yes: CPython (no JIT), watchdog's inotify and sqlite still work."""
    script = tmp_path / "mdwe_child.py"
    script.write_text(_MDWE_CHILD)
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0 and "prctl" in result.stderr and "assert" in result.stderr:
        pytest.skip(f"cannot install a seccomp filter here:\n{result.stderr}")
    assert result.returncode == 0 and result.stdout.startswith("ok"), result.stdout + result.stderr


# -- the PostgreSQL drop-in ----------------------------------------------------------------------

DROPIN = UNIT_DIR / "docwatch.service.d" / "postgres.conf"


def _with_dropin(tmp_path: Path) -> Path:
    """The unit as systemd sees it with the drop-in: the drop-in's lines after the unit's (a
    drop-in is read after the unit, and an empty assignment resets a list, in one file too)."""
    path = _checkable_copy("docwatch.service", tmp_path)
    path.write_text(path.read_text() + "\n" + DROPIN.read_text())
    return path


def test_postgres_dropin_verifies_and_stays_hardened(tmp_path):
    path = _with_dropin(tmp_path)
    result = _run("verify", "--man=no", str(path))
    output = result.stdout + result.stderr
    assert result.returncode == 0 and not [x for x in output.splitlines() if "docwatch" in x]
    result = _run("security", "--no-pager", "--offline=true", str(path))
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 1.5, result.stdout  # network to one host: still "OK"


def test_postgres_dropin_allows_only_the_database_host():
    settings = [(k, v) for s, k, v in _settings_of(DROPIN) if s == "Service"]
    values = {}
    for key, value in settings:
        values.setdefault(key, []).append(value)
    assert values["PrivateNetwork"] == ["no"]
    assert values["IPAddressDeny"] == ["any"]
    allowed = values["IPAddressAllow"]
    assert allowed and all(a == "localhost" or re.match(r"^[\d.:a-fA-F]+/\d+$", a) for a in allowed)
    assert values["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert values["ReadWritePaths"] == ["", "/srv/daydreaming/data/docs"]  # no db/ any more
    assert values["Environment"] == ["PGPASSFILE=/etc/docwatch/pgpass"]
    unit = dict((k, v) for _, k, v in _settings("docwatch.service"))
    for kept in ("ProtectSystem", "NoNewPrivileges", "CapabilityBoundingSet", "SystemCallFilter"):
        assert kept in unit and kept not in values  # the rest of the hardening is untouched


def _settings_of(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) of a unit file or drop-in, in file order."""
    section, out = "", []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out
