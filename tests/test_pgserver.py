"""The PostgreSQL test harness (tests/pgserver.py, tests/conftest_pg.py) is a real server: run by
the postgres system user, on 127.0.0.1 only, with password authentication that works and
refuses, a reader role that can only read, and a stop() that leaves nothing behind."""

from __future__ import annotations

import os
import pwd
import socket
import stat
import struct
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from pgserver import (
    SUPERUSER,
    WRITER,
    PgServer,
    PgServerError,
    database_of,
    find_bindir,
    is_running,
    reap_stale,
)

TESTS = Path(__file__).resolve().parent


def status_ids(pid: int) -> dict[str, list[int]]:
    """Uid, Gid (real, effective, saved, fs) and Groups from /proc/PID/status."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            out[key] = [int(v) for v in value.split()]
    return out


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def inet_sockets(kind: str, inodes: set[str]) -> list[tuple[str, int, str]]:
    """(address, port, state hex) of the /proc/net/<kind>{,6} sockets with these inodes."""
    found = []
    for suffix in ("", "6"):
        lines = Path(f"/proc/net/{kind}{suffix}").read_text().splitlines()[1:]
        for line in lines:
            f = line.split()
            if f[9] not in inodes:
                continue
            addr_hex, port_hex = f[1].split(":")
            raw = bytes.fromhex(addr_hex)
            # the kernel prints each 32-bit word in host (little-endian) order
            words = b"".join(
                struct.pack("<I", *struct.unpack(">I", raw[i : i + 4]))
                for i in range(0, len(raw), 4)
            )
            family = socket.AF_INET if suffix == "" else socket.AF_INET6
            found.append((socket.inet_ntop(family, words), int(port_hex, 16), f[3]))
    return found


def connect(url: str, **kw) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True, connect_timeout=10, **kw)


def test_the_server_runs_as_the_postgres_system_user(pg_server):
    pw = pwd.getpwnam(pg_server.os_user)
    if os.geteuid() == 0:
        assert pg_server.os_user == "postgres"
    assert pw.pw_uid != 0
    pid = pg_server.postmaster_pid()
    ids = status_ids(pid)
    assert ids["Uid"] == [pw.pw_uid] * 4, ids
    assert ids["Gid"] == [pw.pw_gid] * 4, ids
    assert 0 not in ids["Groups"] or os.geteuid() != 0, ids  # root's groups were dropped
    assert "postgres" in Path(f"/proc/{pid}/cmdline").read_bytes().decode()
    # and so do its children (checkpointer, walwriter, backends, …)
    # A backend of another test may end between the listing and the read: skip what is gone.
    children = [int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == pid]
    seen = [ids for ids in map(_status_ids_if_alive, children) if ids is not None]
    assert seen  # the checkpointer, walwriter and friends live as long as the server
    for ids in seen:
        assert ids["Uid"] == [pw.pw_uid] * 4, ids
    # files: the cluster belongs to that user, the temp dir too (0755 for traversal)
    assert pg_server.datadir.stat().st_uid == pw.pw_uid
    assert stat.S_IMODE(pg_server.dir.stat().st_mode) == 0o755
    assert str(pg_server.dir).startswith("/tmp/docwatch-pg-")


def _status_ids_if_alive(pid: int) -> dict[str, list[int]] | None:
    try:
        return status_ids(pid)
    except FileNotFoundError:
        return None


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def test_it_listens_on_127_0_0_1_port_only(pg_server):
    inodes = socket_inodes(pg_server.postmaster_pid())
    listening = [(a, p) for a, p, st in inet_sockets("tcp", inodes) if st == "0A"]
    assert listening == [("127.0.0.1", pg_server.port)]
    assert all(a == "127.0.0.1" for a, _, _ in inet_sockets("udp", inodes))
    # the superuser's unix socket: in the temp dir, usable by the server's OS user only
    sock = pg_server.socket_dir / f".s.PGSQL.{pg_server.port}"
    st = sock.stat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o700
    assert st.st_uid == pwd.getpwnam(pg_server.os_user).pw_uid
    # a TCP connection to the port on another loopback address is refused
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.2", pg_server.port))


def test_pg_hba_is_exactly_superuser_over_socket_and_passwords_over_tcp(pg_server):
    rules = pg_server.admin_sql(
        "SELECT type, database, user_name, address, auth_method, error "
        "FROM pg_hba_file_rules ORDER BY line_number"
    ).splitlines()
    assert rules == [
        "local|{all}|{postgres}||trust|",
        "host|{all}|{all}|127.0.0.1|scram-sha-256|",
    ]
    assert pg_server.admin_sql("SHOW listen_addresses") == "127.0.0.1"
    assert pg_server.admin_sql("SHOW fsync") == "on"
    assert pg_server.admin_sql("SHOW port") == str(pg_server.port)


def test_the_writer_url_works_with_its_password_and_not_without(pg_server, pg_url):
    assert pg_url == (
        f"postgresql://{WRITER}:{pg_server.writer_password}@127.0.0.1:{pg_server.port}/"
        f"{database_of(pg_url)}"
    )
    with connect(pg_url) as con:
        assert con.execute("SELECT current_user, current_database()").fetchone() == (
            WRITER,
            database_of(pg_url),
        )
        con.execute("CREATE TABLE t (x int)")
        con.execute("INSERT INTO t VALUES (1), (2)")
        assert con.execute("SELECT sum(x) FROM t").fetchone() == (3,)
    # an ordinary role: no superuser, no CREATEDB/CREATEROLE; its password is stored as SCRAM
    assert (
        pg_server.admin_sql(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, "
            f"left(rolpassword, 14) FROM pg_authid WHERE rolname = '{WRITER}'"
        )
        == "f|f|f|f|f|SCRAM-SHA-256$"
    )

    wrong = pg_server.url(database_of(pg_url), WRITER, "not-the-password")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(wrong)
    no_password = f"postgresql://{WRITER}@127.0.0.1:{pg_server.port}/{database_of(pg_url)}"
    with pytest.raises(psycopg.OperationalError, match="no password supplied"):
        connect(no_password, passfile="/nonexistent")
    # the superuser has no password, so it cannot log in over TCP at all (no trust on TCP)
    superuser = pg_server.url(database_of(pg_url), SUPERUSER, "anything")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(superuser)


def test_the_reader_role_can_select_and_nothing_else(pg_server, pg_url):
    db = database_of(pg_url)
    with connect(pg_url) as con:
        con.execute("CREATE TABLE before (x int)")
        con.execute("INSERT INTO before VALUES (1)")
    reader = pg_server.create_reader_role(db, f"{db[:50]}_r", "reader's pw")
    assert reader == (f"postgresql://{db[:50]}_r:reader%27s%20pw@127.0.0.1:{pg_server.port}/{db}")
    with connect(pg_url) as con:  # made after the grant: covered by the default privileges
        con.execute("CREATE TABLE after (x int)")
        con.execute("INSERT INTO after VALUES (2)")

    with connect(reader) as con:
        assert con.execute("SELECT x FROM before").fetchall() == [(1,)]
        assert con.execute("SELECT x FROM after").fetchall() == [(2,)]
        for sql, message in [
            ("INSERT INTO before VALUES (3)", "permission denied for table before"),
            ("INSERT INTO after VALUES (3)", "permission denied for table after"),
            ("UPDATE before SET x = 4", "permission denied for table before"),
            ("DELETE FROM after", "permission denied for table after"),
            ("TRUNCATE before", "permission denied for table before"),
            ("CREATE TABLE mine (x int)", "permission denied for schema public"),
            ("CREATE TEMP TABLE mine (x int)", "permission denied to create temporary tables"),
            ("CREATE SCHEMA mine", f"permission denied for database {db}"),
        ]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match=message):
                con.execute(sql)

    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(pg_server.url(db, f"{db[:50]}_r", "wrong"))
    # no other database: neither the maintenance database nor another test's
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        connect(pg_server.url("postgres", f"{db[:50]}_r", "reader's pw"))
    other = pg_server.create_database(f"{db[:50]}_o")
    try:
        with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
            connect(pg_server.url(database_of(other), f"{db[:50]}_r", "reader's pw"))
    finally:
        pg_server.drop_database(database_of(other))


_seen_dbs: list[str] = []


@pytest.mark.parametrize("run", [1, 2])
def test_pg_url_is_a_fresh_empty_database_per_test(pg_server, pg_url, run):
    db = database_of(pg_url)
    assert db not in _seen_dbs
    with connect(pg_url) as con:
        assert con.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone() == (0,)
        con.execute("CREATE TABLE same_name (x int)")
        owner = con.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
        ).fetchone()
        assert owner == (WRITER,)
    existing = pg_server.admin_sql("SELECT datname FROM pg_database").splitlines()
    assert [d for d in _seen_dbs if d in existing] == []  # the earlier test's was dropped
    _seen_dbs.append(db)


def test_stop_removes_everything_and_is_safe_twice():
    server = PgServer().start()
    d, pid, port = server.dir, server.postmaster_pid(), server.port
    url = server.create_database("stopme")
    with connect(url) as con:
        assert con.execute("SELECT 1").fetchone() == (1,)
    idle = connect(url)  # a session still open at stop: -m fast ends it
    server.stop()
    assert not d.exists()
    assert not is_running(pid)
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", port))
    server.stop()  # no-op
    idle.close()
    with pytest.raises(PgServerError, match="not running"):
        server.admin_sql("SELECT 1")


def _child_server(code: str) -> tuple[Path, int]:
    """Start a server in a child Python that then runs ``code``; returns (dir, postmaster pid)."""
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import os, pgserver\n"
        "s = pgserver.PgServer().start()\n"
        "print(s.dir, s.postmaster_pid(), flush=True)\n" + code
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(TESTS)], capture_output=True, text=True, timeout=120
    )
    assert proc.stdout, proc.stderr
    d, pid = proc.stdout.split()
    return Path(d), int(pid)


def _gone(d: Path, pid: int) -> bool:
    return not d.exists() and not is_running(pid)


def test_a_run_that_exits_without_stop_stops_its_server_at_exit():
    d, pid = _child_server("sys.exit(0)")  # atexit runs
    assert _gone(d, pid)


def test_a_killed_run_s_server_is_reaped_by_the_next_start():
    d, pid = _child_server("os._exit(0)")  # like SIGKILL: no atexit
    try:
        assert d.exists() and is_running(pid)
        assert str(d) in reap_stale()
        assert _gone(d, pid)
    finally:
        reap_stale()


def test_missing_binaries_fail_with_the_reason(tmp_path):
    with pytest.raises(PgServerError) as e:
        find_bindir(pg_config="no-such-pg_config", fallback_glob=str(tmp_path / "*" / "bin"))
    message = str(e.value)
    assert "PostgreSQL server binaries not found (pg_config --bindir gave nothing" in message
    assert "`make test` installs Debian's postgresql package" in message

    with pytest.raises(PgServerError, match="PostgreSQL server binaries not found"):
        PgServer(bindir=tmp_path).start()

    if os.geteuid() == 0:  # as root, the server runs as the postgres system user
        server = PgServer()
        server.os_user = "docwatch_no_such_user"
        with pytest.raises(PgServerError, match="system user 'docwatch_no_such_user' does not"):
            server.start()
        assert server.dir is not None and not server.dir.exists()  # cleaned up

    bindir = find_bindir()  # the real one: has everything the harness runs
    for exe in ("initdb", "pg_ctl", "postgres", "psql"):
        assert os.access(bindir / exe, os.X_OK)


def test_a_server_that_cannot_start_fails_the_tests_that_need_it_never_skips(tmp_path):
    (tmp_path / "conftest.py").write_text(
        f"import sys\nsys.path.insert(0, {str(TESTS)!r})\n"
        "import pgserver\n"
        "pgserver.FALLBACK_GLOB = '/nonexistent/postgresql/*/bin'\n"
        "from conftest_pg import pg_server, pg_url  # noqa: F401\n"
    )
    (tmp_path / "test_needs_pg.py").write_text(
        "def test_server(pg_server):\n    pass\n\ndef test_url(pg_url):\n    pass\n"
    )
    env = {**os.environ, "PATH": str(tmp_path)}  # no pg_config on PATH
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "2 errors" in out and "skipped" not in out, out
    assert "the test PostgreSQL server could not start: PgServerError: PostgreSQL server " in out
    assert "binaries not found (pg_config --bindir gave nothing" in out
    assert "`make test` installs Debian's postgresql package" in out
