from pathlib import Path

import pytest

from pipeline.spec import Spec, SpecError, parse_spec

DEMO_SPEC = Path(__file__).resolve().parent.parent / "examples" / "demo-app" / "trainyard.yml"


def test_it_parses_the_demo_apps_spec():
    spec = parse_spec(DEMO_SPEC.read_bytes())
    assert list(spec.checks) == ["lint", "unit", "integration"]
    assert spec.checks["lint"].argv == ["ruff", "check", "."]
    assert spec.checks["unit"].junit == "reports/unit.xml"
    assert spec.deploy["health"] == "http://{host}:{port}/health"
    assert spec.deploy["start"].argv == ["bin/start"]
    assert spec.smoke.argv[:3] == ["python", "-m", "pytest"]
    assert spec.environments == ["staging", "preview", "preprod"]
    assert spec.train_schedule == "0 * * * *"


def test_it_round_trips_through_json():
    spec = parse_spec(DEMO_SPEC.read_text())
    assert Spec.from_dict(spec.to_dict()) == spec


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
