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
and recorded with its SHA-256 in ``out_dir/manifest.json`` (config, gradflow/JAX versions,
devices, wall time), so a sweep killed at any point resumes where it stopped: finished chunks are
never recomputed, and a different config in the same directory raises ``ValueError`` instead of
mixing results. One run writes a directory at a time (:mod:`~gradflow.sweep.lock`: a second one
fails at once, naming the first's pid and host; a killed run leaves no lock behind). A truncated,
zeroed, swapped, foreign or missing chunk is named and recomputed on resume and never returned as
data by :func:`load`; a hand-edited manifest field is an error naming the field;
``gradflow sweep --verify DIR`` (:func:`gradflow.sweep.store.verify`) checks a store without
running anything.

Results are :class:`LabelledArray` s (values + dimension names + coordinates), one per leaf of the
measurement's output; :func:`load` reads a finished (or partial) directory back.

Reproducibility: a configuration's numbers depend only on the configuration and on how many
configurations are vmapped together on one device (``batch_size``, or ``vmap_size``; XLA may pick
different kernels for different batch sizes). By default ``vmap_size`` is chosen per program so
that the vmapped group's working set fits the CPU's L2 cache (a power of two; the whole batch on
GPU/TPU, and a configuration under 1/16 of the cache is vmapped whole:
:func:`~gradflow.sweep.vmap_size.choose_vmap_size`), so it can differ between hosts; the size used
is recorded in the store's manifest and reused on resume; pass an integer to fix it. With the same
``batch_size``, 1 and 8 devices give bitwise-identical results (tested in float64).
``memory_budget`` picks ``batch_size`` from a compiled memory estimate and caps it at what the grid
needs on the available devices, so pass ``batch_size`` explicitly when bitwise equality across
machines with different device counts matters.

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

Modules
-------
:mod:`~gradflow.sweep.grid` (:class:`Sweep`, TOML), :mod:`~gradflow.sweep.measurements`
(:class:`Measurement` and the built-in MLP measurements, the only part that imports
:mod:`gradflow.models`), :mod:`~gradflow.sweep.runner` (:func:`run`), :mod:`~gradflow.sweep.store`
(the directory, :func:`load`) and :mod:`~gradflow.sweep.results` (:class:`SweepResult`).
"""

# `X as X`: names outside __all__, still importable from here as when sweep was one module.
from gradflow.sweep.grid import FORMAT as FORMAT
from gradflow.sweep.grid import Sweep, from_toml, parse_bytes
from gradflow.sweep.measurements import (
    DEFAULT_STATIC,
    MEASUREMENTS,
    MLP_AXES,
    Measurement,
    measurement,
    mlp_from_point,
    mlp_measurement,
)
from gradflow.sweep.measurements import jacobian_spectrum as jacobian_spectrum
from gradflow.sweep.measurements import layer_grad_norms as layer_grad_norms
from gradflow.sweep.measurements import lyapunov_exponent as lyapunov_exponent
from gradflow.sweep.measurements import top_lyapunov as top_lyapunov
from gradflow.sweep.results import LabelledArray, SweepResult
from gradflow.sweep.runner import DEFAULT_MEMORY_BUDGET as DEFAULT_MEMORY_BUDGET
from gradflow.sweep.runner import MESH_AXIS as MESH_AXIS
from gradflow.sweep.runner import clear_cache, run
from gradflow.sweep.store import CHUNKS as CHUNKS
from gradflow.sweep.store import MANIFEST as MANIFEST
from gradflow.sweep.store import RESULTS as RESULTS
from gradflow.sweep.store import load

__all__ = [
    "DEFAULT_STATIC",
    "MEASUREMENTS",
    "MLP_AXES",
    "LabelledArray",
    "Measurement",
    "Sweep",
    "SweepResult",
    "from_toml",
    "load",
    "measurement",
    "mlp_from_point",
    "mlp_measurement",
    "parse_bytes",
    "run",
    "clear_cache",
]


def __getattr__(name: str):
    # gradient_diagnostics moved to gradflow.experiments.init_study (experiment code). It stays
    # importable here, found by its registry name on first use, so the sweep imports no experiment.
    if name == "gradient_diagnostics":
        return measurement("gradient_diagnostics").fn
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
