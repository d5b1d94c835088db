"""The standard set-up shared by ``dl_train``/``dl_test`` and user scripts.

* ``default_argument_parser``: ``--num-gpus --num-machines --machine-rank --dist-url --resume
  --eval-only --exit K`` then ``KEY VALUE`` overrides; ``parse_args`` rejects flags placed after
  them.
* ``default_setup``: logging per rank, environment report, ``OUTPUT_DIR/config.yaml``, seeding,
  determinism and cudnn flags.
* ``DefaultTrainer(cfg, model)``: optimizer, LR schedule, train loader, DDP, checkpointing,
  evaluation and writers built from the config; subclass and override a ``build_*`` classmethod
  to change one piece (a playground's ``net.py`` may define such a ``Trainer``).
"""
import argparse
import json
import logging
import os
import random
import warnings
from collections import OrderedDict
from typing import List, Optional, Sequence

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from dl_lib.config import CfgNode
from dl_lib.playground import LOGGER_NAME as PLAYGROUND_LOGGER
from dl_lib.utils import comm
from dl_lib.utils.collect_env import collect_env_info
from dl_lib.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter
from dl_lib.utils.file_io import atomic_write
from dl_lib.utils.logger import setup_logger

from . import hooks
from .train_loop import SimpleTrainer, StorageCheckpointable

__all__ = [
    "default_argument_parser", "parse_args", "default_setup", "default_writers", "seed_all_rng",
    "create_ddp_model", "DefaultTrainer",
]

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def default_argument_parser(prog: Optional[str] = None, epilog: Optional[str] = None
                            ) -> argparse.ArgumentParser:
    """The parser of ``dl_train`` / ``dl_test``; parse with :func:`parse_args`."""
    epilog = epilog or f"""
Run inside a playground folder (playground/<Group>/<Name>/ holding config.py and net.py):

  cd playground/<Group>/<Name>
  {prog or 'dl_train'} --num-gpus 8
  {prog or 'dl_train'} --num-gpus 2 MODEL.DEVICE cpu SOLVER.LR_SCHEDULER.MAX_ITER 100
  {prog or 'dl_train'} --resume                      # continue from OUTPUT_DIR/last_checkpoint
  dl_test MODEL.WEIGHTS /path/to/model_final.pth

Several machines: run on each (same --dist-url, the address of machine 0):
  {prog or 'dl_train'} --num-gpus 8 --num-machines 2 --machine-rank 0 --dist-url tcp://10.0.0.1:29500
Under torchrun (RANK/WORLD_SIZE/LOCAL_RANK set) or inside an srun step (SLURM_STEP_ID set) the
process joins the launcher's group instead of spawning; an sbatch script spawns as usual.
"""
    parser = argparse.ArgumentParser(prog=prog, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--playground", default=".", metavar="DIR",
                        help="the playground folder (default: the current folder)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUTPUT_DIR/last_checkpoint (model, optimizer, "
                             "schedule, iteration); without it MODEL.WEIGHTS initialises the "
                             "model only")
    parser.add_argument("--eval-only", action="store_true", help="evaluate only, no training")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new training run in an OUTPUT_DIR that holds an earlier one: "
                             "the earlier run is moved to OUTPUT_DIR.old-<time>/ (not deleted); "
                             "without it (and without --resume) such a folder is refused")
    parser.add_argument("--random-weights", action="store_true",
                        help="with --eval-only / dl_test: the same as MODEL.WEIGHTS none, evaluate "
                             "the random initialisation on purpose (a smoke test)")
    parser.add_argument("--exit", type=int, default=None, metavar="K",
                        help="models with early exits: run only up to exit K (1-based, the "
                             "original's stopK; -1 or 0: all exits), the same as MODEL.EXIT.STOP "
                             "K; dl_test then writes under OUTPUT_DIR/inference/<weights>.exitK/")
    parser.add_argument("--num-gpus", type=int, default=1,
                        help="processes per machine (GPUs; CPU processes with MODEL.DEVICE cpu); "
                             "more than the visible GPUs, or than the CPU cores with "
                             "MODEL.DEVICE cpu, is refused")
    parser.add_argument("--num-machines", type=int, default=1, help="total number of machines")
    parser.add_argument("--machine-rank", type=int, default=0,
                        help="the rank of this machine (unique per machine)")
    parser.add_argument("--dist-url", default="auto",
                        help="initialisation URL of the process group, tcp://<machine 0>:<port>; "
                             "'auto' picks a free local port (one machine only)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="config overrides, e.g. MODEL.WEIGHTS x.pth SOLVER.IMS_PER_BATCH 4; "
                             "they come after every flag")
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None
               ) -> argparse.Namespace:
    """``parser.parse_args`` plus the check that no flag hides among the overrides.

    argparse hands everything after the first ``KEY`` to ``opts``; a flag written there
    (``dl_train MODEL.WEIGHTS x --num-gpus 2``) would otherwise be silently ignored.
    """
    args = parser.parse_args(argv)
    known_flags = set(parser._option_string_actions)
    for i, token in enumerate(args.opts):
        is_key_position = i % 2 == 0
        if token in known_flags or token.startswith("--") or (is_key_position and token.startswith("-")):
            parser.error(
                f"the flag {token!r} comes after the KEY VALUE overrides "
                f"({' '.join(args.opts[:i]) or 'none'}); put every flag first, e.g. "
                f"`{parser.prog} {token} ... {' '.join(args.opts[:i])}`"
            )
    if len(args.opts) % 2:
        parser.error(f"overrides must come in KEY VALUE pairs, got an odd number: {args.opts}")
    if getattr(args, "exit", None) is not None and args.exit < -1:
        parser.error(f"--exit {args.exit}: give the last exit to run, 1-based (1 = the cheapest), "
                     "or -1 / 0 for all exits")
    return args


# ---------------------------------------------------------------------------------------------
# Set-up of a process
# ---------------------------------------------------------------------------------------------
def seed_all_rng(seed: Optional[int] = None) -> int:
    """Seed Python, NumPy and torch; None draws a seed from the OS. Returns the seed used."""
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little") % (2 ** 31)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)  # for processes started later (loader workers)
    return seed


def default_setup(cfg: CfgNode, args: Optional[argparse.Namespace] = None,
                  save_config: bool = True) -> None:
    """Per-process set-up at the start of a run.

    1. Logging to the console (main process) and to ``OUTPUT_DIR/log.txt`` (``.rankN`` others).
    2. Log the environment, the command line and the full config; with ``save_config`` the main
       process writes it to ``OUTPUT_DIR/config.yaml`` (``dl_train`` passes False and writes it
       once the model is built and its weights loaded: ``dl_lib.engine.run_dir.save_run_config``).
    3. Seed every RNG with ``SEED + rank`` (``SEED < 0``: a random seed, logged).
    4. ``DETERMINISTIC``: deterministic kernels (errors on ops without one) and cudnn flags;
       otherwise ``CUDNN_BENCHMARK`` sets ``cudnn.benchmark`` (training only).
    """
    output_dir = cfg.OUTPUT_DIR
    if not output_dir:
        raise ValueError("cfg.OUTPUT_DIR is empty; load configs with dl_lib.playground.load_config "
                         "(which derives it) or set OUTPUT_DIR.")
    rank = comm.get_rank()
    if comm.is_main_process():
        os.makedirs(output_dir, exist_ok=True)
    comm.synchronize()  # others write their log files into the folder the main process made
    os.makedirs(output_dir, exist_ok=True)
    setup_logger(output_dir, distributed_rank=rank, name="dl_lib")
    setup_logger(output_dir, distributed_rank=rank, name="fvcore")
    # Modules of playground folders (config.py, net.py) log under dl_playground.<folder>.
    setup_logger(output_dir, distributed_rank=rank, name=PLAYGROUND_LOGGER)

    logger.info(f"Rank of current process: {rank}. World size: {comm.get_world_size()}")
    logger.info("Environment info:\n" + collect_env_info())
    if args is not None:
        logger.info(f"Command line arguments: {args}")
    if save_config and comm.is_main_process():
        path = os.path.join(output_dir, "config.yaml")
        with atomic_write(path) as f:
            f.write(cfg.dump())
        logger.info(f"Full config saved to {path}")
    logger.info(f"Running with full config:\n{cfg.dump()}")

    seed = seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + rank)
    logger.info(f"Using random seed {seed}" + (" (SEED < 0: drawn at random)" if cfg.SEED < 0 else ""))

    if cfg.DETERMINISTIC:
        # cuBLAS needs a fixed workspace for deterministic results; it is read when CUDA starts.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        logger.info("DETERMINISTIC: deterministic algorithms on, cudnn.benchmark off.")
    else:
        eval_only = bool(args is not None and getattr(args, "eval_only", False))
        torch.backends.cudnn.benchmark = bool(cfg.CUDNN_BENCHMARK) and not eval_only


def default_writers(output_dir: str, max_iter: Optional[int] = None, window_size: int = 20):
    """Console line, ``output_dir/metrics.json`` and TensorBoard event files."""
    return [
        CommonMetricPrinter(max_iter, window_size=window_size),
        JSONWriter(os.path.join(output_dir, "metrics.json"), window_size=window_size),
        TensorboardXWriter(output_dir, window_size=window_size),
    ]


def create_ddp_model(model: torch.nn.Module, cfg: CfgNode) -> torch.nn.Module:
    """Wrap ``model`` in ``DistributedDataParallel`` when there are several processes.

    ``MODEL.DDP.FIND_UNUSED_PARAMETERS`` must be True for networks that skip parameters per
    iteration (routing, exits, gates); ``MODEL.DDP.BROADCAST_BUFFERS`` False keeps each rank's
    BN buffers (right with SyncBN/PreciseBN, and saves a broadcast per step).
    """
    if comm.get_world_size() == 1:
        return model
    kwargs = dict(find_unused_parameters=cfg.MODEL.DDP.FIND_UNUSED_PARAMETERS,
                  broadcast_buffers=cfg.MODEL.DDP.BROADCAST_BUFFERS)
    device = next(model.parameters()).device
    if device.type == "cuda":
        kwargs["device_ids"] = [device.index if device.index is not None else comm.get_local_rank()]
    with warnings.catch_warnings():
        # torch >= 2.14 deprecates broadcast_buffers in favour of forward_sync_buffers, whose
        # False still syncs at init; its own message says to keep broadcast_buffers=False until
        # init_sync_buffers exists, which is what rank-local BN statistics need.
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
        return DistributedDataParallel(model, **kwargs)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


# ---------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------
class DefaultTrainer(SimpleTrainer):
    """A ``SimpleTrainer`` built from a config, with the default hooks.

    Usage::

        trainer = DefaultTrainer(cfg, model)
        trainer.resume_or_load(resume=args.resume)
        trainer.train()

    Builds, through overridable classmethods: ``build_optimizer``, ``build_lr_scheduler``,
    ``build_train_loader``, ``build_test_loader``, ``build_evaluator``, ``build_checkpointer``;
    and ``build_hooks`` / ``build_writers``. The model is moved to ``MODEL.DEVICE`` and wrapped
    in DDP when there are several processes.

    Checkpoints hold the model, optimizer, LR scheduler (its iteration count only: a changed
    ``MAX_ITER`` is followed on resume), the metric histories and the iteration. With
    ``SEED >= 0`` a resume is exact: the train loader continues at the resumed iteration
    (``seek_train_loader``), samples are augmented under seeds of their stream position and each
    iteration starts from ``derive_seed(SEED, rank, iter)`` (``TrainerBase.iteration_seed``).
    """

    def __init__(self, cfg: CfgNode, model: torch.nn.Module):
        model = model.to(torch.device(cfg.MODEL.DEVICE))
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        ddp_model = create_ddp_model(model, cfg)
        super().__init__(ddp_model, data_loader, optimizer, grad_clip=cfg.SOLVER.GRAD_CLIP,
                         amp=cfg.SOLVER.AMP.ENABLED, amp_dtype=cfg.SOLVER.AMP.DTYPE)
        self.cfg = cfg
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        # "storage": the metric histories, so smoothed metrics continue exactly on resume.
        checkpointables = {"optimizer": optimizer, "scheduler": self.scheduler,
                           "storage": StorageCheckpointable(self)}
        if self.grad_scaler is not None:
            checkpointables["grad_scaler"] = self.grad_scaler
        self.checkpointer = self.build_checkpointer(cfg, model, **checkpointables)
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.LR_SCHEDULER.MAX_ITER
        # Per-iteration seeds (SEED >= 0): an iteration draws the same numbers after a resume.
        self.iteration_seed = cfg.SEED if cfg.SEED >= 0 else None
        self.register_hooks(self.build_hooks())

    # ---- resume / initialise ------------------------------------------------------------------
    def resume_or_load(self, resume: bool = True) -> None:
        """With ``resume`` and a checkpoint in ``OUTPUT_DIR`` (its ``last_checkpoint`` file):
        restore everything and continue after its iteration. Otherwise initialise the backbone
        from ``MODEL.PRETRAINED`` (if set; stops when less than half of it matched), then load
        the model weights from ``MODEL.WEIGHTS`` (if set; leniently, logging a table) and start
        at iteration 0; the iteration, optimizer and schedule stored in that file are ignored
        (fine-tuning must not skip iterations). A resume ignores ``MODEL.PRETRAINED``."""
        weights = self.cfg.MODEL.WEIGHTS
        resuming = resume and self.checkpointer.has_checkpoint()
        if resume and not resuming:
            logger.info(f"--resume: no checkpoint in {self.cfg.OUTPUT_DIR} (no last_checkpoint "
                        "file); starting a new run.")
        pretrained = self.cfg.MODEL.PRETRAINED
        if pretrained and not resuming:
            from dl_lib.checkpoint import find_backbone, load_pretrained_backbone

            load_pretrained_backbone(find_backbone(_unwrap(self.model)), pretrained)
        elif pretrained:
            logger.info(f"Resuming: MODEL.PRETRAINED={pretrained} is not loaded (the checkpoint "
                        "holds the trained backbone).")
        checkpoint = self.checkpointer.resume_or_load(weights, resume=resume) or {}
        if resuming:
            resumed_file = (getattr(self.checkpointer, "resumed_file", None)
                            or self.checkpointer.get_checkpoint_file())
            if "iteration" not in checkpoint:
                raise KeyError(
                    f"The checkpoint {resumed_file} has no 'iteration'; "
                    "it cannot be resumed. Use it as MODEL.WEIGHTS without --resume."
                )
            self.start_iter = int(checkpoint["iteration"]) + 1
            logger.info(
                f"Resumed from {resumed_file} (iteration "
                f"{checkpoint['iteration']}); training continues at iteration {self.start_iter} "
                f"of {self.max_iter}."
            )
            from dl_lib.data.build import seek_train_loader

            # The data order continues where it stopped instead of restarting at its first batch.
            if not seek_train_loader(self.data_loader, self.start_iter):
                logger.warning(
                    f"The train loader ({type(self.data_loader).__name__}) cannot continue at "
                    f"iteration {self.start_iter} (it is not dl_lib.data.build_train_loader's); "
                    "its data order restarts from the beginning, so this resume is not exact.")
        else:
            self.start_iter = 0
            if weights:
                logger.info(f"Initialised the model from MODEL.WEIGHTS={weights} (weights only); "
                            "starting at iteration 0.")
            else:
                logger.info("No MODEL.WEIGHTS: training from scratch (random initialisation), "
                            "starting at iteration 0.")

    def train(self):
        """Train from ``start_iter`` to ``MAX_ITER``; returns the last evaluation results."""
        super().train(self.start_iter, self.max_iter)
        return getattr(self, "_last_eval_results", None)

    # ---- hooks and writers ---------------------------------------------------------------------
    def build_hooks(self) -> List[hooks.HookBase]:
        """timer, LR, training statistics (main process, ``dl_lib.engine.tensorboard``),
        PreciseBN, checkpointer (main process), eval, writers (main process)."""
        cfg = self.cfg.clone()
        cfg.defrost()
        cfg.DATALOADER.NUM_WORKERS = 0  # the PreciseBN loader is short-lived

        ret = [hooks.IterationTimer(), hooks.LRScheduler()]
        if comm.is_main_process():
            # stats/ of the step's own forward, before PreciseBN's and evaluation's forwards
            from .tensorboard import TrainingStatsHook

            stats = TrainingStatsHook.for_model(self.model, cfg.LOG_PERIOD)
            if stats is not None:  # only for models with statistics to read
                ret.append(stats)
        if cfg.TEST.PRECISE_BN.ENABLED:
            ret.append(hooks.PreciseBN(cfg.TEST.EVAL_PERIOD, self.model,
                                       self.build_train_loader(cfg), cfg.TEST.PRECISE_BN.NUM_ITER))
        if comm.is_main_process():
            ret.append(hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD,
                                                  max_to_keep=cfg.SOLVER.CHECKPOINT_MAX_KEEP))
        if len(cfg.DATASETS.TEST):
            def test_and_save_results():
                # The bare model: DDP's forward could broadcast buffers, a collective that
                # hangs when ranks hold different numbers of test images.
                self._last_eval_results = self.test(self.cfg, _unwrap(self.model))
                return self._last_eval_results

            ret.append(hooks.EvalHook(cfg.TEST.EVAL_PERIOD, test_and_save_results))
        if comm.is_main_process():
            ret.append(hooks.PeriodicWriter(self.build_writers(), period=cfg.LOG_PERIOD))
        return ret

    def build_writers(self):
        return default_writers(self.cfg.OUTPUT_DIR, self.max_iter)

    # ---- builders (override in a subclass) -----------------------------------------------------
    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        from dl_lib.solver import build_optimizer

        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg: CfgNode, optimizer: torch.optim.Optimizer):
        from dl_lib.solver import build_lr_scheduler

        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        from dl_lib.data import build_train_loader

        return build_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        from dl_lib.data import build_test_loader

        return build_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_dir: Optional[str] = None):
        from dl_lib.evaluation import build_evaluator

        if output_dir is None:
            output_dir = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_evaluator(cfg, dataset_name, output_dir)

    @classmethod
    def build_test_time_model(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` behind multi-scale + flip (``TEST.AUG``) and/or sliding-window
        (``TEST.MODE "slide"``) inference when they are on; ``model`` itself otherwise."""
        from dl_lib.modeling.test_time import build_test_time_model

        bare = _unwrap(model)
        wrapped = build_test_time_model(cfg, bare)
        return model if wrapped is bare else wrapped

    @classmethod
    def build_checkpointer(cls, cfg: CfgNode, model: torch.nn.Module, **checkpointables):
        from dl_lib.checkpoint import Checkpointer

        # Every rank loads; only the main process writes.
        return Checkpointer(_unwrap(model), cfg.OUTPUT_DIR, save_to_disk=comm.is_main_process(),
                            **checkpointables)

    # ---- evaluation ----------------------------------------------------------------------------
    @classmethod
    def test(cls, cfg: CfgNode, model: torch.nn.Module, evaluators=None):
        """Evaluate ``model`` on every dataset of ``DATASETS.TEST`` (all ranks must call this).

        Returns on the main process ``{dataset: {"sem_seg": {...}}}``, or the inner dict when
        there is one dataset (detectron2's convention), and writes it to
        ``OUTPUT_DIR/results.json``; other ranks get ``{}``. With ``TEST.VIS_NUM_IMAGES > 0``
        also writes image | ground truth | prediction panels. For a model with exits
        (``sem_seg_exits``) also the per-exit report (``dl_lib.evaluation.exits.report_exits``):
        ``results["exits"]``, ``result.txt`` and ``exits_tradeoff.png``. Always (main process)
        the per-class IoU bars ``per_class_iou.png`` (``dl_lib.evaluation.plots``). During
        training also the TensorBoard ``eval/`` scalars, figure and ``TEST.VIS_IMAGES`` images
        (``dl_lib.engine.tensorboard.record_evaluation``).
        """
        from dl_lib.evaluation import inference_on_dataset, write_panels
        from dl_lib.evaluation.exits import report_exits, run_label
        from dl_lib.evaluation.plots import report_class_iou

        from .tensorboard import record_evaluation

        names = list(cfg.DATASETS.TEST)
        if evaluators is not None and len(evaluators) != len(names):
            raise ValueError(f"{len(evaluators)} evaluators for {len(names)} test datasets {names}")
        # TEST.AUG / TEST.MODE "slide": evaluate (and draw panels) through the test-time wrapper
        model = cls.build_test_time_model(cfg, model)
        results = OrderedDict()
        for idx, name in enumerate(names):
            loader = cls.build_test_loader(cfg, name)
            evaluator = evaluators[idx] if evaluators is not None else cls.build_evaluator(cfg, name)
            training = model.training
            model.eval()  # also done by inference_on_dataset; the EvalHook relies on the restore
            try:
                with torch.no_grad():
                    res = inference_on_dataset(model, loader, evaluator,
                                               cost_conventions=cfg.TEST.COST_CONVENTIONS)
            finally:
                model.train(training)
            if comm.is_main_process():
                results[name] = res or {}
                logger.info(f"Evaluation results for {name}:\n{_format_results(res or {})}")
                # OUTPUT_DIR for the usual single test set; one folder per set otherwise.
                vis_root = (cfg.OUTPUT_DIR if len(names) == 1
                            else os.path.join(cfg.OUTPUT_DIR, "inference", name))
                # multi-exit models: results["exits"], result.txt and exits_tradeoff.png
                label = run_label(cfg.OUTPUT_DIR) + (f" {name}" if len(names) > 1 else "")
                report_exits(results[name], vis_root, model=_unwrap(model), run=label)
                report_class_iou(results[name], name, vis_root, run=run_label(cfg.OUTPUT_DIR))
                # during training: eval/ scalars, the exits figure and TEST.VIS_IMAGES images
                record_evaluation(cfg, model, name, results[name],
                                  prefix="eval/" if len(names) == 1 else f"eval/{name}/",
                                  batches=lambda n=name: cls.build_test_loader(_no_workers(cfg), n))
                if cfg.TEST.VIS_NUM_IMAGES > 0:
                    write_panels(cfg, _unwrap(model), name, vis_root, cfg.TEST.VIS_NUM_IMAGES)
        if not comm.is_main_process():
            return {}
        path = os.path.join(cfg.OUTPUT_DIR, "results.json")
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        with atomic_write(path) as f:  # a crash mid-write keeps the previous results.json
            json.dump(results, f, indent=2, default=_json_default)
        logger.info(f"Results saved to {path}")
        if len(results) == 1:
            return list(results.values())[0]
        return results


def _no_workers(cfg: CfgNode) -> CfgNode:
    """``cfg`` with ``DATALOADER.NUM_WORKERS 0``: a loader read for a few images only."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.DATALOADER.NUM_WORKERS = 0
    return cfg


def _format_results(results: dict) -> str:
    flat = hooks.flatten_results_dict(results)
    return "\n".join(f"  {k}: {v:.4f}" if isinstance(v, float) else f"  {k}: {v}"
                     for k, v in flat.items())


def _json_default(obj):
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, np.ndarray) or torch.is_tensor(obj):
        return obj.tolist()
    return str(obj)
