"""Draw a module's state graph as SVG or PNG (matplotlib; no graphviz needed).

States are laid out in layers by their distance from ``Initial`` (unreachable ones last),
ordered within a layer by the mean position of their parents to reduce crossings, and
drawn as boxes coloured by the kind of state; transitions are arrows with their labels.
"""

from __future__ import annotations

import os
import tempfile
import textwrap
from collections import deque
from pathlib import Path

import networkx as nx

__all__ = ["draw_module", "layered_layout"]

_FAMILY = {
    "Initial": "#d9f2d9", "Terminal": "#d9d9d9", "Death": "#b0b0b0", "Missing": "#ff9999",
    "Encounter": "#cfe2ff", "EncounterEnd": "#cfe2ff",
    "ConditionOnset": "#ffe0b3", "ConditionEnd": "#ffe0b3", "AllergyOnset": "#ffe0b3",
    "AllergyEnd": "#ffe0b3", "Symptom": "#ffe0b3",
    "MedicationOrder": "#e6d9ff", "MedicationEnd": "#e6d9ff", "CarePlanStart": "#e6d9ff",
    "CarePlanEnd": "#e6d9ff", "Vaccine": "#e6d9ff", "Device": "#e6d9ff", "DeviceEnd": "#e6d9ff",
    "SupplyList": "#e6d9ff", "Procedure": "#f2d9e6", "ImagingStudy": "#f2d9e6",
    "Observation": "#d9f0f2", "MultiObservation": "#d9f0f2", "DiagnosticReport": "#d9f0f2",
    "VitalSign": "#d9f0f2",
    "Delay": "#fff7c2", "Guard": "#fff7c2", "CallSubmodule": "#e0e0ff",
}
_SUFFIXES = (".svg", ".png")


def layered_layout(G: nx.DiGraph, root: str = "Initial") -> dict[str, tuple[float, float]]:
    """Positions (x, y) for every node: y = -layer, where the layer is the BFS distance
    from ``root`` (unreachable nodes share one last layer); x orders each layer by the mean
    x of its parents in the layer above (two sweeps), one unit apart, centred.

    >>> g = nx.DiGraph([("Initial", "A"), ("A", "B")])
    >>> layered_layout(g)["B"][1]
    -2.0
    """
    depth: dict[str, int] = {}
    if root in G:
        depth[root] = 0
        queue = deque([root])
        while queue:
            n = queue.popleft()
            for m in G.successors(n):
                if m not in depth:
                    depth[m] = depth[n] + 1
                    queue.append(m)
    last = (max(depth.values()) + 1) if depth else 0
    for n in G.nodes:
        depth.setdefault(n, last)
    layers: dict[int, list[str]] = {}
    for n in G.nodes:  # node order keeps the result deterministic
        layers.setdefault(depth[n], []).append(n)
    x: dict[str, float] = {}
    for d in sorted(layers):
        for i, n in enumerate(layers[d]):
            x[n] = float(i)
    for _ in range(2):
        for d in sorted(layers):
            if d == 0:
                continue

            def key(n: str, d: int = d) -> float:
                parents = [p for p in G.predecessors(n) if depth[p] < d]
                return sum(x[p] for p in parents) / len(parents) if parents else x[n]
            layers[d].sort(key=key)
            for i, n in enumerate(layers[d]):
                x[n] = float(i)
    pos = {}
    for d, nodes in layers.items():
        offset = (len(nodes) - 1) / 2.0
        for i, n in enumerate(nodes):
            pos[n] = (float(i) - offset, -float(d))
    return pos


def _node_text(name: str, data: dict) -> str:
    stype = data.get("type", "?")
    spec = data.get("spec") or {}
    detail = stype
    if stype == "CallSubmodule" and spec.get("submodule"):
        detail = f"→ {spec['submodule']}"
    elif stype == "Delay":
        if "exact" in spec:
            detail = f"Delay {spec['exact'].get('quantity')} {spec['exact'].get('unit')}"
        elif "range" in spec:
            r = spec["range"]
            detail = f"Delay {r.get('low')}-{r.get('high')} {r.get('unit')}"
        elif "distribution" in spec:
            detail = f"Delay {spec['distribution'].get('kind', '').lower()} {spec.get('unit', '')}"
    label = "\n".join(textwrap.wrap(name.replace("_", " "), 18)[:3])
    return f"{label}\n({detail})"


def draw_module(G: nx.DiGraph, out: str | os.PathLike) -> Path:
    """Draw ``G`` to ``out`` (.svg or .png, by suffix) and return the path. The file is
    written to a temporary name and renamed, so a failed drawing leaves nothing."""
    path = Path(out)
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise ValueError(f"cannot draw to {path.name!r}: unknown suffix {suffix or '(none)'}; "
                         f"use one of {', '.join(_SUFFIXES)}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch

    pos = layered_layout(G)
    width = max((sum(1 for p in pos.values() if p[1] == y) for y in {p[1] for p in pos.values()}),
                default=1)
    height = len({p[1] for p in pos.values()}) or 1
    dpi = 100
    fig_w = min(max(6.0, 2.3 * width), 120.0)
    fig_h = min(max(4.0, 1.25 * height + 1), 120.0)
    with matplotlib.rc_context({"svg.fonttype": "none", "font.size": 7}):
        fig, ax = plt.subplots(figsize=(fig_w, fig_h), dpi=dpi)
        try:
            ax.set_axis_off()
            ax.set_title(str(G.graph.get("name") or ""), fontsize=12)
            xs = [p[0] for p in pos.values()] or [0.0]
            ys = [p[1] for p in pos.values()] or [0.0]
            ax.set_xlim(min(xs) - 0.8, max(xs) + 0.8)
            ax.set_ylim(min(ys) - 0.7, max(ys) + 0.7)
            for u, v, data in G.edges(data=True):
                (x1, y1), (x2, y2) = pos[u], pos[v]
                back = y2 >= y1  # a loop or an edge within a layer: curve it
                arrow = FancyArrowPatch(
                    (x1, y1), (x2, y2), arrowstyle="-|>", mutation_scale=9, lw=0.7,
                    color="#555555", shrinkA=14, shrinkB=14,
                    connectionstyle="arc3,rad=0.35" if back else "arc3,rad=0.0")
                ax.add_patch(arrow)
                label = str(data.get("label") or "")
                if label:
                    short = "\n".join(textwrap.wrap(label, 24)[:2])
                    ax.text((x1 + x2) / 2, (y1 + y2) / 2, short, fontsize=5.5, color="#333366",
                            ha="center", va="center",
                            bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none",
                                  "alpha": 0.8})
            for n, data in G.nodes(data=True):
                x, y = pos[n]
                ax.text(x, y, _node_text(n, data), ha="center", va="center", fontsize=6.5,
                        bbox={"boxstyle": "round,pad=0.3",
                              "fc": _FAMILY.get(data.get("type", ""), "#ffffff"),
                              "ec": "#444444", "lw": 0.6})
            fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=suffix,
                                       dir=path.parent if str(path.parent) else ".")
            os.close(fd)
            try:
                fig.savefig(tmp, format=suffix[1:], bbox_inches="tight")
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        finally:
            plt.close(fig)
    return path
