"""Convert a released checkpoint to our layout once, instead of on every load.

    .venv/bin/python tools/convert_checkpoint.py IN OUT [--playground DIR] [--converter NAME] [KEY VALUE ...]

Builds the playground's model (``DIR``, default the current folder; ``KEY VALUE`` config
overrides; on CPU unless ``MODEL.DEVICE`` is given), reads ``IN`` (``{"model": ...}``,
``{"state_dict": ...}`` or a bare state dict; ``module.`` prefixes stripped) and converts it with the
converter registered for the model's class whose predicate accepts it (``--converter`` forces
one by name; none: the file must already be in our layout). Strict: every tensor of the model must
be in the converted file with the model's shape, except those the converter says the layout lacks
by design (its ``convert.missing_by_design(converted_keys, model_keys) -> {key: why}``, e.g. the
decoder of an ImageNet backbone file), which are named; tensors the model does not have are an
error too. ``OUT`` is written atomically as ``{"model": converted tensors, "converted_from": ...}``
(and the model's ``architecture()``), then a summary is printed. Exit status 0 on success, 2 when
the file does not fit the model.
"""
import argparse
import os
import sys
from collections import OrderedDict, defaultdict
from typing import Dict, List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, REPO)

import torch  # noqa: E402

from dl_lib import playground  # noqa: E402
from dl_lib.checkpoint import CheckpointReadError, IncompatibleCheckpointError, architecture_of  # noqa: E402
from dl_lib.checkpoint.converters import _CONVERTERS, find_converter  # noqa: E402
from dl_lib.checkpoint.file_check import check_torch_file, unreadable_checkpoint_error  # noqa: E402
from dl_lib.checkpoint.pretrained import PretrainedWeightsError  # noqa: E402
from dl_lib.utils.file_io import atomic_write  # noqa: E402

__all__ = ["main", "convert_file", "ConversionError"]


class ConversionError(ValueError):
    """The file does not convert into the model (missing, mis-shaped or extra tensors)."""


def _read(path: str) -> Dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"IN {path!r} does not exist")
    check_torch_file(path, path, key="IN")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated / corrupted: name the file
        raise unreadable_checkpoint_error(path, e, path, "IN") from e
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointReadError(f"IN {path}: expected a state dict, or a dict with 'model' or "
                                  f"'state_dict'; found {type(obj).__name__}")
    sd = OrderedDict((k, v) for k, v in obj.items() if isinstance(v, torch.Tensor))
    for prefix in ("module.", "_orig_mod."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = OrderedDict((k[len(prefix):], v) for k, v in sd.items())
    return sd


def _pick_converter(sd, model, name: Optional[str]):
    if name is None:
        return find_converter(sd.keys(), model)
    for c in _CONVERTERS:
        if c.name == name:
            if not isinstance(model, c.model_class):
                raise ConversionError(f"--converter {name} is for {c.model_class.__name__} "
                                      f"models; the playground builds {type(model).__name__}")
            return c
    raise ConversionError(f"--converter {name}: no such converter; registered: "
                          f"{[c.name for c in _CONVERTERS]}")


def _short(keys: Sequence[str], n: int = 4) -> str:
    more = len(keys) - n
    return ", ".join(keys[:n]) + (f" and {more} more" if more > 0 else "")


def convert_file(src: str, model: torch.nn.Module, converter: Optional[str] = None) -> dict:
    """``{"model": tensors, "converter": name, "missing_by_design": {key: why}}`` for ``src``
    converted into ``model``'s layout. Raises ConversionError when it does not fit."""
    sd = _read(src)
    conv = _pick_converter(sd, model, converter)
    if conv is not None:
        sd = OrderedDict(conv.convert(sd))
    model_sd = model.state_dict()
    explain = getattr(conv.convert, "missing_by_design", None) if conv is not None else None
    by_design = dict(explain(list(sd), list(model_sd))) if explain else {}

    missing = [k for k in model_sd if k not in sd and k not in by_design
               and not k.endswith("num_batches_tracked")]
    mismatched = [f"{k}: {tuple(sd[k].shape)} in the file, {tuple(v.shape)} in the model"
                  for k, v in model_sd.items() if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    unexpected = [k for k in sd if k not in model_sd]
    if missing or mismatched or unexpected:
        layout = f"converted with {conv.name!r}" if conv else "no converter matched: read as our layout"
        parts = [f"{src} ({layout}) does not fit the model {type(model).__name__} "
                 f"({len(model_sd)} tensors):"]
        if missing:
            parts.append(f"{len(missing)} model tensors missing from the file ({_short(missing)});")
        if mismatched:
            parts.append(f"{len(mismatched)} with another shape ({'; '.join(mismatched[:4])});")
        if unexpected:
            parts.append(f"{len(unexpected)} file tensors the model lacks ({_short(unexpected)}).")
        parts.append("Is --playground (and KEY VALUE overrides) the network this file was saved "
                     "from (depth, width, gates on/off)?")
        raise ConversionError(" ".join(parts))
    out = OrderedDict((k, sd[k].to(model_sd[k].dtype).contiguous()) for k in model_sd if k in sd)
    return {"model": out, "converter": conv.name if conv else None, "missing_by_design": by_design}


def _summary(src: str, dst: str, result: dict, model) -> str:
    tensors = result["model"]
    params = {n for n, _ in model.named_parameters()}
    n_params = sum(v.numel() for k, v in tensors.items() if k in params)
    lines = [f"Converted {src} -> {dst}",
             f"  converter: {result['converter'] or 'none (already our layout)'}",
             f"  model: {type(model).__name__}, {len(tensors)} tensors written "
             f"({n_params:,} parameters)"]
    groups: Dict[str, List[str]] = defaultdict(list)
    for k, why in result["missing_by_design"].items():
        groups[why].append(k)
    for why, keys in groups.items():
        lines.append(f"  not in the file by design ({why}): {len(keys)} tensors, "
                     f"{_short(keys, 3)}; they keep the model's initialisation when loaded")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", metavar="IN", help="released checkpoint (.pth)")
    parser.add_argument("dst", metavar="OUT", help="converted checkpoint to write")
    parser.add_argument("--playground", default=None, help="playground folder (default: cwd)")
    parser.add_argument("--converter", default=None,
                        help="force this registered converter (default: the one that matches)")
    # the rest are KEY VALUE config overrides; the flags may stand anywhere
    args, opts = parser.parse_known_args(argv)
    flags = [o for o in opts if o.startswith("--")]
    if flags:
        parser.error(f"unknown option(s) {flags}; after IN OUT only --playground, --converter "
                     "and KEY VALUE config overrides are accepted")
    if len(opts) % 2:
        parser.error(f"config overrides must be KEY VALUE pairs, got {opts}")
    if "MODEL.DEVICE" not in opts[::2]:
        opts += ["MODEL.DEVICE", "cpu"]
    _, model = playground.build(args.playground, opts)
    try:
        result = convert_file(args.src, model, args.converter)
    except (ConversionError, IncompatibleCheckpointError, PretrainedWeightsError,
            CheckpointReadError, FileNotFoundError) as e:
        print(f"convert_checkpoint: {e}", file=sys.stderr)
        return 2
    data = {"model": result["model"],
            "converted_from": {"file": os.path.basename(args.src), "converter": result["converter"]}}
    architecture = architecture_of(model)
    if architecture is not None:
        data["architecture"] = architecture
    folder = os.path.dirname(os.path.abspath(args.dst))
    os.makedirs(folder, exist_ok=True)
    with atomic_write(args.dst, "wb") as f:
        torch.save(data, f)
    print(_summary(args.src, args.dst, result, model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
