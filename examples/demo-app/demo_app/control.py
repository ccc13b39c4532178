"""Process control behind bin/start, bin/stop, bin/drain and bin/undrain."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from http.client import HTTPException
from pathlib import Path

from demo_app import config as app_config
from demo_app.config import APP_DIR, Config
from demo_app.server import PID_HEADER

STOP_TIMEOUT = 10.0
POLL_INTERVAL = 0.1
# Health checks of our own instance must never go through an HTTP proxy from the env.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def load_config() -> Config:
    try:
        return app_config.load()
    except ValueError as error:
        raise SystemExit(f"demo-app: {error}") from None


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still accepts signal 0 until it is reaped; /proc says it is gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def is_demo_app(pid: int) -> bool:
    # Guards against pid reuse: only signal a process that runs our server module.
    try:
        return b"demo_app.server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self").exists() and is_running(pid)
    except OSError:
        return False


def wait_for_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while is_running(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL)
    return True


def stop_instance(config: Config, timeout: float = STOP_TIMEOUT) -> int | None:
    """Stop the instance recorded in the pid file; return its pid if one was running."""
    pid = read_pid(config.pid_file)
    if pid is None or not is_running(pid) or not is_demo_app(pid):
        config.pid_file.unlink(missing_ok=True)
        return None
    os.kill(pid, signal.SIGTERM)
    if not wait_for_exit(pid, timeout):
        os.kill(pid, signal.SIGKILL)
        wait_for_exit(pid, timeout)
    config.pid_file.unlink(missing_ok=True)
    return pid


def spawn(config: Config) -> subprocess.Popen:
    """Start the server detached, in its own session, so it outlives the deploy command."""
    env = dict(os.environ, APP_SHA=config.sha, APP_STATE_DIR=str(config.state_dir))
    with config.log_file.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "demo_app.server"],
            cwd=APP_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def health_url(config: Config) -> str:
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(config.host, config.host)
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{config.port}/health"


def answers_health(config: Config, pid: int) -> bool:
    try:
        with _DIRECT.open(health_url(config), timeout=1) as response:
            return response.status == 200 and response.headers.get(PID_HEADER) == str(pid)
    except (OSError, HTTPException):
        return False


def wait_until_healthy(config: Config, process: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if answers_health(config, process.pid):
            return True
        time.sleep(POLL_INTERVAL)
    return False


def log_tail(config: Config, lines: int = 20) -> str:
    try:
        return "\n".join(config.log_file.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def start() -> int:
    config = load_config()
    config.state_dir.mkdir(parents=True, exist_ok=True)
    previous = stop_instance(config)
    if previous:
        print(f"demo-app: stopped previous instance (pid {previous})")
    # A fresh instance takes traffic, even if the one it replaces was drained.
    config.drain_flag.unlink(missing_ok=True)
    process = spawn(config)
    config.pid_file.parent.mkdir(parents=True, exist_ok=True)
    config.pid_file.write_text(f"{process.pid}\n")
    if wait_until_healthy(config, process, float(os.environ.get("START_TIMEOUT", "10"))):
        print(f"demo-app: pid {process.pid} healthy at {health_url(config)} (sha {config.sha})")
        return 0
    if process.poll() is None:
        process.kill()
        process.wait()
    config.pid_file.unlink(missing_ok=True)
    print(f"demo-app: not healthy at {health_url(config)}; log {config.log_file}:", file=sys.stderr)
    print(log_tail(config), file=sys.stderr)
    return 1


def stop() -> int:
    pid = stop_instance(load_config())
    print(f"demo-app: stopped pid {pid}" if pid else "demo-app: not running")
    return 0


def drain() -> int:
    config = load_config()
    config.state_dir.mkdir(parents=True, exist_ok=True)
    config.drain_flag.touch()
    print(f"demo-app: draining ({config.drain_flag})")
    return 0


def undrain() -> int:
    config = load_config()
    config.drain_flag.unlink(missing_ok=True)
    print("demo-app: taking traffic again")
    return 0
