"""Each repository's train schedule: a django-celery-beat PeriodicTask (editable in the
admin) that runs `pipeline.tasks.train_tick`. The spec's `train.schedule` seeds it when
the repository's first release candidate appears; after that the admin's copy rules."""

import json

from django.conf import settings
from django.db import IntegrityError, transaction

from pipeline.spec.model import DEFAULT_SCHEDULE

TASK = "pipeline.tasks.train_tick"


def task_name(repository):
    return f"deploy train: {repository.name}"


def ensure_schedule(repository, schedule=None):
    """The repository's PeriodicTask, created from `schedule` (a 5-field cron line) if it
    has none yet. Returns (task, created)."""
    from django_celery_beat.models import CrontabSchedule, PeriodicTask

    existing = PeriodicTask.objects.filter(name=task_name(repository)).first()
    if existing is not None:
        return existing, False
    minute, hour, day_of_month, month_of_year, day_of_week = (schedule or DEFAULT_SCHEDULE).split()
    try:
        with transaction.atomic():
            crontab, _ = CrontabSchedule.objects.get_or_create(
                minute=minute, hour=hour, day_of_month=day_of_month,
                month_of_year=month_of_year, day_of_week=day_of_week,
                timezone=settings.TIME_ZONE)
            task = PeriodicTask.objects.create(
                name=task_name(repository), task=TASK, crontab=crontab,
                args=json.dumps([repository.pk]),
                description=f"Starts {repository.name}'s deploy train (seeded from "
                            f"trainyard.yml's train.schedule: {schedule or DEFAULT_SCHEDULE}).")
    except IntegrityError:  # seeded at the same moment by another worker
        return PeriodicTask.objects.get(name=task_name(repository)), False
    return task, True
