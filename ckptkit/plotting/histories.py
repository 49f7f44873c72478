"""Series from one checkpoint's histories, and where two histories show a resume."""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from ckptkit.core.checkpoint import Checkpoint, TensorRef
from ckptkit.views.sections import is_number

# Fields of a history entry that are positions or bookkeeping, never a curve worth drawing.
_POSITION = ("step", "epoch")
_BOOKKEEPING = ("_runtime", "_per_second", "total_flos", "num_input_tokens_seen")


@dataclass
class Series:
    run: str
    metric: str                  # the field or history name: "loss", "val_loss", "train_losses"
    axis: str                    # "step" | "epoch"
    points: list[tuple[float, float]] = field(default_factory=list)   # (x, value), in saved order
    source: str = ""             # checkpoint and history it was read from
    filled_from: list[str] = field(default_factory=list)               # older checkpoints that filled gaps

    def fill_from(self, older: Series) -> None:
        """Add the points of an older checkpoint's history at positions this one lacks."""
        if older.axis != self.axis:
            return
        have = {x for x, _ in self.points}
        extra = [(x, v) for x, v in older.points if x not in have]
        if extra:
            self.points = sorted(self.points + extra, key=lambda p: p[0])
            self.filled_from.append(older.source)

    def restarts(self) -> list[tuple[float, str]]:
        """Positions where the saved history goes back: entries appended by a run that resumed
        from an earlier point without dropping what it had logged after it."""
        out = []
        for (x0, _), (x1, _) in pairwise(self.points):
            if x1 <= x0:
                out.append((x1, f"{self.metric} goes back from {self.axis} {x0:g} to {x1:g} in {self.source}"))
        return out

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run, "metric": self.metric, "axis": self.axis,
                "x": [x for x, _ in self.points], "values": [v for _, v in self.points],
                "source": self.source, "filled_from": list(self.filled_from)}


def series_of(ckpt: Checkpoint, run: str, where: str) -> list[Series]:
    """Every curve in `ckpt.histories` (the family's reader put them there)."""
    out: dict[str, Series] = {}
    for name, history in sorted(ckpt.histories.items()):
        if not isinstance(history, list) or not history:
            continue
        values = [float(v) for v in history if is_number(v)]
        if len(values) == len(history):
            # One value per epoch (the retrieval files' train_losses / val_recalls).
            out.setdefault(name, Series(run, name, "epoch", [(float(i + 1), v) for i, v in enumerate(values)],
                                        f"{where}: {name}"))
            continue
        for s in _dict_series(history, run, f"{where}: {name}"):
            if s.metric in out:
                s.metric = f"{name}.{s.metric}"
            out[s.metric] = s
    for s in _lightning_scores(ckpt, run, where):
        out.setdefault(s.metric, s)
    return list(out.values())


def _lightning_scores(ckpt: Checkpoint, run: str, where: str) -> list[Series]:
    """Lightning keeps no history, but each ModelCheckpoint callback's state holds the value of
    its monitored metric at this save (`current_score`, a one-element tensor): one point per file."""
    callbacks = ckpt.extra.get("callbacks")   # Lightning's callback states; no other reader puts them there
    step = ckpt.progress.global_step
    if not isinstance(callbacks, dict) or step is None:
        return []
    out = []
    for name, state in callbacks.items():
        if not (str(name).startswith("ModelCheckpoint") and isinstance(state, dict)):
            continue
        monitor, score = state.get("monitor"), state.get("current_score")
        value = score.scalar_value() if isinstance(score, TensorRef) else score
        if isinstance(monitor, str) and is_number(value):
            point = (float(step), float(value))
            out.append(Series(run, monitor, "step", [point], f"{where}: {name} current_score"))
    return out


def _dict_series(history: list[Any], run: str, source: str) -> list[Series]:
    entries = [e for e in history if isinstance(e, dict)]
    axis = "step" if any(is_number(e.get("step")) for e in entries) else "epoch" if any(
        is_number(e.get("epoch")) for e in entries) else None
    if axis is None:
        return []
    series: dict[str, Series] = {}
    for e in entries:
        x = e.get(axis)
        if not is_number(x):
            continue
        for key, value in e.items():
            if key in _POSITION or not is_number(value) or any(b in key for b in _BOOKKEEPING):
                continue
            point = (float(x), float(value))
            series.setdefault(key, Series(run, key, axis, source=source)).points.append(point)
    return list(series.values())


def resumes_between(newest: dict[str, Series], older: list[Series]) -> list[tuple[float, str, str]]:
    """Where the newest checkpoint's history and an older one's part ways: the newest came from a
    run resumed at (or before) the last position where they still agree."""
    out = []
    for s in older:
        mine = newest.get(s.metric)
        if mine is None or mine.axis != s.axis:
            continue
        values = dict(mine.points)
        shared = [(x, v) for x, v in s.points if x in values]
        differ = next((x for x, v in shared if values[x] != v), None)
        if differ is None:
            continue
        agree = [x for x, v in shared if x < differ and values[x] == v]
        at = agree[-1] if agree else min(values)
        out.append((at, s.axis, (f"{s.source} and {mine.source} differ from {s.axis} {differ:g} on: "
                    f"the later run resumed from an earlier checkpoint")))
    return out[:1]
