"""The routes one image took through the routing supernet: a JSON file that forces them again
(``MODEL.GATE.ROUTES_FILE``, the original's issue #40) and a picture of them.

The gates of an image come from the eval outputs of a model whose ``backbone.record_gates`` is
True: ``output["gates"]`` maps a cell name (``"init"``, ``"<layer>.<cell>"``) to its gate values in
gate order keep, up (if the cell has it), down (if it has it); a cell that did not run has zeros.

    model.backbone.record_gates = True
    gates = model([inp])[0]["gates"]
    save_routes("routes.json", gates)             # then MODEL.GATE.ROUTES_FILE routes.json
    Image.fromarray(draw_routes(gates)).save("routes.png")

Which routes a cell has follows from its name and gate count alone (the route rules: a cell at
scale 0 has no up route, the last scale no down route, the last layer only keep), so the gates
need no model to be read.
"""
import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from dl_lib.utils.file_io import atomic_write

__all__ = ["route_names", "routes_from_gates", "save_routes", "RouteTrace", "trace_routes",
           "draw_routes"]

SCALE_STEP = {"keep": 0, "up": -1, "down": 1}  # scale of the receiver minus that of the sender
DEFAULT_THRESHOLD = 1e-4  # MODEL.GATE.SKIP_THRESHOLD's default


def _parse(name: str) -> Tuple[int, int]:
    """``"init"`` -> (-1, 0); ``"3.1"`` -> (3, 1)."""
    if name == "init":
        return -1, 0
    try:
        layer, cell = name.split(".")
        return int(layer), int(cell)
    except ValueError:
        raise ValueError(f"routes: cell name {name!r} is neither 'init' nor '<layer>.<cell>'") from None


def route_names(name: str, gate_num: int) -> List[str]:
    """Route of each gate of cell ``name`` with ``gate_num`` gates, in gate order.

    >>> route_names("0.0", 2), route_names("4.2", 3), route_names("5.3", 2)
    (['keep', 'down'], ['keep', 'up', 'down'], ['keep', 'up'])
    """
    _, scale = _parse(name)
    if gate_num == 1:
        return ["keep"]
    if gate_num == 3:
        return ["keep", "up", "down"]
    if gate_num == 2:  # scale 0 (and the init cell) cannot go up; a cell at the last scale cannot go down
        return ["keep", "down"] if scale == 0 else ["keep", "up"]
    raise ValueError(f"routes: cell {name!r} has {gate_num} gates; a cell has 1 to 3 (keep, up, down)")


def routes_from_gates(gates: Dict[str, Sequence[float]]) -> Dict[str, Dict[str, float]]:
    """``{"3.1": [g_keep, g_up, g_down]}`` -> ``{"3.1": {"keep": g_keep, "up": g_up, "down": g_down}}``."""
    out = {}
    for name, values in gates.items():
        values = [float(v) for v in values]
        out[name] = dict(zip(route_names(name, len(values)), values))
    return out


def save_routes(path: str, gates: Dict[str, Sequence[float]], **info) -> Dict[str, Dict[str, float]]:
    """Write ``{"routes": {cell: {route: gate}}, **info}`` to ``path`` (JSON, atomically): the file
    ``MODEL.GATE.ROUTES_FILE`` reads, forcing every cell's gates to the values this image had, so
    the model takes exactly its routes again for any input. ``info``: extra JSON-able entries
    (image id, GFLOPs, ...), ignored when loading. Returns the routes."""
    routes = routes_from_gates(gates)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with atomic_write(path) as f:
        # floats are written with repr precision: forcing them reproduces the gates bit for bit
        json.dump({**info, "routes": routes}, f, indent=1)
    return routes


@dataclass
class RouteTrace:
    """What ran for one image, reconstructed from its gates.

    ``cells``: name -> ``"runs"`` (its operation ran), ``"passes"`` (reached, but all its gates
    closed: its input went on unchanged as its keep route), ``"idle"`` (no open route reached it:
    not computed, gate network neither). ``edges``: ``(sender, receiver, route, gate, kind)`` for
    every route of the supernet, kind ``"open"`` (computed, times ``gate``), ``"identity"`` (a
    passing cell's input), ``"closed"`` (gate closed or sender not running). Receivers of the last
    layer are ``"head.<scale>"``. ``layers``: layer count; ``scales``: scale count.
    """
    cells: Dict[str, str] = field(default_factory=dict)
    edges: List[Tuple[str, str, str, float, str]] = field(default_factory=list)
    layers: int = 0
    scales: int = 0

    def count(self, kind: str) -> int:
        return sum(1 for e in self.edges if e[4] == kind)


def trace_routes(gates: Dict[str, Sequence[float]], threshold: float = DEFAULT_THRESHOLD) -> RouteTrace:
    """Follow an image's gates from the init cell (always reached) layer by layer, with the
    model's skip rules: a route is open where its sender runs and its gate exceeds
    ``threshold``; a cell runs where it is reached and its gates sum above ``threshold``."""
    routes = routes_from_gates(gates)
    if "init" not in routes:
        raise ValueError("routes: no 'init' cell in the gates; give every cell's gates "
                         "(output['gates'] of a model with backbone.record_gates = True)")
    by_layer: Dict[int, List[Tuple[int, str]]] = {}
    for name in routes:
        layer, scale = _parse(name)
        by_layer.setdefault(layer, []).append((scale, name))
    layers = max(by_layer)  # index of the last layer
    trace = RouteTrace(layers=layers + 1, scales=max(s for row in by_layer.values() for s, _ in row) + 1)
    reached = {"init"}
    for layer in range(-1, layers + 1):
        for scale, name in sorted(by_layer.get(layer, [])):
            g = routes[name]
            if name not in reached:
                state = "idle"
            else:
                state = "runs" if sum(g.values()) > threshold else "passes"
            trace.cells[name] = state
            for route, value in g.items():
                dest_scale = scale + SCALE_STEP[route]
                dest = f"head.{dest_scale}" if layer == layers else f"{layer + 1}.{dest_scale}"
                if state == "runs" and value > threshold:
                    kind = "open"
                elif state == "passes" and route == "keep":
                    kind = "identity"
                else:
                    kind = "closed"
                if kind != "closed":
                    reached.add(dest)
                trace.edges.append((name, dest, route, value, kind))
    return trace


def _position(name: str, layers: int) -> Tuple[float, float]:
    """(x, y) of a node: x = column (init 0, layer l at l+1, the head after the last layer),
    y = scale (stride 4 on top)."""
    if name.startswith("head."):
        return layers + 1, -int(name.split(".")[1])
    layer, scale = _parse(name)
    return layer + 1, -scale


def draw_routes(gates: Dict[str, Sequence[float]], threshold: float = DEFAULT_THRESHOLD,
                title: str = "", width: int = 768, height: Optional[int] = None) -> np.ndarray:
    """Picture of an image's routes: cells as nodes on a layer x stride grid (stride 4 on top),
    open routes as lines whose width follows the gate value, a passing cell's identity route
    dashed, closed routes faint; running cells filled, passing cells hollow, idle cells as grey
    crosses. Returns ``height x width x 3`` uint8 (height default ``width / 4``, at least 200)."""
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    trace = trace_routes(gates, threshold)
    height = int(height or max(200, width // 4))
    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    # margins in pixels: title on top, tick labels, the layer label and the legend below
    bottom, top = 58 / height, 26 / height
    ax = fig.add_axes([0.07, bottom, 0.91, 1 - bottom - top])
    colors = {"open": "#1f5fbf", "identity": "#7a7a7a", "closed": "#d9d9d9"}
    for src, dst, _route, value, kind in trace.edges:
        (x0, y0), (x1, y1) = _position(src, trace.layers), _position(dst, trace.layers)
        if kind == "open":
            ax.plot([x0, x1], [y0, y1], color=colors[kind], lw=0.6 + 3.4 * min(value, 1.0),
                    solid_capstyle="round", zorder=2)
        elif kind == "identity":
            ax.plot([x0, x1], [y0, y1], color=colors[kind], lw=1.2, ls="--", zorder=2)
        else:
            ax.plot([x0, x1], [y0, y1], color=colors[kind], lw=0.5, zorder=1)
    style = {"runs": dict(marker="o", s=42, c="#1f5fbf", edgecolors="black", linewidths=0.6),
             "passes": dict(marker="o", s=42, c="white", edgecolors="#1f5fbf", linewidths=1.4),
             "idle": dict(marker="x", s=26, c="#a0a0a0", linewidths=1.0)}
    for state, kw in style.items():
        pts = [_position(n, trace.layers) for n, s in trace.cells.items() if s == state]
        if pts:
            ax.scatter(*zip(*pts), zorder=3, label={"runs": "runs", "passes": "passes input on",
                                                    "idle": "idle (not computed)"}[state], **kw)
    heads = sorted({e[1] for e in trace.edges if e[1].startswith("head.")})
    ax.scatter(*zip(*[_position(h, trace.layers) for h in heads]), marker="s", s=36, c="#333333",
               zorder=3, label="to the decoder")
    ax.set_xticks(range(trace.layers + 2))
    ax.set_xticklabels(["init"] + [str(l) for l in range(trace.layers)] + ["head"], fontsize=7)
    ax.set_yticks([-s for s in range(trace.scales)])
    ax.set_yticklabels([f"1/{4 * 2 ** s}" for s in range(trace.scales)], fontsize=7)
    ax.set_xlabel("layer", fontsize=7, labelpad=1)
    ax.set_xlim(-0.4, trace.layers + 1.4)
    ax.set_ylim(-(trace.scales - 1) - 0.35, 0.35)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.legend(loc="lower center", bbox_to_anchor=(0.5, 0.0), ncol=4, fontsize=7, frameon=False)
    n_routes = len(trace.edges)
    head = (f"{trace.count('open')}/{n_routes} routes open (line width = gate), "
            f"{sum(s == 'runs' for s in trace.cells.values())}/{len(trace.cells)} cells run")
    fig.suptitle(f"{title}  {head}" if title else head, fontsize=8, y=0.98)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
