"""A spec is input from any branch: whatever it holds, parsing ends in a Spec or a
SpecError, quickly and in little memory, within the operator's limits."""

import random
import time
import tracemalloc
from pathlib import Path

import pytest

from pipeline.spec import SpecError, SpecLimits, command_bytes, parse_spec

DEMO_SPEC = Path(__file__).resolve().parent.parent / "examples" / "demo-app" / "trainyard.yml"


def refused(text, limits=None, match=None):
    with pytest.raises(SpecError, match=match) as caught:
        parse_spec(text, limits or SpecLimits())
    return caught.value


# Aliases -------------------------------------------------------------------------------

def test_it_stops_a_long_list_aliased_many_times():
    # The reported spec: one list, 500 aliases of it; it used to become a 52 MB spec.
    items = ", ".join(f"arg{i}" for i in range(1000))
    text = f"checks:\n  a: &a [{items}]\n" + "".join(f"  c{i}: *a\n" for i in range(500))
    error = refused(text, match=r"expands to more than 5000 values \(YAML aliases\?\)")
    assert (error.key, error.line) == ("checks.c3", 6)  # where the budget ran out


def test_it_stops_a_billion_laughs_fast_and_in_little_memory():
    text = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    for this, previous in zip("bcdefghi", "abcdefgh", strict=True):
        text += f"{this}: &{this} [" + ", ".join([f"*{previous}"] * 9) + "]\n"
    text += "checks: {x: *i}\n"
    tracemalloc.start()
    started = time.perf_counter()
    try:
        error = refused(text, match="expands to more than 5000 values")
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 0.5
    assert peak < 5 * 1024 * 1024
    assert error.key == "d"


def test_it_stops_a_long_value_aliased_many_times():
    text = f"x: &x '{'a' * 100_000}'\nchecks:\n  a: *x\n  b: *x\n  c: *x\n"
    error = refused(text, match=r"expands to more than 262144 bytes \(YAML aliases\?\)")
    assert (error.key, error.line) == ("checks.b", 4)


def test_it_stops_an_alias_inside_its_own_anchor():
    error = refused("checks: &a [*a]\n", match="nested more than 20 levels deep")
    assert error.key == "checks"


def test_it_counts_values_against_the_limit_given():
    text = "checks:\n" + "".join(f"  c{i}: run{i}\n" for i in range(10))
    assert len(parse_spec(text, SpecLimits(max_spec_values=50)).checks) == 10
    error = refused(text, SpecLimits(max_spec_values=20), match="more than 20 values")
    assert (error.key, error.line) == ("checks.c8", 10)


# Nesting -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "text",
    ["checks: " + "[" * 5000 + "]" * 5000, "checks: " + "{a: " * 5000 + "b" + "}" * 5000,
     "[" * 5000 + "]" * 5000],
)
def test_it_refuses_a_spec_nested_5000_deep(text):
    refused(text, match="nested more than 20 levels deep")


def test_it_names_where_a_block_spec_nests_too_deep():
    text = "checks:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 25)) + " " * 25 + "x\n"
    error = refused(text, match="nested more than 20 levels deep")
    # The mapping under k18 is level 20: its key k19 would be level 21.
    assert error.key == "checks." + ".".join(f"k{i}" for i in range(1, 19))
    assert error.line == 20


def test_it_turns_a_recursion_error_into_a_spec_error():
    refused("checks: " + "{a: " * 1200 + "b" + "}" * 1200, SpecLimits(max_depth=10**6),
            match="nested too deeply to read")


# Anything in, Spec or SpecError out ----------------------------------------------------

@pytest.mark.parametrize(
    "text",
    ["\ud800", 'checks: {x: "\\ud800"}', "checks: {x: y}\ndeploy: {health: \"a\\0b\"}\n",
     "checks: {? [a, b]: c}", "? [a]: b", "checks: *nowhere", "&a checks: *a",
     "%TAG !e! tag:e,2000:\n---\nchecks: !e!x [a, b]", "checks: !!binary aGk=", "--- a\n--- b\n",
     "checks: {x: y}\ntrain: {schedule: !!python/name:os.system ''}", "checks:\n\t- x", "\x00",
     "a" * 300_000, b"checks: {x: y}\xc3", None, 42],
)
def test_it_ends_in_a_spec_error_whatever_the_input(text):
    refused(text)


def test_it_ends_in_a_spec_or_a_spec_error_for_mangled_specs():
    source = DEMO_SPEC.read_text()
    rng = random.Random(1)
    for _ in range(300):
        chars = list(source)
        for _ in range(rng.randint(1, 8)):
            at = rng.randrange(len(chars))
            chars[at:at + rng.randint(0, 3)] = rng.choice(["", "[", "{", "&a ", "*a", ":", "\n  ",
                                                            "-", "'", "\\", chars[at - 1]])
        try:
            parse_spec("".join(chars), SpecLimits())
        except SpecError:
            pass


def test_it_turns_an_unforeseen_error_into_a_spec_error(monkeypatch):
    from pipeline.spec import parse

    monkeypatch.setattr(parse, "_checks", lambda *args: {}["surprise"])
    refused("checks: {x: y}\n", match=r"could not read the spec: KeyError: 'surprise'")


# Timeouts, checks, commands, names -----------------------------------------------------

@pytest.mark.parametrize("value", ["'²'", "'١٢'", "'３０'", "'" + "9" * 5000 + "'", "0",
                                   "1.5", "30s", "-1", "0x1E", "''", "[30]"])
def test_it_accepts_only_ascii_digits_for_a_timeout(value):
    error = refused(f"checks:\n  unit: {{run: pytest, timeout: {value}}}\n",
                    match="(must be whole seconds from 1 to 7200|expected a plain value)")
    assert (error.key, error.line) == ("checks.unit.timeout", 2)


def test_it_caps_a_timeout_at_the_maximum():
    assert parse_spec("checks: {x: {run: y, timeout: 7200}}", SpecLimits()).checks["x"].timeout == 7200
    refused("checks: {x: {run: y, timeout: 7201}}", match="from 1 to 7200")
    refused("checks: {x: y}\nsmoke: {run: y, timeout: 61}", SpecLimits(max_job_timeout=60),
            match="from 1 to 60")


def test_it_limits_the_number_of_checks():
    text = "checks:\n" + "".join(f"  c{i}: run\n" for i in range(4))
    assert len(parse_spec(text, SpecLimits(max_checks=4)).checks) == 4
    error = refused(text, SpecLimits(max_checks=3), match="too many checks: at most 3 are allowed")
    assert (error.key, error.line) == ("checks.c3", 5)


def test_it_limits_the_bytes_of_one_command():
    limits = SpecLimits(max_command_bytes=13)
    assert command_bytes(["echo", "é"]) == 6
    assert parse_spec("checks: {x: echo 'hi  there'}", limits).checks["x"].argv == ["echo", "hi  there"]
    error = refused("checks:\n  x: echo 'hi   there'\n", limits,
                    match="the command is 14 bytes, more than the limit of 13")
    assert (error.key, error.line) == ("checks.x", 2)
    error = refused("checks: {x: y}\nsetup:\n  - [echo, ééééé]\n", limits, match="14 bytes")
    assert (error.key, error.line) == ("setup[0]", 3)
    error = refused("checks: {x: y}\nsmoke: {run: [a, '0123456789abc']}\n", limits, match="14 bytes")
    assert (error.key, error.line) == ("smoke.run", 2)


def test_it_refuses_a_check_name_ending_in_a_newline():
    error = refused('checks:\n  "lint\\n": ruff\n', match="check names are lower-case")
    assert (error.key, error.line) == ("checks.lint\n", 2)


def test_it_refuses_nul_and_lone_surrogates_in_any_value():
    error = refused('checks: {x: y}\ndeploy:\n  health: "http://a\\0"\n', match="NUL")
    assert (error.key, error.line) == ("deploy.health", 3)
    error = refused('checks: {x: y}\ntrain: {schedule: "\\ud800 * * * *"}\n', match="surrogate")
    assert (error.key, error.line) == ("train.schedule", 2)


# Settings ------------------------------------------------------------------------------

def test_it_takes_its_default_limits_from_settings(settings):
    settings.TRAINYARD = {**settings.TRAINYARD, "MAX_CHECKS": 2, "MAX_SPEC_VALUES": 300,
                          "MAX_COMMAND_BYTES": 1000, "MAX_JOB_TIMEOUT": 90}
    assert SpecLimits.from_settings() == SpecLimits(max_checks=2, max_spec_values=300,
                                                    max_command_bytes=1000, max_job_timeout=90)
    with pytest.raises(SpecError, match="at most 2 are allowed"):
        parse_spec("checks: {a: x, b: x, c: x}")
    with pytest.raises(SpecError, match="from 1 to 90"):
        parse_spec("checks: {a: {run: x, timeout: 91}}")
