"""gradflow.train.amplification: Basodi et al.'s gradient amplification as an optax transform."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradflow import gradients
from gradflow.train.amplification import AmplifyState, amplified_layers, amplify

DEPTH = 5  # layers: input, hidden/0 … hidden/3, readout


def _grads(seed=0):
    """A gradient tree in gradflow's MLP layout (d = 3, n = 4, 2 outputs), all entries nonzero."""
    shapes = {
        "input": {"kernel": (3, 4), "bias": (4,)},
        "hidden": {"kernel": (DEPTH - 1, 4, 4), "bias": (DEPTH - 1, 4)},
        "readout": {"kernel": (4, 2), "bias": (2,)},
    }
    rng = np.random.default_rng(seed)
    # 1 + |N(0, 1)| keeps every entry away from 0, so every ratio below is defined (NumPy: eager
    # jax.random would compile a program per leaf shape)
    return {
        "params": jax.tree.map(
            lambda s: jnp.asarray(1.0 + np.abs(rng.normal(size=s)), jnp.float32),
            shapes,
            is_leaf=lambda s: isinstance(s, tuple),
        )
    }


def _per_layer(tree):
    """{layer name: array} with the stacked hidden kernel and bias split per layer (NumPy)."""
    p = jax.device_get(tree["params"])
    out = {"input": p["input"], "readout": p["readout"]}
    for i in range(DEPTH - 1):
        out[f"hidden/{i}"] = jax.tree_util.tree_map(lambda a, i=i: a[i], p["hidden"])
    return out


def _ratios(amplified, plain):
    """{layer: the set of distinct values of amplified / plain over its entries}."""
    a, p = _per_layer(amplified), _per_layer(plain)
    return {
        name: set(
            np.concatenate(
                [
                    (np.asarray(x) / np.asarray(y)).ravel()
                    for x, y in zip(jax.tree.leaves(a[name]), jax.tree.leaves(p[name]))
                ]
            ).tolist()
        )
        for name in a
    }


def test_ratio_is_the_factor_on_chosen_layers_in_schedule_and_one_elsewhere():
    """Acceptance: amplified / plain == factor exactly on the chosen layers while active, == 1
    exactly on the others and outside the step range; a power-of-two factor makes the ratio
    itself exact (x·4 is exact in binary floating point), and a factor of 3 gives exactly the
    rounded product g·3. One compiled program serves both factors (a traced factor) and every
    step (the step count is in the state)."""
    chosen = ["input", "hidden/1", "hidden/3", "readout"]
    g = _grads()

    @jax.jit
    def seven_steps(factor):
        tx = amplify(factor, layers=chosen, active=(1, 3))
        state, outs = tx.init(g), []
        for _ in range(4):
            out, state = tx.update(g, state)
            outs.append(out)
        return outs, state

    for factor in (4.0, 3.0):
        outs, state = seven_steps(factor)
        assert int(state.count) == 4
        for t, out in enumerate(outs):
            ratios = _ratios(out, g)
            on = 1 <= t < 3
            for name, r in ratios.items():
                if on and name in chosen and factor == 4.0:
                    assert r == {4.0}, (t, name, r)
                elif not (on and name in chosen):
                    assert r == {1.0}, (t, name, r)
            if on and factor == 3.0:
                a, p = _per_layer(out), _per_layer(g)
                for name in chosen:
                    for x, y in zip(jax.tree.leaves(a[name]), jax.tree.leaves(p[name])):
                        np.testing.assert_array_equal(x, y * np.float32(3.0))


def test_predicate_and_default_names_match_named_norms():
    """Layer names are gradients.named_norms' names; a predicate selects by name."""
    g = _grads()
    names = jax.eval_shape(gradients.named_norms, g).names
    mask = amplified_layers(g, layers=lambda n: n.startswith("hidden"))
    assert set(mask) == {"input", "hidden", "readout"}
    assert not bool(mask["input"]) and not bool(mask["readout"])
    np.testing.assert_array_equal(mask["hidden"], np.ones(DEPTH - 1, bool))
    assert len(names) == DEPTH + 1
    with pytest.raises(ValueError, match="not layer names"):
        amplified_layers(g, layers=["hidden/9"])


def _flat(mask):
    return jnp.concatenate([mask["input"][None], mask["hidden"], mask["readout"][None]])


def test_random_draw_is_reproducible_uniform_and_of_the_stated_size():
    """fraction = 0.5 of the 6 layers: exactly 3 per draw, the same for the same key, and each
    layer drawn with probability 1/2: over 4000 keys each frequency is within 5 standard errors
    (√(0.25/4000) ≈ 0.008) of 0.5. Only candidates are ever drawn."""
    g = _grads()

    @jax.jit
    @jax.vmap
    def draw(key):
        both = amplified_layers(g, fraction=0.5, key=key)
        ends = amplified_layers(g, layers=["input", "readout"], fraction=0.5, key=key)
        return _flat(both), _flat(ends)

    keys = jax.random.split(jax.random.key(3), 4000)
    masks, ends = (np.asarray(m) for m in draw(keys))
    assert (masks.sum(1) == 3).all()
    np.testing.assert_array_equal(masks, np.asarray(draw(keys)[0]))
    assert len({tuple(m) for m in masks}) == 20  # all C(6, 3) subsets occur
    assert np.abs(masks.mean(0) - 0.5).max() < 5 * np.sqrt(0.25 / 4000)
    assert (ends.sum(1) == 1).all() and not ends[:, 1:-1].any()
    assert 0.45 < ends[:, 0].mean() < 0.55


def test_vmap_over_keys_and_factors_equals_separate_runs_and_redraws():
    """Under jit(vmap(...)) each instance gets what it gets alone; with redraw_every the subset
    is the one drawn from fold_in(key, t // redraw_every)."""
    g = _grads()
    keys = jax.random.split(jax.random.key(1), 3)
    factors = jnp.array([1.0, 2.0, 8.0])

    def run(key, factor):
        tx = amplify(factor, fraction=0.5, key=key, redraw_every=2)
        state, outs = tx.init(g), []
        for t in range(3):
            out, state = tx.update(g, state)
            mask = amplified_layers(g, fraction=0.5, key=jax.random.fold_in(key, t // 2))
            outs.append((out, _flat(mask)))
        return outs

    batched = jax.device_get(jax.jit(jax.vmap(run))(keys, factors))
    alone_fn = jax.jit(run)
    names = ["input", *[f"hidden/{j}" for j in range(DEPTH - 1)], "readout"]
    for i in range(3):
        alone = jax.device_get(alone_fn(keys[i], factors[i]))
        for t in range(3):
            got = jax.tree.map(lambda a, i=i: a[i], batched[t])
            jax.tree.map(np.testing.assert_array_equal, got, alone[t])
            ratios = _ratios(got[0], g)
            for name, on in zip(names, np.asarray(got[1])):
                assert ratios[name] == {float(factors[i]) if on else 1.0}


def test_chains_before_an_optimiser():
    """optax.chain(amplify, sgd): the step is −lr · factor · g on the amplified layer only."""
    g = _grads()
    tx = optax.chain(amplify(2.0, layers=["readout"]), optax.sgd(0.5))
    state = tx.init(g)
    assert isinstance(state[0], AmplifyState)
    upd, _ = jax.jit(tx.update)(g, state, g)
    np.testing.assert_array_equal(
        upd["params"]["readout"]["kernel"], -0.5 * (2.0 * g["params"]["readout"]["kernel"])
    )
    np.testing.assert_array_equal(
        upd["params"]["input"]["kernel"], -0.5 * g["params"]["input"]["kernel"]
    )


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(factor=0.0), ValueError, "factor"),
        (dict(factor=float("nan")), ValueError, "factor"),
        (dict(factor="big"), TypeError, "factor"),
        (dict(factor=2.0, fraction=1.5, key=jax.random.key(0)), ValueError, "fraction"),
        (dict(factor=2.0, fraction=0.0, key=jax.random.key(0)), ValueError, "fraction"),
        (dict(factor=2.0, fraction=0.5), ValueError, "key is required"),
        (dict(factor=2.0, key=jax.random.key(0)), ValueError, "only used with fraction"),
        (dict(factor=2.0, active=(5, 2)), ValueError, "active"),
        (dict(factor=2.0, active=(-1, 2)), ValueError, "active"),
        (dict(factor=2.0, active=(0.5, 2)), ValueError, "active"),
        (dict(factor=2.0, active=3), ValueError, "active"),
        (dict(factor=2.0, layers="input"), TypeError, "layers"),
        (
            dict(factor=2.0, fraction=0.5, key=jax.random.key(0), redraw_every=0),
            ValueError,
            "redraw_every",
        ),
        (dict(factor=2.0, depth=0), ValueError, "depth"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        amplify(**kwargs)


def test_layers_that_select_nothing_fail_at_the_first_update():
    tx = amplify(2.0, layers=lambda n: False)
    g = _grads()
    with pytest.raises(ValueError, match="selects none"):
        tx.update(g, tx.init(g))
