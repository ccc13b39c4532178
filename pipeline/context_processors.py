"""What every page's top bar shows."""

from django.utils.functional import SimpleLazyObject


def inbox(request):
    """The logged-in user's unread notifications, counted only if a page shows it."""
    user = getattr(request, "user", None)
    if not (user and user.is_authenticated):
        return {}
    return {"unread_notifications": SimpleLazyObject(
        lambda: user.notifications.filter(read_at=None).count())}
