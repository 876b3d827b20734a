"""Scaling with depth, and the single Jacobian: gradflow against the per-depth loop and jacrev.

* ``a_scaling_products_depth{K}_w128`` — all K partial products ∂h_K/∂h_k of a tanh MLP (one
  initialisation): gradflow's reverse-mode ``backward_products`` (O(K) step pullbacks) against
  the per-depth loop a researcher writes first: for each k, the Jacobian of the rest of the
  network (``jax.jacfwd`` of a ``fori_loop`` from k to K, one compiled program for every k:
  O(K²) step Jacobian-products in all). The O(K) vs O(K²) advantage, nothing else.
* ``a_scaling_spectra_depth{K}_w128`` — the same plus singular values: gradflow with the full
  SVD of every product, gradflow's opt-in top-k mode (the ``k = 1`` and ``8`` largest by
  matmul-only iteration, accuracy in the record), against the per-depth loop + full SVD.
  Where the SVDs dominate (depth 100: 99 LAPACK SVDs of 128 × 128 cost more than all the
  products), only the top-k mode can show the algorithm's advantage.
* ``f_single_jacobian_mlp_depth50_w256`` — ONE input–output Jacobian ∂h_L/∂x of a depth-50
  width-256 MLP: ``gradflow.jacobians.input_output_jacobian`` vs ``jax.jacrev`` and
  ``torch.func.jacrev`` (at torch's default thread count and at one thread). Nothing to gain
  algorithmically: parity is the claim.

Every peer's result is checked against gradflow's before it is timed (``benchmarks._common``).
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

import gradflow as gf
from benchmarks import _common as C
from gradflow import jacobians

__all__ = ["run", "SIZES", "TINY"]

SIZES = {
    "full": {
        "depths": (100, 1000, 3000),
        "width": 128,
        "ks": (1, 8),
        "single": (50, 256),
        "repeats": 5,
    },
    "quick": {"depths": (100, 1000), "width": 128, "ks": (1, 8), "single": (50, 256), "repeats": 3},
}
TINY = {"depths": (6,), "width": 8, "ks": (1, 2), "single": (4, 8), "repeats": 1}


def _log(msg: str) -> None:
    print(f"[bench_scaling] {msg}", flush=True)


def _mlp(width: int, depth: int, seed: int = 0):
    """tanh MLP at σ_w = 1 (the edge of chaos: spectra stay in float32's range at depth 1000)."""
    model = gf.models.MLP(
        width=width, depth=depth, activation="tanh", kernel_init=gf.init.gaussian(1.0)
    )
    x = jax.random.normal(jax.random.key(seed + 1), (width,), jnp.float32)
    params = jax.jit(model.init)(jax.random.key(seed), x)
    return model, x, jax.block_until_ready(params)


def _per_depth_loop(model, x, params, steps: int):
    """``() -> (K, n, n)``: ∂h_K/∂h_k for each k by a separate Jacobian of the tail k … K."""
    step, hidden = model.step, params["params"]["hidden"]

    @jax.jit
    def states(p):  # h_0 … h_{K−1}
        h0 = step(p["params"]["input"], x)
        return jax.lax.scan(lambda h, th: (step(th, h), h), h0, p["params"]["hidden"])[1]

    # k is traced: one compiled program serves every depth (a static k would compile K
    # programs, minutes at K = 1000). Forward mode, because reverse mode cannot run through a
    # loop whose trip count is traced; for a square Jacobian both cost n tangents per step.
    @jax.jit
    def jac_from(hk, k):
        layer = lambda j, h: step(jax.tree_util.tree_map(lambda a: a[j], hidden), h)
        return jax.jacfwd(lambda h: jax.lax.fori_loop(k, steps, layer, h))(hk)

    def loop():
        hs = states(params)
        return jnp.stack([jac_from(hs[k], k) for k in range(steps)])

    return loop


def _check_products(ref, got) -> dict:
    """The loop's plain products against gradflow's log-scale ones, both as log σ-free forms.

    Compared as P / ‖P‖_F and log ‖P‖_F: float32 products of up to 1000 steps formed in
    different orders (forward tangents vs renormalised pullbacks) differ by ~eps·K relative,
    6e-5 at K = 1000; atol 1e-3 on the unit entries (each ~1/n = 8e-3 in size) and on the
    log-norms leaves a 10x margin; a wrong product is off by O(1).
    """
    unit, log_norm = (np.asarray(a, np.float64) for a in ref)
    got = np.asarray(got, np.float64)
    norms = np.linalg.norm(got.reshape(got.shape[0], -1), axis=1)
    info = C.check_close("log ‖P‖_F", log_norm, np.log(norms), atol=1e-3)
    C.check_close("P/‖P‖_F", unit, got / norms[:, None, None], atol=1e-3)
    return info


def _top_k(products, k: int):
    """gradflow's opt-in top-k route on formed products (values, residual bound)."""
    return jacobians.top_log_singular_values(products, k)


def scaling(depth: int, width: int, ks: tuple, repeats: int) -> list[dict]:
    """The two scaling workloads at one depth."""
    dev, records = C.jax_device(), []
    steps = depth - 1
    model, x, params = _mlp(width, depth)
    extra = {"sizes": {"width": width, "depth": depth, "chain_steps": steps}, "activation": "tanh"}
    loop = _per_depth_loop(model, x, params, steps)
    products = jax.jit(lambda p: tuple(jacobians.backward_products(model.chain(p, x))))
    # Nominal flops: K pullbacks of n rows through an n × n step (2n³ each) vs Σ_k (K − k)
    # forward Jacobian-products (2n³ each).
    gf_flops, loop_flops = steps * 2 * width**3, steps * (steps + 1) / 2 * 2 * width**3

    wl = f"a_scaling_products_depth{depth}_w{width}"
    g = C.Group(records, repeats, None)
    ref = g.add(
        wl,
        "gradflow (jacobians.backward_products: one reverse pass, log-scale)",
        dev,
        lambda: products(params),
        extra=dict(extra, nominal_flops_formula="K·2n³"),
        flops=gf_flops,
    )
    if ref is not None:
        g.add(
            wl,
            "per-depth loop (jax.jacfwd of layers k…K for each k, one compiled program)",
            dev,
            loop,
            check=lambda got: _check_products(ref, got),
            extra=dict(extra, nominal_flops_formula="K(K+1)/2·2n³"),
            flops=loop_flops,
        )
    C.flush()  # time this depth before building the next workload's programs

    wl = f"a_scaling_spectra_depth{depth}_w{width}"
    g = C.Group(records, repeats, None)
    full = jax.jit(lambda p: jacobians.backward_products(model.chain(p, x)).log_singular_values())
    ref = g.add(
        wl,
        "gradflow (backward_products + log_singular_values: full SVD of every product)",
        dev,
        lambda: full(params),
        extra=extra,
    )
    if ref is None:
        return records

    def check_top(got, k):
        info = C.check_log_spectra("log singular values", ref, got.log_values, top=k)
        if not bool(np.all(got.converged)):
            raise C.CheckFailed(f"top-k: {int((~np.asarray(got.converged)).sum())} not converged")
        # The certificate of the top value: a true σ_1 lies within −log(1 − r) of it.
        info["max_residual_top1"] = float(np.max(got.residuals[:, 0]))
        return info

    for k in ks:
        top = jax.jit(lambda p, k=k: _top_k(jacobians.backward_products(model.chain(p, x)), k))
        g.add(
            wl,
            f"gradflow top-k mode (backward_products + top_log_singular_values, k={k})",
            dev,
            lambda top=top: top(params),
            check=functools.partial(check_top, k=k),
            extra=dict(extra, k=k),
        )
    svd = jax.jit(lambda j: jnp.log(jnp.linalg.svd(j, compute_uv=False)))
    g.add(
        wl,
        "per-depth loop (jax.jacfwd of layers k…K for each k) + full SVD",
        dev,
        lambda: svd(loop()),
        check=functools.partial(C.check_log_spectra, "log singular values", ref),
        extra=extra,
    )
    C.flush()
    return records


def single_jacobian(depth: int, width: int, repeats: int) -> list[dict]:
    """One input–output Jacobian ∂h_L/∂x of a depth × width tanh MLP."""
    dev, records = C.jax_device(), []
    wl = f"f_single_jacobian_mlp_depth{depth}_w{width}"
    model, x, params = _mlp(width, depth, seed=5)
    extra = {"sizes": {"width": width, "depth": depth}, "activation": "tanh"}
    g = C.Group(records, repeats, None)
    flops = 2.0 * depth * width**3  # n tangents (or cotangents) through each n × n layer
    gf_jac = jax.jit(lambda p, v: jacobians.input_output_jacobian(model, p, v))
    ref = g.add(
        wl,
        "gradflow (jacobians.input_output_jacobian, jit)",
        dev,
        lambda: gf_jac(params, x),
        extra=extra,
        flops=flops,
    )
    if ref is None:
        return records
    ref = np.asarray(ref)
    # float32 Jacobians through 50 layers by different routes/libraries: entries agree to
    # ~eps·depth·‖J‖ ≈ 1e-5 of the largest entry; atol 1e-4·max|J| leaves a 10x margin.
    scale = float(np.abs(ref).max())
    check = lambda got: C.check_close("∂h_L/∂x", ref, got, atol=1e-4 * scale)  # noqa: E731
    jx = jax.jit(jax.jacrev(lambda v: model.features(params, v)))
    g.add(
        wl,
        "jax.jacrev(model.features), jit",
        dev,
        lambda: jx(x),
        check=check,
        extra=extra,
        flops=flops,
    )
    torch = C.torch_or_none()
    name = "torch.func.jacrev (per-layer Linear + tanh)"
    if torch is None:
        records.append(C.skipped_record(wl, name, dev, "torch not installed", **extra))
        return records
    tdev, tdesc = C.torch_device()
    to_t = lambda a: torch.from_numpy(np.array(a)).to(tdev)  # noqa: E731
    p = params["params"]
    layers = [(to_t(p["input"]["kernel"]), to_t(p["input"]["bias"]))]
    layers += [(to_t(w), to_t(b)) for w, b in zip(p["hidden"]["kernel"], p["hidden"]["bias"])]
    xt = to_t(x)

    def features(v):
        for w, b in layers:
            v = torch.tanh(torch.addmv(b, w.T, v))
        return v

    jac = torch.func.jacrev(features)
    default = torch.get_num_threads()
    for n in dict.fromkeys((default, 1)):
        g.add(
            wl,
            f"{name} [torch threads {n}]",
            tdesc,
            C.with_torch_threads(lambda: jac(xt), n),
            check=lambda got: check(got.cpu().numpy()),
            extra=dict(extra, torch_threads=n),
            flops=flops,
        )
    C.flush()
    return records


def run(quick: bool = False, sizes: dict | None = None) -> list[dict]:
    """Every scaling workload; one record per (workload, implementation)."""
    sizes = sizes or SIZES["quick" if quick else "full"]
    C.set_budget(30.0 if quick else None)
    records: list[dict] = []
    for depth in sizes["depths"]:
        t0 = time.perf_counter()
        records += scaling(depth, sizes["width"], sizes["ks"], sizes["repeats"])
        C.flush()  # the rounds of a workload that returned early (no torch, a failed reference)
        _log(f"depth {depth} done in {time.perf_counter() - t0:.1f} s")
    records += single_jacobian(*sizes["single"], sizes["repeats"])
    C.flush()
    for r in records:
        r["quick"] = quick
    return records
