"""Sweeps: a measurement over a grid of configurations, jit + vmap + sharded, chunked and resumable.

A sweep is a set of named axes with their values (``seed``, ``sigma_w``, ``depth``, ``activation``
…) and a *measurement*, a function ``measure(point) -> pytree of arrays`` of one configuration
``point`` (a dict axis name -> value). The axes split in two:

- **static** axes change shapes or code (``depth``, ``width``, ``activation``, ``init``): the sweep
  loops over their combinations in Python and compiles the measurement once per combination;
- **batched** axes are numbers that change no shape (``seed``, ``sigma_w``, ``sigma_b``,
  ``init_scale``, ``init_mean``): all their combinations are flattened into one batch, vmapped
  inside one ``jit``, split over every device with ``jax.shard_map`` and cut into chunks that fit
  a memory budget. Inside the measurement they are 0-d traced arrays.

Every chunk is written atomically (write to a temporary name, then rename) to ``out_dir/chunks/``
and recorded in ``out_dir/manifest.json`` (config, gradflow/JAX versions, devices, wall time), so a
sweep killed at any point resumes where it stopped: finished chunks are never recomputed, and a
different config in the same directory raises ``ValueError`` instead of mixing results.

Results are :class:`LabelledArray` s (values + dimension names + coordinates), one per leaf of the
measurement's output; :func:`load` reads a finished (or partial) directory back.

Reproducibility: a configuration's numbers depend only on the configuration and on how many
configurations are vmapped together on one device (``batch_size``, or ``vmap_size`` when set; XLA
may pick different kernels for different batch sizes). With the same ``batch_size``, 1 and 8
devices give bitwise-identical results (tested in float64). ``memory_budget`` picks
``batch_size`` from a compiled memory estimate and caps it at what the grid needs on the
available devices, so pass ``batch_size`` explicitly when bitwise equality across machines with
different device counts matters.

Testing sharding on one CPU: ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` gives 8 CPU
devices, which is how the tests check that 1 and 8 devices agree. It is for testing only: on a
2-core machine, XLA's CPU SVD ran about 10× slower in such a process (measured: 128 SVDs of
128 × 128 took 8–20 s instead of ~1 s, even on one device), and a sweep with 16 such SVDs per
device did not finish in 400 s. Keep per-device batches of spectra small there, or use real
devices.

Multi-host
----------
Sweeps scale out on JAX's own machinery, not on a scheduler of their own. Start the same script
on every host after ``jax.distributed.initialize`` (on Cloud TPU, Slurm and Open MPI clusters it
takes its arguments from the environment; elsewhere pass ``coordinator_address``,
``num_processes`` and ``process_id``)::

    import jax
    jax.distributed.initialize()          # before any other JAX call
    import gradflow as gf
    sweep, run_options = gf.sweep.from_toml("examples/jacobian_spectrum.toml")
    gf.sweep.run(sweep, "/shared/results/spectra", **run_options)

``jax.devices()`` then lists every device of every host, the mesh spans all of them, each host
feeds only its own devices' slice of every chunk (``jax.make_array_from_callback``) and the
results are gathered with ``multihost_utils.process_allgather``. Only process 0 writes, so
``out_dir`` should be on a filesystem every host can read (process 0 creates or checks the store
before the others read it, and its view of which chunks are finished is broadcast to them). The
same command resumes a multi-host sweep, on any number of hosts.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import importlib
import itertools
import json
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
import time
import tomllib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gradflow import _checks

__all__ = [
    "DEFAULT_STATIC",
    "MEASUREMENTS",
    "LabelledArray",
    "Measurement",
    "Sweep",
    "SweepResult",
    "from_toml",
    "load",
    "measurement",
    "mlp_from_point",
    "parse_bytes",
    "run",
    "clear_cache",
]

FORMAT = 1
MESH_AXIS = "configs"
MANIFEST = "manifest.json"
CHUNKS = "chunks"
RESULTS = "results.npz"
DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes per device for one chunk's working set

# Axis names that change shapes or code unless a sweep says otherwise; any axis with a
# non-numeric value (a string, a bool) is static too.
DEFAULT_STATIC = frozenset(
    {"depth", "width", "activation", "init", "norm", "residual", "batch", "input_dim", "steps", "k"}
)
_DTYPES = ("float32", "float64")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# ---------------------------------------------------------------------------------------------
# Labelled arrays and results


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
        _atomic_write(path, lambda f: f.write(data))
        return path


def _nan_pad(a: np.ndarray, shape) -> np.ndarray:
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    out = np.full(shape, np.nan, a.dtype)
    out[tuple(slice(0, s) for s in a.shape)] = a
    return out


# ---------------------------------------------------------------------------------------------
# Measurements


@dataclasses.dataclass(frozen=True)
class Measurement:
    """A measurement of one configuration.

    Attributes:
      fn: ``fn(point, **options) -> pytree of arrays``; ``point`` maps every axis name to its value
        (Python values for static axes, 0-d traced arrays for batched ones).
      name: identifies the measurement in the manifest (a registry name or ``module:qualname``).
      options: keyword options for ``fn``; part of the sweep's identity, so JSON values only.
      static_axes: axis names that change shapes or code for this measurement.
      output_dims: output name -> names of its trailing dimensions (optional).
    """

    fn: Callable[..., Any]
    name: str
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    static_axes: frozenset = DEFAULT_STATIC
    output_dims: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    def __call__(self, point: Mapping[str, Any]):
        return self.fn(point, **self.options)


def measurement(fn_or_name, /, **options) -> Measurement:
    """A :class:`Measurement` from a registry name, a ``"module:function"`` path or a callable.

    Args:
      fn_or_name: a key of :data:`MEASUREMENTS`, ``"package.module:function"`` (imported), a
        callable ``fn(point, **options)``, or a :class:`Measurement` (options are merged).
      **options: keyword options passed to the function on every call (JSON values).

    Raises:
      ValueError: unknown name or non-JSON options. TypeError: not a name or callable.
    """
    if isinstance(fn_or_name, Measurement):
        return dataclasses.replace(fn_or_name, options={**fn_or_name.options, **options})
    if isinstance(fn_or_name, str):
        if fn_or_name in MEASUREMENTS:
            base = MEASUREMENTS[fn_or_name]
            return dataclasses.replace(base, options={**base.options, **options})
        if ":" not in fn_or_name:
            raise ValueError(
                f"unknown measurement {fn_or_name!r}; expected one of {', '.join(MEASUREMENTS)} "
                "or 'package.module:function'"
            )
        module, _, attr = fn_or_name.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot import measurement {fn_or_name!r}: {exc}") from exc
        if isinstance(fn, Measurement):
            return measurement(fn, **options)
        return measurement(fn, **options)
    if not callable(fn_or_name):
        raise TypeError(
            f"measure must be a measurement name or a callable, got {type(fn_or_name).__name__}"
        )
    name = f"{getattr(fn_or_name, '__module__', '?')}:{getattr(fn_or_name, '__qualname__', '?')}"
    return Measurement(fn_or_name, name, dict(options))


# Built-in measurements on gradflow's MLP. Their points use these axes (defaults in brackets):
# depth, width, activation ["tanh"], init ["gaussian"], seed [0], sigma_w [1] (gaussian only),
# init_scale [1], init_mean [0], sigma_b [0].

_INITS = (
    "gaussian",
    "glorot",
    "glorot_normal",
    "he",
    "lecun",
    "kumar",
    "yilmaz_poli",
    "orthogonal",
)


def _base_init(name: str, activation):
    from gradflow import init as _init

    if name in ("gaussian", "lecun"):
        return _init.lecun()
    if name == "glorot":
        return _init.glorot()
    if name == "glorot_normal":
        return _init.glorot("normal")
    if name == "he":
        return _init.he()
    if name == "kumar":
        return _init.kumar(activation)
    if name == "yilmaz_poli":
        return _init.yilmaz_poli()
    if name == "orthogonal":
        return _init.orthogonal()
    raise ValueError(f"init must be one of {', '.join(_INITS)}, got {name!r}")


def mlp_from_point(point: Mapping[str, Any], **mlp_kwargs):
    """The gradflow MLP a sweep point describes; its scales may be traced (batched) values.

    Kernels are ``init_scale · σ_w · W₀ + init_mean / fan_in`` with W₀ drawn by the ``init``
    initialiser (``"gaussian"`` is N(0, 1/fan_in), so with σ_w it is N(0, σ_w²/fan_in), the
    mean-field parametrisation); ``init_mean`` is the mean *times the fan-in*, so −8 is Yilmaz &
    Poli's mean −8/N. Biases are N(0, σ_b²).

    Args:
      point: dict with ``depth`` and ``width`` (static ints) and optionally ``activation``,
        ``init``, ``sigma_w`` (``init="gaussian"`` only), ``init_scale``, ``init_mean``,
        ``sigma_b`` (numbers or 0-d arrays).
      **mlp_kwargs: further :class:`gradflow.models.MLP` fields (``residual``, ``norm`` …).

    Returns:
      The :class:`gradflow.models.MLP`.

    Raises:
      ValueError: missing depth/width, an unknown init, or ``sigma_w`` with another init.
    """
    from gradflow import activations as _act
    from gradflow import init as _init
    from gradflow import models

    for k in ("depth", "width"):
        if k not in point:
            raise ValueError(f"the sweep point needs a {k!r} axis (or option), got {sorted(point)}")
    activation = point.get("activation", "tanh")
    name = point.get("init", "gaussian")
    if "sigma_w" in point and name != "gaussian":
        raise ValueError(
            f"axis sigma_w applies to init='gaussian' only (got init={name!r}); "
            "use init_scale to rescale another initialiser"
        )
    base = _base_init(name, _act.get(activation))
    scale = point.get("sigma_w", 1.0) * point.get("init_scale", 1.0)
    mean = point.get("init_mean", 0.0)
    sigma_b = point.get("sigma_b", 0.0)

    def kernel_init(key, shape, dtype=jnp.float32):
        fan_in = _init._fan_in(shape)
        return (scale * base(key, shape, dtype) + mean / fan_in).astype(dtype)

    def bias_init(key, shape, dtype=jnp.float32):
        return (sigma_b * jax.random.normal(key, shape, dtype)).astype(dtype)

    return models.MLP(
        width=int(point["width"]),
        depth=int(point["depth"]),
        activation=activation,
        kernel_init=kernel_init,
        bias_init=bias_init,
        **mlp_kwargs,
    )


def _keys(point):
    key = jax.random.key(point.get("seed", 0))
    return jax.random.split(key, 3)


def _input(key, point, batch=None):
    dtype = _checks.default_float()
    d = int(point["width"])
    shape = (d,) if batch is None else (batch, d)
    return jax.random.normal(key, shape, dtype)


def jacobian_spectrum(point, *, residual: bool = False):
    """Singular values of ∂h_depth/∂h_1 and the norms of every backward product, for one input.

    Input x ~ N(0, I_width); the chain is the MLP's ``depth − 1`` hidden-to-hidden maps.

    Returns:
      dict with ``log_singular_values`` ``(width,)`` (natural log, descending) and ``log_norm``
      ``(depth − 1,)``, log ‖∂h_depth/∂h_k‖_F for k = 1 … depth − 1.
    """
    from gradflow import jacobians

    kp, kx, _ = _keys(point)
    model = mlp_from_point(point, residual=residual)
    x = _input(kx, point)
    params = model.init(kp, x)
    products = jacobians.backward_products(model.chain(params, x))
    # Only the full product's SVD: the others would cost (depth − 2) more SVDs for nothing.
    s = jnp.linalg.svd(products.unit[0], compute_uv=False)
    return {"log_singular_values": jnp.log(s) + products.log_norm[0], "log_norm": products.log_norm}


def _mse_data(model, kx, ky, batch):
    x = _input(kx, {"width": model.width}, batch)
    y = jax.random.normal(ky, (batch, model.out_features), x.dtype)
    return x, y


def _mse(readout, h, y):
    z = h @ readout["kernel"]
    return jnp.mean((z + jnp.broadcast_to(readout["bias"], z.shape) - y) ** 2)


def _mse_grad_norms(model, params, kx, ky, batch):
    """Per-layer gradient norms of the MSE loss, input layer first, readout last, in log form.

    By the renormalised reverse pass along the whole network (``chain_grad_norms``): at depth a
    sigmoid net's float32 ``jax.grad`` is exactly 0 for most layers, its log-norm is not.
    """
    from gradflow import gradients

    x, y = _mse_data(model, kx, ky, batch)
    loss = functools.partial(_mse, y=y)
    readout = params["params"]["readout"]
    chain = model.full_chain(params, x)
    norms = gradients.chain_grad_norms(chain, loss, head_params=readout, head_name="readout")
    return norms, x


def _log10_first_over_last(norms):
    # A difference of logs: the ratio of plain norms would be 0/0 once both underflow.
    return norms.log10[0] - norms.log10[-2]


def layer_grad_norms(point, *, batch: int = 16, residual: bool = False):
    """Per-layer gradient norms of a mean-squared-error loss at initialisation.

    Data x ~ N(0, I_width) (``batch`` rows), targets y ~ N(0, 1).

    Returns:
      dict with ``layer_grad_norms`` ``(depth + 1,)`` (input layer first, readout last) and
      ``log10_first_over_last``: log10 of first over last *hidden* layer's gradient norm.
    """
    kp, kx, ky = _keys(point)
    model = mlp_from_point(point, residual=residual)
    params = model.init(kp, jnp.zeros((int(point["width"]),), _checks.default_float()))
    norms, _ = _mse_grad_norms(model, params, kx, ky, batch)
    return {
        "layer_grad_norms": norms.values,
        "log10_first_over_last": _log10_first_over_last(norms),
    }


def top_lyapunov(jacobians_or_chain, key):
    """Top Lyapunov exponent along a chain, in nats per step (mean log growth of one vector).

    Uses :func:`gradflow.lyapunov.lyapunov_spectrum` with k = 1 when that module is present;
    otherwise the same one-vector Benettin iteration here: v ← J_k v / ‖J_k v‖ in a ``lax.scan``
    (by Jacobian-vector products on a chain), averaging log ‖J_k v‖.

    Args:
      jacobians_or_chain: step Jacobians ``(K, n, n)`` or a :class:`~gradflow.chain.Chain`.
      key: ``jax.random`` key for the initial vector.

    Returns:
      Scalar, nats per step.
    """
    try:
        from gradflow import lyapunov
    except ImportError:  # pragma: no cover - lyapunov.py is optional
        lyapunov = None
    if lyapunov is not None:
        return lyapunov.lyapunov_spectrum(jacobians_or_chain, k=1, key=key)[0]
    from gradflow.chain import Chain, flat_step

    if isinstance(jacobians_or_chain, Chain):
        chain = jacobians_or_chain
        h0, f = flat_step(chain)
        xs, length = chain.per_step(), chain.length

        def advance(h, s, v):
            return jax.jvp(lambda x: f(x, s), (h,), (v,))

    else:
        jac = jnp.asarray(jacobians_or_chain)
        h0, xs, length = jnp.zeros((), jac.dtype), jac, jac.shape[0]
        advance = lambda h, j, v: (h, j @ v)
    n = jacobians_or_chain.state_size if isinstance(jacobians_or_chain, Chain) else jac.shape[-1]
    v0 = jax.random.normal(key, (n,), h0.dtype)
    v0 = v0 / jnp.linalg.norm(v0)

    def body(carry, s):
        h, v = carry
        h_next, jv = advance(h, s, v)
        norm = jnp.linalg.norm(jv)
        return (h_next, jv / norm), jnp.log(norm)

    _, logs = jax.lax.scan(body, (h0, v0), xs, length=length)
    return jnp.mean(logs)


def gradient_diagnostics(point, *, batch: int = 16, residual: bool = False):
    """Everything the initialisation study needs about one network, from one set of parameters.

    Mean-squared error of the readout on ``batch`` rows x ~ N(0, I_width), y ~ N(0, 1).

    Returns:
      dict with

      - ``layer_grad_norms`` ``(depth + 1,)``: ‖∂L/∂θ_l‖, input layer first, readout last;
      - ``log10_first_over_last``: log10 of the first over the last hidden layer's entry;
      - ``state_grad_norms`` ``(depth,)``: ‖∂L/∂h_l‖ for the hidden states h_1 … h_depth (the
        back-propagated error signal, without the activations that weight gradients multiply in);
      - ``log10_state_first_over_last``: log10 ‖∂L/∂h_1‖ / ‖∂L/∂h_depth‖;
      - ``lyapunov``: the top Lyapunov exponent across depth (nats per layer) of the chain of
        hidden-layer Jacobians at the first input row;
      - ``chi1_empirical``: mean over those layers of ‖J_k‖_F²/width, the finite-width estimate
        of the mean-field χ₁ = σ_w² E[φ'(z)²] (which it equals for zero-mean weights).
    """
    from gradflow import gradients, jacobians

    if int(point["depth"]) < 2:
        raise ValueError(f"gradient_diagnostics needs depth >= 2, got {point['depth']}")
    kp, kx, ky = _keys(point)
    model = mlp_from_point(point, residual=residual)
    params = model.init(kp, jnp.zeros((int(point["width"]),), _checks.default_float()))
    norms, x = _mse_grad_norms(model, params, kx, ky, batch)
    _, y = _mse_data(model, kx, ky, batch)
    readout = params["params"]["readout"]
    states = gradients.state_grad_norms(
        model.chain(params, x), functools.partial(_mse, readout, y=y), log10=True
    )
    jac = jacobians.step_jacobians(model.chain(params, x[0]))
    chi1 = jnp.mean(jnp.sum(jac**2, axis=(1, 2))) / jac.shape[-1]
    return {
        "layer_grad_norms": norms.values,
        "log10_first_over_last": _log10_first_over_last(norms),
        "state_grad_norms": jnp.power(10.0, states),
        # A difference of logs: finite where the norms themselves underflow.
        "log10_state_first_over_last": states[0] - states[-1],
        "lyapunov": top_lyapunov(jac, jax.random.fold_in(ky, 1)),
        "chi1_empirical": chi1,
    }


def lyapunov_exponent(point, *, residual: bool = False):
    """Top Lyapunov exponent of the MLP's hidden chain for one input x ~ N(0, I) (see
    :func:`top_lyapunov`). Returns ``{"lyapunov": scalar}``."""
    kp, kx, kv = _keys(point)
    model = mlp_from_point(point, residual=residual)
    x = _input(kx, point)
    params = model.init(kp, x)
    return {"lyapunov": top_lyapunov(model.chain(params, x), kv)}


MEASUREMENTS: dict[str, Measurement] = {
    "jacobian_spectrum": Measurement(
        jacobian_spectrum,
        "jacobian_spectrum",
        output_dims={"log_singular_values": ("singular_value",), "log_norm": ("layer",)},
    ),
    "layer_grad_norms": Measurement(
        layer_grad_norms, "layer_grad_norms", output_dims={"layer_grad_norms": ("layer",)}
    ),
    "gradient_diagnostics": Measurement(
        gradient_diagnostics,
        "gradient_diagnostics",
        output_dims={"layer_grad_norms": ("layer",), "state_grad_norms": ("layer",)},
    ),
    "lyapunov": Measurement(lyapunov_exponent, "lyapunov"),
}


# ---------------------------------------------------------------------------------------------
# The grid


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
        if kind == "range":
            return list(range(*[int(a) for a in args]))
        if kind == "linspace" and len(args) == 3:
            return [float(v) for v in np.linspace(args[0], args[1], int(args[2]))]
        if kind == "logspace" and len(args) == 3:
            return [float(v) for v in np.logspace(args[0], args[1], int(args[2]))]
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
      ValueError: malformed file (the message names the key).
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


# ---------------------------------------------------------------------------------------------
# Store


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _atomic_write(path: Path, write: Callable) -> None:
    """Writes through a temporary file in the same directory, then renames: never a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_json(path: Path, data) -> None:
    _atomic_write(path, lambda f: f.write(json.dumps(data, indent=1, allow_nan=True).encode()))


def _write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    _atomic_write(path, lambda f: np.savez(f, **arrays))


def _chunk_id(shape: int, chunk: int) -> str:
    return f"s{shape:04d}-c{chunk:06d}"


def _versions() -> dict:
    import jaxlib

    from gradflow._version import __version__

    return {
        "gradflow": __version__,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _device_info(devices) -> dict:
    return {
        "count": len(devices),
        "kind": devices[0].device_kind,
        "platform": devices[0].platform,
        "process_count": jax.process_count(),
    }


def _config_hash(config) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _diff(stored: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(stored) | set(new), key=str):
        a, b = stored.get(k, "<absent>"), new.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: stored {a!r}, now {b!r}")
    return out


def _open_store(out_dir: Path | None, sweep: Sweep) -> dict:
    """Reads or creates the manifest; raises ValueError if the directory holds another sweep.

    An in-memory sweep (``out_dir=None``) gets a fresh manifest that is never written.
    """
    config = sweep.config()
    path = None if out_dir is None else out_dir / MANIFEST
    if path is not None and path.exists():
        manifest = json.loads(path.read_text())
        if manifest.get("config_sha256") != _config_hash(config):
            diffs = _diff(manifest.get("config", {}), config)
            raise ValueError(
                f"out_dir {out_dir} holds a different sweep ({'; '.join(diffs[:5]) or 'config'}); "
                "use a new directory, or delete this one to start over"
            )
        return manifest
    if out_dir is not None and (out_dir / CHUNKS).exists():
        raise ValueError(f"out_dir {out_dir} has a {CHUNKS}/ folder but no {MANIFEST}; not a sweep")
    return {
        "format": FORMAT,
        "config": config,
        "config_sha256": _config_hash(config),
        "n_configs": sweep.n_configs,
        "versions": _versions(),
        "created": _now(),
        "updated": _now(),
        "complete": False,
        "wall_s": 0.0,
        "device": None,
        "shapes": {},
        "chunks": {},
        "sessions": [],
    }


# ---------------------------------------------------------------------------------------------
# Running


class _Progress:
    """One status line on stderr: chunks done/total, configurations per second, ETA."""

    def __init__(self, n_configs: int, n_chunks: int | None, stream=None, quiet: bool = False):
        self.total = n_configs
        self.total_chunks = n_chunks  # None while some combination's layout is not yet chosen
        self.chunks = 0
        self.done = 0
        self.computed = 0
        self.stream = sys.stderr if stream is None else stream
        self.quiet = quiet
        self.t0 = time.perf_counter()
        self.last = 0.0
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def update(self, n: int, computed: bool, text: str, final: bool = False):
        self.chunks += 1 if n else 0
        self.done += n
        self.computed += n if computed else 0
        if self.quiet:
            return
        now = time.perf_counter()
        if not (final or self.tty or now - self.last >= 2.0):
            return  # plain logs get a line every 2 s, not one per chunk
        self.last = now
        elapsed = now - self.t0
        rate = self.computed / elapsed if elapsed > 0 else 0.0
        remaining = self.total - self.done
        eta = "--:--:--" if rate == 0 else str(datetime.timedelta(seconds=round(remaining / rate)))
        chunks = f"{self.chunks}/{self.total_chunks if self.total_chunks else '?'}"
        line = (
            f"[sweep] {text} | chunks {chunks} | configs {self.done}/{self.total} | "
            f"{rate:8.1f} configs/s | ETA {eta}"
        )
        end = "\n" if (final or not self.tty) else ""
        self.stream.write(("\r\x1b[K" if self.tty else "") + line + end)
        self.stream.flush()


def _shape_function(sweep: Sweep, static: dict, mesh: Mesh | None, vmap_size: int | None = None):
    """The jitted measurement of a batch of configurations of one static combination.

    ``f(index, *batched_values)``: ``index`` (int32, the flat config index; only there so that a
    grid without batched axes still has an axis to map) and one 1-D array per batched axis. Each
    device vmaps its whole slice, or with ``vmap_size`` maps over it ``vmap_size`` at a time
    (``lax.map``: a loop inside the program, vmapped within each step).
    """
    names = sweep.batched
    measure = sweep.measure

    def one(index, *values):
        point = dict(static)
        point.update(zip(names, values))
        return measure({a: point[a] for a in sweep.axes})

    if vmap_size is None:
        batched = jax.vmap(one)
    else:

        def batched(*xs):
            size = None if vmap_size == 1 else vmap_size
            return jax.lax.map(lambda a: one(*a), xs, batch_size=size)

    if mesh is None:
        return jax.jit(batched)
    spec = P(MESH_AXIS)
    # check_vma=False: measurements scan (chains, Lyapunov QR) and a scan's carry inside shard_map
    # would otherwise need jax.lax.pcast(..., to="varying") in every user function. Each device
    # maps its own slice; no collective is involved, so the check guards nothing here.
    sharded = jax.shard_map(
        batched,
        mesh=mesh,
        in_specs=(spec,) * (1 + len(names)),
        out_specs=spec,
        check_vma=False,
    )
    return jax.jit(sharded)


def _arg_specs(sweep: Sweep, n: int, sharding=None):
    specs = [jax.ShapeDtypeStruct((n,), jnp.int32, sharding=sharding)]
    for v in sweep.batched_values(np.zeros(1, np.int64)):
        specs.append(jax.ShapeDtypeStruct((n,), v.dtype, sharding=sharding))
    return specs


# Compiled programs, so that running the same sweep again in this process (a notebook, a
# benchmark, a resumed in-memory run) does not compile again. Keyed by everything the program
# depends on; the measurement function is held in the value so that its id cannot be reused.
_CACHE: OrderedDict[tuple, tuple[Any, Any]] = OrderedDict()
_CACHE_SIZE = 64
_CACHE_LOCK = threading.Lock()


def clear_cache() -> None:
    """Forgets every compiled sweep program (see :func:`run`)."""
    with _CACHE_LOCK:
        _CACHE.clear()


class _Exec(NamedTuple):
    """How to compile: XLA options and the vectorisation width (see :func:`run`)."""

    compiler_options: Mapping[str, Any] | None = None
    vmap_size: int | None = None


def _cached_compile(kind: str, sweep: Sweep, static: dict, n: int, mesh, sharding, ex: _Exec):
    """The compiled program (and a memo dict stored with it) for ``n`` configurations."""
    key = (
        kind,
        id(sweep.measure.fn),
        json.dumps(dict(sweep.measure.options), sort_keys=True),
        tuple(sweep.axes),
        tuple(static.items()),
        tuple(str(v.dtype) for v in sweep.batched_values(np.zeros(1, np.int64))),
        n,
        None if mesh is None else tuple(d.id for d in mesh.devices.flat),
        jax.config.jax_enable_x64,
        str(jax.config.jax_default_matmul_precision),
        json.dumps(dict(ex.compiler_options or {}), sort_keys=True),
        ex.vmap_size,
    )
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None and hit[0] is sweep.measure.fn:
            _CACHE.move_to_end(key)
            return hit[1], hit[2]
    vmap_size = (
        None if ex.vmap_size is None or ex.vmap_size >= n // max(1, _n_dev(mesh)) else ex.vmap_size
    )
    lowered = _shape_function(sweep, static, mesh, vmap_size).lower(*_arg_specs(sweep, n, sharding))
    compiled = lowered.compile(compiler_options=ex.compiler_options)
    with _CACHE_LOCK:
        _CACHE[key] = (sweep.measure.fn, compiled, {})
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
        return compiled, _CACHE[key][2]


def _n_dev(mesh) -> int:
    return 1 if mesh is None else mesh.devices.size


def _per_config_bytes(sweep: Sweep, static: dict, ex: _Exec) -> int | None:
    """Peak bytes of one configuration: XLA's memory analysis of the single-config program."""
    compiled, memo = _cached_compile(
        "estimate", sweep, static, 1, None, None, ex._replace(vmap_size=None)
    )
    if "bytes" not in memo:  # memory_analysis() itself takes tens of ms: ask once
        stats = compiled.memory_analysis()
        memo["bytes"] = (
            None  # some backends do not report
            if stats is None
            else int(stats.temp_size_in_bytes + stats.argument_size_in_bytes)
            + int(stats.output_size_in_bytes)
        )
    return memo["bytes"]


def _flatten(tree) -> dict[str, Any]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    if len(leaves) == 1 and not leaves[0][0]:
        return {"value": leaves[0][1]}
    out = {}
    for path, leaf in leaves:
        parts = []
        for k in path:
            for attr in ("key", "name", "idx"):
                if hasattr(k, attr):
                    parts.append(str(getattr(k, attr)))
                    break
            else:  # pragma: no cover - unusual key types
                parts.append(str(k))
        out["/".join(parts)] = leaf
    return out


def _gather(x) -> np.ndarray:
    if jax.process_count() > 1:  # pragma: no cover - needs several hosts
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def _sync(name: str) -> None:  # pragma: no cover - needs several hosts
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def _broadcast_done(done: np.ndarray) -> np.ndarray:
    if jax.process_count() > 1:  # pragma: no cover - needs several hosts
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.broadcast_one_to_all(done))
    return done


def run(
    sweep: Sweep,
    out_dir=None,
    *,
    batch_size: int | None = None,
    memory_budget=None,
    devices: Sequence | None = None,
    compiler_options: Mapping[str, Any] | None = None,
    compile_workers: int | None = None,
    vmap_size: int | None = None,
    on_mismatch: str = "error",
    quiet: bool = False,
    stream=None,
) -> SweepResult:
    """Runs a sweep (resuming it if ``out_dir`` already holds part of it).

    For every static combination: pick ``batch_size`` (configurations vmapped per device per
    step), compile the measurement once (compiled programs are kept in a small in-process cache,
    so running the same sweep again does not recompile; :func:`clear_cache` empties it), then
    for every chunk of ``devices × batch_size`` configurations not yet on disk: place the
    batched values sharded over the devices, run, write ``out_dir/chunks/sSSSS-cCCCCCC.npz``
    atomically and update the manifest. The last chunk of a combination is padded (with copies
    of its last configuration) to the full size, so there is one compile per combination.

    Args:
      sweep: the :class:`Sweep`.
      out_dir: results directory, or ``None`` to keep everything in memory.
      batch_size: configurations per device per step. ``None``: from ``memory_budget`` (one extra
        compile per combination, for XLA's memory analysis), capped at ⌈configs / devices⌉. On
        resume the directory's layout is used; a different explicit value is an error.
      memory_budget: bytes (or "512MB", "2GiB") per device for one chunk; default 1 GiB.
      devices: devices to shard over; default ``jax.devices()`` (every device of every host).
      compiler_options: XLA options for every compile, e.g.
        ``{"xla_backend_optimization_level": 0}``, which on CPU compiles several times faster
        for slightly slower code: worth it for many small static combinations.
      compile_workers: threads that trace and compile the next static combinations while the
        current one runs (XLA compiles outside the GIL, so with several cores several compile
        at once). Default: the number of CPU cores, at most 4; 1 compiles in the main thread.
      vmap_size: how many configurations each device vmaps together; ``None`` (default): its
        whole batch. Smaller values map over the batch ``vmap_size`` at a time inside the
        program (``lax.map``). On a CPU, vmapping large per-configuration work can be slower
        than doing it one at a time (measured in ``benchmarks/bench_sweep.py``: 16 width-128,
        depth-40 Jacobians ran about 2× faster with ``vmap_size=1``), while tiny
        configurations gain from full vmapping; on accelerators the default is the right one.
        Results are bitwise reproducible for a given (``batch_size``, ``vmap_size``).
      on_mismatch: what to do when ``out_dir`` holds a *different* sweep (or was written by
        another gradflow version): ``"error"`` (ValueError, the default) or ``"replace"``
        (delete its manifest, chunks and results, and start over; for caches such as
        ``gradflow figures``' stores, never for results you cannot recompute).
      quiet: no progress line.
      stream: where the progress line goes (default ``sys.stderr``).

    Returns:
      :class:`SweepResult`.

    Raises:
      ValueError: ``out_dir`` holds a different sweep, or bad ``batch_size``/``memory_budget``.
    """
    if not isinstance(sweep, Sweep):
        raise TypeError(f"sweep must be a gradflow.sweep.Sweep, got {type(sweep).__name__}")
    if batch_size is not None:
        batch_size = _checks.positive_int("batch_size", batch_size)
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else parse_bytes(memory_budget)
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices must name at least one device")
    if on_mismatch not in ("error", "replace"):
        raise ValueError(f"on_mismatch must be 'error' or 'replace', got {on_mismatch!r}")
    if on_mismatch == "replace" and out_dir is not None:
        if jax.process_index() == 0:
            _replace_if_different(Path(out_dir), sweep)
        if jax.process_count() > 1:  # nobody reads the old manifest while process 0 deletes it
            _sync("gradflow.sweep.replace")
    if compile_workers is None:
        workers = max(1, min(4, os.cpu_count() or 1))
    else:
        workers = _checks.positive_int("compile_workers", compile_workers)
    if vmap_size is not None:
        vmap_size = _checks.positive_int("vmap_size", vmap_size)
    ex = _Exec(None if compiler_options is None else dict(compiler_options), vmap_size)
    with jax.enable_x64(sweep.dtype == "float64"):
        return _run(sweep, out_dir, batch_size, budget, devices, ex, workers, quiet, stream)


def _replace_if_different(out: Path, sweep: Sweep) -> None:
    """Removes a sweep store whose config or gradflow version differs from this sweep's."""
    path = out / MANIFEST
    if not path.exists():
        return
    manifest = json.loads(path.read_text())
    same = manifest.get("config_sha256") == _config_hash(sweep.config())
    if same and manifest.get("versions", {}).get("gradflow") == _versions()["gradflow"]:
        return
    shutil.rmtree(out / CHUNKS, ignore_errors=True)
    for name in (RESULTS, MANIFEST):
        if (out / name).exists():
            (out / name).unlink()


def _run(sweep, out_dir, batch_size, budget, devices, ex, compile_workers, quiet, stream):
    t_start = time.perf_counter()
    writer = jax.process_index() == 0
    out = None if out_dir is None else Path(out_dir)
    if out is not None and out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {out} exists and is not a directory")
    writer = writer and out is not None
    # Several hosts: process 0 creates or checks the store first, the others read it after.
    multi = out is not None and jax.process_count() > 1
    if multi and not writer:  # pragma: no cover - needs several hosts
        _sync("gradflow.sweep.open")
    # In memory too, the manifest records the layout, devices and timings (never written then).
    manifest = _open_store(out, sweep)
    session = {
        "started": _now(),
        "host": platform.node(),
        "devices": _device_info(devices),
        "compiler_options": dict(ex.compiler_options or {}),
        "vmap_size": ex.vmap_size,
        "chunks_computed": 0,
        "chunks_skipped": 0,
        "wall_s": 0.0,
    }
    manifest["sessions"].append(session)
    manifest["device"] = manifest["device"] or _device_info(devices)
    if writer:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / MANIFEST, manifest)  # before chunks/: a store is never manifest-less
        (out / CHUNKS).mkdir(exist_ok=True)
    if multi and writer:  # pragma: no cover - needs several hosts
        _sync("gradflow.sweep.open")

    n_dev = len(devices)
    mesh = Mesh(np.asarray(devices), (MESH_AXIS,))
    sharding = NamedSharding(mesh, P(MESH_AXIS))
    n_batched = math.prod(sweep.batched_shape)
    shapes = sweep.shapes()
    labels = [", ".join(f"{k}={v}" for k, v in st.items()) or "all" for st in shapes]
    stored = [manifest["shapes"].get(str(s)) for s in range(len(shapes))]
    per_shape_chunks = [
        layout["n_chunks"]
        if layout is not None
        else (None if batch_size is None else -(-n_batched // (batch_size * n_dev)))
        for layout in stored
    ]
    total_chunks = None if None in per_shape_chunks else sum(per_shape_chunks)
    progress = _Progress(sweep.n_configs, total_chunks, stream, quiet)
    for s, layout in enumerate(stored):  # fail before compiling anything
        if layout is not None and batch_size is not None and layout["batch_size"] != batch_size:
            raise ValueError(
                f"out_dir {out} was started with batch_size={layout['batch_size']} for "
                f"{labels[s]}; got batch_size={batch_size}. Pass batch_size=None to resume, or "
                "use a new directory"
            )

    def prepare(s):
        """Layout and compiled function of shape s (None if every chunk is on disk already).

        Runs in a worker thread, so that the next shapes compile while this one computes (and,
        with several cores, several shapes compile at once); JAX's x64 flag is thread-local.
        """
        with jax.enable_x64(sweep.dtype == "float64"):
            layout = stored[s]
            if layout is None:
                b = batch_size
                if b is None:
                    per = _per_config_bytes(sweep, shapes[s], ex)
                    b = max(1, budget // per) if per else 1
                    b = min(b, -(-n_batched // n_dev))
                layout = {
                    "static": shapes[s],
                    "batch_size": int(b),
                    "chunk_size": int(b * n_dev),
                    "n_chunks": -(-n_batched // (b * n_dev)),
                    "n_configs": n_batched,
                }
            if out is not None and all(
                (out / CHUNKS / f"{_chunk_id(s, j)}.npz").exists()
                for j in range(layout["n_chunks"])
            ):
                return layout, None
            return layout, _compile(sweep, shapes[s], mesh, sharding, layout, n_dev, ex)

    workers = max(1, min(compile_workers, len(shapes)))
    pool = (
        ThreadPoolExecutor(workers, thread_name_prefix="gradflow-compile") if workers > 1 else None
    )
    futures: dict[int, Any] = {}
    blocks = []
    try:
        for s, static in enumerate(shapes):
            for t in range(s, min(s + workers, len(shapes))):  # keep the pool busy ahead
                if pool is not None and t not in futures:
                    futures[t] = pool.submit(prepare, t)
            layout, fn = futures.pop(s).result() if pool is not None else prepare(s)
            if stored[s] is None:
                manifest["shapes"][str(s)] = layout
                if writer:
                    _write_json(out / MANIFEST, manifest)
            results = _run_shape(
                sweep, s, static, layout, fn, out, manifest, writer, mesh, sharding, n_dev,
                ex, progress, f"shape {s + 1}/{len(shapes)} [{labels[s]}]", t_start,
            )  # fmt: skip
            blocks.append(_assemble(out, s, layout["n_chunks"], results, sweep.batched_shape))
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    progress.update(0, False, f"done, {len(shapes)} shape(s)", final=True)
    session = manifest["sessions"][-1]
    session["wall_s"] = round(time.perf_counter() - t_start, 3)
    manifest["wall_s"] = round(sum(x["wall_s"] for x in manifest["sessions"]), 3)
    manifest["complete"] = True
    manifest["updated"] = _now()
    if writer:
        _write_json(out / MANIFEST, manifest)
    result = SweepResult(sweep.config(), tuple(blocks), manifest)
    if out is not None and writer:
        _write_results(out, result)
    return result


def _compile(sweep, static, mesh, sharding, layout, n_dev, ex: _Exec):
    # A chunk is computed on devices × per-device rows; the per-device batch stays the layout's
    # batch_size unless the sweep resumes on a different number of devices.
    padded = -(-layout["chunk_size"] // n_dev) * n_dev
    return _cached_compile("chunk", sweep, static, padded, mesh, sharding, ex)[0]


def _run_shape(
    sweep, s, static, layout, fn, out, manifest, writer, mesh, sharding, n_dev, ex,
    progress, text, t_start,
) -> dict[int, dict[str, np.ndarray]]:  # fmt: skip
    """Computes (and stores) the missing chunks of one static combination."""
    chunk, n_chunks = layout["chunk_size"], layout["n_chunks"]
    n_batched = layout["n_configs"]
    ids = [_chunk_id(s, j) for j in range(n_chunks)]
    done = np.array([out is not None and (out / CHUNKS / f"{i}.npz").exists() for i in ids])
    done = _broadcast_done(done)
    padded = -(-chunk // n_dev) * n_dev
    results: dict[int, dict[str, np.ndarray]] = {}
    for j in range(n_chunks):
        lo, hi = j * chunk, min((j + 1) * chunk, n_batched)
        label = f"{text} chunk {j + 1}/{n_chunks}"
        if done[j]:
            if ids[j] not in manifest["chunks"]:
                # Written by a run killed before it could update the manifest.
                manifest["chunks"][ids[j]] = {"session": None, "configs": hi - lo}
            manifest["sessions"][-1]["chunks_skipped"] += 1
            progress.update(hi - lo, False, label)
            continue
        if fn is None:  # compiled once per static combination, only if a chunk is left
            fn = _compile(sweep, static, mesh, sharding, layout, n_dev, ex)
        t0 = time.perf_counter()
        index = np.minimum(np.arange(lo, lo + padded), hi - 1)  # pad with the last config
        host = [index.astype(np.int32), *sweep.batched_values(index)]
        args = [
            jax.make_array_from_callback(a.shape, sharding, lambda idx, a=a: a[idx]) for a in host
        ]
        outputs = _flatten(fn(*args))
        arrays = {k: _gather(v)[: hi - lo] for k, v in outputs.items()}
        wall = time.perf_counter() - t0
        if out is not None and writer:
            _write_npz(out / CHUNKS / f"{ids[j]}.npz", arrays)
        if not writer:  # in memory, or a process that does not write: keep the arrays
            results[j] = arrays
        manifest["chunks"][ids[j]] = {
            "session": len(manifest["sessions"]) - 1,
            "configs": hi - lo,
            "wall_s": round(wall, 4),
        }
        session = manifest["sessions"][-1]
        session["chunks_computed"] += 1
        session["wall_s"] = round(time.perf_counter() - t_start, 3)
        manifest["updated"] = _now()
        if writer:
            _write_json(out / MANIFEST, manifest)
        progress.update(hi - lo, True, label)
    return results


def _assemble(out, s, n_chunks, results, batched_shape) -> dict[str, np.ndarray]:
    """Concatenates one static combination's chunks into arrays ``(*batched_shape, …)``."""
    parts = []
    for j in range(n_chunks):
        if j in results:
            parts.append(results[j])
        else:
            with np.load(out / CHUNKS / f"{_chunk_id(s, j)}.npz") as z:
                parts.append({k: z[k] for k in z.files})
    return {
        k: np.concatenate([p[k] for p in parts]).reshape(batched_shape + parts[0][k].shape[1:])
        for k in parts[0]
    }


def _write_results(out: Path, result: SweepResult) -> None:
    """``results.npz``: every output over the whole grid (NaN-padded), plus coordinates."""
    arrays = {}
    for name in result.names:
        la = result[name]
        arrays[name] = la.values
        arrays[f"{name}.__dims__"] = np.asarray(la.dims)
    for a, values in result.axes.items():
        arrays[f"__coords__/{a}"] = np.asarray(values)
    _write_npz(out / RESULTS, arrays)


def load(out_dir) -> SweepResult:
    """Reads a sweep directory written by :func:`run` (finished or not).

    Chunks not yet computed are NaN in the result; ``result.manifest["complete"]`` says whether
    the sweep finished.

    Raises:
      ValueError: if ``out_dir`` has no manifest.
    """
    out = Path(out_dir)
    path = out / MANIFEST
    if not path.exists():
        raise ValueError(f"out_dir {out} has no {MANIFEST}; not a sweep directory")
    manifest = json.loads(path.read_text())
    config = manifest["config"]
    axes = config["axes"]
    static = config["static"]
    batched_shape = tuple(len(v) for a, v in axes.items() if a not in static)
    n_batched = math.prod(batched_shape)
    n_shapes = math.prod(len(axes[a]) for a in static)
    blocks = []
    template = None
    for s in range(n_shapes):
        layout = manifest["shapes"].get(str(s))
        parts = {}
        if layout is not None:
            for j in range(layout["n_chunks"]):
                f = out / CHUNKS / f"{_chunk_id(s, j)}.npz"
                if f.exists():
                    with np.load(f) as z:
                        parts[j] = {k: z[k] for k in z.files}
        blocks.append((layout, parts))
        if parts and template is None:
            template = next(iter(parts.values()))
    if template is None:
        raise ValueError(f"out_dir {out} holds no finished chunk yet")
    out_blocks = []
    for layout, parts in blocks:
        arrays = {}
        for k, t in template.items():
            # Per-shape output shapes can differ (depth); use this shape's own chunk if any.
            trailing = next(iter(parts.values()))[k].shape[1:] if parts else t.shape[1:]
            dtype = np.result_type(t.dtype, np.float64) if not parts else t.dtype
            full = np.full((n_batched,) + trailing, np.nan, np.result_type(dtype, np.float32))
            if layout is not None:
                c = layout["chunk_size"]
                for j, p in parts.items():
                    full[j * c : j * c + len(p[k])] = p[k]
            arrays[k] = full.reshape(batched_shape + trailing)
        out_blocks.append(arrays)
    return SweepResult(config, tuple(out_blocks), manifest)


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
