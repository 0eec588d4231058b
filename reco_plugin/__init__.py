"""Real-time personalized product recommendations for Django shops.

The package root imports nothing from Django, so the Django-free modules
(:mod:`reco_plugin.schema`, :mod:`reco_plugin.keys`, :mod:`reco_plugin.scoring`)
can be imported by the Spark jobs.
"""

__version__ = "0.1.0.dev0"
