"""Public API: every exported name imports; analyses jit, vmap and do not retrace."""

import importlib
import pkgutil

import _reference as ref
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow as gf
from gradflow.models import MLP, RNN


def _public_modules():
    names = ["gradflow"]
    for info in pkgutil.walk_packages(gf.__path__, prefix="gradflow."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return names


def test_top_level_names():
    assert gf.__all__, "gradflow.__all__ is empty"
    for name in gf.__all__:
        assert hasattr(gf, name), name
    # The DESIGN.md contract: these modules are reachable as gf.<name>.
    for module in ("activations", "init", "models", "chain", "jacobians", "gradients", "spectra"):
        assert module in gf.__all__ and importlib.import_module(f"gradflow.{module}")


def _modules_with_all():
    # Only modules that declare __all__: one without it has nothing to check here (it used to be
    # collected and skipped, a case that could never fail).
    return [m for m in _public_modules() if hasattr(importlib.import_module(m), "__all__")]


@pytest.mark.parametrize("module_name", _modules_with_all())
def test_every_public_name_imports(module_name):
    module = importlib.import_module(module_name)
    exported = module.__all__
    assert len(set(exported)) == len(exported), f"duplicates in {module_name}.__all__"
    for name in exported:
        assert hasattr(module, name), f"{module_name}.{name} in __all__ but not defined"
        # `from module import name` is what users write.
        exec(f"from {module_name} import {name}", {})


def test_design_contract_names():
    # The names DESIGN.md fixes for the core (later issues add the rest).
    for path in [
        "init.glorot",
        "init.he",
        "init.lecun",
        "init.orthogonal",
        "init.gaussian",
        "init.kumar",
        "init.yilmaz_poli",
        "models.MLP",
        "models.RNN",
        "models.LSTM",
        "models.GRU",
        "chain.Chain",
        "chain.Segmented",
        "chain.Layer",
        "chain.Scan",
        "chain.from_layers",
        "chain.from_module",
        "chain.from_cell",
        "chain.from_nnx",
        "jacobians.step_jacobians",
        "jacobians.backward_products",
        "jacobians.input_output_jacobian",
        "gradients.layer_grad_norms",
        "gradients.named_norms",
        "gradients.forward_order",
        "gradients.NamedNorms",
        "gradients.state_grad_norms",
        "gradients.chain_grad_norms",
        "spectra.singular_values",
        "spectra.spectral_radius",
        "spectra.condition_number",
    ]:
        obj = gf
        for part in path.split("."):
            obj = getattr(obj, part)
        assert callable(obj), path


# --- jit ------------------------------------------------------------------------------------------
@pytest.fixture(params=[lambda f: f, jax.jit], ids=["eager", "jit"])
def transform(request):
    return request.param


def _rnn_chain():
    model = RNN(width=4, activation="tanh")
    u = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    return model.chain(ref.random_params(model, u), u)


def test_step_jacobians_under_transform(transform):
    chain = _rnn_chain()
    jac = transform(gf.jacobians.step_jacobians)(chain)
    assert jac.shape == (5, 4, 4) and jac.dtype == jnp.float32
    # Independent: J_k = ∂h_{k+1}/∂h_k = Wᵀ·diag(tanh'(h_k)) for x_{k+1} = tanh(x_k) W + d_k.
    w = np.asarray(chain.params["kernel"], np.float64)
    hs = np.asarray(gf.chain.trajectory(chain), np.float64)
    expected = np.stack([w.T * (1 - np.tanh(h) ** 2)[None, :] for h in hs[:-1]])
    # float32 throughout: ~1e-7 relative per entry, 1e-5 is a 100× margin.
    np.testing.assert_allclose(jac, expected, rtol=1e-5, atol=1e-6)


def test_backward_products_under_transform(transform):
    chain = _rnn_chain()
    products = transform(gf.jacobians.backward_products)(chain)
    assert isinstance(products, gf.jacobians.JacobianProducts)
    assert products.unit.shape == (5, 4, 4) and products.log_norm.shape == (5,)
    jac = np.asarray(gf.jacobians.step_jacobians(chain), np.float64)
    # P_k = J_{K−1} ⋯ J_k by NumPy matrix products in float64.
    expected = [np.linalg.multi_dot([np.eye(4), np.eye(4)] + list(jac[k:][::-1])) for k in range(5)]
    np.testing.assert_allclose(products.matrices, np.stack(expected), rtol=1e-5, atol=1e-6)


def test_gradients_and_spectra_under_transform(transform):
    # A two-layer tanh net written directly on a params dict: layer_grad_norms needs no Flax.
    rng = np.random.default_rng(2)
    params = {
        "input": {"kernel": rng.standard_normal((3, 4)).astype(np.float32)},
        "readout": {"kernel": rng.standard_normal((4, 1)).astype(np.float32)},
    }
    x = rng.standard_normal((2, 3)).astype(np.float32)

    def loss(p, b):
        return jnp.sum(jnp.tanh(b @ p["input"]["kernel"]) @ p["readout"]["kernel"])

    norms = transform(lambda p, b: gf.gradients.layer_grad_norms(loss, p, b))(params, x)
    assert norms.names == ("input", "readout")
    # By hand: ∂L/∂W₂ = Σ_b tanh(x_b W₁); ∂L/∂W₁ = Σ_b x_bᵀ (tanh'(x_b W₁) ⊙ W₂ᵀ).
    h = np.tanh(x @ params["input"]["kernel"])
    g_out = h.sum(0)
    g_in = x.T @ ((1 - h**2) * params["readout"]["kernel"][:, 0][None, :])
    np.testing.assert_allclose(
        norms.values, [np.linalg.norm(g_in), np.linalg.norm(g_out)], rtol=1e-5
    )
    a = rng.standard_normal((3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(
        transform(gf.spectra.singular_values)(a),
        np.linalg.svd(a, compute_uv=False),
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        transform(gf.spectra.condition_number)(a), np.linalg.cond(a.astype(np.float64)), rtol=1e-3
    )


# --- vmap -----------------------------------------------------------------------------------------
def _stacked_params(model, x, seeds):
    """Parameters for several seeds, stacked on a leading axis (as a sweep over seeds vmaps)."""
    trees = [ref.random_params(model, x, seed=s) for s in seeds]
    return jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *trees), trees


def test_vmap_layer_grad_norms_over_seeds_equals_stacking():
    model = MLP(width=4, depth=3, activation="tanh")
    x = np.random.default_rng(3).standard_normal((2, 3)).astype(np.float32)
    loss = lambda p, b: jnp.sum(model.apply(p, b) ** 2)  # noqa: E731
    f = lambda p: gf.gradients.layer_grad_norms(loss, p, x)  # noqa: E731
    stacked, trees = _stacked_params(model, x, range(3))
    batched = jax.jit(jax.vmap(f))(stacked)
    assert batched.log10.shape == (3, 4) and len(batched) == 4  # names stay static
    single = jax.jit(f)
    # vmap and a loop run the same float32 ops on the same numbers; 1e-5 allows reassociation.
    np.testing.assert_allclose(
        batched.values, np.stack([single(t).values for t in trees]), rtol=1e-5, atol=1e-7
    )


def test_vmap_backward_products_over_seeds():
    model = RNN(width=4)
    u = np.random.default_rng(5).standard_normal((5, 3)).astype(np.float32)
    f = lambda p: gf.jacobians.backward_products(model.chain(p, u)).log_norm  # noqa: E731
    stacked, trees = _stacked_params(model, u, range(3))
    batched = jax.jit(jax.vmap(f))(stacked)
    single = jax.jit(f)
    np.testing.assert_allclose(batched, np.stack([single(t) for t in trees]), rtol=1e-5, atol=1e-6)


def test_vmap_init_over_keys(key):
    # Sweeps vmap model.init over keys: each slice must be that key's own initialisation.
    model = RNN(width=4)
    u = jnp.ones((5, 3))
    keys = jax.random.split(key, 2)
    batched = jax.jit(jax.vmap(lambda k: model.init(k, u)))(keys)
    single = jax.jit(model.init)
    for i, k in enumerate(keys):
        one = single(k, u)
        jax.tree_util.tree_map(
            lambda a, b, i=i: np.testing.assert_allclose(a[i], b, rtol=1e-6), batched, one
        )


# --- no retracing ---------------------------------------------------------------------------------
@pytest.mark.parametrize("activation", ["tanh", lambda z: jnp.sin(z)], ids=["named", "callable"])
def test_jitted_analysis_does_not_retrace(activation):
    # A new chain (new params, same shapes) must reuse the compiled analysis: the chain's static
    # step (holding the activation) has to compare equal between model.chain calls.
    traces = []

    @jax.jit
    def analyse(chain):
        traces.append(1)
        return gf.jacobians.backward_products(chain).log_norm

    model = MLP(width=4, depth=4, activation=activation)
    x = np.ones(3, np.float32)
    for seed in range(3):
        analyse(model.chain(ref.random_params(model, x, seed=seed), x))
    assert len(traces) == 1
