"""neural-tangents as a benchmark peer, in its own virtual environment.

neural-tangents 0.6.5 (the latest release) needs jax 0.4.30, which conflicts with gradflow's jax,
so it never enters gradflow's environment. This module has two sides:

* **host side** (imported by the benchmarks, standard library only): :func:`ensure_venv` creates
  ``venv_dir()`` once with ``python -m venv`` + ``pip install neural-tangents==0.6.5 jax==0.4.30
  jaxlib==0.4.30`` (about a minute; reused afterwards), and :func:`call` runs this same file in
  that environment as a subprocess, sending a task as JSON on stdin and reading timings and
  results as JSON from stdout. If the environment cannot be created, :class:`PeerUnavailable`
  carries the reason, and the benchmark records the peer as skipped with it — never a made-up
  number.
* **worker side** (``python peers_nt.py TASK`` inside that environment): computes the task with
  neural-tangents' analytic kernel functions (``stax.serial(...)[2]``), times it the same way as
  gradflow's side (one untimed compile call, then the median of ``repeats`` calls, each ended by
  ``block_until_ready``), and prints one JSON object.

Tasks:

* ``meanfield_grid``: for every (σ_w², σ_b²) of a grid, the length q^depth after ``depth`` layers
  starting from q^0 = ``q0`` (gradflow's ``meanfield.q_layers(...)[-1]``) and χ₁ = σ_w² E[φ'(√q z)²]
  at that q (gradflow's ``meanfield.chi1(..., q=q)``). χ₁ is read off neural-tangents' NTK
  recursion: in NTK parameterisation a (φ, Dense) pair maps Θ ↦ K' + σ_w² E[φ'φ'] Θ, so on the
  diagonal χ₁ = (Θ' − K') / Θ, applied to an input of length q^depth.
* ``nngp_grid``: the NNGP kernel of inputs ``x`` for every (σ_w, σ_b) of a grid, with gradflow's
  convention (``meanfield.nngp_kernel``): K¹ = σ_w² x xᵀ/d + σ_b², then ``depth`` (φ, Dense)
  pairs — neural-tangents' ``serial([Dense, φ] * depth + [Dense])`` exactly.

The location is ``$GRADFLOW_NT_VENV`` if set, else ``$XDG_CACHE_HOME/gradflow/venv-nt-0.6.5``
(``~/.cache`` by default) — outside the repository, so nothing needs ignoring.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

NT_VERSION = "0.6.5"
JAX_VERSION = "0.4.30"
REQUIREMENTS = (f"neural-tangents=={NT_VERSION}", f"jax=={JAX_VERSION}", f"jaxlib=={JAX_VERSION}")
ACTIVATIONS = ("erf", "relu", "tanh")

__all__ = [
    "NT_VERSION",
    "JAX_VERSION",
    "REQUIREMENTS",
    "PeerUnavailable",
    "venv_dir",
    "ensure_venv",
    "call",
    "meanfield_grid",
    "nngp_grid",
]


class PeerUnavailable(RuntimeError):
    """neural-tangents' environment could not be created or run; the message says why."""


# ------------------------------------------------------------------------------------------------
# Host side
# ------------------------------------------------------------------------------------------------


def venv_dir() -> Path:
    """Where the neural-tangents environment lives (created on first use)."""
    if os.environ.get("GRADFLOW_NT_VENV"):
        return Path(os.environ["GRADFLOW_NT_VENV"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "gradflow" / f"venv-nt-{NT_VERSION}-jax{JAX_VERSION}"


def _python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _tail(path: Path, n: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def ensure_venv(*, timeout_s: float = 1200, log=print) -> tuple[Path, float]:
    """Creates (once) the environment with neural-tangents; returns (python, seconds spent).

    A ``.complete`` marker is written only after a successful install and import check, so an
    interrupted install is redone rather than half-used.

    Raises:
      PeerUnavailable: if ``venv`` or ``pip`` fails (no network, no wheel for this Python, …).
    """
    venv = venv_dir()
    py, marker, logfile = _python(venv), venv / ".complete", venv.parent / f"{venv.name}.log"
    if marker.exists() and py.exists():
        return py, 0.0
    t0 = time.perf_counter()
    venv.parent.mkdir(parents=True, exist_ok=True)
    log(f"[peers_nt] creating {venv} ({' '.join(REQUIREMENTS)}); log: {logfile}")
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [str(py), "-m", "pip", "install", "--disable-pip-version-check", *REQUIREMENTS],
        [str(py), "-c", "import neural_tangents, jax; print(neural_tangents.__version__)"],
    ]
    env = _clean_env()
    with open(logfile, "w") as out:
        for cmd in steps:
            out.write(f"$ {' '.join(cmd)}\n")
            out.flush()
            try:
                rc = subprocess.run(
                    cmd, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=timeout_s
                ).returncode
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise PeerUnavailable(f"`{' '.join(cmd[:4])} …` failed: {exc}") from exc
            if rc != 0:
                raise PeerUnavailable(
                    f"`{' '.join(cmd[:4])} …` exited with {rc}; log tail:\n{_tail(logfile)}"
                )
    marker.write_text(" ".join(REQUIREMENTS) + "\n")
    return py, time.perf_counter() - t0


def _clean_env() -> dict:
    # gradflow's environment must not leak into the peer's (and vice versa).
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    }
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"  # TensorFlow (a dependency of neural-tangents) is chatty
    env["PYTHONNOUSERSITE"] = "1"
    return env


def call(task: str, payload: dict, *, timeout_s: float = 1800) -> dict:
    """Runs ``task`` in the neural-tangents environment; returns its JSON answer.

    Raises:
      PeerUnavailable: if the environment cannot be created, or the worker fails.
    """
    py, setup_s = ensure_venv()
    try:
        proc = subprocess.run(
            [str(py), str(Path(__file__).resolve()), task],
            input=json.dumps(payload),
            capture_output=True,
            text=True,
            env=_clean_env(),
            timeout=timeout_s,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PeerUnavailable(f"neural-tangents worker failed: {exc}") from exc
    if proc.returncode != 0:
        raise PeerUnavailable(
            f"neural-tangents worker exited with {proc.returncode}: {proc.stderr[-1500:]}"
        )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise PeerUnavailable(f"neural-tangents worker printed no JSON: {proc.stdout[-500:]}")
    out = json.loads(lines[-1])
    out["venv_setup_s"] = setup_s
    out["venv"] = str(venv_dir())
    return out


def meanfield_grid(activation, sigma_w2, sigma_b2, *, depth: int, q0: float, repeats: int = 3):
    """q^depth and χ₁(q^depth) over the grid ``sigma_w2 × sigma_b2`` by neural-tangents.

    Args:
      activation: one of ``ACTIVATIONS`` (tanh by neural-tangents' Gauss–Hermite
        ``ElementwiseNumerical``; erf and ReLU in closed form).
      sigma_w2, sigma_b2: sequences of σ_w² (G_w,) and σ_b² (G_b,).
      depth: number of (φ, Dense) layers.
      q0: the input length q^0.
      repeats: timed calls.

    Returns:
      dict with ``q`` and ``chi1`` (nested lists ``(G_w, G_b)``), ``median_s``, ``times_s``,
      ``first_call_s``, ``device``, ``versions``.
    """
    payload = {
        "activation": activation,
        "sigma_w2": [float(s) for s in sigma_w2],
        "sigma_b2": [float(s) for s in sigma_b2],
        "depth": int(depth),
        "q0": float(q0),
        "repeats": int(repeats),
    }
    return call("meanfield_grid", payload)


def nngp_grid(x, activation, sigma_w, sigma_b, *, depth: int, repeats: int = 3):
    """NNGP kernels ``(G_w, G_b, P, P)`` of inputs ``x`` ``(P, d)`` by neural-tangents."""
    payload = {
        "x": [[float(v) for v in row] for row in x],
        "activation": activation,
        "sigma_w": [float(s) for s in sigma_w],
        "sigma_b": [float(s) for s in sigma_b],
        "depth": int(depth),
        "repeats": int(repeats),
    }
    return call("nngp_grid", payload)


# ------------------------------------------------------------------------------------------------
# Worker side (runs inside the neural-tangents environment)
# ------------------------------------------------------------------------------------------------


def _worker(task: str, payload: dict) -> dict:  # pragma: no cover - runs in the other venv
    import statistics

    import jax
    import jax.numpy as jnp
    import neural_tangents as nt
    from neural_tangents import stax

    jax.config.update("jax_default_matmul_precision", "highest")

    def phi():
        name = payload["activation"]
        if name == "erf":
            return stax.Erf()
        if name == "relu":
            return stax.Relu()
        if name == "tanh":
            return stax.ElementwiseNumerical(jnp.tanh, deg=payload.get("deg", 50))
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")

    def timed(fn, *args):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        first = time.perf_counter() - t0
        times = []
        for _ in range(payload.get("repeats", 3)):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times.append(time.perf_counter() - t0)
        return out, {"median_s": statistics.median(times), "times_s": times, "first_call_s": first}

    if task == "meanfield_grid":
        depth, q0 = payload["depth"], payload["q0"]

        def one(sw2, sb2):
            sw, sb = jnp.sqrt(sw2), jnp.sqrt(sb2)
            # Dense(1, 0) on x with |x|²/d = q0 gives the Gaussian pre-activation kernel q0.
            head = [stax.Dense(1, W_std=1.0, b_std=0.0)]
            body = [layer for _ in range(depth) for layer in (phi(), stax.Dense(1, sw, sb))]
            x = jnp.full((1, 1), jnp.sqrt(q0))
            q = stax.serial(*head, *body)[2](x, None, get=None).nngp[0, 0]
            # χ₁ from one more (φ, Dense) pair applied to a fresh input of length q: the NTK
            # after `depth` layers grows like χ₁^depth and overflows float32 in the chaotic
            # phase, so it is restarted at Θ = q (Dense(1, 0) on the input gives Θ = K = q).
            k = stax.serial(*head)[2](jnp.sqrt(q).reshape(1, 1), None, get=None)
            k_next = stax.serial(phi(), stax.Dense(1, sw, sb))[2](k, get=None)
            chi1 = (k_next.ntk[0, 0] - k_next.nngp[0, 0]) / k.ntk[0, 0]
            return q, chi1

        # One vmap over the flattened grid. (A nested vmap — over σ_w², then σ_b² — returned
        # wrong q for ~20 % of a 64 × 64 grid at depth 100 with neural-tangents 0.6.5 on
        # jax 0.4.30's CPU backend; the flat form agrees with a per-point loop.)
        sw2, sb2 = jnp.meshgrid(
            jnp.asarray(payload["sigma_w2"]), jnp.asarray(payload["sigma_b2"]), indexing="ij"
        )
        grid = jax.jit(jax.vmap(one))
        (q, chi1), timing = timed(grid, sw2.ravel(), sb2.ravel())
        result = {"q": q.reshape(sw2.shape).tolist(), "chi1": chi1.reshape(sw2.shape).tolist()}
    elif task == "nngp_grid":
        depth = payload["depth"]

        def one(sw, sb, x):
            layers = [stax.Dense(1, sw, sb)]
            for _ in range(depth):
                layers += [phi(), stax.Dense(1, sw, sb)]
            return stax.serial(*layers)[2](x, None, "nngp")

        sw, sb = jnp.meshgrid(
            jnp.asarray(payload["sigma_w"]), jnp.asarray(payload["sigma_b"]), indexing="ij"
        )
        grid = jax.jit(jax.vmap(one, (0, 0, None)))  # flat, as above
        kernels, timing = timed(grid, sw.ravel(), sb.ravel(), jnp.asarray(payload["x"]))
        result = {"nngp": kernels.reshape(sw.shape + kernels.shape[1:]).tolist()}
    else:
        raise ValueError(f"unknown task {task!r}")
    d = jax.devices()[0]
    return {
        **result,
        **timing,
        "device": f"{d.platform} ({getattr(d, 'device_kind', d.platform)})",
        "versions": {"neural_tangents": nt.__version__, "jax": jax.__version__},
        "implementation": f"neural-tangents {nt.__version__} (jax {jax.__version__})",
    }


if __name__ == "__main__":  # pragma: no cover - the worker entry point
    _task = sys.argv[1]
    _out = _worker(_task, json.loads(sys.stdin.read()))
    print(json.dumps(_out))
