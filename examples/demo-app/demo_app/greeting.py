"""Greeting logic, kept free of HTTP so it is trivial to unit test."""

DEFAULT_NAME = "world"
MAX_NAME_LENGTH = 40


def normalize_name(name: str | None) -> str:
    """Collapse whitespace and cap the length, so any query string is safe to echo."""
    cleaned = " ".join((name or "").split())[:MAX_NAME_LENGTH].strip()
    return cleaned or DEFAULT_NAME


def greet(name: str | None = None) -> str:
    return f"Hello, {normalize_name(name)}!"
