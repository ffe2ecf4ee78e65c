"""The version of balance events: drawn after a transaction has locked the cash and hold
accounts whose balances it reports, so that for one user's asset the versions grow in commit
order (accounts.balance_events)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0006_posting_keys_unconstrained"),
    ]

    operations = [
        migrations.RunSQL(
            "CREATE SEQUENCE accounts_balance_version AS bigint",
            reverse_sql="DROP SEQUENCE accounts_balance_version",
        ),
    ]
