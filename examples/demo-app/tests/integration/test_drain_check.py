"""bin/drain-check's logic against the real server: drained means the server reports the
drain flag and has no other request in flight."""

import socket
import time
from urllib.parse import urlsplit

import pytest

from demo_app import control


@pytest.fixture
def app_env(app_server, app_config_for_test, monkeypatch):
    # drain_check finds the server the way bin/drain-check does: HOST, PORT, APP_STATE_DIR.
    monkeypatch.setenv("HOST", "127.0.0.1")
    monkeypatch.setenv("PORT", str(urlsplit(app_server).port))
    monkeypatch.setenv("APP_STATE_DIR", str(app_config_for_test.state_dir))
    return app_server


def test_it_is_not_drained_before_the_drain(app_env, capsys):
    assert control.drain_check() == 1
    assert "not draining yet" in capsys.readouterr().out


def test_it_is_drained_once_the_flag_is_set_and_nothing_is_in_flight(app_env, capsys):
    assert control.drain() == 0
    assert control.drain_check() == 0
    assert "drained" in capsys.readouterr().out


def test_it_waits_for_a_request_in_flight(app_env, capsys):
    control.drain()
    host, port = "127.0.0.1", urlsplit(app_env).port
    with socket.create_connection((host, port), timeout=5) as client:
        # Half a request: the server holds the connection until the rest comes.
        client.sendall(b"GET /hello?name=Ada HTTP/1.0\r\n")
        assert control.drain_check() == 1
        assert "1 request(s) still in flight" in capsys.readouterr().out
        client.sendall(b"\r\n")
        assert b"Hello, Ada!" in client.makefile("rb").read()
    # The server uncounts a connection when it closes it, and the check's own previous
    # request (its client reads by Content-Length) may still be closing on a busy machine.
    # The rollout asks again until drain_timeout; so does this test, for a moment.
    deadline = time.monotonic() + 5
    while (code := control.drain_check()) != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert code == 0


def test_it_has_nothing_to_drain_when_no_server_listens(monkeypatch, tmp_path, capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        monkeypatch.setenv("PORT", str(port))
        monkeypatch.setenv("HOST", "127.0.0.1")
        monkeypatch.setenv("APP_STATE_DIR", str(tmp_path))
        assert control.drain_check() == 0
    assert "nothing to drain" in capsys.readouterr().out
