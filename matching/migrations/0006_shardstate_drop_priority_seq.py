# Engine state version 2: priority seqs and book update seqs are event seqs (no counters of
# their own). The shard counter goes; what older workers numbered is renumbered (see
# matching.seq_renumber).

from django.db import migrations, models


def seqs_renumber(apps, schema_editor) -> None:
    # The project's replay, not historical models: the numbers are what today's engine gives.
    from matching.seq_renumber import journaled_shards, shard_seqs_renumber

    for shard in journaled_shards():
        shard_seqs_renumber(shard)


def priority_counter_restore(apps, schema_editor) -> None:
    """Going back: an older worker numbers new orders from the shard's counter, which must be
    above every priority seq given (event seqs, all at most the event counter), or its new
    orders would queue ahead of older ones after a restart."""
    apps.get_model("matching", "ShardState").objects.update(priority_seq=models.F("event_seq"))


class Migration(migrations.Migration):
    dependencies = [
        ("matching", "0005_command_reject_message"),
        ("exchange", "0004_order_filled_value"),  # exchange_order as the journal knows it
    ]

    operations = [
        # Reversed last: the column is back by then.
        migrations.RunPython(migrations.RunPython.noop, priority_counter_restore),
        migrations.RemoveField(
            model_name="shardstate",
            name="priority_seq",
        ),
        migrations.RunPython(seqs_renumber, migrations.RunPython.noop),
    ]
