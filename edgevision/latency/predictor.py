"""Predict a network's latency from a table: block entries + fitted models, plus network overhead.

predicted = a + b * n_units + s * sum(unit_ms)

- ``unit_ms``: the table's entry when the unit's key (structure + input shapes) is there,
  otherwise a per-block-type linear model fitted on the table's entries of the same kind:
  least squares of ms on [1, MACs, params, activation elements, input+output elements,
  leaf calls], each row weighted by 1/ms so that relative errors are minimised (a 0.05 ms
  depthwise block and a 5 ms attention block count alike). With few entries of a kind the
  model drops to fewer features (MACs and activation elements; then a ratio to MACs+elements).
- ``a, b, s``: the per-network overhead, fitted (least squares, relative) on the table's
  ``networks`` (whole networks timed beside their blocks). Blocks timed alone miss the
  glue between them (functional ops, cache misses when weights and activations change,
  ONNX Runtime's layout reorders at each block's ends), which these absorb. With fewer than
  4 networks: a = b = 0, s = 1 (the plain sum).
A kind with no entry at all cannot be predicted: ValueError naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgevision.latency.blocks import FEATURES, Unit, decompose

_LEVELS = (("full", ("macs", "params", "act_elems", "io_elems", "n_ops"), 10),
           ("small", ("macs", "act_elems"), 4))


class UnknownBlockError(ValueError):
    """A block kind the table has no entries for."""


def _relative_lstsq(X: np.ndarray, y: np.ndarray, ridge: float = 1e-4) -> np.ndarray:
    """argmin sum(((X w - y) / y)^2) + ridge' |w|^2 on max-scaled columns, with ridge' =
    ridge x mean diagonal of the normal matrix (a little damping for nearly collinear
    features, such as MACs and activation elements of one block type)."""
    scale = np.abs(X).max(axis=0)
    scale[scale == 0] = 1.0
    Xs = X / scale / y[:, None]
    ys = np.ones_like(y)
    A = Xs.T @ Xs
    A = A + ridge * np.trace(A) / len(A) * np.eye(X.shape[1])
    w = np.linalg.solve(A, Xs.T @ ys)
    return w / scale


@dataclass
class KindModel:
    kind: str
    level: str
    names: tuple
    w: np.ndarray
    floor: float  # predictions are kept at or above half the kind's smallest entry

    def __call__(self, feats: dict) -> float:
        if self.level == "ratio":
            cost = feats["macs"] + feats["act_elems"]
            return max(float(self.w[0] * cost), self.floor)
        x = np.array([1.0, *(float(feats[n]) for n in self.names)])
        return max(float(x @ self.w), self.floor)


def fit_kind(kind: str, entries: list[dict]) -> KindModel:
    ms = np.array([e["ms"] for e in entries], dtype=float)
    floor = 0.5 * float(ms.min())
    for level, names, need in _LEVELS:
        if len(entries) >= need:
            X = np.array([[1.0, *(float(e["features"][n]) for n in names)] for e in entries])
            return KindModel(kind, level, names, _relative_lstsq(X, ms), floor)
    cost = np.array([e["features"]["macs"] + e["features"]["act_elems"] for e in entries], dtype=float)
    ratio = float(np.median(ms / np.maximum(cost, 1.0)))
    return KindModel(kind, "ratio", (), np.array([ratio]), floor)


@dataclass
class Overhead:
    a: float = 0.0
    b: float = 0.0
    s: float = 1.0
    fitted_on: int = 0
    form: str = "sum"  # which candidate won: "sum", "s", "a+s" or "a+b+s"

    def __call__(self, unit_sum: float, n_units: int) -> float:
        return self.a + self.b * n_units + self.s * unit_sum


def _fit_form(form: str, rows: list) -> Overhead:
    s_ = np.array([r[0] for r in rows], dtype=float)
    n_ = np.array([r[1] for r in rows], dtype=float)
    m_ = np.array([r[2] for r in rows], dtype=float)
    if form == "s":  # robust to an outlier network: the median ratio
        return Overhead(s=float(np.median(m_ / s_)), fitted_on=len(rows), form=form)
    cols = [np.ones_like(s_)] + ([n_] if form == "a+b+s" else []) + [s_]
    w = _relative_lstsq(np.stack(cols, 1), m_, ridge=1e-9)
    b = float(w[1]) if form == "a+b+s" else 0.0
    return Overhead(float(w[0]), b, float(w[-1]), len(rows), form)


def fit_overhead(rows: list[tuple[float, int, float]]) -> Overhead:
    """rows: (sum of unit ms, number of units, measured network ms) of the fitting networks.

    Candidates: s·sum (median ratio), a + s·sum, a + b·n + s·sum (relative least squares). The
    one with the lowest leave-one-out relative RMSE on these networks is used, so a noisy
    fitting split does not buy a 3-parameter model that extrapolates badly. Fewer than 4
    networks: the plain sum."""
    if len(rows) < 4:
        return Overhead(fitted_on=len(rows))
    best, best_err = None, np.inf
    for form, k in (("s", 1), ("a+s", 2), ("a+b+s", 3)):
        if len(rows) < k + 3:
            continue
        errs = []
        for i in range(len(rows)):
            o = _fit_form(form, rows[:i] + rows[i + 1:])
            s_, n_, m_ = rows[i]
            errs.append((o(s_, n_) - m_) / m_)
        err = float(np.sqrt(np.mean(np.square(errs))))
        if err < best_err - 1e-12:
            best, best_err = form, err
    return _fit_form(best, rows)


@dataclass
class UnitPrediction:
    stage: str
    kind: str
    path: str
    ms: float
    source: str  # "table" or "fit"
    key: str


@dataclass
class Prediction:
    ms: float
    unit_sum_ms: float
    units: list[UnitPrediction]
    overhead: Overhead
    stages: dict = field(default_factory=dict)  # stage -> predicted ms (its units' share)

    @property
    def from_table(self) -> float:
        return sum(u.source == "table" for u in self.units) / max(len(self.units), 1)


class Predictor:
    """Latency predictions from one table. ``Predictor(table).predict(model_or_name, size)``."""

    def __init__(self, table: dict, networks: list[str] | None = None):
        from edgevision.latency.table import validate_table

        self.table = validate_table(table)
        self.entries = table["entries"]
        self.by_kind: dict = {}
        for e in self.entries.values():
            self.by_kind.setdefault(e["kind"], []).append(e)
        self.kind_models: dict = {}  # fitted on first use
        nets = table["networks"] if networks is None else {k: table["networks"][k] for k in networks}
        rows = []
        for net in nets.values():
            if all(k in self.entries for k in net["units"]):
                rows.append((sum(self.entries[k]["ms"] for k in net["units"]), len(net["units"]), net["ms"]))
        self.overhead = fit_overhead(rows)

    def unit_ms(self, unit: Unit) -> tuple[float, str]:
        entry = self.entries.get(unit.key)
        if entry is not None:
            return float(entry["ms"]), "table"
        model = self.kind_model(unit)
        if not unit.features:
            from edgevision.latency.blocks import unit_features

            unit.features = unit_features(unit)
        return model(unit.features), "fit"

    def kind_model(self, unit: Unit) -> KindModel:
        if unit.kind not in self.kind_models:
            entries = self.by_kind.get(unit.kind)
            if not entries:
                known = ", ".join(sorted(self.by_kind)) or "none"
                raise UnknownBlockError(
                    f"block {unit.path!r} of type {unit.kind!r} has no entry in the latency table "
                    f"(kinds it has: {known}); rebuild the table with a model that uses it")
            usable = [e for e in entries if set(FEATURES) <= set(e.get("features", {}))]
            if not usable:
                raise UnknownBlockError(f"block {unit.path!r} of type {unit.kind!r}: the table has no entry at "
                                        f"its shape {unit.input_shapes} and no cost features to fit one")
            self.kind_models[unit.kind] = fit_kind(unit.kind, usable)
        return self.kind_models[unit.kind]

    def predict_units(self, units: list[Unit]) -> Prediction:
        preds = []
        for u in units:
            ms, source = self.unit_ms(u)
            preds.append(UnitPrediction(u.stage, u.kind, u.path, ms, source, u.key))
        total_units = sum(p.ms for p in preds)
        o = self.overhead
        stages: dict = {}
        for p in preds:
            stages[p.stage] = stages.get(p.stage, 0.0) + o.s * p.ms + o.b
        return Prediction(o(total_units, len(preds)), total_units, preds, o, stages)

    def predict(self, model, size: int = 224) -> Prediction:
        """``model``: an nn.Module, a registry name, a net config path or dict."""
        import torch.nn as nn

        from edgevision.latency.table import resolve_model

        if not isinstance(model, nn.Module):
            model = resolve_model(model)
        return self.predict_units(decompose(model, size, features=False))


def predict_latency(model, table: dict, size: int = 224) -> float:
    """Predicted batch-1 latency (ms) of ``model`` from ``table`` (see :class:`Predictor`)."""
    return Predictor(table).predict(model, size).ms


__all__ = ["FEATURES", "KindModel", "Overhead", "Prediction", "Predictor", "UnknownBlockError",
           "fit_kind", "fit_overhead", "predict_latency"]
