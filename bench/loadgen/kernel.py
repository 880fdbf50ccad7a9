"""Linux facilities the generator needs and Python 3.11 does not wrap: a timerfd, timer slack,
kernel receive timestamps (SO_TIMESTAMPNS) and the open-file limit."""

from __future__ import annotations

import ctypes
import os
import resource
import socket
import struct
import time

SO_TIMESTAMPNS = 35  # = SCM_TIMESTAMPNS; socket.SO_TIMESTAMPNS is missing before Python 3.12 on some builds
# Room for one cmsg carrying a struct timespec (CMSG_SPACE(16) is 32 on 64-bit Linux).
ANCILLARY_SIZE = socket.CMSG_SPACE(16)
TIMESPEC = struct.Struct("@qq")  # struct timespec on 64-bit Linux

CLOCK_MONOTONIC = 1
TFD_NONBLOCK = os.O_NONBLOCK
TFD_CLOEXEC = os.O_CLOEXEC
TFD_TIMER_ABSTIME = 1
PR_SET_TIMERSLACK = 29


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.timerfd_create.restype = ctypes.c_int
_libc.timerfd_settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec),
                                  ctypes.POINTER(_Itimerspec)]
_libc.timerfd_settime.restype = ctypes.c_int
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.prctl.restype = ctypes.c_int


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return rc


def set_timer_slack(ns: int = 1) -> None:
    """Let the kernel wake this thread within ``ns`` of a timer (default slack: 50 µs)."""
    _check(_libc.prctl(PR_SET_TIMERSLACK, ns, 0, 0, 0), "prctl(PR_SET_TIMERSLACK)")


class Timer:
    """A CLOCK_MONOTONIC timerfd set to absolute one-shot expirations; poll it with epoll (readable
    once expired). Re-arming clears the expiration, so it need not be read."""

    def __init__(self) -> None:
        self.fd = _check(_libc.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC), "timerfd_create")
        self._spec = _Itimerspec()
        self._ref = ctypes.byref(self._spec)

    def arm_at(self, monotonic_ns: int) -> None:
        """Expire at ``monotonic_ns`` (time.monotonic_ns()); a time in the past expires at once."""
        value = self._spec.it_value
        value.tv_sec, value.tv_nsec = divmod(max(monotonic_ns, 1), 1_000_000_000)
        if _libc.timerfd_settime(self.fd, TFD_TIMER_ABSTIME, self._ref, None) < 0:
            _check(-1, "timerfd_settime")

    def arm_periodic(self, first_monotonic_ns: int, period_ns: int) -> None:
        """Expire at ``first_monotonic_ns`` and every ``period_ns`` after it; each expiry must be
        consumed with :meth:`consume` (epoll reports the timer readable until then)."""
        value, interval = self._spec.it_value, self._spec.it_interval
        value.tv_sec, value.tv_nsec = divmod(max(first_monotonic_ns, 1), 1_000_000_000)
        interval.tv_sec, interval.tv_nsec = divmod(max(period_ns, 1), 1_000_000_000)
        try:
            _check(_libc.timerfd_settime(self.fd, TFD_TIMER_ABSTIME, self._ref, None), "timerfd_settime")
        finally:
            interval.tv_sec = interval.tv_nsec = 0

    def consume(self) -> int:
        """The number of expiries since the last call (0 if none)."""
        try:
            return int.from_bytes(os.read(self.fd, 8), "little")
        except BlockingIOError:
            return 0

    def disarm(self) -> None:
        value = self._spec.it_value
        value.tv_sec = value.tv_nsec = 0
        _check(_libc.timerfd_settime(self.fd, TFD_TIMER_ABSTIME, self._ref, None), "timerfd_settime")

    def close(self) -> None:
        os.close(self.fd)


def enable_rx_timestamps(sock: socket.socket) -> None:
    """Have the kernel stamp every received segment (CLOCK_REALTIME, ns); read with :func:`stamp_of`."""
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)


def stamp_of(ancdata: list[tuple[int, int, bytes]]) -> int:
    """The receive time in Unix ns carried by ``recvmsg`` ancillary data; now if there is none."""
    for level, kind, data in ancdata:
        if kind == SO_TIMESTAMPNS and level == socket.SOL_SOCKET and len(data) >= 16:
            sec, nsec = TIMESPEC.unpack_from(data)
            return int(sec * 1_000_000_000 + nsec)
    return time.time_ns()


def raise_nofile() -> int:
    """Raise the soft open-file limit to the hard one; returns the limit in effect."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= want:
        return want
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        return want
    except (ValueError, OSError):
        return soft
