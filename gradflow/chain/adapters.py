"""Chains from your own model: any sequence of callables, linen module, RNN cell or nnx module.

One call each turns a model into a :class:`~gradflow.chain.Segmented` chain (or a
:class:`~gradflow.chain.Chain` for a recurrent cell), after which every analysis applies:

- :func:`from_layers` — a sequence of callables ``h -> h'``;
- :func:`from_module` — a ``flax.linen`` module; the states are the outputs of the named
  submodules (default: the top-level submodules, in the order the forward pass calls them,
  captured with Flax's method interception — not by sorting names);
- :func:`from_cell` — a linen ``RNNCellBase`` (or ``nn.RNN``) unrolled over time;
- :func:`from_nnx` — the same as :func:`from_module` for a ``flax.nnx`` module.

How a module becomes a chain. The forward pass is run once with the named submodules'
``__call__`` intercepted, recording the order of the calls and their outputs h_0, h_1, … . Step k
maps h_{k−1} to h_k: it *replays* the model's own forward pass with call k−1's output replaced by
the state h and stops when call k returns. Whatever the model does between two submodules
(an activation, a reshape, a residual add, a positional embedding) is therefore part of the step,
exactly as the model computes it; parameters of call k enter as the step's parameters, so gradient
norms per layer come out too. The first named layer is the chain's ``stem`` (input → h_0).
Under ``jit`` the replayed prefix feeds nothing and XLA drops it, so a step costs what its own
layers cost.

An ``nn.scan`` stack of blocks (its blocks run inside a ``lax.scan``, so they are not calls of the
model's own forward pass) becomes one :class:`~gradflow.chain.Scan` segment with a state per block
when its carry comes straight from the previous named layer and goes straight into the next (checked
by running the blocks one by one); otherwise it is folded, exactly, into the next layer's step.

The chain is exact when the named layers form a chain: each state depends on the input only through
the previous state. A skip connection that bypasses a named layer (a U-Net, a residual around a
named block) makes the per-step Jacobians partial derivatives that do not multiply to the
end-to-end one; name the enclosing block instead.

Recompilation: the steps are frozen dataclasses that compare equal for the same module (linen
modules compare by their configuration, nnx graphs by their structure) and the same layer names, so
building the chain twice — e.g. for new parameters or inputs of the same shapes — reuses the
compiled analyses. A :func:`from_layers` chain is keyed on the callables' identity: pass the same
function objects to avoid a recompilation.
"""

from gradflow.chain.cells import from_cell
from gradflow.chain.core import (  # noqa: F401 (importable from here, as before the split)
    Chain,
    Layer,
    Scan,
    Segmented,
    same_shapes,
    state_shapes,
)
from gradflow.chain.linen import from_module
from gradflow.chain.nnx import from_nnx
from gradflow.chain.sequence import from_layers

__all__ = ["from_layers", "from_module", "from_cell", "from_nnx"]
