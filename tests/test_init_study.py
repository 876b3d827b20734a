"""The init_study experiment: its init points are the library's initialisers, it writes its
outputs, resumes from its sweep store, and (slow) its CPU-sized run supports its stated finding."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from gradflow import init
from gradflow import sweep as sw
from gradflow.experiments import init_study

TINY = init_study.Settings(
    width=16,
    depths=(10,),
    seeds=2,
    batch=4,
    heat_depth=10,
    heat_means=(-8.0, 0.0),
    heat_scales=(1.0,),
    heat_seeds=1,
)


@pytest.mark.parametrize("spec", init_study.SPECS[:4], ids=lambda s: s.label)
def test_init_points_are_the_library_initialisers(spec, x64):
    """Kumar and Yilmaz–Poli as (scale, mean) points of the Gaussian family draw the same
    weights as gf.init.kumar / gf.init.yilmaz_poli from the same key (up to rounding)."""
    reference = {
        "Gaussian": init.gaussian(1.0),
        "Glorot": init.glorot(),
        "Kumar": init.kumar("sigmoid"),
        "Yilmaz": init.yilmaz_poli(),
    }[spec.label.split()[0].split("–")[0]]
    point = {"depth": 3, "width": 64, "activation": "sigmoid", "init": spec.init}
    if spec.init == "gaussian":
        point |= {"init_scale": spec.scale, "init_mean": spec.mean}
    model = sw.mlp_from_point(point)
    key = jax.random.key(3)
    got = model.kernel_init(key, (64, 64), np.float64)
    want = reference(key, (64, 64), np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)


# End to end (two studies, ~8 s on 2 cores): the slow step. The sweep store's resume logic is also
# tested in the default run (test_sweep.py).
@pytest.mark.slow
def test_tiny_study_writes_outputs_and_resumes(tmp_path):
    summary = init_study.study(tmp_path, TINY)
    for name in (
        "grad_ratio_heatmap.png",
        "grad_ratio_vs_depth.png",
        "lyapunov_chi1.png",
        "mean_scale_heatmap.png",
        "layer_grad_norms.png",
        "init_study.npz",
        "summary.json",
    ):
        assert (tmp_path / name).stat().st_size > 0, name
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["finding"] == summary["finding"] and "depth 10" in summary["finding"]
    med = summary["verdict"]["depth_10"]["median_log10_first_over_last"]
    assert set(med) == {s.label for s in init_study.SPECS}
    yp = "Yilmaz–Poli (mean −8/N)"
    # Even at width 16 the zero-mean σ_w = 1 net loses orders of magnitude over 10 layers
    # (mean-field χ₁ ≈ 0.056 per layer) while the negative-mean one keeps its gradient.
    assert med["Gaussian σ_w=1"] < -3 < med[yp]
    with np.load(tmp_path / "init_study.npz") as z:
        assert z["heat/log10_ratio"].shape == (2, 1, 1)
        assert z["log10_ratio/Kumar (3.6/√N)"].shape == (1, 2)
    # A rerun into the same directory reuses every stored chunk: nothing is recomputed.
    again = init_study.study(tmp_path, TINY)
    assert again["finding"] == summary["finding"]
    for store in (tmp_path / "sweeps").iterdir():
        session = json.loads((store / "manifest.json").read_text())["sessions"][-1]
        assert session["chunks_computed"] == 0 and session["chunks_skipped"] > 0


@pytest.mark.slow
def test_cpu_sized_run_supports_the_finding(tmp_path):
    summary = init_study.run(tmp_path)
    assert (tmp_path / "init_study" / "summary.json").exists()
    yp = "Yilmaz–Poli (mean −8/N)"
    for depth in ("depth_10", "depth_15"):
        v = summary["verdict"][depth]
        med = v["median_log10_first_over_last"]
        assert v["yilmaz_poli_out_of_vanishing_regime"] and med[yp] > -1
        # the zero-mean textbook inits vanish: several orders of magnitude by depth 10
        assert med["Gaussian σ_w=1"] < -4 and med["Glorot (uniform)"] < -4
        assert med["Gaussian σ_w=1"] < med["Kumar (3.6/√N)"] < med[yp]
        # the back-propagated error ‖∂L/∂h‖ tells the same story as the weight gradients
        assert v["median_log10_state_first_over_last"][yp] > -1
    per = summary["per_init"]
    for label in ("Gaussian σ_w=1", "Glorot (uniform)", "Kumar (3.6/√N)"):
        if "chi1_mean_field" in per[label]:  # gradflow.meanfield present
            emp = per[label]["depth_30"]["chi1_empirical"]["median"]
            # width 64, one input per net: finite-width and sampling error of a few percent
            assert abs(emp / per[label]["chi1_mean_field"] - 1) < 0.1
