import asyncio
import logging

from django.core.management.base import BaseCommand

from reco_plugin.push import relay_updates


class Command(BaseCommand):
    help = "Relay the pipeline's list updates to the visitors' websockets (runs until stopped)."

    def handle(self, *args, **options):
        # A project whose LOGGING says nothing of the plugin (Django's default)
        # still sees where the relay listens and pushes, and when Redis is away.
        plugin = logging.getLogger("reco_plugin")
        handler, level = None, plugin.level
        if not plugin.hasHandlers():
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            plugin.addHandler(handler)
            if plugin.getEffectiveLevel() > logging.INFO:
                plugin.setLevel(logging.INFO)
        try:
            asyncio.run(relay_updates())
        except KeyboardInterrupt:
            pass
        finally:
            if handler is not None:
                plugin.removeHandler(handler)
                plugin.setLevel(level)
