"""A real, throwaway PostgreSQL server for the test suite, started and stopped by the test run.

    server = PgServer().start()             # initdb + pg_ctl start, ~1-2 s
    url = server.create_database("t1")      # postgresql://docwatch_writer:…@127.0.0.1:PORT/t1
    ro = server.create_reader_role("t1", "t1_reader", "secret")
    server.admin_sql("SELECT count(*) FROM pg_roles")
    server.stop()                           # pg_ctl stop -m fast, temp dir removed

What it sets up:

* Binaries: ``pg_config --bindir`` (Debian's /usr/bin/pg_config picks the newest installed
  server), else the newest ``/usr/lib/postgresql/*/bin``.  None found → :class:`PgServerError`
  saying that ``make test`` installs Debian's ``postgresql`` package (.ci/install-system-deps).
* OS user: PostgreSQL refuses to run as root, so when the tests run as root every server-side
  command (initdb, pg_ctl, psql) runs as the ``postgres`` system user (created by the Debian
  package), with root's privileges and supplementary groups dropped in the child.  As any other
  user the server simply runs as that user.
* Files: one fresh ``/tmp/docwatch-pg-XXXXXXXX`` directory (mode 0755, owned by the server's OS
  user; not pytest's tmp_path, whose /tmp/pytest-of-root parent is 0700) holding ``data/`` (the
  cluster), ``server.log`` and the unix socket.
* Network: TCP on 127.0.0.1:PORT only (PORT picked free), plus the unix socket in the temp dir.
* Authentication (pg_hba.conf, written whole):

      local  all  postgres             trust           superuser, unix socket only (socket 0700)
      host   all  all       127.0.0.1  scram-sha-256   password roles, e.g. docwatch_writer

  so the superuser cannot log in over TCP at all, and every TCP login needs a real password.
* Roles: ``docwatch_writer`` (LOGIN, random password, no other attributes) owns every database
  made by :meth:`PgServer.create_database`; reader roles get CONNECT, USAGE on schema public and
  SELECT on the writer's tables (current and future) and nothing else.
* Cleanup: :meth:`PgServer.stop` is idempotent and registered with :mod:`atexit` (normal exit,
  Ctrl-C).  A run killed outright (SIGKILL, SIGTERM) leaves its server behind; the next
  :meth:`PgServer.start` reaps servers whose creating process is gone (:func:`reap_stale`).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

WRITER = "docwatch_writer"
SUPERUSER = "postgres"
OS_USER = "postgres"  # the Debian package's system user; used when the tests run as root
DIR_PREFIX = "docwatch-pg-"
TMP_ROOT = "/tmp"
FALLBACK_GLOB = "/usr/lib/postgresql/*/bin"
START_TIMEOUT = 60  # seconds, pg_ctl -t

_IDENT = re.compile(r"[a-z_][a-z0-9_]{0,62}\Z")

# pg_hba.conf, written whole after initdb (initdb's own file is replaced).
HBA = """\
# Written by tests/pgserver.py.  TYPE DATABASE USER ADDRESS METHOD
# The superuser: unix socket only (the socket is 0700, owned by the server's OS user).
local   all   {superuser}                    trust
# Everyone else: TCP on loopback, with a password.
host    all   all           127.0.0.1/32     scram-sha-256
"""


class PgServerError(RuntimeError):
    """The test PostgreSQL server could not be found, started, or administered."""


def _ident(name: str, what: str) -> str:
    """``name`` if it is a plain lower-case SQL identifier (no quoting needed), else raise."""
    if not _IDENT.match(name):
        raise ValueError(f"{what} {name!r} must match {_IDENT.pattern}")
    return name


def _literal(text: str) -> str:
    """An SQL string literal (standard_conforming_strings is on: only ' needs doubling)."""
    if "\0" in text:
        raise ValueError("NUL in SQL literal")
    return "'" + text.replace("'", "''") + "'"


def find_bindir(pg_config: str = "pg_config", fallback_glob: str | None = None) -> Path:
    """The directory holding initdb, pg_ctl, postgres and psql.

    ``pg_config --bindir`` first; on Debian that is a postgresql-common wrapper that answers for
    the newest installed server, but with only libpq-dev installed it says /usr/bin (no initdb),
    hence the fallback: the newest ``/usr/lib/postgresql/<version>/bin`` that has initdb.
    """
    fallback_glob = fallback_glob or FALLBACK_GLOB
    said = "nothing: pg_config is not installed"
    exe = shutil.which(pg_config)
    if exe:
        proc = subprocess.run([exe, "--bindir"], capture_output=True, text=True)
        out = proc.stdout.strip()
        if proc.returncode == 0 and out:
            said = out
            if _has_server(Path(out)):
                return Path(out)
        else:
            said = f"exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[:200]}"

    def version(path: str) -> tuple[int, ...]:
        parts = Path(path).parent.name.split(".")
        return tuple(int(p) for p in parts if p.isdigit())

    for cand in sorted(glob.glob(fallback_glob), key=version, reverse=True):
        if _has_server(Path(cand)):
            return Path(cand)
    raise PgServerError(
        f"PostgreSQL server binaries not found (pg_config --bindir gave {said}; "
        f"nothing usable in {fallback_glob}); `make test` installs Debian's postgresql package "
        "(.ci/install-system-deps, as root)"
    )


def _has_server(bindir: Path) -> bool:
    return all(os.access(bindir / b, os.X_OK) for b in ("initdb", "pg_ctl", "postgres", "psql"))


def database_of(url: str) -> str:
    """The database name in a ``postgresql://…/name`` URL."""
    return unquote(urlsplit(url).path.lstrip("/"))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _proc_start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks): tells a pid from its reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def is_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie.  (pg_ctl -w returns once postmaster.pid
    is gone, a moment before the process ends; the ended postmaster, reparented to init, is a
    zombie until init reaps it.)"""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait_exited(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while is_running(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def reap_stale(tmp_root: str = TMP_ROOT) -> list[str]:
    """Stop and delete servers left by test runs that died without cleaning up (SIGKILL,
    SIGTERM).  Each temp dir has an ``owner`` file naming the creating process (pid and start
    time); dirs whose owner still runs, or without that file, are left alone.  Returns the
    directories removed."""
    removed = []
    for d in glob.glob(os.path.join(tmp_root, DIR_PREFIX + "*")):
        try:
            pid_s, start = Path(d, "owner").read_text().split()
            pid = int(pid_s)
        except (OSError, ValueError):
            continue
        if _proc_start_time(pid) == start:
            continue  # its run is still going
        pidfile = Path(d, "data", "postmaster.pid")
        with contextlib.suppress(OSError, ValueError, ProcessLookupError, PermissionError):
            pid = int(pidfile.read_text().split()[0])
            os.kill(pid, signal.SIGQUIT)  # immediate shutdown
            _wait_exited(pid)
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


class PgServer:
    """One PostgreSQL server in a fresh temp dir.  :meth:`start` it, :meth:`stop` it.

    Attributes once started: ``bindir``, ``dir`` (the temp dir), ``datadir``, ``socket_dir``,
    ``log_path``, ``host`` ("127.0.0.1"), ``port``, ``writer_password``, ``os_user``.
    """

    host = "127.0.0.1"

    def __init__(self, bindir: str | os.PathLike | None = None) -> None:
        self._bindir_arg = bindir
        self.bindir: Path | None = None
        self.dir: Path | None = None
        self.port: int | None = None
        self.writer_password = secrets.token_urlsafe(18)
        self.os_user = OS_USER if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        self._owner_pid = os.getpid()
        self._running = False
        self._stopped = False

    # -- paths ------------------------------------------------------------------------------

    @property
    def datadir(self) -> Path:
        return self._need_dir() / "data"

    @property
    def socket_dir(self) -> Path:
        return self._need_dir()

    @property
    def log_path(self) -> Path:
        return self._need_dir() / "server.log"

    def _need_dir(self) -> Path:
        if self.dir is None:
            raise PgServerError("server not started")
        return self.dir

    # -- running commands -------------------------------------------------------------------

    def _run(self, args: list[str], *, input: str | None = None, timeout: float = 120):
        """Run a PostgreSQL binary as the server's OS user, in the temp dir, with a clean
        environment (no PG* variables from the caller).  Returns the CompletedProcess."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", HOME=str(self.dir))
        kwargs = {}
        if os.geteuid() == 0:
            pw = self._os_pw()
            kwargs = dict(
                user=pw.pw_uid,
                group=pw.pw_gid,
                extra_groups=os.getgrouplist(pw.pw_name, pw.pw_gid),
            )
        return subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            input=input,
            capture_output=True,
            text=True,
            env=env,
            cwd=self.dir,
            timeout=timeout,
            **kwargs,
        )

    def _check(self, what: str, proc) -> str:
        if proc.returncode != 0:
            raise PgServerError(
                f"{what} failed (exit {proc.returncode}):\n{proc.stderr.strip() or proc.stdout}"
            )
        return proc.stdout

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> PgServer:
        """initdb, configure, pg_ctl start (waiting until it accepts connections), create the
        writer role.  Returns self.  Raises PgServerError with the reason (and the server log's
        tail) on failure, after cleaning up."""
        if self._running or self._stopped:
            raise PgServerError("a PgServer starts once")
        self.bindir = Path(self._bindir_arg) if self._bindir_arg is not None else find_bindir()
        if not _has_server(self.bindir):
            raise PgServerError(
                f"PostgreSQL server binaries not found (the given bindir {self.bindir} lacks "
                "initdb/pg_ctl/postgres/psql); `make test` installs Debian's "
                "postgresql package (.ci/install-system-deps, as root)"
            )
        reap_stale()
        self.dir = Path(tempfile.mkdtemp(prefix=DIR_PREFIX, dir=TMP_ROOT))
        atexit.register(self.stop)
        try:
            Path(self.dir, "owner").write_text(f"{os.getpid()} {_proc_start_time(os.getpid())}\n")
            os.chmod(self.dir, 0o755)
            if os.geteuid() == 0:
                pw = self._os_pw()
                os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._initdb()
            self._start_postmaster()
            self._running = True
            self.admin_sql(
                "SET password_encryption = 'scram-sha-256';\n"
                f"CREATE ROLE {WRITER} LOGIN PASSWORD {_literal(self.writer_password)};\n"
                # PUBLIC may CONNECT (and make TEMP tables) in every database by default:
                # here a role reaches only the databases it is granted.
                "REVOKE ALL ON DATABASE postgres, template1 FROM PUBLIC;\n"
            )
        except BaseException:
            self.stop()
            raise
        return self

    def _os_pw(self):
        try:
            return pwd.getpwnam(self.os_user)
        except KeyError:
            raise PgServerError(
                f"system user {self.os_user!r} does not exist (PostgreSQL refuses to run as "
                "root; Debian's postgresql package creates it; `make test` installs that)"
            ) from None

    def _initdb(self) -> None:
        self._check(
            "initdb",
            self._run(
                [
                    "initdb",
                    "-D",
                    str(self.datadir),
                    "-U",
                    SUPERUSER,
                    "-E",
                    "UTF8",
                    "--no-locale",
                    "--auth-local=trust",
                    "--auth-host=reject",
                    "--no-instructions",
                    # initdb's closing fsync only matters if the OS crashes (the server itself
                    # runs with fsync=on); skipping it saves ~0.3 s
                    "--no-sync",
                ]
            ),
        )
        hba = self.datadir / "pg_hba.conf"
        hba.write_text(HBA.format(superuser=SUPERUSER))  # initdb made it; keeps owner and mode

    def _start_postmaster(self) -> None:
        last = ""
        for _attempt in range(3):  # a free port can be taken between free_port() and bind()
            self.port = free_port(self.host)
            opts = " ".join(
                [
                    "-c listen_addresses=127.0.0.1",
                    f"-p {self.port}",
                    f"-c unix_socket_directories={shlex.quote(str(self.socket_dir))}",
                    "-c unix_socket_permissions=0700",
                    "-c fsync=on",
                ]
            )
            args = ["pg_ctl", "-D", str(self.datadir), "-l", str(self.log_path), "-o", opts]
            proc = self._run([*args, "-w", "-t", str(START_TIMEOUT), "start"], timeout=90)
            if proc.returncode == 0:
                return
            last = f"{proc.stderr.strip() or proc.stdout.strip()}\n--- {self.log_path}:\n"
            last += self._log_tail()
            if "could not bind" not in last and "already in use" not in last:
                break
        raise PgServerError(f"pg_ctl start failed:\n{last}")

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as e:
            return f"(no log: {e})"

    def postmaster_pid(self) -> int:
        """The postmaster's pid, from the first line of data/postmaster.pid."""
        return int((self.datadir / "postmaster.pid").read_text().split()[0])

    def stop(self) -> None:
        """``pg_ctl stop -m fast`` (then ``-m immediate``, then SIGKILL, if it will not stop),
        and delete the temp dir.  Safe to call twice, and does nothing in a forked child."""
        if self._stopped or os.getpid() != self._owner_pid:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        try:
            if self.dir is not None and (self.datadir / "postmaster.pid").exists():
                pid = self.postmaster_pid()
                self._pg_ctl_stop()
                _wait_exited(pid)
        finally:
            self._running = False
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)

    def _pg_ctl_stop(self) -> None:
        for mode in ("fast", "immediate"):
            try:
                proc = self._run(
                    ["pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "-t", "30", "stop"],
                    timeout=45,
                )
            except subprocess.TimeoutExpired:
                continue
            if proc.returncode == 0 or not (self.datadir / "postmaster.pid").exists():
                return
        with contextlib.suppress(OSError, ValueError):
            os.kill(self.postmaster_pid(), signal.SIGKILL)  # its children notice and exit

    def __enter__(self) -> PgServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- administration ---------------------------------------------------------------------

    def admin_sql(self, sql: str, db: str = "postgres") -> str:
        """Run ``sql`` (one or more statements) as the superuser over the unix socket with the
        ``psql`` binary, stopping at the first error (PgServerError with psql's message).
        Statements run one by one, outside a transaction unless the SQL opens one, so CREATE
        DATABASE works.  Returns psql's unaligned, tuples-only output (rows on lines, columns
        separated by ``|``), stripped."""
        if not self._running:
            raise PgServerError("server not running")
        proc = self._run(
            [
                "psql",
                "-X",  # no ~/.psqlrc
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                "-d",
                db,
                "-f",
                "-",
            ],
            input=sql,
        )
        return self._check(f"psql on {db!r}", proc).strip()

    def url(self, db: str, user: str = WRITER, password: str | None = None) -> str:
        """``postgresql://user:password@127.0.0.1:PORT/db`` (the writer's password by default)."""
        if password is None and user == WRITER:
            password = self.writer_password
        cred = quote(user, safe="")
        if password is not None:
            cred += ":" + quote(password, safe="")
        return f"postgresql://{cred}@{self.host}:{self.port}/{quote(db, safe='')}"

    def create_database(self, name: str) -> str:
        """A fresh database ``name`` owned by docwatch_writer; returns the writer's URL for it.
        PUBLIC's default CONNECT/TEMPORARY on it are revoked, so other roles get only what
        :meth:`create_reader_role` grants.  (PostgreSQL 15: schema public belongs to the
        database owner, and PUBLIC may not create in it.)"""
        _ident(name, "database name")
        self.admin_sql(
            f"CREATE DATABASE {name} OWNER {WRITER};\nREVOKE ALL ON DATABASE {name} FROM PUBLIC;\n"
        )
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE ``name`` WITH (FORCE) (ends its sessions first); absent is fine."""
        _ident(name, "database name")
        self.admin_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE);")

    def create_reader_role(self, db: str, name: str, password: str) -> str:
        """A LOGIN role ``name`` (created, or its password reset if it exists) that may connect
        to ``db``, use schema public and SELECT from every table docwatch_writer has made or
        will make there, and nothing else.  Returns its URL."""
        _ident(db, "database name")
        _ident(name, "role name")
        exists = self.admin_sql(f"SELECT 1 FROM pg_roles WHERE rolname = {_literal(name)}")
        verb = "ALTER" if exists else "CREATE"
        self.admin_sql(
            "SET password_encryption = 'scram-sha-256';\n"
            f"{verb} ROLE {name} LOGIN PASSWORD {_literal(password)};\n"
            f"GRANT CONNECT ON DATABASE {db} TO {name};\n"
        )
        self.admin_sql(
            f"GRANT USAGE ON SCHEMA public TO {name};\n"
            f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {name};\n"
            f"ALTER DEFAULT PRIVILEGES FOR ROLE {WRITER} IN SCHEMA public "
            f"GRANT SELECT ON TABLES TO {name};\n",
            db=db,
        )
        return self.url(db, name, password)
