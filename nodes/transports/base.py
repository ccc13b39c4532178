"""The transport contract and the output rules every transport shares."""

import codecs
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass


class TransportError(Exception):
    """The command could not be run at all (connection refused, host key mismatch...)."""


@dataclass
class CommandResult:
    exit_code: int | None
    duration: float
    output_bytes: int = 0
    truncated: bool = False
    timed_out: bool = False
    idle_timed_out: bool = False
    cancelled: bool = False

    @property
    def ok(self):
        return self.exit_code == 0 and not (self.timed_out or self.idle_timed_out or self.cancelled)

    def describe(self, timeout=None, idle_timeout=None):
        """One line a person can act on."""
        if self.timed_out:
            return f"killed after its timeout of {timeout}s" if timeout else "timed out"
        if self.idle_timed_out:
            return f"killed after {idle_timeout}s without output"
        if self.cancelled:
            return "cancelled"
        if self.exit_code == 0:
            return "exited 0"
        if self.exit_code is not None and self.exit_code < 0:
            return f"killed by signal {-self.exit_code}"
        return f"exited {self.exit_code}"


@dataclass
class RunLimits:
    """The overall timeout, the no-output timeout and cancellation of one run, checked in
    this one place by every transport (the output cap is OutputGate's).

    `started` is when the run began (time.monotonic()); `cancel` is a threading.Event.
    """

    started: float
    timeout: float | None = None
    idle_timeout: float | None = None
    cancel: object = None
    on_tick: Callable[[], object] | None = None

    def exceeded(self, result, last_output):
        """Call `on_tick`, then True if a limit stops the run, marked on `result` (timed_out,
        idle_timed_out or cancelled). `last_output` is when output last came."""
        if self.on_tick is not None:
            self.on_tick()
        now = time.monotonic()
        if self.timeout is not None and now - self.started > self.timeout:
            result.timed_out = True
            return True
        if self.idle_timeout is not None and now - last_output > self.idle_timeout:
            result.idle_timed_out = True
            return True
        if self.cancel is not None and self.cancel.is_set():
            result.cancelled = True
            return True
        return False


class OutputGate:
    """Decodes output, forwards it to a callback and stops forwarding past the cap.

    The command keeps running past the cap (its output is drained and dropped) so that
    it still ends on its own terms.
    """

    def __init__(self, on_output=None, cap=None):
        self.on_output = on_output
        self.cap = cap
        self.total = 0
        self.forwarded = 0
        self.truncated = False
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes):
        self.total += len(data)
        if self.truncated:
            return
        if self.cap is not None and self.forwarded + len(data) > self.cap:
            data = data[: self.cap - self.forwarded]
            self.truncated = True
        self.forwarded += len(data)
        text = self._decoder.decode(data, final=self.truncated)
        if self.truncated:
            text += f"\n[trainyard: output capped at {self.cap} bytes; the rest was dropped]\n"
        if text and self.on_output:
            self.on_output(text)

    def close(self):
        if not self.truncated:
            tail = self._decoder.decode(b"", final=True)
            if tail and self.on_output:
                self.on_output(tail)


class Transport(ABC):
    """Runs argument lists somewhere. Never a shell string built from user input."""

    name = "base"

    @abstractmethod
    def run(
        self,
        argv,
        *,
        cwd=None,
        env=None,
        timeout,
        idle_timeout=None,
        on_output=None,
        output_cap=None,
        cancel=None,
        on_tick=None,
    ) -> CommandResult:
        """Run `argv`; stdout and stderr are merged and streamed to `on_output`.

        `on_tick` is called a few times a second while the command runs (flush buffered
        output, heartbeat); `cancel` is a threading.Event that stops the command.
        """

    @abstractmethod
    def put_file(self, local_path, remote_path):
        """Copy a local file to `remote_path` on the target."""

    def close(self):  # noqa: B027 - most transports hold nothing to close
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
