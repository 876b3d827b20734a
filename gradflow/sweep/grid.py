"""The grid: named axes with their values and a measurement (:class:`Sweep`), read from code or
from a TOML file (:func:`from_toml`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from gradflow.sweep.measurements import Measurement, measurement, option_kinds

__all__ = ["Sweep", "from_toml", "parse_bytes"]

FORMAT = 2  # version of the config and store layout, recorded in every manifest
_DTYPES = ("float32", "float64")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _normalise_values(name: str, values) -> tuple:
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray, range)):
        raise TypeError(f"axis {name!r} values must be a list of scalars, got {values!r}")
    if isinstance(values, np.ndarray):
        values = values.ravel().tolist()
    out = []
    for v in values:
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"axis {name!r} has a non-finite value {v!r}")
        if not isinstance(v, (bool, int, float, str)):
            raise TypeError(
                f"axis {name!r} values must be numbers, strings or bools, got {type(v).__name__}"
            )
        out.append(v)
    if not out:
        raise ValueError(f"axis {name!r} has no values")
    if len(set(map(repr, out))) != len(out):
        raise ValueError(f"axis {name!r} has repeated values: {out}")
    return tuple(out)


_KIND_NAMES = {int: "integers", float: "numbers", str: "strings", bool: "booleans (true/false)"}


def _of_kind(kind, value) -> bool:
    """Whether ``value`` is a value of ``kind`` (no bool for numbers, no float for an int)."""
    if kind is None:
        return True
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def _check_declared(meas: Measurement, axes: Mapping[str, tuple], static) -> None:
    """Refuses axes, values, options and static names the measurement does not accept."""
    known = meas.axes
    if known is not None:
        for name, values in axes.items():
            if name not in known:
                raise ValueError(
                    f"axis {name!r} is not used by {meas.name!r} (known: {', '.join(known)})"
                )
            bad = [v for v in values if not _of_kind(known[name], v)]
            if bad:
                raise TypeError(f"axis {name!r} takes {_KIND_NAMES[known[name]]}, got {bad[0]!r}")
        missing = [a for a in meas.required_axes if a not in axes]
        if missing:
            raise ValueError(f"{meas.name!r} needs the axes {missing}; got {list(axes)}")
    kinds = option_kinds(meas.fn)
    if kinds is not None:
        for name, value in meas.options.items():
            if name not in kinds:
                raise ValueError(
                    f"option {name!r} is not an option of {meas.name!r} "
                    f"(known: {', '.join(kinds) or 'none'})"
                )
            if not _of_kind(kinds[name], value):
                raise TypeError(
                    f"option {name!r} of {meas.name!r} takes {_KIND_NAMES[kinds[name]]}, "
                    f"got {value!r}"
                )
    if static is not None and known is not None:
        batched_only = [a for a in static if a in axes and a not in meas.static_axes]
        batched_only = [a for a in batched_only if known[a] in (int, float)]
        if batched_only:
            raise ValueError(
                f"static names {batched_only}, which change no shape in {meas.name!r}: "
                "they are batched (vmapped); static axes change shapes or code "
                f"({', '.join(a for a in known if a in meas.static_axes or known[a] is str)})"
            )


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A declarative grid: named axes with values, and a measurement.

    Attributes:
      axes: axis name -> tuple of values, in the order the results' dimensions take.
      measure: the :class:`Measurement`.
      static: names of the static (looped, compiled once each) axes; the rest are batched.
      dtype: "float32" or "float64" (the sweep runs under ``jax.enable_x64`` for float64).
    """

    axes: Mapping[str, tuple]
    measure: Measurement
    static: tuple[str, ...]
    dtype: str = "float32"

    @classmethod
    def create(
        cls,
        axes: Mapping[str, Sequence],
        measure,
        *,
        static: Sequence[str] | None = None,
        dtype: str = "float32",
        **options,
    ) -> Sweep:
        """Builds and validates a sweep.

        Args:
          axes: mapping axis name -> values (numbers, strings or bools); order is kept.
          measure: a :class:`Measurement`, a registry name (:data:`MEASUREMENTS`),
            ``"module:function"`` or a callable ``fn(point)``.
          static: which axes are static. ``None``: the measurement's ``static_axes``
            (:data:`DEFAULT_STATIC` by default) plus every axis with a non-numeric value.
          dtype: "float32" or "float64".
          **options: options for the measurement.

        Raises:
          ValueError/TypeError: bad names, values, dtype, or a batched axis that is not numeric.
        """
        if not isinstance(axes, Mapping) or not axes:
            raise ValueError(f"axes must be a non-empty mapping name -> values, got {axes!r}")
        norm_axes = {}
        for name, values in axes.items():
            if not isinstance(name, str) or not _NAME.match(name):
                raise ValueError(f"axis names must be identifiers, got {name!r}")
            norm_axes[name] = _normalise_values(name, values)
        meas = measurement(measure, **options)
        if static is not None and (
            isinstance(static, str)
            or not isinstance(static, Sequence)
            or not all(isinstance(a, str) for a in static)
        ):
            raise TypeError(f"static must be a list of axis names, got {static!r}")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
        numeric = {
            n: all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vs)
            for n, vs in norm_axes.items()
        }
        if static is None:
            static_set = {n for n in norm_axes if n in meas.static_axes or not numeric[n]}
        else:
            static_set = set(static)
            unknown = static_set - set(norm_axes)
            if unknown:
                raise ValueError(
                    f"static names unknown axes {sorted(unknown)}; axes: {list(norm_axes)}"
                )
            bad = [n for n in norm_axes if n not in static_set and not numeric[n]]
            if bad:
                raise ValueError(
                    f"axes {bad} hold non-numbers, so they cannot be batched; make them static"
                )
        try:
            json.dumps(dict(meas.options), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"measurement options must be JSON values: {exc}") from exc
        _check_declared(meas, norm_axes, static)
        ordered_static = tuple(n for n in norm_axes if n in static_set)
        return cls(norm_axes, meas, ordered_static, dtype)

    @property
    def batched(self) -> tuple[str, ...]:
        return tuple(a for a in self.axes if a not in self.static)

    @property
    def batched_shape(self) -> tuple[int, ...]:
        return tuple(len(self.axes[a]) for a in self.batched)

    @property
    def n_configs(self) -> int:
        return math.prod(len(v) for v in self.axes.values())

    def config(self) -> dict:
        """The canonical, JSON-able description that identifies the sweep in a directory."""
        measure = {"name": self.measure.name, "options": dict(self.measure.options)}
        if self.measure.output_dims:
            measure["output_dims"] = {k: list(v) for k, v in self.measure.output_dims.items()}
        return {
            "format": FORMAT,
            "measure": measure,
            "axes": {k: list(v) for k, v in self.axes.items()},
            "static": list(self.static),
            "dtype": self.dtype,
        }

    def shapes(self) -> list[dict]:
        """The static combinations, in result order (row-major over the static axes)."""
        return [
            dict(zip(self.static, combo))
            for combo in itertools.product(*(self.axes[a] for a in self.static))
        ]

    def points(self) -> Iterator[dict]:
        """Every configuration as a plain dict of Python values, in result order (for loops)."""
        for shape in self.shapes():
            for combo in itertools.product(*(self.axes[a] for a in self.batched)):
                yield {a: (shape | dict(zip(self.batched, combo)))[a] for a in self.axes}

    def batched_values(self, index: np.ndarray) -> list[np.ndarray]:
        """Host arrays of the batched axes' values at flat batched indices ``index`` ``(m,)``."""
        multi = np.unravel_index(index, self.batched_shape) if self.batched else ()
        out = []
        for a, pos in zip(self.batched, multi):
            vals = self.axes[a]
            if all(isinstance(v, int) for v in vals):
                arr = np.asarray(vals, np.int32)
            else:
                arr = np.asarray(vals, self.dtype)
            out.append(arr[pos])
        return out


# ---------------------------------------------------------------------------------------------
# TOML


def _axis_spec(name: str, spec):
    if isinstance(spec, list):
        return spec
    if isinstance(spec, dict) and len(spec) == 1:
        ((kind, args),) = spec.items()
        args = args if isinstance(args, list) else [args]
        if kind == "range" and 1 <= len(args) <= 3:
            if not all(_of_kind(int, a) for a in args):
                raise TypeError(f"axis {name!r}: range takes integers, got {args!r}")
            return list(range(*args))
        if kind in ("linspace", "logspace") and len(args) == 3:
            if not (all(_of_kind(float, a) for a in args[:2]) and _of_kind(int, args[2])):
                raise TypeError(
                    f"axis {name!r}: {kind} takes [a, b, n] with numbers a, b and an integer n, "
                    f"got {args!r}"
                )
            space = np.linspace if kind == "linspace" else np.logspace
            return [float(v) for v in space(args[0], args[1], args[2])]
    raise ValueError(
        f"axis {name!r}: expected a list or one of {{range = [start, stop(, step)]}}, "
        f"{{linspace = [a, b, n]}}, {{logspace = [a, b, n]}}; got {spec!r}"
    )


def from_toml(path) -> tuple[Sweep, dict]:
    """Reads a sweep from a TOML file.

    Format::

        dtype = "float32"                 # optional
        static = ["depth"]                # optional override of the static axes

        [measure]
        name = "jacobian_spectrum"        # a MEASUREMENTS name or "package.module:function"
        # every other key is an option of the measurement

        [axes]                            # in result order
        depth = [10, 50]
        seed = { range = [0, 16] }        # also {linspace = [a, b, n]}, {logspace = [a, b, n]}
        sigma_w = { linspace = [0.5, 2.5, 9] }

        [run]                             # optional: how to run, not what (not part of identity)
        batch_size = 32                   # configurations vmapped per device per step
        memory_budget = "512MB"           # or this, to pick batch_size
        vmap_size = 1                     # optional: configurations vmapped at once per device

    Returns:
      ``(sweep, run_options)`` where ``run_options`` holds the ``[run]`` table for :func:`run`.

    Raises:
      ValueError: malformed file, unknown key, axis or option (the message names it).
      TypeError: a value of the wrong kind (a string for a number, a float for an integer …).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from exc
    unknown = set(doc) - {"dtype", "static", "measure", "axes", "run", "name", "description"}
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {sorted(unknown)}")
    if "measure" not in doc or "name" not in doc["measure"]:
        raise ValueError(f"{path}: needs a [measure] table with a name")
    if "axes" not in doc or not isinstance(doc["axes"], dict):
        raise ValueError(f"{path}: needs an [axes] table")
    options = {k: v for k, v in doc["measure"].items() if k != "name"}
    axes = {name: _axis_spec(name, spec) for name, spec in doc["axes"].items()}
    if not isinstance(doc.get("dtype", "float32"), str):
        raise TypeError(f"{path}: dtype takes a string, got {doc['dtype']!r}")
    sweep = Sweep.create(
        axes,
        doc["measure"]["name"],
        static=doc.get("static"),
        dtype=doc.get("dtype", "float32"),
        **options,
    )
    run_opts = dict(doc.get("run", {}))
    unknown = set(run_opts) - {"batch_size", "memory_budget", "vmap_size"}
    if unknown:
        raise ValueError(f"{path}: unknown keys in [run]: {sorted(unknown)}")
    for key in ("batch_size", "vmap_size"):
        if key in run_opts and not _of_kind(int, run_opts[key]):
            raise TypeError(f"{path}: [run] {key} takes an integer, got {run_opts[key]!r}")
    budget = run_opts.get("memory_budget", 1)
    if not (_of_kind(int, budget) or isinstance(budget, str)):
        raise TypeError(f"{path}: [run] memory_budget takes bytes or a string like '512MB'")
    return sweep, run_opts


def parse_bytes(value) -> int:
    """``1024``, ``"512MB"``, ``"2GiB"`` … -> bytes (decimal for kB/MB/GB, binary for KiB…)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0:
        return int(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9.]+)\s*([kKmMgGtT]i?)?[bB]?\s*", value)
        if m:
            unit = (m.group(2) or "").lower()
            base = 1024 if unit.endswith("i") else 1000
            power = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}[unit[:1]]
            n = int(float(m.group(1)) * base**power)
            if n > 0:
                return n
    raise ValueError(
        f"memory_budget must be a positive byte count like 512MB or 2GiB, got {value!r}"
    )
