"""Pictures and the HTML report of ``carecourse trial build`` and ``trial compare``.

Figures are drawn with matplotlib's Agg backend: the CONSORT flow of a build, the
Kaplan-Meier curves with their confidence bands, and a "love plot" of the standardized
mean differences against the 0.1 threshold. The report is rendered with Jinja2
(``exporters/templates/trial/``: a master template and one template per section,
autoescaped, StrictUndefined) and embeds the figures, so it is one self-contained file.
"""

from __future__ import annotations

import base64
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2

from modules.errors import OutputError

__all__ = ["consort_figure", "km_figure", "smd_figure", "render_report", "write_atomic"]

_COLOURS = {"synthetic control": "#1f77b4", "real control": "#d62728",
            "real treatment": "#2ca02c", "hybrid control": "#9467bd"}


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write ({exc.strerror}); choose another --out") \
            from None


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    write_atomic(path, buf.getvalue())


def consort_figure(consort: Any, protocol: Any, path: Path) -> None:
    """The CONSORT-style flow of a build: generated, not eligible (by criterion),
    eligible, enrolled, and how follow-up ended."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 6.0))
    ax.set_axis_off()
    src = consort.source + (f"\n{consort.source_rows} rows, {consort.matching_rows} can "
                            "match the criteria" if consort.source_rows is not None else "")
    boxes = [
        (0.5, 0.92, f"Baseline source\n{src}"),
        (0.5, 0.72, f"Generated\nn = {consort.generated}"),
        (0.5, 0.50, f"Eligible\nn = {consort.eligible}"),
        (0.5, 0.30, f"Enrolled: {protocol.arm.name}\nn = {consort.enrolled}"),
        (0.5, 0.08, "Follow-up\n" + "\n".join(f"{k}: {v}" for k, v in
                                             sorted(consort.follow_up.items()))),
    ]
    for x, y, text in boxes:
        ax.text(x, y, text, ha="center", va="center", fontsize=9,
                bbox={"boxstyle": "round", "facecolor": "#f2f2f2", "edgecolor": "#555"})
    for (_, y1, _), (_, y2, _) in zip(boxes, boxes[1:], strict=False):
        ax.annotate("", xy=(0.5, y2 + 0.07), xytext=(0.5, y1 - 0.07),
                    arrowprops={"arrowstyle": "->", "color": "#555"})
    reasons = "\n".join(f"{name}: {n}" for name, n in consort.not_eligible.most_common(8))
    ax.text(0.93, 0.61, f"Not eligible: {consort.generated - consort.eligible}"
            + (f"\n{reasons}" if reasons else ""), ha="right", va="center", fontsize=8,
            bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "#999"})
    ax.set_title(f"{protocol.name}: CONSORT flow", fontsize=10)
    _save(fig, path)


def km_figure(curves: Sequence[Any], path: Path, *, title: str, horizon: float | None = None
              ) -> None:
    """Kaplan-Meier curves with their pointwise 95% confidence bands."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for c in curves:
        colour = _COLOURS.get(c.arm)
        ax.step(c.timeline, c.survival, where="post", label=f"{c.arm} (n={c.n})",
                color=colour)
        ax.fill_between(c.timeline, c.low, c.high, step="post", alpha=0.18, color=colour)
    ax.set_xlabel("days from time zero")
    ax.set_ylabel("event-free probability")
    ax.set_ylim(0, 1.02)
    if horizon is not None:
        ax.axvline(horizon, color="#999", lw=0.8, ls=":")
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    _save(fig, path)


def smd_figure(rows: Sequence[Any], path: Path) -> None:
    """Absolute standardized mean difference of each covariate, with the 0.1 line."""
    plt = _pyplot()
    items = [(r.variable, abs(r.smd)) for r in rows if r.smd is not None
             and not math.isnan(r.smd)]
    fig, ax = plt.subplots(figsize=(6.0, 0.35 * max(3, len(items)) + 1.0))
    names = [n for n, _ in items]
    values = [min(v, 1.0) for _, v in items]
    ax.scatter(values, range(len(items)), color=["#d62728" if v > 0.1 else "#1f77b4"
                                                 for v in values])
    ax.axvline(0.1, color="#999", ls="--", lw=1)
    ax.set_yticks(range(len(items)), names)
    ax.set_xlabel("|standardized mean difference| (synthetic vs real control)")
    ax.set_xlim(0, max(0.25, max(values, default=0.0) * 1.1))
    ax.invert_yaxis()
    ax.grid(alpha=0.3, axis="x")
    _save(fig, path)


def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("exporters", "templates/trial"),
                              autoescape=True, undefined=jinja2.StrictUndefined)


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if math.isnan(x):
            return "-"
        if math.isinf(x):
            return "not reached"
        return f"{x:.{digits}f}"
    return str(x)


def _pval(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def render_report(context: dict[str, Any], images: dict[str, Path], path: Path) -> None:
    """Render the compare report into ``path`` with the PNG ``images`` embedded."""
    env = _environment()
    env.filters["fmt"] = _fmt
    env.filters["pval"] = _pval
    embedded = {k: "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode()
                for k, p in images.items()}
    html = env.get_template("report.html.j2").render(images=embedded, **context)
    write_atomic(path, html.encode("utf-8"))
