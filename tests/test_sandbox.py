"""The sandbox user commands run in: `wrap` per mode, `mode()`, and attacks through the
real bubblewrap and LocalTransport that must fail cleanly."""

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from nodes.transports import LocalTransport
from pipeline import sandbox
from tests.helpers import GitRepo, require, wait_until

PATH = "/usr/bin:/bin"


@pytest.fixture
def job(tmp_path, settings):
    """A fake Trainyard: its var dir with secrets and a mirror, and one job's folders."""
    var = tmp_path / "var"
    var.mkdir()
    settings.VAR_DIR = var
    token = uuid.uuid4().hex
    secrets = {"secret_key": f"sk-{token}", "admin-credentials.txt": f"admin:pw-{token}",
               "api-token": f"tok-{token}"}
    for name, text in secrets.items():
        (var / name).write_text(text)
    with sqlite3.connect(var / "trainyard.sqlite3") as db:
        db.execute("CREATE TABLE secrets (value TEXT)")
        db.execute("INSERT INTO secrets VALUES (?)", (f"db-{token}",))
    db.close()
    origin = GitRepo(tmp_path / "origin")
    origin.commit({"README": "hello\n"}, message="Initial commit")
    mirror = var / "mirrors" / "app.git"
    origin.git("clone", "-q", "--mirror", str(origin.path), str(mirror))
    workspace, home = tmp_path / "job" / "workspace", tmp_path / "job" / "home"
    home.mkdir(parents=True)
    # --shared: the checkout borrows the mirror's objects through git alternates.
    origin.git("clone", "-q", "--shared", str(mirror), str(workspace))
    return SimpleNamespace(var=var, token=token, mirror=mirror, workspace=workspace, home=home,
                           files=[var / name for name in [*secrets, "trainyard.sqlite3"]])


@pytest.fixture
def bwrap(settings):
    require(shutil.which("bwrap"), "bubblewrap (apt-get install bubblewrap)")
    settings.TRAINYARD = {**settings.TRAINYARD, "SANDBOX": "bwrap"}
    assert sandbox.mode() == "bwrap"


def sandboxed(job, script, *args, mode="bwrap", env=None, timeout=30, **wrap_kwargs):
    """Run a shell script in the job's sandbox the way the job runner does."""
    argv, popen_env, cwd = sandbox.wrap(["sh", "-c", script, "sh", *map(str, args)],
                                        workspace=job.workspace, home=job.home,
                                        env=env or {"PATH": PATH}, mode=mode, **wrap_kwargs)
    chunks = []
    result = LocalTransport().run(argv, cwd=cwd, env=popen_env, timeout=timeout,
                                  on_output=chunks.append)
    return result, "".join(chunks)


def assert_never_appears(path, seconds=2.0):
    """The attack had `seconds` to create `path` and did not (polling, with a deadline)."""
    with pytest.raises(AssertionError, match="timed out"):
        wait_until(path.exists, timeout=seconds, message=f"{path} to appear")


def host_processes_with(marker):
    """Pids on the host whose command line contains `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                found.append(entry.name)
        except OSError:
            continue  # ended while we looked
    return found


def options(argv, option, count):
    """The `count` values after each occurrence of `option` in a bwrap command line."""
    return [tuple(argv[i + 1:i + 1 + count]) for i, arg in enumerate(argv) if arg == option]


# wrap(), without running anything ------------------------------------------------------

@pytest.fixture
def probed(monkeypatch, settings, tmp_path):
    """wrap() as on a host where bwrap works with a user namespace."""
    settings.VAR_DIR = tmp_path / "var"
    monkeypatch.setattr(sandbox, "_probe", lambda binary: sandbox.Probe(sandbox.ISOLATION_LEVELS[0]))


@pytest.mark.parametrize("mode", ["off", "unsandboxed"])
def test_it_leaves_the_command_alone_without_the_sandbox(tmp_path, mode):
    argv, env, cwd = sandbox.wrap(["make", "test"], workspace=tmp_path / "ws", home=tmp_path / "home",
                                  env={"PATH": PATH, "CI": "true"}, mode=mode, cwd="app")
    assert argv == ["make", "test"]
    assert env == {"PATH": PATH, "CI": "true", "HOME": str(tmp_path / "home")}
    assert cwd == str(tmp_path / "ws" / "app")


def test_it_builds_a_bubblewrap_command_line(probed, tmp_path):
    argv, env, cwd = sandbox.wrap(["make", "test"], workspace=tmp_path / "ws", home=tmp_path / "home",
                                  env={"PATH": PATH, "CI": "true"}, mode="bwrap")
    assert argv[0] == sandbox.BWRAP and argv[-3:] == ["--", "make", "test"]
    assert env == {} and cwd == str(tmp_path / "ws")
    for flag in ("--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                 "--unshare-user", "--new-session", "--clearenv"):
        assert flag in argv
    assert argv.index("--clearenv") < argv.index("--setenv")
    assert options(argv, "--setenv", 2) == [("PATH", PATH), ("CI", "true"), ("HOME", sandbox.HOME)]
    assert options(argv, "--bind", 2) == [(str(tmp_path / "ws"), "/workspace"),
                                          (str(tmp_path / "home"), "/home/build")]
    assert ("/tmp",) in options(argv, "--tmpfs", 1)
    assert options(argv, "--proc", 1) == [("/proc",)] and options(argv, "--dev", 1) == [("/dev",)]
    assert options(argv, "--chdir", 1) == [("/workspace",)]
    assert "--unshare-net" not in argv  # setup installs from package indexes


def test_it_binds_only_system_files_read_only(probed, tmp_path):
    argv, _, _ = sandbox.wrap(["true"], workspace=tmp_path, home=tmp_path, env={}, mode="bwrap")
    sources = [src for src, _ in options(argv, "--ro-bind", 2)]
    identity = str(tmp_path / "var" / "sandbox")
    assert all(src.startswith(("/usr", "/etc/", identity)) for src in sources), sources
    for hidden in ("/", "/etc", "/etc/ssl", "/etc/ssl/private", "/etc/shadow", "/root", "/home"):
        assert hidden not in sources
    for path in ("/bin", "/sbin", "/lib", "/lib64"):
        if os.path.islink(path):  # merged /usr (Debian 12)
            assert (os.readlink(path), path) in options(argv, "--symlink", 2)
    assert (f"{identity}/passwd", "/etc/passwd") in options(argv, "--ro-bind", 2)
    assert "build:x:1000:1000:" in (tmp_path / "var" / "sandbox" / "passwd").read_text()


def test_it_adds_extra_read_only_binds_at_the_same_path(probed, settings, tmp_path):
    settings.TRAINYARD = {**settings.TRAINYARD, "SANDBOX_RO_BINDS": ["/opt/toolchain"]}
    objects = tmp_path / "mirror.git" / "objects"
    argv, _, _ = sandbox.wrap(["true"], workspace=tmp_path, home=tmp_path, env={}, mode="bwrap",
                              extra_ro_binds=[objects])
    binds = options(argv, "--ro-bind", 2)
    assert ("/opt/toolchain", "/opt/toolchain") in binds and (str(objects), str(objects)) in binds
    # After the private /tmp, which would otherwise hide a bind under /tmp.
    assert argv.index(str(objects)) > argv.index("--tmpfs")


def test_it_runs_in_a_folder_of_the_workspace(probed, tmp_path):
    argv, _, _ = sandbox.wrap(["true"], workspace=tmp_path, home=tmp_path, env={}, mode="bwrap",
                              cwd="services/api/")
    assert options(argv, "--chdir", 1) == [("/workspace/services/api",)]
    for outside in ("..", "../other-job", "/etc", "a/../../b"):
        with pytest.raises(ValueError, match="inside the workspace"):
            sandbox.wrap(["true"], workspace=tmp_path, home=tmp_path, env={}, mode="bwrap", cwd=outside)


def test_it_refuses_to_wrap_when_bubblewrap_does_not_work(monkeypatch, tmp_path):
    monkeypatch.setattr(sandbox, "BWRAP", str(tmp_path / "no-bwrap"))
    with pytest.raises(sandbox.SandboxUnavailable, match="apt-get install bubblewrap"):
        sandbox.wrap(["true"], workspace=tmp_path, home=tmp_path, env={}, mode="bwrap")


# mode() --------------------------------------------------------------------------------

def test_it_is_off_when_configured_off(settings):
    settings.TRAINYARD = {**settings.TRAINYARD, "SANDBOX": "off"}
    assert sandbox.mode() == "off"
    assert "sandbox is off" in sandbox.warning("off")


def test_it_refuses_an_unknown_sandbox_setting(settings):
    settings.TRAINYARD = {**settings.TRAINYARD, "SANDBOX": "of"}
    with pytest.raises(sandbox.SandboxUnavailable, match="'bwrap' or 'off'"):
        sandbox.mode()


def test_it_refuses_to_run_in_production_without_bubblewrap(settings, monkeypatch, tmp_path):
    settings.TRAINYARD = {**settings.TRAINYARD, "SANDBOX": "bwrap"}
    settings.PRODUCTION = True
    monkeypatch.setattr(sandbox, "BWRAP", str(tmp_path / "no-bwrap"))
    with pytest.raises(sandbox.SandboxUnavailable, match="not found.*apt-get install bubblewrap"):
        sandbox.mode()


def test_it_refuses_to_run_in_production_with_a_broken_bubblewrap(settings, monkeypatch, tmp_path):
    settings.TRAINYARD = {**settings.TRAINYARD, "SANDBOX": "bwrap"}
    settings.PRODUCTION = True
    broken = tmp_path / "bwrap"
    broken.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setattr(sandbox, "BWRAP", str(broken))
    with pytest.raises(sandbox.SandboxUnavailable, match="exited 1: bwrap: No permissions"):
        sandbox.mode()


def test_it_runs_unsandboxed_in_standalone_with_a_loud_warning(settings, monkeypatch, tmp_path):
    settings.TRAINYARD = {**settings.TRAINYARD, "SANDBOX": "bwrap"}
    settings.PRODUCTION = False
    monkeypatch.setattr(sandbox, "BWRAP", str(tmp_path / "no-bwrap"))
    assert sandbox.mode() == "unsandboxed"
    line = sandbox.warning("unsandboxed")
    assert line.startswith("WARNING: UNSANDBOXED") and "apt-get install bubblewrap" in line
    assert "\n" not in line


def test_it_probes_bubblewrap_once_per_process(settings, monkeypatch, tmp_path):
    settings.TRAINYARD = {**settings.TRAINYARD, "SANDBOX": "bwrap"}
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    calls = []
    monkeypatch.setattr(sandbox, "BWRAP", str(fake))
    monkeypatch.setattr(sandbox, "_try_isolation", lambda binary, isolation: calls.append(1) or "")
    assert [sandbox.mode(), sandbox.mode()] == ["bwrap", "bwrap"]
    assert len(calls) == 1


def test_it_is_on_where_bubblewrap_works(bwrap):
    assert sandbox.warning("bwrap") == ""


# Attacks from inside, through the real bubblewrap ---------------------------------------

def test_it_hides_trainyard_secrets_and_the_host(bwrap, job, settings):
    real_secret = Path(settings.BASE_DIR) / "var" / "secret_key"
    targets = [*job.files, real_secret, "/etc/shadow", "/etc/ssl/private", "/root",
               job.mirror / "config", job.workspace]
    result, out = sandboxed(job, 'for f in "$@"; do [ -e "$f" ] && echo "VISIBLE $f"; cat "$f"; done;'
                                 ' echo "home: $(ls -A /home) tmp: $(ls -A /tmp)"', *targets)
    assert "VISIBLE" not in out and job.token not in out
    assert out.count("No such file or directory") == len(targets)
    assert out.endswith("home: build tmp: \n")  # its own home, its own empty /tmp


def test_it_hides_the_worker_environment(bwrap, job, monkeypatch):
    monkeypatch.setenv("SECRET_KEY", f"server-{job.token}")
    result, out = sandboxed(
        job, '[ -e "/proc/$1" ] && echo "VISIBLE /proc/$1"; cat "/proc/$1/environ";'
             ' echo "pid 1: [$(tr "\\0" " " < /proc/1/environ)]"; cat /proc/[0-9]*/environ; echo; env',
        os.getpid(), env={"PATH": PATH, "CI": "true"})
    assert f"server-{job.token}" not in out and "VISIBLE" not in out
    assert "pid 1: []" in out  # bwrap itself started with an empty environment
    names = {line.split("=", 1)[0] for line in out.split("\n", 3)[-1].splitlines() if "=" in line}
    assert names == {"PATH", "CI", "HOME", "PWD"}, out


def test_it_shows_only_the_sandbox_processes(bwrap, job):
    result, out = sandboxed(
        job, 'for p in /proc/[0-9]*; do echo "${p#/proc/} $(tr "\\0" " " < $p/cmdline)"; done')
    lines = (line.split(" ", 1) for line in out.splitlines())
    programs = {pid: cmdline.split()[0] for pid, cmdline in lines}
    assert result.ok
    # bwrap as pid 1 (it reaps and ends everything when the command ends), and the command.
    assert programs == {"1": sandbox.BWRAP, "2": "sh"}, out


def test_it_hides_trainyard_python_and_its_virtualenv(bwrap, job):
    ours = [sys.executable, sys.prefix, os.path.realpath(sys.executable), "/root/.pyenv", "/work"]
    result, out = sandboxed(job, 'for f in "$@"; do [ -e "$f" ] && echo "VISIBLE $f"; done; '
                                 'command -v python3', *ours)
    assert "VISIBLE" not in out
    assert out.strip() == "/usr/bin/python3"  # Debian's, from the read-only /usr


def test_it_keeps_the_mirror_read_only(bwrap, job):
    objects = job.mirror / "objects"
    before = sorted(p.relative_to(job.mirror) for p in job.mirror.rglob("*"))
    result, out = sandboxed(
        job, 'git log --format=%s -1; touch "$1/evil" || echo "REFUSED objects";'
             ' rm -rf "$1"/pack || echo "REFUSED rm"; echo x > "$2/HEAD"; echo x > "$2/config"',
        objects, job.mirror, extra_ro_binds=[objects])
    assert out.startswith("Initial commit\n")  # the checkout's alternates resolve
    assert "REFUSED objects" in out and "REFUSED rm" in out and "Read-only file system" in out
    assert sorted(p.relative_to(job.mirror) for p in job.mirror.rglob("*")) == before
    assert "ref: refs/heads/master" in (job.mirror / "HEAD").read_text()
    assert "bare = true" in (job.mirror / "config").read_text()


def test_it_writes_only_its_workspace_home_and_private_tmp(bwrap, job):
    host_marker = Path(tempfile.gettempdir()) / f"trainyard-host-{job.token}"
    host_marker.touch()
    inside_tmp = Path(tempfile.gettempdir()) / f"trainyard-inside-{job.token}"
    try:
        result, out = sandboxed(
            job, 'mkdir -p out && echo built > out/app.txt && echo cfg > "$HOME/.netrc";'
                 ' ls -A /tmp; [ -e "$1" ] && echo "VISIBLE host tmp"; echo t > "$2";'
                 ' touch /evil || echo "REFUSED /"; touch /usr/evil || echo "REFUSED /usr"; id -u',
            host_marker, inside_tmp)
        assert not inside_tmp.exists()
    finally:
        host_marker.unlink()
    assert "VISIBLE" not in out and "REFUSED /\n" in out and "REFUSED /usr\n" in out
    assert (job.workspace / "out" / "app.txt").read_text() == "built\n"
    for made in (job.workspace / "out", job.workspace / "out" / "app.txt", job.home / ".netrc"):
        assert (made.stat().st_uid, made.stat().st_gid) == (os.geteuid(), os.getegid())


def test_it_runs_without_capabilities(bwrap, job):
    result, out = sandboxed(job, 'grep -E "^Cap(Eff|Prm)" /proc/self/status; id -u; pwd',
                            cwd=".")
    assert "CapEff:\t0000000000000000" in out and "CapPrm:\t0000000000000000" in out
    if "--unshare-user" in sandbox._probe(sandbox.BWRAP).isolation:
        assert out.splitlines()[2] == "1000"
    assert out.splitlines()[-1] == "/workspace"


# The leftover says when it runs in its own session, and the command waits for that, or a
# kill racing its `setsid` would pass these tests without the sandbox doing anything.
LEAVE_BEHIND = ('setsid sh -c "touch ready; sleep $1; touch late" > /dev/null 2>&1 &'
                ' while [ ! -e ready ]; do sleep 0.01; done; echo started')


def test_it_ends_what_a_command_leaves_behind(bwrap, job):
    marker = f"1.{uuid.uuid4().int % 10**6:06d}"  # a sleep we can find on the host
    result, out = sandboxed(job, LEAVE_BEHIND, marker)
    assert result.ok and out == "started\n"
    wait_until(lambda: not host_processes_with(marker), timeout=1, message="the leftover to end")
    assert_never_appears(job.workspace / "late")


def test_it_would_leave_it_running_without_the_sandbox(job):
    """The attack above is real: unsandboxed, the setsid child outlives the command."""
    result, out = sandboxed(job, LEAVE_BEHIND, "0.2", mode="off")
    assert result.ok and out == "started\n"
    wait_until((job.workspace / "late").exists, timeout=10, message="the leftover to write")


def test_it_kills_the_whole_tree_at_the_timeout(bwrap, job):
    marker = f"1.{uuid.uuid4().int % 10**6:06d}"
    result, out = sandboxed(
        job, 'trap "" TERM; (trap "" TERM; touch ready1; sleep "$1"; touch child) &'
             ' setsid sh -c "touch ready2; sleep $1; touch session" &'
             ' while [ ! -e ready1 ] || [ ! -e ready2 ]; do sleep 0.01; done; echo started; sleep 60',
        marker, timeout=0.5)
    assert result.timed_out and out == "started\n"
    wait_until(lambda: not host_processes_with(marker), timeout=3, message="the tree to end")
    assert_never_appears(job.workspace / "child")
    assert not (job.workspace / "session").exists()


def test_it_runs_python_and_git_in_the_workspace(bwrap, job):
    (job.workspace / "check.py").write_text("import ssl, sys\nprint(sys.executable, ssl.OPENSSL_VERSION)\n")
    result, out = sandboxed(job, "python3 check.py && git status --short && git rev-parse HEAD",
                            extra_ro_binds=[job.mirror / "objects"])
    assert result.ok, out
    assert out.startswith("/usr/bin/python3 OpenSSL")
    assert subprocess.run(["git", "rev-parse", "HEAD"], cwd=job.workspace, capture_output=True,
                          text=True).stdout in out
