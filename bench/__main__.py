"""`python -m bench <name> [--smoke] [args]`: run one benchmark; `--list` names them all.

A benchmark is a module `bench/<name>.py` with `main(argv: list[str]) -> int`. CI runs every
listed benchmark with `--smoke`.
"""

import importlib
import pkgutil
import sys
from pathlib import Path

NOT_BENCHMARKS = {"baseline_book", "tests"}


def benchmark_names() -> list[str]:
    here = Path(__file__).resolve().parent
    return sorted(
        info.name
        for info in pkgutil.iter_modules([str(here)])
        if not info.name.startswith("_") and info.name not in NOT_BENCHMARKS
    )


def main(argv: list[str]) -> int:
    names = benchmark_names()
    if argv == ["--list"]:
        print("\n".join(names))
        return 0
    if not argv or argv[0] not in names:
        print(f"usage: python -m bench <{'|'.join(names)}> [--smoke] [args] | --list")
        return 2
    module = importlib.import_module(f"bench.{argv[0]}")
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
