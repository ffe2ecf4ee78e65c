"""Leave free space in each order page so the worker's status/fill updates can stay HOT."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("matching", "0001_initial"),
        ("exchange", "0002_order_engine_max_quote"),
    ]

    operations = [
        migrations.RunSQL(
            "ALTER TABLE exchange_order SET (fillfactor = 80)",
            "ALTER TABLE exchange_order RESET (fillfactor)",
        ),
    ]
