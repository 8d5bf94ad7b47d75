"""The systemd notify protocol (sd_notify(3)) over ``NOTIFY_SOCKET``, standard library only.

``Notifier.from_env()`` is disabled (every method a no-op) outside systemd. Sending never raises: a
daemon must not die because its supervisor went away. The environment is left untouched (no
``unset_environment``), so a re-exec'd daemon still finds the socket.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Datagrams of ``KEY=VALUE`` lines to the service manager; one socket, opened on first use."""

    def __init__(
        self,
        address: str | None = None,
        watchdog_usec: str | None = None,
        watchdog_pid: str | None = None,
    ) -> None:
        self._address = _socket_address(address) if address else None
        self.enabled: bool = self._address is not None
        self._watchdog_usec = watchdog_usec
        self._watchdog_pid = watchdog_pid
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """A notifier from ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``."""
        return cls(
            environ.get("NOTIFY_SOCKET") or None,
            environ.get("WATCHDOG_USEC"),
            environ.get("WATCHDOG_PID"),
        )

    def send(self, **fields: object) -> bool:
        """Send ``K=V`` lines in argument order; True when the datagram left, never raises."""
        if not self.enabled or not fields:
            return False
        # A newline inside a value would start a bogus field; STATUS is one line anyway.
        message = "".join(
            f"{key}={str(value).replace(chr(10), ' ')}\n" for key, value in fields.items()
        )
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.sendto(message.encode("utf-8"), self._address)
            except OSError as exc:
                log.debug("sd_notify to %r failed: %s", self._address, exc)
                return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` (and ``STATUS=``): start-up, i.e. the catch-up, is complete."""
        if status is None:
            return self.send(READY=1)
        return self.send(READY=1, STATUS=status)

    def status(self, text: str) -> bool:
        """``STATUS=``: one line shown by ``systemctl status``."""
        return self.send(STATUS=text)

    def stopping(self) -> bool:
        """``STOPPING=1``: shutdown has begun (finishing the batch in hand)."""
        return self.send(STOPPING=1)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: keep-alive ping; send every ``watchdog_interval()`` seconds."""
        return self.send(WATCHDOG=1)

    def extend_timeout(self, seconds: float) -> bool:
        """``EXTEND_TIMEOUT_USEC=``: a long catch-up asks for more start (or stop) time."""
        return self.send(EXTEND_TIMEOUT_USEC=max(0, int(seconds * 1_000_000)))

    def watchdog_interval(self) -> float | None:
        """Ping period in seconds (half of ``WATCHDOG_USEC``), or None when no watchdog is ours.

        Like sd_watchdog_enabled(3): only when ``WATCHDOG_PID`` is unset or is this process.
        """
        try:
            usec = int(self._watchdog_usec or "")
        except ValueError:
            return None
        if usec <= 0:
            return None
        if self._watchdog_pid:
            try:
                if int(self._watchdog_pid) != os.getpid():
                    return None
            except ValueError:
                return None
        return usec / 2 / 1_000_000

    def close(self) -> None:
        """Close the socket; a later ``send`` reopens it."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _socket_address(value: str) -> str | None:
    """A path socket ('/…') or the abstract namespace ('@…' → NUL); anything else is unsupported."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    log.debug("NOTIFY_SOCKET=%r is not a unix socket address; notifications disabled", value)
    return None
