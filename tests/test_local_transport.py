import sys
import threading

import pytest

from nodes.transports import LocalTransport, TransportError

PY = sys.executable


def run(argv, **kwargs):
    chunks = []
    kwargs.setdefault("timeout", 30)
    result = LocalTransport().run(argv, on_output=chunks.append, **kwargs)
    return result, "".join(chunks)


def test_it_streams_merged_output_and_the_exit_code():
    result, out = run([PY, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(4)"])
    assert result.exit_code == 4 and not result.ok
    assert "out" in out and "err" in out
    assert result.describe() == "exited 4"


def test_it_passes_arguments_literally_never_through_a_shell(tmp_path):
    hostile = ["$(touch pwned)", "; touch pwned2", "`touch pwned3`", "a\nb", "'\""]
    result, out = run([PY, "-c", "import sys; print(repr(sys.argv[1:]))", *hostile], cwd=tmp_path)
    assert result.ok
    assert out.strip() == repr(hostile)
    assert list(tmp_path.iterdir()) == []


def test_it_kills_at_the_timeout():
    result, _ = run([PY, "-c", "import time; time.sleep(60)"], timeout=0.5)
    assert result.timed_out and not result.ok
    assert result.duration < 10
    assert "timeout of 0.5s" in result.describe(0.5)


def test_it_kills_a_silent_command_at_the_idle_timeout():
    result, _ = run([PY, "-c", "import time; print('hi', flush=True); time.sleep(60)"],
                    idle_timeout=0.5)
    assert result.idle_timed_out


def test_it_caps_output_but_lets_the_command_finish():
    result, out = run([PY, "-c", "print('y' * 1_000_000)"], output_cap=1000)
    assert result.ok and result.truncated
    assert result.output_bytes == 1_000_001
    kept, note = out.split("\n[trainyard:")
    assert kept == "y" * 1000 and "output capped at 1000 bytes" in note


def test_it_stops_when_cancelled():
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    result, _ = run([PY, "-c", "import time; time.sleep(60)"], cancel=cancel)
    assert result.cancelled


def test_it_does_not_wait_for_a_background_child_holding_the_pipe():
    script = "import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])"
    result, _ = run([PY, "-c", script], timeout=20)
    assert result.ok and result.duration < 10


def test_it_decodes_invalid_utf8_without_crashing():
    result, out = run([PY, "-c", "import sys; sys.stdout.buffer.write(b'ok \\xff\\xfe end')"])
    assert result.ok and "ok" in out and "end" in out


def test_it_raises_a_clear_error_for_a_missing_command():
    with pytest.raises(TransportError, match="command not found: no-such-binary"):
        run(["no-such-binary"])


def test_it_names_a_missing_working_directory():
    with pytest.raises(TransportError, match="working directory does not exist: /nonexistent"):
        run(["true"], cwd="/nonexistent")


@pytest.mark.django_db
def test_a_local_nodes_app_does_not_get_trainyards_virtualenv(tmp_path):
    """install, start and run on a local node see the system's tools, not the Python that
    runs Trainyard with Django and every other package of its own."""
    from nodes.models import Node
    from nodes.services.deploys import step_environment
    from tests.factories import BuildFactory

    node = Node.objects.create(name="local-1", transport="local", user="", app_port=9999,
                               base_path=str(tmp_path / "node"))
    env = step_environment(node, BuildFactory())
    result = LocalTransport().run(["python3", "-c", "import sys, django; print(sys.prefix)"],
                                  env=env, timeout=30)
    assert not result.ok and sys.prefix not in env["PATH"]
