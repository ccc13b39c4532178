import pytest
from django.core.exceptions import PermissionDenied

from pipeline import chatops, permissions
from pipeline.models import Build


def test_it_parses_commands_like_a_chat_bot():
    assert chatops.parse("!bb feature/x") == ("bb", ["feature/x"])
    assert chatops.parse("  !BB   'odd name'  ") == ("bb", ["odd name"])


@pytest.mark.parametrize("text", ["bb x", "", "!", "!bb 'unclosed"])
def test_it_explains_what_it_cannot_read(text):
    with pytest.raises(chatops.CommandError):
        chatops.parse(text)


@pytest.mark.django_db
def test_it_checks_permission_before_doing_anything(repository, viewer):
    with pytest.raises(PermissionDenied):
        chatops.execute(repository, "!bb master", user=viewer, via="test")
    assert not Build.objects.exists()


@pytest.mark.django_db
def test_it_builds_for_a_developer(repository, developer):
    outcome = chatops.execute(repository, "!bb master", user=developer, via="test")
    assert outcome.created and outcome.build.requested_via == "test"
    assert "queued build" in outcome.message


@pytest.mark.django_db
def test_it_needs_exactly_one_branch(repository, developer):
    with pytest.raises(chatops.CommandError, match="usage"):
        chatops.execute(repository, "!bb a b", user=developer, via="test")


@pytest.mark.django_db
def test_anonymous_and_inactive_users_may_do_nothing(developer):
    from django.contrib.auth.models import AnonymousUser

    assert not permissions.can(AnonymousUser(), "build")
    developer.is_active = False
    assert not permissions.can(developer, "build")
    with pytest.raises(ValueError):
        permissions.can(developer, "launch-missiles")


@pytest.mark.django_db
def test_every_action_names_a_permission_that_exists():
    from django.contrib.auth.models import Permission

    for action, name in permissions.ACTIONS.items():
        app_label, codename = name.split(".")
        assert Permission.objects.filter(content_type__app_label=app_label,
                                         codename=codename).exists(), action


@pytest.mark.django_db
def test_running_the_pool_needs_its_own_permissions(developer):
    from tests.factories import UserFactory

    for action in ("add_repository", "remove_repository", "view_nodes", "add_node",
                   "change_node", "remove_node"):
        assert not permissions.can(developer, action)
    ops = UserFactory(username="ops", perms=["nodes.change_node"])
    assert permissions.can(ops, "change_node") and not permissions.can(ops, "remove_node")
