"""A bad value of one spec key, named the way the user gave it.

The config layer knows spec keys (`training.duration_kimg`); the user may have typed a flag (`--kimg`). A
SpecKeyError carries the key and where its value came from, so the CLI can name the flag instead
(simcli.cli.distill maps keys to flags)."""

from __future__ import annotations

from simcli.errors import UsageError

SOURCES = {"file": "the --config file", "flag": "a flag", "--set": "--set", "run": "the run directory's config.json"}
"""Provenances (simcli.config.resolve.merge_layers) in words; presets and method defaults read as themselves."""


class SpecKeyError(UsageError):
    """`spec key '<key>'<rest>`: `rest` follows the key's name (': must be ...', ' (value) needs ...'); `source`: the
    provenance of the bad value when known (the CLI looks it up otherwise). Without a hint of its own, the hint says
    where the value came from."""

    def __init__(self, key: str, rest: str, hint: str | None = None, source: str | None = None):
        super().__init__(f"spec key '{key}'{rest}", hint if hint is not None else source_hint(source))
        self.key, self.rest, self.source, self.own_hint = key, rest, source, hint is not None

    def named(self, flag: str) -> UsageError:
        """The same error naming the flag the user typed instead of the key."""
        return UsageError(f"{flag}{self.rest}", self.hint if self.own_hint else f"see 'simcli distill --help' for {flag}")


def source_hint(source: str | None) -> str:
    """Where a bad value came from, as a hint."""
    where = SOURCES.get(source or "", (source or "").replace("preset:", "preset ").replace("method:", "the defaults of method "))
    listing = "'simcli distill --dry-run' lists every key and where its value comes from"
    return f"the value comes from {where}; {listing}" if where else listing
