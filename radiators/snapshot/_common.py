"""What the parts of the snapshot share: sizes, names, small helpers."""

from pipeline.models import Build

PANELS = ["branches", "train", "builds", "environments", "tests", "nodes"]
RECENT_WINDOW = 300     # recent builds read to find each branch's state and red streak
MAX_TILES = 7           # branch tiles that stay readable; beyond: "+N more"
RUNNING_SHOWN = 5
FINISHED_SHOWN = 5
TRAIN_HISTORY = 10      # past trains whose stages give the usual durations
TRAINS_SHOWN = 2        # trains on the all-repositories wall
SUITES_SHOWN = 6
FLAKY_SHOWN = 5
SLOWEST_SHOWN = 5
PROBLEM_NODES_SHOWN = 5
MESSAGE_CHARS = 160
STAGES = ["staging", "preview", "preprod"]
PRODUCTION = "production"
RED = ("failed", "error")
ENDED = ("passed", "failed", "error")
BRANCH_KINDS = (Build.Kind.BRANCH, Build.Kind.MASTER)


def _iso(value):
    return value.isoformat() if value else None


def _short(text):
    text = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return text if len(text) <= MESSAGE_CHARS else text[:MESSAGE_CHARS - 1] + "…"


def _scoped(queryset, repository, field="repository"):
    return queryset if repository is None else queryset.filter(**{field: repository})
