"""README.md's "Your own model" examples run as written (a Transformer supplied for the second)."""

import pathlib
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

README = (pathlib.Path(__file__).parent.parent / "README.md").read_text()


def _blocks(section: str) -> list[str]:
    body = README.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


class Block(nn.Module):  # its name is the step name in the README
    @nn.compact
    def __call__(self, x):
        x = x + nn.MultiHeadDotProductAttention(num_heads=2)(nn.LayerNorm()(x))
        return x + nn.Dense(x.shape[-1])(nn.gelu(nn.Dense(16)(nn.LayerNorm()(x))))


class _Transformer(nn.Module):
    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(16, 8)(tokens)
        for _ in range(3):
            x = Block()(x)
        return nn.Dense(16, name="head")(x)


# Compiles a Transformer chain's Lanczos and gradient norms (~12 s on 2 cores): the slow step; the
# same adapters and analyses are tested in the default run (test_adapters.py, test_matfree.py).
@pytest.mark.slow
def test_your_own_model_examples_run():
    first, cnn, transformer = _blocks("What it does")[0], *_blocks("Your own model")
    namespace: dict = {}
    exec(first.split("model =")[0], namespace)  # the imports
    exec(cnn, namespace)
    assert namespace["chain"].step_names() == ("Conv_1", "Dense_0")
    assert np.all(np.isfinite(np.asarray(namespace["products"].log_spectral_norm())))
    model = _Transformer()
    tokens = jnp.arange(6) % 16
    namespace.update(
        model=model,
        tokens=tokens,
        targets=jnp.roll(tokens, 1),
        variables=model.init(jax.random.key(0), tokens),
        cross_entropy=lambda logits, t: (
            -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), t[:, None], axis=-1))
        ),
    )
    exec(transformer, namespace)
    assert namespace["chain"].stem.name == "Embed_0"
    assert namespace["chain"].step_names() == ("Block_0", "Block_1", "Block_2", "head")
    norms = namespace["norms"]
    assert norms.names[0] == "Embed_0" and norms.names[-1] == "head"
    assert np.all(np.isfinite(np.asarray(namespace["top"].log_values)))


def test_monitor_example_runs(tmp_path, monkeypatch):
    """The "Monitor any training loop" example runs as written and logs what the monitor saw."""
    import json

    (code,) = _blocks("Monitor any training loop")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(code, namespace)
    lines = [json.loads(s) for s in (tmp_path / "monitor.jsonl").read_text().splitlines()]
    assert [d["step"] for d in lines] == [0, 10, 20, 30, 40]
    # The last read came after step 40's update, so it holds step 40's record, named in forward
    # order (input first, the stacked hidden layers split: depth 8 is the input layer and 7 hidden
    # ones, then the readout), and the log holds those numbers.
    rec = namespace["rec"]
    assert int(rec.step) == 40 and not bool(rec.nonfinite)
    assert rec.names[0] == "input" and rec.names[-1] == "readout" and len(rec.names) == 9
    names = [k.split("/", 1)[1] for k in lines[-1] if k != "step"]
    assert tuple(names) == tuple(rec.names)
    np.testing.assert_allclose([lines[-1]["grad_norm/" + n] for n in names], rec.grad_norms)
