"""``dl_train`` and ``dl_test``: train or evaluate the playground in the current folder.

    cd playground/<Group>/<Name>
    dl_train --num-gpus 8 [KEY VALUE ...]
    dl_test MODEL.WEIGHTS path/to/model_final.pth

``dl_test`` is ``dl_train --eval-only``. If the playground's ``net.py`` defines ``Trainer`` (a
``DefaultTrainer`` subclass), it is used instead of ``DefaultTrainer``.
"""
import logging
import sys
from typing import Optional, Sequence

from dl_lib import playground
from dl_lib.config import ConfigError
from dl_lib.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from dl_lib.engine.defaults import parse_args

__all__ = ["main_train", "main_test", "main", "run"]

logger = logging.getLogger("dl_lib.tools.train_net")


def run(args):
    """The body every process runs (after ``launch`` set up the process group)."""
    cfg = playground.load_config(args.playground, args.opts)
    default_setup(cfg, args)  # first, so that net.py's import and build log to OUTPUT_DIR/log.txt
    model = playground.build_model(args.playground, cfg)
    cfg.freeze()
    trainer_cls = getattr(playground.load_net(args.playground), "Trainer", DefaultTrainer)
    if not (isinstance(trainer_cls, type) and issubclass(trainer_cls, DefaultTrainer)):
        raise TypeError(f"`Trainer` in {args.playground}/net.py must subclass "
                        "dl_lib.engine.DefaultTrainer.")
    if args.eval_only:
        checkpointer = trainer_cls.build_checkpointer(cfg, model)
        if args.resume and checkpointer.has_checkpoint():
            path = checkpointer.get_checkpoint_file()
        else:
            path = cfg.MODEL.WEIGHTS
        if path:
            logger.info(f"Evaluating weights from {path}")
        else:
            logger.warning("Evaluating a randomly initialised model: set MODEL.WEIGHTS (or "
                           "--resume to use OUTPUT_DIR/last_checkpoint).")
        checkpointer.load(path, checkpointables=[])
        return trainer_cls.test(cfg, model)
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
        cfg = playground.load_config(args.playground, args.opts)
    except (playground.PlaygroundError, ConfigError) as e:
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
