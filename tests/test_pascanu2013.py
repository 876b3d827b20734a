"""The Pascanu et al. 2013 experiment: the clipping claim by number, Pascanu's bounds on the RNN
sweep, the order-to-chaos spectra in the linear regime, and the figures/outputs of run()."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradflow import activations, experiments, init
from gradflow.experiments import pascanu2013 as P


def test_registered():
    assert experiments.get("pascanu2013") is P
    assert P.NAME == "pascanu2013" and isinstance(P.DESCRIPTION, str) and "\n" not in P.DESCRIPTION


def test_clipping_crosses_the_cliff_unclipped_jumps_out():
    lr, clip_norm = 0.01, 1.0
    # All on the left plateau, a deterministic grid. 64 starts, not 16: whether a run steps over
    # the wall depends on float rounding (16 starts: 16/16 leave the window with full XLA
    # optimisation, 14/16 without LLVM optimisation; 64 starts: 64/64 and 62/64).
    starts = np.linspace(-3.5, -3.0, 64)
    result = P.clipping_experiment(starts, learning_rate=lr, steps=200, clip_norm=clip_norm)
    stats = P.clipping_stats(result)
    lo, hi = P.B_RANGE
    assert np.all(starts < result.wall) and lo < result.wall < hi
    u, c = stats["unclipped"], stats["clipped"]
    # Unclipped SGD, at the same learning rate: landing on the wall (|dL/db| up to ~800 vs ~10 on
    # the plateaus) throws b out of the window [−4, −1] in nearly every run (observed 64/64 and
    # 62/64, above; ≥ 90% allows for a few runs stepping over the wall without touching it).
    assert u["fraction_left_range"] >= 0.9
    assert u["max_step"] > 100 * lr * clip_norm  # observed 8.1, i.e. 800 × the clipped cap
    # Clipped SGD: never leaves the window, every run crosses the wall, and no step is longer
    # than lr·clip_norm (float32 rounding: 1e-6 relative).
    assert c["fraction_left_range"] == 0.0
    assert c["fraction_crossed_wall"] == 1.0
    assert c["max_step"] <= lr * clip_norm * (1 + 1e-6)
    assert np.all(result.b_clipped >= lo) and np.all(result.b_clipped <= hi)
    # …and it makes progress: the median loss drops from ~16 on the plateau to < 0.5 (observed
    # 0.07; the minimum lies on the wall, where a fixed clipped step keeps bouncing).
    assert c["median_initial_loss"] > 10 and c["median_final_loss"] < 0.5
    # Unclipped runs end far worse at the same budget (observed median 5.2).
    assert u["median_final_loss"] > 10 * c["median_final_loss"]


@pytest.mark.parametrize(
    "activation, scales",
    [
        pytest.param("tanh", [0.3, 0.6, 1.5], marks=pytest.mark.slow),  # same code path as sigmoid
        ("sigmoid", [1.2, 2.4, 6.0]),
    ],
)
def test_rnn_sweep_respects_pascanu_bounds(activation, scales):
    keys = jax.random.split(jax.random.key(0), 2)
    steps = 60
    sw = P.rnn_threshold_sweep(activation, scales, width=8, steps=steps, keys=keys)
    gamma = activations.get(activation).gamma
    bound = np.log(gamma * sw["lambda1"])  # ‖J_k‖ = ‖Wᵀ diag φ'(x)‖ ≤ γ λ₁ at every step
    # Each QR growth rate log‖J_k q_k‖ is ≤ log(γλ₁), hence so is their mean; ‖∂x_T/∂x_0‖ ≤
    # (γλ₁)^T (Pascanu §3.1). float32 rounding of the logs: 1e-5 per step.
    assert np.all(sw["top_exponent"] <= bound + 1e-5)
    assert np.all(sw["log_norm"] <= steps * bound + steps * 1e-5)
    # Sufficient for vanishing: λ₁ < 1/γ ⇒ every exponent negative.
    below = sw["lambda1"] < 1 / gamma
    assert below.any() and np.all(sw["top_exponent"][below] < 0)
    # Growing W moves the top exponent up by orders of the per-step rate (observed ≈ −1.5 at the
    # smallest scale, ≈ 0 at the largest: with n = 8 a single W may or may not explode there).
    assert np.min(sw["top_exponent"][-1]) > np.max(sw["top_exponent"][0]) + 0.5
    np.testing.assert_array_less(sw["rho"], sw["lambda1"] + 1e-5)  # ρ ≤ λ₁ always


def test_chaos_spectra_linear_regime_and_chaos():
    width, key = 32, jax.random.key(3)
    lam = P.chaos_spectra(np.array([0.5, 3.0]), width=width, steps=400, discard=100, key=key)
    w0 = init.gaussian(1.0)(jax.random.split(key)[0], (width, width), jnp.float32)
    log_eigs = np.sort(np.log(np.abs(np.linalg.eigvals(0.5 * np.asarray(w0, np.float64)))))[::-1]
    # g = 0.5: the state decays to 0 (ρ(0.5 W₀) < 1), so the exponents are log|eig(0.5 W₀)|; the
    # O(1/K) frame error over K = 300 counted steps is ~C/300 with C a few (observed 1.5e-3);
    # 0.02 leaves a ~10× margin.
    np.testing.assert_allclose(lam[0], log_eigs, atol=0.02)
    # g = 3: chaos, a clearly positive top exponent (observed 0.24 per step).
    assert lam[1, 0] > 0.1
    assert np.all(np.diff(lam, axis=1) <= 0)


def test_descend_matches_manual_sgd():
    loss = lambda p: jnp.sum((p - 3.0) ** 2)
    d = P.descend(loss, jnp.array([0.0, 1.0]), learning_rate=0.1, steps=5)
    p = np.array([0.0, 1.0])
    for _ in range(5):
        p = p - 0.1 * 2 * (p - 3.0)
    np.testing.assert_allclose(d.params[-1], p, rtol=1e-6)
    assert d.params.shape == (6, 2) and d.loss.shape == (6,) and d.grad_norm.shape == (5,)
    # Clipping rescales the gradient to norm ≤ clip_norm: each step ≤ lr·clip_norm.
    dc = P.descend(loss, jnp.array([0.0, 1.0]), learning_rate=0.1, steps=5, clip_norm=0.5)
    steps = np.linalg.norm(np.diff(np.asarray(dc.params), axis=0), axis=1)
    np.testing.assert_array_less(steps, 0.05 * (1 + 1e-6))


@pytest.mark.slow  # compiles every section once: ~15 s of CPU even at these tiny sizes
def test_run_writes_figures_and_numbers(tmp_path, monkeypatch):
    tiny = {
        "bif_points": 41,
        "settle": 50,
        "cliff_starts": 4,
        "surface": (9, 11),
        "rnn": (6, 20, 1, 3),
        "chaos": (8, 50, 10, 3),
        "newman_steps": 100,
    }
    monkeypatch.setitem(P.SIZES, False, tiny)
    summary = P.run(tmp_path)
    out = tmp_path / "pascanu2013"
    for name in ("bifurcation", "cliff", "rnn_thresholds", "order_to_chaos", "lyapunov_newman"):
        assert (out / f"{name}.png").stat().st_size > 10_000
        assert (out / f"{name}.npz").exists()
    assert (
        json.loads((out / "summary.json").read_text())["cliff"]["wall_b"]
        == summary["cliff"]["wall_b"]
    )
    json.dumps(summary)  # JSON-able as returned
    # The folds and the hysteresis jumps agree to the b grid spacing (0.1 here).
    sn = summary["bifurcation"]["saddle_node_b"]
    assert abs(summary["bifurcation"]["hysteresis_jump_down_b"] - sn[0]) < 0.2
    assert abs(summary["bifurcation"]["hysteresis_jump_up_b"] - sn[1]) < 0.2
