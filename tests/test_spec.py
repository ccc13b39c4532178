import json
import re
from pathlib import Path

import pytest

from nodes.deploy import DeploySteps
from pipeline.spec import Command, Spec, SpecError, SpecLimits, parse_spec

DEMO_SPEC = Path(__file__).resolve().parent.parent / "examples" / "demo-app" / "trainyard.yml"


def test_it_parses_the_demo_apps_spec():
    spec = parse_spec(DEMO_SPEC.read_bytes())
    assert list(spec.checks) == ["lint", "unit", "integration"]
    assert spec.checks["lint"].argv == [".venv/bin/python", "-m", "ruff", "check", "."]
    assert spec.checks["unit"].junit == "reports/unit.xml"
    assert spec.deploy["health"] == {"url": "http://{host}:{port}/health", "expect": "{sha}",
                                     "timeout": None}
    assert spec.deploy["run"].argv == ["python3", "-m", "demo_app.server"]
    assert "start" not in spec.deploy
    assert spec.smoke.argv[:3] == [".venv/bin/python", "-m", "pytest"]
    assert spec.environments == ["staging", "preview", "preprod"]
    assert spec.train_schedule == "0 * * * *"
    assert spec.setup[0].argv == ["python3", "-m", "venv", ".venv"]
    assert spec.cache == {"key": ["requirements-dev.txt"], "paths": [".venv"]}
    assert spec.env == {"PYTHONDONTWRITEBYTECODE": "1"}


FULL_SPEC = """\
setup:
  - python3 -m venv .venv
  - {run: [.venv/bin/pip, install, -r, requirements.txt], timeout: 600, env: {PIP_NO_INPUT: "1"}}
cache: {key: [requirements.txt, setup.cfg], paths: [.venv, node_modules]}
env: {DJANGO_SETTINGS_MODULE: app.settings, PATH: /opt/bin:/usr/bin, DEBUG: on, EMPTY: }
checks:
  unit: {run: pytest, junit: reports/unit.xml, env: {PYTHONHASHSEED: 0}}
  lint: ruff check .
deploy: {install: make, start: {run: bin/start, timeout: 30}, health: "http://{host}:{port}/"}
smoke: {run: pytest tests/smoke, env: {SMOKE: yes}}
acceptance: pytest tests/acceptance
environments: [staging]
train: {schedule: "30 * * * *"}
"""


def test_it_round_trips_through_json():
    spec = parse_spec(DEMO_SPEC.read_text())
    assert Spec.from_dict(spec.to_dict()) == spec
    spec = parse_spec(FULL_SPEC)
    stored = json.loads(json.dumps(spec.to_dict()))
    assert Spec.from_dict(stored) == spec
    assert Spec.from_dict(stored).to_dict() == stored


def test_it_loads_a_spec_stored_before_setup_cache_and_env():
    stored = {"checks": {"unit": {"argv": ["pytest"], "junit": "", "timeout": 30}},
              "deploy": {"start": {"argv": ["bin/start"], "junit": "", "timeout": None},
                         "health": "http://{host}:{port}/"},
              "smoke": None, "acceptance": None, "environments": ["staging"],
              "train_schedule": "0 * * * *"}
    spec = Spec.from_dict(stored)
    assert spec.checks["unit"] == Command(argv=["pytest"], timeout=30, env={})
    assert (spec.setup, spec.cache, spec.env) == ([], None, {})
    assert spec.deploy["start"].argv == ["bin/start"]
    assert spec.deploy["health"] == {"url": "http://{host}:{port}/", "expect": "", "timeout": None}
    # What deploys pass for the deploy section alone.
    assert Spec.from_dict({"checks": {}, "deploy": stored["deploy"]}).deploy == spec.deploy


def test_it_splits_quoted_commands_like_a_shell_without_running_one():
    spec = parse_spec('checks:\n  smoke: pytest --base-url "$TARGET_URL" -k "a and b"\n')
    assert spec.checks["smoke"].argv == ["pytest", "--base-url", "$TARGET_URL", "-k", "a and b"]


def test_it_takes_commands_as_lists_and_with_a_timeout():
    spec = parse_spec("checks:\n  unit: {run: [python, -m, pytest], timeout: 30}\n")
    assert spec.checks["unit"].argv == ["python", "-m", "pytest"]
    assert spec.checks["unit"].timeout == 30


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ("checks:\n  lint: ruff\nchekcs: {}\n", "chekcs", 3),
        ("deploy:\n  start: x\n", "checks", 1),
        ("checks:\n  lint: 'unclosed\n", None, None),
        ("checks:\n  lint: ruff\n  lint: again\n", "checks.lint", 3),
        ("checks:\n  Bad Name: ruff\n", "checks.Bad Name", 2),
        ("checks:\n  unit: {run: pytest, timeout: -1}\n", "checks.unit.timeout", 2),
        ("checks:\n  unit: {run: pytest, junit: ../../etc/passwd}\n", "checks.unit.junit", 2),
        ("checks:\n  unit: {junit: x.xml}\n", "checks.unit", 2),
        ("checks:\n  unit: {run: pytest, retries: 3}\n", "checks.unit.retries", 2),
        ("checks:\n  x: \"\"\n", "checks.x", 2),
        ("checks:\n  x: y\ndeploy:\n  restart: z\n", "deploy.restart", 4),
        ("checks:\n  x: y\nenvironments: [staging, qa]\n", "environments", 3),
        ("checks:\n  x: y\ntrain: {schedule: hourly}\n", "train.schedule", 3),
        ("checks: [a, b]\n", "checks", 1),
        ("- a\n- b\n", None, 1),
        ("checks: {x: y}\ntrain: {scheduel: x}\n", "train.scheduel", 2),
    ],
)
def test_it_names_the_key_and_line_of_a_mistake(text, key, line):
    with pytest.raises(SpecError) as caught:
        parse_spec(text)
    if key:
        assert f"key '{key}'" in str(caught.value)
    if line:
        assert f"line {line}" in str(caught.value)
        assert caught.value.line == line


def test_it_reports_broken_yaml_with_its_line():
    with pytest.raises(SpecError, match=r"not valid YAML.*line 3"):
        parse_spec("checks:\n  lint: ruff\n  unit: [unclosed\n")


@pytest.mark.parametrize("payload", ["", "   \n", b"\xff\xfe", b"a" * 300_000])
def test_it_refuses_empty_binary_or_huge_files(payload):
    with pytest.raises(SpecError):
        parse_spec(payload)


def test_it_does_not_construct_python_objects():
    with pytest.raises(SpecError):
        parse_spec("checks: !!python/object/apply:os.system ['echo pwned']\n")


# setup ---------------------------------------------------------------------------------

def test_it_reads_setup_as_a_list_of_commands_in_any_form():
    spec = parse_spec("setup:\n  - make deps\n  - [npm, ci]\n  - {run: pip install ., env: {A: b}}\n"
                      "checks: {x: y}\n")
    assert [c.argv for c in spec.setup] == [["make", "deps"], ["npm", "ci"], ["pip", "install", "."]]
    assert spec.setup[2].env == {"A": "b"}


def test_it_reads_a_single_setup_string_as_a_list_of_one():
    spec = parse_spec("setup: 'pip install -r requirements.txt'\nchecks: {x: y}\n")
    assert spec.setup == [Command(argv=["pip", "install", "-r", "requirements.txt"])]


def test_it_needs_no_setup_cache_or_env():
    spec = parse_spec("checks: {x: y}\n")
    assert (spec.setup, spec.cache, spec.env) == ([], None, {})


@pytest.mark.parametrize(
    ("text", "key", "line", "message"),
    [
        ("checks: {x: y}\nsetup: {run: make}\n", "setup", 2, "expected a list of commands"),
        ("checks: {x: y}\nsetup: []\n", "setup", 2, "at least one command"),
        ("checks: {x: y}\nsetup:\n  - make\n  - ''\n", "setup[1]", 4, "the command is empty"),
        ("checks: {x: y}\nsetup: [{run: make, retries: 2}]\n", "setup[0].retries", 2, "unknown key"),
        ("checks: {x: y}\nsetup: [{run: make, timeout: '²'}]\n", "setup[0].timeout", 2, "whole seconds"),
    ],
)
def test_it_refuses_bad_setup(text, key, line, message):
    with pytest.raises(SpecError, match=message) as caught:
        parse_spec(text)
    assert (caught.value.key, caught.value.line) == (key, line)


# cache ---------------------------------------------------------------------------------

def test_it_reads_a_cache_with_one_key_file_or_several():
    spec = parse_spec("setup: make\ncache: {key: poetry.lock, paths: [.venv, ./node_modules/]}\n"
                      "checks: {x: y}\n")
    assert spec.cache == {"key": ["poetry.lock"], "paths": [".venv", "./node_modules/"]}
    spec = parse_spec("setup: make\ncache:\n  key: [a.txt, b/c.txt]\n  paths: .venv\nchecks: {x: y}\n")
    assert spec.cache == {"key": ["a.txt", "b/c.txt"], "paths": [".venv"]}


@pytest.mark.parametrize(
    ("cache", "key", "message"),
    [
        ("{paths: [.venv]}", "cache", "'key' is missing"),
        ("{key: a.txt}", "cache", "'paths' is missing"),
        ("{key: [], paths: [.venv]}", "cache.key", "at least one path"),
        ("{key: a.txt, paths: []}", "cache.paths", "at least one path"),
        ("{key: a.txt, paths: [../.venv]}", "cache.paths", "inside the repository"),
        ("{key: /etc/passwd, paths: [.venv]}", "cache.key", "inside the repository"),
        ("{key: a.txt, paths: [.]}", "cache.paths", "inside the repository"),
        ("{key: a.txt, paths: ['']}", "cache.paths", "inside the repository"),
        ("{key: a.txt, paths: [./.git/hooks]}", "cache.paths", "may not hold .git"),
        ("{key: a.txt, paths: [{a: b}]}", "cache.paths", "expected a plain value"),
        ("{key: {a: b}, paths: [.venv]}", "cache.key", "expected a path or a list"),
        ("{key: a.txt, paths: [.venv], ttl: 3}", "cache.ttl", "unknown key"),
        ("[.venv]", "cache", "expected a mapping"),
    ],
)
def test_it_refuses_a_bad_cache(cache, key, message):
    with pytest.raises(SpecError, match=message) as caught:
        parse_spec(f"checks: {{x: y}}\nsetup: make\ncache: {cache}\n")
    assert (caught.value.key, caught.value.line) == (key, 3)


def test_it_refuses_a_cache_without_setup_to_fill_it():
    with pytest.raises(SpecError, match="'cache' needs 'setup'") as caught:
        parse_spec("checks: {x: y}\ncache: {key: a.txt, paths: [.venv]}\n")
    assert (caught.value.key, caught.value.line) == ("cache", 2)


# env -----------------------------------------------------------------------------------

def test_it_reads_env_for_every_job_and_for_one_command():
    spec = parse_spec("env: {PATH: /opt/bin, _X1: 3, FLAG: on, NONE: }\n"
                      "checks:\n  unit: {run: pytest, env: {DJANGO_DEBUG: 'false'}}\n"
                      "acceptance: {run: pytest, env: {A: b}}\n")
    assert spec.env == {"PATH": "/opt/bin", "_X1": "3", "FLAG": "on", "NONE": ""}
    assert spec.checks["unit"].env == {"DJANGO_DEBUG": "false"}
    assert spec.acceptance.env == {"A": "b"}


@pytest.mark.parametrize(
    ("text", "key", "line", "message"),
    [
        ("env: {1A: x}\n", "env.1A", 1, "variable names"),
        ("env: {A-B: x}\n", "env.A-B", 1, "variable names"),
        ('env: {"A\\n": x}\n', "env.A\n", 1, "variable names"),
        ("env: {HOME: /root}\n", "env.HOME", 1, "set by Trainyard"),
        ("env: {TRAINYARD: '0'}\n", "env.TRAINYARD", 1, "set by Trainyard"),
        ("env: {TRAINYARD_SHA: abc}\n", "env.TRAINYARD_SHA", 1, "set by Trainyard"),
        ("env: {A: [1, 2]}\n", "env.A", 1, "expected a plain value"),
        ("env: [A=1]\n", "env", 1, "expected a mapping"),
        ("env: {A: 1, A: 2}\n", "env.A", 1, "given twice"),
        ("env: {A: 1}\nsmoke:\n  {run: y, env: {HOME: /}}\n", "smoke.env.HOME", 3,
         "set by Trainyard"),
        ("deploy:\n  start: {run: bin/start, env: {A: b}}\n", "deploy.start.env", 2, "unknown key"),
    ],
)
def test_it_refuses_bad_env(text, key, line, message):
    with pytest.raises(SpecError, match=message) as caught:
        parse_spec(text + "checks: {x: y}\n")
    assert (caught.value.key, caught.value.line) == (key, line)


def test_it_bounds_env_entries_and_values():
    limits = SpecLimits(max_env=2, max_command_bytes=10)
    assert parse_spec("env: {A: '0123456789', B: x}\nchecks: {x: y}\n", limits).env["A"] == "0123456789"
    with pytest.raises(SpecError, match="more than 2 variables") as caught:
        parse_spec("checks: {x: y}\nenv: {A: 1, B: 2, C: 3}\n", limits)
    assert (caught.value.key, caught.value.line) == ("env", 2)
    with pytest.raises(SpecError, match="longer than 10 bytes") as caught:
        parse_spec("checks:\n  x: {run: y, env: {A: 'é123456789'}}\n", limits)
    assert (caught.value.key, caught.value.line) == ("checks.x.env.A", 2)


# deploy ----------------------------------------------------------------------------------

DEPLOY_SPEC = """\
checks: {x: y}
deploy:
  install: [pip, install, -r, requirements.txt]
  run: waitress-serve --host $HOST --port $PORT app:app
  stop_timeout: 20
  drain: bin/drain
  drain_check: {run: bin/drained, timeout: 5}
  drain_timeout: 90
  health: {url: "http://{host}:{port}/version", expect: "{sha}", timeout: 30}
"""


def test_it_reads_every_deploy_key():
    spec = parse_spec(DEPLOY_SPEC)
    deploy = spec.deploy
    assert deploy["run"].argv == ["waitress-serve", "--host", "$HOST", "--port", "$PORT", "app:app"]
    assert (deploy["stop_timeout"], deploy["drain_timeout"]) == (20, 90)
    assert deploy["drain_check"] == Command(argv=["bin/drained"], timeout=5)
    assert deploy["health"] == {"url": "http://{host}:{port}/version", "expect": "{sha}",
                                "timeout": 30}
    stored = json.loads(json.dumps(spec.to_dict()))
    assert Spec.from_dict(stored) == spec
    steps = DeploySteps.from_spec(Spec.from_dict({"checks": {}, "deploy": stored["deploy"]}).deploy)
    assert steps.run == deploy["run"].argv and steps.start is None
    assert (steps.stop_timeout, steps.health_timeout) == (20, 30)
    assert (steps.health, steps.health_expect) == ("http://{host}:{port}/version", "{sha}")
    assert (steps.drain, steps.drain_check, steps.drain_timeout) == (["bin/drain"], ["bin/drained"], 90)


def test_it_reads_start_and_stop_and_a_plain_health_url():
    spec = parse_spec("checks: {x: y}\ndeploy:\n  start: {run: bin/start, timeout: 30}\n"
                      "  stop: bin/stop\n  health: https://{host}/health\n")
    steps = DeploySteps.from_spec(spec.deploy)
    assert (steps.start, steps.start_timeout, steps.stop) == (["bin/start"], 30, ["bin/stop"])
    assert (steps.health, steps.health_expect, steps.health_timeout) == ("https://{host}/health", "",
                                                                         60.0)
    assert steps.stop_timeout == 10  # the default: only `run` uses it
    assert (steps.drain, steps.drain_timeout) == (None, 60)


@pytest.mark.parametrize(
    ("deploy", "key", "line", "message"),
    [
        ("  run: a\n  start: b\n", "deploy.start", 4, "'run' and 'start' exclude each other"),
        ("  start: b\n  run: a\n", "deploy.run", 4, "with 'run' Trainyard starts and stops"),
        ("  run: a\n  stop: b\n", "deploy.stop", 4, "'stop' goes with 'start'"),
        ("  start: a\n  stop_timeout: 5\n", "deploy.stop_timeout", 4, "it needs 'run'"),
        ("  drain_check: a\n", "deploy.drain_check", 3, "it needs 'drain'"),
        ("  drain: a\n  drain_timeout: 5\n", "deploy.drain_timeout", 4, "needs 'drain_check'"),
        ("  run: {run: a, timeout: 5}\n", "deploy.run.timeout", 3, "it has no timeout"),
        ("  run: a\n  stop_timeout: soon\n", "deploy.stop_timeout", 4, "whole seconds"),
        ("  run: a\n  stop_timeout: 0\n", "deploy.stop_timeout", 4, "whole seconds"),
        ("  health: ftp://{host}/\n", "deploy.health", 3, "an http:// or https:// URL"),
        ("  health: /health\n", "deploy.health", 3, "an http:// or https:// URL"),
        ('  health: "http://[::1"\n', "deploy.health", 3, "an http:// or https:// URL"),
        ("  health: {expect: x}\n", "deploy.health", 3, "'url' is missing"),
        ("  health: {url: 'http://a/', except: x}\n", "deploy.health.except", 3, "unknown key"),
        ("  health: {url: 'http://a/', expect: ''}\n", "deploy.health.expect", 3, "e.g. \"{sha}\""),
        ("  health: {url: 'http://a/', timeout: -1}\n", "deploy.health.timeout", 3, "whole seconds"),
        ("  health: [http://a/]\n", "deploy.health", 3, "expected a plain value"),
        ("  restart: x\n", "deploy.restart", 3, "unknown step 'restart', expected one of install, run"),
    ],
)
def test_it_refuses_bad_deploy_keys(deploy, key, line, message):
    with pytest.raises(SpecError, match=re.escape(message)) as caught:
        parse_spec("checks: {x: y}\ndeploy:\n" + deploy)
    assert (caught.value.key, caught.value.line) == (key, line)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ('checks:\n  "lint\\n": ruff\n', "key 'checks.lint\\n', line 2"),
        ('checks:\n  "\\e[2J\\e[31mred": ruff\n', "key 'checks.\\x1b[2J\\x1b[31mred'"),
        ('"chec\\eks": {}\n', "unknown key 'chec\\x1bks'"),
        ('checks: {x: y}\ndeploy: {"run\\r": x}\n', "unknown step 'run\\r'"),
        ('checks: {x: y}\nenvironments: ["\\e]0;pwned\\a"]\n', "unknown environment '\\x1b]0;pwned\\x07'"),
    ],
)
def test_it_never_prints_a_control_character_from_the_spec(text, shown):
    with pytest.raises(SpecError) as caught:
        parse_spec(text)
    message = str(caught.value)
    assert shown in message
    assert not re.search(r"[\x00-\x1f\x7f-\x9f]", message)
    if "key '" in shown:
        assert "the key holds a control character, shown escaped" in message
