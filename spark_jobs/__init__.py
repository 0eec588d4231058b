"""Spark jobs of reco-plugin. Never import Django here: what the jobs share with
the Django app (event schema, Redis keys, scoring) lives in the Django-free
modules ``reco_plugin.schema``, ``reco_plugin.keys`` and ``reco_plugin.scoring``.
"""
