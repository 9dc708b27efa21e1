"""Thompson-sampling weights by quadrature: P(variant i has the highest rate).

For independent Beta(alpha_i, beta_i) posteriors

    P(i best) = integral f_i(x) * prod_{j != i} F_j(x) dx,

which is exactly the allocation Thompson sampling makes in expectation, but
deterministic (no sampling noise, cacheable, replayable).

How it is computed, and why:

* In logit space, z = log(x / (1 - x)). The density of z is
  g(z) = exp(alpha z - (alpha + beta) softplus(z)) / B(alpha, beta), which is
  log-concave for every alpha, beta > 0: no singularities at 0 or 1 even
  when alpha < 1, and approximately normal for large counts.
* Each posterior gets its own breakpoints where its log-density has dropped by
  n^2/2 nats (n = 1..8) on either side of its mode, i.e. roughly at mode +- n
  sd for a normal, but also correct for skewed posteriors. A posterior with
  10^7 observations is therefore resolved at its own width, however narrow.
* The union of all breakpoints cuts the real line into panels; each panel gets
  an 8-point Gauss-Legendre rule. CDFs F_j at the nodes come from integrating
  the densities panel by panel with the exact Gauss-Legendre integration
  matrix, anchored with one `betainc` call per variant. This avoids thousands
  of incomplete-beta evaluations and keeps 10 variants well under 1 ms.

Error: outside the integration range every log-concave density has dropped by
at least 32 nats, so the truncation error is below 2 * e^-32 ~ 3e-14 per
variant. The discretisation error was measured against adaptive quadrature
(`scipy.integrate.quad` with exact `betainc` CDFs) on stress sets with 2-5
variants, 1 to 10^7 observations and alpha, beta down to 0.1: it never
exceeded 7e-10, the order of the reference's own error. `QUADRATURE_ABS_ERROR`
states 1e-8 (over 10x margin) as the absolute error of each returned
probability, for alpha, beta >= 0.1. The result is renormalised to sum to
exactly 1 (the raw sum is 1 within the same error); the renormalisation is
included in the stated error.
"""

from __future__ import annotations

import numpy as np
from numpy.polynomial import legendre
from scipy import special

QUADRATURE_ABS_ERROR = 1e-8
"""Absolute error bound of each probability from `prob_best` (alpha, beta >= 0.1)."""

MIN_RELIABLE_PARAMETER = 0.1
"""Smallest Beta parameter for which `QUADRATURE_ABS_ERROR` is claimed."""

_NODES_PER_PANEL = 8
_GL_NODES, _GL_WEIGHTS = legendre.leggauss(_NODES_PER_PANEL)
_DROP_LEVELS = np.arange(1, 9) ** 2 / 2.0
_SIDES = np.concatenate([-np.ones(_DROP_LEVELS.size), np.ones(_DROP_LEVELS.size)])
_DROPS = np.concatenate([_DROP_LEVELS, _DROP_LEVELS])
_FARTHEST_LEFT = _DROP_LEVELS.size - 1
_NEWTON_STEPS = 2


def _integration_matrix() -> np.ndarray:
    """S[a, b] = integral from -1 to node a of the b-th Lagrange basis polynomial."""
    vander = legendre.legvander(_GL_NODES, _NODES_PER_PANEL - 1)
    integrals = np.empty((_NODES_PER_PANEL, _NODES_PER_PANEL))
    for degree in range(_NODES_PER_PANEL):
        unit = np.zeros(_NODES_PER_PANEL)
        unit[degree] = 1.0
        integrals[:, degree] = legendre.legval(_GL_NODES, legendre.legint(unit, lbnd=-1))
    return np.asarray(integrals @ np.linalg.inv(vander))


_PARTIAL_INTEGRALS_T = _integration_matrix().T


def _softplus(z: np.ndarray) -> np.ndarray:
    return np.asarray(np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z))))


def _breakpoints(alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Per variant, points where the logit log-density has dropped by `_DROPS` nats.

    Newton's method on the convex drop function; after the first step every
    iterate lies beyond its root, so the drop there is at least the target
    whatever the number of steps (the truncation bound does not rely on it).
    """
    a = alpha[:, None]
    b = beta[:, None]
    total = a + b
    mode = np.log(a / b)
    log_peak = a * mode - total * _softplus(mode)
    z = mode + _SIDES * np.sqrt((1.0 / a + 1.0 / b) * 2.0 * _DROPS)
    target = log_peak - _DROPS
    for _ in range(_NEWTON_STEPS):
        slope = a - total / (1.0 + np.exp(-z))
        z = z - (a * z - total * _softplus(z) - target) / slope
    return np.asarray(z)


def _check_parameters(alpha: np.ndarray, beta: np.ndarray) -> None:
    if alpha.ndim != 1 or alpha.shape != beta.shape or alpha.size == 0:
        message = (
            f"alpha and beta must be non-empty 1-D arrays of the same length, "
            f"got shapes {alpha.shape} and {beta.shape}"
        )
        raise ValueError(message)
    if not (np.all(np.isfinite(alpha)) and np.all(np.isfinite(beta))):
        message = "alpha and beta must be finite"
        raise ValueError(message)
    if np.any(alpha <= 0) or np.any(beta <= 0):
        message = f"Beta parameters must be positive, got alpha={alpha}, beta={beta}"
        raise ValueError(message)


def prob_best(alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """P(variant i has the highest rate) under independent Beta(alpha_i, beta_i).

    Sums to 1 (renormalised); each entry is within `QUADRATURE_ABS_ERROR` of
    the exact integral when all parameters are >= `MIN_RELIABLE_PARAMETER`.
    """
    alpha = np.asarray(alpha, dtype=float)
    beta = np.asarray(beta, dtype=float)
    _check_parameters(alpha, beta)
    variants = alpha.size
    if variants == 1:
        return np.ones(1)
    log_norm = special.betaln(alpha, beta)
    points = _breakpoints(alpha, beta)
    # Below `left` the variant with the highest left end has CDF < e^-32, so
    # every other integrand is negligible; above `right` all mass is spent.
    left = float(points[:, _FARTHEST_LEFT].max())
    right = float(points[:, -1].max())
    inner = points[(points > left) & (points < right)]
    edges = np.unique(np.concatenate([inner, np.log(alpha / beta), [left, right]]))
    edges = edges[(edges >= left) & (edges <= right)]
    half_widths = np.diff(edges) / 2.0
    centres = (edges[:-1] + edges[1:]) / 2.0
    panels = half_widths.size
    nodes = (centres[:, None] + half_widths[:, None] * _GL_NODES).ravel()

    log_density = (
        alpha[:, None] * nodes - (alpha + beta)[:, None] * _softplus(nodes) - log_norm[:, None]
    )
    scaled = np.exp(log_density).reshape(variants, panels, _NODES_PER_PANEL)
    scaled *= half_widths[None, :, None]
    panel_mass = scaled @ _GL_WEIGHTS
    within_panel = scaled @ _PARTIAL_INTEGRALS_T
    cdf_at_left = special.betainc(alpha, beta, 1.0 / (1.0 + np.exp(-left)))
    cdf_at_edges = cdf_at_left[:, None] + np.cumsum(panel_mass, axis=1) - panel_mass
    cdf = (cdf_at_edges[:, :, None] + within_panel).reshape(variants, -1)

    log_cdf = np.log(np.clip(cdf, 1e-300, 1.0))
    log_others = log_cdf.sum(axis=0) - log_cdf
    quadrature_weights = (half_widths[:, None] * _GL_WEIGHTS).ravel()
    probabilities = np.exp(log_density + log_others) @ quadrature_weights
    return np.asarray(probabilities / probabilities.sum())


def apply_floor(probabilities: np.ndarray, floor: float) -> np.ndarray:
    """p' = floor + (1 - k floor) p: every variant keeps >= floor, sum stays 1."""
    variants = probabilities.size
    if not 0.0 <= floor * variants < 1.0:
        message = (
            f"floor {floor!r} is too high for {variants} variants: "
            f"it must be >= 0 and below 1/{variants}"
        )
        raise ValueError(message)
    return np.asarray(floor + (1.0 - variants * floor) * probabilities)
