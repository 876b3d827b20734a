"""Doya's one-neuron network: fixed points and folds against independent methods, hysteresis,
forward-mode derivatives against autodiff, and the cliff loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradflow import dynamics as dy


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _grid_fixed_points(w, b, lo=-60.0, hi=60.0, num=400_001):
    """Independent root count/locations: sign changes of g on a dense grid, refined by the secant
    of the bracketing pair (NumPy float64; no use of the folds or of gradflow)."""
    x = np.linspace(lo, hi, num)
    g = w * _sigmoid(x) + b - x
    idx = np.nonzero(np.sign(g[:-1]) != np.sign(g[1:]))[0]
    x0, x1, g0, g1 = x[idx], x[idx + 1], g[idx], g[idx + 1]
    return x0 - g0 * (x1 - x0) / (g1 - g0)


# A fixed random subset of (w, b): inhibitory, weak, and bistable self-weights.
_RNG = np.random.default_rng(0)
_CASES = [(-8.0, 3.0), (-2.0, 0.5), (0.0, 1.0), (2.0, -1.0), (4.0, -1.0), (5.0, -2.5), (6.0, -3.0)]
_CASES += [(float(w), float(b)) for w, b in zip(_RNG.uniform(-10, 12, 12), _RNG.uniform(-8, 4, 12))]


@pytest.mark.parametrize("w, b", _CASES)
def test_fixed_points_match_dense_grid(x64, w, b):
    fp = dy.doya_fixed_points(w, b)
    found = np.asarray(fp.x)[np.asarray(fp.valid)]
    expected = _grid_fixed_points(w, b)
    assert int(fp.count) == len(expected) == len(found)
    # Grid spacing 3e-4 and g is smooth, so the secant refinement is accurate to ~(3e-4)²·|g''|
    # < 1e-6; bisection is exact to float64. 1e-6 is the grid method's error, not ours.
    np.testing.assert_allclose(np.sort(found), np.sort(expected), atol=1e-6)
    # Residual of the fixed-point equation: bisection to adjacent floats, |g'| ≤ 1 + |w|/4.
    np.testing.assert_allclose(w * _sigmoid(found) + b, found, atol=1e-12 * (1 + abs(w)))


def test_fixed_points_invert_the_fixed_point_curve(x64):
    # Independent parametrisation: any x* is a fixed point of b = x* − w σ(x*). Every such x*
    # must be among the returned fixed points for that b.
    w = 7.0
    xs = np.linspace(-6.0, 8.0, 57)
    bs = xs - w * _sigmoid(xs)
    fp = dy.doya_fixed_points(w, jnp.asarray(bs))
    assert fp.x.shape == (57, 3) and fp.count.shape == (57,)
    dist = np.nanmin(np.abs(np.asarray(fp.x) - xs[:, None]), axis=1)
    # Bisection converges to adjacent float64 values: 1e-12 absolute is a few hundred ulps at |x|≈8.
    assert np.all(dist < 1e-12)


def test_stability_multiplier_and_iteration(x64):
    w, b = 6.0, -3.0  # symmetric bistable case: fixed points −x, 0, x
    fp = dy.doya_fixed_points(w, b)
    np.testing.assert_array_equal(fp.valid, [True, True, True])
    np.testing.assert_array_equal(fp.stable, [True, False, True])
    x = np.asarray(fp.x)
    np.testing.assert_allclose(x[1], 0.0, atol=1e-12)
    np.testing.assert_allclose(x[0], -x[2], atol=1e-12)
    # The multiplier is the derivative of the map (central differences, error O(h²) ≈ 1e-10).
    h = 1e-5
    fd = (w * _sigmoid(x + h) - w * _sigmoid(x - h)) / (2 * h)
    np.testing.assert_allclose(fp.multiplier, fd, rtol=1e-8)
    # Iterating from a perturbed point converges to the stable points and leaves the unstable one.
    for i, stable in enumerate(np.asarray(fp.stable)):
        traj = dy.doya_trajectory(w, b, x[i] + 1e-3, 200)
        assert (abs(float(traj.x[-1]) - x[i]) < 1e-9) == stable


def test_continuous_time_stability_differs_for_strong_inhibition(x64):
    # w = −10, b = 5: the single fixed point is x* = 0 with μ = w/4 = −2.5. The discrete map
    # overshoots (period doubling) while the ODE τẋ = −x + wσ(x) + b has eigenvalue μ − 1 < 0.
    fd = dy.doya_fixed_points(-10.0, 5.0)
    fc = dy.doya_fixed_points(-10.0, 5.0, continuous=True)
    assert int(fd.count) == 1
    np.testing.assert_allclose(fd.x[0], 0.0, atol=1e-12)
    assert not bool(fd.stable[0]) and bool(fc.stable[0])
    discrete = dy.doya_trajectory(-10.0, 5.0, 0.1, 400)
    euler = dy.doya_trajectory(-10.0, 5.0, 0.1, 400, dt=0.05)
    assert abs(float(discrete.x[-1])) > 1.0  # stays on a 2-cycle
    assert abs(float(euler.x[-1])) < 1e-9  # the ODE converges


@pytest.mark.parametrize("w", [4.5, 5.0, 6.0, 10.0, 20.0])
def test_saddle_nodes_match_extrema_of_inverse_curve(x64, w):
    # Independent: the folds are the local extrema of b(x) = x − w σ(x) (where db/dx = 0). Locate
    # them on a dense grid and refine by a parabola through the three grid points.
    x = np.linspace(-30, 30, 600_001)
    bx = x - w * _sigmoid(x)
    d = np.diff(bx)
    turns = np.nonzero(np.sign(d[:-1]) != np.sign(d[1:]))[0] + 1
    assert len(turns) == 2
    extrema = []
    for i in turns:
        y0, y1, y2 = bx[i - 1], bx[i], bx[i + 1]
        denom = y0 - 2 * y1 + y2
        t = 0.5 * (y0 - y2) / denom
        extrema.append(y1 - 0.25 * (y0 - y2) * t)
    sn = dy.doya_saddle_nodes(w)
    # Parabolic refinement of an extremum on a 1e-4 grid is accurate to ~h³|b'''| < 1e-10.
    np.testing.assert_allclose(np.sort(np.asarray(sn.b)), np.sort(extrema), atol=1e-9)
    assert sn.b[0] < sn.b[1]
    # Symmetry x → −x, σ → 1 − σ maps b to −w − b.
    np.testing.assert_allclose(sn.b[0] + sn.b[1], -w, atol=1e-12)
    # Inside the bistable interval there are three fixed points, outside one; at each fold the
    # fixed point is double (multiplier exactly 1).
    eps = 1e-6 * (sn.b[1] - sn.b[0])
    counts = dy.doya_fixed_points(
        w, jnp.array([sn.b[0] - eps, sn.b[0] + eps, sn.b[1] - eps, sn.b[1] + eps])
    ).count
    np.testing.assert_array_equal(counts, [1, 3, 3, 1])
    np.testing.assert_allclose(
        w * _sigmoid(np.asarray(sn.x)) * (1 - _sigmoid(np.asarray(sn.x))), 1.0, rtol=1e-12
    )


@pytest.mark.parametrize("w", [-3.0, 0.0, 2.0, 4.0])
def test_no_saddle_nodes_for_w_at_most_4(w):
    sn = dy.doya_saddle_nodes(w)
    assert np.all(np.isnan(sn.b)) and np.all(np.isnan(sn.x))
    bs = jnp.linspace(-10, 6, 161)
    np.testing.assert_array_equal(dy.doya_fixed_points(w, bs).count, 1)


def test_hysteresis_jumps_at_the_folds():
    w = 6.0
    sn = dy.doya_saddle_nodes(w)
    db = 0.01
    bs = jnp.arange(-5.0, -1.0 + db / 2, db)
    h = dy.doya_hysteresis(w, bs, settle=300)
    # Going up, the state rides the lower branch until it dies at the upper fold b[1]; going down,
    # the upper branch until the lower fold b[0]. Near a fold convergence slows as 1/√(b − b_fold)
    # (bottleneck), so with 300 settling steps a jump can lag by a grid step; the jump midpoint is
    # within 2 grid steps (0.02) of the fold.
    assert abs(float(h.b_jump_up) - float(sn.b[1])) < 2 * db
    assert abs(float(h.b_jump_down) - float(sn.b[0])) < 2 * db
    # Inside the bistable interval the two sweeps sit on different branches (the loop is open).
    inside = (np.asarray(bs) > float(sn.b[0]) + 0.05) & (np.asarray(bs) < float(sn.b[1]) - 0.05)
    up = np.asarray(h.x_up)[inside]
    down = np.asarray(h.x_down)[::-1][inside]
    assert np.all(down - up > 1.0)
    # Outside it both sweeps agree with the unique fixed point (converged to float32 precision).
    fp = dy.doya_fixed_points(w, bs)
    single = np.asarray(fp.count) == 1
    unique = np.nanmax(np.asarray(fp.x), axis=1)[single]
    np.testing.assert_allclose(np.asarray(h.x_up)[single], unique, atol=1e-4)


@pytest.mark.parametrize("dt", [1.0, 0.25])
def test_trajectory_derivatives_match_autodiff(x64, dt):
    w, b, x0, steps = 5.0, -2.6, 0.4, 30

    def final(w, b, x0):
        return dy.doya_trajectory(w, b, x0, steps, dt=dt).x[-1]

    traj = dy.doya_trajectory(w, b, x0, steps, dt=dt)
    gw, gb, gx = jax.grad(final, argnums=(0, 1, 2))(w, b, x0)
    # The forward recursions are the chain rule evaluated in the same order: float64 rounding.
    np.testing.assert_allclose(
        [traj.dx_dw[-1], traj.dx_db[-1], traj.dx_dx0[-1]], [gw, gb, gx], rtol=1e-10
    )
    # And every intermediate step against jacfwd of the whole trajectory.
    jac_b = jax.jacfwd(lambda bb: dy.doya_trajectory(w, bb, x0, steps, dt=dt).x)(b)
    np.testing.assert_allclose(traj.dx_db, jac_b, rtol=1e-10, atol=1e-14)


def test_gradients_vanish_far_and_explode_near_the_fold(x64):
    w, steps = 6.0, 60
    sn = dy.doya_saddle_nodes(w)
    # Far from the folds (single fixed point, |μ| ≈ 0.1): ∂x_T/∂x_0 decays like |μ|^T.
    b_far = -8.0
    fp = dy.doya_fixed_points(w, b_far)
    mu = float(np.nanmax(np.abs(np.asarray(fp.multiplier))))
    far = dy.doya_trajectory(w, b_far, float(np.nanmax(np.asarray(fp.x))), steps)
    np.testing.assert_allclose(abs(float(far.dx_dx0[-1])) ** (1 / steps), mu, rtol=1e-6)
    assert abs(float(far.dx_dx0[-1])) < 1e-50
    # Just inside the fold the surviving branch has μ → 1: the decay nearly stops.
    b_near = float(sn.b[1]) - 1e-6
    x_lower = float(dy.doya_fixed_points(w, b_near).x[0])
    near = dy.doya_trajectory(w, b_near, x_lower, steps)
    assert abs(float(near.dx_dx0[-1])) > 0.9
    # Sitting at a fixed point with multiplier μ, d_{t+1} = μ d_t + 1 gives
    # ∂x_T/∂b = (μ^T − 1)/(μ − 1) exactly: on the separatrix (the middle fixed point,
    # μ = w/4 = 1.5) it explodes like μ^T, on a stable branch it saturates at 1/(1 − μ).
    b_mid = -w / 2
    fp = dy.doya_fixed_points(w, b_mid)
    for slot in (1, 2):
        m = float(fp.multiplier[slot])
        traj = dy.doya_trajectory(w, b_mid, float(fp.x[slot]), steps)
        # The middle point is x = 0 exactly (symmetry), so the state does not drift; rounding
        # of the recursion only: 1e-9 relative.
        np.testing.assert_allclose(traj.dx_db[-1], (m**steps - 1) / (m - 1), rtol=1e-9)
    assert float(fp.multiplier[1]) == 1.5
    assert (1.5**steps - 1) / 0.5 > 1e10


def test_cliff_landscape(x64):
    bs = jnp.linspace(-3.2, -2.2, 2001)
    land = dy.cliff_landscape(bs, w=5.0, steps=20, target=1.0)
    np.testing.assert_allclose(land.loss, (land.x_final - 1.0) ** 2, rtol=1e-12)
    np.testing.assert_allclose(
        land.loss[7], dy.cliff_loss(5.0, bs[7], steps=20, target=1.0), rtol=1e-12
    )
    # The wall: |dL/db| peaks between the plateaus at ~80× its typical (median) plateau value on
    # this 5e-4 grid (the true peak, between grid points, is higher); 50× leaves margin.
    g = np.abs(np.asarray(land.grad))
    assert g.max() > 50 * np.median(g)
    # Off the wall the gradient matches central differences of the sampled loss (step 5e-4,
    # O(h²) error relative to the curvature, 1e-3 relative is ample on the plateaus).
    fd = np.gradient(np.asarray(land.loss), np.asarray(bs))
    plateau = np.abs(np.asarray(bs) - float(bs[np.argmax(g)])) > 0.1
    np.testing.assert_allclose(
        np.asarray(land.grad)[plateau][1:-1], fd[plateau][1:-1], rtol=1e-3, atol=1e-6
    )


def test_map_and_vectorisation():
    x = jnp.linspace(-2, 2, 5)
    np.testing.assert_allclose(dy.doya_map(x, 5.0, -2.5), 5.0 * jax.nn.sigmoid(x) - 2.5, rtol=1e-6)
    np.testing.assert_allclose(
        dy.doya_map(x, 5.0, -2.5, dt=0.5), x + 0.5 * (-x + 5.0 * jax.nn.sigmoid(x) - 2.5), rtol=1e-6
    )
    fp = dy.doya_fixed_points(jnp.array([[5.0], [6.0]]), jnp.array([-3.0, -2.5, -2.0]))
    assert fp.x.shape == (2, 3, 3) and fp.count.shape == (2, 3)
    jitted = jax.jit(dy.doya_fixed_points)(6.0, -3.0)
    np.testing.assert_allclose(jitted.x, dy.doya_fixed_points(6.0, -3.0).x, rtol=1e-6)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: dy.doya_map(0.0, 1.0, 0.0, dt=0.0), ValueError, "dt"),
        (lambda: dy.doya_map(0.0, 1.0, 0.0, dt=1.5), ValueError, "dt"),
        (lambda: dy.doya_trajectory(1.0, 0.0, 0.0, 0), ValueError, "steps"),
        (lambda: dy.doya_trajectory(1.0, 0.0, 0.0, 2.5), TypeError, "steps"),
        (lambda: dy.doya_trajectory(jnp.ones(2), 0.0, 0.0, 3), ValueError, "w must be a scalar"),
        (lambda: dy.doya_hysteresis(6.0, jnp.array([1.0, 0.0])), ValueError, "ascending"),
        (lambda: dy.doya_hysteresis(6.0, jnp.array([1.0])), ValueError, "at least 2"),
        (lambda: dy.doya_hysteresis(6.0, jnp.ones((2, 2))), ValueError, "b_values"),
        (lambda: dy.cliff_landscape(jnp.ones((2, 2))), ValueError, "b_values"),
    ],
)
def test_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
