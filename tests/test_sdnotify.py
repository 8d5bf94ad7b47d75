"""sd_notify over a real unix datagram socket (path and abstract namespace)."""

from __future__ import annotations

import os
import socket
import sys
import uuid

import pytest
from docwatch.live.sdnotify import Notifier


@pytest.fixture
def listener(tmp_path):
    """A bound datagram socket standing in for systemd's notify socket."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    yield str(path), sock
    sock.close()


def test_messages_arrive_as_exact_bytes(listener):
    path, sock = listener
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    try:
        assert notifier.ready() is True
        assert sock.recv(4096) == b"READY=1\n"
        assert notifier.ready("caught up: 12 new")
        assert sock.recv(4096) == b"READY=1\nSTATUS=caught up: 12 new\n"
        assert notifier.status("watching 3 folders")
        assert sock.recv(4096) == b"STATUS=watching 3 folders\n"
        assert notifier.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1\n"
        assert notifier.stopping()
        assert sock.recv(4096) == b"STOPPING=1\n"
        assert notifier.send(READY=1, STATUS="x")
        assert sock.recv(4096) == b"READY=1\nSTATUS=x\n"
        assert notifier.extend_timeout(1.5)
        assert sock.recv(4096) == b"EXTEND_TIMEOUT_USEC=1500000\n"
    finally:
        notifier.close()


def test_one_socket_reused_and_reopened_after_close(listener):
    path, sock = listener
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    notifier.status("a")
    first = notifier._sock
    notifier.status("b")
    assert notifier._sock is first
    notifier.close()
    assert notifier._sock is None
    notifier.close()  # idempotent
    assert notifier.status("c")
    assert [sock.recv(4096) for _ in range(3)] == [b"STATUS=a\n", b"STATUS=b\n", b"STATUS=c\n"]
    notifier.close()


def test_newline_in_value_cannot_inject_a_field(listener):
    path, sock = listener
    with Notifier.from_env({"NOTIFY_SOCKET": path}) as notifier:
        assert notifier.status("line one\nREADY=1")
    assert sock.recv(4096) == b"STATUS=line one READY=1\n"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract sockets are Linux-only")
def test_abstract_namespace_socket():
    name = f"docwatch-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        with Notifier.from_env({"NOTIFY_SOCKET": "@" + name}) as notifier:
            assert notifier.enabled
            assert notifier.ready("up")
        assert sock.recv(4096) == b"READY=1\nSTATUS=up\n"
    finally:
        sock.close()


def test_disabled_notifier_is_a_noop():
    notifier = Notifier.from_env({})
    assert notifier.enabled is False
    assert notifier.send(READY=1) is False
    assert notifier.ready("x") is False
    assert notifier.status("x") is False
    assert notifier.stopping() is False
    assert notifier.watchdog() is False
    assert notifier._sock is None
    notifier.close()


@pytest.mark.parametrize("value", ["", "relative/path", "@"])
def test_unsupported_socket_address_disables(value):
    assert Notifier.from_env({"NOTIFY_SOCKET": value}).enabled is False


def test_missing_socket_path_returns_false_without_raising(tmp_path):
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "absent.sock")})
    assert notifier.enabled
    assert notifier.ready("x") is False
    assert notifier.watchdog() is False
    notifier.close()


def test_overlong_socket_path_returns_false_without_raising(tmp_path):
    notifier = Notifier.from_env({"NOTIFY_SOCKET": "/" + "x" * 200})
    assert notifier.send(READY=1) is False
    notifier.close()


def test_environment_is_not_modified(listener, monkeypatch):
    path, _ = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    with Notifier.from_env() as notifier:
        notifier.ready()
    assert os.environ["NOTIFY_SOCKET"] == path
    assert os.environ["WATCHDOG_USEC"] == "2000000"


def test_watchdog_interval():
    env = {"NOTIFY_SOCKET": "/run/none", "WATCHDOG_USEC": "2000000"}
    assert Notifier.from_env(env).watchdog_interval() == 1.0
    ours = {**env, "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_env(ours).watchdog_interval() == 1.0
    other = {**env, "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier.from_env(other).watchdog_interval() is None


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "-5"},
        {"WATCHDOG_USEC": "soon"},
        {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "not-a-pid"},
    ],
)
def test_watchdog_interval_absent_or_invalid(env):
    assert Notifier.from_env(env).watchdog_interval() is None
