"""Value checks on the core config keys: values that pass the type check but make no sense.

``merge_delta`` / ``merge_opts`` check that a key exists and that its value has the default's
type; ``SOLVER.IMS_PER_BATCH -2``, ``MODEL.SEM_SEG_HEAD.NUM_CLASSES 0``, ``MODEL.DEVICE gpu`` or
``INPUT.MIN_SIZE_TEST 1`` pass that and used to fail far away (a sampler, a loss, a CUDA call,
a 1-pixel feature map) or not at all. ``check_config_values(cfg)`` runs once where a playground
config is loaded (``dl_lib.playground.load_config``) and raises one ``ConfigError`` listing every
problem, each as ``KEY = value: what it must be (fix)``.

``check_device_available(cfg)`` is separate: a config naming ``cuda`` is valid on a CPU-only
machine (to inspect or dump it); it is checked where the model is put on its device.

Only core keys (``dl_lib/config/defaults.py``) are checked here; a family checks its own keys.
"""
import math
import re
from typing import Any, Callable, List, Optional, Tuple

from .config import ConfigError

__all__ = ["check_config_values", "config_value_problems", "check_device_available",
           "DEVICE_PATTERN", "MIN_IMAGE_SIDE", "CHECK_LABELS_MODES"]

# MODEL.DEVICE values the library runs on: "cpu", "cuda", "cuda:<index>".
DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?")
# A shorter image side below this leaves no pixel at the stride-32 features of a backbone
# (and is never a real test size); 0 means "keep the image size".
MIN_IMAGE_SIDE = 8
# DATASETS.CHECK_LABELS: see dl_lib/config/defaults.py.
CHECK_LABELS_MODES = ("sample", "all", "none")


def _int_at_least(low: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _finite_at_least(low: float, strict: bool = False) -> Callable[[Any], bool]:
    def ok(v):
        return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                and (v > low if strict else v >= low))
    return ok


def _one_of(*choices: str) -> Callable[[Any], bool]:
    return lambda v: v in choices


def _image_side(v: Any) -> bool:
    return isinstance(v, int) and (v == 0 or v >= MIN_IMAGE_SIDE)


def _image_sides(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(_image_side(s) for s in v)


def _positive_pair(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 2 and all(
        isinstance(s, int) and s > 0 for s in v)


def _device_name(v: Any) -> bool:
    return isinstance(v, str) and DEVICE_PATTERN.fullmatch(v) is not None


# (key, test, what the value must be, how to fix it). Every key is a core key of defaults.py.
_RULES: List[Tuple[str, Callable[[Any], bool], str, str]] = [
    ("MODEL.DEVICE", _device_name, "'cpu', 'cuda' or 'cuda:<index>'",
     "a GPU is 'cuda' (not 'gpu'); without one use MODEL.DEVICE cpu"),
    ("MODEL.SEM_SEG_HEAD.NUM_CLASSES", _int_at_least(1), "an integer >= 1 (the number of classes "
     "the head predicts)", "set it to the dataset's number of classes, e.g. 19 for Cityscapes"),
    ("MODEL.PIXEL_STD", lambda v: len(v) == 3 and all(_finite_at_least(0, True)(s) for s in v),
     "three values > 0 (one per RGB channel)", "e.g. [58.395, 57.12, 57.375]"),
    ("MODEL.PIXEL_MEAN", lambda v: len(v) == 3 and all(_finite_at_least(-math.inf)(s) for s in v),
     "three finite values (one per RGB channel)", "e.g. [123.675, 116.28, 103.53]"),
    ("SOLVER.IMS_PER_BATCH", _int_at_least(1), "an integer >= 1 (images per iteration, over all "
     "processes)", "e.g. SOLVER.IMS_PER_BATCH 8"),
    ("SOLVER.OPTIMIZER.BASE_LR", _finite_at_least(0, True), "a finite number > 0",
     "e.g. SOLVER.OPTIMIZER.BASE_LR 0.01"),
    ("SOLVER.OPTIMIZER.MOMENTUM", lambda v: _finite_at_least(0)(v) and v < 1, "in [0, 1)",
     "e.g. 0.9"),
    ("SOLVER.OPTIMIZER.WEIGHT_DECAY", _finite_at_least(0), "a finite number >= 0", "e.g. 1e-4"),
    ("SOLVER.LR_SCHEDULER.MAX_ITER", _int_at_least(1), "an integer >= 1 (training iterations)",
     "e.g. SOLVER.LR_SCHEDULER.MAX_ITER 40000"),
    ("SOLVER.LR_SCHEDULER.WARMUP_ITERS", _int_at_least(0), "an integer >= 0",
     "0 turns warm-up off"),
    ("SOLVER.CHECKPOINT_PERIOD", _int_at_least(1), "an integer >= 1 (iterations between "
     "checkpoints)", "e.g. SOLVER.CHECKPOINT_PERIOD 5000"),
    ("SOLVER.GRAD_CLIP", _finite_at_least(0), "a finite number >= 0", "0 turns clipping off"),
    ("SOLVER.AMP.DTYPE", _one_of("float16", "bfloat16"), "'float16' or 'bfloat16'", ""),
    ("INPUT.FORMAT", _one_of("RGB", "BGR"), "'RGB' or 'BGR'", ""),
    ("INPUT.MIN_SIZE_TRAIN", _image_sides, f"a non-empty list of shorter-side lengths, each 0 "
     f"(keep the size) or >= {MIN_IMAGE_SIDE}", "e.g. INPUT.MIN_SIZE_TRAIN [512,1024]"),
    ("INPUT.MIN_SIZE_TRAIN_SAMPLING", _one_of("choice", "range"), "'choice' or 'range'", ""),
    ("INPUT.MIN_SIZE_TEST", _image_side, f"0 (keep the image size) or a shorter-side length >= "
     f"{MIN_IMAGE_SIDE} pixels", "e.g. INPUT.MIN_SIZE_TEST 1024"),
    ("INPUT.MAX_SIZE_TRAIN", _int_at_least(0), "an integer >= 0 (0: no limit)", ""),
    ("INPUT.MAX_SIZE_TEST", _int_at_least(0), "an integer >= 0 (0: no limit)", ""),
    ("INPUT.CROP_PAD.SIZE", _positive_pair, "two integers [h, w] > 0", "e.g. [768, 768]"),
    ("INPUT.RANDOM_FLIP", _one_of("none", "horizontal", "vertical"),
     "'none', 'horizontal' or 'vertical'", ""),
    ("DATALOADER.NUM_WORKERS", _int_at_least(0), "an integer >= 0 (0: load in the main process)",
     ""),
    ("DATASETS.CHECK_LABELS", _one_of(*CHECK_LABELS_MODES),
     " or ".join(repr(m) for m in CHECK_LABELS_MODES), "see dl_lib/config/defaults.py"),
    ("TEST.IMS_PER_BATCH", _int_at_least(1), "an integer >= 1 (images per process per test "
     "batch)", ""),
    ("TEST.EVAL_PERIOD", _int_at_least(0), "an integer >= 0 (0: evaluate at the end only)", ""),
    ("TEST.MODE", _one_of("whole", "slide"), "'whole' or 'slide'", ""),
    ("LOG_PERIOD", _int_at_least(1), "an integer >= 1 (iterations between log lines)", ""),
]


def _get(cfg, key: str) -> Tuple[bool, Any]:
    node = cfg
    for part in key.split("."):
        if part not in node:
            return False, None
        node = node[part]
    return True, node


def _passes(test: Callable[[Any], bool], value: Any) -> bool:
    try:
        return bool(test(value))
    except (TypeError, ValueError):
        return False


def config_value_problems(cfg) -> List[str]:
    """One line per core key whose value makes no sense: ``KEY = value: must be ...; fix``.
    Keys absent from ``cfg`` (a config built on other defaults) are skipped."""
    problems = []
    for key, test, requirement, fix in _RULES:
        present, value = _get(cfg, key)
        if present and not _passes(test, value):
            problems.append(f"{key} = {value!r}: must be {requirement}"
                            + (f"; {fix}" if fix else ""))
    present, ignore = _get(cfg, "MODEL.SEM_SEG_HEAD.IGNORE_VALUE")
    _, num_classes = _get(cfg, "MODEL.SEM_SEG_HEAD.NUM_CLASSES")
    if (present and isinstance(num_classes, int) and isinstance(ignore, int)
            and 0 <= ignore < num_classes):
        problems.append(
            f"MODEL.SEM_SEG_HEAD.IGNORE_VALUE = {ignore}: it is a class index (NUM_CLASSES "
            f"{num_classes}), so class {ignore} would never be learnt nor scored (use 255, or a "
            "value >= NUM_CLASSES)")
    return problems


def check_config_values(cfg, source: Optional[str] = None) -> None:
    """Raise one ``ConfigError`` listing every problem of :func:`config_value_problems`."""
    problems = config_value_problems(cfg)
    if problems:
        where = f" (config of {source})" if source else ""
        raise ConfigError(f"Invalid config value{'s' if len(problems) > 1 else ''}{where}: "
                          + "; ".join(problems) + ". Fix them in config.py or with KEY VALUE "
                          "overrides.")


def check_device_available(cfg) -> None:
    """Raise a ``ConfigError`` when ``MODEL.DEVICE`` names CUDA on a machine without a usable
    CUDA GPU (or a GPU index beyond those present), with the one-line fix, instead of torch's
    "Found no NVIDIA driver" traceback from the first ``.to(device)``."""
    import torch

    device = str(cfg.MODEL.DEVICE)
    if not device.startswith("cuda"):
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ConfigError(f"MODEL.DEVICE is {device!r} but this machine has no usable CUDA GPU "
                          "(torch.cuda.is_available() is False): set MODEL.DEVICE cpu.")
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    if index >= count:
        raise ConfigError(f"MODEL.DEVICE is {device!r} but this machine has {count} CUDA GPU(s) "
                          f"(cuda:0..cuda:{count - 1}): use MODEL.DEVICE cuda, or cpu.")
