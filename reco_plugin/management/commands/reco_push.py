import asyncio

from django.core.management.base import BaseCommand

from reco_plugin.push import relay_updates


class Command(BaseCommand):
    help = "Relay the pipeline's list updates to the visitors' websockets (runs until stopped)."

    def handle(self, *args, **options):
        try:
            asyncio.run(relay_updates())
        except KeyboardInterrupt:
            pass
