"""launch(): running directly, joining torchrun / SLURM groups, and argument checks."""
import os
import socket
import sys

import pytest
import torch.distributed as dist

from dl_lib.engine import launch
from dl_lib.engine.launch import _first_slurm_host, distributed_env_from_launcher, in_srun_step
from dl_lib.utils import comm

_LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                  "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_ID", "SLURM_STEPID",
                  "SLURM_STEP_NUM_TASKS", "SLURM_STEP_NUM_NODES", "SLURM_STEP_NODELIST")


@pytest.fixture
def clean_env(monkeypatch):
    for k in _LAUNCHER_VARS:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _report(tag):
    return dict(tag=tag, pid=os.getpid(), initialized=dist.is_initialized(),
                world=comm.get_world_size(), rank=comm.get_rank(), local_size=comm.get_local_size())


def test_single_process_runs_in_place(clean_env):
    out = launch(_report, 1, args=("x",))
    assert out == dict(tag="x", pid=os.getpid(), initialized=False, world=1, rank=0, local_size=1)


def test_torchrun_environment_is_joined_not_spawned(clean_env):
    clean_env.setenv("RANK", "0")
    clean_env.setenv("WORLD_SIZE", "1")
    clean_env.setenv("LOCAL_RANK", "0")
    clean_env.setenv("LOCAL_WORLD_SIZE", "1")
    clean_env.setenv("MASTER_ADDR", "127.0.0.1")
    clean_env.setenv("MASTER_PORT", str(_free_port()))
    # --num-gpus 2 is ignored under a launcher: no processes are spawned.
    out = launch(_report, 2, backend="gloo", args=("joined",))
    assert out["pid"] == os.getpid()  # ran here
    assert out["initialized"] and out["world"] == 1 and out["rank"] == 0 and out["local_size"] == 1
    assert not dist.is_initialized()  # the group is torn down afterwards
    # launch can run again in the same process (local group and caches were reset)
    assert launch(_report, 1, backend="gloo", args=("again",))["initialized"]


def test_slurm_variables_are_translated():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
           "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "4242",
           "SLURM_STEP_ID": "0"}
    info = distributed_env_from_launcher(env)
    assert info["rank"] == 5 and info["world_size"] == 8 and info["local_rank"] == 1
    assert info["local_world_size"] == 4 and info["master_addr"] == "gpu07"
    assert env["RANK"] == "5" and env["WORLD_SIZE"] == "8" and env["LOCAL_RANK"] == "1"
    assert env["MASTER_ADDR"] == "gpu07" and env["MASTER_PORT"] == str(15000 + 4242)
    # Every task of the job derives the same port.
    assert distributed_env_from_launcher(dict(env, RANK="0"))["master_port"] == env["MASTER_PORT"]


def test_single_slurm_task_is_not_a_launcher():
    assert distributed_env_from_launcher({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) is None
    assert distributed_env_from_launcher({"SLURM_PROCID": "0", "SLURM_NTASKS": "1",
                                          "SLURM_STEP_ID": "0"}) is None
    assert distributed_env_from_launcher({}) is None


# The batch script of `sbatch --nodes 1 --ntasks 8`: SLURM_PROCID 0 and the job's task count,
# but no srun step (no step id in older SLURM, the batch step's id or name in newer ones).
_SBATCH_SHELL = {"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_NNODES": "1", "SLURM_LOCALID": "0",
                 "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "gpu07", "SLURM_JOB_ID": "4242"}


@pytest.mark.parametrize("step", [None, "4294967294", "batch", "4294967295", "extern",
                                  "4294967290", "interactive"])
def test_sbatch_shell_is_not_a_launcher(step):
    env = dict(_SBATCH_SHELL) if step is None else dict(_SBATCH_SHELL, SLURM_STEP_ID=step)
    assert not in_srun_step(env)
    assert distributed_env_from_launcher(env) is None
    assert "RANK" not in env and "WORLD_SIZE" not in env  # nothing written for a later env://


def test_srun_step_counts_come_from_the_step():
    """`srun --ntasks 4 --nodes 2` inside a job of 16 tasks on 4 nodes: the step's 4 tasks on
    its own first node, not the job's."""
    env = dict(_SBATCH_SHELL, SLURM_NTASKS="16", SLURM_NNODES="4", SLURM_JOB_NODELIST="gpu[07-10]",
               SLURM_STEP_ID="3", SLURM_PROCID="2", SLURM_STEP_NUM_TASKS="4",
               SLURM_STEP_NUM_NODES="2", SLURM_STEP_NODELIST="gpu[09-10]")
    assert in_srun_step(env) and in_srun_step({"SLURM_STEPID": "0"})  # the older name too
    info = distributed_env_from_launcher(env)
    assert (info["world_size"], info["local_world_size"], info["master_addr"]) == (4, 2, "gpu09")


def test_sbatch_shell_spawns_instead_of_joining(clean_env, monkeypatch):
    """`dl_train --num-gpus 1` in an sbatch script with --ntasks 8 runs here, without waiting
    for 7 peers that no srun started."""
    for k, v in _SBATCH_SHELL.items():
        clean_env.setenv(k, v)

    def joined(*args, **kwargs):
        raise AssertionError("launch joined a SLURM group from an sbatch shell")

    # dl_lib.engine.launch is also the name of the function; patch the module's attribute
    monkeypatch.setattr(sys.modules["dl_lib.engine.launch"], "_run_joined", joined)
    out = launch(_report, 1, backend="gloo", args=("sbatch",))
    assert out == dict(tag="sbatch", pid=os.getpid(), initialized=False, world=1, rank=0, local_size=1)


@pytest.mark.parametrize("nodelist, first", [
    ("node1", "node1"), ("gpu[07-09,12],cpu01", "gpu07"), ("a-b[3,5]", "a-b3"),
    ("host.x.org,other", "host.x.org")])
def test_first_slurm_host(nodelist, first):
    assert _first_slurm_host(nodelist) == first


def test_auto_dist_url_needs_one_machine(clean_env):
    with pytest.raises(ValueError, match="only works on one machine"):
        launch(_report, 2, num_machines=2, dist_url="auto", backend="gloo")
