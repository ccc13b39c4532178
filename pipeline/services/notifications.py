"""Telling people: the in-app inbox (a Notification row) always, an e-mail to users who
have an address (Django's e-mail backend), and a Slack-compatible incoming webhook when
TRAINYARD_SLACK_WEBHOOK_URL is set. E-mail and chat go out after the transaction commits
and never fail the caller: a mail server that is down costs a log line, not a train."""

import json
import logging
import urllib.request
from functools import partial

from django.conf import settings
from django.core.mail import send_mass_mail
from django.db import transaction

from pipeline.models import Notification

logger = logging.getLogger(__name__)
CHAT_TIMEOUT = 5


def _link(train):
    return settings.TRAINYARD["PUBLIC_URL"].rstrip("/") + train.get_absolute_url()


def notify(users, train, kind, message, *, chat=True):
    """One inbox entry per user, an e-mail to each user with an address, one chat post."""
    url = _link(train)
    Notification.objects.bulk_create(
        Notification(user=user, train=train, kind=kind, message=message,
                     url=train.get_absolute_url()) for user in users)
    recipients = [user.email for user in users if user.email]
    subject = f"[Trainyard] {train.repository.name} train #{train.pk}: {kind.replace('_', ' ')}"
    body = f"{message}\n\n{url}\n"
    if recipients:
        transaction.on_commit(partial(_mail, subject, body, recipients), robust=True)
    if chat and settings.TRAINYARD.get("SLACK_WEBHOOK_URL"):
        mentions = " ".join(f"@{user.get_username()}" for user in users)
        text = f"{mentions} {message} <{url}|train #{train.pk}>".strip()
        transaction.on_commit(partial(post_to_chat, text), robust=True)


def _mail(subject, body, recipients):
    # One message per person: nobody's address is shown to the others.
    try:
        send_mass_mail([(subject, body, None, [address]) for address in recipients])
    except Exception:  # SMTP down, refused address...: the inbox still has it
        logger.warning("could not e-mail %s", recipients, exc_info=True)


def post_to_chat(text):
    """POST {"text": ...} to the Slack-compatible webhook. Returns True if it took it."""
    url = settings.TRAINYARD.get("SLACK_WEBHOOK_URL")
    if not url:
        return False
    if not url.startswith(("https://", "http://")):
        logger.warning("TRAINYARD_SLACK_WEBHOOK_URL is not an http(s) URL: not posting")
        return False
    request = urllib.request.Request(url, data=json.dumps({"text": text}).encode(),  # noqa: S310
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=CHAT_TIMEOUT) as response:  # noqa: S310
            return 200 <= response.status < 300
    except OSError:
        logger.warning("could not post to the chat webhook", exc_info=True)
        return False


def ask_authors(train, authors):
    names = ", ".join(user.get_username() for user in authors)
    from pipeline.spec import Spec

    environments = list(Spec.from_dict(train.build.spec).environments)
    passed = (f"passed {', '.join(environments)} and its acceptance tests" if environments
              else "is ready for production")
    notify(authors, train, "approval_requested",
           f"Train #{train.pk} of {train.repository.name} ({train.head_sha[:10]}) {passed} "
           f"and carries your changes: is it good? Answer !good, or !bad <reason> to stop "
           f"it. Asked: {names}.")


def remind(train, pending):
    names = ", ".join(user.get_username() for user in pending)
    notify(pending, train, "reminder",
           f"Reminder: train #{train.pk} of {train.repository.name} still waits for "
           f"{names}: !good or !bad <reason>.")


def train_ended(train):
    """Tell the authors how their train ended (inbox and e-mail; one chat line)."""
    from pipeline.services.trains import train_authors

    authors = train_authors(train) if train.kind == train.Kind.TRAIN else []
    if authors:
        notify(authors, train, f"train_{train.status}",
               f"Train #{train.pk} of {train.repository.name} {train.status}: {train.message}")
    elif settings.TRAINYARD.get("SLACK_WEBHOOK_URL"):
        transaction.on_commit(partial(post_to_chat, f"{train.repository.name} train #{train.pk} "
                                                    f"{train.status}: {train.message}"),
                              robust=True)


def read_inbox(user, limit=100):
    """The user's newest notifications, and which of them were unread: now marked read."""
    from django.utils import timezone

    notes = list(user.notifications.select_related("train__repository")[:limit])
    unread = {note.pk for note in notes if note.read_at is None}
    Notification.objects.filter(pk__in=unread).update(read_at=timezone.now())
    return notes, unread
