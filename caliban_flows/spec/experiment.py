"""Experiment configs: validation, expansion into experiments, and rendering to argv.

The observable behaviour (which configs are valid, the order of experiments and of their keys)
matches Caliban 0.4.2 exactly, including two things its docs do not say:

* the FIRST key of a dict varies fastest in the cartesian product;
* when two keys of one dict name the same flag (`"a"` and `"[a,b]"`, or `"[a,b]"` and
  `"[a, b]"`), the earliest key in the file wins the value.

Most configs have no such clash; they take a fast path that renders text straight from
per-key fragments instead of building one dict per experiment.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from caliban_flows.spec.errors import SpecError

Value = bool | int | float | str | list
Experiment = dict[str, Value]

# A key is a flag name without whitespace, commas or brackets, or "[a,b,...]" of such names.
_NAME = r"[^\s,\[\]]+"
_KEY = re.compile(rf"\A(?:{_NAME}|\[\s*{_NAME}(?:\s*,\s*{_NAME})*\s*\])\Z")
_SCALARS = (bool, int, float, str, list)


def _describe(value: Any) -> str:
    return "null" if value is None else json.dumps(value, default=repr)[:60]


@dataclass(frozen=True)
class _Factor:
    """One key of a dict: the flag names it sets and the value tuples it ranges over."""

    key: str
    names: tuple[str, ...]
    choices: tuple[tuple[Any, ...], ...]

    @property
    def identity(self) -> str | tuple[str, ...]:
        # Caliban keys its intermediate dict by the name tuple for compound keys only.
        return self.names if self.key.startswith("[") else self.key


def _factor(key: Any, value: Any, where: str) -> _Factor:
    if not isinstance(key, str) or not _KEY.match(key):
        raise SpecError(
            f"experiment config{where}: key {json.dumps(key)} is invalid: a key is a flag name "
            'without spaces, commas or brackets, or a compound key like "[a,b]"'
        )
    if not isinstance(value, _SCALARS):
        raise SpecError(
            f"experiment config{where}: value {_describe(value)} of key {json.dumps(key)} is "
            "invalid: values must be strings, numbers, booleans or lists"
        )
    if not key.startswith("["):
        choices = [(v,) for v in value] if isinstance(value, list) else [(value,)]
        return _Factor(key, (key,), tuple(choices))

    names = tuple(n.strip() for n in key[1:-1].split(","))
    if not isinstance(value, list):
        raise SpecError(
            f"experiment config{where}: compound key {json.dumps(key)} needs a list of "
            f"{len(names)}-element lists, not {_describe(value)}"
        )
    rows = value if value and isinstance(value[0], list) else ([value] if value else [])
    for row in rows:
        # Caliban only checks len(row), so a string or dict of the right length is split
        # into its characters or keys; we keep that so every config it took still works.
        if not isinstance(row, (list, str, dict)) or len(row) != len(names):
            raise SpecError(
                f"experiment config{where}: compound key {json.dumps(key)} has "
                f"{len(names)} names but the value {_describe(row)} does not have "
                f"{len(names)} elements"
            )
    return _Factor(key, names, tuple(tuple(r) for r in rows))


def _check_values(pairs: Iterator[tuple[str, Any]], where: str) -> None:
    for name, v in pairs:
        if not isinstance(v, _SCALARS):
            raise SpecError(
                f"experiment config{where}: value {_describe(v)} for {json.dumps(name)} "
                "is invalid: values must be strings, numbers, booleans or lists"
            )


@dataclass(frozen=True)
class _Dict:
    """One dict of a config, validated and split into factors."""

    factors: tuple[_Factor, ...]
    where: str

    @property
    def count(self) -> int:
        n = 1
        for f in self._product_factors():
            n *= len(f.choices)
        return n

    def _product_factors(self) -> list[_Factor]:
        """Caliban's product order: keys deduplicated from the end, values from the first."""
        first: dict[Any, _Factor] = {}
        for f in self.factors:
            first.setdefault(f.identity, f)
        return [first[i] for i in dict.fromkeys(f.identity for f in reversed(self.factors))]

    @property
    def simple(self) -> bool:
        """True when no two keys set the same flag, so experiments are plain products."""
        names = [n for f in self.factors for n in f.names]
        return len(names) == len(set(names))

    def experiments(self) -> Iterator[Experiment]:
        if self.simple:
            yield from self._simple_experiments()
        else:
            yield from self._clashing_experiments()

    def _simple_experiments(self) -> Iterator[Experiment]:
        names = [n for f in self.factors for n in f.names]
        for combo in itertools.product(*(f.choices for f in reversed(self.factors))):
            values: list[Any] = []
            for row in reversed(combo):
                values.extend(row)
            yield dict(zip(names, values))

    def _clashing_experiments(self) -> Iterator[Experiment]:
        order = self._product_factors()
        for combo in itertools.product(*(f.choices for f in order)):
            merged: Experiment = {}
            for f, row in zip(reversed(order), reversed(combo)):
                merged.update(zip(f.names, row))
            yield merged


def _dicts(config: Any, where: str = "") -> Iterator[_Dict]:
    if isinstance(config, dict):
        yield _Dict(tuple(_factor(k, v, where) for k, v in config.items()), where)
    elif isinstance(config, list):
        for i, item in enumerate(config):
            if not isinstance(item, (dict, list)):
                raise SpecError(
                    f"experiment config{where}[{i}]: a list may only hold dicts (or lists of "
                    f"dicts), not {_describe(item)}"
                )
            yield from _dicts(item, f"{where}[{i}]")
    else:
        raise SpecError(
            f"experiment config must be a JSON dict or a list of dicts, not {_describe(config)}"
        )


class ExperimentConfig:
    """A validated experiment config. Construction validates everything, before any job runs."""

    def __init__(self, data: Any) -> None:
        self.data = data
        self._dicts = tuple(_dicts(data))
        # Values nested in lists are checked as Caliban did: only those some experiment gets.
        for d in self._dicts:
            if d.simple and d.count:
                pairs = (p for f in d.factors for row in f.choices for p in zip(f.names, row))
                _check_values(pairs, d.where)
        for d in self._dicts:
            if not d.simple:
                for exp in d.experiments():
                    _check_values(iter(exp.items()), d.where)

    def __len__(self) -> int:
        return sum(d.count for d in self._dicts)

    def experiments(self) -> Iterator[Experiment]:
        for d in self._dicts:
            yield from d.experiments()

    def flag_lines(self) -> Iterator[str]:
        """`expansion --print_flags`: each experiment's flags in file order, one line each."""
        for d in self._dicts:
            if d.simple:
                yield from _render(d.factors, _flag_fragment, 1)
            else:
                for exp in d.experiments():
                    yield " ".join(to_argv(exp))

    def json_objects(self) -> Iterator[str]:
        """Each experiment as `json.dumps` prints it with default separators."""
        for d in self._dicts:
            if d.simple:
                for body in _render(d.factors, _json_fragment, 2):
                    yield "{" + body + "}"
            else:
                for exp in d.experiments():
                    yield json.dumps(exp)


def _flag_fragment(name: str, value: Any) -> str:
    if value is True:
        return " --" + name
    if value is False:
        return ""
    return f" --{name} {value}"


def _json_fragment(name: str, value: Any) -> str:
    return f", {json.dumps(name)}: {json.dumps(value)}"


def _render(factors: Sequence[_Factor], fragment, lead: int) -> Iterator[str]:
    """Lines for a clash-free dict, first key fastest, built by string concatenation.

    Each fragment starts with a `lead`-character separator that is cut from each line.
    """
    parts = [
        ["".join(fragment(n, v) for n, v in zip(f.names, row)) for row in f.choices]
        for f in factors
    ]
    if any(not p for p in parts):
        return iter(())
    # A one-choice key adds the same text to every line: fold it into a neighbour.
    folded: list[list[str]] = []
    pending = ""
    for p in parts:
        if len(p) == 1:
            if folded:
                folded[-1] = [s + p[0] for s in folded[-1]]
            else:
                pending += p[0]
        else:
            folded.append([pending + s for s in p] if pending else p)
            pending = ""
    lines = folded[0] if folded else [pending]
    for p in folded[1:]:
        lines = [prefix + s for s in p for prefix in lines]
    return (line[lead:] for line in lines)


def to_argv(experiment: Experiment, *, sort_keys: bool = False) -> list[str]:
    """Flags for one experiment: `true` is a bare flag, `false` is left out, the rest is str().

    Caliban's `expansion` keeps file order, but its run/cloud/cluster jobs sort the keys.
    """
    keys = sorted(experiment) if sort_keys else experiment
    argv: list[str] = []
    for k in keys:
        v = experiment[k]
        if v is True:
            argv.append("--" + k)
        elif v is not False:
            argv += ["--" + k, str(v)]
    return argv
