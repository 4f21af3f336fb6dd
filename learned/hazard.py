"""A differentially private model of which exit a state takes, and after how long.

For every state with several exits, the time spent in it is cut into bins of ``bin_days``
(public, stated by the user). In each bin a patient either stays or leaves by one of the
state's exits: a discrete-time competing-risks hazard (Allison 1982; Tutz and Schmid,
*Modeling Discrete Time-to-Event Data*, 2016), here a multinomial logit over "stay" and the
exits, given the patient's covariates and the bin. All states of a module share one model
(one linear map over state-specific features), so one patient's whole trajectory, every
state and every bin, is one example: that is the privacy unit, and DP-SGD (Abadi et al.
2016, through Opacus) clips each patient's gradient as a whole. Covariates are scaled to
[0, 1] with bounds the user states (public), so no preprocessing reads the data.

The model answers ``hazards(state, x)`` (per bin, the chance of staying and of leaving by
each exit) and ``exit_distribution(state, x)`` (the probability of leaving by each exit
within the modelled horizon, the rest being "still there"). The engine draws from the same
numbers without torch: :mod:`learned.runtime`.

With a privacy budget, the noise is calibrated so that training, composed in RDP with any
releases made before it from the same data (the noisy counts of a derived module's
structure), spends at most (epsilon, delta); a training run that would pass its epsilon
stops before the step that would (see :func:`train`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from learned.privacy import Mechanism, calibrate_noise, rdp_epsilon
from modules.errors import ConfigError

__all__ = ["Visit", "HazardSpec", "HazardModel", "build_tensors", "train", "TrainResult"]


@dataclass(frozen=True)
class Visit:
    """One stay of one patient in one state: how long, and how it ended (None: still
    there when the data end, i.e. censored)."""

    patient: Any
    state: str
    days: float
    exit: str | None
    covariates: tuple[float, ...] = ()


@dataclass(frozen=True)
class HazardSpec:
    """The model's public shape: states and their exits, the time bins, and the covariates
    with the bounds used to scale them (public: stated by the user, not read from data).

    ``time_knots`` shapes the baseline hazard over the bins: 0 gives every bin its own
    parameter; K >= 1 makes each exit's baseline logit piecewise linear in the bin through
    K evenly spaced knots (1: constant). Fewer parameters take less DP noise, and bins that
    few patients reach borrow from their neighbours instead of drifting on noise alone."""

    exits: dict[str, tuple[str, ...]]
    bin_days: float
    max_bins: int
    covariates: tuple[str, ...] = ()
    bounds: tuple[tuple[float, float], ...] = ()
    time_knots: int = 0

    def check(self) -> None:
        if self.bin_days <= 0 or self.max_bins < 1:
            raise ConfigError("bin width must be > 0 days and there must be at least one bin")
        if not 0 <= self.time_knots <= self.max_bins:
            raise ConfigError(f"time knots must be between 0 (one per bin) and the number of "
                              f"bins ({self.max_bins}), got {self.time_knots}")
        if len(self.bounds) != len(self.covariates):
            raise ConfigError("give one (low, high) bound per covariate")
        for name, (lo, hi) in zip(self.covariates, self.bounds, strict=True):
            if not hi > lo:
                raise ConfigError(f"covariate {name!r}: bound high must exceed low")
        for s, ex in self.exits.items():
            if not ex:
                raise ConfigError(f"state {s!r} has no exits to model")

    @property
    def states(self) -> list[str]:
        return sorted(self.exits)

    @property
    def classes(self) -> list[tuple[str, str]]:
        """Output classes after "stay": (state, exit) pairs."""
        return [(s, e) for s in self.states for e in self.exits[s]]

    @property
    def n_time(self) -> int:
        """Features of the baseline hazard: one per bin, or one per knot."""
        return self.time_knots or self.max_bins

    def time_basis(self) -> np.ndarray:
        """[max_bins, n_time]: the baseline features of each bin (indicators, or the hat
        functions of linear interpolation between the knots)."""
        b, k = self.max_bins, self.time_knots
        if k == 0:
            return np.eye(b)
        if k == 1:
            return np.ones((b, 1))
        knots = np.linspace(0.0, b - 1.0, k)
        bins = np.arange(b, dtype=float)
        return np.stack([np.interp(bins, knots, np.eye(k)[i]) for i in range(k)], axis=1)

    @property
    def block(self) -> int:
        """Features per state: covariates, then the baseline hazard's."""
        return len(self.covariates) + self.n_time

    @property
    def n_features(self) -> int:
        return self.block * len(self.exits)

    def scale(self, x: Sequence[float]) -> np.ndarray:
        lo = np.array([b[0] for b in self.bounds], dtype=np.float32)
        hi = np.array([b[1] for b in self.bounds], dtype=np.float32)
        return np.clip((np.asarray(x, dtype=np.float32) - lo) / (hi - lo), 0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {"exits": {k: list(v) for k, v in self.exits.items()}, "bin_days": self.bin_days,
                "max_bins": self.max_bins, "covariates": list(self.covariates),
                "bounds": [list(b) for b in self.bounds], "time_knots": self.time_knots}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HazardSpec:
        return cls({k: tuple(v) for k, v in d["exits"].items()}, float(d["bin_days"]),
                   int(d["max_bins"]), tuple(d["covariates"]),
                   tuple(tuple(b) for b in d["bounds"]), int(d.get("time_knots", 0)))


class HazardModel(nn.Module):
    """One linear map from state-specific features to "stay" and every (state, exit).

    It starts from a public prior, not from the data: in every state, half the patients
    leave within the modelled bins, at a constant hazard split evenly among the exits
    (zero logits would start at a two-in-three chance of leaving every bin, far from any
    data, and the few noisy steps of DP-SGD would not get back)."""

    def __init__(self, spec: HazardSpec) -> None:
        super().__init__()
        spec.check()
        self.spec = spec
        self.linear = nn.Linear(spec.n_features, 1 + len(spec.classes))
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        leave = 1.0 - 0.5 ** (1.0 / spec.max_bins)
        with torch.no_grad():
            for j, (s, _e) in enumerate(spec.classes):
                self.linear.bias[1 + j] = math.log(leave / (len(spec.exits[s]) * (1 - leave)))
        classes = spec.classes
        allowed = torch.zeros(len(spec.states), 1 + len(classes), dtype=torch.bool)
        allowed[:, 0] = True
        for i, s in enumerate(spec.states):
            for j, (cs, _e) in enumerate(classes):
                if cs == s:
                    allowed[i, 1 + j] = True
        self.register_buffer("allowed", allowed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)

    def features(self, state: str, x: Sequence[float], bins: int) -> torch.Tensor:
        """Rows for bins 0..bins-1 of a stay in ``state`` with covariates ``x``."""
        spec = self.spec
        k = spec.states.index(state)
        f = torch.zeros(bins, spec.n_features)
        off = k * spec.block
        nc = len(spec.covariates)
        if spec.covariates:
            f[:, off:off + nc] = torch.from_numpy(spec.scale(x))
        basis = torch.from_numpy(spec.time_basis()).float()
        for j in range(bins):
            f[j, off + nc: off + nc + spec.n_time] = basis[min(j, spec.max_bins - 1)]
        return f

    @torch.no_grad()
    def hazards(self, state: str, x: Sequence[float]) -> np.ndarray:
        """[max_bins, 1 + exits]: per bin, P(stay) and P(leave by each exit) given that the
        patient is still in ``state`` at the bin's start."""
        spec = self.spec
        k = spec.states.index(state)
        logits = self.forward(self.features(state, x, spec.max_bins))
        cols = torch.nonzero(self.allowed[k]).flatten()
        return torch.softmax(logits[:, cols], dim=1).cpu().numpy().astype(np.float64)

    def exit_distribution(self, state: str, x: Sequence[float]) -> dict[str, float]:
        """P(leaving by each exit within ``max_bins`` bins); the rest stays beyond."""
        h = self.hazards(state, x)
        alive = 1.0
        out = np.zeros(h.shape[1] - 1)
        for row in h:
            out += alive * row[1:]
            alive *= row[0]
        return dict(zip(self.spec.exits[state], out.tolist(), strict=True))

@dataclass
class Tensors:
    x: torch.Tensor        # [patients, rows, features]
    y: torch.Tensor        # [patients, rows] class index (0 = stay)
    mask: torch.Tensor     # [patients, rows] 1 for real rows
    allowed: torch.Tensor  # [patients, rows, classes] which classes a row may take
    patients: int = 0
    rows: int = 0


def build_tensors(visits: Sequence[Visit], spec: HazardSpec,
                  patients: Sequence[Any] | None = None) -> Tensors:
    """Person-period rows, grouped by patient (one patient = one example). A stay longer
    than the modelled horizon is censored at its end. With ``patients``, every one of
    them is an example, in that order, those without stays as empty ones: the sampling
    rate of DP-SGD is then fixed by the number of patients before any stay is read."""
    spec.check()
    by_patient: dict[Any, list[Visit]] = {p: [] for p in patients or ()}
    for v in visits:
        if v.state in spec.exits:
            if patients is not None and v.patient not in by_patient:
                raise ConfigError(f"stay of patient {v.patient!r}, who is not among the "
                                  "patients given")
            by_patient.setdefault(v.patient, []).append(v)
    states = spec.states
    classes = {c: i + 1 for i, c in enumerate(spec.classes)}
    per: list[list[tuple[int, int, int, np.ndarray]]] = []
    for vs in by_patient.values():
        rows = []
        for v in vs:
            if v.exit is not None and v.exit not in spec.exits[v.state]:
                raise ConfigError(f"state {v.state!r}: exit {v.exit!r} is not among the "
                                  f"modelled exits {list(spec.exits[v.state])}")
            k = states.index(v.state)
            # Bin j holds the times (j*w, (j+1)*w]: a stay that ends at exactly one bin
            # width (a one-month Delay) leaves in bin 0. A censored stay survived every
            # bin it completed.
            if v.exit is None:
                last = int(math.floor(v.days / spec.bin_days + 1e-9))
            else:
                last = max(0, int(math.ceil(v.days / spec.bin_days - 1e-9)) - 1)
            cov = spec.scale(v.covariates) if spec.covariates else np.zeros(0, np.float32)
            censored = v.exit is None or last >= spec.max_bins
            n = min(last, spec.max_bins) if censored else last + 1
            for j in range(n):
                leaving = not censored and j == last
                rows.append((k, j, classes[(v.state, v.exit)] if leaving else 0, cov))
        if rows or patients is not None:
            per.append(rows)
    p = len(per)
    r = max((len(rows) for rows in per), default=1)
    x = torch.zeros(p, r, spec.n_features)
    y = torch.zeros(p, r, dtype=torch.long)
    mask = torch.zeros(p, r)
    allowed_by_state = HazardModel(spec).allowed
    allowed = torch.zeros(p, r, 1 + len(classes), dtype=torch.bool)
    allowed[:, :, 0] = True
    nc, nt = len(spec.covariates), spec.n_time
    basis = torch.from_numpy(spec.time_basis()).float()
    for i, rows in enumerate(per):
        for j, (k, b, c, cov) in enumerate(rows):
            off = k * spec.block
            if nc:
                x[i, j, off:off + nc] = torch.from_numpy(cov)
            x[i, j, off + nc: off + nc + nt] = basis[b]
            y[i, j] = c
            mask[i, j] = 1.0
            allowed[i, j] = allowed_by_state[k]
    return Tensors(x, y, mask, allowed, p, sum(len(rows) for rows in per))


def patient_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor,
                 allowed: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of each patient's whole trajectory: [patients]."""
    logits = model(x).masked_fill(~allowed, -1e9)
    nll = nn.functional.cross_entropy(logits.transpose(1, 2), y, reduction="none")
    return (nll * mask).sum(dim=1)


@dataclass
class TrainResult:
    model: HazardModel
    epsilon: float | None
    delta: float | None
    noise_multiplier: float | None
    max_grad_norm: float | None
    epochs: int
    losses: list[float] = field(default_factory=list)
    accountant: str | None = None
    sample_rate: float | None = None
    steps: int = 0
    #: Every release from the data this training's epsilon accounts for: the ``prior``
    #: ones passed in, then DP-SGD with the steps it took.
    mechanisms: tuple[Mechanism, ...] = ()
    #: Training stopped before its last epoch because the next step would have passed
    #: the target epsilon.
    stopped_early: bool = False
    patients: int = 0
    rows: int = 0
    epsilons: list[float] = field(default_factory=list)


def train(visits: Sequence[Visit], spec: HazardSpec, **kw: Any) -> TrainResult:
    """Fit the hazard model: see :func:`_train` for the options."""
    import warnings

    with warnings.catch_warnings():
        # Opacus warns that its noise is not from a cryptographically secure generator
        # (its secure_mode needs torchcsprng; the README says so), and that its hooks see
        # a model whose input needs no gradient (a linear map: as it should be).
        warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
        warnings.filterwarnings("ignore", message=".*Full backward hook is firing.*")
        return _train(visits, spec, **kw)


def _train(visits: Sequence[Visit], spec: HazardSpec, *, epsilon: float | None = None,
          delta: float = 1e-5, noise_multiplier: float | None = None,
          prior: Sequence[Mechanism] = (), patients: Sequence[Any] | None = None,
          epochs: int = 10, batch_size: int = 2048,
          lr: float = 0.1, max_grad_norm: float = 5.0, seed: int = 0, device: str = "cpu",
          progress: Callable[[int, float, float | None], None] | None = None) -> TrainResult:
    """Fit the hazard model. With ``epsilon`` or ``noise_multiplier``, DP-SGD through
    Opacus (Poisson sampling of patients, per-patient clipping at ``max_grad_norm``, RDP
    accounting); without either, plain full-batch fitting (no privacy). ``patients``:
    see :func:`build_tensors`.

    With ``epsilon`` and no ``noise_multiplier``, the noise is the least that keeps the
    whole training, composed with the ``prior`` releases, within ``(epsilon, delta)``.
    With a given ``noise_multiplier``, training runs at that noise until its epochs end or
    until the next step would spend more than ``epsilon`` (when given), and stops there
    (``stopped_early``). The reported ``epsilon`` is Opacus's RDP accounting of
    ``mechanisms`` at ``delta``.

    The clipping norm matters more than it seems: a patient whose exit is the rarer one has
    the larger gradient, so a norm that clips most patients biases the learned split
    toward the common exit (at norm 1, a 1/3 exit came back as 0.28). The default 5 clips
    few patients of a linear hazard model, and Adam with averaged iterates converges in
    the few noisy steps the budget allows."""
    torch.manual_seed(seed)
    data = build_tensors(visits, spec, patients)
    if data.rows == 0:
        raise ConfigError("no stays in the modelled states: nothing to learn from")
    model = HazardModel(spec).to(device)
    tensors = [t.to(device) for t in (data.x, data.y, data.mask, data.allowed)]
    losses: list[float] = []
    if epsilon is None and noise_multiplier is None:
        opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=200,
                                line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = patient_loss(model, *tensors).mean()
            loss.backward()
            return loss
        for epoch in range(max(1, epochs // 10)):
            loss = float(opt.step(closure).detach())
            losses.append(loss)
            if progress is not None:
                progress(epoch + 1, loss, None)
        return TrainResult(model, None, None, None, None, epochs, losses,
                           patients=data.patients, rows=data.rows)

    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(*tensors), batch_size=min(batch_size, data.patients),
                        shuffle=True)
    # Opacus replaces the loader by Poisson sampling at rate 1 / (batches per epoch).
    sample_rate = 1 / len(loader)
    planned = epochs * len(loader)
    if noise_multiplier is None:
        assert epsilon is not None
        noise_multiplier = calibrate_noise(epsilon, delta, sample_rate, planned, prior=prior)

    def mechanisms(steps: int) -> list[Mechanism]:
        return [*prior, Mechanism("DP-SGD", noise_multiplier, sample_rate, steps)]

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    engine = PrivacyEngine(accountant="rdp")
    private, opt, loader = engine.make_private(
        module=model, optimizer=opt, data_loader=loader, noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm)
    # The released model is the average of the iterates of the second half of training
    # (Polyak-Ruppert averaging): post-processing, so free of privacy cost, and it damps
    # the DP noise of the last steps.
    average = [torch.zeros_like(p) for p in model.parameters()]
    averaged = 0
    steps = 0
    stopped = False
    epsilons: list[float] = []
    for epoch in range(epochs):
        total, n = 0.0, 0
        for xb, yb, mb, ab in loader:
            if epsilon is not None and \
                    rdp_epsilon(mechanisms(steps + 1), delta) > epsilon * (1 + 1e-9):
                stopped = True
                break
            steps += 1  # a sampled batch is a step of the mechanism, even an empty one
            if len(xb) == 0:
                continue
            opt.zero_grad()
            loss = patient_loss(private, xb, yb, mb, ab).mean()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(xb)
            n += len(xb)
            if epoch >= epochs // 2:
                with torch.no_grad():
                    for a, p in zip(average, model.parameters(), strict=True):
                        a += p
                averaged += 1
        if n or not stopped:
            losses.append(total / max(n, 1))
            epsilons.append(rdp_epsilon(mechanisms(steps), delta))
            if progress is not None:
                progress(epoch + 1, losses[-1], epsilons[-1])
        if stopped:
            break
    if averaged:
        with torch.no_grad():
            for a, p in zip(average, model.parameters(), strict=True):
                p.copy_(a / averaged)
    used = tuple(mechanisms(steps))
    return TrainResult(model, rdp_epsilon(used, delta), delta, noise_multiplier,
                       max_grad_norm, epochs, losses, "rdp", sample_rate, steps, used,
                       stopped, data.patients, data.rows, epsilons)
