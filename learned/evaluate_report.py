"""The pictures and the HTML page of ``carecourse evaluate``, and writing them out.

The page is rendered with Jinja2 (autoescape, StrictUndefined) from one master template
and one template per section in ``learned/templates/evaluate/``; the pictures are
matplotlib PNGs (Agg backend), embedded in the page and written beside it in
``figures/``. :func:`write_report` writes the folder atomically.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modules.errors import OutputError

if TYPE_CHECKING:
    from learned.evaluate import Metrics, Report
    from learned.evaluate_metrics import KMComparison

__all__ = ["figures", "km_figure", "render_html", "write_report", "readings", "REPORT_FILES"]

#: The files of a report folder (besides figures/).
REPORT_FILES = ("report.html", "metrics.json")

REAL, SYNTHETIC, HOLDOUT = "#1f77b4", "#d62728", "#7f7f7f"
_MAX_MARGINALS = 40


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    _plt().close(fig)
    return buf.getvalue()


def figures(report: Report) -> dict[str, bytes]:
    """Every picture of the report as PNG bytes, by file name (without ``.png``)."""
    out: dict[str, bytes] = {}
    d = report.details
    if d.marginals:
        out["marginals"] = _marginals(report)
    for key, title in (("cramers_v", "Cramér's V"), ("correlation", "Pearson correlation")):
        if key in d.associations:
            out[key] = _heatmaps(*d.associations[key], title=title,
                                 signed=key == "correlation")
    if d.km:
        out["km"] = km_figure(d.km)
    if d.roc:
        out["utility_roc"] = _roc({"train on synthetic, test on real": d.roc.get("tstr"),
                                   "train on real, test on real": d.roc.get("trtr")},
                                  "Outcome classifier on real test data")
    if len(d.dcr_synthetic):
        out["privacy"] = _privacy(report)
    return out


def _grid(n: int, cols: int, size: tuple[float, float]) -> tuple[Any, list[Any]]:
    plt = _plt()
    rows = max(1, math.ceil(n / cols))
    cols = min(cols, max(n, 1))
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows),
                             squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _marginals(report: Report) -> bytes:
    items = list(report.details.marginals.items())[:_MAX_MARGINALS]
    tvds = {m.covariate: m.tvd for m in report.metrics.fidelity.marginals}
    fig, axes = _grid(len(items), 4, (3.6, 2.6))
    for ax, (name, (labels, real, syn)) in zip(axes, items, strict=True):
        used = (real > 0) | (syn > 0)
        x = np.arange(int(used.sum()))
        ax.bar(x - 0.2, real[used], 0.4, color=REAL, label="real")
        ax.bar(x + 0.2, syn[used], 0.4, color=SYNTHETIC, label="synthetic")
        shown = [lab for lab, u in zip(labels, used, strict=True) if u]
        ax.set_xticks(x, shown, rotation=60 if len(shown) > 3 else 0, ha="right"
                      if len(shown) > 3 else "center", fontsize=7)
        ax.set_title(f"{name}  (TVD {tvds.get(name, math.nan):.3f})", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    if axes:
        axes[0].legend(fontsize=7)
    fig.suptitle("Share of patients per bin, real and synthetic", fontsize=11)
    fig.tight_layout()
    return _png(fig)


def _heatmaps(columns: tuple[str, ...], real: np.ndarray, syn: np.ndarray, *, title: str,
              signed: bool) -> bytes:
    plt = _plt()
    k = len(columns)
    side = max(3.2, 0.32 * k + 1.5)
    fig, axes = plt.subplots(1, 3, figsize=(3 * side, side))
    lo = -1.0 if signed else 0.0
    for ax, m, name, vmin, cmap in ((axes[0], real, "real", lo, "RdBu_r" if signed
                                     else "viridis"),
                                    (axes[1], syn, "synthetic", lo, "RdBu_r" if signed
                                     else "viridis"),
                                    (axes[2], np.abs(real - syn), "|real - synthetic|", 0.0,
                                     "magma")):
        im = ax.imshow(m, vmin=vmin, vmax=1.0, cmap=cmap)
        if k <= 12:  # few enough cells to print their values
            for (i, j), v in np.ndenumerate(m):
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if abs(v) < 0.6 else "black")
        ax.set_xticks(range(k), columns, rotation=90, fontsize=7)
        ax.set_yticks(range(k), columns, fontsize=7)
        ax.set_title(name, fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _png(fig)


def km_figure(comparisons: Mapping[str, KMComparison],
              title: str = "Kaplan-Meier curves of the time to each state (95% bands)"
              ) -> bytes:
    """A PNG with one panel per comparison (name -> :class:`KMComparison`): both curves
    as steps with their confidence bands, the largest gap and the log-rank p-value."""
    items = list(comparisons.items())
    fig, axes = _grid(len(items), 3, (4.2, 3.2))
    for ax, (state, cmp) in zip(axes, items, strict=True):
        for curve, color in ((cmp.a, REAL), (cmp.b, SYNTHETIC)):
            ax.step(curve.times, curve.survival, where="post", color=color,
                    label=f"{curve.label} (n={curve.patients}, events={curve.events})")
            ax.fill_between(curve.times, curve.lower, curve.upper, step="post", color=color,
                            alpha=0.2, linewidth=0)
        ax.set_xlim(0, cmp.horizon)
        ax.set_xlabel("days since time 0", fontsize=8)
        ax.set_ylabel(f"not yet in {state}", fontsize=8)
        ax.set_title(f"{state}: gap {cmp.gap:.3f}, log-rank p {cmp.logrank_p:.3g}",
                     fontsize=9)
        ax.legend(fontsize=7, loc="lower left")
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _png(fig)


def _roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray] | None], title: str,
         ax: Any = None) -> bytes:
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _plt()
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.5, 4.2))
    for (name, data), color in zip(curves.items(), (SYNTHETIC, REAL, HOLDOUT), strict=False):
        if data is None:
            continue
        y, s = data
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, color=color, label=f"{name} (AUC {roc_auc_score(y, s):.3f})")
    ax.plot([0, 1], [0, 1], color="#bbbbbb", linestyle="--", label="chance")
    ax.set_xlabel("false-positive rate", fontsize=8)
    ax.set_ylabel("true-positive rate", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig) if fig is not None else b""


def _privacy(report: Report) -> bytes:
    plt = _plt()
    d = report.details
    fig, axes = plt.subplots(1, 2 if d.mia else 1, figsize=(10 if d.mia else 5.5, 4.2),
                             squeeze=False)
    ax = axes[0][0]
    top = max(float(np.max(d.dcr_synthetic)),
              float(np.max(d.dcr_holdout)) if d.dcr_holdout is not None else 0.0, 1e-6)
    bins = np.linspace(0, top, 40)
    ax.hist(d.dcr_synthetic, bins=bins, density=True, alpha=0.6, color=SYNTHETIC,
            label="synthetic to training")
    if d.dcr_holdout is not None:
        ax.hist(d.dcr_holdout, bins=bins, density=True, alpha=0.6, color=HOLDOUT,
                label="holdout to training")
    ax.set_xlabel("distance to the closest training record (Gower)", fontsize=8)
    ax.set_ylabel("density", fontsize=8)
    ax.set_title("Distance to closest record", fontsize=10)
    ax.legend(fontsize=7)
    if d.mia:
        _roc({"distance attack": d.mia}, "Membership inference (members: training)",
             ax=axes[0][1])
    fig.tight_layout()
    return _png(fig)


# --- words -------------------------------------------------------------------------------------

def _f(v: float | None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def readings(m: Metrics) -> dict[str, list[str]]:
    """Plain-words readings of the headline metrics, per section."""
    f, u, p = m.fidelity, m.utility, m.privacy
    fid: list[str] = []
    if f.tvd1_mean is not None:
        line = (f"On average a covariate's binned distribution differs by a total variation "
                f"of {_f(f.tvd1_mean)} (pairs of covariates: {_f(f.tvd2_mean)})")
        if f.tvd1_mean_reference is not None:
            near = f.tvd1_mean <= 1.5 * f.tvd1_mean_reference
            line += (f"; two real samples of these sizes (training and holdout) differ by "
                     f"{_f(f.tvd1_mean_reference)} ({_f(f.tvd2_mean_reference)} for pairs), so "
                     + ("the synthetic marginals are about as close as real data gets."
                        if near else "the synthetic marginals are further off than "
                        "sampling alone explains."))
        else:
            line += "."
        fid.append(line)
    worst = sorted(f.marginals, key=lambda x: -x.tvd)[:3]
    if worst and worst[0].tvd > 0:
        fid.append("Furthest off: " + ", ".join(f"{x.covariate} (TVD {_f(x.tvd)})"
                                               for x in worst) + ".")
    if f.note:
        fid.append(_sentence(f.note))
    for t in f.time_to_state:
        verdict = ("the curves differ (log-rank p < 0.05)" if t.logrank_p < 0.05
                   else "the log-rank test finds no difference")
        fid.append(f"Time to {t.state}: {t.real_events} real and {t.synthetic_events} "
                   f"synthetic events before day {_day(t.horizon)}; the curves are at most "
                   f"{_f(t.gap)} apart (day {_day(t.gap_time)}); {verdict}.")
    uti: list[str] = []
    if u.tstr is not None:
        uti.append(f"A {u.model} classifier of {_outcome(u)} trained on the synthetic data "
                   f"scores AUC {_f(u.tstr.value)} (95% CI {_f(u.tstr.low)} to "
                   f"{_f(u.tstr.high)}) on {u.test_patients} real patients.")
    if u.trtr is not None:
        how = "the training split" if u.reference == "holdout" else "5-fold cross-validation"
        uti.append(f"The same classifier trained on real data ({how}) scores "
                   f"{_f(u.trtr.value)} ({_f(u.trtr.low)} to {_f(u.trtr.high)}): the reference "
                   "the synthetic data can approach.")
    if u.note:
        uti.append(_sentence(u.note))
    pri: list[str] = []
    if p.exact_copies_synthetic is not None:
        pri.append(f"{100 * p.exact_copies_synthetic:.1f}% of synthetic records are exact "
                   "copies of a training record"
                   + (f" (holdout: {100 * p.exact_copies_holdout:.1f}%)."
                      if p.exact_copies_holdout is not None else "."))
    if p.dcr_closer is not None:
        c = p.dcr_closer
        pri.append(f"The median synthetic record is {_f(p.dcr_synthetic_median)} from its "
                   f"closest training record, a new real patient {_f(p.dcr_holdout_median)}; "
                   f"a synthetic record is the closer of the two with probability "
                   f"{_f(c.value)} (95% CI {_f(c.low)} to {_f(c.high)}): "
                   + ("synthetic records sit closer to the training data than new patients "
                      "do: a sign of copying, or of a generator that piles its records onto "
                      "the commonest real ones (the exact copies and the attack tell which)."
                      if c.low > 0.5 else
                      "synthetic records are no closer to the training data than new "
                      "patients are."))
    if p.mia_auc is not None:
        a = p.mia_auc
        chance = a.low <= 0.5 <= a.high
        pri.append(f"The membership attack reaches AUC {_f(a.value)} (95% CI {_f(a.low)} to "
                   f"{_f(a.high)}), advantage {_f(p.mia_advantage)}: "
                   + ("no better than guessing." if chance else
                      "it tells training patients from others better than chance."))
    if p.note:
        pri.append(_sentence(p.note))
    return {"fidelity": fid, "utility": uti, "privacy": pri}


def _sentence(note: str) -> str:
    return note[0].upper() + note[1:] + "."


def _outcome(u: Any) -> str:
    if u.outcome_kind == "state":
        return (f"entering {u.outcome} by day {_day(u.horizon)}" if u.horizon is not None
                else f"entering {u.outcome}")
    return f"{u.outcome}"


def _day(v: float | None) -> str:
    """Days as people read them: whole days from 10 on."""
    if v is None:
        return "not reached"
    return f"{v:.0f}" if abs(v) >= 10 else f"{v:.3g}"


# --- HTML ------------------------------------------------------------------------------------

def _environment() -> Any:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("learned", "templates/evaluate"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True)
    env.filters["num"] = _f
    env.filters["pct"] = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"
    env.filters["days"] = _day
    return env


def render_html(report: Report, pictures: Mapping[str, bytes]) -> str:
    """The report as one self-contained HTML page (pictures embedded)."""
    images = {k: base64.b64encode(v).decode("ascii") for k, v in pictures.items()}
    return _environment().get_template("report.html.j2").render(
        m=report.metrics, inputs=report.inputs, images=images,
        readings=readings(report.metrics))


def write_report(report: Report, out: Path) -> Path:
    """Write ``report.html``, ``metrics.json`` and ``figures/NAME.png`` into ``out``: into a
    temporary folder beside it first, renamed into place when complete. An existing
    report folder is replaced; a folder with anything else in it is refused."""
    if out.exists():
        if not out.is_dir():
            raise OutputError(f"{out}: exists and is not a folder; choose another --out")
        extra = [p.name for p in out.iterdir() if p.name not in (*REPORT_FILES, "figures")]
        if extra:
            raise OutputError(f"{out}: the folder holds other files ({', '.join(sorted(extra)[:5])}"
                              "); give an empty or new folder, or an earlier report's, as --out")
    pictures = report.figures
    page = report.html()
    metrics = json.dumps(report.metrics.to_dict(), indent=2, allow_nan=False) + "\n"
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
        # mkdtemp makes a private folder; the report gets the permissions of any new one.
        mask = os.umask(0)
        os.umask(mask)
        work.chmod(0o777 & ~mask)
    except OSError as exc:
        raise OutputError(f"{out}: cannot write here ({exc.strerror}); choose another --out") \
            from None
    try:
        (work / "report.html").write_text(page, encoding="utf-8")
        (work / "metrics.json").write_text(metrics, encoding="utf-8")
        (work / "figures").mkdir()
        for name, data in pictures.items():
            (work / "figures" / f"{name}.png").write_bytes(data)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=parent))
            os.replace(out, old / "report")
            os.replace(work, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(work, out)
    except OSError as exc:
        raise OutputError(f"{out}: cannot write the report ({exc.strerror}); choose another "
                          "--out") from None
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return out
