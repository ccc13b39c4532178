"""SSHTransport against real OpenSSH sshd nodes on loopback."""

import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from nodes.transports import TransportError
from nodes.transports.ssh import SSHTransport, fetch_host_key
from tests.helpers import free_port, wait_until
from tests.sshd import ClientKey, generate_key, keygen_fingerprint, process_alive

pytestmark = pytest.mark.ssh


@pytest.fixture
def node(ssh_nodes):
    return ssh_nodes[0]


@pytest.fixture
def ssh(node):
    with SSHTransport(**node.transport_kwargs()) as transport:
        yield transport


def run(transport, argv, **kwargs):
    """Run and collect the output text."""
    chunks = []
    kwargs.setdefault("timeout", 20)
    result = transport.run(argv, on_output=chunks.append, **kwargs)
    return result, "".join(chunks)


def read_pid(path):
    wait_until(lambda: path.exists() and path.read_text().strip(), timeout=10, message=str(path))
    return int(path.read_text())


# Running commands ---------------------------------------------------------------------------

def test_it_streams_output_as_it_comes(ssh):
    arrivals = []
    started = time.monotonic()
    result = ssh.run(["sh", "-c", "echo one; sleep 0.5; echo two"], timeout=20,
                     on_output=lambda text: arrivals.append((time.monotonic() - started, text)))
    assert result.ok and result.exit_code == 0
    assert "".join(text for _, text in arrivals) == "one\ntwo\n"
    assert arrivals[0][1] == "one\n" and arrivals[0][0] < result.duration - 0.3
    assert result.output_bytes == len("one\ntwo\n")  # the transport's pid line is not output


def test_it_reports_exit_codes_and_merges_stderr(ssh):
    result, output = run(ssh, ["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert result.exit_code == 7 and not result.ok
    assert output == "out\nerr\n"
    assert result.describe() == "exited 7"


def test_it_reports_a_command_killed_by_a_signal(ssh):
    result, _ = run(ssh, ["sh", "-c", "kill -KILL $$"])
    assert result.exit_code == -9
    assert result.describe() == "killed by signal 9"


def test_it_reports_a_missing_command_as_the_shell_does(ssh):
    result, output = run(ssh, ["no-such-command-here"])
    assert result.exit_code == 127 and "not found" in output


def test_it_kills_the_command_and_its_children_at_the_timeout(ssh, tmp_path):
    script = 'sleep 60 & echo $! > "$1/child"; echo $$ > "$1/pid"; wait'
    result, _ = run(ssh, ["sh", "-c", script, "sh", str(tmp_path)], timeout=1)
    assert result.timed_out and not result.ok
    assert result.duration < 5
    assert result.describe(timeout=1) == "killed after its timeout of 1s"
    for name in ("pid", "child"):
        pid = read_pid(tmp_path / name)
        wait_until(lambda pid=pid: not process_alive(pid), timeout=5, message=f"{name} {pid} to end")


def test_it_stops_a_silent_command_at_the_idle_timeout(ssh, tmp_path):
    result, output = run(ssh, ["sh", "-c", 'echo $$ > "$1"; echo working; sleep 60', "sh",
                               str(tmp_path / "pid")], idle_timeout=1)
    assert result.idle_timed_out and output == "working\n"
    assert result.duration < 5
    pid = read_pid(tmp_path / "pid")
    wait_until(lambda: not process_alive(pid), timeout=5, message="the silent command to end")


def test_it_cancels_a_running_command(ssh):
    cancel = threading.Event()

    def on_output(text):
        if "ready" in text:
            cancel.set()

    result = ssh.run(["sh", "-c", "echo ready; sleep 60"], timeout=30, on_output=on_output,
                     cancel=cancel)
    assert result.cancelled and result.duration < 5


@pytest.mark.parametrize("attempt", range(5))  # a race: several tries catch a regression
def test_it_stops_a_command_cancelled_before_it_reported_its_pid(ssh, tmp_path, attempt):
    """Cancelled at once: the command may start on the node after run() gave up waiting
    for its output; the transport must still find and stop it."""
    cancel = threading.Event()
    cancel.set()
    pid_file = tmp_path / "pid"
    token = f"{os.getpid()}.{attempt}"  # a unique `sleep` argument
    result = ssh.run(["sh", "-c", f'echo $$ > "$1"; sleep 6{token}', "sh", str(pid_file)],
                     timeout=30, cancel=cancel)
    assert result.cancelled

    def nothing_left():
        listing = subprocess.run(["pgrep", "-f", f"sleep 6{token}"], capture_output=True, text=True)
        return listing.stdout.strip() == ""

    wait_until(nothing_left, timeout=5, message="the cancelled command to end")


def test_it_ends_the_command_when_the_caller_fails(ssh, tmp_path):
    def on_output(text):
        raise RuntimeError("the log store is gone")

    with pytest.raises(RuntimeError, match="log store"):
        ssh.run(["sh", "-c", 'echo $$ > "$1"; echo hi; sleep 60', "sh", str(tmp_path / "pid")],
                timeout=30, on_output=on_output)
    pid = read_pid(tmp_path / "pid")
    wait_until(lambda: not process_alive(pid), timeout=5, message="the command to end")


def test_it_ticks_while_the_command_runs(ssh):
    ticks = []
    result = ssh.run(["sleep", "0.6"], timeout=10, on_tick=lambda: ticks.append(1))
    assert result.ok and len(ticks) >= 3


def test_it_caps_the_output_but_lets_the_command_finish(ssh):
    result, output = run(ssh, ["sh", "-c", "head -c 200000 /dev/zero | tr '\\0' x; echo; exit 3"],
                         output_cap=1000)
    assert result.truncated and result.exit_code == 3
    assert result.output_bytes == 200001
    assert output.startswith("x" * 1000) and "output capped at 1000 bytes" in output
    assert output.count("x") == 1000


def test_it_passes_env_and_cwd(ssh, tmp_path):
    folder = tmp_path / "a dir; $(touch pwned)"
    folder.mkdir()
    env = {"GREETING": "hello 'world' $HOME `id`", "EMPTY": ""}
    result, output = run(ssh, ["sh", "-c", 'pwd; printf "%s|%s\\n" "$GREETING" "$EMPTY"'], cwd=folder,
                         env=env)
    assert result.ok
    assert output == f"{folder}\nhello 'world' $HOME `id`|\n"
    assert not (folder / "pwned").exists()


@pytest.mark.parametrize("name", ["A;touch x", "A\n", "1A", "A B", ""])
def test_it_refuses_an_invalid_env_name(ssh, name):
    with pytest.raises(TransportError, match="invalid environment variable name"):
        ssh.run(["true"], env={name: "1"}, timeout=5)


def test_it_reuses_one_connection_for_commands_and_files(ssh, tmp_path):
    ports = set()
    for _ in range(3):
        _, output = run(ssh, ["sh", "-c", "echo $SSH_CONNECTION"])
        ports.add(output.split()[1])  # the client's port: one TCP connection = one port
    source = tmp_path / "payload.bin"
    source.write_bytes(os.urandom(300_000))
    ssh.put_file(source, tmp_path / "copy.bin")
    ssh.get_file(tmp_path / "copy.bin", tmp_path / "back.bin")
    assert len(ports) == 1 and ssh.connections == 1
    assert (tmp_path / "back.bin").read_bytes() == source.read_bytes()


def test_it_reconnects_after_close(ssh):
    run(ssh, ["true"])
    ssh.close()
    result, _ = run(ssh, ["true"])
    assert result.ok and ssh.connections == 2


def test_it_reports_a_failed_upload_with_the_node(ssh, node, tmp_path):
    source = tmp_path / "f"
    source.write_text("x")
    with pytest.raises(TransportError, match=f"127.0.0.1:{node.port}:/no/such/dir/f"):
        ssh.put_file(source, "/no/such/dir/f")


# Hostile arguments ----------------------------------------------------------------------------

HOSTILE = [
    "$(touch {d}/p1)",
    "; touch {d}/p2",
    "`touch {d}/p3`",
    "a\ntouch {d}/p4",
    "' ; touch {d}/p5 ; '",
    '" ; touch {d}/p6 ; "',
    "&& touch {d}/p7",
    "| touch {d}/p8",
    "> {d}/p9",
    "$HOME ~ * ?",
    "-n",
    "\\'\\\"",
    "",
    "ünïcödé ✓",
]


def test_it_passes_hostile_arguments_literally(ssh, tmp_path):
    args = [arg.format(d=tmp_path) for arg in HOSTILE]
    result, output = run(ssh, ["printf", "%s\\0", *args])
    assert result.ok
    assert output.split("\0")[:-1] == args
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_it_refuses_a_nul_byte(ssh):
    with pytest.raises(TransportError, match="NUL byte"):
        ssh.run(["echo", "a\x00b"], timeout=5)


def test_it_runs_a_hostile_program_name_as_a_name(ssh, tmp_path):
    result, output = run(ssh, [f"true; touch {tmp_path}/p"])
    assert result.exit_code == 127 and not (tmp_path / "p").exists()


# Host keys and connections -----------------------------------------------------------------

def test_it_accepts_the_pinned_host_key(node):
    with SSHTransport(**node.transport_kwargs()) as transport:
        assert run(transport, ["true"])[0].ok


def test_it_refuses_a_changed_host_key_naming_both_fingerprints(ssh_nodes):
    node, other = ssh_nodes[0], ssh_nodes[1]
    transport = SSHTransport(**node.transport_kwargs(host_key=other.host_key))
    with pytest.raises(TransportError) as caught:
        transport.run(["true"], timeout=5)
    message = str(caught.value)
    assert "host key mismatch" in message and f"127.0.0.1:{node.port}" in message
    assert keygen_fingerprint(other.host_key_pub) in message  # expected (pinned)
    assert keygen_fingerprint(node.host_key_pub) in message  # offered
    assert transport.connections == 0


@pytest.mark.parametrize("pinned", [None, ""])
def test_it_refuses_a_node_without_a_pinned_key(node, pinned):
    transport = SSHTransport(**node.transport_kwargs(host_key=pinned))
    with pytest.raises(TransportError, match=f"no pinned host key for 127.0.0.1:{node.port}"):
        transport.run(["true"], timeout=5)


def test_it_fetches_the_host_key_for_an_admin_to_confirm(node):
    line, fingerprint = fetch_host_key(node.host, node.port, timeout=5)
    assert line == node.host_key
    assert fingerprint == keygen_fingerprint(node.host_key_pub)


def test_it_fails_fast_on_a_closed_port(node):
    port = free_port()  # nothing listens there
    transport = SSHTransport(**node.transport_kwargs(port=port))
    started = time.monotonic()
    with pytest.raises(TransportError, match=f"cannot connect to 127.0.0.1:{port}: connection refused"):
        transport.run(["true"], timeout=5)
    assert time.monotonic() - started < 2
    with pytest.raises(TransportError, match=f"127.0.0.1:{port}"):
        fetch_host_key("127.0.0.1", port, timeout=2)


def test_it_gives_up_on_a_port_that_never_speaks_ssh(node):
    with socket.socket() as silent:  # the kernel completes the TCP handshake; nobody talks
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        transport = SSHTransport(**node.transport_kwargs(port=port, connect_timeout=1))
        started = time.monotonic()
        failed = f"SSH connection to 127.0.0.1:{port} failed: (no SSH handshake within 1s|error reading)"
        with pytest.raises(TransportError, match=failed):
            transport.run(["true"], timeout=5)
        assert time.monotonic() - started < 5


def test_it_reports_an_unknown_client_key(node, tmp_path):
    stranger = ClientKey(tmp_path / "id", generate_key(tmp_path / "id"))
    transport = SSHTransport(**node.transport_kwargs(key_filename=str(stranger.path)))
    with pytest.raises(TransportError, match=f"authentication as root failed on 127.0.0.1:{node.port}"):
        transport.run(["true"], timeout=5)


def test_it_accepts_the_private_key_as_text(node):
    text = Path(node.client_key.path).read_text()
    kwargs = node.transport_kwargs(pkey=text)
    del kwargs["key_filename"]
    with SSHTransport(**kwargs) as transport:
        assert run(transport, ["true"])[0].ok


def test_it_reports_a_node_dying_mid_command(sshd_factory, tmp_path):
    node = sshd_factory()
    transport = SSHTransport(**node.transport_kwargs())
    killer = threading.Thread(target=node.stop)

    def on_output(text):
        if "running" in text:
            killer.start()  # from another thread, as a node dies on its own

    started = time.monotonic()
    lost = f"lost the connection to 127.0.0.1:{node.port} while running sh"
    with pytest.raises(TransportError, match=lost):
        transport.run(["sh", "-c", "echo running; sleep 60"], timeout=30, on_output=on_output)
    assert time.monotonic() - started < 10
    killer.join(10)
    with pytest.raises(TransportError, match=f"cannot connect to 127.0.0.1:{node.port}"):
        transport.run(["true"], timeout=5)
