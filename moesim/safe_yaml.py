"""Reading YAML (and JSON, which YAML reads too) from files moesim did not write.

``yaml.safe_load`` runs no code, but a file can still crash or exhaust it: a bad ``!!timestamp``
raises AttributeError, 20,000 nested ``[`` a RecursionError, and a "billion laughs" file of a few
kilobytes aliases its way to 10^9 values. :func:`parse_yaml` reads with the safe constructors, bounds
the text size, the nesting depth and the expanded value count (moesim.limits), refuses recursive
aliases, and turns every failure into one :class:`~moesim.errors.UserError` line naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from moesim.errors import UserError
from moesim.limits import YAML_BYTES, YAML_DEPTH, YAML_NODES

# What PyYAML's safe constructors raise besides YAMLError on values they cannot build
# (``!!timestamp x`` -> AttributeError, ``!!int`` of 10^5 digits -> ValueError, ...).
_CONSTRUCTOR_ERRORS = (ValueError, TypeError, AttributeError, OverflowError, KeyError, IndexError)


class _Refused(Exception):
    """A bound of moesim.limits crossed while composing (carries the finished UserError)."""

    def __init__(self, error: UserError):
        super().__init__(str(error))
        self.error = error


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts nesting depth and expanded values while it composes the node graph."""

    def __init__(self, stream: str, file: str | None):
        super().__init__(stream)
        self.file = file
        self.max_depth = YAML_DEPTH.value()
        self.max_nodes = YAML_NODES.value()
        self.depth = 0
        self.sizes: dict[int, int] = {}  # id(node) -> values it stands for, aliases expanded

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            node = super().compose_node(parent, index)
            if id(node) not in self.sizes:  # an alias to a node still being composed: a cycle
                line = self.peek_event().start_mark.line + 1
                raise _Refused(UserError(f"expected a tree of values, got an alias to its own parent "
                                         f"(recursive) near line {line}", file=self.file))
            return node
        self.depth += 1
        if self.depth > self.max_depth:
            line = self.peek_event().start_mark.line + 1
            raise _Refused(self._limit_error(YAML_DEPTH, self.depth, line))
        try:
            node = super().compose_node(parent, index)
        finally:
            self.depth -= 1
        size = 1
        if isinstance(node, yaml.SequenceNode):
            size += sum(self.sizes[id(child)] for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            size += sum(self.sizes[id(k)] + self.sizes[id(v)] for k, v in node.value)
        if size > self.max_nodes:
            raise _Refused(self._limit_error(YAML_NODES, size, node.start_mark.line + 1))
        self.sizes[id(node)] = size
        return node

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except _CONSTRUCTOR_ERRORS as e:
            tag = str(node.tag).replace("tag:yaml.org,2002:", "!!")
            text = node.value if isinstance(node.value, str) else ""
            shown = repr(text) if len(text) <= 40 else f"{text[:37]!r}..."
            raise _Refused(UserError(
                f"expected valid YAML, got {tag} {shown} at line {node.start_mark.line + 1}, which is not "
                f"a valid {tag} value ({type(e).__name__})", file=self.file)) from None

    def _limit_error(self, limit: Any, n: int, line: int) -> UserError:
        try:
            limit.check(n, file=self.file)
        except UserError as e:
            return UserError(f"{e.message} near line {line}", file=self.file)
        raise AssertionError("unreachable: the limit was crossed")


def parse_yaml(text: str, *, file: str | Path | None = None) -> Any:
    """The value of one YAML (or JSON) document, safe tags only; UserError for anything malformed.

    libyaml (when PyYAML has it) reads the text about ten times faster than PyYAML's Python parser:
    its event stream is checked against the limits first, then it builds the values. Anything it
    refuses is read again by the Python parser, whose messages name the line and the problem.
    """
    name = None if file is None else str(file)
    YAML_BYTES.check(len(text.encode("utf-8", errors="replace")), file=name)
    if _CLoader is not None:
        try:
            _check_events(text)
            return yaml.load(text, Loader=_CLoader)
        except Exception:  # the Python parser below says what is wrong
            pass
    loader = None
    try:
        loader = _BoundedLoader(text, name)  # its reader refuses control characters right away
        return loader.get_single_data()
    except _Refused as e:
        raise e.error from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0] or "syntax error"
        raise UserError(f"expected valid YAML, got a syntax error{where}: {problem}", file=name) from None
    except RecursionError:
        raise UserError("expected valid YAML, got values nested too deeply", file=name) from None
    except _CONSTRUCTOR_ERRORS as e:
        raise UserError(f"expected valid YAML, got a value its tag cannot hold ({type(e).__name__}: "
                        f"{str(e)[:120]})", file=name) from None
    finally:
        if loader is not None:
            loader.dispose()


class _FastLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """libyaml's safe loader; a value its tag cannot hold fails here and is re-read for the message."""


_CLoader = _FastLoader if getattr(yaml, "__with_libyaml__", False) else None


def _check_events(text: str) -> None:
    """Depth and expanded value count from libyaml's event stream, before any value is built."""
    max_depth, max_nodes = YAML_DEPTH.value(), YAML_NODES.value()
    stack: list[list[Any]] = []  # [values so far, anchor] per open collection
    sizes: dict[str, int] = {}  # anchor -> values it stands for
    open_anchors: set[str] = set()
    total = 0

    def add(n: int) -> None:
        nonlocal total
        if stack:
            stack[-1][0] += n
            if stack[-1][0] > max_nodes:
                raise ValueError("too many values")
        else:
            total += n

    for event in yaml.parse(text, Loader=_CLoader):
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            if len(stack) >= max_depth:
                raise ValueError("too deep")
            stack.append([1, event.anchor])
            if event.anchor:
                open_anchors.add(event.anchor)
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            size, anchor = stack.pop()
            if anchor:
                sizes[anchor] = size
                open_anchors.discard(anchor)
            add(size)
        elif isinstance(event, yaml.ScalarEvent):
            if event.anchor:
                sizes[event.anchor] = 1
            add(1)
        elif isinstance(event, yaml.AliasEvent):
            if event.anchor in open_anchors or event.anchor not in sizes:
                raise ValueError("recursive or unknown alias")
            add(sizes[event.anchor])
    if total > max_nodes:
        raise ValueError("too many values")


def read_yaml_file(path: str | Path) -> Any:
    """Read and parse a YAML/JSON file; UserError for a missing, unreadable, oversized or malformed one."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise IsADirectoryError
    except FileNotFoundError:
        raise UserError("no such file", file=path) from None
    except IsADirectoryError:
        raise UserError("expected a YAML file, got a directory", file=path) from None
    except OSError as e:
        raise UserError(f"cannot read the file ({e.strerror})", file=path) from None
    YAML_BYTES.check(size, file=path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError("expected UTF-8 text, got binary data", file=path) from None
    except OSError as e:
        raise UserError(f"cannot read the file ({e.strerror})", file=path) from None
    return parse_yaml(text, file=path)
