"""Declare a process's settings once: their environment variables, flags, defaults and help, and the README table.

One naming scheme for environment variables: a setting of one process is `GENERATOR_<NAME>` or
`MONITOR_<NAME>`; a setting both processes share is `I2V_<NAME>` (host name, tokens). `LOG_LEVEL` and
`LOG_FORMAT` keep the names every log shipper and container platform already uses. A variable renamed to fit
the scheme is still read under its old name for one release, with a warning that names the new one.

    SETTINGS = (Setting("port", "--port", ("GENERATOR_PORT",), "7860", "port to listen on"), ...)
    raw = env_value(SETTINGS_BY_FIELD["port"], os.environ)      # new name first, then old ones (warned)

`python -m common.settings` rewrites README.md's tables from the declarations (`--check` only compares);
tests/ops/test_settings.py fails when the README and the code disagree.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"(<!-- settings:(?P<name>\w+) -->\n).*?(<!-- /settings -->)", re.S)


@dataclass(frozen=True)
class Setting:
    """One setting: the config field it fills, its flag, its environment variables, default and help.

    `env` lists the names read, first found wins (a process-specific name before a shared one); `old_env` the
    names that still work for one release, with a warning. `secret` settings have no flag (flags show in `ps`).
    """

    field: str
    flag: str | None
    env: tuple[str, ...]
    default: str
    help: str
    old_env: tuple[str, ...] = ()
    secret: bool = False


def env_value(setting: Setting, environ: Mapping[str, str], *, empty_counts: bool = False) -> str | None:
    """Return the setting's value from the environment: its names in order, then its old names (warned).

    An empty value counts as unset unless `empty_counts` (a setting where "" means "none").
    """
    for name in setting.env:
        value = environ.get(name)
        if value is not None and (value or empty_counts):
            return value
    for name in setting.old_env:
        value = environ.get(name)
        if value is not None and (value or empty_counts):
            log.warning(
                "%s is deprecated: set %s instead (the old name is read for one more release)", name, setting.env[0]
            )
            return value
    return None


def markdown_table(settings: Sequence[Setting]) -> str:
    """Return the settings as a Markdown table: variable, flag, default, what it does, old names."""
    rows = [
        "| environment | flag | default | what it sets | old name (read until the next release) |",
        "|---|---|---|---|---|",
    ]
    for s in settings:
        env = " or ".join(f"`{name}`" for name in s.env)
        flag = f"`{s.flag}`" if s.flag else "-"
        old = ", ".join(f"`{name}`" for name in s.old_env) or "-"
        rows.append(f"| {env} | {flag} | {s.default} | {s.help} | {old} |")
    return "\n".join(rows) + "\n"


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
            print("README.md's settings tables are stale: run python -m common.settings", file=sys.stderr)
            return 1
        return 0
    README.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
