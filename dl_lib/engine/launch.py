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

Spawned jobs end together (``launch`` returns only when every worker has stopped):

* ``--num-gpus`` above what this machine has is refused before anything starts
  (``LaunchError``): with NCCL above the visible GPUs, with Gloo above the CPU cores this
  process may use (each worker already runs its own intra-op threads; more processes than
  cores only slow the job down and multiply its memory).
* A worker that raises stops the others (``grace_s`` to end by themselves, then SIGTERM, then
  SIGKILL) and ``launch`` raises ``WorkerError`` with the traceback of the rank that failed
  *first*: its peers then fail too ("Connection closed by peer"), and that echo is not the cause.
* Ctrl-C (SIGINT to the parent, or to the whole process group from a terminal) is passed on to
  every worker, which stops at its next Python instruction; the parent waits ``grace_s`` for
  them, then terminates what is left and re-raises ``KeyboardInterrupt`` (non-zero exit).
  Checkpoints are written atomically (``dl_lib.checkpoint``), so the last one stays loadable.
"""
import json
import logging
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from datetime import timedelta
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dl_lib.utils import comm

__all__ = ["DEFAULT_TIMEOUT", "launch", "distributed_env_from_launcher", "in_srun_step",
           "check_launch", "check_num_processes", "available_cpu_cores", "LaunchError",
           "WorkerError"]

DEFAULT_TIMEOUT = timedelta(minutes=30)
# Seconds the workers get to stop by themselves after a peer failed or after Ctrl-C, before
# SIGTERM (and as long again before SIGKILL): enough to finish a checkpoint write.
DEFAULT_GRACE_S = 10.0


class LaunchError(ValueError):
    """The job cannot start as asked (e.g. more processes than GPUs or CPU cores)."""


class WorkerError(RuntimeError):
    """A spawned worker failed; the message holds the traceback of the first one that did."""

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


def available_cpu_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under taskset or a container's
    cpuset), falling back to ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_num_processes(num_per_machine: int, backend: str) -> None:
    """Refuse a process count this machine cannot run (before anything is spawned).

    Args:
        num_per_machine: ``--num-gpus``, processes to start on this machine.
        backend: "nccl" (one GPU each: at most the visible GPUs) or "gloo" (CPU processes: at
            most the CPU cores this process may use, ``available_cpu_cores()``).

    Raises ``LaunchError`` naming the flag, the value, what the machine has and the fix. Refusing
    rather than clamping keeps the job what the command line says (``IMS_PER_BATCH`` is split
    over the processes, the log's world size is the one asked for).
    """
    if num_per_machine < 1:
        raise LaunchError(f"--num-gpus {num_per_machine}: the number of processes per machine "
                          "must be at least 1.")
    if backend == "nccl":
        gpus = torch.cuda.device_count()
        if num_per_machine > gpus:
            raise LaunchError(
                f"--num-gpus {num_per_machine} but only {gpus} GPU(s) are visible on this machine; "
                f"use --num-gpus {max(gpus, 1)} or fewer"
                + (", or MODEL.DEVICE cpu for CPU processes." if gpus == 0 else "."))
        return
    cores = available_cpu_cores()
    if num_per_machine > cores:
        raise LaunchError(
            f"--num-gpus {num_per_machine} starts {num_per_machine} CPU processes (MODEL.DEVICE "
            f"cpu, Gloo) but this machine gives this process {cores} CPU core(s); use --num-gpus "
            f"{cores} or fewer (the global batch SOLVER.IMS_PER_BATCH stays the same).")


def check_launch(num_gpus_per_machine: int, num_machines: int, backend: str) -> None:
    """The checks ``launch`` makes before starting anything, for a command line to run first
    (``dl_train`` does, before it touches ``OUTPUT_DIR``). Raises ``LaunchError``.

    Nothing is checked under an external launcher (torchrun, an srun step: its process counts
    win) or for a single process (``MODEL.DEVICE`` is checked elsewhere).
    """
    if distributed_env_from_launcher(dict(os.environ)) is not None:
        return
    if num_gpus_per_machine < 1 or num_machines < 1:
        raise LaunchError(f"--num-gpus {num_gpus_per_machine} --num-machines {num_machines}: both "
                          "must be at least 1.")
    if num_machines * num_gpus_per_machine > 1:
        check_num_processes(num_gpus_per_machine, backend.lower())


def launch(main_func: Callable, num_gpus_per_machine: int, num_machines: int = 1,
           machine_rank: int = 0, dist_url: Optional[str] = None, args: Sequence = (),
           timeout: timedelta = DEFAULT_TIMEOUT, backend: Optional[str] = None,
           grace_s: float = DEFAULT_GRACE_S):
    """Run ``main_func(*args)`` on every process of the job.

    Args:
        main_func: a module-level function (it is pickled for spawned processes).
        num_gpus_per_machine: processes per machine (GPUs, or CPU processes with Gloo).
        num_machines, machine_rank: the machines of the job and this one's index.
        dist_url: ``tcp://host:port`` of machine 0, ``"auto"``/None for a free local port
            (one machine only), or ``file://...``.
        backend: "nccl" or "gloo"; default NCCL when CUDA is available, else Gloo.
        grace_s: after a worker failed or Ctrl-C, seconds the others get to stop by
            themselves before SIGTERM (and again before SIGKILL).

    Returns ``main_func``'s result when it runs in this process (one process, or joined an
    external launcher); None after spawning. Raises ``LaunchError`` (nothing started) when
    ``num_gpus_per_machine`` exceeds the GPUs / CPU cores, ``WorkerError`` when a spawned worker
    failed (all of them have stopped by then), ``KeyboardInterrupt`` after Ctrl-C.
    """
    backend = (backend or _default_backend()).lower()
    external = distributed_env_from_launcher()
    if external is not None:
        return _run_joined(main_func, args, external, timeout, backend, num_gpus_per_machine,
                           num_machines)

    check_launch(num_gpus_per_machine, num_machines, backend)
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
    failure_dir = tempfile.mkdtemp(prefix="dl_lib-launch-")
    try:
        context = mp.start_processes(
            _distributed_worker, nprocs=num_gpus_per_machine,
            args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, tuple(args),
                  timeout, backend, failure_dir),
            daemon=False, start_method="spawn", join=False,
        )
        _wait_for_workers(context, failure_dir, machine_rank * num_gpus_per_machine, grace_s)
    finally:
        shutil.rmtree(failure_dir, ignore_errors=True)
    return None


class _Terminated(KeyboardInterrupt):
    """SIGTERM to the parent (a scheduler's preemption or time limit): stop like Ctrl-C."""


def _raise_terminated(signum, frame):
    raise _Terminated(f"received signal {signal.Signals(signum).name}")


def _wait_for_workers(context, failure_dir: str, first_rank: int, grace_s: float) -> None:
    """Join the spawned workers; on a failure, Ctrl-C or SIGTERM make sure none is left running."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        while not context.join(timeout=1.0, grace_period=grace_s):
            pass
    except KeyboardInterrupt as e:
        what = "Terminated" if isinstance(e, _Terminated) else "Interrupted"
        logger.error(f"{what}: stopping the {len(context.processes)} workers (SIGINT, then "
                     f"SIGTERM after {grace_s:g} s).")
        _stop_workers(context.processes, grace_s)
        raise
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as e:
        # torch has stopped the other workers by now (grace period, SIGTERM, SIGKILL).
        codes = [p.exitcode for p in context.processes]
        raise WorkerError(_failure_report(e, failure_dir, first_rank, codes)) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _stop_workers(processes, grace_s: float) -> None:
    """Wait a moment for the workers to stop by themselves (a terminal's Ctrl-C reached them
    too), then SIGINT those still running, wait ``grace_s``, SIGTERM, wait again, SIGKILL:
    nothing outlives the parent. The first wait keeps a second SIGINT from landing in the
    clean-up the first one started."""
    _join_all(processes, min(2.0, grace_s))
    for signum, method in ((signal.SIGINT, None), (signal.SIGTERM, "terminate"),
                           (signal.SIGKILL, "kill")):
        alive = [p for p in processes if p.is_alive()]
        if not alive:
            return
        for p in alive:
            try:
                if method is None:
                    os.kill(p.pid, signum)
                else:
                    getattr(p, method)()
            except ProcessLookupError:
                pass
        _join_all(alive, grace_s if signum != signal.SIGKILL else 30.0)


def _join_all(processes, timeout_s: float) -> None:
    """Join ``processes`` for at most ``timeout_s`` in all; a second Ctrl-C while waiting must
    not leave workers behind, so it is ignored here."""
    deadline = time.monotonic() + timeout_s
    for p in processes:
        while True:
            try:
                p.join(max(0.0, deadline - time.monotonic()))
                break
            except KeyboardInterrupt:
                continue


def _record_failure(failure_dir: Optional[str], rank: int, exc: BaseException) -> None:
    """Write when and how this rank failed, for the parent's report (best effort)."""
    if not failure_dir:
        return
    try:
        record = {"rank": rank, "time": time.time(), "pid": os.getpid(),
                  "type": type(exc).__name__, "traceback": traceback.format_exc()}
        tmp = os.path.join(failure_dir, f".rank{rank}.json.tmp")
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.replace(tmp, os.path.join(failure_dir, f"rank{rank}.json"))
    except OSError:
        pass


def _failure_report(error, failure_dir: str, first_rank: int, exit_codes=()) -> str:
    """The message of ``WorkerError``: the traceback of the rank that failed first.

    ``error`` is torch's exception for the first worker *it noticed*, which is often a peer
    whose collective broke because the real culprit had already exited. The workers' own records
    (time of failure) decide instead. A worker killed by a signal (SIGKILL, SIGSEGV, ...) leaves
    no record; it is named first, since a peer's failure makes a worker raise, not die.
    ``exit_codes``: each local worker's exit code once all have stopped (``-N``: signal N).
    """
    records = []
    for name in os.listdir(failure_dir):
        if name.startswith("rank") and name.endswith(".json"):
            try:
                with open(os.path.join(failure_dir, name)) as f:
                    records.append(json.load(f))
            except (OSError, ValueError):
                pass
    records.sort(key=lambda r: r["time"])
    recorded = {r["rank"] for r in records}
    killed = []  # (rank, signal name) of workers that died without raising
    for index, code in enumerate(exit_codes):
        rank = first_rank + index
        if code is not None and code < 0 and -code != signal.SIGTERM and rank not in recorded:
            try:
                killed.append((rank, signal.Signals(-code).name))
            except ValueError:
                killed.append((rank, f"signal {-code}"))
    noticed = first_rank + error.error_index
    if isinstance(error, mp.ProcessExitedException) and noticed not in recorded \
            and noticed not in {r for r, _ in killed}:
        how = (f"was killed by {error.signal_name}" if getattr(error, "signal_name", None)
               else f"exited with code {error.exit_code}")
        killed.insert(0, (noticed, how))
    lines = []
    for rank, how in killed:
        how = how if how.startswith(("was ", "exited")) else f"was killed by {how}"
        lines.append(f"Worker rank {rank} {how} (no Python error: out of memory, a crash in "
                     "native code, or killed from outside); the job was stopped.")
    if records:
        first = records[0]
        head = "Then rank" if killed else "Worker rank"
        tail = "failed with" if killed else "failed first; the job was stopped. Its error"
        lines.append(f"{head} {first['rank']} (pid {first['pid']}) {tail}:\n{first['traceback']}")
        for r in records[1:]:  # most likely because the first one stopped: one line each
            last = (r["traceback"].strip().splitlines() or [r["type"]])[-1]
            lines.append(f"Rank {r['rank']} failed after it: {last[:300]}")
    if not lines:
        lines.append(f"Worker rank {noticed} failed; the job was stopped. {error}")
    return "\n".join(lines)


def _distributed_worker(local_rank, main_func, world_size, num_gpus_per_machine, machine_rank,
                        dist_url, args, timeout, backend, failure_dir=None):
    global_rank = machine_rank * num_gpus_per_machine + local_rank
    # A parent started in the background of a shell ignores SIGINT and its children inherit
    # that; the parent decides when to stop, so let its SIGINT (and torch's parent-death
    # signal, also SIGINT) reach this worker as KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.default_int_handler)
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
    interrupted = False
    try:
        _after_init(num_gpus_per_machine)
        main_func(*args)
        _leave_together()
    except KeyboardInterrupt as e:
        # One is enough: the parent's forwarded SIGINT must not break the clean-up below.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # torch's wrapper would exit 0 after a KeyboardInterrupt: a stopped run is no success.
        interrupted = True
        _record_failure(failure_dir, global_rank, e)
    except BaseException as e:
        _record_failure(failure_dir, global_rank, e)
        raise
    finally:
        _shutdown()
    _exit_spawned_worker(128 + signal.SIGINT if interrupted else 0)


def _exit_spawned_worker(code: int = 0) -> None:
    """End a spawned worker whose work is done without interpreter finalisation.

    Now and then (about one run in five on the 2-core dev VM, never reproduced outside pytest)
    a Gloo worker aborted during finalisation with "terminate called without an active
    exception", after its group was destroyed; the parent then reports a finished run as failed.
    Nothing is left to clean up here, so flush and leave with exit code ``code`` (0: done).
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


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
