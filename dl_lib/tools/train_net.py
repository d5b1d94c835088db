"""``dl_train`` and ``dl_test``: train or evaluate the playground in the current folder.

    cd playground/<Group>/<Name>
    dl_train --num-gpus 8 [KEY VALUE ...]
    dl_test MODEL.WEIGHTS path/to/model_final.pth

``dl_test`` is ``dl_train --eval-only``. If the playground's ``net.py`` defines ``Trainer`` (a
``DefaultTrainer`` subclass), it is used instead of ``DefaultTrainer``.

No run is lost (``dl_lib.engine.run_dir``):

* A new training run (no ``--resume``) refuses an ``OUTPUT_DIR`` that holds an earlier run
  (checkpoints, ``last_checkpoint``, ``metrics.json``, ``results.json``): exit 2 naming
  ``--resume`` and ``--overwrite`` (which moves the earlier run to ``OUTPUT_DIR.old-<time>/``).
* The folder a command writes (``OUTPUT_DIR``; ``dl_test``: its inference folder) is locked for
  the whole run by the process that owns it (the parent of spawned workers, or rank 0 under
  torchrun / SLURM); a second command on it stops at once, naming the holder.
* ``config.yaml`` is written once the model is built and its weights are loaded, and only for a
  new run (``save_run_config``): a launch that fails leaves none; a resume keeps the original
  and writes ``config.resume-<iter>.yaml`` when its config differs.

``dl_test`` evaluates ``MODEL.WEIGHTS``; without it, the checkpoint ``OUTPUT_DIR/last_checkpoint``
names (also with ``--resume``, which prefers it over ``MODEL.WEIGHTS``); without either it stops
(exit 2) unless ``MODEL.WEIGHTS none`` (or its alias ``--random-weights``) asks for the random
initialisation on purpose. Weights load strictly: a missing or shape-mismatched tensor is an
error unless ``MODEL.WEIGHTS_STRICT False``. Its outputs (``config.yaml``, ``log.txt``,
``results.json``, the evaluator's files, ``vis/``) go to
``OUTPUT_DIR/inference/<weights file name without .pth>/`` (``random_init`` for none), written
atomically, so the training run's own ``config.yaml`` and ``results.json`` are never overwritten.
A checkpoint that stores an ``architecture`` is rebuilt with it
(``dl_lib.checkpoint.apply_checkpoint_architecture``).

``--exit K`` (models with early exits) is ``MODEL.EXIT.STOP K``: the model runs only up to exit K
(1-based; -1 / 0: all); ``dl_test`` then writes under ``inference/<weights name>.exitK/``. A
playground whose config has no ``MODEL.EXIT.STOP`` refuses it (exit 2, naming the fix).
"""
import contextlib
import logging
import os
import sys
from typing import Optional, Sequence, Tuple

from dl_lib import playground
from dl_lib.checkpoint import apply_checkpoint_architecture
from dl_lib.checkpoint.checkpointer import readable_resume_checkpoint
from dl_lib.checkpoint.file_check import CheckpointReadError, check_weights_file
from dl_lib.config import ConfigError
from dl_lib.config.checks import check_device_available
from dl_lib.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from dl_lib.engine.defaults import parse_args
from dl_lib.engine.launch import LaunchError, check_launch, distributed_env_from_launcher
from dl_lib.engine.run_dir import RunDirError, RunLock, prepare_training_dir, save_run_config
from dl_lib.utils import comm
from dl_lib.utils.file_io import atomic_write

__all__ = ["main_train", "main_test", "main", "run", "weights_to_evaluate",
           "inference_output_dir", "exit_stop", "exit_flag_opts", "MissingWeightsError"]

logger = logging.getLogger("dl_lib.tools.train_net")

_RANDOM_INIT = "random_init"  # the inference folder of MODEL.WEIGHTS none
_NO_WEIGHTS = "none"  # MODEL.WEIGHTS none: evaluate the random initialisation on purpose


class MissingWeightsError(ValueError):
    """dl_test with neither MODEL.WEIGHTS nor OUTPUT_DIR/last_checkpoint (nor MODEL.WEIGHTS none)."""


def _last_checkpoint(output_dir: str) -> str:
    """The file ``output_dir/last_checkpoint`` names, or "" when there is none."""
    pointer = os.path.join(output_dir, "last_checkpoint")
    if not os.path.isfile(pointer):
        return ""
    with open(pointer) as f:
        name = f.read().strip()
    return os.path.join(output_dir, name) if name else ""


def _weights_and_source(cfg, resume: bool = False, random_weights: bool = False
                        ) -> Tuple[str, str]:
    """(the checkpoint ``dl_test`` evaluates, where that choice came from); see
    :func:`weights_to_evaluate`."""
    weights = cfg.MODEL.WEIGHTS.strip()
    if weights.lower() == _NO_WEIGHTS or random_weights:
        if random_weights and weights and weights.lower() != _NO_WEIGHTS:
            raise MissingWeightsError(f"--random-weights and MODEL.WEIGHTS {weights} contradict "
                                      "each other: give one of them.")
        return "", "MODEL.WEIGHTS none"
    pointer = os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")
    last = _last_checkpoint(cfg.OUTPUT_DIR) if resume or not weights else ""
    if last and not os.path.isfile(last):
        complete = readable_resume_checkpoint(cfg.OUTPUT_DIR)
        hint = (f"The newest complete checkpoint there is {complete}: `dl_test MODEL.WEIGHTS "
                f"{complete}`." if complete else "Give the checkpoint to evaluate: `dl_test "
                "MODEL.WEIGHTS path/to/model_final.pth`.")
        raise MissingWeightsError(f"{pointer} names {os.path.basename(last)}, which does not "
                                  f"exist ({last}). {hint}")
    if last:
        return last, f"the checkpoint {pointer} names"
    if weights:
        return weights, "MODEL.WEIGHTS"
    raise MissingWeightsError(
        f"dl_test needs the weights to evaluate, and {cfg.OUTPUT_DIR} holds no training run "
        f"({pointer} does not exist). Set MODEL.WEIGHTS to a checkpoint file "
        "(`dl_test MODEL.WEIGHTS path/to/model_final.pth`), or run it where `dl_train` wrote its "
        "checkpoints. To score the random initialisation on purpose (a smoke test), pass "
        "`MODEL.WEIGHTS none`.")


def weights_to_evaluate(cfg, resume: bool = False, random_weights: bool = False) -> str:
    """The checkpoint ``dl_test`` evaluates: ``MODEL.WEIGHTS``; when that is empty (or with
    ``resume``) the file ``OUTPUT_DIR/last_checkpoint`` names; "" (random initialisation) for
    ``MODEL.WEIGHTS none`` or ``random_weights`` (``--random-weights``, its alias).

    Raises ``MissingWeightsError`` when there is nothing to evaluate, or the pointer names a
    missing file, saying how to give the weights.
    """
    return _weights_and_source(cfg, resume, random_weights)[0]


def inference_output_dir(output_dir: str, weights: str, stop: int = -1) -> str:
    """``output_dir/inference/<weights file name without extension>`` (``random_init`` for "");
    ``<name>.exit<K>`` for a run stopped at exit ``stop`` = K >= 1 (``MODEL.EXIT.STOP``), so it
    never overwrites the all-exits results of the same weights."""
    name = os.path.splitext(os.path.basename(weights.rstrip("/")))[0] if weights else ""
    name = name or _RANDOM_INIT
    if stop is not None and int(stop) > 0:
        name = f"{name}.exit{int(stop)}"
    return os.path.join(output_dir, "inference", name)


def exit_stop(cfg) -> int:
    """``MODEL.EXIT.STOP`` (the last exit to run, 1-based; -1 / 0 = all), -1 for a config
    without that key (a model without exits)."""
    exit_cfg = cfg.MODEL.get("EXIT")
    return int(exit_cfg.get("STOP", -1)) if exit_cfg is not None else -1


def exit_flag_opts(cfg, k: int, playground_dir: str, prog: str = "dl_test",
                   opts: Sequence[str] = ()) -> list:
    """The overrides ``--exit K`` stands for, ``["MODEL.EXIT.STOP", "K"]`` (after ``opts``, so
    it wins over the playground's config.py); a ``ConfigError`` naming the flag and the fix when
    the playground's config has no ``MODEL.EXIT.STOP`` (its model has no exits) or the command
    line's ``opts`` also set it, to another value."""
    exit_cfg = cfg.MODEL.get("EXIT")
    if exit_cfg is None or "STOP" not in exit_cfg:
        raise ConfigError(
            f"--exit {k} sets MODEL.EXIT.STOP, but the config of {playground_dir} has no "
            f"MODEL.EXIT.STOP: its model has no early exits that can stop. Drop --exit, or run "
            f"{prog} in a playground of a family with exits (one whose config adds "
            "MODEL.EXIT.STOP, e.g. family='anytime').")
    given = [v for key, v in zip(opts[::2], opts[1::2]) if key == "MODEL.EXIT.STOP"]
    if given and int(given[-1]) != int(k):
        raise ConfigError(
            f"--exit {k} contradicts the override MODEL.EXIT.STOP {given[-1]}; give one of them "
            f"(`{prog} --exit {k}`).")
    return ["MODEL.EXIT.STOP", str(int(k))]


def _evaluate(trainer_cls, cfg, train_cfg, model, weights: str):
    """Load ``weights`` (strictly unless MODEL.WEIGHTS_STRICT False) and run ``trainer_cls.test``
    with every output under ``cfg.OUTPUT_DIR`` (the inference folder)."""
    # Built on the training run's folder: a file this checkpointer wrote there is trusted on load.
    checkpointer = trainer_cls.build_checkpointer(train_cfg, model)
    if weights:
        checkpointer.load(weights, checkpointables=[], strict=cfg.MODEL.WEIGHTS_STRICT)
    if comm.is_main_process():  # the weights loaded: this config describes what is evaluated
        path = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
        with atomic_write(path) as f:
            f.write(cfg.dump())
        logger.info(f"Full config saved to {path}")
    names = list(cfg.DATASETS.TEST)
    evaluators = [trainer_cls.build_evaluator(
        cfg, name, cfg.OUTPUT_DIR if len(names) == 1 else os.path.join(cfg.OUTPUT_DIR, name))
        for name in names]
    return trainer_cls.test(cfg, model, evaluators=evaluators)


def run(args):
    """The body every process runs (after ``launch`` set up the process group)."""
    cfg = playground.load_config(args.playground, args.opts)
    source = ""
    if args.eval_only:  # the evaluated file becomes MODEL.WEIGHTS (also in config.yaml)
        cfg.MODEL.WEIGHTS, source = _weights_and_source(cfg, args.resume,
                                                        getattr(args, "random_weights", False))
    elif cfg.MODEL.WEIGHTS.strip().lower() == _NO_WEIGHTS:
        cfg.MODEL.WEIGHTS = ""  # training from scratch, said explicitly
    # A pruned / narrower checkpoint (the one resumed from, or MODEL.WEIGHTS) rebuilds its network.
    # (readable_resume_checkpoint: the one --resume will use when last_checkpoint's is damaged)
    apply_checkpoint_architecture(
        cfg, (args.resume and readable_resume_checkpoint(cfg.OUTPUT_DIR)) or None)
    train_cfg = cfg.clone()
    if args.eval_only:  # never overwrite the training run's config.yaml / results.json
        cfg.OUTPUT_DIR = inference_output_dir(cfg.OUTPUT_DIR, cfg.MODEL.WEIGHTS, exit_stop(cfg))
    # First, so that net.py's import and build log to OUTPUT_DIR/log.txt; config.yaml comes later.
    default_setup(cfg, args, save_config=False)
    moved = getattr(args, "moved_aside", None)
    if moved:
        logger.warning(f"--overwrite: the earlier run in {train_cfg.OUTPUT_DIR} was moved to "
                       f"{moved}")
    if args.eval_only and cfg.MODEL.WEIGHTS:
        logger.info(f"Evaluating {cfg.MODEL.WEIGHTS} ({source}); outputs go to {cfg.OUTPUT_DIR}")
    elif args.eval_only:
        logger.warning("MODEL.WEIGHTS none: evaluating the randomly initialised model on purpose; "
                       f"outputs go to {cfg.OUTPUT_DIR}")
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
    if comm.is_main_process():  # built and loaded: the config is valid, record it
        save_run_config(cfg, start_iter=trainer.start_iter)
    return trainer.train()


def _owns_output_dir(args) -> bool:
    """Whether this process locks (and prepares) the run's folder: machine 0's launching process,
    or global rank 0 under an external launcher (torchrun, SLURM), which runs here."""
    external = distributed_env_from_launcher()
    if external is not None:
        return external["rank"] == 0
    return args.machine_rank == 0


def main(argv: Optional[Sequence[str]] = None, eval_only: bool = False,
         prog: str = "dl_train") -> int:
    """Parse the command line, check the playground and overrides, then ``launch`` ``run``."""
    parser = default_argument_parser(prog=prog)
    args = parse_args(parser, argv)
    if eval_only:
        args.eval_only = True
    # Check the folder and the overrides once here, so a mistake gives one clear message
    # instead of one traceback per spawned process.
    lock = contextlib.nullcontext()
    try:
        # Absolute, so every process (and the log) names the same folder.
        args.playground = playground.find_playground(args.playground)
        cfg = playground.load_config(args.playground, args.opts)  # checks the values too
        if getattr(args, "exit", None) is not None:  # --exit K: MODEL.EXIT.STOP K, checked
            args.opts = list(args.opts) + exit_flag_opts(cfg, args.exit, args.playground, prog,
                                                         args.opts)
            cfg = playground.load_config(args.playground, args.opts)
        check_device_available(cfg)  # one line, not a CUDA traceback per process
        check_weights_file(cfg.MODEL.WEIGHTS)  # a text / empty / truncated file: one line too
        # --num-gpus above the GPUs / CPU cores: refused before OUTPUT_DIR is touched
        check_launch(args.num_gpus, args.num_machines,
                     "gloo" if cfg.MODEL.DEVICE == "cpu" else "nccl")
        if args.eval_only:
            weights = weights_to_evaluate(cfg, args.resume, args.random_weights)
            check_weights_file(weights)  # also the file last_checkpoint names
            run_dir = inference_output_dir(cfg.OUTPUT_DIR, weights, exit_stop(cfg))
        else:
            run_dir = cfg.OUTPUT_DIR
        if _owns_output_dir(args):
            # Held until every process of the run has ended: one run per folder at a time.
            lock = RunLock(run_dir, "dl_test" if args.eval_only else "training run").acquire()
            if not args.eval_only:
                args.moved_aside = prepare_training_dir(run_dir, args.resume, args.overwrite, prog)
                if args.moved_aside:
                    print(f"{prog}: --overwrite: moved the earlier run in {run_dir} to "
                          f"{args.moved_aside}", file=sys.stderr)
    except (playground.PlaygroundError, ConfigError, MissingWeightsError, RunDirError,
            CheckpointReadError, LaunchError) as e:
        if isinstance(lock, RunLock):
            lock.release()
        parser.exit(2, f"{prog}: error: {e}\n")
    backend = "gloo" if cfg.MODEL.DEVICE == "cpu" else "nccl"
    with lock:
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
