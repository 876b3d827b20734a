"""Training tasks: synthetic long-term-dependency problems and a small image dataset.

Sequence tasks (Hochreiter & Schmidhuber 1997, "Long short-term memory", §5; used by Pascanu,
Mikolov & Bengio 2013, arXiv:1211.5063, §4) are generated from a ``jax.random`` key at any
sequence length T, as ``(u, y)`` with ``u`` of shape ``(B, T, d)``; the target depends on inputs
a fixed fraction of T in the past, so longer sequences need gradients carried over more steps.
Each returns the target the recurrent model reads out from its final state.

The image task is scikit-learn's bundled 8×8 handwritten digits (``load_digits``: 1797 images,
shipped inside the package, nothing downloaded) when scikit-learn is installed (the ``data``
extra), otherwise a generated 8×8 digit-like task with the same shapes (:func:`synthetic_images`);
:func:`image_classification` picks one and says which.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradflow import _checks
from gradflow.chain import Chain

__all__ = [
    "cross_entropy",
    "SequenceTask",
    "TASKS",
    "adding",
    "temporal_order",
    "memorization",
    "adding_target",
    "temporal_order_target",
    "memorization_target",
    "get",
    "active_steps",
    "MaskedStep",
    "masked_chain",
    "ImageData",
    "digits",
    "synthetic_images",
    "image_classification",
]

# Temporal order's alphabet: four distractors a b c d, then the relevant symbols X Y (and Z for
# three-symbol variants beyond 8 classes are not needed: each relevant position holds X or Y).
_DISTRACTORS = 4
_RELEVANT = 2


class SequenceTask(NamedTuple):
    """A synthetic sequence task: its generator and how to score it.

    Attributes:
      name: registry name.
      generate: ``generate(key, batch, length, *, start=0) -> (u (B, T, in_features), y)``.
      target: ``target(u) -> y``, the target computed from the inputs alone (the task's
        definition, independent of how ``generate`` places the symbols).
      in_features: d.
      out_features: the readout width the model needs.
      kind: "regression" (y ``(B, 1)``, squared error), "classification" (y ``(B,)`` int,
        softmax cross-entropy) or "bits" (y ``(B, out_features)`` in {0, 1}, sigmoid cross-entropy).
      threshold: the success criterion on the test set: mean squared error below it
        (regression), or error rate below it (classification: fraction of wrong sequences;
        bits: fraction of sequences with any wrong bit).
    """

    name: str
    generate: object
    target: object
    in_features: int
    out_features: int
    kind: str
    threshold: float

    def loss(self, outputs: jax.Array, y: jax.Array) -> jax.Array:
        """The training loss of readout ``outputs`` ``(B, out_features)`` against targets ``y``."""
        return task_loss(self.kind, outputs, y)

    def error(self, outputs: jax.Array, y: jax.Array) -> jax.Array:
        """The test error that :attr:`threshold` applies to (see above); a scalar."""
        return task_error(self.kind, outputs, y)


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy of integer class labels.

    Args:
      logits: ``(..., classes)`` unnormalised log-probabilities.
      labels: ``(...)`` integer classes in ``[0, classes)``.

    Returns:
      The scalar mean of ``-log softmax(logits)[label]`` over every leading index.
    """
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1))


def task_loss(kind: str, outputs, y):
    if kind == "regression":
        return jnp.mean(jnp.square(outputs - y))
    if kind == "classification":
        return cross_entropy(outputs, y)
    if kind == "bits":
        y = y.astype(outputs.dtype)
        return jnp.mean(
            jnp.maximum(outputs, 0) - outputs * y + jnp.log1p(jnp.exp(-jnp.abs(outputs)))
        )
    raise ValueError(f"kind must be 'regression', 'classification' or 'bits', got {kind!r}")


def task_error(kind: str, outputs, y):
    if kind == "regression":
        return jnp.mean(jnp.square(outputs - y))
    if kind == "classification":
        return jnp.mean(jnp.argmax(outputs, axis=-1) != y)
    if kind == "bits":
        return jnp.mean(jnp.any((outputs > 0) != (y > 0), axis=-1))
    raise ValueError(f"kind must be 'regression', 'classification' or 'bits', got {kind!r}")


def _check(batch, length, minimum):
    _checks.positive_int("batch", batch)
    _checks.positive_int("length", length, minimum)


def _check_start(start, length, minimum):
    """A static start must leave an effective length >= minimum; a traced one is taken on trust."""
    if isinstance(start, jax.core.Tracer):
        return start
    start = _checks.positive_int("start", start, 0)
    if length - start < minimum:
        raise ValueError(
            f"start must leave at least {minimum} steps (length - start >= {minimum}), "
            f"got length {length} and start {start}"
        )
    return start


def active_steps(length: int, start) -> jax.Array:
    """``(T,)`` bool: which steps of a length-T sequence belong to a task that begins at ``start``.

    Pair it with :func:`masked_chain`, whose step leaves the state unchanged on inactive steps
    (as the mitigation study does), to train on several effective lengths in one compiled,
    ``vmap``-ed run.
    """
    return jnp.arange(length) >= start


@dataclasses.dataclass(frozen=True)
class MaskedStep:
    """A chain step that leaves the state unchanged on inactive (padding) steps.

    ``MaskedStep(step)(theta, h, (x, active))`` is ``step(theta, h, x)`` where ``active`` is
    True and ``h`` itself where it is False, leaf by leaf, so an inactive step's Jacobian
    ∂h_{k+1}/∂h_k is exactly the identity and a padded sequence's final state, state gradients
    and Pascanu's Ω (whose padding terms are then 0) are those of its active steps alone.

    A frozen dataclass: two wrappers of the same step compare equal and hash alike, so a
    :class:`gradflow.chain.Chain` holding one (a static field) does not recompile per call.

    Attributes:
      step: the wrapped ``step(theta, h, x) -> h_next``.
    """

    step: Callable[[Any, Any, Any], Any]

    def __call__(self, theta, h, xa):
        """One step; ``xa = (x, active)`` with ``active`` a bool scalar (one step's slice)."""
        x, active = xa
        new = self.step(theta, h, x)
        return jax.tree_util.tree_map(lambda a, b: jnp.where(active, a, b), new, h)


def masked_chain(chain: Chain, active) -> Chain:
    """``chain`` with its steps frozen where ``active`` is False (see :class:`MaskedStep`).

    Args:
      chain: a :class:`gradflow.chain.Chain` of K steps (e.g. ``model.chain(params, u)``).
      active: ``(K,)`` bool, e.g. :func:`active_steps` ``(K, start)``; may be traced.

    Returns:
      The :class:`gradflow.chain.Chain` with per-step inputs ``(xs, active)`` and step
      ``MaskedStep(chain.step)``; params, h0, length, sharing and name are unchanged.
    """
    return Chain(
        params=chain.params,
        xs=(chain.xs, active),
        h0=chain.h0,
        step=MaskedStep(chain.step),
        length=chain.length,
        shared=chain.shared,
        name=chain.name,
    )


def adding(key, batch: int, length: int, *, start=0):
    """The adding problem (Hochreiter & Schmidhuber 1997, §5.4; Pascanu et al. 2013, §4.1).

    Each step carries a value v_t ~ U(0, 1) (channel 0) and a marker m_t ∈ {0, 1} (channel 1).
    Exactly two steps are marked: one uniformly in the first half [0, ⌊T/2⌋), one in the second
    half [⌊T/2⌋, T) (the layout of Le, Jaitly & Hinton 2015; Hochreiter's original puts the first
    marker among the first ten steps). The target is the sum of the two marked values, in [0, 2];
    predicting its mean 1 gives a mean squared error of 1/6.

    Args:
      key: PRNG key.
      batch: B.
      length: T ≥ 2.
      start: the task occupies steps ``start … T−1`` (an effective length T − start ≥ 2); earlier
        steps are all-zero padding (see :func:`active_steps`). May be traced.

    Returns:
      ``(u (B, T, 2), y (B, 1))``.
    """
    _check(batch, length, 2)
    start = _check_start(start, length, 2)
    kv, k1, k2 = jax.random.split(key, 3)
    dtype = _checks.default_float()
    half = (length - start) // 2
    t = jnp.arange(length)[None, :]
    values = jax.random.uniform(kv, (batch, length), dtype) * (t >= start)
    i = start + jax.random.randint(k1, (batch,), 0, half)
    j = start + jax.random.randint(k2, (batch,), half, length - start)
    markers = ((t == i[:, None]) | (t == j[:, None])).astype(dtype)
    y = jnp.sum(values * markers, axis=1, keepdims=True)
    return jnp.stack([values, markers], axis=-1), y


def temporal_order(key, batch: int, length: int, *, n_relevant: int = 2, start=0):
    """The temporal order problem (Hochreiter & Schmidhuber 1997, §5.6, tasks 6a/6b).

    A sequence of random distractor symbols {a, b, c, d} (one-hot, 6 channels) holds
    ``n_relevant`` relevant symbols, each X or Y, at positions drawn from fixed windows spread
    over the sequence: for two symbols t₁ ∈ [T/10, 2T/10) and t₂ ∈ [5T/10, 6T/10) (Hochreiter's
    [10, 20] and [50, 60] at T = 100); for three, windows at 1/10, 3/10 and 6/10 of T. The class
    is the order of the relevant symbols read as a binary number (X = 0, Y = 1): XX→0, XY→1,
    YX→2, YY→3, so 2^n_relevant classes (4 for 6a, 8 for the "3-bit" task 6b).

    Args:
      key: PRNG key.
      batch: B.
      length: T ≥ 10 (so every window holds at least one position).
      n_relevant: 2 or 3.
      start: the task occupies steps ``start … T−1`` (effective length T − start ≥ 10; the
        windows are fractions of it); earlier steps are all-zero padding. May be traced.

    Returns:
      ``(u (B, T, 6), y (B,) int32)``.
    """
    _check(batch, length, 10)
    start = _check_start(start, length, 10)
    if n_relevant not in (2, 3):
        raise ValueError(f"n_relevant must be 2 or 3, got {n_relevant!r}")
    starts = (0.1, 0.5) if n_relevant == 2 else (0.1, 0.3, 0.6)
    kd, kp, ks = jax.random.split(key, 3)
    symbols = jax.random.randint(kd, (batch, length), 0, _DISTRACTORS)
    bits = jax.random.randint(ks, (batch, n_relevant), 0, _RELEVANT)
    pkeys = jax.random.split(kp, n_relevant)
    t = jnp.arange(length)[None, :]
    label = jnp.zeros((batch,), jnp.int32)
    eff = length - start
    for r, frac in enumerate(starts):
        # Integer arithmetic (not floor of a float product) so traced and static starts agree.
        lo = start + (eff * round(10 * frac)) // 10
        hi = jnp.maximum(lo + 1, start + (eff * round(10 * frac + 1)) // 10)
        pos = jax.random.randint(pkeys[r], (batch,), lo, hi)
        symbols = jnp.where(t == pos[:, None], _DISTRACTORS + bits[:, r : r + 1], symbols)
        label = 2 * label + bits[:, r]
    u = jax.nn.one_hot(symbols, _DISTRACTORS + _RELEVANT, dtype=_checks.default_float())
    return u * (t >= start)[..., None], label


def memorization(key, batch: int, length: int, *, n_bits: int = 3, start=0):
    """Noiseless memorisation (Martens & Sutskever 2011; Pascanu et al. 2013, §4.1).

    The first ``n_bits`` steps present a random bit pattern (channel 0 for a 0 bit, channel 1
    for a 1 bit); the following steps are blank (channel 2) until the last step, which carries the
    trigger (channel 3). The network must output the pattern. gradflow's recurrent models read
    out from the final state only, so the whole pattern is emitted at once (``n_bits`` logits)
    instead of one bit per step as in the original.

    Args:
      key: PRNG key.
      batch: B.
      length: T ≥ n_bits + 1.
      n_bits: pattern length (3 for Pascanu's 3-bit variant, 5 for Martens & Sutskever's).
      start: the task occupies steps ``start … T−1`` (effective length ≥ n_bits + 1); earlier
        steps are all-zero padding. May be traced.

    Returns:
      ``(u (B, T, 4), y (B, n_bits) int32)``.
    """
    _checks.positive_int("n_bits", n_bits)
    _check(batch, length, n_bits + 1)
    start = _check_start(start, length, n_bits + 1)
    bits = jax.random.randint(key, (batch, n_bits), 0, 2)
    t = jnp.arange(length)
    k = jnp.clip(t - start, 0, n_bits - 1)
    symbols = jnp.where((t >= start) & (t < start + n_bits), bits[:, k], 2)
    symbols = jnp.where(t == length - 1, 3, symbols)
    u = jax.nn.one_hot(symbols, 4, dtype=_checks.default_float())
    return u * (t >= start)[None, :, None], bits.astype(jnp.int32)


def adding_target(u) -> jax.Array:
    """The adding problem's target from its inputs: Σ_t value_t · marker_t.

    Args:
      u: ``(B, T, 2)`` (channel 0 values, channel 1 markers).

    Returns:
      ``(B, 1)``.
    """
    u = jnp.asarray(u)
    _checks.check_finite("u", u)
    return jnp.sum(u[..., 0] * u[..., 1], axis=-1, keepdims=True)


def temporal_order_target(u) -> jax.Array:
    """Temporal order's class from its inputs: the relevant symbols (X = 0, Y = 1) in order, read
    as a binary number.

    Args:
      u: ``(B, T, 6)`` one-hot symbols a b c d X Y (all-zero padding steps are ignored).

    Returns:
      ``(B,)`` int32.
    """
    u = jnp.asarray(u)
    _checks.check_finite("u", u)
    relevant = jnp.sum(u[..., _DISTRACTORS:], axis=-1) > 0
    bit = (u[..., _DISTRACTORS + 1] > 0).astype(jnp.int32)
    # Each relevant symbol is worth 2^(number of relevant symbols after it).
    after = jnp.flip(jnp.cumsum(jnp.flip(relevant, -1), axis=-1), -1) - relevant
    return jnp.sum(jnp.where(relevant, bit << after, 0), axis=-1).astype(jnp.int32)


def memorization_target(u, n_bits: int = 3) -> jax.Array:
    """Memorisation's target from its inputs: the first ``n_bits`` data symbols (channel 1 = 1).

    Args:
      u: ``(B, T, 4)`` one-hot symbols 0, 1, blank, trigger (all-zero padding steps ignored).
      n_bits: pattern length.

    Returns:
      ``(B, n_bits)`` int32.
    """
    u = jnp.asarray(u)
    _checks.check_finite("u", u)
    data = (u[..., 0] + u[..., 1]) > 0
    # Stable sort puts the data steps first, in time order.
    order = jnp.argsort(~data, axis=-1, stable=True)[..., :n_bits]
    return (jnp.take_along_axis(u[..., 1], order, axis=-1) > 0).astype(jnp.int32)


TASKS: dict[str, SequenceTask] = {
    # Success thresholds: adding — MSE < 0.01, i.e. 94% of the target variance (1/6) explained;
    # classification tasks — error rate below 1% (Hochreiter & Schmidhuber's and Pascanu's
    # criterion for temporal order is every test sequence right; 1% tolerates a few of a
    # thousand).
    "adding": SequenceTask("adding", adding, adding_target, 2, 1, "regression", 0.01),
    "temporal_order": SequenceTask(
        "temporal_order", temporal_order, temporal_order_target, 6, 4, "classification", 0.01
    ),
    "temporal_order_3": SequenceTask(
        "temporal_order_3",
        lambda key, batch, length, **kw: temporal_order(key, batch, length, n_relevant=3, **kw),
        temporal_order_target,
        6,
        8,
        "classification",
        0.01,
    ),
    "memorization": SequenceTask(
        "memorization", memorization, memorization_target, 4, 3, "bits", 0.01
    ),
}


def get(name: str) -> SequenceTask:
    """The :class:`SequenceTask` called ``name`` (one of :data:`TASKS`)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    return TASKS[name]


# --------------------------------------------------------------------------------------------
# image classification
# --------------------------------------------------------------------------------------------


class ImageData(NamedTuple):
    """A train/test split of flattened images, standardised with the training set's statistics.

    Attributes:
      x_train: ``(N_train, d)`` float32.
      y_train: ``(N_train,)`` int32 labels in [0, n_classes).
      x_test: ``(N_test, d)``.
      y_test: ``(N_test,)``.
      n_classes: number of classes.
      name: "digits" (scikit-learn's bundled UCI digits) or "synthetic_digits".
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    name: str


def _split(x, y, n_classes, name, test_fraction, seed):
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    n_test = int(round(test_fraction * len(x)))
    test, train = order[:n_test], order[n_test:]
    mean, std = x[train].mean(0), x[train].std(0)
    std = np.where(std > 0, std, 1.0)  # constant border pixels of the digits
    x = ((x - mean) / std).astype(np.float32)
    y = y.astype(np.int32)
    return ImageData(x[train], y[train], x[test], y[test], n_classes, name)


def digits(*, test_fraction: float = 0.2, seed: int = 0) -> ImageData:
    """scikit-learn's 8×8 handwritten digits (1797 images, 10 classes), bundled with the package.

    Raises:
      ImportError: if scikit-learn is not installed (``pip install gradflow[data]``).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError(
            "tasks.digits needs scikit-learn (pip install 'gradflow[data]'); "
            "tasks.synthetic_images is the dependency-free alternative"
        ) from exc
    d = load_digits()
    return _split(
        np.asarray(d.data, np.float64), np.asarray(d.target), 10, "digits", test_fraction, seed
    )


def synthetic_images(
    *, n: int = 1800, n_classes: int = 10, side: int = 8, test_fraction: float = 0.2, seed: int = 0
) -> ImageData:
    """A generated digit-like task with the shapes of :func:`digits` (no dependencies).

    Each class has a prototype: a random stroke of 3 segments on a ``side × side`` grid. A sample
    is its class's prototype shifted by up to one pixel in each direction, with stroke intensity
    jitter and Gaussian pixel noise (σ = 0.3 of the stroke value), quantised to 0…16 like the
    digits. A linear classifier reaches well below 100 %, so depth matters.

    Returns:
      :class:`ImageData` named "synthetic_digits".
    """
    _checks.positive_int("n", n, 2)
    _checks.positive_int("n_classes", n_classes, 2)
    _checks.positive_int("side", side, 4)
    rng = np.random.default_rng(seed)
    protos = np.zeros((n_classes, side + 2, side + 2))
    for c in range(n_classes):
        pts = rng.uniform(1, side, size=(4, 2))
        for a, b in zip(pts[:-1], pts[1:]):
            for s in np.linspace(0, 1, 4 * side):
                i, j = np.round(a + s * (b - a)).astype(int)
                protos[c, i, j] = 1.0
    y = rng.integers(0, n_classes, size=n)
    shifts = rng.integers(0, 3, size=(n, 2))
    x = np.stack([protos[c, si : si + side, sj : sj + side] for c, (si, sj) in zip(y, shifts)])
    x = x * rng.uniform(0.6, 1.0, size=(n, 1, 1)) + 0.3 * rng.normal(size=x.shape)
    x = np.clip(np.round(16 * x), 0, 16).reshape(n, side * side)
    return _split(x.astype(np.float64), y, n_classes, "synthetic_digits", test_fraction, seed)


def image_classification(*, prefer: str = "digits", test_fraction: float = 0.2, seed: int = 0):
    """The digits when scikit-learn is installed, else :func:`synthetic_images`; see ``.name``."""
    if prefer not in ("digits", "synthetic_digits"):
        raise ValueError(f"prefer must be 'digits' or 'synthetic_digits', got {prefer!r}")
    if prefer == "digits":
        try:
            return digits(test_fraction=test_fraction, seed=seed)
        except ImportError:
            pass
    return synthetic_images(test_fraction=test_fraction, seed=seed)
