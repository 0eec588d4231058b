from django.apps import AppConfig


class RecoPluginConfig(AppConfig):
    name = "reco_plugin"
    verbose_name = "Recommendations"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        from . import checks  # noqa: F401  (registers the system checks)
        from .conf import reco_settings
        from .receivers import product_changed

        if reco_settings.PRODUCT_MODEL:
            try:
                model = self.apps.get_model(reco_settings.PRODUCT_MODEL)
            except (LookupError, ValueError):
                return  # reported by check reco_plugin.E002
            post_save.connect(
                product_changed, sender=model, dispatch_uid="reco_plugin.product_saved"
            )
            post_delete.connect(
                product_changed, sender=model, dispatch_uid="reco_plugin.product_deleted"
            )
