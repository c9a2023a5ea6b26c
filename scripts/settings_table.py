"""Write README.md's configuration tables from the settings each process declares (`SETTINGS` in its config).

    python scripts/settings_table.py            # rewrite the tables between <!-- settings:NAME --> markers
    python scripts/settings_table.py --check    # exit 1 when README.md and the code disagree

It imports both processes' configurations, which nothing inside `common/`, `generator/` or `monitor/` may do (the
import contract keeps the two processes apart), so it lives here.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.settings import markdown_table  # noqa: E402  (after the path)

README = ROOT / "README.md"
_BLOCK = re.compile(r"(<!-- settings:(?P<name>\w+) -->\n).*?(<!-- /settings -->)", re.S)


def tables() -> dict[str, str]:
    """Return each process's settings table by name, from the processes' own declarations."""
    from generator.config import SETTINGS as GENERATOR
    from monitor.config import SETTINGS as MONITOR

    return {"generator": markdown_table(GENERATOR), "monitor": markdown_table(MONITOR)}


def render_readme(text: str, generated: Mapping[str, str]) -> str:
    """Replace every `<!-- settings:NAME -->` ... `<!-- /settings -->` block of `text` with its table."""
    return _BLOCK.sub(lambda m: m.group(1) + generated[m.group("name")] + m.group(3), text)


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite README.md's settings tables, or with --check say whether they are current (exit 1 if not)."""
    parser = argparse.ArgumentParser(description="Write the settings tables into README.md from the code.")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when the README is stale")
    args = parser.parse_args(argv)
    text = README.read_text()
    fresh = render_readme(text, tables())
    if args.check:
        if fresh != text:
            print("README.md's settings tables are stale: run python scripts/settings_table.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
