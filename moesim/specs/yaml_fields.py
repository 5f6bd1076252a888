"""Reading user YAML: typed fields whose errors name the file and the field path, plus ``extends``.

A :class:`Fields` wraps one mapping of a YAML document together with its field path
(``devices.h100-sxm5.memory``) and the file each value came from (a profile that ``extends``
another mixes two files), so every mistake becomes one ``FILE: FIELD: MESSAGE`` line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moesim.errors import UserError
from moesim.limits import MAX_WIDTH, Limit
from moesim.resources import resolve
from moesim.safe_yaml import read_yaml_file
from moesim.units import PHYSICAL, parse_physical, parse_quantity

_MISSING: Any = object()

# field path -> file that set it; the longest recorded prefix of a path names its file.
Origins = Mapping[str, str]


def join(path: str, key: str | int) -> str:
    """``a.b`` + ``c`` -> ``a.b.c``; list indices as ``a.b[2]``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def origin_of(origins: Origins, path: str, default: str) -> str:
    best, best_len = default, -1
    for prefix, file in origins.items():
        if len(prefix) > best_len and (
            prefix == "" or path == prefix or path.startswith(prefix + ".") or path.startswith(prefix + "[")
        ):
            best, best_len = file, len(prefix)
    return best


def read_yaml(path: Path) -> dict[str, Any]:
    """The top-level mapping of a YAML file; UserError for a missing, unreadable or malformed file."""
    data = read_yaml_file(path)
    if data is None:
        raise UserError("expected a YAML mapping, got an empty file", file=path)
    if not isinstance(data, dict):
        raise UserError(f"expected a YAML mapping at the top level, got {_kind(data)}", file=path)
    return data


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}...'"


def deep_merge(
    base: Mapping[str, Any],
    override: Mapping[str, Any],
    base_origins: Origins,
    override_file: str,
    prefix: str = "",
) -> tuple[dict[str, Any], dict[str, str]]:
    """``override`` on top of ``base``: mappings merge by key, anything else replaces, ``null`` deletes."""
    merged = dict(base)
    origins = dict(base_origins)
    for key, value in override.items():
        path = join(prefix, str(key))
        if value is None:
            merged.pop(key, None)
            continue
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key], origins = deep_merge(merged[key], value, origins, override_file, path)
        else:
            merged[key] = value
            for p in [p for p in origins if p.startswith(path + ".") or p.startswith(path + "[")]:
                del origins[p]
            origins[path] = override_file
    return merged, origins


@dataclass(frozen=True)
class Document:
    """A YAML file with its ``extends`` chain already merged in."""

    data: dict[str, Any]
    origins: dict[str, str]
    path: Path

    @property
    def fields(self) -> Fields:
        return Fields(self.data, "", self.origins, str(self.path))


def resolve_reference(kind: str, ref: object, *, relative_to: Path, file: str, field: str) -> Path:
    """A name or path written in a file: a sibling file first, then a built-in of ``kind``."""
    if not isinstance(ref, str) or not ref.strip():
        raise UserError(f"expected a name or a path, got {_kind(ref)}", file=file, field=field)
    candidates = [relative_to / ref]
    if Path(ref).suffix not in (".yaml", ".yml"):
        candidates += [relative_to / f"{ref}.yaml", relative_to / f"{ref}.yml"]
    for c in candidates:
        if c.is_file():
            return c
    try:
        return resolve(kind, ref)
    except UserError as e:
        raise UserError(e.message, file=file, field=field) from None


def load_document(kind: str, name_or_path: str | Path, *, _chain: tuple[Path, ...] = ()) -> Document:
    """Read a file of ``kind`` ("hardware" or "model") and merge the profile it ``extends``."""
    path = resolve(kind, name_or_path) if not _chain else Path(name_or_path)
    data = read_yaml(path)
    parent_ref = data.pop("extends", None)
    if parent_ref is None:
        return Document(data, {"": str(path)}, path)
    parent_path = resolve_reference(
        kind, parent_ref, relative_to=path.parent, file=str(path), field="extends"
    )
    chain = (*_chain, path.resolve())
    if parent_path.resolve() in chain:
        names = " -> ".join(p.name for p in (*chain, parent_path.resolve()))
        raise UserError(
            f"expected a chain of profiles without a loop, got {names}", file=path, field="extends"
        )
    parent = load_document(kind, parent_path, _chain=chain)
    merged, origins = deep_merge(parent.data, data, parent.origins, str(path))
    return Document(merged, origins, path)


class Fields:
    """One mapping of a YAML document, read field by field with typed getters."""

    def __init__(self, data: Mapping[str, Any], path: str, origins: Origins, default_file: str):
        self.data = data
        self.path = path
        self.origins = origins
        self.default_file = default_file

    # --- locating errors -------------------------------------------------------------------------
    def field(self, key: str | int | None = None) -> str:
        return self.path if key is None else join(self.path, key)

    def file(self, key: str | int | None = None) -> str:
        if isinstance(key, str) and key not in self.data:
            return self.default_file  # a missing field is missing from the file being loaded
        return origin_of(self.origins, self.field(key), self.default_file)

    def error(self, key: str | int | None, message: str) -> UserError:
        return UserError(message, file=self.file(key), field=self.field(key) or None)

    # --- structure -------------------------------------------------------------------------------
    def __contains__(self, key: str) -> bool:
        return key in self.data

    def names(self) -> list[str]:
        return [str(k) for k in self.data]

    def check_keys(self, allowed: set[str] | frozenset[str], required: tuple[str, ...] = ()) -> None:
        """Reject typos (unknown keys) and missing required keys."""
        for key in self.data:
            if key not in allowed:
                known = ", ".join(sorted(allowed))
                raise self.error(str(key), f"unknown field; expected one of: {known}")
        for key in required:
            if key not in self.data:
                raise self.error(key, "missing required field")

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        if key in self.data:
            return self.data[key]
        if default is _MISSING:
            raise self.error(key, "missing required field")
        return default

    def mapping(self, key: str, default: Any = _MISSING) -> Fields:
        value = self.raw(key, {} if default is not _MISSING else _MISSING)
        if not isinstance(value, dict):
            raise self.error(key, f"expected a mapping, got {_kind(value)}")
        return Fields(value, self.field(key), self.origins, self.default_file)

    def items(self, key: str, default: Any = _MISSING) -> Iterator[tuple[str, Fields]]:
        """The entries of a mapping of mappings (``devices: {name: {...}}``)."""
        outer = self.mapping(key, default)
        for name in outer.names():
            yield name, outer.mapping(name)

    def list(self, key: str, default: Any = _MISSING) -> list[Any]:
        value = self.raw(key, default)
        if not isinstance(value, list):
            raise self.error(key, f"expected a list, got {_kind(value)}")
        return value

    def list_of_mappings(self, key: str, default: Any = _MISSING) -> list[Fields]:
        out = []
        for i, item in enumerate(self.list(key, default)):
            if not isinstance(item, dict):
                raise UserError(
                    f"expected a mapping, got {_kind(item)}",
                    file=self.file(key),
                    field=join(self.field(key), i),
                )
            out.append(Fields(item, join(self.field(key), i), self.origins, self.default_file))
        return out

    # --- scalars ---------------------------------------------------------------------------------
    def str(self, key: str, default: Any = _MISSING, *, choices: tuple[str, ...] | None = None) -> str:
        value = self.raw(key, default)
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, f"expected a non-empty text, got {_kind(value)}")
        if choices is not None and value not in choices:
            raise self.error(key, f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    def int(self, key: str, default: Any = _MISSING, *, minimum: int = 0, maximum: int | Limit = MAX_WIDTH
            ) -> int:
        """A whole number in ``[minimum, maximum]``; ``maximum`` may be a :class:`Limit` (env-raisable)."""
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected a whole number >= {minimum}, got {_kind(value)}")
        if value < minimum:
            raise self.error(key, f"expected a whole number >= {minimum}, got {value}")
        if isinstance(maximum, Limit):
            maximum.check(value, file=self.file(key), field=self.field(key))
        elif value > maximum:
            raise self.error(key, f"expected a whole number from {minimum} to {maximum:,}, got {value:,}")
        return value

    def optional_int(self, key: str, *, minimum: int = 0, maximum: int | Limit = MAX_WIDTH) -> int | None:
        return None if self.data.get(key) is None else self.int(key, minimum=minimum, maximum=maximum)

    def bool(self, key: str, default: Any = _MISSING) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {_kind(value)}")
        return value

    def fraction(self, key: str, default: Any = _MISSING) -> float:
        """A dimensionless factor in (0, 1] (efficiencies)."""
        value = self.raw(key, default)
        return check_fraction(value, lambda msg: self.error(key, msg))

    def quantity(self, key: str, kind: str, default: Any = _MISSING) -> float:
        """A quantity with its unit, within the physical range of ``kind`` (a key of ``units.PHYSICAL``);
        a bare dimension (``"bytes"``) only asks for a finite, non-negative quantity of it."""
        value = self.raw(key, default)
        if value is default and default is not _MISSING:
            return value
        if kind not in PHYSICAL:
            return parse_quantity(value, kind, file=self.file(key), field=self.field(key))
        return parse_physical(value, kind, file=self.file(key), field=self.field(key))


def check_fraction(value: object, error: Callable[[str], UserError]) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise error(f"expected a fraction greater than 0 and at most 1, such as 0.85, got {_kind(value)}")
    return float(value)
