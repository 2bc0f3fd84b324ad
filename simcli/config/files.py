"""Reading spec files (`--config`, YAML, TOML or JSON) and `--set` values, with their size, nesting and alias
expansion bounded, so a small hostile file cannot take gigabytes or blow the stack.

A whole spec is about 120 keys nested at most 4 deep (`generator.optimizer.lr`), in well under 10 KB; the bounds
leave room for comments and formatting and refuse what no spec needs:

- a file larger than MAX_FILE_BYTES is refused before it is read;
- a document nesting deeper than MAX_DEPTH levels, or holding more than MAX_NODES values (keys count too), is
  refused. YAML aliases count as the values they stand for: a spec may share settings through an anchor
  (`online: {optimizer: *adam}`), but the "billion laughs" shape (each alias standing for nine of the previous one)
  is refused after composing the document's few hundred nodes, before anything is expanded or constructed; an
  alias used inside its own anchor is refused too. Aliases are not refused outright because sharing settings
  through them is a fair use of YAML; the bound on the expanded count is what keeps them harmless.
- keys must be strings (a YAML key like `1:` or `true:` names no spec key).
"""

from __future__ import annotations

import json
import reprlib
from pathlib import Path
from typing import Any

import tomllib
import yaml

from simcli.errors import UsageError

MAX_FILE_BYTES = 1 << 18
"""Largest spec file read (256 KiB; a whole spec is under 10 KB, and PyYAML reads about 300 KB a second)."""
MAX_DEPTH = 32
"""Deepest nesting of mappings and lists in a spec file or --set value (a spec nests 4 deep)."""
MAX_NODES = 10_000
"""Most values (keys, scalars, mappings and lists, with YAML aliases expanded) in a spec file or --set value; a whole
spec has about 300."""


class TooComplex(ValueError):
    """A document beyond the bounds above; the message says which."""


class NotAName(ValueError):
    """A mapping key that is not a string."""


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict = 2, 60, 60, 4, 4


def shown(value: Any, limit: int = 80) -> str:
    """A bounded repr for messages: never the whole of a huge or deeply nested value."""
    try:
        text = _SHORT.repr(value)
    except ValueError:  # an integer too long for str() (sys.get_int_max_str_digits)
        text = f"<a {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class BoundedSafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses (TooComplex) nesting deeper than MAX_DEPTH and more than MAX_NODES nodes while it
    composes; `load_yaml` then bounds the aliases' expansion before constructing anything."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):  # a reference to a node composed before: no new node, no new level
            return super().compose_node(parent, index)
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise TooComplex(f"holds more than {MAX_NODES:,} values")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise TooComplex(f"nests deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _expanded(node: yaml.Node, depth: int, memo: dict[int, tuple[int, int]], path: set[int]) -> tuple[int, int]:
    """(values, height) of a composed node with every alias expanded, computed once per node (so a bomb costs as
    much as its composed size); TooComplex beyond the bounds or for an alias inside its own anchor."""
    if depth > MAX_DEPTH:
        raise TooComplex(f"nests deeper than {MAX_DEPTH} levels once its aliases are expanded")
    key = id(node)
    if key in path:
        raise TooComplex("uses an alias inside its own anchor (a recursive alias)")
    if key not in memo:
        if isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else []
        path.add(key)
        size, height = 1, 0
        for child in children:
            child_size, child_height = _expanded(child, depth + 1, memo, path)
            size, height = size + child_size, max(height, child_height + 1)
            if size > MAX_NODES:
                raise TooComplex(f"holds more than {MAX_NODES:,} values once its aliases are expanded")
        path.discard(key)
        memo[key] = size, height
    size, height = memo[key]
    if depth + height > MAX_DEPTH:
        raise TooComplex(f"nests deeper than {MAX_DEPTH} levels once its aliases are expanded")
    return size, height


def load_yaml(text: str) -> Any:
    """One YAML document, safely (yaml.SafeLoader's types only), within the bounds; TooComplex beyond them,
    yaml.YAMLError or ValueError (an integer of thousands of digits) when it is malformed."""
    loader = BoundedSafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded(node, 0, {}, set())
        return loader.construct_document(node)
    finally:
        loader.dispose()


def check_shape(data: Any) -> None:
    """TooComplex when parsed data nests deeper than MAX_DEPTH or holds more than MAX_NODES values, NotAName for a key
    that is not a string. Iterative, and stops at the bounds, so it is cheap whatever the data."""
    stack, count = [(data, 0, "")], 0
    while stack:
        value, depth, where = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise TooComplex(f"holds more than {MAX_NODES:,} values")
        if depth > MAX_DEPTH:
            raise TooComplex(f"nests deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise NotAName(f"the key {shown(key)}{' under ' + where if where else ''} is not a name")
                stack.append((item, depth + 1, f"{where}.{key}" if where else key))
        elif isinstance(value, list):
            stack.extend((item, depth + 1, where) for item in value)


def _parse(path: Path, text: str) -> Any:
    if path.suffix in {".yaml", ".yml"}:
        return load_yaml(text)
    try:
        return tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except RecursionError:  # the parsers recurse per level: nesting past the interpreter's limit ends here
        raise TooComplex(f"nests deeper than {MAX_DEPTH} levels") from None


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML, TOML or JSON spec file into a dict, within the bounds above (one-line UsageError otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file not found: {path}")
    if path.suffix not in {".yaml", ".yml", ".toml", ".json"}:
        raise UsageError(f"config file {path} must end in .yaml, .yml, .toml or .json")
    too_large = UsageError(f"config file {path} is larger than {MAX_FILE_BYTES // 1024} KB",
                           hint="a whole spec is under 10 KB; is this the right file?")
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise too_large
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            raise too_large
        text = raw.decode()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"config file {path} could not be read: {exc}") from None
    try:
        data = _parse(path, text)
        check_shape(data)
    except TooComplex as exc:
        raise UsageError(f"config file {path} {exc}",
                         hint=f"a spec nests {MAX_DEPTH} levels at most and holds at most {MAX_NODES:,} values") from None
    except NotAName as exc:
        raise UsageError(f"config file {path}: {exc}", hint="spec keys are names, such as training.batch_size") from None
    except (yaml.YAMLError, tomllib.TOMLDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"config file {path} could not be parsed: {first[:200]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must hold a mapping of spec keys")
    return data
