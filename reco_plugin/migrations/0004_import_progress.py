from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("reco_plugin", "0003_weight_ceiling"),
    ]

    operations = [
        migrations.CreateModel(
            name="ImportProgress",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("source", models.CharField(editable=False, max_length=200, unique=True)),
                ("until", models.DateTimeField(editable=False)),
                ("position", models.JSONField(default=dict, editable=False)),
                ("events_sent", models.PositiveBigIntegerField(default=0, editable=False)),
                ("counts", models.JSONField(default=dict, editable=False)),
                ("finished", models.BooleanField(default=False, editable=False)),
                ("started_at", models.DateTimeField(auto_now_add=True)),
                ("updated_at", models.DateTimeField(auto_now=True)),
            ],
            options={
                "verbose_name": "history import",
                "verbose_name_plural": "history imports",
            },
        ),
    ]
