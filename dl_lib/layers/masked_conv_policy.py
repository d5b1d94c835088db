"""When to run a masked convolution densely.

Above a layer's break-even density the sparse kernel is slower than ``F.conv2d`` followed by a
multiplication with the mask, so :class:`dl_lib.layers.MaskedConv2d` (and
``masked_conv2d(..., dense_fallback=True)``) switch to the dense path there. The break-even points
are measured per (kind, channel bucket, device type):

* kind: ``"depthwise"`` (in = out = groups), ``"1x1"`` (1x1 kernel, any stride) or ``"kxk"``
  (everything else);
* channel bucket: ``"le32"``, ``"le64"``, ``"le128"``, ``"gt128"`` on max(in, out) channels;
* device type: ``"cpu"`` or ``"cuda"``.

The table between the BEGIN/END markers is generated: ``write_break_even_table`` rewrites it (the
benchmark ``benchmarks/masked_conv.py`` calls it), with a comment naming the command and date that
produced the numbers. Keys missing from the table use ``DEFAULT_BREAK_EVEN``.
"""
import datetime
import re
import textwrap
from typing import Dict, Optional, Tuple

import torch

__all__ = [
    "BREAK_EVEN",
    "BREAK_EVEN_TRAINING",
    "DEFAULT_BREAK_EVEN",
    "layer_kind",
    "channel_bucket",
    "break_even_density",
    "use_dense",
    "write_break_even_table",
]

DEFAULT_BREAK_EVEN = 0.5

# BEGIN BREAK_EVEN TABLE
# Produced by: python benchmarks/masked_conv.py --device cpu --threads 2 --write-policy (float32,
#   2 threads, fwd break-even, torch 2.14.1+cu130)
#   on 2026-11-22.
BREAK_EVEN: Dict[Tuple[str, str, str], float] = {
    ('1x1', 'gt128', 'cpu'): 0.991,
    ('1x1', 'le128', 'cpu'): 1,
    ('1x1', 'le32', 'cpu'): 0.4,
    ('1x1', 'le64', 'cpu'): 0.8,
    ('depthwise', 'gt128', 'cpu'): 1,
    ('depthwise', 'le128', 'cpu'): 1,
    ('depthwise', 'le32', 'cpu'): 0.2,
    ('depthwise', 'le64', 'cpu'): 0.8,
    ('kxk', 'gt128', 'cpu'): 1,
    ('kxk', 'le128', 'cpu'): 0.999,
    ('kxk', 'le32', 'cpu'): 0.781,
    ('kxk', 'le64', 'cpu'): 0.966,
    ('1x1', 'gt128', 'cuda'): 0.5,
    ('1x1', 'le128', 'cuda'): 0.4,
    ('1x1', 'le32', 'cuda'): 0.2,
    ('1x1', 'le64', 'cuda'): 0.3,
    ('depthwise', 'gt128', 'cuda'): 0.3,
    ('depthwise', 'le128', 'cuda'): 0.25,
    ('depthwise', 'le32', 'cuda'): 0.2,
    ('depthwise', 'le64', 'cuda'): 0.2,
    ('kxk', 'gt128', 'cuda'): 0.4,
    ('kxk', 'le128', 'cuda'): 0.3,
    ('kxk', 'le32', 'cuda'): 0.15,
    ('kxk', 'le64', 'cuda'): 0.2,
}
# END BREAK_EVEN TABLE

# Training (forward + backward): the sparse backward breaks even at lower densities than the
# forward, so layers whose input or weight requires grad use this table (keys missing here fall
# back to BREAK_EVEN).
# BEGIN BREAK_EVEN_TRAINING TABLE
# Produced by: python benchmarks/masked_conv.py --device cpu --threads 2 --write-policy (float32,
#   2 threads, fwdbwd break-even, torch 2.14.1+cu130)
#   on 2026-11-22.
BREAK_EVEN_TRAINING: Dict[Tuple[str, str, str], float] = {
    ('1x1', 'gt128', 'cpu'): 0.268,
    ('1x1', 'le128', 'cpu'): 0.303,
    ('depthwise', 'gt128', 'cpu'): 0.691,
    ('depthwise', 'le128', 'cpu'): 0.721,
    ('kxk', 'gt128', 'cpu'): 0.701,
    ('kxk', 'le128', 'cpu'): 0.749,
    ('kxk', 'le32', 'cpu'): 0.367,
    ('kxk', 'le64', 'cpu'): 0.734,
}
# END BREAK_EVEN_TRAINING TABLE


def layer_kind(weight_shape, groups: int) -> str:
    """``"depthwise"``, ``"1x1"`` or ``"kxk"`` for a weight of shape (O, C/groups, kh, kw)."""
    out_ch, c_g, kh, kw = weight_shape
    if c_g == 1 and groups == out_ch and groups > 1:
        return "depthwise"
    if kh == 1 and kw == 1:
        return "1x1"
    return "kxk"


def channel_bucket(channels: int) -> str:
    """Bucket name of ``channels`` (use max(in_channels, out_channels))."""
    for limit in (32, 64, 128):
        if channels <= limit:
            return f"le{limit}"
    return "gt128"


def break_even_density(kind: str, channels: int, device_type: str,
                       training: bool = False) -> float:
    """Density above which the dense path is faster, from the table (or the default).

    ``training``: forward + backward (``BREAK_EVEN_TRAINING``, else the forward entry)."""
    key = (kind, channel_bucket(channels), device_type)
    if training and key in BREAK_EVEN_TRAINING:
        return BREAK_EVEN_TRAINING[key]
    return BREAK_EVEN.get(key, DEFAULT_BREAK_EVEN)


def use_dense(weight: torch.Tensor, groups: int, density: float, device_type: str,
              training: bool = False) -> bool:
    """True when a layer with this ``weight`` should run densely at active fraction ``density``."""
    channels = max(weight.shape[0], weight.shape[1] * groups)
    return density > break_even_density(layer_kind(weight.shape, groups), channels, device_type,
                                         training)


def write_break_even_table(entries: Dict[Tuple[str, str, str], float], command: str,
                           path: Optional[str] = None, date: Optional[str] = None,
                           mode: str = "fwd") -> None:
    """Rewrite a generated table of ``path`` (this file by default) with ``entries`` merged in.

    ``entries`` maps (kind, channel bucket, device type) to a break-even density; existing keys
    not in ``entries`` are kept. ``mode`` "fwd" writes ``BREAK_EVEN``, "fwdbwd" writes
    ``BREAK_EVEN_TRAINING``. ``command`` is recorded in the comment with ``date`` (today).
    """
    if mode not in ("fwd", "fwdbwd"):
        raise ValueError(f"write_break_even_table: mode must be 'fwd' or 'fwdbwd', got {mode!r}")
    name = "BREAK_EVEN" if mode == "fwd" else "BREAK_EVEN_TRAINING"
    current = BREAK_EVEN if mode == "fwd" else BREAK_EVEN_TRAINING
    path = path or __file__
    date = date or datetime.date.today().isoformat()
    table = dict(current)
    for key, value in entries.items():
        kind, bucket, device = key
        if kind not in ("kxk", "1x1", "depthwise") or device not in ("cpu", "cuda"):
            raise ValueError(f"write_break_even_table: bad key {key}")
        table[key] = float(min(max(value, 0.0), 1.0))
    # Long commands are wrapped so the generated block stays within the line-length limit.
    produced = textwrap.wrap(f"Produced by: {command}", 95, subsequent_indent="  ") or [""]
    lines = [f"# BEGIN {name} TABLE"] + [f"# {line}" for line in produced]
    lines.append(f"#   on {date}.")
    lines.append(f"{name}: Dict[Tuple[str, str, str], float] = {{")
    for key in sorted(table, key=lambda k: (k[2], k[0], k[1])):
        lines.append(f"    {key!r}: {table[key]:.3g},")
    lines += ["}", f"# END {name} TABLE"]
    with open(path) as f:
        text = f.read()
    pattern = re.compile(rf"# BEGIN {name} TABLE\n.*?# END {name} TABLE", re.S)
    if not pattern.search(text):
        raise RuntimeError(f"write_break_even_table: no BEGIN/END {name} TABLE block in {path}")
    text = pattern.sub(lambda _: "\n".join(lines), text)
    with open(path, "w") as f:
        f.write(text)
    current.clear()
    current.update(table)
