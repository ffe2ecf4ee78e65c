"""The engine stays framework-free: nothing under matching/engine imports a framework.

`python -m matching.engine_import_rule` exits non-zero naming each offending import. It reads
the source (static: catches imports in functions too) and then imports the engine in a clean
interpreter and checks that no framework module got loaded (dynamic: catches indirect imports).
"""

import ast
import subprocess
import sys
from pathlib import Path

FORBIDDEN = ("django", "redis", "celery", "channels", "rest_framework", "kombu", "psycopg")
ENGINE_DIR = Path(__file__).resolve().parent / "engine"


def forbidden_imports(root: Path) -> list[str]:
    """Each import of a forbidden package under `root`, as 'path:line: module'."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                if module.split(".")[0] in FORBIDDEN:
                    found.append(f"{path}:{node.lineno}: {module}")
    return found


def modules_loaded_by_engine() -> list[str]:
    """Forbidden top-level modules present after importing matching.engine in a fresh process."""
    probe = (
        "import sys, matching.engine; "
        f"print('\\n'.join(sorted({{m.split('.')[0] for m in sys.modules}} & set({FORBIDDEN!r}))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ENGINE_DIR.parent.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    return [line for line in result.stdout.splitlines() if line]


def main() -> int:
    problems = forbidden_imports(ENGINE_DIR)
    problems += [f"importing matching.engine loads {name}" for name in modules_loaded_by_engine()]
    for problem in problems:
        print(f"engine import rule: {problem}", file=sys.stderr)
    if not problems:
        print("engine import rule: matching/engine imports no framework")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
