"""``dl_train`` and ``dl_test``: train or evaluate the playground in the current folder.

    cd playground/<Group>/<Name>
    dl_train --num-gpus 8 [KEY VALUE ...]
    dl_test MODEL.WEIGHTS path/to/model_final.pth

``dl_test`` is ``dl_train --eval-only``. If the playground's ``net.py`` defines ``Trainer`` (a
``DefaultTrainer`` subclass), it is used instead of ``DefaultTrainer``.

``dl_test`` evaluates ``MODEL.WEIGHTS`` (or, with ``--resume``, the file named in
``OUTPUT_DIR/last_checkpoint``) and loads it strictly: a missing or shape-mismatched tensor is an
error unless ``MODEL.WEIGHTS_STRICT False``. Without weights it stops (``--random-weights`` scores
the random initialisation on purpose, e.g. for a smoke test). Its outputs (``config.yaml``,
``log.txt``, ``results.json``, the evaluator's files, ``vis/``) go to
``OUTPUT_DIR/inference/<weights file name without .pth>/``, so the training run's own
``config.yaml`` and ``results.json`` are never overwritten. A checkpoint that stores an
``architecture`` is rebuilt with it (``dl_lib.checkpoint.apply_checkpoint_architecture``).
"""
import logging
import os
import sys
from typing import Optional, Sequence

from dl_lib import playground
from dl_lib.checkpoint import apply_checkpoint_architecture
from dl_lib.config import ConfigError
from dl_lib.config.checks import check_device_available
from dl_lib.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from dl_lib.engine.defaults import parse_args

__all__ = ["main_train", "main_test", "main", "run", "weights_to_evaluate",
           "inference_output_dir", "MissingWeightsError"]

logger = logging.getLogger("dl_lib.tools.train_net")

_RANDOM_INIT = "random_init"  # the inference folder of --random-weights


class MissingWeightsError(ValueError):
    """dl_test without MODEL.WEIGHTS (and without --resume or --random-weights)."""


def _last_checkpoint(output_dir: str) -> str:
    """The file ``output_dir/last_checkpoint`` names, or "" when there is none."""
    pointer = os.path.join(output_dir, "last_checkpoint")
    if not os.path.isfile(pointer):
        return ""
    with open(pointer) as f:
        name = f.read().strip()
    return os.path.join(output_dir, name) if name else ""


def weights_to_evaluate(cfg, resume: bool = False, random_weights: bool = False) -> str:
    """The checkpoint ``dl_test`` evaluates: with ``resume`` the one ``OUTPUT_DIR/last_checkpoint``
    names (if any), else ``MODEL.WEIGHTS``; "" only with ``random_weights``.

    Raises ``MissingWeightsError`` explaining MODEL.WEIGHTS, and naming the checkpoints of the
    training run in ``OUTPUT_DIR`` when there are some.
    """
    last = _last_checkpoint(cfg.OUTPUT_DIR) if resume else ""
    if last:
        return last
    if cfg.MODEL.WEIGHTS or random_weights:
        return cfg.MODEL.WEIGHTS
    hints = []
    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    if os.path.isfile(final):
        hints.append(f"OUTPUT_DIR holds the trained model: `dl_test MODEL.WEIGHTS {final}`")
    pointed = _last_checkpoint(cfg.OUTPUT_DIR)
    if pointed:
        hints.append(f"`dl_test --resume` evaluates the latest checkpoint "
                     f"({os.path.basename(pointed)}, named in OUTPUT_DIR/last_checkpoint)")
    hints = "; ".join(hints) if hints else f"there is no checkpoint in {cfg.OUTPUT_DIR} yet"
    raise MissingWeightsError(
        "dl_test needs the weights to evaluate: set MODEL.WEIGHTS to a checkpoint file "
        f"(`dl_test MODEL.WEIGHTS path/to/model_final.pth`). {hints}. To score the random "
        "initialisation on purpose (a smoke test), pass --random-weights.")


def inference_output_dir(output_dir: str, weights: str) -> str:
    """``output_dir/inference/<weights file name without extension>`` (``random_init`` for "")."""
    name = os.path.splitext(os.path.basename(weights.rstrip("/")))[0] if weights else ""
    return os.path.join(output_dir, "inference", name or _RANDOM_INIT)


def _evaluate(trainer_cls, cfg, train_cfg, model, weights: str):
    """Load ``weights`` (strictly unless MODEL.WEIGHTS_STRICT False) and run ``trainer_cls.test``
    with every output under ``cfg.OUTPUT_DIR`` (the inference folder)."""
    # Built on the training run's folder: a file this checkpointer wrote there is trusted on load.
    checkpointer = trainer_cls.build_checkpointer(train_cfg, model)
    if weights:
        logger.info(f"Evaluating weights from {weights}; outputs go to {cfg.OUTPUT_DIR}")
        checkpointer.load(weights, checkpointables=[], strict=cfg.MODEL.WEIGHTS_STRICT)
    else:
        logger.warning("--random-weights: evaluating the randomly initialised model; outputs go "
                       f"to {cfg.OUTPUT_DIR}")
    names = list(cfg.DATASETS.TEST)
    evaluators = [trainer_cls.build_evaluator(
        cfg, name, cfg.OUTPUT_DIR if len(names) == 1 else os.path.join(cfg.OUTPUT_DIR, name))
        for name in names]
    return trainer_cls.test(cfg, model, evaluators=evaluators)


def run(args):
    """The body every process runs (after ``launch`` set up the process group)."""
    cfg = playground.load_config(args.playground, args.opts)
    if args.eval_only:  # the evaluated file becomes MODEL.WEIGHTS (also in config.yaml)
        cfg.MODEL.WEIGHTS = weights_to_evaluate(cfg, args.resume,
                                                getattr(args, "random_weights", False))
    # A pruned / narrower checkpoint (the one resumed from, or MODEL.WEIGHTS) rebuilds its network.
    apply_checkpoint_architecture(cfg, (args.resume and _last_checkpoint(cfg.OUTPUT_DIR)) or None)
    train_cfg = cfg.clone()
    if args.eval_only:  # never overwrite the training run's config.yaml / results.json
        cfg.OUTPUT_DIR = inference_output_dir(cfg.OUTPUT_DIR, cfg.MODEL.WEIGHTS)
    default_setup(cfg, args)  # first, so that net.py's import and build log to OUTPUT_DIR/log.txt
    model = playground.build_model(args.playground, cfg)
    cfg.freeze()
    trainer_cls = getattr(playground.load_net(args.playground), "Trainer", DefaultTrainer)
    if not (isinstance(trainer_cls, type) and issubclass(trainer_cls, DefaultTrainer)):
        raise TypeError(f"`Trainer` in {args.playground}/net.py must subclass "
                        "dl_lib.engine.DefaultTrainer.")
    if args.eval_only:
        train_cfg.freeze()
        return _evaluate(trainer_cls, cfg, train_cfg, model, cfg.MODEL.WEIGHTS)
    trainer = trainer_cls(cfg, model)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def main(argv: Optional[Sequence[str]] = None, eval_only: bool = False,
         prog: str = "dl_train") -> int:
    """Parse the command line, check the playground and overrides, then ``launch`` ``run``."""
    parser = default_argument_parser(prog=prog)
    args = parse_args(parser, argv)
    if eval_only:
        args.eval_only = True
    # Check the folder and the overrides once here, so a mistake gives one clear message
    # instead of one traceback per spawned process.
    try:
        # Absolute, so every process (and the log) names the same folder.
        args.playground = playground.find_playground(args.playground)
        cfg = playground.load_config(args.playground, args.opts)  # checks the values too
        check_device_available(cfg)  # one line, not a CUDA traceback per process
        if args.eval_only:
            weights_to_evaluate(cfg, args.resume, args.random_weights)
    except (playground.PlaygroundError, ConfigError, MissingWeightsError) as e:
        parser.exit(2, f"{prog}: error: {e}\n")
    backend = "gloo" if cfg.MODEL.DEVICE == "cpu" else "nccl"
    launch(run, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,), backend=backend)
    return 0


def main_train(argv: Optional[Sequence[str]] = None) -> int:
    """Console script ``dl_train``."""
    return main(sys.argv[1:] if argv is None else argv, eval_only=False, prog="dl_train")


def main_test(argv: Optional[Sequence[str]] = None) -> int:
    """Console script ``dl_test`` (always ``--eval-only``)."""
    return main(sys.argv[1:] if argv is None else argv, eval_only=True, prog="dl_test")


if __name__ == "__main__":
    sys.exit(main_train())
