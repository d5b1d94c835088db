"""Start ``main_func`` on every process of a (possibly multi-machine) job.

Three ways a job runs, chosen automatically:

* **torchrun / torch.distributed.elastic**: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and
  ``MASTER_ADDR``/``MASTER_PORT``) are set; this process joins the group with ``env://``.
* **SLURM**, inside an ``srun`` step with several tasks: ``SLURM_PROCID``/``SLURM_STEP_NUM_TASKS``/
  ``SLURM_LOCALID``/``SLURM_NODEID`` are translated to the variables above, ``MASTER_ADDR`` is the
  first host of the step's node list; then as torchrun. Only a step joins: an ``sbatch`` script
  (or ``salloc`` shell) is one process even when the job has ``--ntasks 8``, so it spawns as
  below (see ``in_srun_step``).
* Otherwise ``num_gpus_per_machine`` processes are spawned on this machine (detectron2's
  ``launch``), connecting at ``dist_url``; ``"auto"`` picks a free local port (one machine only).

Backend: NCCL for GPUs, Gloo for CPU processes (``backend="gloo"``), which is how the
distributed code is tested on machines without a GPU. Every process group gets a 30-minute
timeout, so a rank that hangs (e.g. skipped a collective) surfaces as an error.
"""
import logging
import os
import re
import socket
import sys
from datetime import timedelta
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dl_lib.utils import comm

__all__ = ["DEFAULT_TIMEOUT", "launch", "distributed_env_from_launcher", "in_srun_step"]

DEFAULT_TIMEOUT = timedelta(minutes=30)

logger = logging.getLogger(__name__)


def _find_free_port() -> int:
    """A TCP port free on this machine right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _first_slurm_host(nodelist: str) -> str:
    """First host name of a SLURM node list such as ``gpu[07-09,12],cpu01`` → ``gpu07``."""
    m = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist.strip())
    if m is None:
        raise ValueError(f"Cannot parse SLURM_JOB_NODELIST={nodelist!r}")
    prefix, ranges = m.group(1), m.group(3)
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


# Step ids SLURM gives to steps that srun did not launch (slurm.h): the batch script
# (SLURM_BATCH_SCRIPT, 0xfffffffe), the external container (0xffffffff), pending (0xfffffffd) and
# the interactive step of salloc (0xfffffffa). Some versions name them instead ("batch").
_FIRST_SPECIAL_SLURM_STEP_ID = 0xFFFFFFF0


def in_srun_step(environ: Optional[dict] = None) -> bool:
    """True when this process is a task of an ``srun`` step, i.e. ``SLURM_STEP_ID`` (or the older
    ``SLURM_STEPID``) holds an ordinary step number.

    What SLURM sets: ``srun`` exports ``SLURM_STEP_ID`` = the step number (0, 1, ...) plus
    ``SLURM_STEP_NUM_TASKS``/``SLURM_STEP_NODELIST`` to every task. The batch script of ``sbatch``
    also has ``SLURM_PROCID=0`` and, with ``--ntasks N``, ``SLURM_NTASKS=N``, but no step id
    (older versions) or the batch step's id 4294967294 / ``batch`` (newer ones): it is one process
    that should start its own workers, not wait for N - 1 peers that will never come.
    """
    env = os.environ if environ is None else environ
    step = env.get("SLURM_STEP_ID", env.get("SLURM_STEPID"))
    if step is None or not step.strip().isdigit():
        return False
    return int(step) < _FIRST_SPECIAL_SLURM_STEP_ID


def distributed_env_from_launcher(environ: Optional[dict] = None) -> Optional[dict]:
    """The ranks an external launcher gave this process, or None when there is none.

    Returns ``{"rank", "world_size", "local_rank", "local_world_size", "master_addr",
    "master_port"}``; for SLURM the torchrun variables are also written to ``environ`` (so
    ``init_method="env://"`` finds them).
    """
    env = os.environ if environ is None else environ
    if all(k in env for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        world = int(env["WORLD_SIZE"])
        return {
            "rank": int(env["RANK"]), "world_size": world, "local_rank": int(env["LOCAL_RANK"]),
            "local_world_size": int(env.get("LOCAL_WORLD_SIZE", world)),
            "master_addr": env.get("MASTER_ADDR"), "master_port": env.get("MASTER_PORT"),
            "launcher": "torchrun",
        }
    # Outside an srun step (sbatch script, salloc shell) and in a one-task step this process is
    # an ordinary shell: spawn as usual then. The step's own counts win over the job's.
    world = int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1")))
    if "SLURM_PROCID" in env and in_srun_step(env) and world > 1:
        nodes = int(env.get("SLURM_STEP_NUM_NODES",
                            env.get("SLURM_NNODES", env.get("SLURM_JOB_NUM_NODES", "1"))))
        nodelist = env.get("SLURM_STEP_NODELIST", env.get("SLURM_JOB_NODELIST"))
        info = {
            "rank": int(env["SLURM_PROCID"]), "world_size": world,
            "local_rank": int(env.get("SLURM_LOCALID", "0")),
            "local_world_size": world // max(nodes, 1),
            "master_addr": env.get("MASTER_ADDR") or _first_slurm_host(nodelist or ""),
            # Every task derives the same port from the job id; distinct jobs get distinct ports.
            "master_port": env.get("MASTER_PORT") or str(
                15000 + int(env.get("SLURM_JOB_ID", "0")) % 20000),
            "launcher": "slurm",
        }
        env.update({
            "RANK": str(info["rank"]), "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(info["local_rank"]), "LOCAL_WORLD_SIZE": str(info["local_world_size"]),
            "NODE_RANK": env.get("SLURM_NODEID", "0"),
            "MASTER_ADDR": info["master_addr"], "MASTER_PORT": str(info["master_port"]),
        })
        return info
    return None


def _default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def launch(main_func: Callable, num_gpus_per_machine: int, num_machines: int = 1,
           machine_rank: int = 0, dist_url: Optional[str] = None, args: Sequence = (),
           timeout: timedelta = DEFAULT_TIMEOUT, backend: Optional[str] = None):
    """Run ``main_func(*args)`` on every process of the job.

    Args:
        main_func: a module-level function (it is pickled for spawned processes).
        num_gpus_per_machine: processes per machine (GPUs, or CPU processes with Gloo).
        num_machines, machine_rank: the machines of the job and this one's index.
        dist_url: ``tcp://host:port`` of machine 0, ``"auto"``/None for a free local port
            (one machine only), or ``file://...``.
        backend: "nccl" or "gloo"; default NCCL when CUDA is available, else Gloo.

    Returns ``main_func``'s result when it runs in this process (one process, or joined an
    external launcher); None after spawning.
    """
    backend = (backend or _default_backend()).lower()
    external = distributed_env_from_launcher()
    if external is not None:
        return _run_joined(main_func, args, external, timeout, backend, num_gpus_per_machine,
                           num_machines)

    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1:
        return main_func(*args)

    if dist_url in (None, "", "auto"):
        if num_machines != 1:
            raise ValueError(
                "--dist-url auto only works on one machine; with --num-machines > 1 give "
                "tcp://<address of machine 0>:<port> (the same on every machine)."
            )
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    if num_machines > 1 and dist_url.startswith("file://"):
        logger.warning("file:// init is unreliable across machines; prefer tcp://")
    if backend == "nccl" and num_gpus_per_machine > torch.cuda.device_count():
        raise ValueError(
            f"--num-gpus {num_gpus_per_machine} but only {torch.cuda.device_count()} GPUs are "
            "visible; for CPU processes use MODEL.DEVICE cpu."
        )
    mp.start_processes(
        _distributed_worker, nprocs=num_gpus_per_machine,
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, tuple(args),
              timeout, backend),
        daemon=False, start_method="spawn",
    )
    return None


def _distributed_worker(local_rank, main_func, world_size, num_gpus_per_machine, machine_rank,
                        dist_url, args, timeout, backend):
    global_rank = machine_rank * num_gpus_per_machine + local_rank
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    # Libraries that read these (e.g. loggers, evaluators) see the same ranks as under torchrun.
    os.environ.update({"RANK": str(global_rank), "LOCAL_RANK": str(local_rank),
                       "WORLD_SIZE": str(world_size), "LOCAL_WORLD_SIZE": str(num_gpus_per_machine)})
    try:
        dist.init_process_group(backend=backend, init_method=dist_url, world_size=world_size,
                                rank=global_rank, timeout=timeout)
    except Exception as e:
        raise RuntimeError(f"Process group URL {dist_url} could not be reached: {e}") from e
    try:
        _after_init(num_gpus_per_machine)
        main_func(*args)
        _leave_together()
    finally:
        _shutdown()
    _exit_spawned_worker()


def _exit_spawned_worker() -> None:
    """End a spawned worker whose work is done without interpreter finalisation.

    Now and then (about one run in five on the 2-core dev VM, never reproduced outside pytest)
    a Gloo worker aborted during finalisation with "terminate called without an active
    exception", after its group was destroyed; the parent then reports a finished run as failed.
    Nothing is left to clean up here, so flush and leave with exit code 0.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)


def _run_joined(main_func, args, env: dict, timeout, backend, num_gpus_per_machine, num_machines):
    """Join the group an external launcher (torchrun, SLURM) set up, and run main_func here."""
    local_world = env["local_world_size"]
    if num_gpus_per_machine not in (1, local_world) or num_machines != 1:
        logger.warning(
            f"Started by {env['launcher']} ({env['world_size']} processes, {local_world} per "
            f"machine): --num-gpus {num_gpus_per_machine} / --num-machines {num_machines} are "
            "ignored; the launcher's process counts are used."
        )
    if backend == "nccl":
        torch.cuda.set_device(env["local_rank"])
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group(backend=backend, init_method="env://", timeout=timeout)
    try:
        _after_init(local_world)
        result = main_func(*args)
        if owns_group:
            _leave_together()
        return result
    finally:
        if owns_group:
            _shutdown()


def _after_init(num_per_machine: int) -> None:
    comm.create_local_process_group(num_per_machine)
    # A barrier right after init makes a rank that cannot connect fail here, not in training.
    comm.synchronize()


def _leave_together() -> None:
    """Barrier before tearing the group down: a Gloo group destroyed while a peer still talks to
    it aborts that peer ("terminate called without an active exception"). Success path only: after
    an error the other ranks may never arrive."""
    comm.synchronize()


def _shutdown() -> None:
    """Destroy the groups this module created, so ``launch`` can run again in the same process."""
    comm._LOCAL_PROCESS_GROUP = None  # created by _after_init; invalid once the world is gone
    comm._gloo_group.cache_clear()
    if dist.is_initialized():
        dist.destroy_process_group()
