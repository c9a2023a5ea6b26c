"""Declare a process's settings once: their environment variables, flags, defaults and help, and the README table.

One naming scheme for environment variables: a setting of one process is `GENERATOR_<NAME>` or
`MONITOR_<NAME>`; a setting both processes share is `I2V_<NAME>` (host name, tokens). `LOG_LEVEL` and
`LOG_FORMAT` keep the names every log shipper and container platform already uses. A variable renamed to fit
the scheme is still read under its old name for one release, with a warning that names the new one.

    SETTINGS = (Setting("port", "--port", ("GENERATOR_PORT",), "7860", "port to listen on"), ...)
    raw = env_value(SETTINGS_BY_FIELD["port"], os.environ)      # new name first, then old ones (warned)

`python scripts/settings_table.py` rewrites README.md's tables from the declarations (`--check` only compares);
tests/ops/test_settings.py fails when the README and the code disagree.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)


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
