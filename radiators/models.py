"""What the wall screens keep: kiosk tokens, claims, screen layouts, and test-health
rollups (so the wall never scans every stored test result)."""

from django.conf import settings
from django.db import models
from django.db.models import Q


class KioskToken(models.Model):
    """A read-only pass for a wall screen: one repository's wall (or the all-repositories
    wall when `repository` is empty), no login, no buttons. Only its hash is stored;
    revoking it closes the screens that use it."""

    repository = models.ForeignKey("pipeline.Repository", null=True, blank=True,
                                   on_delete=models.CASCADE, related_name="kiosk_tokens",
                                   help_text="Empty: the wall of all repositories.")
    name = models.CharField(max_length=100, help_text="Which screen, e.g. 'office east wall'.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(max_length=8, editable=False)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self):
        return f"{self.name} ({self.prefix}…)"


class Claim(models.Model):
    """Someone says "I'm on it" for a broken branch (often master): shown on the wall
    next to the break, instead of naming a culprit."""

    repository = models.ForeignKey("pipeline.Repository", on_delete=models.CASCADE,
                                   related_name="claims")
    branch = models.CharField(max_length=255)
    build = models.ForeignKey("pipeline.Build", null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="+", help_text="The red build it was claimed on.")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    note = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    released_at = models.DateTimeField(null=True, blank=True,
                                       help_text="Set when the branch is green again or unclaimed.")

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["repository", "branch"],
                                    condition=Q(released_at__isnull=True),
                                    name="claim_one_open_per_branch"),
        ]

    def __str__(self):
        return f"{self.repository}:{self.branch} claimed by {self.user}"


class WallLayout(models.Model):
    """How a wall is laid out, kept on the server (not in one browser): which panels, in
    which order, and whether state changes make a sound."""

    repository = models.OneToOneField("pipeline.Repository", null=True, blank=True,
                                      on_delete=models.CASCADE, related_name="wall_layout",
                                      help_text="Empty: the wall of all repositories.")
    panels = models.JSONField(default=list, blank=True,
                              help_text="Panel names in order; empty: all of them.")
    sound = models.BooleanField(default=False,
                                help_text="A sound on a change of state (first break, fixed).")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self):
        return f"layout of {self.repository or 'all repositories'}"


class SuiteDay(models.Model):
    """One repository's results of one test suite on one day (kept as jobs store them)."""

    repository = models.ForeignKey("pipeline.Repository", on_delete=models.CASCADE,
                                   related_name="+")
    suite = models.CharField(max_length=300)
    day = models.DateField()
    runs = models.PositiveIntegerField(default=0)
    failures = models.PositiveIntegerField(default=0, help_text="Failed or errored.")
    skipped = models.PositiveIntegerField(default=0)
    duration = models.FloatField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["repository", "suite", "day"],
                                               name="suiteday_unique")]
        indexes = [models.Index(fields=["repository", "day"])]

    def __str__(self):
        return f"{self.suite} on {self.day}"


class TestCaseDay(models.Model):
    """One test case's results on one day: its runs, failures, flips (failed and passed
    on the same SHA: flaky) and durations."""

    __test__ = False  # not a pytest test class

    repository = models.ForeignKey("pipeline.Repository", on_delete=models.CASCADE,
                                   related_name="+")
    suite = models.CharField(max_length=300)
    classname = models.CharField(max_length=300)
    name = models.CharField(max_length=500)
    day = models.DateField()
    runs = models.PositiveIntegerField(default=0)
    failures = models.PositiveIntegerField(default=0)
    flips = models.PositiveIntegerField(default=0)
    duration_total = models.FloatField(default=0)
    duration_max = models.FloatField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["repository", "suite", "classname", "name",
                                                       "day"], name="testcaseday_unique")]
        indexes = [models.Index(fields=["repository", "day"])]

    def __str__(self):
        return f"{self.classname}::{self.name} on {self.day}"
