"""Template filters for Trainyard's pages: `{% load trainyard %}`."""

from django import template

from pipeline.services.git import redact

register = template.Library()


@register.filter
def without_credentials(url):
    """A clone URL as a page may show it: `https://user:token@host/x` -> `https://***@host/x`."""
    return redact(str(url or ""))
