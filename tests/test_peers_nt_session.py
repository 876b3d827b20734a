"""The neural-tangents peer's session protocol (``benchmarks.peers_nt.MeanfieldPeer``/``serve``).

Fast tests drive the real host side against a fake worker: a script in gradflow's own environment
that runs ``peers_nt.serve`` (the real worker loop) with a stand-in computation — the ReLU
mean-field closed form — so no neural-tangents environment is needed. The slow test runs the real
peer, where its environment already exists on this machine (it is never created here).
"""

import io
import json
import math
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks import peers_nt

ROOT = Path(__file__).resolve().parents[1]
SLEEP_S = 0.02  # the fake worker's run() time: a lower bound on every timed call

FAKE_WORKER = textwrap.dedent(
    f"""
    import sys, time
    sys.path.insert(0, {str(ROOT)!r})
    from benchmarks import peers_nt

    MODE = sys.argv[1]
    if MODE == "exit":
        sys.stderr.write("fake worker gone\\n")
        sys.exit(3)


    def build(task, payload):
        if MODE == "fail_build":
            raise ValueError("no such kernel (fake)")
        print("stray library output")  # must not reach the protocol stream
        sw2, sb2 = payload["sigma_w2"], payload["sigma_b2"]

        def run():
            time.sleep({SLEEP_S})
            if MODE == "hang":
                time.sleep(600)
            # ReLU mean field in closed form: q' = σ_w² q / 2 + σ_b², χ₁ = σ_w² / 2.
            q = [[payload["q0"]] * len(sb2) for _ in sw2]
            for _ in range(payload["depth"]):
                q = [[w * qq / 2 + b for qq, b in zip(row, sb2)] for w, row in zip(sw2, q)]
            return q, [[w / 2] * len(sb2) for w in sw2]

        return run, lambda out: {{"q": out[0], "chi1": out[1], "device": "fake", "versions": {{}}}}


    peers_nt.serve(build)
    """
)


@pytest.fixture
def fake(tmp_path):
    path = tmp_path / "fake_worker.py"
    path.write_text(FAKE_WORKER)
    return lambda mode="ok": [sys.executable, str(path), mode]


SW2, SB2 = [0.5, 2.0, 3.0], [0.0, 0.3]


def test_serve_answers_each_request_in_process():
    calls = []

    def build(task, payload):
        assert task == "meanfield_grid" and payload == {"x": 1}
        return (lambda: calls.append(1) or 7.0), (lambda out: {"value": out})

    requests = [
        {"op": "call"},  # before init: an error reply, and the loop goes on
        {"op": "init", "task": "meanfield_grid", "payload": {"x": 1}},
        {"op": "call"},
        {"op": "nonsense"},
        {"op": "close"},
        {"op": "call"},  # after close: never read
    ]
    out = io.StringIO()
    peers_nt.serve(build, stdin=io.StringIO("\n".join(map(json.dumps, requests))), stdout=out)
    replies = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(replies) == 5 and len(calls) == 2  # init's compiling call + one timed call
    assert not replies[0]["ok"] and "before 'init'" in replies[0]["error"]
    assert replies[1]["ok"] and replies[1]["value"] == 7.0 and replies[1]["first_call_s"] >= 0
    assert replies[2]["ok"] and replies[2]["s"] >= 0
    assert not replies[3]["ok"] and "unknown op 'nonsense'" in replies[3]["error"]
    assert replies[4] == {"ok": True}


def test_session_with_a_fake_worker_times_one_call_at_a_time(fake):
    from gradflow import meanfield

    peer = peers_nt.MeanfieldPeer("relu", np.array(SW2), SB2, depth=4, q0=1.5, command=fake())
    with peer:
        # The payload arrived intact and the (G_w, G_b) grid came back in order: compare with
        # gradflow's ReLU map (closed form, float32: ~1e-7 relative; 1e-5 leaves a margin).
        s, b = np.meshgrid(SW2, SB2, indexing="ij")
        q = np.asarray(meanfield.q_layers("relu", s, b, 1.5, 4)[-1])
        np.testing.assert_allclose(peer.q, q, rtol=1e-5)
        np.testing.assert_allclose(peer.chi1, meanfield.chi1("relu", s, b, q=q), rtol=1e-5)
        assert peer.first_call_s >= SLEEP_S and peer.startup_s >= peer.first_call_s
        times = [peer.call() for _ in range(3)]
        # Each call is timed in the worker around one run() (which sleeps SLEEP_S); the host's
        # round trip contains it.
        assert times == peer.times_s and all(t >= SLEEP_S for t in times)
        assert all(r >= t for r, t in zip(peer.roundtrip_s, times, strict=True))
        out = peer.result()
    assert out["median_s"] == sorted(times)[1] and out["overhead_s"] >= 0
    assert {"q", "chi1", "median_s", "times_s", "first_call_s", "device", "venv"} <= out.keys()
    assert {"venv_setup_s", "versions"} <= out.keys() and out["venv"] is None
    assert peer._proc is None  # closed by the with block
    peer.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        peer.call()


def test_meanfield_grid_runs_repeats_in_a_session(fake):
    out = peers_nt.meanfield_grid("erf", SW2, SB2, depth=0, q0=1.0, repeats=2, command=fake())
    assert len(out["times_s"]) == len(out["roundtrip_s"]) == 2 and out["device"] == "fake"
    assert np.shape(out["q"]) == (3, 2) and np.all(np.asarray(out["q"]) == 1.0)  # depth 0: q0


@pytest.mark.parametrize(
    "mode, timeout_s, message",
    [
        ("fail_build", 60, "no such kernel (fake)"),  # the worker's error text
        ("exit", 60, "fake worker gone"),  # its stderr
        ("hang", 1, "no reply within 1 s"),
    ],
)
def test_a_failing_worker_raises_peer_unavailable(fake, mode, timeout_s, message):
    t0 = time.perf_counter()
    with pytest.raises(peers_nt.PeerUnavailable, match="neural-tangents worker") as info:
        peers_nt.MeanfieldPeer(
            "erf", SW2, SB2, depth=2, q0=1.0, command=fake(mode), timeout_s=timeout_s
        )
    assert message in str(info.value)
    assert time.perf_counter() - t0 < 30  # a hung worker is killed, not waited for


def test_unavailable_environment_raises_peer_unavailable(monkeypatch):
    def unavailable(**kwargs):
        raise peers_nt.PeerUnavailable("pip: no matching distribution (test)")

    monkeypatch.setattr(peers_nt, "ensure_venv", unavailable)
    with pytest.raises(peers_nt.PeerUnavailable, match="no matching distribution"):
        peers_nt.MeanfieldPeer("erf", SW2, SB2, depth=2, q0=1.0)


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        ({"activation": "gelu"}, ValueError, "activation"),
        ({"sigma_w2": []}, ValueError, "sigma_w2"),
        ({"sigma_w2": [1.0, 0.0]}, ValueError, "sigma_w2"),
        ({"sigma_w2": None}, TypeError, "sigma_w2"),
        ({"sigma_b2": [-0.1]}, ValueError, "sigma_b2"),
        ({"sigma_b2": [math.nan]}, ValueError, "sigma_b2"),
        ({"depth": -1}, ValueError, "depth"),
        ({"depth": 2.0}, ValueError, "depth"),
        ({"q0": math.inf}, ValueError, "q0"),
        ({"q0": "one"}, TypeError, "q0"),
        ({"timeout_s": 0}, ValueError, "timeout_s"),
    ],
)
def test_bad_arguments_are_named(fake, kwargs, error, name):
    args = {"activation": "erf", "sigma_w2": SW2, "sigma_b2": SB2, "depth": 2, "q0": 1.0}
    args.update(kwargs)
    with pytest.raises(error, match=name):
        peers_nt.MeanfieldPeer(**args, command=fake())
    with pytest.raises(ValueError, match="repeats"):
        peers_nt.meanfield_grid("erf", SW2, SB2, depth=2, q0=1.0, repeats=0, command=fake())


@pytest.mark.slow
def test_real_peer_matches_gradflow_meanfield_on_a_small_grid():
    # Uses the neural-tangents environment only if it already exists (creating it takes a minute
    # and the network); ~15 s (TensorFlow's import, two compilations).
    if not (peers_nt.venv_dir() / ".complete").exists():
        pytest.skip(f"no neural-tangents environment at {peers_nt.venv_dir()}")
    from gradflow import meanfield

    sw2, sb2, depth = np.array([0.5, 1.5, 3.0]), np.array([0.05, 0.2, 0.5]), 3
    s, b = np.meshgrid(sw2, sb2, indexing="ij")
    qs = np.asarray(meanfield.q_layers("erf", s, b, 1.0, depth))
    # χ₁ at every layer's length (broadcast by hand: the suite forbids rank promotion)
    chi = np.asarray(meanfield.chi1("erf", s + 0 * qs, b + 0 * qs, q=qs))
    # Θ^depth of neural-tangents' NTK parameterisation, independently: Θ⁰ = q⁰ (the input
    # Dense(1, 0)), Θ^{l+1} = q^{l+1} + χ₁(q^l) Θ^l (each (φ, Dense) pair).
    ntk = np.full_like(s, 1.0)
    for layer in range(depth):
        ntk = qs[layer + 1] + chi[layer] * ntk
    for map_ntk in (False, True):
        with peers_nt.MeanfieldPeer("erf", sw2, sb2, depth=depth, q0=1.0, map_ntk=map_ntk) as p:
            assert p.call() > 0
            out = p.result()
        # Same closed-form erf kernel (Williams 1997) in float32 on both sides: observed ~2e-7
        # relative; 1e-4 as in the benchmark's check.
        np.testing.assert_allclose(out["q"], qs[-1], rtol=1e-4)
        np.testing.assert_allclose(out["chi1"], chi[-1], rtol=1e-4)
        assert ("ntk" in out) == map_ntk
        if map_ntk:
            np.testing.assert_allclose(out["ntk"], ntk, rtol=1e-4)
        assert out["versions"] == {"neural_tangents": "0.6.5", "jax": "0.4.30"}
