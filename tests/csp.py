"""Watching a page in Chromium for Content-Security-Policy violations.

`watch_csp(page)` before the first `goto`; `csp_violations(page, seen)` at the end. Both
what the browser logs ("Refused to …", every document the page loaded) and the
`securitypolicyviolation` events of the current document are collected.
"""

RECORD = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(
    `${e.effectiveDirective} blocked ${e.blockedURI || "inline"} (${e.sourceFile}:${e.lineNumber})`);
});
"""


def watch_csp(page):
    seen = []
    page.add_init_script(RECORD)
    page.on("console", lambda message: seen.append(message.text)
            if "Content Security Policy" in message.text else None)
    return seen


def csp_violations(page, seen):
    if page.is_closed():
        return list(seen)
    return [*seen, *page.evaluate("window.__cspViolations || []")]
