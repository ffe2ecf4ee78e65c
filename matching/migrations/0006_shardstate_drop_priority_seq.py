# Engine state version 2: priority seqs and book update seqs are event seqs (no counters of
# their own). The shard counter goes; what older workers numbered is renumbered (see
# matching.seq_renumber).

from django.db import migrations


def seqs_renumber(apps, schema_editor) -> None:
    # The project's replay, not historical models: the numbers are what today's engine gives.
    from matching.seq_renumber import journaled_shards, shard_seqs_renumber

    for shard in journaled_shards():
        shard_seqs_renumber(shard)


class Migration(migrations.Migration):
    dependencies = [
        ("matching", "0005_command_reject_message"),
        ("exchange", "0004_order_filled_value"),  # exchange_order as the journal knows it
    ]

    operations = [
        migrations.RemoveField(
            model_name="shardstate",
            name="priority_seq",
        ),
        migrations.RunPython(seqs_renumber, migrations.RunPython.noop),
    ]
