"""Calibrators on the judge's decision logit z = z_yes - z_no (raw score = sigmoid(z)).

Every calibrator is a monotone non-decreasing map z -> P(yes) in [0, 1]:

  PlattScaling (default)        p = sigmoid(a * z + b), a >= 0 (bounded), fitted by NLL.
  TemperatureScaling            p = sigmoid(z / T), T > 0, T fitted by minimising the NLL over log T.
  IsotonicCalibration           sklearn IsotonicRegression on sigmoid(z), increasing,
                                out_of_bounds="clip"; stored as its breakpoints and applied with
                                linear interpolation between them (continuous, piecewise linear),
                                with outputs clipped to [eps, 1 - eps] (eps = 1e-3) so that no score
                                is ever a hard 0 or 1.
  IdentityCalibration ("none")  p = sigmoid(z): the uncalibrated judge.

The prior. A calibrator is fitted at a stated prior P(yes) (`prior`, default 0.5 in `eval evaluate`):
each fitting clip is weighted so that the "yes" clips carry `prior` of the total weight and the "no"
clips the rest, whatever their counts (class-balanced weights at 0.5). A score of 0.5 then means the
judge's evidence favours neither answer: in sync and not are equally likely. Without it the map would
learn the pairs' own share of originals (about 1 clip in 6 in val), and an untouched clip would score
well below 0.5. Platt is the default because it can move its 0.5 point: the reward objective
(Bradley-Terry) learns logit differences only, so where z = 0 falls is arbitrary, and a
temperature-only map sigmoid(z / T) always puts 0.5 at z = 0. prior=None fits at the sample's own
class balance (unweighted), as calibrators without a prior did.

Fitting uses Platt's smoothed targets (y=1 -> (N+ + 1)/(N+ + 2), y=0 -> 1/(N- + 2)) for the two
parametric maps: with perfectly separable validation data plain NLL drives T -> 0 (or a -> inf);
the smoothed targets keep the fit finite and change nothing noticeable on realistic data.

Serialised as calibration.json: {"method", "params", "fitted_on": "val", "n", "prior"}; a file
without "prior" (written before it was recorded) loads with prior None. Loading checks it
(an export is untrusted input): a known method, the keys it needs, finite numbers of the right type,
isotonic breakpoints of equal length and non-decreasing; anything else is a one-line ValueError
naming the file (a NaN temperature would otherwise score every video 0.0 with status ok).
`torch_transform` gives the same map on tensors (differentiable) for rewards; isotonic's torch map
is the piecewise-linear interpolation, whose gradient is zero on flat steps, so a fitted isotonic
calibrator also carries a temperature fit (at the same prior) in params["fallback"] and `differentiable()` returns it
(see eval.scorer.Scorer.reward).
"""
from __future__ import annotations

import json
import numbers
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

EPS = 1e-3
MAX_JSON_BYTES = 16 * 1024 * 1024  # a JSON file of an export (calibration, config, ...) is small; cap what is read
_LOGT_BOUNDS = (np.log(1e-2), np.log(1e2))
_A_MAX = 1e2
DEFAULT_PRIOR = 0.5  # P(yes) the calibration is fitted for: 0.5 = in sync and not equally likely


def read_json(path: str | Path, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """The JSON value in `path`, or a one-line ValueError naming it: larger than max_bytes, not UTF-8,
    not JSON, or nested so deeply that the parser runs out of recursion (200k levels of [[[ ... )."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(max_bytes + 1)  # read at most the cap: a huge (or endless) file costs nothing
    except OSError as err:
        raise ValueError(f"{path}: cannot read it: {err.strerror or err}") from None
    if len(raw) > max_bytes:
        raise ValueError(f"{path}: larger than {max_bytes // (1024 * 1024)} MB, the limit for a JSON file of an export")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply to read") from None


def _number(params: dict[str, Any], key: str, method: str, default: float | None = None) -> float:
    """params[key] as a finite float; a missing key (without a default), a string, a bool or a
    non-finite value is a ValueError naming the key."""
    if key not in params:
        if default is None:
            raise ValueError(f"{method} calibration: params.{key} is missing")
        return float(default)
    v = params[key]
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise ValueError(f"{method} calibration: params.{key} must be a number, got {v!r}")
    v = float(v)
    if not np.isfinite(v):
        raise ValueError(f"{method} calibration: params.{key} must be finite, got {v}")
    return v


def _numbers(params: dict[str, Any], key: str, method: str) -> np.ndarray:
    """params[key] as a 1-d float64 array of finite numbers (a list of numbers in the JSON)."""
    if key not in params:
        raise ValueError(f"{method} calibration: params.{key} is missing")
    v = params[key]
    if not isinstance(v, (list, tuple)) or any(isinstance(e, bool) or not isinstance(e, numbers.Real) for e in v):
        raise ValueError(f"{method} calibration: params.{key} must be a list of numbers")
    arr = np.asarray(v, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{method} calibration: params.{key} holds non-finite values")
    return arr


def sigmoid(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def _smoothed_targets(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64)
    n_pos = float((y > 0.5).sum())
    n_neg = float(len(y) - n_pos)
    return np.where(y > 0.5, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))


def _nll_logits(logits: np.ndarray, t: np.ndarray, w: np.ndarray | None = None) -> float:
    """Mean (weighted) binary cross-entropy of sigmoid(logits) against (soft) targets t, numerically stable."""
    # -[t log s(x) + (1-t) log(1-s(x))] = softplus(x) - t x
    return float(np.average(np.logaddexp(0.0, logits) - t * logits, weights=w))


def check_prior(prior: Any) -> float | None:
    """`prior` as a float in (0, 1), or None; anything else is a ValueError."""
    if prior is None:
        return None
    if isinstance(prior, bool) or not isinstance(prior, numbers.Real) or not 0.0 < float(prior) < 1.0:
        raise ValueError(f"calibration prior must be a probability strictly between 0 and 1, got {prior!r}")
    return float(prior)


def prior_weights(y, prior: float | None) -> np.ndarray:
    """Per-sample weights (mean 1) under which the labels y (1 = yes) have P(yes) = prior.

    prior None, or a single class present: all ones (the sample's own balance)."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    w = np.ones(len(y))
    pos = y > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if prior is None or n_pos == 0 or n_neg == 0:
        return w
    w[pos] = prior * len(y) / n_pos
    w[~pos] = (1.0 - prior) * len(y) / n_neg
    return w


def _check(z: np.ndarray, y: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    z = np.asarray(z, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(z)):
        raise ValueError("calibration input z contains non-finite values")
    if y is not None:
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if len(y) != len(z):
            raise ValueError(f"z and y differ in length: {len(z)} vs {len(y)}")
        if len(z) == 0:
            raise ValueError("cannot fit a calibrator on zero samples")
    return z, y


class Calibrator:
    """Base: fit(z, y) -> self, transform(z) -> probabilities, JSON round trip."""

    method: ClassVar[str] = "base"

    def __init__(self) -> None:
        self.n: int = 0
        self.fitted_on: str = "val"
        self.fitted: bool = False
        self.prior: float | None = None

    # ----- to implement
    def _fit(self, z: np.ndarray, y: np.ndarray, w: np.ndarray) -> None:
        raise NotImplementedError

    def _transform(self, z: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def torch_transform(self, z):  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def params(self) -> dict[str, Any]:
        raise NotImplementedError

    def _load_params(self, params: dict[str, Any]) -> None:
        raise NotImplementedError

    # ----- shared
    def fit(self, z, y, fitted_on: str = "val", prior: float | None = None) -> "Calibrator":
        """Fit on logits z and labels y (1 = yes); `prior`: the P(yes) to calibrate for (module
        docstring), None = the sample's own class balance."""
        z, y = _check(z, y)
        prior = check_prior(prior)
        self._fit(z, y, prior_weights(y, prior))
        self.n = int(len(z))
        self.fitted_on = fitted_on
        self.prior = prior
        self.fitted = True
        return self

    def transform(self, z) -> np.ndarray:
        z, _ = _check(z)
        return np.clip(self._transform(z), 0.0, 1.0)

    __call__ = transform

    def differentiable(self) -> "Calibrator":
        """A calibrator whose torch map has useful gradients (itself, except for isotonic)."""
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "params": self.params, "fitted_on": self.fitted_on,
                "n": int(self.n), "prior": self.prior}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Calibrator":
        """The calibrator `to_dict` gave, checked: a ValueError says what is wrong with `d`."""
        if not isinstance(d, dict):
            raise ValueError(f"a calibration is a JSON object, got {type(d).__name__}")
        for key in ("method", "params"):
            if key not in d:
                raise ValueError(f"calibration has no {key!r}")
        method = d["method"]
        if not isinstance(method, str) or method not in CALIBRATORS:
            raise ValueError(f"unknown calibration method {method!r}; known: {sorted(CALIBRATORS)}")
        if not isinstance(d["params"], dict):
            raise ValueError(f"{method} calibration: params must be a JSON object, got {type(d['params']).__name__}")
        n = d.get("n", 0)
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise ValueError(f"calibration n must be a count (an integer >= 0), got {n!r}")
        fitted_on = d.get("fitted_on", "val")
        if not isinstance(fitted_on, str):
            raise ValueError(f"calibration fitted_on must be a string, got {fitted_on!r}")
        obj = CALIBRATORS[method]()
        obj._load_params(d["params"])
        obj.n = int(n)
        obj.fitted_on = fitted_on
        obj.prior = check_prior(d.get("prior"))  # absent in files written before the prior was recorded
        obj.fitted = True
        return obj

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Calibrator":
        """calibration.json, checked (module docstring); a ValueError names the file."""
        d = read_json(path)
        try:
            return cls.from_dict(d)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params}, n={self.n}, prior={self.prior})"


class IdentityCalibration(Calibrator):
    """No calibration: p = sigmoid(z)."""

    method = "none"

    def _fit(self, z, y, w) -> None:
        pass

    def _transform(self, z):
        return sigmoid(z)

    def torch_transform(self, z):
        import torch

        return torch.sigmoid(z)

    @property
    def params(self):
        return {}

    def _load_params(self, params):
        pass


class TemperatureScaling(Calibrator):
    """p = sigmoid(z / T); T fitted by NLL on log T (bounded to [0.01, 100])."""

    method = "temperature"

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = float(temperature)

    def _fit(self, z, y, w) -> None:
        from scipy.optimize import minimize_scalar

        t = _smoothed_targets(y)
        res = minimize_scalar(lambda lt: _nll_logits(z / np.exp(lt), t, w), bounds=_LOGT_BOUNDS,
                              method="bounded", options={"xatol": 1e-6})
        self.temperature = float(np.exp(res.x))

    def _transform(self, z):
        return sigmoid(z / self.temperature)

    def torch_transform(self, z):
        import torch

        return torch.sigmoid(z / self.temperature)

    @property
    def params(self):
        return {"temperature": self.temperature}

    def _load_params(self, params):
        self.temperature = _number(params, "temperature", self.method)
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


class PlattScaling(Calibrator):
    """p = sigmoid(a z + b) with a in [0, 100] (non-decreasing), fitted by NLL (L-BFGS-B)."""

    method = "platt"

    def __init__(self, a: float = 1.0, b: float = 0.0) -> None:
        super().__init__()
        self.a, self.b = float(a), float(b)

    def _fit(self, z, y, w) -> None:
        from scipy.optimize import minimize

        t = _smoothed_targets(y)
        wn = w / w.sum()

        def f(p):
            x = p[0] * z + p[1]
            g = (sigmoid(x) - t) * wn
            return _nll_logits(x, t, w), np.array([np.sum(g * z), np.sum(g)])

        res = minimize(f, x0=np.array([1.0, 0.0]), jac=True, method="L-BFGS-B",
                       bounds=[(0.0, _A_MAX), (None, None)])
        self.a, self.b = float(res.x[0]), float(res.x[1])

    def _transform(self, z):
        return sigmoid(self.a * z + self.b)

    def torch_transform(self, z):
        import torch

        return torch.sigmoid(self.a * z + self.b)

    @property
    def params(self):
        return {"a": self.a, "b": self.b}

    def _load_params(self, params):
        self.a, self.b = _number(params, "a", self.method), _number(params, "b", self.method)
        if self.a < 0:
            raise ValueError(f"Platt slope must be >= 0 for a monotone map, got {self.a}")


class IsotonicCalibration(Calibrator):
    """Isotonic regression on sigmoid(z), applied as a continuous piecewise-linear map.

    Breakpoints x (in sigmoid space) and y (clipped to [eps, 1-eps]); np.interp clips outside the
    fitted range (out_of_bounds="clip"). A temperature fit at the same prior rides along as
    params["fallback"] for differentiable use (its 0.5 point stays at z = 0: a reward's gradient,
    not its level, is what it is for).
    """

    method = "isotonic"

    def __init__(self, eps: float = EPS) -> None:
        super().__init__()
        self.eps = float(eps)
        self.x = np.array([0.0, 1.0])
        self.y = np.array([self.eps, 1.0 - self.eps])
        self.fallback = TemperatureScaling()

    def _fit(self, z, y, w) -> None:
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(increasing=True, out_of_bounds="clip", y_min=self.eps,
                                 y_max=1.0 - self.eps)
        iso.fit(sigmoid(z), y, sample_weight=w)
        self.x = np.asarray(iso.X_thresholds_, dtype=np.float64)
        self.y = np.clip(np.asarray(iso.y_thresholds_, dtype=np.float64), self.eps, 1.0 - self.eps)
        if len(self.x) == 1:  # a constant map (all z equal): keep it well defined for np.interp
            self.x = np.array([self.x[0], self.x[0] + 1e-12])
            self.y = np.array([self.y[0], self.y[0]])
        self.y = np.maximum.accumulate(self.y)  # exact monotonicity after float clipping

    def fit(self, z, y, fitted_on: str = "val", prior: float | None = None) -> "Calibrator":
        super().fit(z, y, fitted_on=fitted_on, prior=prior)
        self.fallback = TemperatureScaling().fit(z, y, fitted_on=fitted_on, prior=prior)
        return self

    def _transform(self, z):
        return np.interp(sigmoid(z), self.x, self.y)

    def torch_transform(self, z):
        """Piecewise-linear interpolation in torch (gradient zero on flat steps)."""
        import torch

        xs = torch.as_tensor(self.x, dtype=z.dtype, device=z.device)
        ys = torch.as_tensor(self.y, dtype=z.dtype, device=z.device)
        s = torch.sigmoid(z).clamp(xs[0], xs[-1])
        idx = torch.searchsorted(xs, s.detach().contiguous(), right=True).clamp(1, len(xs) - 1)
        x0, x1 = xs[idx - 1], xs[idx]
        y0, y1 = ys[idx - 1], ys[idx]
        w = (s - x0) / (x1 - x0).clamp_min(1e-12)
        return y0 + w * (y1 - y0)

    def differentiable(self) -> Calibrator:
        return self.fallback

    @property
    def params(self):
        return {"x": [float(v) for v in self.x], "y": [float(v) for v in self.y], "eps": self.eps,
                "fallback": self.fallback.to_dict()}

    def _load_params(self, params):
        self.eps = _number(params, "eps", self.method, default=EPS)
        if not 0 <= self.eps < 0.5:
            raise ValueError(f"isotonic calibration: params.eps must be in [0, 0.5), got {self.eps}")
        self.x = _numbers(params, "x", self.method)
        self.y = _numbers(params, "y", self.method)
        if len(self.x) != len(self.y) or len(self.x) < 2:
            raise ValueError(f"isotonic calibration: params.x and params.y need the same length, >= 2 "
                             f"(got {len(self.x)} and {len(self.y)})")
        if np.any(np.diff(self.x) < 0) or np.any(np.diff(self.y) < 0):
            raise ValueError("isotonic calibration: breakpoints params.x and params.y must be non-decreasing")
        if self.y[0] < 0 or self.y[-1] > 1:
            raise ValueError("isotonic calibration: params.y are probabilities, in [0, 1]")
        fb = params.get("fallback")
        try:
            self.fallback = Calibrator.from_dict(fb) if fb is not None else TemperatureScaling()
        except ValueError as err:
            raise ValueError(f"isotonic calibration: params.fallback: {err}") from None


CALIBRATORS: dict[str, type[Calibrator]] = {
    "none": IdentityCalibration,
    "temperature": TemperatureScaling,
    "platt": PlattScaling,
    "isotonic": IsotonicCalibration,
}
METHODS = ("temperature", "platt", "isotonic")
DEFAULT_METHOD = "platt"  # the one parametric map that can move its 0.5 point (module docstring)


def fit_calibrator(method: str, z, y, fitted_on: str = "val", prior: float | None = None) -> Calibrator:
    """Fit a calibrator of `method` ("temperature", "platt", "isotonic" or "none") on (z, y) at
    `prior` (None: the sample's own class balance)."""
    if method not in CALIBRATORS:
        raise ValueError(f"unknown calibration method {method!r}; known: {sorted(CALIBRATORS)}")
    return CALIBRATORS[method]().fit(z, y, fitted_on=fitted_on, prior=prior)


def load_calibrator(path_or_dict: str | Path | dict) -> Calibrator:
    if isinstance(path_or_dict, dict):
        return Calibrator.from_dict(path_or_dict)
    return Calibrator.load(path_or_dict)
