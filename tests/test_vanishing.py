"""The core experiment (gradflow.experiments.vanishing): its measurements show the claims, and
(slow) `gradflow figures --only vanishing` writes the figures and numbers that state them."""

import json

import jax
import numpy as np
import pytest

from gradflow import cli
from gradflow.experiments import vanishing


@pytest.mark.slow  # end to end through the experiment, ~7 s of compilation
def test_measure_mlp_small_orders_the_activations():
    keys = jax.random.split(jax.random.key(0), 2)
    specs = {s.label: s for s in vanishing.mlp_specs(12)}
    with jax.enable_x64(True):
        sig, _, _ = vanishing.measure_mlp(specs["sigmoid, Glorot"], 32, 12, 16, keys)
        res, sv, ok = vanishing.measure_mlp(specs["residual ReLU, He"], 32, 12, 16, keys)
    # Shapes: depth + 1 layers (readout included), width singular values.
    assert sig.shape == (2, 13) and sv.shape == (2, 32) and ok.shape == (2, 32)
    # The logistic net loses more than 4 orders of magnitude over 11 hidden layers (σ' ≤ 1/4 and
    # Glorot weights have ‖W‖₂ ≈ 2, so each layer shrinks gradients by ~0.3 or more: 0.3¹¹ ≈ 2e-6);
    # the 1/√depth-scaled residual net stays within one order of magnitude.
    assert np.all(np.log10(sig[:, 0] / sig[:, -2]) < -4)
    assert np.all(np.abs(np.log10(res[:, 0] / res[:, -2])) < 1)


@pytest.mark.slow  # end to end through the experiment, ~6 s of compilation
def test_measure_rnn_respects_pascanu_bound():
    keys = jax.random.split(jax.random.key(1), 2)
    for rho in (0.8, 1.5):
        norms, lam1, rad = (np.asarray(a) for a in vanishing.measure_rnn(rho, 16, 30, keys))
        distance = np.arange(30, 0, -1)
        # float32 Jacobians: 1e-4 relative slack for rounding accumulated over 30 products.
        assert np.all(norms <= lam1[:, None] ** distance * (1 + 1e-4))
        # orthogonal·ρ has λ₁ = ρ = spectral radius
        np.testing.assert_allclose(lam1, rho, rtol=1e-5)
        np.testing.assert_allclose(rad, rho, rtol=1e-5)


@pytest.mark.slow
def test_figures_vanishing_end_to_end(tmp_path):
    assert cli.main(["figures", "--out", str(tmp_path), "--only", "vanishing"]) == 0
    out = tmp_path / "vanishing"
    for png in (
        "layer_grad_norms",
        "jacobian_singular_values",
        "rnn_weak_input",
        "rnn_strong_input",
    ):
        assert (out / f"{png}.png").stat().st_size > 10_000
    summary = json.loads((out / "summary.json").read_text())
    mlp = summary["mlp"]
    # The seeds' core claim, by number: sigmoid/Glorot vanishes by > 20 orders of magnitude over
    # 49 layers; Kumar and Yilmaz–Poli each recover part of it; tanh/ReLU/residual stay within ~1.
    assert mlp["sigmoid, Glorot"]["log10_first_over_last_hidden"] < -20
    assert (
        mlp["sigmoid, Glorot"]["log10_first_over_last_hidden"]
        < mlp["sigmoid, Kumar (3.6/√N)"]["log10_first_over_last_hidden"]
    )
    for label in ("tanh, Glorot", "ReLU, He", "residual ReLU, He"):
        assert abs(mlp[label]["log10_first_over_last_hidden"]) < 1.5
    weak = summary["rnn"]["weak_input"]
    assert weak["below"]["log_rate_per_step"] < 0 < weak["above"]["log_rate_per_step"]
    for regime in ("weak_input", "strong_input"):
        assert not any(
            summary["rnn"][regime][w]["bound_violated"] for w in ("below", "at", "above")
        )
    assert json.loads((tmp_path / "summary.json").read_text())["vanishing"]["seconds"] > 0
