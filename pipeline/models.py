"""Repositories, commits, pull requests, builds, jobs and the event log."""

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.urls import reverse
from django.utils.functional import cached_property

SHA_REGEX = r"^[0-9a-f]{40}$"


class Repository(models.Model):
    class Provider(models.TextChoices):
        LOCAL = "local", "Local git"
        GITHUB = "github", "GitHub"

    # 80: the radiator's channel group "radiator.<name>" must stay within Channels' 100.
    name = models.SlugField(max_length=80, unique=True)
    clone_url = models.CharField(
        max_length=500, help_text="A path to a local git repository, or a URL git can clone."
    )
    default_branch = models.CharField(max_length=200, default="master")
    spec_path = models.CharField(max_length=200, default="trainyard.yml")
    provider = models.CharField(max_length=20, choices=Provider.choices, default=Provider.LOCAL)
    lgtms_required = models.PositiveSmallIntegerField(default=1)
    dismiss_stale_lgtms = models.BooleanField(
        default=False, help_text="An LGTM counts only for the head it was given on: a push "
        "after it needs a new one. Off (as on GitHub by default): a push keeps it.")
    default_branch_head = models.CharField(
        max_length=40, blank=True, editable=False,
        help_text="The default branch's head as last seen: a new one gets a master build.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "repositories"
        ordering = ["name"]

    def __str__(self):
        return self.name

    def get_absolute_url(self):
        return reverse("pipeline:repository", args=[self.name])


class Commit(models.Model):
    repository = models.ForeignKey(Repository, on_delete=models.CASCADE, related_name="commits")
    sha = models.CharField(max_length=40)
    author_name = models.CharField(max_length=200, blank=True)
    author_email = models.CharField(max_length=254, blank=True)
    message = models.TextField(blank=True)
    committed_at = models.DateTimeField(null=True, blank=True)
    is_revert = models.BooleanField(default=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["repository", "sha"], name="commit_unique_sha"),
            models.CheckConstraint(condition=Q(sha__regex=SHA_REGEX), name="commit_sha_hex"),
        ]

    def __str__(self):
        return self.sha[:10]

    @property
    def subject(self):
        return self.message.splitlines()[0] if self.message else ""


class PullRequest(models.Model):
    class State(models.TextChoices):
        OPEN = "open"
        MERGED = "merged"
        CLOSED = "closed"

    repository = models.ForeignKey(
        Repository, on_delete=models.CASCADE, related_name="pull_requests"
    )
    number = models.PositiveIntegerField()
    title = models.CharField(max_length=300)
    author_name = models.CharField(max_length=200, blank=True)
    branch = models.CharField(max_length=255)
    head_sha = models.CharField(max_length=40, blank=True)
    state = models.CharField(max_length=10, choices=State.choices, default=State.OPEN)
    merge_sha = models.CharField(max_length=40, blank=True,
                                 help_text="The merge commit on the default branch, once merged.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-number"]
        constraints = [
            models.UniqueConstraint(fields=["repository", "number"], name="pr_unique_number"),
        ]

    def __str__(self):
        return f"{self.repository.name}#{self.number}"

    def get_absolute_url(self):
        return reverse("pipeline:pull_request", args=[self.repository.name, self.number])

    def refresh_from_db(self, *args, **kwargs):
        self.__dict__.pop("latest_build", None)
        super().refresh_from_db(*args, **kwargs)

    @cached_property
    def latest_build(self):
        # Read once per instance: a page asks for it and for good_to_merge on every row.
        return (Build.objects.filter(repository_id=self.repository_id, branch=self.branch,
                                     kind=Build.Kind.BRANCH).order_by("-id").first())

    @property
    def good_to_merge(self):
        """True only when the latest build of the branch passed (checks, deploy, smoke) on
        the pull request's current head: a new push turns it false until a green build."""
        build = self.latest_build
        return bool(self.state == self.State.OPEN and build and build.sha == self.head_sha
                    and build.status == Build.Status.PASSED)

    def counted_lgtms(self):
        """The LGTMs that count toward merging: all of them, or, when the repository
        dismisses stale LGTMs, only those given on the current head."""
        lgtms = self.lgtms.select_related("user")
        if self.repository.dismiss_stale_lgtms:
            lgtms = lgtms.filter(sha=self.head_sha)
        return lgtms


class Lgtm(models.Model):
    """A reviewer's "looks good to me" on a pull request, at the head it was given on."""

    pull_request = models.ForeignKey(PullRequest, on_delete=models.CASCADE, related_name="lgtms")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                             related_name="lgtms")
    sha = models.CharField(max_length=40, help_text="The pull request's head when given.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "LGTM"
        ordering = ["pull_request_id", "id"]
        constraints = [
            models.UniqueConstraint(fields=["pull_request", "user"], name="lgtm_one_per_user"),
        ]
        permissions = [("act_for_others", "Act for another user (the command line's --as)")]

    def __str__(self):
        return f"{self.pull_request} LGTM by {self.user}"


class BuildQuerySet(models.QuerySet):
    def active(self):
        return self.filter(status__in=Build.ACTIVE)

    def ended(self):
        return self.filter(status__in=Build.ENDED)


class RunStatus(models.TextChoices):
    """Statuses shared by builds and their jobs."""

    QUEUED = "queued"
    RUNNING = "running"
    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"
    CANCELLED = "cancelled"


class Build(models.Model):
    class Kind(models.TextChoices):
        BRANCH = "branch"
        MASTER = "master"
        TRAIN = "train"

    Status = RunStatus

    TRANSITIONS = {
        Status.QUEUED: {Status.RUNNING, Status.ERROR, Status.CANCELLED},
        Status.RUNNING: {Status.PASSED, Status.FAILED, Status.ERROR, Status.CANCELLED},
    }
    ACTIVE = {Status.QUEUED, Status.RUNNING}
    ENDED = {Status.PASSED, Status.FAILED, Status.ERROR, Status.CANCELLED}

    repository = models.ForeignKey(Repository, on_delete=models.CASCADE, related_name="builds")
    commit = models.ForeignKey(Commit, on_delete=models.PROTECT, related_name="builds")
    sha = models.CharField(max_length=40)
    branch = models.CharField(max_length=255)
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.BRANCH)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    message = models.TextField(blank=True,
                               help_text="Why the build ended as it did, or what it waits for.")
    deploy_url = models.CharField(max_length=500, blank=True,
                                  help_text="Where the build runs, once deployed to a node.")
    spec = models.JSONField(
        null=True, blank=True, help_text="The pipeline spec as read when the build started."
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    requested_via = models.CharField(max_length=20, blank=True)
    train = models.ForeignKey("pipeline.DeployTrain", null=True, blank=True,
                              on_delete=models.CASCADE, related_name="builds",
                              help_text="A train build: the train whose jobs it holds.")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = BuildQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=RunStatus.values), name="build_status_valid"
            ),
            # Two requests for the same SHA share one run instead of racing.
            models.UniqueConstraint(
                fields=["repository", "sha", "kind"],
                condition=Q(status__in=["queued", "running"]),
                name="build_one_active_per_sha",
            ),
        ]

    def __str__(self):
        return f"#{self.pk} {self.branch}@{self.sha[:10]}"

    def get_absolute_url(self):
        return reverse("pipeline:build", args=[self.pk])

    @property
    def is_active(self):
        return self.status in self.ACTIVE

    @property
    def duration(self):
        if self.started_at and self.finished_at:
            return self.finished_at - self.started_at
        return None


class JobQuerySet(models.QuerySet):
    def active(self):
        return self.filter(status__in=Job.ACTIVE)


class Job(models.Model):
    Status = RunStatus
    TRANSITIONS = {
        Status.QUEUED: {Status.RUNNING, Status.ERROR, Status.CANCELLED},
        # RUNNING -> QUEUED: its worker died and the reaper runs it again (checks repeat).
        Status.RUNNING: {Status.PASSED, Status.FAILED, Status.ERROR, Status.CANCELLED,
                         Status.QUEUED},
    }
    ACTIVE = Build.ACTIVE
    ENDED = Build.ENDED

    build = models.ForeignKey(Build, on_delete=models.CASCADE, related_name="jobs")
    name = models.CharField(max_length=100)
    stage = models.CharField(max_length=20, default="checks")
    command = models.JSONField(help_text="The argument list as written in the spec.")
    junit_path = models.CharField(max_length=300, blank=True)
    timeout = models.PositiveIntegerField(help_text="Seconds before the job is killed.")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    exit_code = models.IntegerField(null=True, blank=True)
    message = models.TextField(blank=True)
    output_bytes = models.PositiveBigIntegerField(default=0)
    output_truncated = models.BooleanField(default=False)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    attempt = models.PositiveSmallIntegerField(
        default=1, help_text="Runs so far, counting this one: a job whose worker died runs again.")
    enqueued_at = models.DateTimeField(
        null=True, blank=True, help_text="When a task for it was last sent to the broker.")
    environment = models.CharField(max_length=20, blank=True,
                                   help_text="A train's job: the environment it deploys or tests.")
    target_url = models.CharField(max_length=500, blank=True,
                                  help_text="Where smoke or acceptance tests point (TARGET_URL).")

    objects = JobQuerySet.as_manager()

    class Meta:
        ordering = ["build_id", "id"]
        constraints = [
            models.UniqueConstraint(fields=["build", "name"], name="job_unique_name"),
            models.CheckConstraint(
                condition=Q(status__in=RunStatus.values), name="job_status_valid"
            ),
        ]

    def __str__(self):
        return f"{self.build_id}/{self.name}"

    @property
    def duration(self):
        if self.started_at and self.finished_at:
            return self.finished_at - self.started_at
        return None

    @property
    def command_display(self):
        import shlex

        return shlex.join(self.command)


class ReleaseCandidate(models.Model):
    """A default-branch SHA whose master build passed: what a train may carry."""

    repository = models.ForeignKey(Repository, on_delete=models.CASCADE,
                                   related_name="release_candidates")
    sha = models.CharField(max_length=40)
    build = models.ForeignKey(Build, on_delete=models.CASCADE, related_name="release_candidates")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["repository", "sha"], name="candidate_unique_sha"),
            models.CheckConstraint(condition=Q(sha__regex=SHA_REGEX), name="candidate_sha_hex"),
        ]

    def __str__(self):
        return f"{self.repository}@{self.sha[:10]}"


class Variable(models.Model):
    """A repository's build variable. Secret values reach the jobs' environment only: never a
    log (masked), a page or the API."""

    NAME_REGEX = r"^[A-Za-z_][A-Za-z0-9_]{0,99}$"

    repository = models.ForeignKey(Repository, on_delete=models.CASCADE, related_name="variables")
    name = models.CharField(max_length=100)
    value = models.TextField(blank=True)
    secret = models.BooleanField(
        default=True, help_text="Masked in logs and never shown again after saving.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["repository_id", "name"]
        constraints = [
            models.UniqueConstraint(fields=["repository", "name"], name="variable_unique_name"),
            models.CheckConstraint(condition=Q(name__regex=r"^[A-Za-z_][A-Za-z0-9_]*$"),
                                   name="variable_name_valid"),
        ]

    def __str__(self):
        return f"{self.repository}:{self.name}"


class LogChunk(models.Model):
    """Job output, stored in ordered chunks as it arrives (readable while the job runs)."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="log_chunks")
    seq = models.PositiveIntegerField()
    text = models.TextField()

    class Meta:
        ordering = ["job_id", "seq"]
        constraints = [models.UniqueConstraint(fields=["job", "seq"], name="logchunk_unique_seq")]

    def __str__(self):
        return f"{self.job_id}:{self.seq}"


class TestResult(models.Model):
    class Outcome(models.TextChoices):
        PASSED = "passed"
        FAILED = "failed"
        ERROR = "error"
        SKIPPED = "skipped"

    __test__ = False  # not a pytest test class

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="test_results")
    suite = models.CharField(max_length=300, blank=True)
    classname = models.CharField(max_length=300, blank=True)
    name = models.CharField(max_length=500)
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    duration = models.FloatField(default=0)
    message = models.TextField(blank=True)

    class Meta:
        ordering = ["job_id", "id"]

    def __str__(self):
        return f"{self.outcome} {self.classname}::{self.name}"


class Event(models.Model):
    """Append-only log of everything that happened: radiators and audit read it."""

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    kind = models.CharField(max_length=50)
    repository = models.ForeignKey(
        Repository, null=True, blank=True, on_delete=models.CASCADE, related_name="events"
    )
    build = models.ForeignKey(
        Build, null=True, blank=True, on_delete=models.CASCADE, related_name="events"
    )
    job = models.ForeignKey(
        Job, null=True, blank=True, on_delete=models.CASCADE, related_name="events"
    )
    node = models.ForeignKey(
        "nodes.Node", null=True, blank=True, on_delete=models.CASCADE, related_name="events"
    )
    train = models.ForeignKey(
        "pipeline.DeployTrain", null=True, blank=True, on_delete=models.CASCADE,
        related_name="events"
    )
    old = models.CharField(max_length=30, blank=True)
    new = models.CharField(max_length=30, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    message = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self):
        return f"{self.kind} {self.old}->{self.new}"


class ApiToken(models.Model):
    """A bearer token for the HTTP API (command line, scripts). Only its hash is stored."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                             related_name="api_tokens")
    name = models.CharField(max_length=100)
    key_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=8)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self):
        return f"{self.name} ({self.prefix}…)"

    @staticmethod
    def hash(raw):
        import hashlib

        return hashlib.sha256(raw.encode()).hexdigest()

    def set_new_key(self):
        """Give the token a fresh random key: its hash and prefix are set, the raw key is
        returned to be shown once and is never stored."""
        import secrets

        raw = "ty_" + secrets.token_urlsafe(32)
        self.key_hash, self.prefix = self.hash(raw), raw[:8]
        return raw

    @classmethod
    def issue(cls, user, name):
        """Create a token; the raw key is returned once and never stored."""
        token = cls(user=user, name=name)
        raw = token.set_new_key()
        token.save()
        return token, raw


class DeployTrainQuerySet(models.QuerySet):
    def active(self):
        return self.filter(status__in=DeployTrain.ACTIVE)


class DeployTrain(models.Model):
    """One trip of a candidate SHA through the lower environments, the authors' approval
    and production (or, for a rollback, of the previous production SHA straight to
    production). `pipeline.services.trains` is its one writer."""

    class Kind(models.TextChoices):
        TRAIN = "train"
        ROLLBACK = "rollback"

    class Status(models.TextChoices):
        SCHEDULED = "scheduled"
        DEPLOYING_LOWER = "deploying_lower"
        TESTING = "testing"
        AWAITING_APPROVAL = "awaiting_approval"
        DEPLOYING_PRODUCTION = "deploying_production"
        DEPLOYED = "deployed"
        VETOED = "vetoed"
        FAILED = "failed"
        CANCELLED = "cancelled"

    S = Status
    TRANSITIONS = {
        S.SCHEDULED: {S.DEPLOYING_LOWER, S.AWAITING_APPROVAL, S.DEPLOYING_PRODUCTION, S.FAILED,
                      S.CANCELLED},
        S.DEPLOYING_LOWER: {S.TESTING, S.FAILED, S.VETOED, S.CANCELLED},
        # TESTING -> DEPLOYING_LOWER: the next environment.
        S.TESTING: {S.DEPLOYING_LOWER, S.AWAITING_APPROVAL, S.FAILED, S.VETOED, S.CANCELLED},
        S.AWAITING_APPROVAL: {S.DEPLOYING_PRODUCTION, S.VETOED, S.FAILED, S.CANCELLED},
        # VETOED -> DEPLOYING_PRODUCTION: a release manager's force with --override-veto,
        # only for a train whose acceptance tests all passed.
        S.VETOED: {S.DEPLOYING_PRODUCTION},
        S.DEPLOYING_PRODUCTION: {S.DEPLOYED, S.FAILED},
    }
    ACTIVE = {S.SCHEDULED, S.DEPLOYING_LOWER, S.TESTING, S.AWAITING_APPROVAL,
              S.DEPLOYING_PRODUCTION}
    ENDED = {S.DEPLOYED, S.VETOED, S.FAILED, S.CANCELLED}

    repository = models.ForeignKey(Repository, on_delete=models.CASCADE, related_name="trains")
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.TRAIN)
    head_sha = models.CharField(max_length=40, help_text="What this train deploys.")
    base_sha = models.CharField(max_length=40, blank=True,
                                help_text="What production ran when the train started.")
    candidate = models.ForeignKey(ReleaseCandidate, null=True, blank=True,
                                  on_delete=models.SET_NULL, related_name="trains")
    status = models.CharField(max_length=24, choices=Status.choices, default=Status.SCHEDULED)
    environment = models.CharField(max_length=20, blank=True,
                                   help_text="The environment it is in (or waits for).")
    message = models.TextField(blank=True, help_text="What it does or waits for, or why it ended.")
    # "2026-12-02T09": one scheduled train per repository per hour, however many ticks.
    schedule_slot = models.CharField(max_length=20, blank=True)
    started_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="+")
    started_via = models.CharField(max_length=20, blank=True)
    forced_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                  on_delete=models.SET_NULL, related_name="+")
    force_reason = models.TextField(blank=True)
    override_veto = models.BooleanField(default=False)
    override_lock = models.BooleanField(default=False)
    acceptance_passed = models.BooleanField(
        default=False, help_text="Every lower environment deployed and passed acceptance.")
    approval_requested_at = models.DateTimeField(null=True, blank=True)
    last_reminder_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = DeployTrainQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["repository"],
                condition=Q(status__in=["scheduled", "deploying_lower", "testing",
                                        "awaiting_approval", "deploying_production"]),
                name="train_one_active_per_repository"),
            models.UniqueConstraint(fields=["repository", "schedule_slot"],
                                    condition=~Q(schedule_slot=""), name="train_one_per_slot"),
            models.CheckConstraint(condition=Q(head_sha__regex=SHA_REGEX), name="train_sha_hex"),
        ]
        permissions = [("release_manager", "Force, roll back, lock and unlock deploy trains")]

    def __str__(self):
        return f"{self.repository.name} train #{self.pk} ({self.head_sha[:10]})"

    def get_absolute_url(self):
        return reverse("pipeline:train", args=[self.repository.name, self.pk])

    @property
    def is_active(self):
        return self.status in self.ACTIVE

    @cached_property
    def build(self):
        """The build holding its jobs now (a force over a veto runs production in a new one)."""
        return self.builds.order_by("-id").first()

    def refresh_from_db(self, *args, **kwargs):
        self.__dict__.pop("build", None)
        super().refresh_from_db(*args, **kwargs)

    def event_scope(self):
        return {"repository_id": self.repository_id, "train_id": self.pk}


class TrainCommit(models.Model):
    """A commit a train carries, oldest first, with its pull request and mapped author."""

    train = models.ForeignKey(DeployTrain, on_delete=models.CASCADE, related_name="train_commits")
    commit = models.ForeignKey(Commit, on_delete=models.PROTECT, related_name="+")
    position = models.PositiveIntegerField()
    pull_request = models.ForeignKey(PullRequest, null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="+")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                               on_delete=models.SET_NULL, related_name="+",
                               help_text="Empty: the author maps to no user (shown, never asked).")
    is_merge = models.BooleanField(default=False,
                                   help_text="A merge commit: no change of its own, no author asked.")
    reverts = models.CharField(max_length=40, blank=True,
                               help_text="The SHA a revert commit undoes, if it says.")

    class Meta:
        ordering = ["train_id", "position"]
        constraints = [
            models.UniqueConstraint(fields=["train", "commit"], name="train_commit_unique"),
        ]

    def __str__(self):
        return f"{self.train_id}: {self.commit}"


class Approval(models.Model):
    """An author's answer to a train: good, or bad with a reason (a veto)."""

    class Verdict(models.TextChoices):
        GOOD = "good"
        BAD = "bad"

    train = models.ForeignKey(DeployTrain, on_delete=models.CASCADE, related_name="approvals")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                             related_name="approvals")
    verdict = models.CharField(max_length=4, choices=Verdict.choices)
    reason = models.TextField(blank=True)
    via = models.CharField(max_length=20, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["train_id", "id"]
        constraints = [
            models.UniqueConstraint(fields=["train", "user"], name="approval_one_per_user"),
            models.CheckConstraint(condition=~Q(verdict="bad") | ~Q(reason=""),
                                   name="approval_veto_has_reason"),
        ]

    def __str__(self):
        return f"{self.user} says {self.verdict} to train {self.train_id}"


class Lock(models.Model):
    """A release manager's lock on one environment of a repository, or on all of it
    (`environment` empty). A train reaching it waits; unlocked or expired, it goes on."""

    repository = models.ForeignKey(Repository, on_delete=models.CASCADE, related_name="locks")
    environment = models.CharField(max_length=20, blank=True,
                                   help_text="Empty: every environment of the repository.")
    reason = models.TextField()
    locked_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL,
                                  related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    released_at = models.DateTimeField(null=True, blank=True)
    released_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                    on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["repository", "environment"],
                                    condition=Q(released_at__isnull=True),
                                    name="lock_one_open_per_environment"),
        ]

    def __str__(self):
        return f"{self.repository} {self.environment or 'all'} locked"


WEEKDAYS = [(0, "Monday"), (1, "Tuesday"), (2, "Wednesday"), (3, "Thursday"), (4, "Friday"),
            (5, "Saturday"), (6, "Sunday")]


class FreezeWindow(models.Model):
    """A weekly window (e.g. Friday 16:00 to Monday 08:00) in which ticks start no train.
    `repository` empty: every repository. Times are in the server's TIME_ZONE."""

    repository = models.ForeignKey(Repository, null=True, blank=True, on_delete=models.CASCADE,
                                   related_name="freeze_windows")
    name = models.CharField(max_length=100)
    start_weekday = models.PositiveSmallIntegerField(choices=WEEKDAYS)
    start_time = models.TimeField()
    end_weekday = models.PositiveSmallIntegerField(choices=WEEKDAYS)
    end_time = models.TimeField()
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=Q(start_weekday__lte=6, end_weekday__lte=6),
                                   name="freeze_weekday_valid"),
        ]

    def __str__(self):
        return self.name


class Notification(models.Model):
    """The in-app inbox: what Trainyard asked or told a user (e-mail and chat get copies)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                             related_name="notifications")
    train = models.ForeignKey(DeployTrain, null=True, blank=True, on_delete=models.CASCADE,
                              related_name="notifications")
    kind = models.CharField(max_length=30)
    message = models.TextField()
    url = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    read_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self):
        return f"{self.user}: {self.kind}"
