from typing import Any

from django.apps import AppConfig


class RecoPluginConfig(AppConfig):
    name = "reco_plugin"
    verbose_name = "Recommendations"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in, user_logged_out
        from django.db.models.signals import post_delete, post_init, post_save

        from . import checks, keys, tracking  # noqa: F401  (checks registers the system checks)
        from .conf import reco_settings
        from .receivers import product_changed

        keys.use_prefix(reco_settings.KEY_PREFIX)

        from .models import Rule
        from .tuning import rules_changed

        post_save.connect(rules_changed, sender=Rule, dispatch_uid="reco_plugin.rules_saved")
        post_delete.connect(rules_changed, sender=Rule, dispatch_uid="reco_plugin.rules_deleted")

        user_logged_in.connect(tracking.user_logged_in, dispatch_uid="reco_plugin.identify")
        user_logged_out.connect(tracking.user_logged_out, dispatch_uid="reco_plugin.logout")
        product = self._model(reco_settings.PRODUCT_MODEL)
        if product is not None:
            post_save.connect(
                product_changed, sender=product, dispatch_uid="reco_plugin.product_saved"
            )
            post_delete.connect(
                product_changed, sender=product, dispatch_uid="reco_plugin.product_deleted"
            )
        cart = self._model((reco_settings.CART_MODEL or {}).get("MODEL"))
        if cart is not None:
            post_init.connect(tracking.cart_loaded, sender=cart, dispatch_uid="reco_plugin.cart")
            post_save.connect(tracking.cart_saved, sender=cart, dispatch_uid="reco_plugin.cart")
            post_delete.connect(tracking.cart_deleted, sender=cart, dispatch_uid="reco_plugin.cart")
        line = self._model((reco_settings.ORDER_LINE_MODEL or {}).get("MODEL"))
        if line is not None:
            post_save.connect(
                tracking.order_line_saved, sender=line, dispatch_uid="reco_plugin.order_line"
            )

    def _model(self, label: Any) -> Any:
        """The model named ``"app_label.Model"``; None when unset or unknown
        (reported by the system checks)."""
        if not label:
            return None
        try:
            return self.apps.get_model(label)
        except (LookupError, ValueError, TypeError, AttributeError):
            return None
