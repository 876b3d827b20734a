"""Deep Transformer encoder exposing its chain of sub-layers: attention and MLP are separate steps.

The state is the token matrix X of shape ``(T, dim)`` (or a batch ``(B, T, dim)``), and every block
contributes two chain steps, self-attention then MLP, so every analysis (step Jacobians, backward
products, per-step gradient norms, rank collapse) sees the two sub-layers apart:

    step 2b     X ← attention sub-layer of block b
    step 2b+1   X ← MLP sub-layer of block b           (b = 0 … depth − 1)

With ``mlp=False`` (attention only) the chain has ``depth`` steps, all attention. Each sub-layer,
with f its branch (attention or MLP), s = ``residual_scale`` and ω the Admin weight (1 without
Admin):

    norm="pre":  X ← X + s·f(LN(X))
    norm="post": X ← LN(ω ⊙ X + s·f(X))          (Vaswani et al. 2017; Admin: Liu et al. 2020)
    norm=None:   X ← X + s·f(X)
    skip=False drops the identity path (X, or ω ⊙ X) from all three.

**How the chain is laid out.** One :class:`~gradflow.chain.Chain` (a single ``lax.scan``) of
``2·depth`` steps. The per-block parameters are stacked on a leading axis of ``depth`` and repeated
twice (``jnp.repeat(…, 2, axis=0)``), so both steps of block b see its parameters; a per-step flag
in ``xs`` (0 = attention, 1 = MLP) selects the sub-layer with ``lax.cond``. A step's gradient with
respect to the other sub-layer's parameters is exactly zero, so per-step gradient norms
(:func:`gradflow.gradients.chain_grad_norms`) are the sub-layer's own. The alternative, a
:class:`~gradflow.chain.Segmented` chain of ``2·depth`` :class:`~gradflow.chain.Layer` s, unrolls
the depth in Python: :func:`gradflow.jacobians.backward_products` on it was measured (CPU, 2 cores,
T = 8, dim = 16, 4 heads, pre-LN, float32) to take 119 s to compile at depth 32 (depth 64 was not
run to the end) against 1.5 s / 2.0 s for the scan's first call (compile + run) at depth 32 / 64,
and to run in 0.22 s against 0.017 s (depth 32; 0.028 s at 64). Computing both sub-layers and
selecting with ``jnp.where`` instead of ``lax.cond`` compiled as fast but ran 1.8× / 3.3× slower
(0.030 s / 0.091 s: both branches are evaluated and differentiated at every step). Under ``vmap``
over steps (:func:`gradflow.jacobians.step_jacobians`) the cond becomes a select, so step Jacobians
do evaluate both branches.

**Initialisation** (Xiong et al. 2020's setting by default): every attention and MLP kernel is
Xavier-normal (``N(0, 2/(fan_in + fan_out))``), biases zero, LayerNorm scale 1 and offset 0. The
embedding of float inputs is LeCun-normal (``N(0, 1/d_in)``, so E‖x_0‖² = dim for unit-variance
inputs), token embeddings are ``N(0, 1)`` (the same E‖x_0‖² = dim), learned positional
embeddings ``N(0, 0.02²)``.

References:
  Vaswani et al. 2017, "Attention is all you need", arXiv:1706.03762 (post-LN, sinusoidal PE).
  Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture", arXiv:2002.04745
    (pre-LN with a final LayerNorm, Xavier initialisation).
  Liu, Liu, Gao, Chen & Han 2020, "Understanding the Difficulty of Training Transformers",
    arXiv:2004.08249, §5 (Admin) and its released code (LiyuanLucasLiu/Transformer-Clinic).
  He, Martens, Zhang, Botev, Brock, Smith & Teh 2023, "Deep Transformers without Shortcuts:
    Modifying Self-attention for Faithful Signal Propagation", arXiv:2302.10322 (value-skip init).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gradflow import _checks
from gradflow import activations as _act
from gradflow import init as _init
from gradflow.chain import Chain, Layer, Segmented, final_state
from gradflow.models import _common

__all__ = [
    "Transformer",
    "TransformerStep",
    "admin_omega",
    "layer_norm",
    "sinusoidal",
    "NORMS",
    "POSITIONAL",
]

NORMS = (None, "pre", "post")
POSITIONAL = (None, "sinusoidal", "learned")
_ATTN, _MLP = 0, 1  # the per-step flag in the chain's xs


def layer_norm(h, p):
    """LayerNorm over the feature (last) axis, then ``scale`` and ``offset`` ``(dim,)``."""
    return _common.normalize(h, -1, p)


def _lead(v, ndim: int):
    """``v`` of shape ``(H,)`` as ``(1, …, H, 1, 1)`` with ``ndim`` axes (rank promotion raises)."""
    return v.reshape((1,) * (ndim - 3) + (v.shape[0], 1, 1))


@dataclasses.dataclass(frozen=True)
class TransformerStep:
    """One sub-layer step ``(theta, X, kind) -> X'``; hashable, so jitted analyses cache it.

    ``theta`` is one block's parameters (``attn``, ``mlp``, ``attn_norm``, ``mlp_norm``,
    ``omega``, ``value_skip`` as present); ``kind`` is 0 (attention) or 1 (MLP), or None for an
    attention-only chain. X has shape ``(T, dim)`` or ``(B, T, dim)``.
    """

    heads: int
    norm: str | None = "pre"
    activation: _act.Activation = dataclasses.field(default_factory=lambda: _act.get("relu"))
    residual_scale: float = 1.0
    skip: bool = True
    mlp: bool = True
    admin: bool = False
    value_skip: bool = False
    causal: bool = False

    # --- the two branches ---------------------------------------------------------------------
    def attention(self, theta, z):
        """Multi-head softmax self-attention of z ``(…, T, dim)`` -> ``(…, T, dim)``."""
        p = theta["attn"]
        *lead, t, dim = z.shape
        dh = dim // self.heads
        split = lambda a: a.reshape((*lead, t, self.heads, dh))
        q, k, v = (split(_common.readout(p[n], z)) for n in ("query", "key", "value"))
        logits = jnp.einsum("...qhd,...khd->...hqk", q, k) / math.sqrt(dh)
        if self.causal:
            mask = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), logits.shape)
            logits = jnp.where(mask, logits, -jnp.inf)
        a = jax.nn.softmax(logits, axis=-1)
        if self.value_skip:
            # A -> αI + βA per head (He et al. 2023, "value-SkipInit"; α = 1, β = 0 at init).
            vs = theta["value_skip"]
            eye = jnp.broadcast_to(jnp.eye(t, dtype=a.dtype), a.shape)
            a = _lead(vs["alpha"], a.ndim) * eye + _lead(vs["beta"], a.ndim) * a
        o = jnp.einsum("...hqk,...khd->...qhd", a, v).reshape((*lead, t, dim))
        return _common.readout(p["out"], o)

    def feedforward(self, theta, z):
        """The MLP φ(z W1 + b1) W2 + b2 of z ``(…, T, dim)`` -> ``(…, T, dim)``."""
        p = theta["mlp"]
        return _common.readout(p["out"], self.activation.fn(_common.readout(p["hidden"], z)))

    # --- a sub-layer: branch, residual, norm -------------------------------------------------
    def branch(self, which: str, theta, h):
        """s·f(LN(X)) (pre-LN) or s·f(X): the residual branch of sub-layer ``which``."""
        f = self.attention if which == "attn" else self.feedforward
        z = layer_norm(h, theta[f"{which}_norm"]) if self.norm == "pre" else h
        return self.residual_scale * f(theta, z)

    def combine(self, which: str, theta, h, y, omega=None):
        """The sub-layer output from its input ``h`` and branch ``y`` (identity path, post-LN)."""
        if self.skip:
            if omega is None and self.admin:
                omega = theta["omega"][which]
            if omega is not None:
                h = h * (_common.bcast(omega, h) if jnp.ndim(omega) else omega)
            y = h + y
        return layer_norm(y, theta[f"{which}_norm"]) if self.norm == "post" else y

    def sublayer(self, which: str, theta, h):
        return self.combine(which, theta, h, self.branch(which, theta, h))

    def __call__(self, theta, h, kind=None):
        if not self.mlp:
            return self.sublayer("attn", theta, h)
        return jax.lax.cond(
            kind == _MLP,
            lambda t, x: self.sublayer("mlp", t, x),
            lambda t, x: self.sublayer("attn", t, x),
            theta,
            h,
        )


def sinusoidal(t: int, dim: int, dtype) -> jax.Array:
    """Vaswani et al. 2017 §3.5: PE[p, 2i] = sin(p/10⁴^{2i/dim}), PE[p, 2i+1] = cos(…); (t, dim)."""
    pos = np.arange(t)[:, None]
    rate = 1.0 / 10000.0 ** (2 * (np.arange(dim) // 2) / dim)
    ang = pos * rate[None, :]
    return jnp.asarray(np.where(np.arange(dim) % 2 == 0, np.sin(ang), np.cos(ang)), dtype)


@dataclasses.dataclass(frozen=True)
class _Embed:
    """The stem ``(params, x, _) -> X_0``: token or Dense embedding plus the positional one."""

    tokens: bool
    positional: str | None

    def __call__(self, params, x, _=None):
        p = params["embed"]
        h = p["embedding"][x] if self.tokens else _common.readout(p, x)
        t, dim = h.shape[-2:]
        if self.positional == "sinusoidal":
            h = h + jnp.broadcast_to(sinusoidal(t, dim, h.dtype), h.shape)
        elif self.positional == "learned":
            h = h + jnp.broadcast_to(params["pos"][:t], h.shape)
        return h


def _per_step(step: TransformerStep, theta, depth: int):
    """(per-step params, xs, length): each block's params twice and the 0/1 kind flags."""
    if not step.mlp:
        return theta, None, depth
    rep = jax.tree_util.tree_map(lambda a: jnp.repeat(a, 2, axis=0), theta)
    return rep, jnp.tile(jnp.array([_ATTN, _MLP], jnp.int32), depth), 2 * depth


def admin_omega(step: TransformerStep, blocks, h0, depth: int):
    """Admin's ω for every sub-layer, from one profiling forward pass at initialisation.

    Following the released code of Liu et al. (2020) (``adaptive-profiling`` in
    ``fairseq/modules/transformer_layer.py``), the sub-layers i = 1 … 2N are run in order with

        ω_1 = 1,   ω_{i+1}² = Var[ω_i · x_{i−1}] + Var[f_i(x_{i−1})],

    each ω used as soon as it is set, where Var is the variance over every entry of the tensor
    (tokens, features, batch). As x_{i−1} = LN(·) has unit variance for i ≥ 2, this is the paper's
    ω_i = √(Σ_{j<i} Var[f_j(x_{j−1})]) (§5) with the input embedding counted as f_0.

    Args:
      step: a post-LN :class:`TransformerStep` with ``admin=True``.
      blocks: stacked block parameters (without ``omega``), leading axis ``depth``.
      h0: the embedded input X_0, ``(T, dim)`` or ``(B, T, dim)``.
      depth: number of blocks.

    Returns:
      ``{"attn": (depth, dim), "mlp": (depth, dim)}`` (``mlp`` only with MLPs), each ω repeated
      over the features (Admin's ω is a trainable per-feature vector initialised to the scalar).
    """
    theta, kinds, length = _per_step(step, blocks, depth)
    kinds = jnp.zeros((length,), jnp.int32) if kinds is None else kinds

    def sub(which, t, h, omega):
        y = step.branch(which, t, h)
        out = step.combine(which, t, h, y, omega=omega)
        return out, jnp.var(omega * h) + jnp.var(y)

    def body(carry, s):
        h, w2 = carry
        t, kind = s
        omega = jnp.sqrt(w2)
        h, w2 = jax.lax.cond(
            kind == _MLP,
            lambda tt, hh: sub("mlp", tt, hh, omega),
            lambda tt, hh: sub("attn", tt, hh, omega),
            t,
            h,
        )
        return (h, w2), omega

    one = jnp.ones((), h0.dtype)
    _, omegas = jax.lax.scan(body, (h0, one), (theta, kinds), length=length)
    dim = h0.shape[-1]
    per = omegas.reshape(depth, -1) if step.mlp else omegas[:, None]
    out = {"attn": jnp.broadcast_to(per[:, :1], (depth, dim))}
    if step.mlp:
        out["mlp"] = jnp.broadcast_to(per[:, 1:2], (depth, dim))
    return out


class Transformer(nn.Module):
    """Deep Transformer encoder: embedding, ``depth`` blocks (attention + MLP), per-token readout.

    Parameters (``params["params"]``): ``embed`` (``kernel (d_in, dim)``/``bias`` for float
    inputs, ``embedding (vocab_size, dim)`` for token ids), ``pos`` (``(max_len, dim)``, learned
    positional embedding only), ``blocks`` (stacked on a leading axis ``depth``: ``attn`` with
    ``query``/``key``/``value``/``out`` kernels ``(depth, dim, dim)`` and biases; ``mlp`` with
    ``hidden (depth, dim, mlp_ratio·dim)`` and ``out``; ``attn_norm``/``mlp_norm`` scale and
    offset ``(depth, dim)`` with a norm; ``value_skip`` α, β ``(depth, heads)``), ``admin``
    (ω ``{"attn", "mlp"}: (depth, dim)``), ``final_norm`` (pre-LN with ``final_norm``) and
    ``readout`` (``(dim, out_features)``).

    The chain (:meth:`chain`) runs over the sub-layers: see the module docstring.

    Attributes:
      depth: number of blocks L >= 1.
      dim: model width >= 1.
      heads: number of attention heads; must divide ``dim``.
      mlp_ratio: MLP hidden width / dim (positive; hidden = round(mlp_ratio · dim)).
      norm: "pre", "post" or None.
      residual_scale: s, the multiplier on every residual branch (1/√L keeps the stream bounded).
      mlp: whether blocks have an MLP sub-layer (False: attention only).
      skip: whether sub-layers have the identity (skip) path.
      admin: Admin initialisation (post-LN with skips only): ω from a profiling pass at init.
      value_skip: A -> αI + βA per head, α = 1, β = 0 at init, both trainable.
      causal: causal (lower-triangular) attention mask.
      vocab_size: None for float inputs ``(T, d_in)`` through a Dense embedding; else token ids.
      positional: None, "sinusoidal" or "learned" (needs ``max_len``).
      max_len: longest sequence for the learned positional embedding.
      activation: the MLP's activation (registry name or callable); ReLU as Xiong et al.
      kernel_init: attention and MLP kernel initialiser (Xavier-normal).
      final_norm: pre-LN only: a LayerNorm before the readout (Xiong et al. 2020).
      out_features: readout width per token.
      param_dtype: parameter dtype; None for float64 under ``jax_enable_x64``, else float32.
    """

    depth: int
    dim: int
    heads: int = 1
    mlp_ratio: float = 4
    norm: str | None = "pre"
    residual_scale: float = 1.0
    mlp: bool = True
    skip: bool = True
    admin: bool = False
    value_skip: bool = False
    causal: bool = False
    vocab_size: int | None = None
    positional: str | None = None
    max_len: int | None = None
    activation: _act.ActivationLike = "relu"
    kernel_init: Any = dataclasses.field(default_factory=_init.glorot_normal)
    final_norm: bool = True
    out_features: int = 1
    param_dtype: Any = None

    def __post_init__(self):
        _checks.positive_int("depth", self.depth)
        _checks.positive_int("dim", self.dim)
        _checks.positive_int("heads", self.heads)
        _checks.positive_int("out_features", self.out_features)
        if self.dim % self.heads:
            raise ValueError(f"heads must divide dim, got dim={self.dim} and heads={self.heads}")
        if isinstance(self.mlp_ratio, bool) or not isinstance(self.mlp_ratio, numbers.Real):
            raise TypeError(f"mlp_ratio must be a number, got {self.mlp_ratio!r}")
        if not (math.isfinite(self.mlp_ratio) and round(self.mlp_ratio * self.dim) >= 1):
            raise ValueError(
                f"mlp_ratio must be finite with mlp_ratio * dim >= 1, got {self.mlp_ratio}"
            )
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of None, 'pre', 'post'; got {self.norm!r}")
        if self.positional not in POSITIONAL:
            raise ValueError(
                f"positional must be one of None, 'sinusoidal', 'learned'; got {self.positional!r}"
            )
        if self.positional == "learned":
            _checks.positive_int("max_len", self.max_len)
        if self.vocab_size is not None:
            _checks.positive_int("vocab_size", self.vocab_size)
        s = self.residual_scale
        if isinstance(s, bool) or not isinstance(s, numbers.Real) or not math.isfinite(s):
            raise ValueError(f"residual_scale must be a finite number, got {s!r}")
        for name in ("mlp", "skip", "admin", "value_skip", "causal", "final_norm"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.admin and (self.norm != "post" or not self.skip):
            raise ValueError(
                "admin=True needs norm='post' and skip=True (Admin rescales the skip path of a "
                f"post-LN Transformer); got norm={self.norm!r}, skip={self.skip}"
            )
        _act.get(self.activation)
        super().__post_init__()

    # --- static structure ---------------------------------------------------------------------
    @property
    def step(self) -> TransformerStep:
        return TransformerStep(
            heads=self.heads,
            norm=self.norm,
            activation=_act.get(self.activation),
            residual_scale=float(self.residual_scale),
            skip=self.skip,
            mlp=self.mlp,
            admin=self.admin,
            value_skip=self.value_skip,
            causal=self.causal,
        )

    @property
    def hidden(self) -> int:
        """The MLP's hidden width."""
        return int(round(self.mlp_ratio * self.dim))

    @property
    def step_kinds(self) -> tuple[str, ...]:
        """``"attention"`` or ``"mlp"`` for every chain step, in order (length 2·depth or depth)."""
        one = ("attention", "mlp") if self.mlp else ("attention",)
        return one * self.depth

    @property
    def has_final_norm(self) -> bool:
        return self.norm == "pre" and self.final_norm

    # --- inputs and parameters ----------------------------------------------------------------
    def _check_input(self, x, p=None):
        if self.vocab_size is not None:
            x = jnp.asarray(x)
            if not jnp.issubdtype(x.dtype, jnp.integer):
                raise TypeError(f"x must hold integer token ids (vocab_size set), got {x.dtype}")
            if x.ndim not in (1, 2):
                raise ValueError(f"x must have shape (T,) or (B, T) token ids, got {x.shape}")
            if not isinstance(x, jax.core.Tracer):
                xn = np.asarray(x)
                if xn.size and (xn.min() < 0 or xn.max() >= self.vocab_size):
                    raise ValueError(f"x token ids must lie in [0, {self.vocab_size}), got {xn}")
        else:
            x = _checks.as_float_array("x", x, (2, 3))
            if p is not None and x.shape[-1] != p["embed"]["kernel"].shape[0]:
                d = p["embed"]["kernel"].shape[0]
                raise ValueError(
                    f"x must have {d} features (the model's input width), got shape {x.shape}"
                )
        t = x.shape[-1] if self.vocab_size is not None else x.shape[-2]
        if self.positional == "learned" and t > self.max_len:
            raise ValueError(f"x has {t} tokens, more than max_len={self.max_len}")
        return x

    def _blocks_init(self, dtype):
        L, d, r, kinit, zeros = self.depth, self.dim, self.hidden, self.kernel_init, _init.zeros()

        def init(key):
            ks = jax.random.split(key, 6)
            names = ("query", "key", "value", "out")
            dense = lambda k: _common.dense_params(kinit, zeros, d, d, dtype, L)(k)
            blocks = {"attn": {n: dense(k) for n, k in zip(names, ks[:4])}}
            norm = {"scale": jnp.ones((L, d), dtype), "offset": jnp.zeros((L, d), dtype)}
            if self.norm is not None:
                blocks["attn_norm"] = norm
            if self.mlp:
                blocks["mlp"] = {
                    "hidden": _common.dense_params(kinit, zeros, d, r, dtype, L)(ks[4]),
                    "out": _common.dense_params(kinit, zeros, r, d, dtype, L)(ks[5]),
                }
                if self.norm is not None:
                    blocks["mlp_norm"] = dict(norm)
            if self.value_skip:
                h = self.heads
                blocks["value_skip"] = {
                    "alpha": jnp.ones((L, h), dtype),
                    "beta": jnp.zeros((L, h), dtype),
                }
            return blocks

        return init

    def block_params(self, params):
        """The stacked per-block parameters the steps receive (Admin's ω merged in as ``omega``).

        Returns:
          A dict whose leaves have a leading axis ``depth``; block b's slice is the ``theta`` of
          :class:`TransformerStep` for both of its sub-layers.
        """
        p = _common.unwrap(params)
        theta = dict(p["blocks"])
        if self.admin:
            theta["omega"] = p["admin"]
        return theta

    def embed(self, params, x):
        """The embedded input X_0 (token or Dense embedding plus positions), ``(…, T, dim)``."""
        p = _common.unwrap(params)
        stem = self._stem(p)
        return stem.fn(stem.params, self._check_input(x, p))

    def _stem(self, p):
        stem_params = {"embed": p["embed"]}
        if self.positional == "learned":
            stem_params["pos"] = p["pos"]
        return Layer(
            stem_params, None, _Embed(self.vocab_size is not None, self.positional), "embed"
        )

    # --- chains --------------------------------------------------------------------------------
    def chain(self, params, x) -> Chain:
        """The chain of sub-layers for input ``x``; its states are the token matrices.

        Args:
          params: as returned by ``init`` (or the inner dict).
          x: float inputs ``(T, d_in)`` / ``(B, T, d_in)``, or token ids ``(T,)`` / ``(B, T)``.

        Returns:
          A :class:`Chain` of length 2·depth (depth without MLPs), h_0 = the embedded input X_0
          ``(T, dim)`` or ``(B, T, dim)``; step 2b is block b's attention, 2b+1 its MLP.
        """
        p = _common.unwrap(params)
        x = self._check_input(x, p)
        stem = self._stem(p)
        h0 = stem.fn(stem.params, x)
        theta, xs, length = _per_step(self.step, self.block_params(p), self.depth)
        return Chain(params=theta, xs=xs, h0=h0, step=self.step, length=length, name="blocks")

    def full_chain(self, params, x) -> Segmented:
        """The whole network up to the last token matrix, with the embedding as ``stem``.

        Step names are ``"blocks/0"`` … (see :meth:`chain`); the stem is ``"embed"``. The final
        LayerNorm and the readout are the head (:meth:`head`), outside the chain.
        """
        p = _common.unwrap(params)
        chain = self.chain(params, x)
        x = self._check_input(x, p)
        return Segmented(h0=chain.h0, segments=(chain.segment,), stem=self._stem(p), x=x)

    def features(self, params, x):
        """The last token matrix X_L (before any final norm), ``(T, dim)`` or ``(B, T, dim)``."""
        return final_state(self.chain(params, x))

    def readout(self, params, h):
        """Final LayerNorm (pre-LN) and the per-token readout; ``apply == readout ∘ features``.

        Args:
          params: as returned by ``init`` (or the inner dict).
          h: last token matrix (:meth:`features`), ``(T, dim)`` or ``(B, T, dim)``.

        Returns:
          Array ``(T, out_features)`` or ``(B, T, out_features)``.
        """
        p = _common.unwrap(params)
        if self.has_final_norm:
            h = layer_norm(h, p["final_norm"])
        return _common.readout(p["readout"], h)

    def head(self, params, h):
        """The same as :meth:`readout` (its earlier name): ``(…, T, dim) -> (…, T, out)``."""
        return self.readout(params, h)

    @nn.compact
    def __call__(self, x):
        """Forward pass: ``x`` -> per-token outputs ``(T, out_features)`` or ``(B, T, out)``."""
        x = self._check_input(x)
        dtype = _common.resolve_dtype(self.param_dtype)
        d, zeros = self.dim, _init.zeros()
        if self.vocab_size is None:
            embed = _common.dense_params(_init.lecun(), zeros, x.shape[-1], d, dtype)
        else:
            v = self.vocab_size
            embed = lambda key: {"embedding": jax.random.normal(key, (v, d), dtype)}
        p = {"embed": self.param("embed", embed)}
        if self.positional == "learned":
            n = self.max_len
            p["pos"] = self.param("pos", lambda key: 0.02 * jax.random.normal(key, (n, d), dtype))
        p["blocks"] = self.param("blocks", self._blocks_init(dtype))
        if self.admin:
            stem = self._stem(p)
            p["admin"] = self.param(
                "admin",
                lambda _: admin_omega(self.step, p["blocks"], stem.fn(stem.params, x), self.depth),
            )
        if self.has_final_norm:
            p["final_norm"] = self.param(
                "final_norm",
                lambda _: {"scale": jnp.ones((d,), dtype), "offset": jnp.zeros((d,), dtype)},
            )
        p["readout"] = self.param(
            "readout", _common.dense_params(self.kernel_init, zeros, d, self.out_features, dtype)
        )
        return self.readout(p, self.features(p, x))
