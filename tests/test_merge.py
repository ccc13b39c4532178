"""LGTMs, merging into the real default branch, master builds and release candidates."""

import json

import pytest

from nodes.models import Node, NodeLease
from pipeline.models import ApiToken, Build, Event, Lgtm, PullRequest, ReleaseCandidate, Repository
from pipeline.services import git, merge
from pipeline.services.builds import record_commit
from pipeline.services.merge import MergeRefused, merge_pull_request
from pipeline.services.pulls import PullRequestError, give_lgtm, open_pull_request, sync_pull_requests
from tests.factories import UserFactory
from tests.helpers import build_ended, free_port

pytestmark = pytest.mark.django_db

FAILING_SPEC = 'checks:\n  unit: python3 -c "raise SystemExit(1)"\n'


@pytest.fixture
def reviewer(db):
    return UserFactory(username="rita", perms=["pipeline.add_lgtm"])


@pytest.fixture
def pr(repository, git_repo, developer):
    git_repo.commit({"feature.txt": "x\n"}, branch="feature/x", message="Add x")
    return open_pull_request(repository, "feature/x", title="Add x", user=developer)[0]


def ended_build(pr, status, message=""):
    """A branch build of the pull request's head that ended as `status` (its checks are
    not what these tests are about; the worker tests below run real ones)."""
    return Build.objects.create(repository=pr.repository, commit=record_commit(pr.repository,
                                                                               pr.head_sha),
                                sha=pr.head_sha, branch=pr.branch, kind=Build.Kind.BRANCH,
                                status=status, message=message)


def ready(pr, reviewer):
    ended_build(pr, Build.Status.PASSED, "all checks passed")
    give_lgtm(pr, reviewer)


# LGTMs ----------------------------------------------------------------------------------

def test_it_records_one_lgtm_per_reviewer_at_the_head(pr, reviewer):
    lgtm, created = give_lgtm(pr, reviewer)
    again, created_again = give_lgtm(pr, reviewer)
    assert created and not created_again and again.pk == lgtm.pk
    assert (lgtm.user, lgtm.sha) == (reviewer, pr.head_sha)
    assert Lgtm.objects.count() == 1
    assert Event.objects.filter(kind="pull_request.lgtm").count() == 2


def test_the_author_who_opened_it_cannot_lgtm(pr, developer):
    with pytest.raises(PullRequestError, match="dev wrote #1: an author cannot LGTM"):
        give_lgtm(pr, developer)
    assert not Lgtm.objects.exists()


def test_the_commit_author_matched_by_email_cannot_lgtm(repository, git_repo, reviewer):
    git_repo.commit({"y.txt": "y"}, branch="feature/y", author=("Rita", "RITA@example.com"))
    pr, _ = open_pull_request(repository, "feature/y")  # opened by nobody mapped
    with pytest.raises(PullRequestError, match="an author cannot LGTM"):
        give_lgtm(pr, reviewer)
    give_lgtm(pr, UserFactory(username="other"))


def test_a_closed_pull_request_takes_no_lgtm(pr, reviewer):
    from pipeline.services.pulls import close_pull_request

    close_pull_request(pr)
    with pytest.raises(PullRequestError, match="#1 is closed"):
        give_lgtm(pr, reviewer)


@pytest.mark.parametrize("dismiss, counted", [(False, 1), (True, 0)])
def test_a_push_keeps_an_lgtm_unless_the_repository_dismisses_stale_ones(
        repository, git_repo, pr, reviewer, dismiss, counted):
    Repository.objects.filter(pk=repository.pk).update(dismiss_stale_lgtms=dismiss)
    give_lgtm(pr, reviewer)
    git_repo.commit({"feature.txt": "x2\n"}, branch="feature/x", message="More x")
    sync_pull_requests(repository)
    pr = PullRequest.objects.get(pk=pr.pk)
    assert pr.head_sha == git_repo.head("feature/x")
    assert pr.counted_lgtms().count() == counted
    give_lgtm(pr, reviewer)  # given again, it counts on the new head either way
    assert pr.counted_lgtms().count() == 1


# Merge refusals -------------------------------------------------------------------------

def test_it_refuses_to_merge_without_a_build_or_lgtms(pr, developer):
    with pytest.raises(MergeRefused) as refused:
        merge_pull_request(pr, user=developer)
    assert str(refused.value) == ("cannot merge #1: not good to merge: the branch has not been "
                                  "built; needs 1 LGTM, has 0")


def test_it_refuses_a_failed_build_with_its_reason(git_repo, pr, developer, reviewer):
    build = ended_build(pr, Build.Status.FAILED, "unit failed")
    give_lgtm(pr, reviewer)
    with pytest.raises(MergeRefused) as refused:
        merge_pull_request(pr, user=developer)
    assert str(refused.value) == f"cannot merge #1: not good to merge: build #{build.pk} failed " \
                                 "(unit failed)"
    assert PullRequest.objects.get().state == "open"
    assert git_repo.git("rev-list", "--count", "master") == "1"


def test_it_refuses_a_green_build_without_enough_lgtms(repository, pr, developer, reviewer):
    Repository.objects.filter(pk=repository.pk).update(lgtms_required=2)
    ready(pr, reviewer)
    with pytest.raises(MergeRefused, match=r"^cannot merge #1: needs 2 LGTMs, has 1$"):
        merge_pull_request(PullRequest.objects.get(), user=developer)


def test_a_push_after_the_green_build_is_refused_until_built(git_repo, pr, developer, reviewer):
    ready(pr, reviewer)
    git_repo.commit({"feature.txt": "late\n"}, branch="feature/x")
    with pytest.raises(MergeRefused, match="has not been built"):
        merge_pull_request(pr, user=developer)


def test_a_conflict_is_refused_naming_the_file(git_repo, pr, developer, reviewer):
    git_repo.commit({"feature.txt": "master's own\n"})
    ready(pr, reviewer)
    with pytest.raises(MergeRefused, match="conflicts in feature.txt"):
        merge_pull_request(pr, user=developer)
    assert PullRequest.objects.get().state == "open"


# Merging --------------------------------------------------------------------------------

def test_it_merges_with_a_merge_commit_on_the_origin_and_frees_the_node(
        repository, git_repo, pr, developer, reviewer, tmp_path):
    node = Node.objects.create(name="local-1", transport=Node.Transport.LOCAL, host="127.0.0.1",
                               app_port=free_port(), base_path=str(tmp_path / "node"))
    NodeLease.objects.create(node=node, repository=repository, branch="feature/x")
    old_master, head = git_repo.head(), pr.head_sha
    ready(pr, reviewer)
    merged, _ = merge_pull_request(pr, user=developer)
    assert git_repo.head() == merged
    assert git_repo.git("rev-list", "--parents", "-1", merged).split()[1:] == [old_master, head]
    assert git_repo.git("show", "master:feature.txt") == "x"
    assert git_repo.git("log", "-1", "--format=%s|%an", merged) == \
        "Merge pull request #1 from feature/x|dev"
    pr.refresh_from_db()
    assert (pr.state, pr.merge_sha) == ("merged", merged)
    assert not NodeLease.objects.exists()
    assert Event.objects.filter(kind="pull_request.closed", new="merged").exists()
    assert Event.objects.filter(kind="node.freed", node=node).exists()
    with pytest.raises(MergeRefused, match="#1 is already merged"):
        merge_pull_request(pr, user=developer)


def test_a_push_to_master_during_the_merge_is_kept_and_the_merge_made_again(
        git_repo, pr, developer, reviewer, monkeypatch):
    ready(pr, reviewer)
    real_update = git.update_branch
    pushed = []

    def push_first(origin, branch, new, old, **kwargs):
        if not pushed:  # someone pushes between our check and our update
            pushed.append(git_repo.commit({"other.txt": "o\n"}, message="Someone else"))
        return real_update(origin, branch, new, old, **kwargs)

    monkeypatch.setattr(git, "update_branch", push_first)
    merged, _ = merge_pull_request(pr, user=developer)
    assert git_repo.git("rev-list", "--parents", "-1", merged).split()[1:] == [pushed[0],
                                                                              pr.head_sha]
    assert git_repo.git("show", "master:other.txt") == "o"
    assert git_repo.git("show", "master:feature.txt") == "x"


def test_a_master_that_keeps_moving_refuses_the_merge(git_repo, pr, developer, reviewer,
                                                      monkeypatch):
    ready(pr, reviewer)
    before = git_repo.head()
    monkeypatch.setattr(git, "update_branch", lambda *args, **kwargs: False)
    with pytest.raises(MergeRefused, match="master kept moving while #1 was merged; try again"):
        merge_pull_request(pr, user=developer)
    assert git_repo.head() == before and PullRequest.objects.get().state == "open"
    assert merge.MERGE_ATTEMPTS == 3


# Master builds and release candidates ---------------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_a_merge_gets_a_green_master_build_which_makes_a_candidate(
        worker, repository, git_repo, developer, reviewer):
    git_repo.commit({"feature.txt": "x\n"}, branch="feature/x")
    pr, _ = open_pull_request(repository, "feature/x", user=developer)
    ready(pr, reviewer)
    merged, build = merge_pull_request(pr, user=developer)
    assert (build.kind, build.sha, build.branch) == (Build.Kind.MASTER, merged, "master")
    build_ended(build)
    assert build.status == "passed", build.message
    assert not build.jobs.exclude(stage="checks").exists()  # checks only, no branch node
    candidate = ReleaseCandidate.objects.get()
    assert (candidate.sha, candidate.build) == (merged, build)


@pytest.mark.django_db(transaction=True)
def test_a_push_noticed_by_the_sync_gets_a_master_build_and_red_makes_no_candidate(
        worker, repository, git_repo):
    sync_pull_requests(repository)  # the first head seen is only noted
    assert not Build.objects.exists()
    red = git_repo.commit({"trainyard.yml": FAILING_SPEC}, message="Break master")
    sync_pull_requests(repository)
    build = Build.objects.get()
    assert (build.kind, build.sha) == (Build.Kind.MASTER, red)
    build_ended(build)
    assert build.status == "failed"
    sync_pull_requests(repository)  # the same head again: no second build
    assert Build.objects.count() == 1
    from pipeline.services.builds import request_build

    git_repo.commit({"trainyard.yml": FAILING_SPEC + "# again\n"}, message="Still broken")
    asked = request_build(repository, "master")[0]  # pushed, then built by hand (!bb master)
    sync_pull_requests(repository)  # the sync notices a head that is built already
    assert Build.objects.count() == 2 and asked.sha == git_repo.head()
    build_ended(asked)
    assert not ReleaseCandidate.objects.exists()


# Doors ----------------------------------------------------------------------------------

def api(client, path, token, body=None):
    return client.post(path, data=json.dumps(body or {}), content_type="application/json",
                       HTTP_AUTHORIZATION=f"Bearer {token}")


def test_the_api_gives_lgtms_and_merges_or_says_why_not(client, repository, git_repo, pr,
                                                        developer, reviewer):
    rita = ApiToken.issue(reviewer, "t")[1]
    dev = ApiToken.issue(developer, "t")[1]
    refused = api(client, "/api/repos/app/pulls/1/merge", dev)
    assert refused.status_code == 409
    assert refused.json()["error"].endswith("needs 1 LGTM, has 0")
    assert api(client, "/api/repos/app/pulls/1/lgtm", dev).status_code == 403  # no permission
    given = api(client, "/api/repos/app/pulls/1/lgtm", rita)
    assert given.status_code == 201 and given.json()["lgtms"] == ["rita"]
    ended_build(pr, Build.Status.PASSED)
    done = api(client, "/api/repos/app/pulls/1/merge", dev)
    assert done.status_code == 200, done.json()
    assert done.json()["state"] == "merged" and done.json()["merge_sha"] == git_repo.head()
    missing = api(client, "/api/repos/app/pulls/7/lgtm", rita)
    assert missing.status_code == 404 and "no pull request #7" in missing.json()["error"]


def test_acting_for_another_user_needs_the_permission(client, repository, pr, reviewer,
                                                      admin_user, developer):
    from django.contrib.auth.models import Permission

    rita = ApiToken.issue(reviewer, "t")[1]
    other = UserFactory(username="olga", perms=["pipeline.add_lgtm"])
    refused = api(client, "/api/repos/app/pulls/1/lgtm", rita, {"as": "olga"})
    assert refused.status_code == 403
    assert refused.json()["error"] == ("rita may not act for another user (it needs the "
                                       "act_for_others permission)")
    boss = ApiToken.issue(admin_user, "t")[1]
    assert api(client, "/api/repos/app/pulls/1/lgtm", boss, {"as": "olga"}).status_code == 201
    assert Lgtm.objects.get().user == other
    assert api(client, "/api/repos/app/pulls/1/lgtm", boss, {"as": "dev"}).json()["error"] == \
        "dev may not lgtm"  # whoever it is recorded for needs the permission too
    developer.user_permissions.add(Permission.objects.get(codename="add_lgtm"))
    author = api(client, "/api/repos/app/pulls/1/lgtm", boss, {"as": "dev"})
    assert author.status_code == 409 and "an author cannot LGTM" in author.json()["error"]
    nobody = api(client, "/api/repos/app/pulls/1/lgtm", boss, {"as": "nobody"})
    assert nobody.status_code == 400 and nobody.json()["error"] == "no active user named 'nobody'"


def test_the_pull_request_page_has_lgtm_and_merge_buttons(client, pr, reviewer, developer):
    client.force_login(reviewer)
    page = client.get("/repos/app/pulls/1/").content.decode()
    assert "LGTM</button>" in page and "needs 1 LGTM, has 0" in page
    assert "Merge into" not in page  # no button while it cannot be merged
    client.post("/repos/app/pulls/1/lgtm")
    assert Lgtm.objects.get().user == reviewer
    ended_build(pr, Build.Status.PASSED)
    client.force_login(developer)
    page = client.get("/repos/app/pulls/1/").content.decode()
    assert "rita at" in page and "Merge into master</button>" in page
    response = client.post("/repos/app/pulls/1/merge")
    assert response.status_code == 302
    assert PullRequest.objects.get().state == "merged"
