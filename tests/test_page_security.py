"""What pages may show and how they are served: a clone URL's credentials never reach a
page, every page carries a strict Content-Security-Policy, and no template needs a
weaker one (no inline script or style, no event-handler attributes).

The same policy is checked in headless Chromium, with live updates running, in
test_page_security_browser.py, test_build_page_browser.py and test_radiator_browser.py.
"""

import re
from pathlib import Path

import pytest

from pipeline.models import PullRequest
from pipeline.services.git import redact
from pipeline.templatetags.trainyard import without_credentials
from tests.factories import BuildFactory, CommitFactory, JobFactory, RepositoryFactory

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "ghs_Tr41nyardS3cretT0ken"
CLONE_URL = f"https://x-access-token:{TOKEN}@github.example/team/app.git"


@pytest.fixture
def private_repo(db):
    """A repository cloned with a token in its URL, with a build and an open pull request."""
    repo = RepositoryFactory(name="private", clone_url=CLONE_URL)
    build = BuildFactory(commit=CommitFactory(repository=repo), branch="feature/x", status="failed",
                         message="unit failed")
    JobFactory(build=build, name="unit", status="failed")
    PullRequest.objects.create(repository=repo, number=1, title="Add x", branch="feature/x",
                               head_sha=build.sha)
    return repo, build


def pages(build):
    return ["/", "/repos/private/", "/repos/private/pulls/1/", f"/builds/{build.pk}/",
            "/radiators/private/", "/radiators/private/snapshot.json",
            f"/api/builds/{build.pk}", "/api/repos/private/pulls"]


# Credentials in clone URLs -------------------------------------------------------------

def test_it_shows_no_clone_url_credentials_to_anonymous_visitors(client, private_repo):
    _, build = private_repo
    for url in pages(build):
        response = client.get(url)
        assert response.status_code == 200, url
        assert TOKEN not in response.content.decode(), url
    page = client.get("/repos/private/").content.decode()
    assert "https://***@github.example/team/app.git" in page  # where it clones from, still


def test_it_shows_no_clone_url_credentials_to_the_team_either(client, private_repo, developer):
    _, build = private_repo
    client.force_login(developer)
    for url in pages(build):
        assert TOKEN not in client.get(url).content.decode(), url


def test_the_admin_list_and_the_api_hide_them_too(client, private_repo, admin_user):
    client.force_login(admin_user)
    for url in ("/admin/pipeline/repository/", "/api/repos", "/api/repos/private"):
        page = client.get(url).content.decode()
        assert TOKEN not in page and "***@github.example/team/app.git" in page, url


@pytest.mark.parametrize(("url", "shown"), [
    (CLONE_URL, "https://***@github.example/team/app.git"),
    (f"https://{TOKEN}@github.example/app.git", "https://***@github.example/app.git"),
    (f"ssh://git:{TOKEN}@git.example:2222/app.git", "ssh://***@git.example:2222/app.git"),
    ("git@github.example:team/app.git", "git@github.example:team/app.git"),  # a user, no secret
    ("/srv/git/app.git", "/srv/git/app.git"),
    ("https://github.example/team/app.git", "https://github.example/team/app.git"),
])
def test_its_filter_hides_only_the_credentials(url, shown):
    assert without_credentials(url) == shown == redact(url)


# Content-Security-Policy ---------------------------------------------------------------

def policy(response):
    header = response.get("Content-Security-Policy")
    assert header, f"{response.wsgi_request.path}: no Content-Security-Policy"
    directives = {}
    for part in header.split(";"):
        name, *sources = part.split()
        directives[name] = sources
    return directives


STRICT = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'"],
    "connect-src": ["'self'"],
    "object-src": ["'none'"],
    "base-uri": ["'none'"],
    "form-action": ["'self'"],
    "frame-ancestors": ["'none'"],
}


def test_it_sends_a_strict_policy_with_every_page(client, private_repo, admin_user):
    _, build = private_repo
    anonymous = [*pages(build), "/admin/login/"]
    for url in anonymous:
        assert policy(client.get(url)) == STRICT, url
    client.force_login(admin_user)
    staff = ["/admin/", "/admin/pipeline/repository/", f"/admin/pipeline/build/{build.pk}/change/",
             "/admin/nodes/node/add/", "/admin/django_celery_beat/periodictask/add/"]
    for url in staff:
        response = client.get(url)
        assert response.status_code == 200, url
        assert policy(response) == STRICT, url


def test_it_sends_the_policy_with_error_pages_too(client, db):
    assert policy(client.get("/repos/nosuchrepo/")) == STRICT
    assert policy(client.post("/repos/nosuchrepo/build")) == STRICT  # 302 to the login page


INLINE = [
    (re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I), "an inline <script> (use a static file)"),
    (re.compile(r"<style\b", re.I), "a <style> element (use a static stylesheet)"),
    (re.compile(r"\sstyle\s*=", re.I), "a style attribute (use a class)"),
    (re.compile(r"\son[a-z]+\s*=", re.I), "an event-handler attribute (use addEventListener)"),
    (re.compile(r"javascript:", re.I), "a javascript: URL"),
]


def test_no_template_needs_inline_script_or_style():
    found = []
    for path in sorted((ROOT / "templates").rglob("*.html")):
        text = path.read_text()
        for pattern, what in INLINE:
            for match in pattern.finditer(text):
                # json_script's <script type="application/json"> is data, not code.
                if "application/json" in match.group(0):
                    continue
                line = text.count("\n", 0, match.start()) + 1
                found.append(f"{path.relative_to(ROOT)}:{line}: {what}")
    assert not found, "\n".join(found)


def test_the_periodic_task_form_keeps_its_crontab_help_without_inline_script(client, admin_user):
    """django-celery-beat's own form has an inline script; ours loads the same as a file."""
    client.force_login(admin_user)
    page = client.get("/admin/django_celery_beat/periodictask/add/").content.decode()
    assert 'id="readable-crontabs"' in page
    assert "trainyard/periodic_task.js" in page
    assert "<script id=\"periodic-task-overrides\">" not in page
