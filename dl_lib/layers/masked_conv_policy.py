"""When to run a masked convolution densely, and which memory format models should use.

Above a layer's break-even density the sparse kernel is slower than ``F.conv2d`` followed by a
multiplication with the mask, so :class:`dl_lib.layers.MaskedConv2d` (and
``masked_conv2d(..., dense_fallback=True)``) switch to the dense path there. The break-even points
are measured per (kind, channel bucket, device type):

* kind: ``"depthwise"`` (in = out = groups), ``"1x1"`` (1x1 kernel, any stride) or ``"kxk"``
  (everything else);
* channel bucket: ``"le32"``, ``"le64"``, ``"le128"``, ``"gt128"`` on max(in, out) channels;
* device: ``"cpu"`` (a CPU with AVX-512, where the AVX-512 implicit-GEMM and depthwise kernels
  run), ``"cpu_avx2"`` (AVX2 + FMA without AVX-512: the AVX2 versions of those kernels, with
  their own break-even points), ``"cpu_portable"`` (other CPUs: the portable gather + GEMM and
  per-pixel paths, with other break-even points; e.g. at d = 1 the portable depthwise path took
  3.4x the dense time, where the AVX-512 one was 1.2x faster than dense) or ``"cuda"``; the CPU
  key follows the kernel the extension runs (:func:`cpu_kernel`), see :func:`policy_device`;

and per input layout: ``BREAK_EVEN`` / ``BREAK_EVEN_TRAINING`` hold channels_last (NHWC) inputs,
``BREAK_EVEN_NCHW`` contiguous (NCHW) ones, for which the CPU kernel pays a transposing copy of
the input and strided output writes (measured: a 64-channel 256x512 NCHW input at d = 0.5 ran
0.91x the speed of dense on the same input, where channels_last broke even near d = 1).

The tables between the BEGIN/END markers are generated: ``write_break_even_table`` rewrites one
(the benchmark ``benchmarks/masked_conv.py --write-policy`` calls it), with a comment per device
naming the command and date that produced its numbers. ``HAND_SET`` holds the entries nobody
measured (the CUDA ones: no GPU was available when they were set); a measurement of a key
replaces its hand-set entry. Keys in none of the tables use ``DEFAULT_BREAK_EVEN``.

Models: :func:`prefers_channels_last` says whether to keep activations channels_last on a device
(``model.to(memory_format=torch.channels_last)`` and channels_last inputs) so that every masked
layer takes the fast path.
"""
import datetime
import re
import textwrap
from typing import Dict, Optional, Tuple

import torch

__all__ = [
    "BREAK_EVEN",
    "BREAK_EVEN_TRAINING",
    "BREAK_EVEN_NCHW",
    "HAND_SET",
    "HAND_SET_NCHW",
    "DEFAULT_BREAK_EVEN",
    "layer_kind",
    "channel_bucket",
    "break_even_density",
    "use_dense",
    "input_layout",
    "policy_device",
    "cpu_kernel",
    "prefers_channels_last",
    "write_break_even_table",
]

DEFAULT_BREAK_EVEN = 0.5

# BEGIN BREAK_EVEN TABLE
# cpu: python benchmarks/masked_conv.py --device cpu --threads 2 --write-policy (float32, 2
#   threads, fwd break-even, torch 2.14.1+cu130) on 2026-11-22.
# cpu_avx2: python benchmarks/masked_conv.py --device cpu --threads 1 --clock thread --memory-
#   format channels_last --kinds random --mode both --rounds 3 --densities 0.1 0.25 0.5 0.75 1.0
#   --layers hrnet_w18_b1 hrnet_w48_b1_3x3 hrnet_w48_b2 hrnet_w48_b3 routing_dw3x3 hrnet_w48_dw3x3
#   routing_1x1 fuse_1x1 --out output/benchmarks/avx2b --write-policy --policy-mode all (float32, 1
#   threads, fwd break-even, torch 2.14.1+cu130) on 2026-12-02.
# cpu_portable: python benchmarks/masked_conv.py --device cpu --threads 2 --memory-format both
#   --kinds random --mode fwd --rounds 3 --densities 0.1 0.25 0.5 0.75 1.0 --layers hrnet_w18_b1
#   hrnet_w48_b1_3x3 hrnet_w48_b2 hrnet_w48_b3 routing_dw3x3 hrnet_w48_dw3x3 routing_1x1 fuse_1x1
#   (float32, 2 threads, fwd break-even, random masks, AVX2 CPU, torch 2.14.1+cu130), run twice,
#   plus a 5-round re-run of hrnet_w18_b1 and hrnet_w48_b1_3x3 (the cells that differed); median of
#   the runs on 2026-12-02.
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
    ('1x1', 'gt128', 'cpu_avx2'): 1,
    ('1x1', 'le128', 'cpu_avx2'): 1,
    ('depthwise', 'gt128', 'cpu_avx2'): 1,
    ('depthwise', 'le128', 'cpu_avx2'): 0.222,
    ('kxk', 'gt128', 'cpu_avx2'): 0.894,
    ('kxk', 'le128', 'cpu_avx2'): 0.936,
    ('kxk', 'le32', 'cpu_avx2'): 0.513,
    ('kxk', 'le64', 'cpu_avx2'): 0.912,
    ('1x1', 'gt128', 'cpu_portable'): 0.528,
    ('1x1', 'le128', 'cpu_portable'): 0.374,
    ('depthwise', 'gt128', 'cpu_portable'): 0.164,
    ('depthwise', 'le128', 'cpu_portable'): 0.176,
    ('kxk', 'gt128', 'cpu_portable'): 0.663,
    ('kxk', 'le128', 'cpu_portable'): 0.66,
    ('kxk', 'le32', 'cpu_portable'): 0.25,
    ('kxk', 'le64', 'cpu_portable'): 0.531,
}
# END BREAK_EVEN TABLE

# CUDA entries SET BY HAND, NOT MEASURED: no GPU was available when the CUDA kernels were
# written or since, so these are guesses, not break-even points.
#   python benchmarks/masked_conv.py --device cuda --write-policy
# replaces each key it measures: the key moves into BREAK_EVEN (with that command and date as
# its provenance) and is dropped here.
# BEGIN HAND_SET TABLE
HAND_SET: Dict[Tuple[str, str, str], float] = {
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
# END HAND_SET TABLE

# Contiguous (NCHW) inputs, forward: the CPU kernels read NHWC, so an NCHW input costs a
# transposing copy and strided output writes, and the sparse path breaks even at lower densities.
# Keys missing here use HAND_SET_NCHW, else the channels_last entry (the CUDA kernels read
# through the strides).
# BEGIN BREAK_EVEN_NCHW TABLE
# cpu_portable: python benchmarks/masked_conv.py --device cpu --threads 2 --memory-format both
#   --kinds random --mode fwd --rounds 3 --densities 0.1 0.25 0.5 0.75 1.0 --layers hrnet_w18_b1
#   hrnet_w48_b1_3x3 hrnet_w48_b2 hrnet_w48_b3 routing_dw3x3 hrnet_w48_dw3x3 routing_1x1 fuse_1x1
#   (float32, 2 threads, fwd/nchw break-even, random masks, AVX2 CPU, torch 2.14.1+cu130), run
#   twice, plus a 5-round re-run of hrnet_w18_b1 and hrnet_w48_b1_3x3 (the cells that differed);
#   median of the runs on 2026-12-02.
BREAK_EVEN_NCHW: Dict[Tuple[str, str, str], float] = {
    ('1x1', 'gt128', 'cpu_portable'): 0,
    ('1x1', 'le128', 'cpu_portable'): 0,
    ('depthwise', 'gt128', 'cpu_portable'): 0,
    ('depthwise', 'le128', 'cpu_portable'): 0,
    ('kxk', 'gt128', 'cpu_portable'): 0.482,
    ('kxk', 'le128', 'cpu_portable'): 0.48,
    ('kxk', 'le32', 'cpu_portable'): 0.307,
    ('kxk', 'le64', 'cpu_portable'): 0.467,
}
# END BREAK_EVEN_NCHW TABLE

# NCHW entries SET BY HAND, NOT MEASURED, for AVX-512 CPUs (no such CPU was available when the
# NCHW table was measured) and, the same guesses, for the AVX2 kernels (key cpu_avx2: their NCHW
# inputs were not measured either; without an entry they would use the channels_last thresholds
# of up to 1.0, although an NCHW input costs the same transposing copy and strided writes): kxk from the issue-10 figures of a 64-channel 256x512 NCHW input
# (2.0x at d = 0.1, 0.91x at d = 0.5: crossover ~0.45 in log speedup), depthwise and 1x1 always
# dense (on the AVX2 CPU measured, their NCHW sparse path never beat dense, even at d = 0.1).
#   python benchmarks/masked_conv.py --memory-format both --write-policy
# on such a CPU replaces each key it measures.
# BEGIN HAND_SET_NCHW TABLE
HAND_SET_NCHW: Dict[Tuple[str, str, str], float] = {
    ('1x1', 'gt128', 'cpu'): 0,
    ('1x1', 'le128', 'cpu'): 0,
    ('1x1', 'le32', 'cpu'): 0,
    ('1x1', 'le64', 'cpu'): 0,
    ('depthwise', 'gt128', 'cpu'): 0,
    ('depthwise', 'le128', 'cpu'): 0,
    ('depthwise', 'le32', 'cpu'): 0,
    ('depthwise', 'le64', 'cpu'): 0,
    ('kxk', 'gt128', 'cpu'): 0.45,
    ('kxk', 'le128', 'cpu'): 0.45,
    ('kxk', 'le32', 'cpu'): 0.45,
    ('kxk', 'le64', 'cpu'): 0.45,
    ('1x1', 'gt128', 'cpu_avx2'): 0,
    ('1x1', 'le128', 'cpu_avx2'): 0,
    ('1x1', 'le32', 'cpu_avx2'): 0,
    ('1x1', 'le64', 'cpu_avx2'): 0,
    ('depthwise', 'gt128', 'cpu_avx2'): 0,
    ('depthwise', 'le128', 'cpu_avx2'): 0,
    ('depthwise', 'le32', 'cpu_avx2'): 0,
    ('depthwise', 'le64', 'cpu_avx2'): 0,
    ('kxk', 'gt128', 'cpu_avx2'): 0.45,
    ('kxk', 'le128', 'cpu_avx2'): 0.45,
    ('kxk', 'le32', 'cpu_avx2'): 0.45,
    ('kxk', 'le64', 'cpu_avx2'): 0.45,
}
# END HAND_SET_NCHW TABLE

# Training (forward + backward): the sparse backward breaks even at lower densities than the
# forward, so layers whose input or weight requires grad use this table (keys missing here fall
# back to BREAK_EVEN).
# BEGIN BREAK_EVEN_TRAINING TABLE
# cpu: python benchmarks/masked_conv.py --device cpu --threads 2 --write-policy (float32, 2
#   threads, fwdbwd break-even, torch 2.14.1+cu130) on 2026-11-22.
# cpu_avx2: python benchmarks/masked_conv.py --device cpu --threads 1 --clock thread --memory-
#   format channels_last --kinds random --mode both --rounds 3 --densities 0.1 0.25 0.5 0.75 1.0
#   --layers hrnet_w18_b1 hrnet_w48_b1_3x3 hrnet_w48_b2 hrnet_w48_b3 routing_dw3x3 hrnet_w48_dw3x3
#   routing_1x1 fuse_1x1 --out output/benchmarks/avx2b --write-policy --policy-mode all (float32, 1
#   threads, fwdbwd break-even, torch 2.14.1+cu130) on 2026-12-02.
BREAK_EVEN_TRAINING: Dict[Tuple[str, str, str], float] = {
    ('1x1', 'gt128', 'cpu'): 0.268,
    ('1x1', 'le128', 'cpu'): 0.303,
    ('depthwise', 'gt128', 'cpu'): 0.691,
    ('depthwise', 'le128', 'cpu'): 0.721,
    ('kxk', 'gt128', 'cpu'): 0.701,
    ('kxk', 'le128', 'cpu'): 0.749,
    ('kxk', 'le32', 'cpu'): 0.367,
    ('kxk', 'le64', 'cpu'): 0.734,
    ('1x1', 'gt128', 'cpu_avx2'): 1,
    ('1x1', 'le128', 'cpu_avx2'): 1,
    ('depthwise', 'gt128', 'cpu_avx2'): 1,
    ('depthwise', 'le128', 'cpu_avx2'): 0.382,
    ('kxk', 'gt128', 'cpu_avx2'): 1,
    ('kxk', 'le128', 'cpu_avx2'): 1,
    ('kxk', 'le32', 'cpu_avx2'): 0.86,
    ('kxk', 'le64', 'cpu_avx2'): 1,
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
                       training: bool = False, layout: str = "nhwc") -> float:
    """Density above which the dense path is faster.

    ``training``: forward + backward (``BREAK_EVEN_TRAINING``, else the forward entry).
    ``layout``: ``"nhwc"`` (channels_last input) or ``"nchw"`` (contiguous input): an NCHW entry
    replaces the forward threshold and caps the training one (its extra copy and strided writes
    are in both passes).
    Lookup: measured table, then ``HAND_SET`` (``HAND_SET_NCHW`` for the NCHW cap), then
    ``DEFAULT_BREAK_EVEN``.
    """
    if layout not in _LAYOUTS:
        raise ValueError(f"break_even_density: layout must be one of {_LAYOUTS}, got {layout!r}")
    key = (kind, channel_bucket(channels), device_type)
    if training and key in BREAK_EVEN_TRAINING:
        value = BREAK_EVEN_TRAINING[key]
    else:
        value = BREAK_EVEN.get(key, HAND_SET.get(key, DEFAULT_BREAK_EVEN))
    if layout == "nchw":
        nchw = BREAK_EVEN_NCHW.get(key, HAND_SET_NCHW.get(key))
        if nchw is not None:
            # Measured against dense on the same NCHW input; training (not measured on NCHW)
            # takes the lower of both.
            value = min(value, nchw) if training else nchw
    return value


def policy_device(device) -> str:
    """The device key of the tables for ``device``: "cuda", or for the CPU the key of the kernels
    that run there (:func:`cpu_kernel`): "cpu" (AVX-512), "cpu_avx2" or "cpu_portable"."""
    device_type = torch.device(device).type
    if device_type != "cpu":
        return device_type
    return _CPU_KERNEL_KEYS[_cpu_kernel()]


# cpu_kernel() -> policy device key.
_CPU_KERNEL_KEYS = {"avx512": "cpu", "avx2": "cpu_avx2", "portable": "cpu_portable"}


def cpu_kernel() -> str:
    """Which float32 CPU kernels the masked convolution runs: ``"avx512"``, ``"avx2"`` (AVX2 +
    FMA) or ``"portable"``, as ``torch.ops.dl_lib.masked_conv_cpu_kernel()`` reports it (the
    best the CPU supports, or a lower one named by ``DL_LIB_MASKED_CONV_CPU_KERNEL``). Without
    the compiled extension: what it would choose on this CPU, from PyTorch's CPU detection."""
    return _cpu_kernel()


def _cpu_kernel() -> str:
    # Fixed for the process (the extension reads the CPU and the environment once); cached since
    # every masked layer call asks.
    global _CPU_KERNEL
    if _CPU_KERNEL is None:
        from dl_lib._ext import has_compiled_ops

        op = getattr(torch.ops.dl_lib, "masked_conv_cpu_kernel", None) if has_compiled_ops() \
            else None
        if op is not None:
            _CPU_KERNEL = op()
        elif _cpu_has_avx512():
            _CPU_KERNEL = "avx512"
        else:
            avx2 = torch.backends.cpu.get_cpu_capability().startswith("AVX2")
            _CPU_KERNEL = "avx2" if avx2 else "portable"
    return _CPU_KERNEL


_CPU_KERNEL: Optional[str] = None


def _cpu_has_avx512() -> bool:
    # PyTorch's own CPU detection (honours ATEN_CPU_CAPABILITY); the kernels check avx512f.
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def input_layout(input: torch.Tensor) -> str:
    """``"nhwc"`` for a channels_last input, else ``"nchw"`` (what the break-even tables key)."""
    from torch._prims_common import suggest_memory_format

    return "nhwc" if suggest_memory_format(input) == torch.channels_last else "nchw"


def use_dense(weight: torch.Tensor, groups: int, density: float, device_type: str,
              training: bool = False, layout: str = "nhwc") -> bool:
    """True when a layer with this ``weight`` should run densely at active fraction ``density``
    on an input of ``layout`` (see :func:`input_layout`)."""
    channels = max(weight.shape[0], weight.shape[1] * groups)
    return density > break_even_density(layer_kind(weight.shape, groups), channels, device_type,
                                         training, layout)


def prefers_channels_last(device) -> bool:
    """Whether models using masked convolutions should run channels_last on ``device``.

    True on the CPU: the sparse kernels read NHWC (an NCHW input costs a transposing copy per
    layer, about as long as the sparse compute at d = 0.1) and write NHWC outputs contiguously;
    PyTorch's dense CPU convolutions (oneDNN) also take channels_last. True on CUDA: the kernels
    read through strides but their loads are coalesced only for NHWC (not timed on a GPU here).
    Use: ``model.to(memory_format=torch.channels_last)`` and
    ``x = x.contiguous(memory_format=torch.channels_last)`` when this returns True.
    """
    return torch.device(device).type in ("cpu", "cuda")


_LAYOUTS = ("nhwc", "nchw")
# (mode, layout) -> name of the generated table, and of the hand-set guesses a measurement replaces.
_TABLES = {("fwd", "nhwc"): "BREAK_EVEN", ("fwdbwd", "nhwc"): "BREAK_EVEN_TRAINING",
           ("fwd", "nchw"): "BREAK_EVEN_NCHW"}
_HAND_SET_TABLES = {("fwd", "nhwc"): "HAND_SET", ("fwd", "nchw"): "HAND_SET_NCHW"}
_DEVICES = ("cpu", "cpu_avx2", "cpu_portable", "cuda")
_PROVENANCE = re.compile(r"^# (cpu_portable|cpu_avx2|cpu|cuda): (.*)$")


def _provenance(block: str) -> Dict[str, str]:
    """{device: "command ... on date."} from the comment of a generated block."""
    found: Dict[str, str] = {}
    device = None
    for line in block.splitlines()[1:]:
        match = _PROVENANCE.match(line)
        if match:
            device = match.group(1)
            found[device] = match.group(2)
        elif device and line.startswith("#   "):
            found[device] += " " + line[4:]
        elif not line.startswith("#"):
            break
    return found


def _table_block(name: str, table: Dict[Tuple[str, str, str], float],
                 provenance: Dict[str, str]) -> str:
    lines = [f"# BEGIN {name} TABLE"]
    for device in sorted(provenance):
        # Long commands are wrapped so the generated block stays within the line-length limit.
        lines += [f"# {line}" for line in
                  textwrap.wrap(f"{device}: {provenance[device]}", 97, subsequent_indent="  ")]
    lines.append(f"{name}: Dict[Tuple[str, str, str], float] = {{")
    for key in sorted(table, key=lambda k: (k[2], k[0], k[1])):
        lines.append(f"    {key!r}: {table[key]:.3g},")
    lines += ["}", f"# END {name} TABLE"]
    return "\n".join(lines)


def write_break_even_table(entries: Dict[Tuple[str, str, str], float], command: str,
                           path: Optional[str] = None, date: Optional[str] = None,
                           mode: str = "fwd", layout: str = "nhwc") -> None:
    """Rewrite a generated table of ``path`` (this file by default) with ``entries`` merged in.

    ``entries`` maps (kind, channel bucket, device type) to a measured break-even density;
    existing keys not in ``entries`` are kept. (``mode``, ``layout``) pick the table: ("fwd",
    "nhwc") ``BREAK_EVEN``, ("fwdbwd", "nhwc") ``BREAK_EVEN_TRAINING``, ("fwd", "nchw")
    ``BREAK_EVEN_NCHW``. ``command`` and ``date`` (today) become the provenance comment of each
    device in ``entries``. Forward entries replace the ``HAND_SET`` (``HAND_SET_NCHW``) guesses
    of the same keys.
    """
    if (mode, layout) not in _TABLES:
        raise ValueError(f"write_break_even_table: (mode, layout) must be one of "
                         f"{sorted(_TABLES)} (mode 'fwd' or 'fwdbwd', layout 'nhwc' or 'nchw'), "
                         f"got ({mode!r}, {layout!r})")
    name = _TABLES[(mode, layout)]
    current = globals()[name]
    path = path or __file__
    date = date or datetime.date.today().isoformat()
    table = dict(current)
    for key, value in entries.items():
        kind, bucket, device = key
        if kind not in ("kxk", "1x1", "depthwise") or device not in _DEVICES:
            raise ValueError(f"write_break_even_table: bad key {key}")
        table[key] = float(min(max(value, 0.0), 1.0))
    with open(path) as f:
        text = f.read()
    hand_name = _HAND_SET_TABLES.get((mode, layout))
    blocks = {}
    for block_name in (name, hand_name) if hand_name else (name,):
        pattern = re.compile(rf"# BEGIN {block_name} TABLE\n.*?# END {block_name} TABLE", re.S)
        match = pattern.search(text)
        if not match:
            raise RuntimeError(f"write_break_even_table: no BEGIN/END {block_name} TABLE block "
                               f"in {path}")
        blocks[block_name] = (pattern, match.group(0))
    provenance = _provenance(blocks[name][1])
    for device in sorted({key[2] for key in entries}):
        provenance[device] = f"{command} on {date}."
    pattern, _ = blocks[name]
    text = pattern.sub(lambda _: _table_block(name, table, provenance), text)
    if hand_name:
        hand_set = dict(globals()[hand_name])
        for key in entries:
            hand_set.pop(key, None)
        pattern, _ = blocks[hand_name]
        text = pattern.sub(lambda _: _table_block(hand_name, hand_set, {}), text)
    with open(path, "w") as f:
        f.write(text)
    current.clear()
    current.update(table)
    if hand_name:
        globals()[hand_name].clear()
        globals()[hand_name].update(hand_set)
