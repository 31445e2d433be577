"""A program run on a real pseudo-terminal that is its controlling terminal (``/dev/tty``),
as when a person runs it in a terminal window; the test types into it and reads what it
shows."""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

# Run first in the child: the pty (its stdin) becomes the new session's controlling
# terminal, then the program is executed in its place.
_TAKE_TERMINAL = (
    "import fcntl, os, sys, termios\n"
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0)\n"
    "os.execvp(sys.argv[1], sys.argv[1:])\n"
)


class Terminal:
    """The terminal's side of a program: what it wrote to the terminal, and typing."""

    def __init__(self, master: int, process: subprocess.Popen[bytes]) -> None:
        self.master = master
        self.process = process
        self.shown = b""
        """Everything written to the terminal so far (echoed typing included)."""

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.master, 4096)
        except OSError:  # EIO: the last holder of the terminal closed it
            return False
        if not data:
            return False
        self.shown += data
        return True

    def expect(self, text: str, timeout: float = 20.0) -> None:
        """Wait until ``text`` has been shown (since the start)."""
        deadline = time.monotonic() + timeout
        open_ = True
        while text.encode() not in self.shown:
            left = deadline - time.monotonic()
            if left <= 0 or not open_:
                raise AssertionError(f"the terminal never showed {text!r}; it shows {self.shown!r}")
            open_ = self._read(min(left, 0.5))

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\r")

    def finish(self, timeout: float = 30.0) -> tuple[int, str]:
        """Wait for the program's end: its exit code and its standard output."""
        assert self.process.stdout is not None
        out, _ = self.process.communicate(timeout=timeout)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and self._read(0.1):
            pass
        return self.process.returncode, out.decode(errors="replace")


@contextlib.contextmanager
def on_terminal(
    command: Sequence[str], env: dict[str, str], cwd: Path | None = None
) -> Iterator[Terminal]:
    """Run ``command`` with a new pty as its controlling terminal, standard input and
    standard error; standard output is a pipe (kubectl reads an exec plugin's output that
    way). Killed and reaped on exit."""
    master, slave = os.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", _TAKE_TERMINAL, *command],
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=slave,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    except BaseException:
        os.close(master)
        os.close(slave)
        raise
    os.close(slave)
    terminal = Terminal(master, process)
    try:
        yield terminal
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()
        os.close(master)
