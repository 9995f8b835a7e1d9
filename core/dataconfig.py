"""Configuration as data: a config is one frozen dataclass, read by argparse, YAML/JSON and code.

Each field is declared once with `setting(...)`: its default, its help text and its checks
(choices, bounds). Everything else is generated from the dataclass:

- `add_arguments(parser, cls)`: the argparse options, `--field-name` unless the field names
  another flag; booleans are `--x/--no-x`; an option left out takes the dataclass default
  (the parser sets nothing for it), so defaults live in one place.
- `from_mapping(cls, mapping)`: the config from a YAML/JSON dict (or parsed options); a key
  that is no field, a missing required field, a value of the wrong type are refused with
  one line (`ConfigError`). A string is read for a number field as the command line reads
  it, since YAML 1.1 (PyYAML) reads `1e-4` as a string.
- `check(instance)`: what `__post_init__` calls: types, finite numbers, bounds, choices; so
  a config built in Python is checked like one from the command line.
- `to_mapping(instance)`: the flat dict `from_mapping` reads back (config.json).
- `describe(cls)`: one row per setting (name, flag, type, default, help) for the docs.

A field whose type is a dataclass and that is declared with `nested(...)` is flattened:
its settings appear at the parent's level on the command line and in mappings, so a
config can hold the settings of a lower layer (TrainConfig holds the sampler's) without
restating them.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import types
import typing
from typing import Any, Callable, Iterator

from musicrep.errors import ConfigError

_KEY = "musicrep"  # the dataclasses.Field metadata key of a setting


@dataclasses.dataclass(frozen=True)
class Setting:
    """What one field says about itself besides its type and default."""

    help: str
    flag: str | None = None  # the option's name; default --field-name
    choices: tuple | None = None
    minimum: float | None = None  # value >= minimum
    above: float | None = None  # value > above
    maximum: float | None = None  # value <= maximum
    parse: Callable[[str], Any] | None = None  # reads the option's text (default: the type)
    metavar: str | None = None
    positional: bool = False
    cli: bool = True  # False: not an option (set in code or files only)
    required_on_cli: bool | None = None  # None: required when the field has no default
    nested: bool = False
    optional_value: bool = False  # `--x` alone gives True, `--x VALUE` gives VALUE


def setting(default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING,
            **options: Any) -> Any:
    """A config field: `x: int = setting(3, help="...", minimum=1)` (options: see `Setting`)."""
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={_KEY: Setting(help=help, **options)})


def nested(cls: type, *, default_factory: Callable[[], Any] | None = None, required: bool = False) -> Any:
    """A field holding another config dataclass, flattened into its parent's settings
    (`required`: no default, for a config with required settings of its own)."""
    metadata = {_KEY: Setting(help="", nested=True)}
    if required:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default_factory=default_factory or cls, metadata=metadata)


def _setting(field: dataclasses.Field) -> Setting | None:
    return field.metadata.get(_KEY)


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@dataclasses.dataclass(frozen=True)
class _Leaf:
    """One flattened setting: its field, its type and the path of nested fields to it."""

    name: str
    field: dataclasses.Field
    hint: Any
    path: tuple[str, ...]  # nested field names from the top config down to its owner

    @property
    def setting(self) -> Setting:
        return _setting(self.field)

    @property
    def flag(self) -> str:
        return self.setting.flag or "--" + self.name.replace("_", "-")

    def default(self, top: type) -> Any:
        """The default as the top config sees it (a nested config's default instance may
        override the lower layer's own default)."""
        owner: Any = top
        for name in self.path:
            hints = _hints(owner if isinstance(owner, type) else type(owner))
            field = next(f for f in dataclasses.fields(owner) if f.name == name)
            value = getattr(owner, name) if not isinstance(owner, type) else _field_default(field)
            owner = hints[name] if value is dataclasses.MISSING else value
        if isinstance(owner, type):  # a required nested config: its own defaults
            return _field_default(self.field)
        return getattr(owner, self.name)


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def leaves(cls: type, _path: tuple[str, ...] = ()) -> Iterator[_Leaf]:
    """Every setting of `cls`, nested configs flattened, in declaration order."""
    hints = _hints(cls)
    for field in dataclasses.fields(cls):
        meta = _setting(field)
        if meta is None:
            continue
        if meta.nested:
            yield from leaves(hints[field.name], _path + (field.name,))
        else:
            yield _Leaf(field.name, field, hints[field.name], _path)


def _members(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _type_name(hint: Any) -> str:
    names = []
    for member in _members(hint):
        if member is type(None):
            names.append("null")
        elif typing.get_origin(member) is tuple:
            names.append(f"list of {typing.get_args(member)[0].__name__}")
        else:
            names.append(member.__name__)
    return " or ".join(names)


def _coerce_one(member: Any, value: Any) -> tuple[bool, Any]:
    """(accepted, value as `member`)."""
    if member is type(None):
        return value is None, None
    if member is bool:
        return isinstance(value, bool), value
    if member in (int, float):
        if isinstance(value, bool):
            return False, None
        if isinstance(value, int) or (member is float and isinstance(value, float)):
            return True, member(value)
        return False, None
    if member is str:
        return isinstance(value, str), value
    if typing.get_origin(member) is tuple:
        item = typing.get_args(member)[0]
        items = [value] if isinstance(value, str) and item is str else value
        if not isinstance(items, (list, tuple)):
            return False, None
        out = []
        for element in items:
            ok, coerced = _coerce_one(item, element)
            if not ok:
                return False, None
            out.append(coerced)
        return True, tuple(out)
    if dataclasses.is_dataclass(member):
        return isinstance(value, member), value
    raise TypeError(f"config fields of type {member!r} are not supported")


def coerce(leaf: _Leaf, value: Any) -> Any:
    """`value` as the field's type, or ConfigError naming the field and what it got."""
    members = _members(leaf.hint)
    for member in members:
        ok, coerced = _coerce_one(member, value)
        if ok:
            return coerced
    if isinstance(value, str) and str not in members:
        # Text for a number (YAML 1.1 reads 1e-4 as text): read it as the command line does.
        try:
            return _parse_text(leaf, value)
        except (argparse.ArgumentTypeError, ValueError):
            pass
    raise ConfigError(f"{leaf.name} must be {_type_name(leaf.hint)}, got {value!r}")


def _parse_text(leaf: _Leaf, text: str) -> Any:
    if leaf.setting.parse is not None:
        return leaf.setting.parse(text)
    for member in _members(leaf.hint):
        if member in (int, float):
            return member(text)
    raise ValueError(text)


def _check_value(leaf: _Leaf, value: Any) -> None:
    meta = leaf.setting
    if value is None or isinstance(value, bool):
        return
    values = value if isinstance(value, tuple) else (value,)
    for item in values:
        if meta.choices is not None and item not in meta.choices:
            raise ConfigError(f"{leaf.name} must be one of {list(meta.choices)}, got {item!r}")
        if not isinstance(item, (int, float)):
            continue
        if isinstance(item, float) and not math.isfinite(item):
            raise ConfigError(f"{leaf.name} must be a finite number, got {item!r}")
        if meta.minimum is not None and item < meta.minimum:
            raise ConfigError(f"{leaf.name} must be ≥ {meta.minimum:g}, got {item!r}")
        if meta.above is not None and item <= meta.above:
            raise ConfigError(f"{leaf.name} must be > {meta.above:g}, got {item!r}")
        if meta.maximum is not None and item > meta.maximum:
            raise ConfigError(f"{leaf.name} must be ≤ {meta.maximum:g}, got {item!r}")


def check(instance: Any) -> None:
    """Types, finite numbers, bounds and choices of `instance`'s own settings (call it from
    `__post_init__`; a nested config checks itself); normalises lists to tuples."""
    hints = _hints(type(instance))
    for field in dataclasses.fields(instance):
        meta = _setting(field)
        if meta is None or meta.nested:
            continue
        leaf = _Leaf(field.name, field, hints[field.name], ())
        value = coerce(leaf, getattr(instance, field.name))
        _check_value(leaf, value)
        object.__setattr__(instance, field.name, value)


def _build(cls: type, values: dict[tuple[str, ...], Any], path: tuple[str, ...], base: Any = None) -> Any:
    """`cls` (or `base` with changes) from values keyed by their path of field names."""
    kwargs = {}
    for field in dataclasses.fields(cls):
        meta = _setting(field)
        prefix = path + (field.name,)
        if meta is not None and meta.nested:
            if any(key[: len(prefix)] == prefix for key in values):
                start = getattr(base, field.name) if base is not None else _field_default(field)
                kwargs[field.name] = _build(_hints(cls)[field.name], values, prefix,
                                            base=None if start is dataclasses.MISSING else start)
        elif prefix in values:
            kwargs[field.name] = values[prefix]
    return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)


def from_mapping(cls: type, mapping: dict[str, Any], *, where: str = "config") -> Any:
    """`cls` from a flat dict of its settings (nested settings at the top level)."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where} must be a mapping of settings, got {mapping!r}")
    by_name = {leaf.name: leaf for leaf in leaves(cls)}
    unknown = sorted(str(key) for key in mapping if key not in by_name)
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {unknown}; known: {sorted(by_name)}")
    missing = [leaf for leaf in by_name.values()
               if leaf.name not in mapping and leaf.default(cls) is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: missing required setting(s) "
                          + ", ".join(f"{leaf.name} ({leaf.flag})" for leaf in missing))
    values = {by_name[key].path + (key,): coerce(by_name[key], value) for key, value in mapping.items()}
    return _build(cls, values, ())


def check_settings(cls: type, mapping: dict[str, Any], *, where: str = "config",
                   exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """Some of `cls`'s settings, checked (unknown keys, types, bounds, choices; cross-field
    checks wait for the whole config); returns them coerced. `exclude`: settings that may
    not be given here."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where} must be a mapping of settings, got {mapping!r}")
    by_name = {leaf.name: leaf for leaf in leaves(cls) if leaf.name not in exclude}
    refused = sorted(str(key) for key in mapping if key in exclude)
    if refused:
        raise ConfigError(f"{where} may not set {refused}")
    unknown = sorted(str(key) for key in mapping if key not in by_name)
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {unknown}; known: {sorted(by_name)}")
    out = {}
    for key, value in mapping.items():
        out[key] = coerce(by_name[key], value)
        _check_value(by_name[key], out[key])
    return out


def to_mapping(instance: Any) -> dict[str, Any]:
    """The flat dict of every setting (tuples as lists), as `from_mapping` reads it."""
    out = {}
    for leaf in leaves(type(instance)):
        value = instance
        for name in leaf.path + (leaf.name,):
            value = getattr(value, name)
        out[leaf.name] = list(value) if isinstance(value, tuple) else value
    return out


def given(instance: Any) -> dict[str, Any]:
    """The settings of `instance` that differ from their defaults (required ones always),
    flat as `to_mapping`."""
    values = to_mapping(instance)
    out = {}
    for leaf in leaves(type(instance)):
        default = leaf.default(type(instance))
        default = list(default) if isinstance(default, tuple) else default
        if default is dataclasses.MISSING or values[leaf.name] != default:
            out[leaf.name] = values[leaf.name]
    return out


def add_arguments(parser: argparse.ArgumentParser, cls: type, *, exclude: tuple[str, ...] = ()) -> None:
    """One option per setting of `cls` (see the module docstring)."""
    for leaf in leaves(cls):
        meta = leaf.setting
        if not meta.cli or leaf.name in exclude:
            continue
        default = leaf.default(cls)
        help_text = meta.help
        if default is not dataclasses.MISSING and default is not None and not meta.positional:
            help_text += f" (default: {_shown(default)})"
        if meta.positional:
            parser.add_argument(leaf.name, choices=meta.choices, help=help_text)
            continue
        required = default is dataclasses.MISSING if meta.required_on_cli is None else meta.required_on_cli
        options: dict[str, Any] = {"dest": leaf.name, "default": argparse.SUPPRESS, "help": help_text,
                                   "metavar": meta.metavar or (None if meta.choices else
                                                               leaf.flag.lstrip("-").upper().replace("-", "_"))}
        members = _members(leaf.hint)
        if bool in members and meta.optional_value:
            options.update(nargs="?", const=True)
        elif members[0] is bool:
            options.update(action=argparse.BooleanOptionalAction, metavar=None)
        elif any(typing.get_origin(m) is tuple for m in members) and meta.parse is None:
            # A list without a parser of its own is a repeatable option.
            item = typing.get_args(next(m for m in members if typing.get_origin(m) is tuple))[0]
            options.update(action="append", type=item)
        else:
            options.update(type=functools.partial(_cli_value, leaf), choices=meta.choices, required=required)
        parser.add_argument(leaf.flag, **options)


def _cli_value(leaf: _Leaf, text: str) -> Any:
    try:
        return text if str in _members(leaf.hint) else _parse_text(leaf, text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {_type_name(leaf.hint)}, got {text!r}") from None


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    return str(value) if value != "" else '""'


def from_arguments(cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """`cls` from parsed options (those of `add_arguments`; others in `args` are ignored)."""
    names = {leaf.name for leaf in leaves(cls)}
    given = {key: value for key, value in vars(args).items() if key in names}
    return from_mapping(cls, {**given, **overrides}, where="options")


def describe(cls: type) -> list[dict[str, str]]:
    """One row per setting: key, flag, type, default, help (for docs/configuration.md)."""
    rows = []
    for leaf in leaves(cls):
        default = leaf.default(cls)
        meta = leaf.setting
        rows.append({
            "key": leaf.name,
            "flag": (leaf.name if meta.positional else leaf.flag) if meta.cli else "—",
            "type": _type_name(leaf.hint),
            "default": "required" if default is dataclasses.MISSING else _shown(default) if default is not None else "none",
            "help": meta.help + _limits(meta),
        })
    return rows


def _limits(meta: Setting) -> str:
    limits = [f"≥ {meta.minimum:g}" if meta.minimum is not None else "",
              f"> {meta.above:g}" if meta.above is not None else "",
              f"≤ {meta.maximum:g}" if meta.maximum is not None else ""]
    text = ", ".join(limit for limit in limits if limit)
    if meta.choices:
        text = "one of " + ", ".join(map(str, meta.choices))
    return f" ({text})" if text else ""


def markdown_table(cls: type) -> str:
    """`describe(cls)` as a Markdown table (docs/configuration.md holds these verbatim)."""
    lines = ["| key | option | type | default | meaning |", "|---|---|---|---|---|"]
    for row in describe(cls):
        cells = [f"`{row['key']}`", f"`{row['flag']}`" if row["flag"] != "—" else "—", row["type"],
                 row["default"], row["help"]]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)

