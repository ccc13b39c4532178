import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

from pipeline.models import Build, Commit, Job, Repository


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    password = factory.django.Password("pw-for-tests-1")

    @factory.post_generation
    def perms(self, create, extracted, **kwargs):
        for codename in extracted or ():
            app_label, name = codename.split(".")
            self.user_permissions.add(
                Permission.objects.get(content_type__app_label=app_label, codename=name))


class RepositoryFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Repository

    name = factory.Sequence(lambda n: f"repo{n}")
    clone_url = "/nonexistent"


class CommitFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Commit

    repository = factory.SubFactory(RepositoryFactory)
    sha = factory.Sequence(lambda n: f"{n:040x}")
    author_name = "Ari Author"
    author_email = "ari@example.com"
    message = "A change"


class BuildFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Build

    commit = factory.SubFactory(CommitFactory)
    repository = factory.SelfAttribute("commit.repository")
    sha = factory.SelfAttribute("commit.sha")
    branch = "feature/x"


class JobFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Job

    build = factory.SubFactory(BuildFactory)
    name = factory.Sequence(lambda n: f"check{n}")
    command = ["python", "-c", "print(1)"]
    timeout = 60
