from django.core.management.base import BaseCommand

from pipeline.services import standalone


class Command(BaseCommand):
    help = "Create the demo repository under var/ and register it as 'demo'."

    def handle(self, *args, **options):
        repository = standalone.seed_demo()
        self.stdout.write(f"demo repository ready: {repository.clone_url}")
