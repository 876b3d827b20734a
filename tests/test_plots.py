"""gradflow.plots and the experiments' figure functions: every public plotting function draws with
ax=None and into a caller's axes, importing leaves matplotlib's backend alone, save_figure writes a
PNG and a PDF, and (slow) every experiment's figures() redraws from its saved numbers exactly what
its run() drew."""

from __future__ import annotations

import inspect
import io
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import matplotlib.image as mpimg
import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gradflow import experiments, plots
from gradflow.experiments import _io

RNG = np.random.default_rng(0)


def _pos(*shape):
    """Positive values spread over a few decades."""
    return 10.0 ** RNG.uniform(-3.0, 1.0, shape)


def _desc(*shape):
    """Positive values sorted in descending order along the last axis."""
    return -np.sort(-_pos(*shape), axis=-1)


# name -> (args, kwargs, number of panels); small synthetic data in the documented shapes
CASES = {
    "layer_grad_norms": (({"a": _pos(3, 6), "b": _pos(3, 6)},), {"title": "t"}, 1),
    "log_singular_value_density": (
        ({"a": RNG.normal(size=50), "b": RNG.normal(size=50) - 3.0},),
        {"floors": {"b": -5.0}, "title": "t"},
        2,
    ),
    "rnn_backprop_norms": (
        (np.arange(10, 0, -1), {"x": _pos(3, 10)}, {"x": _pos(10)}),
        {"title": "t"},
        1,
    ),
    "partial_jacobian_power_laws": (
        (np.arange(1, 11), {"a": RNG.normal(size=(3, 10))}, {"a": RNG.normal(size=10)}),
        {},
        1,
    ),
    "partial_jacobian_phase_diagram": (
        (
            np.linspace(0.5, 2.5, 5),
            np.linspace(0.0, 1.0, 4),
            np.linspace(0.5, 1.5, 20).reshape(4, 5),  # crosses ζ = 1: the contour exists
            np.linspace(-1.0, 1.0, 20).reshape(4, 5),  # crosses log χ₁ = 0
            np.array([1.0, 2.0, 1.5]),
            np.array([0.0, 0.5, 1.0]),
            *RNG.uniform(0.5, 1.5, (2, 3)),
            *RNG.uniform(-1.0, 1.0, (2, 3)),
        ),
        {"title": "t"},
        3,
    ),
    "cnn_singular_value_spread": (
        (np.array([1, 2, 4, 8]), {"a": np.log10(_desc(2, 4, 5))}),
        {"resolved": {"a": RNG.uniform(size=(2, 4, 5)) > 0.2}},
        1,
    ),
    "cnn_state_gradient_norms": (({"a": RNG.normal(size=(2, 8))},), {}, 1),
    "cnn_q_c_layers": (
        ({"a": _pos(2, 6)}, {"a": _pos(2, 6)}, _pos(6), _pos(6)),
        {"title": "t"},
        2,
    ),
    "cnn_fourier_mode_decay": (
        (
            {"a": np.vstack([np.ones(4), _pos(4, 4) / 20]), "b": np.ones((5, 4))},
            {"a": np.full((5, 4), 1e-3), "b": np.full((5, 4), 1e-3)},
            {"a": RNG.uniform(0.1, 0.9, 4), "b": RNG.uniform(0.1, 0.9, 4)},
        ),
        {"title": "t"},
        2,
    ),
    "token_collapse": (
        (
            {"attention": RNG.uniform(size=(2, 5)), "attention, s=1/√L": RNG.uniform(size=(2, 5))},
            {"attention": _pos(2, 5), "attention, s=1/√L": _pos(2, 5)},
        ),
        {"title": "t"},
        2,
    ),
    "uniform_attention_growth": (
        ({"α = 1": 1.0 + _pos(4, 6)}, {"α = 1": 2.0 ** np.arange(6)}, {"α = 1": _pos(4, 6)}),
        {"bound": np.e, "title": "t"},
        2,
    ),
    "gradient_scale_slopes": (
        (
            np.array([4, 8, 16]),
            {"pre-LN": _pos(3, 3)},
            {"pre-LN": (-0.5, -0.6, -0.4)},
            {"pre-LN": -0.5},
            _pos(3, 17),
        ),
        {"title": "t"},
        2,
    ),
    "sublayer_jacobian_spectra": (
        ({"pre-LN": _desc(2, 4, 6)}, ["attention", "mlp"] * 2, {"pre-LN": RNG.normal(size=(2, 4))}),
        {"title": "t"},
        2,
    ),
    "chi1_phase_diagram": (
        (
            np.linspace(0.5, 4.0, 5),
            np.linspace(0.0, 0.5, 4),
            np.linspace(-0.8, 0.4, 20).reshape(4, 5),  # crosses every contour level
            np.linspace(1.0, 2.0, 3),
            np.linspace(0.0, 0.5, 3),
            *np.meshgrid([1.0, 2.0, 3.0], [0.0, 0.3]),
            np.linspace(-0.8, 0.4, 12).reshape(2, 3, 2),
        ),
        {"width": 8, "depth": 4},
        1,
    ),
    "q_c_maps": (
        (
            {
                regime: {
                    "q": _pos(4, 5, 2),
                    "c": RNG.uniform(size=(4, 5, 2)),
                    "q_theory": _pos(5, 2),
                    "c_theory": RNG.uniform(size=(5, 2)),
                    "sigma_w2": sw2,
                }
                for regime, sw2 in (("ordered", 1.2), ("chaotic", 3.0))
            },
        ),
        {"sigma_b2": 0.05, "starts": ((3.0, 0.1), (0.2, 0.9)), "pairs": 2, "width": 8, "seeds": 2},
        2,
    ),
    "isometry_spectra": (
        (
            {
                f"{act}/{weights}": {
                    "log_lambda": RNG.normal(size=40),
                    "resolved": RNG.uniform(size=40) > 0.1,
                    "grid": np.geomspace(1e-6, 1e3, 50),
                    "density": _pos(50),
                    "variance": 1.0,
                    "sigma_w2": 1.7,
                    "sigma_b2": 0.05,
                }
                for act in ("tanh", "ReLU")
                for weights in ("gaussian", "orthogonal")
            },
        ),
        {"width": 8, "depth": 4, "seeds": 2, "q_star": 0.1},
        2,
    ),
    "depth_scales": (
        (
            np.linspace(0.5, 4.0, 20),
            {0.01: _pos(20), 0.05: _pos(20)},
            {0.01: _pos(20), 0.05: _pos(20)},
            {0.01: 1.5, 0.05: 1.76},
        ),
        {"trainable_sigma_b2": 0.05},
        1,
    ),
    "doya_bifurcation": (
        (
            np.linspace(-5.0, -1.0, 41),
            RNG.normal(size=(41, 3)),
            RNG.uniform(size=(41, 3)) > 0.5,
            np.array([-3.5, -2.5]),
            np.array([0.5, 3.0]),
            RNG.normal(size=41),
            RNG.normal(size=41),
            _pos(41),
            _pos(41),
            np.linspace(4.0, 10.0, 10),
            np.sort(-_pos(10, 2), axis=1),
        ),
        {"w": 6.0, "steps": 50, "x0": 0.0},
        3,
    ),
    "cliff_clipping": (
        (
            np.linspace(-4.0, -1.0, 30),
            _pos(30),
            RNG.normal(size=30),
            RNG.uniform(-4.0, -1.0, (4, 11)),
            RNG.uniform(-4.0, -1.0, (4, 11)),
            _pos(6, 7),
            np.linspace(3.0, 8.0, 6),
            np.linspace(-5.0, -0.5, 7),
            RNG.uniform(-5.0, 8.0, (2, 11, 2)),
            RNG.uniform(-5.0, 8.0, (2, 11, 2)),
        ),
        {
            "wall": -2.5,
            "stats": {
                m: {"fraction_left_range": 0.5, "fraction_crossed_wall": 0.25, "max_step": 0.1}
                for m in ("unclipped", "clipped")
            },
            "learning_rate": 0.01,
            "clip_norm": 1.0,
            "cliff": {"w": 5.0, "x0": 0.5, "steps": 20},
            "b_range": (-4.0, -1.0),
        },
        3,
    ),
    "rnn_stability_thresholds": (
        (
            {"tanh": {k: _pos(3, 2) for k in ("rho", "lambda1", "log_norm", "top_exponent")}},
            {"tanh": 1.0},
        ),
        {"width": 8, "steps": 20},
        2,
    ),
    "lyapunov_order_to_chaos": (
        (np.linspace(0.5, 3.0, 5), -np.sort(-RNG.normal(size=(5, 6)), axis=1), -0.1),
        {"steps": 100},
        2,
    ),
    "lyapunov_convergence": ((RNG.normal(size=(50, 4)), RNG.normal(size=4)), {}, 1),
}
HELPERS = {"new_axes", "new_axes_grid", "palette"}  # tested on their own below


def _drew(ax: Axes) -> bool:
    return bool(ax.lines or ax.collections or ax.patches or ax.images)


def _panel_kw(name: str) -> str:
    """``"ax"`` or ``"axes"``: the keyword a plotting function takes its caller's axes by."""
    params = inspect.signature(getattr(plots, name)).parameters
    kinds = {k for k in ("ax", "axes") if k in params}
    assert len(kinds) == 1, f"{name} must take exactly one of ax= / axes=, takes {kinds}"
    (kw,) = kinds
    assert params[kw].default is None and params[kw].kind is inspect.Parameter.KEYWORD_ONLY
    return kw


def test_every_public_name_is_covered():
    assert set(plots.__all__) == set(CASES) | HELPERS


@pytest.mark.parametrize("name", sorted(CASES))
def test_draws_a_new_figure_and_into_given_axes(name):
    fn = getattr(plots, name)
    args, kwargs, panels = CASES[name]
    kw = _panel_kw(name)

    fig = fn(*args, **kwargs)
    assert type(fig) is Figure
    drawn = [a for a in fig.axes if a.get_label() != "<colorbar>" and _drew(a)]
    assert len(drawn) >= panels

    given = Figure()
    axes = list(np.ravel(given.subplots(1, panels, squeeze=False)))
    out = fn(*args, **kwargs, **({"ax": axes[0]} if kw == "ax" else {"axes": axes}))
    assert out is given
    assert all(_drew(a) for a in axes), "a given axes was left empty"
    # the figure-level title and layout are the caller's when the caller owns the figure
    assert given.get_suptitle() == ""
    if kw == "axes":  # a sequence of the wrong length is one clear error
        with pytest.raises(ValueError, match=f"axes must be a sequence of {panels} "):
            fn(*args, **kwargs, axes=axes[:-1] if panels > 1 else axes * 2)


def test_gradient_scale_slopes_without_stream_norms_has_one_panel():
    args, kwargs, _ = CASES["gradient_scale_slopes"]
    fig = plots.gradient_scale_slopes(*args[:4], **kwargs)
    assert len(fig.axes) == 1
    ax = Figure().add_subplot()
    assert plots.gradient_scale_slopes(*args[:4], axes=[ax]) is ax.figure and _drew(ax)
    assert plots.gradient_scale_slopes(*args[:4], axes=ax) is ax.figure  # a bare Axes for one


def test_new_axes_and_grid():
    fig, ax = plots.new_axes(figsize=(3, 2))
    assert type(fig) is Figure and ax.figure is fig and tuple(fig.get_size_inches()) == (3, 2)
    assert plots.new_axes(ax) == (fig, ax)
    with pytest.raises(TypeError, match="ax must be a matplotlib Axes or None, got list"):
        plots.new_axes([ax])

    fig, grid = plots.new_axes_grid(nrows=2, ncols=3, figsize=(6, 4), sharey=True)
    assert grid.shape == (2, 3) and all(a.figure is fig for a in grid.ravel())
    assert plots.new_axes_grid(nrows=1, ncols=3, figsize=(6, 2))[1].shape == (3,)
    # a caller's grid comes back in row-major order, in the requested shape
    again, same = plots.new_axes_grid(list(grid.ravel()), nrows=2, ncols=3, figsize=(1, 1))
    assert again is fig and same.shape == (2, 3) and list(same.ravel()) == list(grid.ravel())
    with pytest.raises(ValueError, match=r"axes must be a sequence of 6 .* got 5 item"):
        plots.new_axes_grid(list(grid.ravel())[:5], nrows=2, ncols=3, figsize=(1, 1))
    with pytest.raises(ValueError, match="got 2 item.* types \\['Axes', 'str'\\]"):
        plots.new_axes_grid([grid[0, 0], "x"], nrows=1, ncols=2, figsize=(1, 1))
    other = Figure().add_subplot()
    with pytest.raises(ValueError, match="one figure"):
        plots.new_axes_grid([grid[0, 0], other], nrows=1, ncols=2, figsize=(1, 1))


def test_palette_is_tab10_and_repeats():
    colours = plots.palette(12)
    assert len(colours) == 12 and colours[10] == colours[0] != colours[1]
    assert all(len(c) == 4 for c in colours)


def test_import_and_drawing_leave_the_backend_alone():
    """A user's backend (here pdf, requested through MPLBACKEND) survives importing gradflow's
    plotting and every experiment, and drawing figures; pyplot is never imported. (Before, the
    import switched it to Agg and imported pyplot: this printed "pdf Agg True".)"""
    script = textwrap.dedent(
        """
        import sys, matplotlib
        before = matplotlib.get_backend()
        from gradflow import experiments, plots
        for name in experiments.names():
            experiments.get(name)
        plots.layer_grad_norms({"a": [[1.0, 0.5, 0.25]]})
        # an experiment's own figure (these used to switch to Agg when drawn)
        running = [[0.1, -0.2], [0.05, -0.1], [0.0, -0.05]]
        experiments.get("pascanu2013").figure_newman({"running": running, "exact": [0.0, -0.1]})
        print(before, matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
        """
    )
    env = {**os.environ, "MPLBACKEND": "pdf"}
    res = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["pdf", "pdf", "False"]


def test_save_figure_writes_png_and_pdf_atomically(tmp_path):
    fig = plots.layer_grad_norms({"a": _pos(2, 5)})
    path = _io.save_figure(fig, tmp_path / "sub" / "norms.png")
    assert path == tmp_path / "sub" / "norms.png"
    png, pdf = path.read_bytes(), path.with_suffix(".pdf").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and pdf.startswith(b"%PDF-")
    # the PNG is the figure at 120 dpi, as before
    assert np.array_equal(mpimg.imread(path), mpimg.imread(io.BytesIO(_png(fig, 120))))
    assert sorted(p.name for p in path.parent.iterdir()) == ["norms.pdf", "norms.png"]
    # no creation date in the PDF: the same figure gives the same bytes
    _io.save_figure(fig, tmp_path / "again.png")
    assert (tmp_path / "again.pdf").read_bytes() == pdf

    class Broken:
        def savefig(self, target, **kw):
            if kw["format"] == "pdf":
                raise RuntimeError("disk full")
            pathlib.Path(target).write_bytes(b"partial")

    with pytest.raises(RuntimeError, match="disk full"):
        _io.save_figure(Broken(), tmp_path / "broken.png")
    # neither file appears, no temporary is left behind, the earlier files are untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.pdf", "again.png", "sub"]


def _png(fig: Figure, dpi: int) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, bbox_inches="tight", format="png")
    return buf.getvalue()


def test_saved_numbers_load_back(tmp_path):
    data = {"x": 1.5, "bad": [float("nan"), float("inf"), -float("inf")], "s": "text"}
    _io.save_json(data, tmp_path / "s.json")
    assert json.loads((tmp_path / "s.json").read_text())["bad"] == ["nan", "inf", "-inf"]
    back = _io.load_json(tmp_path / "s.json")
    assert back["x"] == 1.5 and back["s"] == "text" and np.isnan(back["bad"][0])
    assert back["bad"][1:] == [float("inf"), -float("inf")]

    arrays = {"b/Kumar (3.6/√N)": np.arange(3), "a/x": np.ones(2), "z": np.float64(2.0)}
    _io.save_npz(arrays, tmp_path / "a.npz")
    loaded = _io.load_npz(tmp_path / "a.npz")
    assert list(loaded) == list(arrays)  # saved order
    assert _io.with_prefix(loaded, "b") == {"Kumar (3.6/√N)": loaded["b/Kumar (3.6/√N)"]}
    nested = _io.by_label({"tanh/gaussian/mean": 1, "tanh/gaussian/var": 2, "relu/mean": 3})
    assert nested == {"tanh/gaussian": {"mean": 1, "var": 2}, "relu": {"mean": 3}}


def test_unresolved_floor_finds_the_placed_values():
    from gradflow.experiments.vanishing import unresolved_floor

    width = 4
    top = np.array([0.5, -1.0])
    floor = top + np.log10(width * np.finfo(np.float64).eps)
    rows = np.array([[0.5, 0.1, floor[0], floor[0]], [-1.0, -2.0, -3.0, -4.0]])
    assert unresolved_floor(rows.ravel(), width) == pytest.approx(floor[0], abs=0)
    assert unresolved_floor(rows[1:], width) is None  # everything resolved


@pytest.mark.parametrize("name", experiments.names())
def test_experiment_figure_functions_are_public_and_take_axes(name):
    module = experiments.get(name)
    assert callable(module.figures) and module.figures.__doc__
    funcs = [v for k, v in vars(module).items() if k.startswith("figure_") and callable(v)]
    assert funcs, f"{name} has no figure_* functions"
    for fn in funcs:
        params = inspect.signature(fn).parameters
        kw = [k for k in ("ax", "axes") if k in params]
        assert len(kw) == 1 and params[kw[0]].default is None, fn.__name__
        assert fn.__doc__ and "Returns:" in fn.__doc__, fn.__name__
    assert not hasattr(module, "_plt")  # no private pyplot copies remain


# --- slow: redraw from the saved numbers, pixel for pixel -------------------------------------


def _tiny_meanfield(monkeypatch, m):
    tiny = m.settings(False)._replace(
        grid=24,
        measured_sw2=(1.0, 2.0, 3.0),
        measured_sb2=(0.05, 0.3),
        chi_width=32,
        chi_depth=8,
        prop_width=64,
        prop_depth=6,
        prop_seeds=2,
        spec_width=32,
        spec_depth=6,
        spec_seeds=2,
        xi_points=40,
    )
    monkeypatch.setattr(m, "settings", lambda full: tiny)


TINY_RUNS = {
    # name -> callable(monkeypatch, module) shrinking the run like the experiment's own tests
    # its quick mode with two of the six MLPs and one of the two RNN input scales
    "vanishing": lambda mp, m: (
        mp.setattr(m, "mlp_specs", lambda depth, specs=m.mlp_specs: specs(depth)[::3]),
        mp.setattr(m, "RNN_INPUTS", {"strong_input": 1.0}),
    ),
    "meanfield": lambda mp, m: _tiny_meanfield(mp, m),
    "pascanu2013": lambda mp, m: mp.setitem(
        m.SIZES,
        False,
        {
            "bif_points": 41,
            "settle": 50,
            "cliff_starts": 4,
            "surface": (9, 11),
            "rnn": (6, 20, 1, 3),
            "chaos": (8, 50, 10, 3),
            "newman_steps": 100,
        },
    ),
    "init_study": lambda mp, m: mp.setattr(
        m,
        "settings",
        lambda full: m.Settings(16, (5, 10), 2, 4, 10, (-8.0, 0.0), (1.0, m.KUMAR_SCALE), 1),
    ),
    "mitigations": lambda mp, m: mp.setattr(
        m,
        "QUICK",
        m.Config(
            depth=3,
            width=8,
            batch=16,
            steps=8,
            seeds=2,
            monitor_every=4,
            mlp_variants=("ReLU, He", "sigmoid, Glorot (default)"),
            es_population=2,
            rnn_width=6,
            rnn_batch=8,
            rnn_steps=4,
            rnn_seeds=1,
            lengths=(10, 12),
            rnn_tasks=("temporal_order",),
            rnn_models=("RNN", "GRU"),
            n_test=16,
        ),
    ),
    "init_training": lambda mp, m: mp.setattr(
        m,
        "QUICK",
        m.Settings(
            depths=(2,),
            width=4,
            batch=4,
            steps=6,
            seeds=2,
            monitor_every=2,
            target=0.2,
            sgd_rates=(0.1, 0.5),
            adam_rates=(1e-3, 1e-2),
            chi1_inputs=2,
        ),
    ),
    "long_memory": lambda mp, m: mp.setattr(
        m,
        "QUICK",
        m.QUICK._replace(
            tasks=("temporal_order",),
            lengths=(10, 12),
            seeds=2,
            width=6,
            batch=4,
            steps=4,
            n_test=8,
            test_chunk=4,
        ),
    ),
    "partial_jacobians": None,  # its quick mode (~20 s)
    "transformers": lambda mp, m: mp.setattr(
        m, "QUICK", m.Settings(8, 4, 2, 4, 6, 2, 16, 1.0, 8, 3, 4, 3, 2)
    ),
    "cnn": lambda mp, m: mp.setattr(
        m,
        "settings",
        lambda full: m.Settings(60, 8, 4, 2, 16, 2, 32, 4, 6, (1e-5, 0.05), 0.05),
    ),
}


def _geometry(fig: Figure) -> tuple[int, int, int]:
    """(rows, cols, panels) of a figure's subplot grid; colorbars and twin axes are not panels."""
    specs = {}
    for a in fig.axes:
        if a.get_label() == "<colorbar>" or a.get_subplotspec() is None:
            continue
        top = a.get_subplotspec().get_topmost_subplotspec()
        specs[(top.rowspan.start, top.colspan.start)] = top.get_gridspec().get_geometry()
    (rows, cols), panels = next(iter(specs.values())), len(specs)
    return rows, cols, panels


@pytest.mark.slow
@pytest.mark.parametrize("name", experiments.names())
def test_figures_redraw_what_run_drew(name, tmp_path, monkeypatch):
    module = experiments.get(name)
    if TINY_RUNS[name] is not None:
        TINY_RUNS[name](monkeypatch, module)
    # partial_jacobians' _slope broadcasts (L,) against (seeds, L): its run() needs implicit rank
    # promotion, which conftest makes an error (a measurement matter, outside this test's scope)
    promotion = "allow" if name == "partial_jacobians" else "raise"
    with jax.numpy_rank_promotion(promotion):
        module.run(tmp_path)
    out = tmp_path / module.NAME

    # record every figure function's call, to repeat it into a caller's axes below
    calls = []
    for attr, fn in list(vars(module).items()):
        if attr.startswith("figure_") and callable(fn):

            def recorder(*args, _fn=fn, **kwargs):
                fig = _fn(*args, **kwargs)
                calls.append((_fn, args, kwargs, fig))
                return fig

            monkeypatch.setattr(module, attr, recorder)

    figs = module.figures(tmp_path)
    pngs = sorted(p.stem for p in out.glob("*.png"))
    assert sorted(figs) == pngs and pngs
    for stem, fig in figs.items():
        assert (out / f"{stem}.pdf").read_bytes().startswith(b"%PDF-")
        old = mpimg.imread(out / f"{stem}.png")
        new = mpimg.imread(io.BytesIO(_png(fig, 120)))
        assert new.shape == old.shape and np.array_equal(new, old), f"{stem} differs when redrawn"

    assert calls
    for fn, args, kwargs, fig in calls:
        rows, cols, panels = _geometry(fig)
        given = Figure()
        grid = list(np.ravel(given.subplots(rows, cols, squeeze=False)))[:panels]
        kw = "ax" if "ax" in inspect.signature(fn).parameters else "axes"
        assert fn(*args, **kwargs, **{kw: grid[0] if kw == "ax" else grid}) is given
        assert all(_drew(a) for a in grid), fn.__name__
        assert given.get_suptitle() == ""
