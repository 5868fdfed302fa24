"""Command-line options written once: a job's --flags are fields of its config dataclass, each with the
field's default, its type and, as help, the comment written beside (or just above) the field."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import textwrap
import tokenize
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

# How a flag's text becomes a field value where the field's type does not say: a function, or a
# mapping of names to values (e.g. a profile name to its config).
Parse = Callable[[str], Any] | Mapping[str, Any]


def add_options(parser: argparse.ArgumentParser, config: type, names: Iterable[str], *,
                parse: Mapping[str, Parse] | None = None, flags: Mapping[str, str] | None = None,
                required: Iterable[str] = ()) -> None:
    """One option per field in `names` of the dataclass `config`, read back with `values`.

    The flag is `--field-name` (or `flags[name]`). bool fields are switches, Literal fields choose
    from their values, `X | None` fields take an X; other types need a `parse` entry. A field with
    no default, or named in `required`, must be given.
    """
    fields = {f.name: f for f in dataclasses.fields(config)}
    hints = typing.get_type_hints(config)
    helps = field_comments(config)
    parse, flags, required = dict(parse or {}), dict(flags or {}), set(required)
    for name in names:
        field = fields[name]
        default = _default(field)
        option: dict[str, Any] = {"dest": name, "help": helps.get(name)}
        kind = _optional(hints[name])
        if name in parse:
            convert = parse[name]
            option["type"] = _one_of(convert) if isinstance(convert, Mapping) else convert
            if isinstance(convert, Mapping):
                option["metavar"] = "{" + ",".join(sorted(convert)) + "}"
        elif kind is bool:
            if default is not False:
                raise TypeError(f"{config.__name__}.{name}: a switch needs the default False")
            option["action"] = "store_true"
        elif typing.get_origin(kind) is typing.Literal:
            option["choices"] = list(typing.get_args(kind))
        elif kind in (int, float, str):
            option["type"] = kind
        else:
            raise TypeError(f"{config.__name__}.{name}: {kind} needs a parse= entry")
        if default is dataclasses.MISSING or name in required:
            option["required"] = True
        else:
            option["default"] = default
            shown = _shown(default, parse.get(name))
            if shown is not None and option["help"]:
                option["help"] += f" (default {shown})"
        parser.add_argument(flags.get(name, "--" + name.replace("_", "-")), **option)


def values(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The parsed fields `names` as keyword arguments of their config dataclass."""
    return {name: getattr(args, name) for name in names}


def size(text: str) -> tuple[int, int]:
    """"HxW" (e.g. 720x1280) -> (720, 1280)."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write it as HEIGHTxWIDTH, e.g. 720x1280") from None
    return height, width


def int_list(text: str) -> tuple[int, ...]:
    """"2,4" -> (2, 4)."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write whole numbers separated by commas, e.g. 2,4") from None


def word_list(text: str) -> tuple[str, ...]:
    """"clean,crf23" -> ("clean", "crf23")."""
    return tuple(v.strip() for v in text.split(",") if v.strip())


def field_comments(config: type) -> dict[str, str]:
    """{field: the comment at the end of its line, or else the comment lines just above it}."""
    source = textwrap.dedent(inspect.getsource(config))
    lines = source.splitlines()
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    out = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above, line = [], node.lineno - 1
        while line in comments and lines[line - 1].lstrip().startswith("#"):
            above.insert(0, comments[line])
            line -= 1
        text = comments.get(node.end_lineno) or " ".join(above)
        if text:
            out[node.target.id] = text.replace("%", "%%")  # argparse %-formats help texts
    return out


def _default(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def _shown(default: Any, convert: Parse | None) -> str | None:
    """How --help shows a default: numbers and words as they are, a mapped value by its name."""
    if isinstance(convert, Mapping):
        return next((name for name, value in convert.items() if value == default), None)
    if isinstance(default, (int, float, str)) and not isinstance(default, bool) and default != "":
        return str(default)
    return None


def _optional(kind: Any) -> Any:
    """X for `X | None`, else the type itself."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return kind


def _one_of(mapping: Mapping[str, Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        if text not in mapping:
            raise argparse.ArgumentTypeError(f"{text!r}: choose one of {', '.join(sorted(mapping))}")
        return mapping[text]
    return convert
