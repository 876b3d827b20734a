"""Matplotlib figure functions: each takes measured arrays and returns a Figure (no I/O).

Figures are built on :class:`matplotlib.figure.Figure`, not on pyplot: importing this package
changes no global matplotlib state (a user's backend stays theirs), a figure needs no
``plt.close``, and ``Figure.savefig`` renders through matplotlib's Agg/PDF canvases directly.

Every plotting function takes ``ax=`` (one panel) or ``axes=`` (several panels: a sequence of the
documented length, row-major) to draw into a caller's figure, and returns the Figure it drew
into. When the function creates the figure it also sets the figure title (``suptitle``) and a
tight layout; with the caller's axes both are left to the caller, since they act on the whole
figure. :func:`new_axes` and :func:`new_axes_grid` are the helpers behind this, public so that
the experiments' own figure functions (``gradflow.experiments.*.figure_*``) follow the same rule.

One module per topic: ``gradients`` (through depth and time), ``meanfield`` (signal propagation
and dynamical isometry), ``dynamics`` (recurrent dynamics, the cliff and clipping, Lyapunov
spectra), ``partial_jacobians``, ``cnn`` and ``transformers``; the shared helpers are in
``_base``.
"""

from gradflow.plots._base import new_axes, new_axes_grid, palette
from gradflow.plots.cnn import (
    cnn_fourier_mode_decay,
    cnn_q_c_layers,
    cnn_singular_value_spread,
    cnn_state_gradient_norms,
)
from gradflow.plots.dynamics import (
    cliff_clipping,
    doya_bifurcation,
    lyapunov_convergence,
    lyapunov_order_to_chaos,
    rnn_stability_thresholds,
)
from gradflow.plots.gradients import (
    layer_grad_norms,
    log_singular_value_density,
    rnn_backprop_norms,
)
from gradflow.plots.meanfield import chi1_phase_diagram, depth_scales, isometry_spectra, q_c_maps
from gradflow.plots.partial_jacobians import (
    partial_jacobian_phase_diagram,
    partial_jacobian_power_laws,
)
from gradflow.plots.transformers import (
    gradient_scale_slopes,
    sublayer_jacobian_spectra,
    token_collapse,
    uniform_attention_growth,
)

__all__ = [
    "new_axes",
    "new_axes_grid",
    "palette",
    "layer_grad_norms",
    "log_singular_value_density",
    "rnn_backprop_norms",
    "partial_jacobian_power_laws",
    "partial_jacobian_phase_diagram",
    "cnn_singular_value_spread",
    "cnn_state_gradient_norms",
    "cnn_q_c_layers",
    "cnn_fourier_mode_decay",
    "token_collapse",
    "uniform_attention_growth",
    "gradient_scale_slopes",
    "sublayer_jacobian_spectra",
    "chi1_phase_diagram",
    "q_c_maps",
    "isometry_spectra",
    "depth_scales",
    "doya_bifurcation",
    "cliff_clipping",
    "rnn_stability_thresholds",
    "lyapunov_order_to_chaos",
    "lyapunov_convergence",
]
