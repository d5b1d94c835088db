"""The ORIGINAL DynamicRouting forward (eval mode, one image), restated as plain functions on the
original state-dict names, from the reference doc (sections 1.2-1.5, 2, 4.2, 5, Appendix B).

It shares no code with ``dl_lib.modeling.dynamic_routing``: it reads the weights by the original's
key names and follows the original's rules, so a test comparing the two checks the converter and
our model against the published behaviour.

- Input: BGR 0-255 minus the BGR mean [103.530, 116.280, 123.675], std 1.
- Stem: stem_1 3x3 s2 (no padding) + BN + ReLU; stem_2 dw3x3 + 1x1 BN ReLU; stem_3 dw3x3 s2 +
  1x1 BN ReLU.
- Cell with input X: gates ``relu(tanh(conv(pool(relu(bn(conv1x1(X)))))))`` (order keep, up,
  down); if the gates sum below 1e-4 (or X is absent: all its predecessors were skipped) the cell
  is skipped and returns ``keep = X``, ``up = down = absent``. Otherwise ``H = SepConv(X) + X``,
  ``keep = g_keep ReLU(H)``, ``up = g_up up2(ReLU(BN(conv1x1(ReLU H))))``, ``down = g_down
  ReLU(BN(conv1x1 s2(ReLU H)))``. Every route of a cell that runs is computed, closed ones as
  zeros (the original's dense computation; such a zero tensor is NOT absent).
- Cell inputs (section 1.2): down of cell c-1 (c > 0), keep of cell c (except the newest scale in
  layers 0-2), up of cell c+1 (layers > 2: c < n-1; layers <= 2: c < n-2); a plain sum.
- Decoder: ``p = dec3(f3)``, ``p = dec_i(up2(p) + f_i)`` for i = 2, 1, 0, 3x3 predictor with
  bias, bilinear x4 to the input size.

``absent_when_closed=True`` instead treats a closed route (gate <= 1e-4) as absent, the rule of
our model's real skipping (a cell whose input routes are all closed is not computed); the two
differ only for such a cell (see ``Record.zero_input_cells``).
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

BGR_MEAN = (103.530, 116.280, 123.675)
SKIP = 1e-4  # the original's hard-coded threshold
EPS = 1e-5   # nn.SyncBatchNorm's default


@dataclass
class Record:
    """What happened in one forward: per cell ("init" or "<l>.<c>") the gates (None when the cell
    had no input), the skipped cells, and the cells the original ran on an all-zero input made
    only of closed routes of cells that ran (where our real skipping differs)."""
    gates: Dict[str, Optional[torch.Tensor]] = field(default_factory=dict)
    pre_activation: Dict[str, torch.Tensor] = field(default_factory=dict)
    skipped: List[str] = field(default_factory=list)
    no_input: List[str] = field(default_factory=list)
    zero_input_cells: List[str] = field(default_factory=list)


class _Weights:
    def __init__(self, sd: Dict[str, torch.Tensor]):
        self.sd = sd

    def has(self, prefix: str) -> bool:
        return f"{prefix}.weight" in self.sd

    def conv(self, prefix: str, x: torch.Tensor, *, stride: int = 1, padding: int = 0,
             depthwise: bool = False, relu: bool = False) -> torch.Tensor:
        """conv (+ norm if ``<prefix>.norm.*`` exists) (+ ReLU)."""
        w = self.sd[f"{prefix}.weight"]
        y = F.conv2d(x, w, self.sd.get(f"{prefix}.bias"), stride=stride, padding=padding,
                     groups=w.shape[0] if depthwise else 1)
        if f"{prefix}.norm.weight" in self.sd:
            n = f"{prefix}.norm"
            y = F.batch_norm(y, self.sd[f"{n}.running_mean"], self.sd[f"{n}.running_var"],
                             self.sd[f"{n}.weight"], self.sd[f"{n}.bias"], training=False, eps=EPS)
        return F.relu(y) if relu else y


@dataclass
class _Out:
    up: Optional[torch.Tensor]
    keep: Optional[torch.Tensor]
    down: Optional[torch.Tensor]
    # per route: whether it is a closed route of a cell that ran (a zero tensor in the original)
    closed: Dict[str, bool] = field(default_factory=dict)


def _add(a: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return b if a is None else a if b is None else a + b


def _cell(W: _Weights, prefix: str, x: Optional[torch.Tensor], allow_up: bool, allow_down: bool,
          small_gate: bool, name: str, rec: Record, absent_when_closed: bool) -> _Out:
    if x is None:  # the original's float 0.0: every predecessor was skipped
        rec.gates[name] = None
        rec.no_input.append(name)
        return _Out(None, None, None)
    gate_num = 1 + allow_up + allow_down
    if W.has(f"{prefix}.gate_conv_beta.0"):
        gx = F.interpolate(x, scale_factor=0.25, mode="bilinear", align_corners=False) if small_gate else x
        gx = W.conv(f"{prefix}.gate_conv_beta.0", gx, relu=True)
        gx = gx.mean(dim=(2, 3), keepdim=True)  # AdaptiveAvgPool2d(1)
        pre = W.conv(f"{prefix}.gate_conv_beta.2", gx)
        rec.pre_activation[name] = pre.flatten()
        g = F.relu(torch.tanh(pre))
    else:  # no-gate network: the gate_weights_beta buffer of ones
        g = W.sd.get(f"{prefix}.gate_weights_beta", torch.ones(1, gate_num, 1, 1)).to(x.dtype)
    assert g.shape[1] == gate_num, (prefix, g.shape, gate_num)
    rec.gates[name] = g.flatten()
    if g.sum() < SKIP:  # inference: the whole cell is skipped
        rec.skipped.append(name)
        return _Out(None, x, None)
    op = f"{prefix}.cell_ops._ops.0.op"
    h = W.conv(f"{op}.0", x, padding=1, depthwise=True)
    h = W.conv(f"{op}.1", h, relu=True)
    h = W.conv(f"{op}.2", h, padding=1, depthwise=True)
    h = W.conv(f"{op}.3", h)
    h = h + x  # skip_connect
    r = F.relu(h)
    g_keep, g_up, g_down = g[:, 0:1], g[:, 1:2], g[:, -1:]
    out = _Out(None, g_keep * r, None, closed={"keep": bool(g_keep <= SKIP)})
    if allow_up:
        u = W.conv(f"{prefix}.res_up.1", r, relu=True)
        out.up = g_up * F.interpolate(u, scale_factor=2, mode="bilinear", align_corners=False)
        out.closed["up"] = bool(g_up <= SKIP)
    if allow_down:
        out.down = g_down * W.conv(f"{prefix}.res_down.1", r, stride=2, relu=True)
        out.closed["down"] = bool(g_down <= SKIP)
    if absent_when_closed:
        for route in ("up", "keep", "down"):
            if out.closed.get(route):
                setattr(out, route, None)
    return out


CellFlags = Tuple[bool, bool, Tuple[bool, bool, bool]]


def layout(layer_num: int, cell_num_list: Sequence[int]) -> List[List[CellFlags]]:
    """Per layer, per cell: (allow_up, allow_down, (dim_up, dim_keep, dim_down)), section 1.2."""
    rows = []
    for l in range(layer_num):
        n = cell_num_list[l]
        row = []
        for c in range(n):
            allow_up = not (c == 0 or l == layer_num - 1)
            allow_down = not (c == 3 or l == layer_num - 1)
            dim_up = c > 0
            dim_keep = not (l <= 2 and c == n - 1)
            dim_down = c < n - 1 if l > 2 else c < n - 2
            row.append((allow_up, allow_down, (dim_up, dim_keep, dim_down)))
        rows.append(row)
    return rows


def original_logits(sd: Dict[str, torch.Tensor], image_bgr: torch.Tensor, *, small_gate: bool = False,
                    absent_when_closed: bool = False, stop_at: Optional[str] = None
                    ) -> Tuple[Optional[torch.Tensor], Record]:
    """Logits (1 x K x H x W) of the original network with weights ``sd`` (original names, BGR
    stem) on one BGR 0-255 image ``image_bgr`` (3 x H x W, H and W multiples of 32), and the
    :class:`Record` of its gates. ``stop_at="<l>.<c>"``: stop after that cell (logits None)."""
    W = _Weights(sd)
    rec = Record()
    layer_num = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("backbone.all_cell_list."))
    cell_num_list = [1 + max(int(k.split(".")[3]) for k in sd
                             if k.startswith(f"backbone.all_cell_list.{l}.")) for l in range(layer_num)]
    x = image_bgr.float()[None] - torch.tensor(BGR_MEAN).view(1, 3, 1, 1)
    x = W.conv("backbone.stem.stem_1", x, stride=2, relu=True)
    x = W.conv("backbone.stem.stem_2.0", x, padding=1, depthwise=True)
    x = W.conv("backbone.stem.stem_2.1", x, relu=True)
    x = W.conv("backbone.stem.stem_3.0", x, stride=2, padding=1, depthwise=True)
    x = W.conv("backbone.stem.stem_3.1", x, relu=True)
    size0 = x.shape[-2:]

    prev = [_cell(W, "backbone.init_layer", x, False, True, small_gate, "init", rec, absent_when_closed)]
    for l, row in enumerate(layout(layer_num, cell_num_list)):
        outs = []
        for c, (allow_up, allow_down, (dim_up, dim_keep, dim_down)) in enumerate(row):
            pieces = []  # (tensor or None, closed route of a cell that ran)
            if dim_up:
                pieces.append((prev[c - 1].down, prev[c - 1].closed.get("down", False)))
            if dim_keep:
                pieces.append((prev[c].keep, prev[c].closed.get("keep", False)))
            if dim_down:
                pieces.append((prev[c + 1].up, prev[c + 1].closed.get("up", False)))
            inp = None
            for t, _ in pieces:
                inp = _add(inp, t)
            name = f"{l}.{c}"
            present = [closed for t, closed in pieces if t is not None]
            if present and all(present):
                rec.zero_input_cells.append(name)
            outs.append(_cell(W, f"backbone.all_cell_list.{l}.{c}", inp, allow_up, allow_down,
                              small_gate, name, rec, absent_when_closed))
            if name == stop_at:
                return None, rec
        prev = outs

    feats = []
    for c, o in enumerate(prev):
        if o.keep is None:  # the original would fail here (a float 0.0 feature); ours gives zeros
            ch = sd[f"backbone.all_cell_list.{layer_num - 1}.{c}.cell_ops._ops.0.op.1.weight"].shape[0]
            h, w = [-(-s // 2 ** c) for s in size0]
            feats.append(x.new_zeros(1, ch, h, w))
        else:
            feats.append(o.keep)
    p = None
    for i in reversed(range(len(feats))):
        if p is not None:
            p = F.interpolate(p, scale_factor=2, mode="bilinear", align_corners=False) + feats[i]
        p = W.conv(f"sem_seg_head.layer_decoder_list.{i}", feats[i] if p is None else p, relu=True)
    logits = W.conv("sem_seg_head.predictor", p, padding=1)
    logits = F.interpolate(logits, size=tuple(image_bgr.shape[-2:]), mode="bilinear", align_corners=False)
    return logits, rec
