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
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradflow import _checks
from gradflow.chain import Chain
from gradflow.tasks._images import ImageData, digits, image_classification, synthetic_images

__all__ = [
    "cross_entropy",
    "SequenceTask",
    "TASKS",
    "adding",
    "temporal_order",
    "memorization",
    "multiplication",
    "random_permutation",
    "adding_target",
    "temporal_order_target",
    "memorization_target",
    "multiplication_target",
    "random_permutation_target",
    "PASCANU_TOLERANCE",
    "pascanu_criterion",
    "wilson_interval",
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
        bits: fraction of sequences with any wrong bit; regression with a ``tolerance``:
        fraction of sequences whose squared error exceeds it).
      tolerance: regression only: None scores by the mean squared error; a number counts a
        test sequence as wrong when its squared error exceeds it (Pascanu et al. 2013, §4.1.2:
        0.04 on a target in [0, 1]), so that :attr:`threshold` is an error rate.
    """

    name: str
    generate: object
    target: object
    in_features: int
    out_features: int
    kind: str
    threshold: float
    tolerance: float | None = None

    def loss(self, outputs: jax.Array, y: jax.Array) -> jax.Array:
        """The training loss of readout ``outputs`` ``(B, out_features)`` against targets ``y``."""
        return task_loss(self.kind, outputs, y)

    def error(self, outputs: jax.Array, y: jax.Array) -> jax.Array:
        """The test error that :attr:`threshold` applies to (see above); a scalar."""
        return task_error(self.kind, outputs, y, self.tolerance)


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


def task_error(kind: str, outputs, y, tolerance=None):
    if kind == "regression":
        sq = jnp.square(outputs - y)
        if tolerance is None:
            return jnp.mean(sq)
        return jnp.mean(jnp.sum(sq, axis=-1) > tolerance)
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
    half = (length - start) // 2
    u = _marked_pair(key, batch, length, start, (0, half), (half, length - start))
    return u, adding_target(u)


def _marked_pair(key, batch, length, start, first, second):
    """``(B, T, 2)``: values U(0, 1) (channel 0, zero on padding) and two markers (channel 1),
    one drawn uniformly from ``start + [first)`` and one from ``start + [second)``."""
    kv, k1, k2 = jax.random.split(key, 3)
    dtype = _checks.default_float()
    t = jnp.arange(length)[None, :]
    values = jax.random.uniform(kv, (batch, length), dtype) * (t >= start)
    i = start + jax.random.randint(k1, (batch,), *first)
    j = start + jax.random.randint(k2, (batch,), *second)
    markers = ((t == i[:, None]) | (t == j[:, None])).astype(dtype)
    return jnp.stack([values, markers], axis=-1)


def multiplication(key, batch: int, length: int, *, start=0):
    """The multiplication problem (Hochreiter & Schmidhuber 1997, §5.5; Pascanu et al. 2013,
    §4.1.2).

    The inputs of :func:`adding` (values v_t ~ U(0, 1), two marked steps), with the marker
    windows of Pascanu et al.'s code (``multiplication.py`` of github.com/pascanur/trainingRNNs):
    the first marker uniformly in [0, ⌊T/10⌋), the second in [⌊T/10⌋, ⌊T/2⌋), so both marked
    values lie at least T/2 steps before the end. The target is the product of the two marked
    values, in [0, 1] (mean 1/4, variance 7/144).

    Args:
      key: PRNG key.
      batch: B.
      length: T ≥ 10.
      start: the task occupies steps ``start … T−1`` (an effective length T − start ≥ 10, the
        windows are fractions of it); earlier steps are all-zero padding. May be traced.

    Returns:
      ``(u (B, T, 2), y (B, 1))``.
    """
    _check(batch, length, 10)
    start = _check_start(start, length, 10)
    eff = length - start
    u = _marked_pair(key, batch, length, start, (0, eff // 10), (eff // 10, eff // 2))
    return u, multiplication_target(u)


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
      n_bits: pattern length (5 in Martens & Sutskever's "5-bit" problem, registered as
        ``noiseless_memorization``; their 20-bit variant uses 10 symbols of 5 values, not bits).
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


def random_permutation(key, batch: int, length: int, *, n_symbols: int = 100, start=0):
    """The random permutation problem (Hochreiter & Schmidhuber 1997, §5.2, task 2b; Martens &
    Sutskever 2011; Pascanu et al. 2013, §4.1.2).

    A sequence of T one-hot symbols out of ``n_symbols``: the first is 0 or 1 (the one to
    remember), the others are drawn uniformly from {2, …, n_symbols − 1}. The target is the
    first symbol, predicted at the end as one of ``n_symbols`` classes (as in Pascanu et al.'s
    ``permutation.py``, where the net predicts the next symbol, which repeats the first).

    Args:
      key: PRNG key.
      batch: B.
      length: T ≥ 2.
      n_symbols: alphabet size ≥ 3 (100 in the paper).
      start: the task occupies steps ``start … T−1`` (effective length ≥ 2); earlier steps are
        all-zero padding. May be traced.

    Returns:
      ``(u (B, T, n_symbols), y (B,) int32)``.
    """
    _checks.positive_int("n_symbols", n_symbols, 3)
    _check(batch, length, 2)
    start = _check_start(start, length, 2)
    kf, kr = jax.random.split(key)
    first = jax.random.randint(kf, (batch,), 0, 2)
    symbols = jax.random.randint(kr, (batch, length), 2, n_symbols)
    t = jnp.arange(length)[None, :]
    symbols = jnp.where(t == start, first[:, None], symbols)
    u = jax.nn.one_hot(symbols, n_symbols, dtype=_checks.default_float())
    return u * (t >= start)[..., None], random_permutation_target(u * (t >= start)[..., None])


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


def multiplication_target(u) -> jax.Array:
    """The multiplication problem's target from its inputs: the product of the marked values.

    Args:
      u: ``(B, T, 2)`` (channel 0 values, channel 1 markers; unmarked steps contribute 1).

    Returns:
      ``(B, 1)``.
    """
    u = jnp.asarray(u)
    _checks.check_finite("u", u)
    return jnp.prod(jnp.where(u[..., 1] > 0, u[..., 0], 1), axis=-1, keepdims=True)


def random_permutation_target(u) -> jax.Array:
    """The random permutation problem's class from its inputs: the first (non-padding) symbol.

    Args:
      u: ``(B, T, n_symbols)`` one-hot symbols (all-zero padding steps are skipped).

    Returns:
      ``(B,)`` int32.
    """
    u = jnp.asarray(u)
    _checks.check_finite("u", u)
    first = jnp.argmax(jnp.sum(u, axis=-1) > 0, axis=-1)  # the first active step
    step = jnp.take_along_axis(u, first[:, None, None], axis=1)[:, 0]
    return jnp.argmax(step, axis=-1).astype(jnp.int32)


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
    # The tasks below score as Pascanu et al. 2013 (§4.1.1-4.1.2) do: error rate below 1 % of
    # the test sequences; a regression sequence is wrong when its squared error exceeds 0.04.
    "multiplication": SequenceTask(
        "multiplication", multiplication, multiplication_target, 2, 1, "regression", 0.01, 0.04
    ),
    "random_permutation": SequenceTask(
        "random_permutation",
        random_permutation,
        random_permutation_target,
        100,
        100,
        "classification",
        0.01,
    ),
    # Martens & Sutskever 2011's "5-bit" noiseless memorisation problem (see memorization).
    "noiseless_memorization": SequenceTask(
        "noiseless_memorization",
        lambda key, batch, length, **kw: memorization(key, batch, length, n_bits=5, **kw),
        functools.partial(memorization_target, n_bits=5),
        4,
        5,
        "bits",
        0.01,
    ),
}

# Pascanu et al. 2013 (§4.1.2) count a regression sequence as misclassified when its squared
# error exceeds 0.04, on targets in [0, 1] (their adding target is the *mean* of the two marked
# values). gradflow's adding target is their sum, twice the mean, so its squared error is 4 times
# theirs: the same criterion is 0.16.
PASCANU_TOLERANCE: dict[str, float] = {"adding": 0.16, "multiplication": 0.04}


def pascanu_criterion(task: SequenceTask) -> SequenceTask:
    """``task`` scored as Pascanu, Mikolov & Bengio 2013 (arXiv:1211.5063, §4.1) score it.

    A run succeeds when fewer than 1 % of freshly generated test sequences are misclassified
    (10000 in the paper): for classification the arg-max class is wrong, for the bit patterns of
    memorisation any bit is wrong, for regression the squared error exceeds the tolerance of
    :data:`PASCANU_TOLERANCE` (0.04 on a target in [0, 1]).

    Args:
      task: a :class:`SequenceTask` (a regression task must be one of :data:`PASCANU_TOLERANCE`).

    Returns:
      The task with ``threshold=0.01`` and, for regression, ``tolerance`` set; its
      :meth:`SequenceTask.error` is then the fraction of misclassified sequences.

    Raises:
      ValueError: a regression task with no known tolerance.
    """
    if not isinstance(task, SequenceTask):
        raise TypeError(f"task must be a SequenceTask, got {type(task).__name__}")
    tolerance = None
    if task.kind == "regression":
        if task.name not in PASCANU_TOLERANCE:
            raise ValueError(
                f"task {task.name!r} is a regression task with no Pascanu tolerance; "
                f"expected one of {', '.join(PASCANU_TOLERANCE)}"
            )
        tolerance = PASCANU_TOLERANCE[task.name]
    return task._replace(threshold=0.01, tolerance=tolerance)


def wilson_interval(successes, trials, *, z: float = 1.959963984540054):
    """Wilson's score interval for a success probability (Wilson 1927, JASA 22:209).

    For k successes in n trials, p̂ = k/n and

        centre = (p̂ + z²/2n) / (1 + z²/n),
        half = z / (1 + z²/n) · √(p̂(1 − p̂)/n + z²/4n²);

    unlike the normal (Wald) interval it stays inside [0, 1] and is not empty at k = 0 or n,
    which matters for the handful of seeds a training study affords.

    Args:
      successes: k, an int or array of ints in [0, n].
      trials: n ≥ 1, broadcastable against ``successes``.
      z: the normal quantile (1.96 for 95 %).

    Returns:
      ``(rate, low, high)`` NumPy float64 arrays of the broadcast shape.
    """
    k = np.asarray(successes, np.float64)
    n = np.asarray(trials, np.float64)
    if np.any(n < 1) or np.any(n != np.round(n)):
        raise ValueError(f"trials must be integers >= 1, got {trials!r}")
    if np.any(k < 0) or np.any(k > n) or np.any(k != np.round(k)):
        raise ValueError(f"successes must be integers in [0, trials], got {successes!r}")
    if not (np.isfinite(z) and z > 0):
        raise ValueError(f"z must be a positive number, got {z!r}")
    p = k / n
    scale = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / scale
    half = z / scale * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return p, np.maximum(centre - half, 0.0), np.minimum(centre + half, 1.0)


def get(name: str) -> SequenceTask:
    """The :class:`SequenceTask` called ``name`` (one of :data:`TASKS`)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    return TASKS[name]
