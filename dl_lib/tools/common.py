"""What every playground tool (dl_flops, dl_bench, dl_export) does the same way."""
import argparse
import sys
from typing import Optional, Sequence


def parse_tool_args(parser: argparse.ArgumentParser,
                    argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """``parser.parse_args`` where ``opts`` (``argparse.REMAINDER``) holds the KEY VALUE overrides:
    a ``--flag`` after them would silently become an override, so it is refused."""
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    flags = [o for o in args.opts if o.startswith("--")]
    if flags:
        parser.error(f"flag(s) {flags} given after the KEY VALUE overrides would be ignored; put "
                     "every --flag before the overrides")
    return args


def load_weights(cfg, model) -> str:
    """Loads ``MODEL.WEIGHTS`` into ``model`` (model only, ``MODEL.WEIGHTS_STRICT``) and says what
    the model holds: the file, or the random initialisation when no file is set."""
    weights = str(cfg.MODEL.WEIGHTS).strip()
    if not weights or weights.lower() == "none":
        return "random initialisation (no MODEL.WEIGHTS)"
    from dl_lib.checkpoint import Checkpointer

    Checkpointer(model).load(weights, checkpointables=[], strict=bool(cfg.MODEL.WEIGHTS_STRICT))
    return f"MODEL.WEIGHTS {weights}"
