"""Production settings refuse weak secrets and pass `check --deploy`; compose file sanity."""

import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def manage(*args, env_extra=None, drop=()):
    env = {k: v for k, v in os.environ.items() if k not in drop and k != "DJANGO_SETTINGS_MODULE"}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


PRODUCTION = {
    "TRAINYARD_ENV": "production",
    "ALLOWED_HOSTS": "trainyard.example.com",
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/test",
    "REDIS_URL": "redis://127.0.0.1:6379/15",
}


def test_it_refuses_to_start_in_production_without_a_secret_key():
    proc = manage("check", env_extra=PRODUCTION, drop=("SECRET_KEY", "SECRET_KEY_FILE"))
    assert proc.returncode != 0
    assert "needs SECRET_KEY" in proc.stderr


def test_it_refuses_a_weak_secret_key_in_production():
    proc = manage("check", env_extra={**PRODUCTION, "SECRET_KEY": "django-insecure-short"})
    assert proc.returncode != 0
    assert "too weak" in proc.stderr


def test_it_passes_check_deploy_in_production(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("k" * 20 + "Zq8-x_" * 10)
    proc = manage("check", "--deploy", "--fail-level", "WARNING",
                  env_extra={**PRODUCTION, "SECRET_KEY_FILE": str(secret)}, drop=("SECRET_KEY",))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "no issues" in proc.stdout


STANDALONE_DROP = ("DATABASE_URL", "REDIS_URL", "TRAINYARD_ENV", "SECRET_KEY", "SECRET_KEY_FILE")
DATABASE_FILES = ("trainyard.sqlite3", "trainyard.sqlite3-wal", "trainyard.sqlite3-shm")


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_it_keeps_a_new_standalone_database_private(tmp_path):
    var = tmp_path / "var"
    proc = manage("migrate", env_extra={"TRAINYARD_VAR_DIR": str(var)}, drop=STANDALONE_DROP)
    assert proc.returncode == 0, proc.stderr
    assert mode(var) == 0o700
    assert mode(var / "trainyard.sqlite3") == 0o600
    # SQLite gives the WAL the database's mode: open it as the server would and look.
    with sqlite3.connect(var / "trainyard.sqlite3") as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE probe (x)")
        for name in DATABASE_FILES:
            assert mode(var / name) == 0o600, name


def test_it_makes_an_earlier_versions_readable_database_private(tmp_path):
    """var/ and the database as Trainyard left them before (0755, 0644): fixed on start."""
    var = tmp_path / "var"
    var.mkdir(mode=0o755)
    var.chmod(0o755)
    db = sqlite3.connect(var / "trainyard.sqlite3")  # kept open: its -wal and -shm stay
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE django_session (session_key)")
    db.commit()
    for name in DATABASE_FILES:
        (var / name).chmod(0o644)
    try:
        proc = manage("check", env_extra={"TRAINYARD_VAR_DIR": str(var)}, drop=STANDALONE_DROP)
        assert proc.returncode == 0, proc.stderr
        assert mode(var) == 0o700
        for name in DATABASE_FILES:
            assert mode(var / name) == 0o600, name
    finally:
        db.close()


def test_it_describes_every_production_process_in_compose_and_procfile():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "web", "worker", "beat"} <= set(services)
    for name in ("web", "worker", "beat"):
        service = services[name]
        assert service["build"] in (".", {"context": "."}), name
        assert service["environment"]["TRAINYARD_ENV"] == "production"
        assert {"postgres", "redis"} <= set(service["depends_on"])
    procfile = dict(line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines()
                    if line.strip() and not line.startswith("#"))
    assert {"web", "worker", "beat"} <= set(procfile)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pyproject.toml" in dockerfile


def test_every_compose_command_exists():
    """No Docker engine here: check each command names a real module, app or file."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name in ("web", "worker", "beat"):
        command = compose["services"][name]["command"]
        argv = command if isinstance(command, list) else command.split()
        if argv[0] == "celery":
            assert argv[1:3] == ["-A", "pipeline"]
            proc = subprocess.run([sys.executable, "-m", "celery", "-A", "pipeline", argv[3], "--help"],
                                  cwd=ROOT, capture_output=True, text=True, timeout=60,
                                  env={**os.environ, "DJANGO_SETTINGS_MODULE": "pipeline.settings"})
            assert proc.returncode == 0, proc.stderr
        elif argv[0] == "sh":
            script = argv[-1]
            for module in ("pipeline.asgi:application", "pipeline.wsgi:application"):
                if module in script:
                    mod = module.split(":")[0]
                    proc = subprocess.run([sys.executable, "-c", f"import {mod}"], cwd=ROOT,
                                          capture_output=True, text=True, timeout=60)
                    assert proc.returncode == 0, proc.stderr
            assert "migrate" in script
        else:
            raise AssertionError(f"unexpected command for {name}: {command}")
