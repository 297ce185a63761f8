"""Processes for the end-to-end test: started by the test on free loopback ports, stopped by PID, with
bounded waits whose failure messages carry the tail of every server's log."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Proc:
    name: str
    args: list[str]
    log: Path
    env: Mapping[str, str]
    cwd: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        handle = self.log.open("wb")
        self.popen = subprocess.Popen(
            self.args, stdout=handle, stderr=subprocess.STDOUT, env=dict(self.env), cwd=self.cwd, start_new_session=True
        )
        return self

    def tail(self, lines: int = 40) -> str:
        if not self.log.exists():
            return "(no log)"
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM to the process's group (its own: ``start_new_session``), SIGKILL after ``grace``, then SIGKILL
        to whatever is left in the group. A ``rubric-judge worker`` stops its RQ work-horse, which runs in a
        group of its own, itself."""
        if not self.alive():
            return
        assert self.popen is not None
        pgid = self.popen.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            self.popen.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # children that outlived it (just now: no pid reuse)
            os.killpg(pgid, signal.SIGKILL)


@dataclass
class Stack:
    procs: list[Proc] = field(default_factory=list)  # must stay alive: wait_for fails when one exits
    done: list[Proc] = field(default_factory=list)  # finished as they should (a burst worker); logs still shown
    hogs: list[CpuHog] = field(default_factory=list)  # CPU hogs beside the stack: stopped first
    shared: list[Proc] = field(default_factory=list)  # watched and logged like procs, but stopped by their owner

    def add(self, proc: Proc) -> Proc:
        self.procs.append(proc.start())
        return proc

    def hog(self, env: Mapping[str, str]) -> CpuHog:
        """Start a CPU hog on every core (``CpuHog``) that ``stop`` stops at the latest."""
        hog = CpuHog(env).start()
        self.hogs.append(hog)
        return hog

    def retire(self, proc: Proc) -> None:
        """``proc`` has finished its work: stop watching it (it is still stopped and logged at the end)."""
        self.procs.remove(proc)
        self.done.append(proc)

    def logs(self) -> str:
        return "\n\n".join(
            f"----- {p.name} (pid {p.popen.pid if p.popen else '-'}) log tail -----\n{p.tail()}"
            for p in [*self.shared, *self.procs, *self.done]
        )

    def fail(self, message: str) -> AssertionError:
        return AssertionError(f"{message}\n\n{self.logs()}")

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float, interval: float = 1.0) -> Any:
        """Poll ``check`` until it returns something truthy; fail with every log tail after ``timeout``."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            for proc in [*self.shared, *self.procs]:
                if not proc.alive():
                    raise self.fail(
                        f"{proc.name} exited (code {proc.popen.returncode if proc.popen else '?'}) "
                        f"while waiting for {what}"
                    )
            try:
                value = check()
                if value:
                    return value
            except (requests.RequestException, ValueError, KeyError) as exc:
                last_error = exc
            time.sleep(interval)
        raise self.fail(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last_error!r})")

    def stop(self) -> None:
        for hog in self.hogs:
            hog.stop()
        for proc in reversed([*self.done, *self.procs]):
            proc.stop()


#: One process per core, each spinning at normal priority; each ends by itself within about 0.1 s once the
#: process that started the hog (``sys.argv[1]``) is gone, so a test killed outright leaves no hog behind.
_HOG = """
import os, sys
owner, cores = int(sys.argv[1]), int(sys.argv[2])
for _ in range(cores - 1):
    if os.fork() == 0:
        break
while True:
    for _ in range(1_000_000):
        pass
    try:
        os.kill(owner, 0)
    except ProcessLookupError:
        os._exit(0)
"""


@dataclass
class CpuHog:
    """A busy machine: ``cores`` (default: every core) Python processes spinning ``while True: pass`` at normal
    priority, in one process group of their own, with ``env`` (the test's marker variables, so that the
    leftover checks cover them). ``stop`` kills the group; use it as a context manager."""

    env: Mapping[str, str]
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    popen: subprocess.Popen[bytes] | None = None
    started: float | None = None

    def start(self) -> CpuHog:
        self.popen = subprocess.Popen(
            [sys.executable, "-c", _HOG, str(os.getpid()), str(self.cores)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=dict(self.env),
            start_new_session=True,
        )
        self.started = time.monotonic()
        return self

    def pids(self) -> list[int]:
        """The hog's live processes (its group), from ``/proc``."""
        if self.popen is None:
            return []
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except (OSError, IndexError):
                    continue
                if stat[0] != "Z" and int(stat[2]) == self.popen.pid:  # field 5: the process group
                    found.append(int(entry.name))
        return found

    def stop(self) -> None:
        if self.popen is None or self.popen.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)
        deadline = time.monotonic() + 10
        while self.pids() and time.monotonic() < deadline:  # the forks are reaped by init
            time.sleep(0.05)

    def __enter__(self) -> CpuHog:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
