"""Command-line options made from a settings dataclass (``PretrainConfig``), so that
each setting (name, type, bounds, default, help) is written once, in the dataclass.

``config_options`` decorates a click command with one option per field; the command
receives the values as keyword arguments and ``config_from_options`` turns them back
into the dataclass.
"""

from __future__ import annotations

import dataclasses
import math
import typing

import click

from pretraining.config import option_flag


def _option_param(f: dataclasses.Field) -> str:
    return option_flag(f).lstrip("-").replace("-", "_")


def _non_optional(hint: typing.Any) -> typing.Any:
    """``int`` for ``int | None`` (None is then the option's default)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if type(None) in typing.get_args(hint) else hint


def _default(f: dataclasses.Field) -> dict[str, typing.Any]:
    """The option's default, or ``required`` for a field without one."""
    if f.default is not dataclasses.MISSING:
        return {"default": f.default}
    if f.default_factory is not dataclasses.MISSING:
        return {"default": f.default_factory()}
    return {"required": True}


class FiniteFloat(click.FloatRange):
    """A float within optional bounds that is also finite: click's float and FloatRange let NaN
    (which compares false with every bound) and infinity through, and torch then fails with a
    traceback (``--lr nan``) or never."""

    def convert(self, value, param, ctx) -> float:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number

    def _describe_range(self) -> str:
        return super()._describe_range() if self.min is not None or self.max is not None else "finite"


def _value_type(kind: typing.Any, meta: typing.Mapping[str, typing.Any]) -> dict[str, typing.Any]:
    """How click reads the value: a flag, a repeatable option (list), several values
    (tuple), a choice, a folder, or a number within the field's bounds."""
    bounds = {"min": meta.get("low"), "max": meta.get("high"), "min_open": meta.get("low_open", False),
              "max_open": meta.get("high_open", False)}
    bounded = bounds["min"] is not None or bounds["max"] is not None
    if kind is bool:
        return {"is_flag": True}
    if typing.get_origin(kind) is list:
        return {"multiple": True, "type": typing.get_args(kind)[0]}
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        return {"nargs": len(typing.get_args(kind)), "type": FiniteFloat(**bounds) if item is float else item}
    if meta.get("choices"):
        return {"type": click.Choice(list(meta["choices"]))}
    if meta.get("folder"):
        return {"type": click.Path(file_okay=False)}
    if kind is int and bounded:
        return {"type": click.IntRange(**bounds)}
    if kind is float:
        return {"type": FiniteFloat(**bounds)}
    return {"type": kind}


def _click_option(f: dataclasses.Field, hint: typing.Any, value_type: click.ParamType | None = None):
    """The click option of one config field (see pretraining.config.setting); ``value_type``
    replaces the type made from the field's bounds."""
    kind = {"type": value_type} if value_type is not None else _value_type(_non_optional(hint), f.metadata)
    return click.option(option_flag(f), _option_param(f), help=f.metadata.get("help") or None, **_default(f),
                        **kind)


def config_options(config_cls: type, skip: tuple[str, ...] = (),
                   types: typing.Mapping[str, click.ParamType] | None = None):
    """Decorator: one click option per field of a settings dataclass, in field order
    (fields that share a flag share one option), so each setting is defined once;
    ``types`` gives some fields a click type of the command's own (e.g. seconds)."""
    hints = typing.get_type_hints(config_cls)
    options = {}
    for f in dataclasses.fields(config_cls):
        if f.name not in skip and option_flag(f) not in options:
            options[option_flag(f)] = _click_option(f, hints[f.name], (types or {}).get(f.name))

    def decorate(command):
        for option in reversed(list(options.values())):
            command = option(command)
        return command
    return decorate


def config_from_options(config_cls: type, values: dict[str, typing.Any], **fixed: typing.Any):
    """The settings dataclass from the values of the options made by config_options."""
    return config_cls(**fixed, **{f.name: values[_option_param(f)] for f in dataclasses.fields(config_cls)
                                  if f.name not in fixed})


def given_settings(config_cls: type, ctx: click.Context) -> set[str]:
    """The fields whose options were given on the command line (not left at their default):
    ``--resume`` tells those that it ignores from those it was not given."""
    source = click.core.ParameterSource.COMMANDLINE
    return {f.name for f in dataclasses.fields(config_cls) if ctx.get_parameter_source(_option_param(f)) == source}
