"""Sweep results: :class:`LabelledArray` (values + dimension names + coordinates) and
:class:`SweepResult` (one labelled array per output of the measurement), with xarray/netCDF export.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gradflow import _io

__all__ = ["LabelledArray", "SweepResult"]


@dataclasses.dataclass(frozen=True)
class LabelledArray:
    """An array with named dimensions and, for the sweep's axes, coordinates.

    Attributes:
      values: NumPy array.
      dims: one name per dimension of ``values``; sweep axes first (in the sweep's axis order),
        then the measurement's own output dimensions (named by the measurement, or ``dim_0`` …).
      coords: axis name -> 1-D array of coordinate values, for the sweep axes among ``dims``.
    """

    values: np.ndarray
    dims: tuple[str, ...]
    coords: Mapping[str, np.ndarray]

    def __post_init__(self):
        if len(self.dims) != np.ndim(self.values):
            raise ValueError(f"dims {self.dims} do not match values of shape {self.values.shape}")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.values, dtype=dtype)

    def _axis(self, dim: str) -> int:
        if dim not in self.dims:
            raise ValueError(f"no dimension {dim!r}; dims are {self.dims}")
        return self.dims.index(dim)

    def isel(self, **indexers) -> LabelledArray:
        """Selects by integer position; an int drops the dimension, a list/slice keeps it."""
        values, dims, coords = self.values, list(self.dims), dict(self.coords)
        for dim, idx in indexers.items():
            ax = dims.index(dim) if dim in dims else self._axis(dim)
            sl = [slice(None)] * values.ndim
            sl[ax] = idx
            values = values[tuple(sl)]
            if isinstance(idx, (int, np.integer)):
                dims.pop(ax)
                coords.pop(dim, None)
            elif dim in coords:
                coords[dim] = np.asarray(coords[dim])[idx]
        return LabelledArray(values, tuple(dims), coords)

    def sel(self, **indexers) -> LabelledArray:
        """Selects by coordinate value (exact match): a scalar drops the dim, a list keeps it."""
        positions = {}
        for dim, value in indexers.items():
            if dim not in self.coords:
                raise ValueError(
                    f"no coordinates for {dim!r}; labelled dims are {tuple(self.coords)}"
                )
            coord = list(np.asarray(self.coords[dim]).tolist())

            def find(v, dim=dim, coord=coord):
                try:
                    return coord.index(v)
                except ValueError:
                    raise ValueError(f"{dim}={v!r} is not among {coord}") from None

            if isinstance(value, (list, tuple, np.ndarray)):
                positions[dim] = [find(v) for v in np.asarray(value).tolist()]
            else:
                positions[dim] = find(value)
        return self.isel(**positions)

    def reduce(self, func: Callable, dim: str) -> LabelledArray:
        """Applies ``func(values, axis=...)`` (e.g. ``np.median``) over ``dim``, dropping it."""
        ax = self._axis(dim)
        coords = {k: v for k, v in self.coords.items() if k != dim}
        return LabelledArray(
            np.asarray(func(self.values, axis=ax)), self.dims[:ax] + self.dims[ax + 1 :], coords
        )

    def to_xarray(self, name: str | None = None):
        """This array as an ``xarray.DataArray``: the same values (not copied), dims and coords.

        Needs the optional extra: ``pip install 'gradflow[xarray]'``.

        Args:
          name: the DataArray's name (None: unnamed).

        Returns:
          ``xarray.DataArray`` of shape :attr:`shape`, dims :attr:`dims`, with a coordinate for
          each labelled dim.

        Raises:
          ImportError: if xarray is not installed.
        """
        xr = _import_xarray()
        coords = {d: (d, np.asarray(c)) for d, c in self.coords.items() if d in self.dims}
        return xr.DataArray(self.values, dims=self.dims, coords=coords, name=name)


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """The outputs of a sweep, one labelled array per leaf of the measurement's output.

    Attributes:
      config: the sweep's canonical config (see :meth:`Sweep.config`).
      blocks: one dict per static combination (in :meth:`Sweep.shapes` order) mapping output name
        -> array ``(*batched_shape, *output_shape)``; entries missing from a partial sweep are
        NaN-filled.
      manifest: the run's manifest (config, versions, devices, per-combination layout, chunks,
        sessions, wall time); written to ``out_dir/manifest.json`` unless the sweep ran in memory.
    """

    config: Mapping[str, Any]
    blocks: tuple[Mapping[str, np.ndarray], ...]
    manifest: Mapping[str, Any] | None = None

    @property
    def axes(self) -> dict[str, tuple]:
        return {k: tuple(v) for k, v in self.config["axes"].items()}

    @property
    def static(self) -> tuple[str, ...]:
        return tuple(self.config["static"])

    @property
    def batched(self) -> tuple[str, ...]:
        return tuple(a for a in self.axes if a not in self.static)

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the measurement's outputs (leaf paths joined by ``/``)."""
        return tuple(self.blocks[0]) if self.blocks else ()

    def _trailing_dims(self, name: str, ndim: int) -> tuple[str, ...]:
        given = tuple(self.config["measure"].get("output_dims", {}).get(name, ()))
        return given[:ndim] + tuple(f"dim_{i}" for i in range(len(given), ndim))

    def block(self, name: str, **static) -> LabelledArray:
        """Output ``name`` for one static combination (every static axis given by value).

        Returns:
          :class:`LabelledArray` with dims ``(*batched axes, *output dims)``.
        """
        axes = self.axes
        missing = [a for a in self.static if a not in static]
        extra = [a for a in static if a not in self.static]
        if missing or extra:
            raise ValueError(
                f"block needs exactly the static axes {self.static} by value; "
                f"missing {missing}, unexpected {extra}"
            )
        index = 0
        for a in self.static:
            values = list(axes[a])
            if static[a] not in values:
                raise ValueError(f"{a}={static[a]!r} is not among {values}")
            index = index * len(values) + values.index(static[a])
        arr = self._get_block(index, name)
        nb = len(self.batched)
        dims = self.batched + self._trailing_dims(name, arr.ndim - nb)
        return LabelledArray(arr, dims, {a: np.asarray(axes[a]) for a in self.batched})

    def _get_block(self, index: int, name: str) -> np.ndarray:
        if name not in self.blocks[index]:
            raise KeyError(f"no output {name!r}; outputs are {self.names}")
        return self.blocks[index][name]

    def __getitem__(self, name: str) -> LabelledArray:
        """Output ``name`` over the whole grid, dims in the sweep's axis order then output dims.

        Where the output's shape differs between static combinations (e.g. per-layer norms at
        several depths) the arrays are NaN-padded at the end to the largest shape.
        """
        arrays = [self._get_block(i, name) for i in range(len(self.blocks))]
        nb = len(self.batched)
        ndim = arrays[0].ndim
        if any(a.ndim != ndim for a in arrays):
            raise ValueError(f"output {name!r} has a different rank at different static values")
        target = tuple(max(a.shape[d] for a in arrays) for d in range(ndim))
        if any(a.shape != target for a in arrays):
            arrays = [_nan_pad(a, target) for a in arrays]
        axes = self.axes
        static_shape = tuple(len(axes[a]) for a in self.static)
        stacked = np.stack(arrays).reshape(static_shape + target)
        # Reorder from (static…, batched…, out…) to the sweep's own axis order.
        current = self.static + self.batched
        order = [current.index(a) for a in axes] + list(range(len(current), stacked.ndim))
        dims = tuple(axes) + self._trailing_dims(name, ndim - nb)
        coords = {a: np.asarray(axes[a]) for a in axes}
        return LabelledArray(np.transpose(stacked, order), dims, coords)

    def to_xarray(self):
        """The whole sweep as an ``xarray.Dataset``: one variable per output, over every axis.

        Each variable is ``self[name]``: dims in the sweep's axis order (static and batched
        axes alike, each a coordinate holding the axis values), then the output's own dims.
        Outputs whose shape changes with a static axis are NaN-padded at the end, as
        :meth:`__getitem__` does. Output dims named by the measurement (``output_dims``, e.g.
        ``layer``) are shared between the variables that name them, and a variable shorter
        along one is NaN-padded at the end too (``layer_grad_norms`` has depth + 1 entries,
        ``state_grad_norms`` depth); unnamed ones become ``<name>_dim_0`` … so that unrelated
        outputs do not have to agree in length. Padding makes integer and bool outputs float64.

        The attribute ``gradflow_config`` holds :attr:`config` as JSON, and
        ``gradflow_complete`` (1 or 0) whether the sweep had finished, when a manifest is known.
        The npz store stays the resumable source of truth; this is an export.

        Needs the optional extra: ``pip install 'gradflow[xarray]'``.

        Returns:
          ``xarray.Dataset``.

        Raises:
          ImportError: if xarray is not installed.
          ValueError: if an output is named like an axis, or an output dim repeats an axis.
        """
        xr = _import_xarray()
        given = self.config["measure"].get("output_dims", {})
        axes = self.axes
        variables, sizes = {}, {}
        for name in self.names:
            values = self[name].values
            n_out = values.ndim - len(axes)
            named = tuple(given.get(name, ()))[:n_out]
            dims = tuple(axes) + named + tuple(f"{name}_dim_{i}" for i in range(len(named), n_out))
            if name in axes or len(set(dims)) != len(dims):
                raise ValueError(
                    f"output {name!r} with dims {dims} clashes with the sweep axes {tuple(axes)}"
                )
            variables[name] = (dims, values)
            for d, n in zip(dims, values.shape):
                sizes[d] = max(sizes.get(d, 0), n)
        data = {}
        for name, (dims, values) in variables.items():
            target = tuple(sizes[d] for d in dims)
            data[name] = (dims, values if values.shape == target else _nan_pad(values, target))
        attrs = {"gradflow_config": json.dumps(self.config, sort_keys=True)}
        if self.manifest is not None:
            attrs["gradflow_complete"] = int(bool(self.manifest.get("complete", False)))
        coords = {a: (a, np.asarray(v)) for a, v in axes.items()}
        return xr.Dataset(data, coords=coords, attrs=attrs)

    def to_netcdf(self, path) -> Path:
        """Writes :meth:`to_xarray` to a netCDF file (netCDF3, through SciPy), atomically.

        netCDF3 has no 64-bit or unsigned integers, so an integer variable or coordinate of
        another type than int8/int16/int32 (``seed``, ``depth`` … are int64 in memory) is
        written as int32 when every value fits, else as float64 when every value is exact there
        (|v| ≤ 2**53), else refused; such a variable carries the attribute
        ``gradflow_dtype`` (e.g. ``"int64"``) naming the type it had. Read back with
        ``xarray.open_dataset(path)``: floats come back bitwise equal, bools as bools, strings
        as Python ``str`` (object arrays), those integers as int32 / float64.

        Args:
          path: the file to write (its directory is created).

        Returns:
          the path written, as a :class:`~pathlib.Path`.

        Raises:
          ImportError: if xarray is not installed.
          ValueError: as :meth:`to_xarray`, or an integer beyond ±2**53.
        """
        ds = _netcdf3_integers(self.to_xarray())
        path = Path(path)
        data = bytes(ds.to_netcdf(engine="scipy"))  # in memory first: the file is all or nothing
        _io.atomic_write(path, lambda f: f.write(data))
        return path


def _nan_pad(a: np.ndarray, shape) -> np.ndarray:
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    out = np.full(shape, np.nan, a.dtype)
    out[tuple(slice(0, s) for s in a.shape)] = a
    return out


# ---------------------------------------------------------------------------------------------
# Interoperability (xarray, netCDF)


def _import_xarray():
    try:
        import xarray
    except ImportError as exc:  # pragma: no cover - the extra is installed in CI
        raise ImportError(
            "to_xarray/to_netcdf need xarray: pip install 'gradflow[xarray]'"
        ) from exc
    return xarray


_NETCDF3_INTS = (np.int8, np.int16, np.int32)


def _netcdf3_integers(ds):
    """Casts the integers netCDF3 cannot hold (int64, unsigned) to int32 or, if needed, float64."""
    for name in list(ds.variables):
        values = ds[name].values
        if not np.issubdtype(values.dtype, np.integer) or values.dtype in _NETCDF3_INTS:
            continue
        info = np.iinfo(np.int32)
        lo, hi = (int(values.min()), int(values.max())) if values.size else (0, 0)
        if info.min <= lo and hi <= info.max:
            cast = values.astype(np.int32)
        elif max(-lo, hi) <= 2**53:  # every integer up to 2**53 is exact in float64
            cast = values.astype(np.float64)
        else:
            raise ValueError(
                f"{name!r} holds integers beyond ±2**53 ({lo} … {hi}), which netCDF3 (int32, "
                "float64) cannot store exactly"
            )
        var = (ds[name].dims, cast, {**ds[name].attrs, "gradflow_dtype": str(values.dtype)})
        if name in ds.coords:
            ds = ds.assign_coords({name: var})
        else:
            ds = ds.assign({name: var})
    return ds
