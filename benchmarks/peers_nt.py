"""neural-tangents as a benchmark peer, in its own virtual environment.

neural-tangents 0.6.5 (the latest release) needs jax 0.4.30, which conflicts with gradflow's jax,
so it never enters gradflow's environment. This module has two sides:

* **host side** (imported by the benchmarks, standard library only): :func:`ensure_venv` creates
  ``venv_dir()`` once with ``python -m venv`` + ``pip install neural-tangents==0.6.5 jax==0.4.30
  jaxlib==0.4.30`` (about a minute; reused afterwards). :class:`MeanfieldPeer` starts this same
  file in that environment as a **persistent worker** and times one call at a time, so a
  benchmark can alternate gradflow's timed calls with neural-tangents' (a load change then hits
  both sides alike); :func:`call` runs a one-shot task in a subprocess. If the environment cannot
  be created or the worker fails, :class:`PeerUnavailable` carries the reason, and the benchmark
  records the peer as skipped with it — never a made-up number.
* **worker side** (``python peers_nt.py serve`` or ``python peers_nt.py TASK`` inside that
  environment): computes a task with neural-tangents' analytic kernel functions
  (``stax.serial(...)[2]``) under one ``jax.jit``; each timed call is ended by
  ``block_until_ready`` and timed inside the worker, so pipe and JSON costs are not counted.

Session protocol (:func:`serve`): one JSON object per line each way. The host sends
``{"op": "init", "task": ..., "payload": {...}}`` (the worker builds the function and makes the
first, compiling call; it replies with the results and ``first_call_s``), then any number of
``{"op": "call"}`` (reply ``{"s": seconds}``), then ``{"op": "close"}``. Every reply carries
``"ok"``; a failure replies ``{"ok": false, "error": "..."}``.

Tasks:

* ``meanfield_grid``: for every (σ_w², σ_b²) of a grid, the length q^depth after ``depth`` layers
  starting from q^0 = ``q0`` (gradflow's ``meanfield.q_layers(...)[-1]``) and χ₁ = σ_w² E[φ'(√q z)²]
  at that q (gradflow's ``meanfield.chi1(..., q=q)``) — the same two quantities, nothing more:
  the ``depth``-layer map asks for the NNGP only (``get="nngp"``, which in neural-tangents 0.6.5
  starts the input kernel with ``ntk=None`` so no layer computes an NTK; see
  :func:`_meanfield_fn`), and χ₁ is read off one (φ, Dense) pair's NTK recursion at the input
  length q^depth: in NTK parameterisation that pair maps Θ ↦ K' + σ_w² E[φ'φ'] Θ, so on the
  diagonal χ₁ = (Θ' − K') / Θ.
* ``nngp_grid``: the NNGP kernel of inputs ``x`` for every (σ_w, σ_b) of a grid, with gradflow's
  convention (``meanfield.nngp_kernel``): K¹ = σ_w² x xᵀ/d + σ_b², then ``depth`` (φ, Dense)
  pairs — neural-tangents' ``serial([Dense, φ] * depth + [Dense])`` exactly.

The location is ``$GRADFLOW_NT_VENV`` if set, else ``$XDG_CACHE_HOME/gradflow/venv-nt-0.6.5``
(``~/.cache`` by default) — outside the repository, so nothing needs ignoring.
"""

from __future__ import annotations

import json
import math
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
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
    "MeanfieldPeer",
    "meanfield_grid",
    "serve",
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
    # Nor gradflow's JAX compilation cache (the test suite sets one): another jax version's
    # cache is no use, and first_call_s should be a cold compile. XLA_FLAGS (threads) stay, so
    # both sides run under the same thread settings.
    for k in [k for k in env if k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))]:
        del env[k]
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


def _grid_values(name: str, values, *, positive: bool) -> list[float]:
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a 1-D sequence of numbers, got {values!r}") from exc
    bound_ok = (lambda v: v > 0) if positive else (lambda v: v >= 0)
    if not out or not all(math.isfinite(v) and bound_ok(v) for v in out):
        sign = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a non-empty sequence of finite values {sign}, got {out}")
    return out


class MeanfieldPeer:
    """A persistent neural-tangents worker for ``meanfield_grid``, timed one call at a time.

    Starting it builds the worker in neural-tangents' environment and makes the first (tracing
    and compiling) call, whose results are kept for checking; each :meth:`call` then runs ONE
    blocked evaluation of the whole grid in the worker and returns its duration. A benchmark
    alternates these with gradflow's timed calls in rounds, so a load change on the machine hits
    both sides alike. The worker idles (no CPU) between calls.

    Example::

        with MeanfieldPeer("erf", sw2, sb2, depth=100, q0=1.0) as peer:
            check(peer.q, peer.chi1)
            for _ in range(rounds):
                t_gradflow = time_one_gradflow_call()
                t_nt = peer.call()
            record(peer.result())

    Args:
      activation: one of ``ACTIVATIONS`` (tanh by neural-tangents' Gauss–Hermite
        ``ElementwiseNumerical``; erf and ReLU in closed form).
      sigma_w2: σ_w² values ``(G_w,)``, each > 0.
      sigma_b2: σ_b² values ``(G_b,)``, each >= 0.
      depth: number of (φ, Dense) layers >= 0.
      q0: the input length q^0 >= 0.
      map_ntk: also carry the NTK through the ``depth``-layer map and return Θ^depth (as
        ``result()["ntk"]``, so the compiler cannot drop it). Off for the benchmark (gradflow
        computes no NTK); on only to measure what the NTK costs neural-tangents.
      command: the worker's command line; ``None`` for this file's ``serve`` in the
        neural-tangents environment (created if needed). Tests pass a fake worker here.
      timeout_s: the longest wait for any one reply (the first includes compilation).

    Attributes:
      q, chi1: nested lists ``(G_w, G_b)`` from the first call.
      first_call_s: the first call's seconds in the worker (trace + compile + run).
      times_s: each :meth:`call`'s seconds, measured in the worker around the blocked call.
      roundtrip_s: each :meth:`call`'s seconds measured here, request to reply; minus
        ``times_s`` it is the protocol overhead (pipe + JSON), which ``times_s`` leaves out.
      startup_s: seconds from starting the worker to its first reply (imports + first call).
      device, versions, implementation: as the worker reports them.
      venv, venv_setup_s: the environment used (``None`` for a custom ``command``) and the
        seconds spent creating it now (0 when it already existed).

    Raises:
      ValueError, TypeError: for bad arguments, naming the argument.
      PeerUnavailable: if the environment cannot be created or the worker fails or times out.
    """

    def __init__(
        self,
        activation: str,
        sigma_w2,
        sigma_b2,
        *,
        depth: int,
        q0: float,
        map_ntk: bool = False,
        command=None,
        timeout_s: float = 1800,
    ):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise ValueError(f"depth must be an int >= 0, got {depth!r}")
        try:
            q0 = float(q0)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"q0 must be a number, got {q0!r}") from exc
        if not (math.isfinite(q0) and q0 >= 0):
            raise ValueError(f"q0 must be a finite number >= 0, got {q0!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        payload = {
            "activation": activation,
            "sigma_w2": _grid_values("sigma_w2", sigma_w2, positive=True),
            "sigma_b2": _grid_values("sigma_b2", sigma_b2, positive=False),
            "depth": depth,
            "q0": float(q0),
            "map_ntk": bool(map_ntk),
        }
        self.timeout_s = float(timeout_s)
        self.times_s: list[float] = []
        self.roundtrip_s: list[float] = []
        self._proc = None
        if command is None:
            py, self.venv_setup_s = ensure_venv()
            command, self.venv = [str(py), str(Path(__file__).resolve()), "serve"], str(venv_dir())
        else:
            self.venv_setup_s, self.venv = 0.0, None
        # stderr goes to a file: a pipe nobody reads could fill up and stall the worker.
        self._stderr = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")
        t0 = time.perf_counter()
        try:
            self._proc = subprocess.Popen(
                [str(c) for c in command],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                text=True,
                encoding="utf-8",
                bufsize=1,
                env=_clean_env(),
            )
        except OSError as exc:
            self._stderr.close()
            raise PeerUnavailable(f"neural-tangents worker could not start: {exc}") from exc
        # A reader thread turns the worker's stdout into a queue, so every wait has a timeout.
        self._lines: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        reply = self._request({"op": "init", "task": "meanfield_grid", "payload": payload})
        self.startup_s = time.perf_counter() - t0
        self.q, self.chi1, self.ntk = reply["q"], reply["chi1"], reply.get("ntk")
        self.first_call_s = reply["first_call_s"]
        self.device = reply.get("device", "unknown")
        self.versions = reply.get("versions", {})
        self.implementation = reply.get("implementation", "")
        self.map_ntk = payload["map_ntk"]

    def _read(self) -> None:
        for line in self._proc.stdout:
            self._lines.put(line)
        self._lines.put(None)  # end of file: the worker has exited

    def _stderr_tail(self, n: int = 1500) -> str:
        try:
            self._stderr.flush()
            self._stderr.seek(0)
            return self._stderr.read()[-n:]
        except (OSError, ValueError):
            return ""

    def _fail(self, why: str) -> PeerUnavailable:
        # Any failure ends the session: the worker's state is unknown afterwards.
        self._kill()
        tail = self._stderr_tail()
        self._close_files()
        return PeerUnavailable(f"neural-tangents worker {why}; stderr tail:\n{tail or '(empty)'}")

    def _request(self, message: dict) -> dict:
        if self._proc is None:
            raise RuntimeError("this MeanfieldPeer is closed")
        try:
            self._proc.stdin.write(json.dumps(message) + "\n")
            self._proc.stdin.flush()
        except OSError as exc:  # BrokenPipeError: the worker has gone
            raise self._fail(f"did not take the request ({exc})") from exc
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                line = self._lines.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                raise self._fail(f"sent no reply within {self.timeout_s:g} s") from None
            if line is None:
                rc = self._proc.wait()
                raise self._fail(f"exited with {rc} before replying to {message['op']!r}")
            if line.startswith("{"):  # anything else is stray output, not the protocol
                break
        reply = json.loads(line)
        if not reply.get("ok"):
            raise self._fail(f"failed on {message['op']!r}: {reply.get('error', reply)}")
        return reply

    def call(self) -> float:
        """Runs one timed evaluation of the grid in the worker; returns its seconds.

        Raises:
          PeerUnavailable: if the worker fails or times out (the session is then closed).
          RuntimeError: if the session is closed.
        """
        t0 = time.perf_counter()
        reply = self._request({"op": "call"})
        self.roundtrip_s.append(time.perf_counter() - t0)
        self.times_s.append(float(reply["s"]))
        return self.times_s[-1]

    def result(self) -> dict:
        """The record of the session so far, in :func:`meanfield_grid`'s format.

        Returns:
          dict with ``q``, ``chi1`` (nested lists ``(G_w, G_b)``), ``median_s`` (of ``times_s``;
          ``None`` before any :meth:`call`), ``times_s``, ``first_call_s``, ``roundtrip_s``,
          ``overhead_s`` (median of ``roundtrip_s − times_s``), ``startup_s``, ``device``,
          ``venv``, ``venv_setup_s``, ``versions``, ``implementation``, ``map_ntk`` (and
          ``ntk``, Θ^depth ``(G_w, G_b)``, when ``map_ntk``).
        """
        over = [r - t for r, t in zip(self.roundtrip_s, self.times_s, strict=True)]
        out = {
            "q": self.q,
            "chi1": self.chi1,
            "median_s": statistics.median(self.times_s) if self.times_s else None,
            "times_s": list(self.times_s),
            "first_call_s": self.first_call_s,
            "roundtrip_s": list(self.roundtrip_s),
            "overhead_s": statistics.median(over) if over else None,
            "startup_s": self.startup_s,
            "device": self.device,
            "venv": self.venv,
            "venv_setup_s": self.venv_setup_s,
            "versions": self.versions,
            "implementation": self.implementation,
            "map_ntk": self.map_ntk,
        }
        if self.ntk is not None:
            out["ntk"] = self.ntk
        return out

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def _close_files(self) -> None:
        if self._proc is None:
            return
        for f in (self._proc.stdin, self._proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        self._reader.join(timeout=5)
        self._stderr.close()
        self._proc = None

    def close(self) -> None:
        """Ends the worker (politely, else by force after 10 s). Idempotent."""
        if self._proc is None:
            return
        try:
            self._proc.stdin.write(json.dumps({"op": "close"}) + "\n")
            self._proc.stdin.flush()
            self._proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self._kill()
        self._close_files()

    def __enter__(self) -> MeanfieldPeer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def meanfield_grid(
    activation, sigma_w2, sigma_b2, *, depth: int, q0: float, repeats: int = 3, command=None
):
    """q^depth and χ₁(q^depth) over the grid ``sigma_w2 × sigma_b2`` by neural-tangents.

    A :class:`MeanfieldPeer` whose ``repeats`` calls run back to back (not interleaved with
    anything); a benchmark that compares should use :class:`MeanfieldPeer` directly.

    Args:
      activation: one of ``ACTIVATIONS``.
      sigma_w2, sigma_b2: sequences of σ_w² (G_w,) and σ_b² (G_b,).
      depth: number of (φ, Dense) layers.
      q0: the input length q^0.
      repeats: timed calls (>= 1).
      command: passed to :class:`MeanfieldPeer` (a fake worker in tests).

    Returns:
      :meth:`MeanfieldPeer.result`'s dict: ``q`` and ``chi1`` (nested lists ``(G_w, G_b)``),
      ``median_s``, ``times_s``, ``first_call_s``, ``device``, ``venv``, ``venv_setup_s``,
      ``versions``, and the protocol's ``roundtrip_s``, ``overhead_s``, ``startup_s``.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    with MeanfieldPeer(activation, sigma_w2, sigma_b2, depth=depth, q0=q0, command=command) as peer:
        for _ in range(repeats):
            peer.call()
        return peer.result()


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


def serve(build, *, stdin=None, stdout=None) -> None:
    """The worker's loop: answers a session's requests (see the module docstring) until ``close``.

    Args:
      build: ``build(task, payload) -> (run, summarize)``: ``run()`` makes one complete, blocked
        evaluation (``block_until_ready`` inside) and returns its outputs; ``summarize(outputs)``
        turns the first call's outputs into a JSON-able dict (results, ``device``, …).
      stdin, stdout: text streams; by default the process's, with stdout moved to a private
        descriptor and fd 1 pointed at stderr, so libraries that print cannot corrupt the replies.
    """
    if stdout is None:
        fd = os.dup(1)
        os.dup2(2, 1)
        stdout = os.fdopen(fd, "w", encoding="utf-8")
    stdin = sys.stdin if stdin is None else stdin
    run = None
    for line in stdin:
        if not line.strip():
            continue
        op = None
        try:
            request = json.loads(line)
            op = request.get("op")
            if op == "init":
                run, summarize = build(request["task"], request["payload"])
                t0 = time.perf_counter()
                outputs = run()
                reply = {**summarize(outputs), "first_call_s": time.perf_counter() - t0}
            elif op == "call":
                if run is None:
                    raise RuntimeError("'call' before 'init'")
                t0 = time.perf_counter()
                run()
                reply = {"s": time.perf_counter() - t0}
            elif op == "close":
                reply = {}
            else:
                raise ValueError(f"unknown op {op!r}")
            reply["ok"] = True
        except Exception as exc:  # reported to the host, which raises PeerUnavailable
            tb = traceback.format_exc(limit=-3)
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}\n{tb}"}
        stdout.write(json.dumps(reply) + "\n")
        stdout.flush()
        if op == "close":
            break


def _build_nt(task: str, payload: dict):  # pragma: no cover - runs in the other venv
    """``(run, summarize)`` for ``task`` with neural-tangents (see :func:`serve`)."""
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

    d = jax.devices()[0]
    meta = {
        "device": f"{d.platform} ({getattr(d, 'device_kind', d.platform)})",
        "versions": {"neural_tangents": nt.__version__, "jax": jax.__version__},
        "implementation": f"neural-tangents {nt.__version__} (jax {jax.__version__})",
    }
    if task == "meanfield_grid":
        one = _meanfield_fn(stax, jnp, phi, payload["depth"], payload["q0"], payload["map_ntk"])
        # One vmap over the flattened grid. (A nested vmap — over σ_w², then σ_b² — returned
        # wrong q for ~20 % of a 64 × 64 grid at depth 100 with neural-tangents 0.6.5 on
        # jax 0.4.30's CPU backend; the flat form agrees with a per-point loop.)
        sw2, sb2 = jnp.meshgrid(
            jnp.asarray(payload["sigma_w2"]), jnp.asarray(payload["sigma_b2"]), indexing="ij"
        )
        grid, args = jax.jit(jax.vmap(one)), (sw2.ravel(), sb2.ravel())

        def summarize(outputs):
            names = ("q", "chi1", "ntk")[: len(outputs)]
            return {n: o.reshape(sw2.shape).tolist() for n, o in zip(names, outputs)} | meta

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
        args = (sw.ravel(), sb.ravel(), jnp.asarray(payload["x"]))

        def summarize(kernels):
            return {"nngp": kernels.reshape(sw.shape + kernels.shape[1:]).tolist()} | meta

    else:
        raise ValueError(f"unknown task {task!r}")
    return (lambda: jax.block_until_ready(grid(*args))), summarize


def _meanfield_fn(stax, jnp, phi, depth: int, q0: float, map_ntk: bool):  # pragma: no cover
    """``one(σ_w², σ_b²) -> (q^depth, χ₁[, Θ^depth])`` with neural-tangents' kernel functions."""

    def one(sw2, sb2):
        sw, sb = jnp.sqrt(sw2), jnp.sqrt(sb2)
        # Dense(1, 0) on x with |x|²/d = q0 gives the Gaussian pre-activation kernel q0.
        head = [stax.Dense(1, W_std=1.0, b_std=0.0)]
        # stax.repeat: neural-tangents' compiled loop (lax.scan, as gradflow's q_layers) over
        # the (φ, Dense) pair. The unrolled serial(*[φ, Dense] * depth) gives the same numbers
        # but, measured on a 64 × 64 grid at depth 100 (jax 0.4.30, CPU), its NNGP-only program
        # ran ~1.5x slower than this loop (XLA fused the 100 unrolled layers into fewer, larger
        # fusions that ran slower — also on one core) and took seconds to compile.
        body = [stax.repeat(stax.serial(phi(), stax.Dense(1, sw, sb)), depth)] if depth else []
        x = jnp.full((1, 1), jnp.sqrt(q0))
        # get="nngp" computes no NTK at all in neural-tangents 0.6.5 (not merely drops it): the
        # analytic kernel_fn (stax/requirements.py, _preprocess_kernel_fn.kernel_fn_x1) sets
        # compute_ntk = get is None or "ntk" in get, builds the input Kernel with ntk=None, and
        # every layer's kernel_fn (Dense, Erf, Relu, ElementwiseNumerical, …) updates the NTK
        # only `if ntk is not None`. gradflow's q_layers likewise iterates the length map alone.
        # (Under jit, XLA also drops an NTK that is computed but not returned — the earlier
        # get=None(...).nngp form compiled to the same program as get="nngp" — but this does not
        # rely on it, and traces ~20 % fewer operations.)
        kernel_fn = stax.serial(*head, *body)[2]
        if map_ntk:
            k = kernel_fn(x, None, get=("nngp", "ntk"))
            q, extra = k.nngp[0, 0], (k.ntk[0, 0],)
        else:
            q, extra = kernel_fn(x, None, get="nngp")[0, 0], ()
        # χ₁ from one more (φ, Dense) pair applied to a fresh input of length q, the cheapest
        # route neural-tangents' API offers (its kernels expose no χ₁ or E[φ'²] of their own;
        # the NTK recursion is where E[φ'φ'] appears): a one-layer NNGP+NTK step, 1/depth of
        # the map's layers. Carrying the NTK through all `depth` layers instead would also
        # overflow float32 in the chaotic phase (Θ grows like χ₁^depth); here Θ restarts at q
        # (Dense(1, 0) on the input gives Θ = K = q).
        k = stax.serial(*head)[2](jnp.sqrt(q).reshape(1, 1), None, get=None)
        k_next = stax.serial(phi(), stax.Dense(1, sw, sb))[2](k, get=None)
        chi1 = (k_next.ntk[0, 0] - k_next.nngp[0, 0]) / k.ntk[0, 0]
        return (q, chi1, *extra)

    return one


def _worker(task: str, payload: dict) -> dict:  # pragma: no cover - runs in the other venv
    """A one-shot task (:func:`call`): one untimed compiling call, then ``repeats`` timed."""
    run, summarize = _build_nt(task, payload)
    t0 = time.perf_counter()
    outputs = run()
    first = time.perf_counter() - t0
    times = []
    for _ in range(payload.get("repeats", 3)):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    timing = {"median_s": statistics.median(times), "times_s": times, "first_call_s": first}
    return {**summarize(outputs), **timing}


if __name__ == "__main__":  # pragma: no cover - the worker entry point
    if sys.argv[1] == "serve":
        serve(_build_nt)
    else:
        _out = _worker(sys.argv[1], json.loads(sys.stdin.read()))
        print(json.dumps(_out))
