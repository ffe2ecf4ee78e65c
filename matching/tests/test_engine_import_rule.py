"""matching/engine imports no framework; the rule catches one that does."""

from matching.engine_import_rule import (
    ENGINE_DIR,
    forbidden_imports,
    main,
    modules_loaded_by_engine,
)


def test_engine_source_imports_no_framework():
    assert forbidden_imports(ENGINE_DIR) == []


def test_importing_the_engine_loads_no_framework():
    assert modules_loaded_by_engine() == []


def test_rule_names_each_forbidden_import(tmp_path):
    (tmp_path / "ok.py").write_text("import heapq\nfrom . import book\n")
    (tmp_path / "bad.py").write_text(
        "import os\nimport django.db\n\ndef late():\n    from redis import Redis\n"
    )
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deep.py").write_text("from celery import shared_task\n")
    found = forbidden_imports(tmp_path)
    assert found == [
        f"{tmp_path / 'bad.py'}:2: django.db",
        f"{tmp_path / 'bad.py'}:5: redis",
        f"{tmp_path / 'sub' / 'deep.py'}:1: celery",
    ]


def test_rule_command_passes_on_the_engine(capsys):
    assert main() == 0
    assert "imports no framework" in capsys.readouterr().out
