"""Per-test results from JUnit XML reports (pytest, Jest, Maven Surefire, ...)."""

from defusedxml import ElementTree
from defusedxml.common import DefusedXmlException

MAX_REPORT_BYTES = 20 * 1024 * 1024
MAX_MESSAGE = 4000


class ReportError(ValueError):
    pass


def _outcome(case):
    for tag, outcome in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
        child = case.find(tag)
        if child is not None:
            text = child.get("message") or (child.text or "")
            return outcome, text.strip()[:MAX_MESSAGE]
    return "passed", ""


def parse_junit(path):
    """A list of dicts: suite, classname, name, outcome, duration, message."""
    if path.stat().st_size > MAX_REPORT_BYTES:
        raise ReportError(f"{path.name} is larger than {MAX_REPORT_BYTES} bytes")
    try:
        root = ElementTree.parse(path).getroot()
    except (ElementTree.ParseError, DefusedXmlException) as exc:
        raise ReportError(f"{path.name} is not valid JUnit XML: {exc}") from exc
    suites = [root] if root.tag == "testsuite" else root.iter("testsuite")
    results = []
    for suite in suites:
        for case in suite.iter("testcase"):
            outcome, message = _outcome(case)
            try:
                duration = float(case.get("time") or 0)
            except ValueError:
                duration = 0.0
            results.append({
                "suite": (suite.get("name") or "")[:300],
                "classname": (case.get("classname") or "")[:300],
                "name": (case.get("name") or "?")[:500],
                "outcome": outcome,
                "duration": duration,
                "message": message,
            })
    return results
