"""``arbiter report --plot``: the arms' posteriors as a PNG (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import stats

from engine.experiments.posteriors import BetaPosterior, Posterior
from engine.experiments.report import ArmReport, ExperimentReport


def density(posterior: Posterior, xs: np.ndarray) -> np.ndarray:
    """The posterior density of an arm's mean reward at ``xs``."""
    if isinstance(posterior, BetaPosterior):
        return np.asarray(stats.beta.pdf(xs, posterior.alpha, posterior.beta))
    scale = (posterior.beta / (posterior.alpha * posterior.kappa)) ** 0.5
    return np.asarray(stats.t.pdf(xs, 2 * posterior.alpha, loc=posterior.mu, scale=scale))


def plot_report(report: ExperimentReport, path: str | Path) -> Path:
    """Draw each arm's posterior with its 95% interval shaded; returns the file written.

    Needs matplotlib (``pip install 'arbiter-nba[plot]'``); raises ``RuntimeError``
    saying so when it is missing.
    """
    try:
        import matplotlib
    except ImportError as err:
        raise RuntimeError("--plot needs matplotlib: pip install 'arbiter-nba[plot]'") from err

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms: list[ArmReport] = list(report.arms)
    if report.holdout is not None and report.holdout.exposures > 0:
        arms.append(report.holdout)
    lo = min(a.ci[0] for a in arms)
    hi = max(a.ci[1] for a in arms)
    pad = (hi - lo) * 0.35 or 0.05
    xs = np.linspace(lo - pad, hi + pad, 600)
    if report.posterior == "beta":
        xs = xs[(xs > 0) & (xs < 1)]
    fig, ax = plt.subplots(figsize=(9, 5), dpi=110)
    for arm in arms:
        ys = density(arm.posterior, xs)
        held = arm is report.holdout
        label = (f"{arm.arm} (holdout): mean {arm.mean:.4g}" if held else
                 f"{arm.arm}: mean {arm.mean:.4g}, P(best) {arm.prob_best:.1%}, "
                 f"n={arm.exposures:.0f}")
        (line,) = ax.plot(xs, ys, linestyle="--" if held else "-", linewidth=2, label=label)
        inside = (xs >= arm.ci[0]) & (xs <= arm.ci[1])
        ax.fill_between(xs[inside], ys[inside], alpha=0.15, color=line.get_color())
        ax.axvline(arm.mean, color=line.get_color(), linewidth=0.8, alpha=0.6)
    what = "reward rate" if report.posterior == "beta" else "mean reward"
    ax.set_xlabel(f"{what} ({report.reward}); shaded: 95% credible interval")
    ax.set_ylabel("posterior density")
    ax.set_title(f"Experiment {report.experiment} on {report.placement}: "
                 f"best arm {report.best_arm or 'none yet'}")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_clusters(metrics_by_cluster: dict[str, dict[str, float]], path: str | Path) -> Path:
    """One panel per learned segmentation: each cluster's centre in every feature (as a
    multiple of that feature's largest centre, so features of any unit share an axis),
    with the cluster's share of recent customers in the legend. Returns the file."""
    try:
        import matplotlib
    except ImportError as err:
        raise RuntimeError("--plot needs matplotlib: pip install 'arbiter-nba[plot]'") from err

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(metrics_by_cluster)
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(6 * max(len(names), 1), 4),
                             squeeze=False)
    for ax, name in zip(axes[0], names, strict=False):
        metrics = metrics_by_cluster[name]
        features = list(dict.fromkeys(k.split(":", 2)[2] for k in metrics
                                      if k.startswith("centre:")))
        clusters = sorted({int(k.split(":")[1]) for k in metrics if k.startswith("size:")})
        xs = np.arange(len(features))
        width = 0.8 / max(len(clusters), 1)
        for n, cluster in enumerate(clusters):
            centre = np.array([metrics[f"centre:{cluster}:{f}"] for f in features])
            top = np.array([max(abs(metrics[f"centre:{c}:{f}"]) for c in clusters) or 1.0
                            for f in features])
            ax.bar(xs + n * width, centre / top, width,
                   label=f"{cluster} ({metrics[f'size:{cluster}']:.0%})")
        ax.set_xticks(xs + width * (len(clusters) - 1) / 2, features)
        ax.set_title(f"{name} (silhouette {metrics.get('silhouette', float('nan')):.2f})")
        ax.set_ylabel("centre / largest centre")
        ax.legend(title="cluster (share)")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
