"""Drawing `PlotData` as one PNG with matplotlib (the `plot` extra; imported by `ckptkit plot` only).

One panel for every loss-like metric together, then one per other metric; one colour per run;
a marker at each checkpoint on disk (latest, best, broken drawn differently); a dashed
vertical line where a resume happened.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ckptkit.core.errors import CkptkitError
from ckptkit.plotting import Marker, PlotData
from ckptkit.plotting.histories import Series

_STYLE = {"checkpoint": {"marker": "o", "s": 28, "facecolors": "white", "zorder": 3},
          "latest": {"marker": "*", "s": 150, "zorder": 4},
          "best": {"marker": "D", "s": 60, "facecolors": "gold", "zorder": 4},
          "broken": {"marker": "X", "s": 90, "c": "red", "zorder": 5}}


class MissingExtraError(CkptkitError):
    """matplotlib is not installed."""


def load_pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise MissingExtraError(None, "ckptkit plot draws with matplotlib, which is not installed: "
                                "pip install 'ckptkit[plot]' (or use --json for the series)") from None
    matplotlib.use("Agg")   # files only: no display needed, none opened
    import matplotlib.pyplot as plt

    return plt


def panels(data: PlotData) -> list[tuple[str, list[Series]]]:
    """("loss", every loss-like series), then (metric, its series) for the others."""
    losses = [s for s in data.series if "loss" in s.metric]
    others: dict[str, list[Series]] = {}
    for s in data.series:
        if "loss" not in s.metric:
            others.setdefault(s.metric, []).append(s)
    return ([("loss", losses)] if losses else []) + sorted(others.items())


def write_png(data: PlotData, out: Path) -> None:
    plt = load_pyplot()
    groups = panels(data)
    if not groups:
        raise CkptkitError(data.root, "nothing to draw: " + "; ".join(data.notes))
    fig, axes = plt.subplots(len(groups), 1, figsize=(7.5, 2.6 * len(groups) + 0.6), squeeze=False)
    styles = {run: ("-", "--", ":", "-.")[i % 4] for i, run in enumerate(data.runs)}
    for ax, (title, series) in zip(axes[:, 0], groups, strict=True):
        _panel(ax, title, series, data, styles)
    fig.suptitle(f"{data.root.name or data.root}: history from the checkpoints "
                 "(star latest, diamond best, red X broken)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def _panel(ax: Any, title: str, series: list[Series], data: PlotData, styles: dict[str, str]) -> None:
    """Colour per metric, line style per run: train and validation loss of one run stay apart."""
    axis_names = {s.axis for s in series}
    metrics = sorted({s.metric for s in series})
    colour = {s.metric: f"C{metrics.index(s.metric) % 10}" for s in series}
    for s in series:
        xs, ys = [x for x, _ in s.points], [v for _, v in s.points]
        label = s.run if len(metrics) == 1 else f"{s.run}: {s.metric}"
        # Earlier runs wide, later ones narrow on top: equal curves (a resume that matched the
        # uninterrupted run) stay visible as one line inside the other.
        order = data.runs.index(s.run)
        ax.plot(
            xs,
            ys,
            styles[s.run],
            color=colour[s.metric],
            lw=max(1.0, 2.6 - 1.2 * order),
            label=label,
            marker="." if len(xs) < 12 else None,
            zorder=2 + order,
            alpha=0.55 if order == 0 and len(data.runs) > 1 else 1,
        )
    for run in sorted({s.run for s in series}):
        mine = [s for s in series if s.run == run]
        for m in data.markers:
            if m.run == run:
                _marker(ax, m, mine, colour)
        for r in data.resumes:
            if r.run == run and r.axis in axis_names:
                ax.axvline(r.step, color="0.35", ls="--", lw=1)
                ax.annotate(f"{run} resumed", (r.step, 0.98), xycoords=("data", "axes fraction"), fontsize=7,
                            rotation=90, va="top", ha="right", color="0.35")
    ax.set_title(title, fontsize=10, loc="left")
    ax.set_xlabel(" / ".join(sorted(axis_names)))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def _marker(ax: Any, m: Marker, series: list[Series], colour: dict[str, str]) -> None:
    """At the checkpoint's position on the first of the run's series that reaches it."""
    for s in series:
        x = m.step if s.axis == "step" else m.epoch
        if x is None or not s.points:
            continue
        before = [(px, v) for px, v in s.points if px <= x]
        y = before[-1][1] if before else s.points[0][1]
        style = dict(_STYLE[m.kind])
        if m.kind != "broken":
            style["edgecolors"] = colour[s.metric]
            if "facecolors" not in style:
                style["c"] = colour[s.metric]
        ax.scatter([x], [y], **style)
        return
