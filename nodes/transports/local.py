"""Run commands as local subprocesses: checks, and standalone / single-host nodes."""

import os
import selectors
import shutil
import signal
import subprocess
import time

from .base import CommandResult, OutputGate, RunLimits, Transport, TransportError

KILL_GRACE_SECONDS = 2.0
READ_SIZE = 65536


def _kill_group(proc):
    """SIGTERM the whole process group, then SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        if sig == signal.SIGTERM:
            try:
                proc.wait(KILL_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                continue


class LocalTransport(Transport):
    name = "local"

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
    ):
        argv = [str(a) for a in argv]
        if not argv:
            raise TransportError("empty command")
        if cwd is not None and not os.path.isdir(cwd):
            raise TransportError(f"working directory does not exist: {cwd}")
        started = time.monotonic()
        try:
            # A new session makes the command the leader of its own process group, so a
            # timeout kills its children too.
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise TransportError(f"command not found: {argv[0]}") from exc
        except PermissionError as exc:
            raise TransportError(f"not executable: {argv[0]}") from exc
        except NotADirectoryError as exc:
            raise TransportError(f"bad working directory: {cwd}") from exc
        gate = OutputGate(on_output, output_cap)
        result = CommandResult(exit_code=None, duration=0.0)
        try:
            self._pump(proc, gate, result, RunLimits(started, timeout, idle_timeout, cancel, on_tick))
        finally:
            if proc.poll() is None:
                _kill_group(proc)
            proc.wait()
            # Children that outlived the command (daemonised helpers) die with it.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.stdout.close()
        gate.close()
        result.exit_code = proc.returncode
        result.duration = time.monotonic() - started
        result.output_bytes = gate.total
        result.truncated = gate.truncated
        return result

    @staticmethod
    def _pump(proc, gate, result, limits):
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)
        fd = proc.stdout.fileno()
        last_output = limits.started
        exited_at = None
        eof = False
        try:
            while True:
                if limits.exceeded(result, last_output):
                    return
                now = time.monotonic()
                if proc.poll() is not None:
                    # The command is done; give straggling output a moment, not forever
                    # (a background child may hold the pipe open).
                    exited_at = exited_at or now
                    if now - exited_at > 0.5 or eof:
                        return
                if eof:
                    # Output closed but the command still runs: wait for it, timeouts apply.
                    try:
                        proc.wait(0.1)
                    except subprocess.TimeoutExpired:
                        pass
                    continue
                if not selector.select(timeout=0.1):
                    continue
                data = os.read(fd, READ_SIZE)
                if not data:
                    eof = True
                    continue
                last_output = time.monotonic()
                gate.feed(data)
        finally:
            selector.close()

    def put_file(self, local_path, remote_path):
        shutil.copyfile(local_path, remote_path)
