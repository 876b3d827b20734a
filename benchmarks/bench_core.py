"""Core workloads, gradflow against the tools a researcher would otherwise use, in one process.

* ``matmul_rate``: this machine's float32 matmul rate (JAX and torch), the yardstick for the
  GFLOP/s of every other workload.
* ``a_mlp_partial_product_spectra``: singular values of all partial Jacobian products
  ∂h_K/∂h_k (k = 0 … K−1) of a tanh MLP, for many initialisations — gradflow
  (``backward_products`` + ``log_singular_values``, over inits) vs a plain ``jax.jacrev``
  per depth vs ``torch.func`` (``jacrev`` w.r.t. a perturbation of every layer's input, ``vmap``
  over inits).
* ``b_mlp_layer_grad_norms``: ‖∂L/∂θ_l‖ per layer of a depth-50 MLP on a batch — gradflow
  (``layer_grad_norms``) vs torch autograd.
* ``c_rnn_lyapunov_spectrum``: the full Lyapunov spectrum of a tanh RNN — gradflow
  (``lyapunov_spectrum`` on the chain) vs the same QR (Benettin) loop in torch.
* ``e_matfree_topk_*``: matrix-free top-k singular values (``spectra.top_singular_values``) vs
  the dense Jacobian at a width where both run, then alone at width 8192 (memory and time).
* ``d_meanfield_grid``: q^depth and χ₁ over a (σ_w², σ_b²) grid — gradflow.meanfield vs
  neural-tangents' kernel functions (in their own environment, see ``peers_nt``).

Every peer's result is checked against gradflow's before its time is recorded (``measure``).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import gradflow as gf
from benchmarks import _common as C
from benchmarks import peers_nt
from gradflow import gradients, jacobians, lyapunov, spectra

__all__ = ["run", "SIZES", "SetupA", "setup_a", "setup_c"]

SIZES = {
    "full": {
        "matmul": {"n": 4096},
        "a": {"width": 256, "depth": 100, "inits": 64},
        "b": {"width": 256, "depth": 50, "batch": 256},
        "c": {"width": 256, "steps": 1000, "input_dim": 16},
        "d": {"grid": 64, "depth": 100},
        "e_check": {"width": 1024, "steps": 50, "k": 8, "num_iters": 48},
        "e_big": {"width": 8192, "steps": 50, "k": 8, "num_iters": 48},
        "repeats": 5,
    },
    "quick": {
        "matmul": {"n": 2048},
        "a": {"width": 128, "depth": 30, "inits": 8},
        "b": {"width": 256, "depth": 50, "batch": 256},
        "c": {"width": 128, "steps": 300, "input_dim": 16},
        "d": {"grid": 64, "depth": 100},
        "e_check": {"width": 256, "steps": 50, "k": 4, "num_iters": 32},
        "e_big": {"width": 8192, "steps": 50, "k": 4, "num_iters": 24},
        "repeats": 3,
    },
}


def _log(msg: str) -> None:
    print(f"[bench_core] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------
# Matmul rate
# ------------------------------------------------------------------------------------------------


def matmul_rate(n: int, repeats: int) -> list[dict]:
    """GFLOP/s of an n × n float32 matmul (2n³ flops) in JAX and in torch."""
    dev = C.jax_device()
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    mm = jax.jit(jnp.matmul)
    flops = 2.0 * n**3
    out = []
    timing, _ = C.measure(lambda: mm(a, b), repeats=repeats)
    out.append(
        C.record(
            "matmul_rate",
            "jax.numpy.matmul",
            dev,
            sizes={"n": n},
            flops=flops,
            gflops=flops / timing["median_s"] / 1e9,
            gflops_best=flops / timing["min_s"] / 1e9,
            **timing,
        )
    )
    torch = C.torch_or_none()
    if torch is None:
        out.append(C.skipped_record("matmul_rate", "torch.matmul", dev, "torch not installed"))
        return out
    tdev, tdesc = C.torch_device()
    ta = torch.from_numpy(np.array(a)).to(tdev)
    tb = torch.from_numpy(np.array(b)).to(tdev)
    timing, _ = C.measure(lambda: torch.matmul(ta, tb), repeats=repeats)
    out.append(
        C.record(
            "matmul_rate",
            "torch.matmul",
            tdesc,
            sizes={"n": n},
            flops=flops,
            gflops=flops / timing["median_s"] / 1e9,
            gflops_best=flops / timing["min_s"] / 1e9,
            **timing,
        )
    )
    return out


def _with_rate(fields: dict, flops: float, peak_gflops: float | None) -> dict:
    gflops = flops / fields["median_s"] / 1e9
    fields = {**fields, "nominal_flops": flops, "gflops": gflops}
    if peak_gflops:
        fields["pct_of_matmul_rate"] = 100.0 * gflops / peak_gflops
    return fields


# ------------------------------------------------------------------------------------------------
# (a) singular values of all partial Jacobian products of an MLP, many initialisations
# ------------------------------------------------------------------------------------------------


class SetupA(NamedTuple):
    """Workload (a)'s model, input, stacked parameters of every init, and gradflow's call."""

    model: Any
    x: Any
    params: Any
    batch: int
    gradflow: Callable[[], Any]


def setup_a(sz: dict) -> SetupA:
    """Workload (a): a tanh MLP at σ_w = 1, ``inits`` initialisations, gradflow's jitted call."""
    width, depth, inits = sz["width"], sz["depth"], sz["inits"]
    model = gf.models.MLP(
        width=width, depth=depth, activation="tanh", kernel_init=gf.init.gaussian(1.0)
    )
    x = jax.random.normal(jax.random.key(1), (width,), jnp.float32)
    keys = jax.random.split(jax.random.key(0), inits)
    params = jax.jit(jax.vmap(lambda k: model.init(k, x)))(keys)
    # gradflow: lax.map over inits in batches (vmap inside a batch) bounds memory at
    # batch · K · n² floats for the products.
    batch = min(inits, 16)

    @jax.jit
    def gf_spectra(p):
        one = lambda q: jacobians.backward_products(model.chain(q, x)).log_singular_values()
        return jax.lax.map(one, p, batch_size=batch)

    return SetupA(model, x, params, batch, lambda: gf_spectra(params))


def workload_a(sz: dict, repeats: int, peak: float | None) -> list[dict]:
    width, depth, inits = sz["width"], sz["depth"], sz["inits"]
    wl, dev, records = "a_mlp_partial_product_spectra", C.jax_device(), []
    g = C.Group(records, repeats, peak)
    steps = depth - 1  # the chain: depth − 1 hidden-to-hidden maps
    extra = {"sizes": dict(sz, chain_steps=steps), "activation": "tanh", "sigma_w": 1.0}
    model, x, params, batch, gf_call = setup_a(sz)
    # Nominal flops of the product-scan algorithm per init: K forward-mode Jacobians (n tangents
    # through an n × n matmul: 2n³), K products (2n³), K SVDs (bidiagonalisation 8n³/3).
    flops = inits * steps * width**3 * (2 + 2 + 8 / 3)
    extra["nominal_flops_formula"] = "inits·K·n³·(2 + 2 + 8/3)"

    ref = g.add(
        wl,
        "gradflow (backward_products + log_singular_values, lax.map/vmap over inits)",
        dev,
        gf_call,
        check=None,
        extra=extra,
        flops=flops,
    )
    if ref is None:
        return records
    _products_only(sz, repeats, peak, model, x, params, records, batch)
    ref = np.asarray(ref)
    check = functools.partial(C.check_log_spectra, "log singular values", ref)

    # Peer 1: the plain JAX way — for each depth k, jacrev of the rest of the network.
    step = model.step
    hidden = params["params"]["hidden"]

    @jax.jit
    def states(p):  # h_0 … h_{K−1} for every init, (inits, K, n)
        def one(q):
            h0 = step(q["params"]["input"], x)
            scan = lambda h, th: (step(th, h), h)
            return jax.lax.scan(scan, h0, q["params"]["hidden"])[1]

        return jax.vmap(one)(p)

    @functools.partial(jax.jit, static_argnums=2)
    def jac_from(hk, hid, k):  # ∂h_K/∂h_k for every init, (inits, n, n)
        def run_tail(h, tail):
            return jax.lax.scan(lambda hh, th: (step(th, hh), None), h, tail)[0]

        tail = jax.tree_util.tree_map(lambda a: a[:, k:], hid)
        return jax.vmap(jax.jacrev(run_tail))(hk, tail)

    log_svd = jax.jit(lambda j: jnp.log(jnp.linalg.svd(j, compute_uv=False)))

    def jacrev_loop():
        hs = states(params)
        return jnp.stack([log_svd(jac_from(hs[:, k], hidden, k)) for k in range(steps)], axis=1)

    g.add(
        wl,
        "jax.jacrev per depth (Python loop over k, vmap over inits)",
        dev,
        jacrev_loop,
        check=check,
        extra=extra,
        flops=flops,
    )

    # Peer 2, "smart JAX": jacrev with respect to a zero perturbation ε_k added to every
    # layer's input gives all ∂h_K/∂h_k in ONE reverse pass (vmapped over n cotangents); the
    # perturbations enter as the scan's xs, so their cotangents are the scan's stacked outputs.
    def perturbed_final(eps, q):
        body = lambda h, inp: (step(inp[0], h + inp[1]), None)
        return jax.lax.scan(body, step(q["params"]["input"], x), (q["params"]["hidden"], eps))[0]

    @jax.jit
    def smart_jax(p):
        def one(q):
            j = jax.jacrev(perturbed_final)(jnp.zeros((steps, width), x.dtype), q)  # (n, K, n)
            return jnp.log(jnp.linalg.svd(jnp.swapaxes(j, 0, 1), compute_uv=False))

        return jax.lax.map(one, p, batch_size=batch)

    g.add(
        wl,
        "smart JAX (jax.jacrev w.r.t. per-layer perturbations + svd, lax.map/vmap over inits)",
        dev,
        lambda: smart_jax(params),
        check=check,
        extra=extra,
        flops=flops,
    )
    # The same gradflow call with OpenBLAS's own thread count (what jaxlib does without
    # gradflow.threads): nested threads, 4 on 2 cores.
    g.add(
        wl,
        "gradflow (as above, LAPACK threads: OpenBLAS default)",
        dev,
        C.with_lapack_threads(gf_call, os.cpu_count() or 1),
        check=check,
        extra=dict(extra, lapack_threads=os.cpu_count()),
        flops=flops,
    )

    # Peer 3: torch.func, the same one-pass idea; the perturbations as a TUPLE of K vectors
    # (indexing eps[j] of one (K, n) tensor makes the reverse pass scatter into a K × n
    # cotangent at every layer, O(K²n²) traffic: 1.65–5× slower).
    torch = C.torch_or_none()
    name = (
        "torch.func (jacrev w.r.t. a tuple of per-layer perturbations, vmap over inits) + svdvals"
    )
    if torch is None:
        records.append(C.skipped_record(wl, name, dev, "torch not installed", **extra))
        return records
    tdev, tdesc = C.torch_device()
    to_t = lambda a: torch.from_numpy(np.array(a)).to(tdev)
    w_in, b_in = to_t(params["params"]["input"]["kernel"]), to_t(params["params"]["input"]["bias"])
    w_h, b_h = to_t(hidden["kernel"]), to_t(hidden["bias"])
    xt = to_t(x)

    def final(eps, wi, bi, wh, bh):
        h = torch.tanh(xt @ wi + bi)
        for j in range(steps):
            h = torch.tanh((h + eps[j]) @ wh[j] + bh[j])
        return h

    jac = torch.func.vmap(torch.func.jacrev(final), in_dims=(None, 0, 0, 0, 0))
    eps0 = tuple(torch.zeros(width, dtype=torch.float32, device=tdev) for _ in range(steps))

    def torch_spectra():
        out = []
        for s in range(0, inits, batch):  # the same memory bound as gradflow's batches
            sl = slice(s, s + batch)
            j = torch.stack(jac(eps0, w_in[sl], b_in[sl], w_h[sl], b_h[sl]), 1)  # (b, K, n, n)
            out.append(torch.log(torch.linalg.svdvals(j)))
        return torch.cat(out)

    _torch_variants(
        g, wl, name, tdesc, torch_spectra, lambda r: check(r.cpu().numpy()), extra, flops
    )
    return records


def _torch_variants(g, wl, name, tdesc, fn, check, extra, flops) -> None:
    """A torch peer twice: torch's default thread count (one per core) and one thread."""
    torch = C.torch_or_none()
    default = torch.get_num_threads()
    for n, label in ((default, f"torch threads {default}"), (1, "torch threads 1")):
        g.add(
            wl,
            f"{name} [{label}]",
            tdesc,
            C.with_torch_threads(fn, n),
            check=check,
            extra=dict(extra, torch_threads=n),
            flops=flops,
        )


def _products_only(sz, repeats, peak, model, x, params, records, batch) -> None:
    """The products ∂h_K/∂h_k alone: reverse mode (vjp, the default) vs the jacfwd route.

    The jacfwd route forms each step Jacobian (n tangents through the step, 2n³) and multiplies
    it into the running product (2n³); reverse mode pulls the product's n rows back through the
    step with one vjp (2n³), so the expected ratio is about 2 on the matmuls.
    """
    wl = "a_mlp_backward_products"
    g = C.Group(records, repeats, peak)
    steps = sz["depth"] - 1
    extra = {"sizes": dict(sz, chain_steps=steps), "activation": "tanh", "sigma_w": 1.0}

    def fn(method):
        one = lambda q: tuple(jacobians.backward_products(model.chain(q, x), method=method))
        return jax.jit(lambda p: jax.lax.map(one, p, batch_size=batch))

    vjp, jac = fn("vjp"), fn("jacobians")
    ref = g.add(
        wl,
        "gradflow backward_products (reverse mode: one vjp per step, default)",
        C.jax_device(),
        lambda: vjp(params),
        check=None,
        extra=extra,
        flops=sz["inits"] * steps * sz["width"] ** 3 * 2,
    )
    if ref is None:
        return

    def check(got):
        # Same products by another route: float32 rounding of K ~ 100 renormalised products.
        np.testing.assert_allclose(np.asarray(got[1]), np.asarray(ref[1]), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(np.asarray(got[0]), np.asarray(ref[0]), atol=2e-4)
        return {"max_abs_unit_diff": float(np.max(np.abs(np.asarray(got[0]) - np.asarray(ref[0]))))}

    g.add(
        wl,
        "gradflow backward_products (method='jacobians': jacfwd step Jacobians + "
        "matmul, the previous route)",
        C.jax_device(),
        lambda: jac(params),
        check=check,
        extra=extra,
        flops=sz["inits"] * steps * sz["width"] ** 3 * 4,
    )


# ------------------------------------------------------------------------------------------------
# (b) per-layer gradient norms of a depth-50 MLP over a batch
# ------------------------------------------------------------------------------------------------


def workload_b(sz: dict, repeats: int, peak: float | None) -> list[dict]:
    width, depth, batch = sz["width"], sz["depth"], sz["batch"]
    wl, dev, records = "b_mlp_layer_grad_norms", C.jax_device(), []
    g = C.Group(records, repeats, peak)
    extra = {"sizes": dict(sz), "activation": "tanh", "loss": "mean squared error"}
    model = gf.models.MLP(
        width=width, depth=depth, activation="tanh", kernel_init=gf.init.gaussian(1.0)
    )
    kx, ky, kp = jax.random.split(jax.random.key(2), 3)
    xb = jax.random.normal(kx, (batch, width), jnp.float32)
    yb = jax.random.normal(ky, (batch, 1), jnp.float32)
    params = jax.jit(model.init)(kp, xb)
    loss = lambda p, b: jnp.mean((model.apply(p, b[0]) - b[1]) ** 2)
    gf_norms = jax.jit(lambda p, b: gradients.layer_grad_norms(loss, p, b).values)
    # Forward 2·B·n² per layer, backward 4·B·n² (input and weight gradients).
    flops = 6.0 * batch * width**2 * (depth + 1)
    extra["nominal_flops_formula"] = "6·B·n²·(depth + 1)"
    ref = g.add(
        wl,
        "gradflow (gradients.layer_grad_norms, jit)",
        dev,
        lambda: gf_norms(params, (xb, yb)),
        check=None,
        extra=extra,
        flops=flops,
    )
    if ref is None:
        return records
    ref = np.asarray(ref)
    _matmul_floors(g, wl, width, depth, batch, extra, flops)

    torch = C.torch_or_none()
    name = "torch autograd (per-layer parameters, loss.backward equivalent)"
    if torch is None:
        records.append(C.skipped_record(wl, name, dev, "torch not installed", **extra))
        return records
    tdev, tdesc = C.torch_device()
    p = params["params"]
    leaf = lambda a: torch.from_numpy(np.array(a)).to(tdev).requires_grad_(True)
    layers = [(leaf(p["input"]["kernel"]), leaf(p["input"]["bias"]))]
    layers += [
        (leaf(p["hidden"]["kernel"][j]), leaf(p["hidden"]["bias"][j])) for j in range(depth - 1)
    ]
    layers += [(leaf(p["readout"]["kernel"]), leaf(p["readout"]["bias"]))]
    flat = [t for layer in layers for t in layer]
    xt, yt = torch.from_numpy(np.array(xb)).to(tdev), torch.from_numpy(np.array(yb)).to(tdev)

    def torch_norms():
        h = xt
        for w, b in layers[:-1]:
            h = torch.tanh(torch.addmm(b, h, w))
        out = torch.addmm(layers[-1][1], h, layers[-1][0])
        grads = torch.autograd.grad(torch.mean((out - yt) ** 2), flat)
        sq = torch.stack([g.pow(2).sum() for g in grads]).reshape(-1, 2).sum(1)
        return sq.sqrt()

    # float32 gradients through 50 layers by two libraries (different summation orders): each
    # layer's norm agrees to ~eps·√(B·n)·depth ≈ 1e-4 relative; rtol 1e-3 leaves a 10x margin.
    check = lambda r: C.check_close(
        "layer gradient norms", ref, r.detach().cpu().numpy(), rtol=1e-3
    )
    _torch_variants(g, wl, name, tdesc, torch_norms, check, extra, flops)
    return records


def _matmul_floors(g, wl, width, depth, batch, extra, flops) -> None:
    """(b)'s floor: its 3·(depth + 1) B × n × n matmuls (forward, input and weight gradients),
    chained with a tanh, unrolled — in XLA (what any JAX program of (b) can reach) and in torch
    (MKL): the difference between the two is the matmul kernels', not the algorithm's.
    """
    count = 3 * (depth + 1)
    ws = jax.random.normal(jax.random.key(7), (count, width, width), jnp.float32) / width**0.5
    h0 = jax.random.normal(jax.random.key(8), (batch, width), jnp.float32)

    @jax.jit
    def xla_floor(h, w):
        for i in range(count):  # unrolled: no loop overhead in the floor
            h = jnp.tanh(h @ w[i])
        return h

    g.add(
        wl,
        f"floor: {count} chained B×n×n matmuls + tanh in XLA, unrolled (not a peer)",
        C.jax_device(),
        lambda: xla_floor(h0, ws),
        extra=extra,
        flops=flops,
    )
    torch = C.torch_or_none()
    if torch is None:
        return
    tdev, tdesc = C.torch_device()
    tw, th = (torch.from_numpy(np.array(a)).to(tdev) for a in (ws, h0))

    def torch_floor():
        h = th
        for i in range(count):
            h = torch.tanh(h @ tw[i])
        return h

    g.add(
        wl,
        f"floor: the same {count} matmuls + tanh in torch (MKL), torch threads "
        f"{torch.get_num_threads()} (not a peer)",
        tdesc,
        torch_floor,
        extra=extra,
        flops=flops,
    )


# ------------------------------------------------------------------------------------------------
# (c) Lyapunov spectrum of a tanh RNN
# ------------------------------------------------------------------------------------------------


def setup_c(sz: dict):
    """Workload (c): ``(model, inputs, params, gradflow's jitted call)`` for a tanh RNN."""
    model = gf.models.RNN(width=sz["width"], activation="tanh")
    u = jax.random.normal(jax.random.key(3), (sz["steps"], sz["input_dim"]), jnp.float32)
    params = jax.jit(model.init)(jax.random.key(4), u)
    gf_lyap = jax.jit(lambda p: lyapunov.lyapunov_spectrum(model.chain(p, u)))
    return model, u, params, lambda: gf_lyap(params)


def workload_c(sz: dict, repeats: int, peak: float | None) -> list[dict]:
    width, steps = sz["width"], sz["steps"]
    wl, dev, records = "c_rnn_lyapunov_spectrum", C.jax_device(), []
    g = C.Group(records, repeats, peak)
    extra = {
        "sizes": dict(sz),
        "activation": "tanh",
        "recurrent_init": "orthogonal(1.0)",
        "k": width,
    }
    model, u, params, gf_call = setup_c(sz)
    # Per step: J Q by n tangents (2n³) and a QR with Q formed (8n³/3).
    flops = steps * width**3 * (2 + 8 / 3)
    extra["nominal_flops_formula"] = "T·n³·(2 + 8/3)"
    ref = g.add(
        wl,
        "gradflow (lyapunov.lyapunov_spectrum on the chain, jit)",
        dev,
        gf_call,
        check=None,
        extra=extra,
        flops=flops,
    )
    if ref is None:
        return records
    ref = np.asarray(ref)
    g.add(
        wl,
        "gradflow (as above, LAPACK threads: OpenBLAS default)",
        dev,
        C.with_lapack_threads(gf_call, os.cpu_count() or 1),
        check=lambda r: C.check_close("Lyapunov exponents", ref, r, atol=1e-3, rtol=1e-4),
        extra=dict(extra, lapack_threads=os.cpu_count()),
        flops=flops,
    )

    # The floor of the algorithm: T × (one n × n matmul J·Q + one QR with Q formed), with a fixed
    # matrix standing in for J_t (no state, no Jacobian to compute), in one lax.scan.
    wrec = params["params"]["recurrent"]["kernel"]

    @jax.jit
    def floor(q0):
        def body(carry, _):
            q, total = carry
            q, r = jnp.linalg.qr(wrec @ q)
            return (q, total + jnp.log(jnp.abs(jnp.diagonal(r)))), None

        return jax.lax.scan(body, (q0, jnp.zeros(width, q0.dtype)), None, length=steps)[0][1]

    eye = jnp.eye(width, dtype=jnp.float32)
    g.add(
        wl,
        "floor: T × (J·Q matmul + QR), fixed J, lax.scan (not a peer: the algorithm's minimum)",
        dev,
        lambda: floor(eye),
        extra=extra,
        flops=flops,
    )

    torch = C.torch_or_none()
    name = "torch (Python loop: torch.func.vmap(jvp) · Q, torch.linalg.qr)"
    if torch is None:
        records.append(C.skipped_record(wl, name, dev, "torch not installed", **extra))
        return records
    tdev, tdesc = C.torch_device()
    p = params["params"]
    w = torch.from_numpy(np.array(p["recurrent"]["kernel"])).to(tdev)
    drive = torch.from_numpy(np.array(u @ p["input"]["kernel"] + p["input"]["bias"])).to(tdev)
    # The same Haar-random initial frame as gradflow (key 0, QR with diag(R) > 0): both then
    # compute the same finite-time exponents, not just the same limit.
    z = np.asarray(jax.random.normal(jax.random.key(0), (width, width), jnp.float32))
    q0, r0 = np.linalg.qr(z)
    q0 = torch.from_numpy((q0 * np.where(np.diag(r0) < 0, -1.0, 1.0)).astype(np.float32)).to(tdev)

    def torch_lyap():
        h = torch.zeros(width, dtype=torch.float32, device=tdev)
        q = q0
        total = torch.zeros(width, dtype=torch.float64, device=tdev)
        for t in range(steps):
            f = lambda hh, t=t: torch.tanh(hh) @ w + drive[t]
            jq = torch.func.vmap(
                lambda v, f=f, h=h: torch.func.jvp(f, (h,), (v,))[1], in_dims=1, out_dims=1
            )(q)
            h = f(h)
            q, r = torch.linalg.qr(jq)
            diag = torch.diagonal(r)
            q = q * torch.where(diag < 0, -1.0, 1.0)
            total += torch.log(diag.abs()).double()  # float64 sum: no Kahan needed
        return torch.sort(total / steps, descending=True).values

    # Identical math in float32 on a contracting (ρ = 1, tanh) RNN with the same initial frame,
    # so states and frames agree; the QRs (LAPACK in XLA vs torch's) round differently, and
    # for the most contracting directions log|R_ii| is ill-conditioned (the column norms of
    # J Q span e^{|λ_n − λ_1|}), so exponents differ by up to ~1.2e-4 nats/step (observed at
    # n = 128, T = 500). 1e-3 absolute + 1e-4 relative is an 8x margin; a wrong spectrum (a
    # different frame order, a missed sign, a wrong Jacobian) is off by O(0.1).
    check = lambda r: C.check_close(
        "Lyapunov exponents", ref, r.cpu().numpy(), atol=1e-3, rtol=1e-4
    )
    _torch_variants(g, wl, name, tdesc, torch_lyap, check, extra, flops)
    return records


# ------------------------------------------------------------------------------------------------
# (e) matrix-free top-k singular values at scale
# ------------------------------------------------------------------------------------------------


def _rnn_chain_params(width: int, steps: int, seed: int):
    # Gaussian (not orthogonal) recurrent init: an 8192 × 8192 QR would dominate the set-up.
    model = gf.models.RNN(width=width, activation="tanh", recurrent_init=gf.init.gaussian(1.0))
    u = jax.random.normal(jax.random.key(seed), (steps, 8), jnp.float32)
    params = jax.jit(model.init)(jax.random.key(seed + 1), u)
    return model, u, params


def workload_e(sz_check: dict, sz_big: dict, repeats: int) -> list[dict]:
    # Each part in its own function: the timing rounds run after both parts are set up, and the
    # closures they call must still see their own part's model, inputs and parameters (in one
    # scope, the second part's rebinding of those names made the "width 256" timings run the
    # width-8192 problem: 717 s for a dense route that takes 0.04 s).
    dev, records = C.jax_device(), []
    _workload_e_check(sz_check, repeats, records, dev)
    return _workload_e_big(sz_big, repeats, records, dev)


def _workload_e_check(sz_check: dict, repeats: int, records: list, dev: str) -> None:
    g = C.Group(records, repeats, None)

    # 1. Both routes at a width where the dense Jacobian is cheap: the matrix-free values are
    #    checked against the SVD of the dense end-to-end Jacobian.
    width, steps, k, iters = (sz_check[s] for s in ("width", "steps", "k", "num_iters"))
    wl = f"e_matfree_topk_check_n{width}_T{steps}"
    extra = {"sizes": dict(sz_check), "model": "tanh RNN, W ~ N(0, 1/n)"}
    model, u, params = _rnn_chain_params(width, steps, 10)
    dense = jax.jit(
        lambda p: jnp.log(
            jnp.linalg.svd(jacobians.end_to_end(model.chain(p, u)), compute_uv=False)[:k]
        )
    )
    ref = g.add(
        wl,
        "dense (jacobians.end_to_end + svd)",
        dev,
        lambda: dense(params),
        check=None,
        extra=extra,
    )
    mf = jax.jit(lambda p: spectra.top_singular_values(model.chain(p, u), k, num_iters=iters))
    if ref is not None:
        # float32: the dense product carries ~eps·steps relative error in σ_1; the Lanczos
        # values are converged to their residuals (< 1e-6 here); 1e-4 in log σ covers both.
        g.add(
            wl,
            "gradflow matrix-free (spectra.top_singular_values)",
            dev,
            lambda: mf(params),
            check=lambda r: C.check_close("log top-k σ", ref, r.log_values, atol=1e-4),
            extra=extra,
        )


def _workload_e_big(sz_big: dict, repeats: int, records: list, dev: str) -> list[dict]:
    # 2. Width 8192: matrix-free only. Validated by the Lanczos residual bound and one explicit
    #    residual ‖P v_1 − σ_1 u_1‖/σ_1 computed by an extra jvp pass.
    width, steps, k, iters = (sz_big[s] for s in ("width", "steps", "k", "num_iters"))
    wl = f"e_matfree_topk_n{width}_T{steps}"
    extra = {"sizes": dict(sz_big), "model": "tanh RNN, W ~ N(0, 1/n)"}
    model, u, params = _rnn_chain_params(width, steps, 20)
    jax.block_until_ready(params)
    g = C.Group(records, min(repeats, 2), None)  # each call takes ~a minute on 2 cores
    rss0 = C.peak_rss_reset()
    # Compiled ahead of time (recorded as compile_s) so XLA's own memory accounting of this very
    # program can be recorded; the first timed-and-checked call is then a plain run.
    t0 = time.perf_counter()
    mf = (
        jax.jit(lambda p: spectra.top_singular_values(model.chain(p, u), k, num_iters=iters))
        .lower(params)
        .compile()
    )
    compile_s = time.perf_counter() - t0

    @jax.jit
    def explicit_residual(p, v, uu, s):
        chain = model.chain(p, u)
        run = lambda h: gf.chain.final_state(chain.replace(h0=h))
        pv = jax.jvp(run, (chain.h0,), (v,))[1]
        return jnp.linalg.norm(pv - s * uu) / s

    def check_big(r):
        res = float(explicit_residual(params, r.right[:, 0], r.left[:, 0], r.values[0]))
        bound = float(r.residuals[0])
        # σ_1 of a 50-step product is O(e^-20) here, far inside float32's range, so the plain
        # (unscaled) jvp gives an independent check of the top singular pair.
        if not (res < 1e-3 and bound < 1e-3):
            raise C.CheckFailed(
                f"top singular pair not converged: ‖Pv−σu‖/σ = {res:.2e}, Lanczos bound {bound:.2e}"
            )
        return {
            "explicit_residual_top1": res,
            "lanczos_residuals": np.asarray(r.residuals).tolist(),
        }

    result = g.add(
        wl,
        "gradflow matrix-free (spectra.top_singular_values)",
        dev,
        lambda: mf(params),
        check=check_big,
        extra=extra,
    )
    if result is not None:
        peak = C.peak_rss_bytes()
        rec = records[-1]
        rec["log_top_singular_values"] = np.asarray(result.log_values).tolist()
        rec["weights_bytes"] = 4 * width * width
        rec["peak_rss_bytes"] = peak
        rec["rss_before_bytes"] = rss0
        if peak is not None and rss0 is not None:
            rec["peak_rss_increase_bytes"] = peak - rss0
        rec["compile_s"] = compile_s
        rec["xla_temp_bytes"] = int(mf.memory_analysis().temp_size_in_bytes)
        stats = getattr(jax.devices()[0], "memory_stats", lambda: None)()
        if stats and "peak_bytes_in_use" in stats:  # GPU/TPU: the allocator's own peak
            rec["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
    # The dense route at this width, estimated rather than run: a forward-mode Jacobian of the
    # whole chain pushes n tangents through every step.
    dense_flops = 2.0 * width**3 * steps + 8 / 3 * width**3
    records.append(
        C.skipped_record(
            wl,
            "dense (jacobians.end_to_end + svd)",
            dev,
            f"not run: the dense route needs ~{dense_flops / 1e12:.3g} TFLOP and "
            f"{4 * width * width / 2**20:.0f} MiB per n×n product "
            f"({steps * 4 * width * width / 2**30:.1f} GiB for all {steps} partial products)",
            sizes=dict(sz_big),
            estimated_flops=dense_flops,
        )
    )
    return records


# ------------------------------------------------------------------------------------------------
# (d) mean-field grid vs neural-tangents
# ------------------------------------------------------------------------------------------------


# Peers running in their own processes, closed once their workload has been timed.
_PEERS: list = []


def workload_d(sz: dict, repeats: int) -> list[dict]:
    ng, depth = sz["grid"], sz["depth"]
    wl, dev, records = f"d_meanfield_q_chi1_grid{ng}x{ng}_depth{depth}", C.jax_device(), []
    g = C.Group(records, repeats, None)
    activation, q0 = "erf", 1.0
    sw2 = np.linspace(0.25, 4.0, ng)
    # σ_b² > 0: at σ_b² = 0 and small σ_w² the length decays to exactly 0 in float32, where
    # neural-tangents' χ₁ = (Θ' − K')/Θ is 0/0 (gradflow returns the limit σ_w² φ'(0)²).
    sb2 = np.linspace(0.01, 0.5, ng)
    extra = {
        "sizes": {"grid": [ng, ng], "depth": depth},
        "activation": activation,
        "q0": q0,
        "sigma_w2": [0.25, 4.0],
        "sigma_b2": [0.01, 0.5],
    }
    name = "gradflow (meanfield.q_layers + meanfield.chi1, vectorised over the grid)"
    if importlib.util.find_spec("gradflow.meanfield") is None:
        records.append(C.skipped_record(wl, name, dev, "gradflow.meanfield not available", **extra))
        return records
    from gradflow import meanfield

    s, b = np.meshgrid(sw2, sb2, indexing="ij")
    s, b = jnp.asarray(s, jnp.float32), jnp.asarray(b, jnp.float32)

    @jax.jit
    def gf_grid(s, b):
        q = meanfield.q_layers(activation, s, b, q0, depth)[-1]
        return q, meanfield.chi1(activation, s, b, q=q)

    ref = g.add(wl, name, dev, lambda: gf_grid(s, b), check=None, extra=extra)
    nt_name = (
        f"neural-tangents {peers_nt.NT_VERSION} stax kernel_fn (own venv, jax "
        f"{peers_nt.JAX_VERSION}; NNGP-only repeat map + one NNGP/NTK layer for χ₁; jit+vmap "
        "over the grid; timed in its worker)"
    )
    if ref is None:
        return records
    try:
        if os.environ.get("GRADFLOW_BENCH_SKIP_NT"):
            raise peers_nt.PeerUnavailable("disabled (--skip-nt)")
        peer = peers_nt.MeanfieldPeer(activation, sw2, sb2, depth=depth, q0=q0)
    except peers_nt.PeerUnavailable as exc:
        records.append(C.skipped_record(wl, nt_name, dev, str(exc), **extra))
        return records
    _PEERS.append(peer)  # closed after the timing rounds (run's flush)
    answer = (np.asarray(peer.q), np.asarray(peer.chi1))

    # Both evaluate the same closed-form erf kernel (Williams 1997) in float32 through 100
    # layers of a contracting map (errors do not grow): observed agreement is ~1e-6 relative,
    # 1e-4 leaves a 100x margin for other platforms' transcendental functions.
    def check(got):
        info = C.check_close("q^depth", np.asarray(ref[0]), got[0], rtol=1e-4)
        info_chi = C.check_close("chi1", np.asarray(ref[1]), got[1], rtol=1e-4)
        return {"q": info, "chi1": info_chi}

    g.add(
        wl,
        nt_name,
        peer.device,
        lambda: (answer, peer.call()),
        check=check,
        extra=dict(extra, venv=peer.venv, venv_setup_s=peer.venv_setup_s, versions=peer.versions),
        self_timed=True,
    )
    return records


# ------------------------------------------------------------------------------------------------


def run(quick: bool = False, only: tuple[str, ...] | None = None, sizes=None) -> list[dict]:
    """All core workloads; one record per (workload, implementation).

    Args:
      quick: reduced sizes (recorded in each record's ``sizes``) so the suite runs in minutes.
      only: subset of ``("matmul", "a", "b", "c", "d", "e")``; default all.
      sizes: a dict shaped like ``SIZES["quick"]`` overriding the sizes (tests use tiny ones).
    """
    sizes = sizes or SIZES["quick" if quick else "full"]
    repeats = sizes["repeats"]
    C.set_budget(30.0 if quick else None)
    only = only or ("matmul", "a", "b", "c", "d", "e")
    records: list[dict] = []
    peak = None
    stages = [
        ("matmul", lambda: matmul_rate(sizes["matmul"]["n"], max(repeats, 10))),
        ("a", lambda: workload_a(sizes["a"], repeats, peak)),
        ("b", lambda: workload_b(sizes["b"], repeats, peak)),
        ("c", lambda: workload_c(sizes["c"], repeats, peak)),
        ("d", lambda: workload_d(sizes["d"], repeats)),
        ("e", lambda: workload_e(sizes["e_check"], sizes["e_big"], repeats)),
    ]
    for name, stage in stages:
        if name not in only:
            continue
        t0 = time.perf_counter()
        _log(f"workload {name} …")
        out = stage()
        C.flush()  # the interleaved timing rounds of the stage's implementations
        while _PEERS:
            _PEERS.pop().close()
        if name == "matmul":
            peak = next(
                (
                    r["gflops_best"]
                    for r in out
                    if r["implementation"] == "jax.numpy.matmul" and r.get("gflops")
                ),
                None,
            )
        for r in out:
            r["quick"] = quick
        records += out
        _log(f"workload {name} done in {time.perf_counter() - t0:.1f} s")
    return records
