"""launch(): running directly, joining torchrun / SLURM groups, and argument checks."""
import os
import socket

import pytest
import torch.distributed as dist

from dl_lib.engine import launch
from dl_lib.engine.launch import _first_slurm_host, distributed_env_from_launcher
from dl_lib.utils import comm

_LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                  "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS")


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
           "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "4242"}
    info = distributed_env_from_launcher(env)
    assert info["rank"] == 5 and info["world_size"] == 8 and info["local_rank"] == 1
    assert info["local_world_size"] == 4 and info["master_addr"] == "gpu07"
    assert env["RANK"] == "5" and env["WORLD_SIZE"] == "8" and env["LOCAL_RANK"] == "1"
    assert env["MASTER_ADDR"] == "gpu07" and env["MASTER_PORT"] == str(15000 + 4242)
    # Every task of the job derives the same port.
    assert distributed_env_from_launcher(dict(env, RANK="0"))["master_port"] == env["MASTER_PORT"]


def test_single_slurm_task_is_not_a_launcher():
    assert distributed_env_from_launcher({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) is None
    assert distributed_env_from_launcher({}) is None


@pytest.mark.parametrize("nodelist, first", [
    ("node1", "node1"), ("gpu[07-09,12],cpu01", "gpu07"), ("a-b[3,5]", "a-b3"),
    ("host.x.org,other", "host.x.org")])
def test_first_slurm_host(nodelist, first):
    assert _first_slurm_host(nodelist) == first


def test_auto_dist_url_needs_one_machine(clean_env):
    with pytest.raises(ValueError, match="only works on one machine"):
        launch(_report, 2, num_machines=2, dist_url="auto", backend="gloo")
