"""gradflow.chain.core: the chain forms themselves (the adapters are tested in test_adapters.py;
every analysis test also runs chains through trajectory/forward/final_state)."""

import jax.numpy as jnp
import pytest

from gradflow.chain import Layer, Segmented, trajectory


def test_trajectory_of_a_shape_changing_chain_points_to_forward():
    grow = Layer(None, None, lambda _, h, __: jnp.ones((5, 3)), "grow")
    with pytest.raises(ValueError, match="states of one shape"):
        trajectory(Segmented(h0=jnp.ones((4, 3)), segments=(grow,)))
