"""The parts of exact resume, one at a time: a seekable sample stream with per-sample seeds,
metrics.json cut back to the resumed iteration, metric histories in the checkpoint, and a
resume that survives a damaged last checkpoint (or a kill while one is written)."""
import itertools
import json
import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from dl_lib.checkpoint import Checkpointer, CheckpointReadError
from dl_lib.checkpoint.checkpointer import readable_resume_checkpoint
from dl_lib.data.build import seek_train_loader
from dl_lib.data.samplers import SeededDataset, TrainingSampler
from dl_lib.utils.events import EventStorage, JSONWriter


# ---- the sample stream --------------------------------------------------------------------
@pytest.mark.parametrize("world", [1, 2])
def test_a_sampler_started_at_a_position_continues_the_same_stream(world):
    full = [list(itertools.islice(TrainingSampler(5, seed=3, rank=r, world_size=world,
                                                  item_seeds=True), 40)) for r in range(world)]
    start = 14 * world  # 14 items per rank already consumed, across two epoch boundaries
    for r in range(world):
        later = TrainingSampler(5, seed=3, rank=r, world_size=world, item_seeds=True)
        later.set_start(start)
        assert list(itertools.islice(later, 26)) == full[r][14:]
    # seeds follow the position in the stream, not the index: two visits of one image differ
    seeds = [s for _, s in full[0]]
    assert len(set(seeds)) == len(seeds)


class _RandomItems(torch.utils.data.Dataset):
    """Item i -> (i, a NumPy draw, a torch draw): what an augmentation would see."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return i, float(np.random.rand()), float(torch.rand(()))


def test_a_seeked_loader_gives_the_batches_an_uninterrupted_one_gives_at_that_iteration():
    def loader():
        sampler = TrainingSampler(4, seed=0, rank=0, world_size=1, item_seeds=True)
        return torch.utils.data.DataLoader(SeededDataset(_RandomItems()), batch_size=2,
                                           sampler=sampler, collate_fn=lambda b: b)

    uninterrupted = list(itertools.islice(iter(loader()), 7))
    resumed = loader()
    np.random.seed(123)  # another global state: the items do not depend on it
    assert seek_train_loader(resumed, 3)
    assert list(itertools.islice(iter(resumed), 4)) == uninterrupted[3:]
    assert not seek_train_loader([[1, 2]], 3)  # a loader of another kind: reported, not seeked


# ---- metrics -------------------------------------------------------------------------------
def test_metrics_json_is_cut_back_to_the_resumed_iteration(tmp_path):
    path = tmp_path / "metrics.json"
    old = [json.dumps({"iteration": i, "total_loss": 1.0 / (i + 1)}) for i in range(6)]
    path.write_text("\n".join(old) + '\n{"iteration": 6, "total_lo')  # cut short by a kill
    writer = JSONWriter(str(path))
    with EventStorage(start_iter=4) as storage:
        storage.put_scalar("total_loss", 0.5)
        writer.write()
    writer.close()
    lines = [json.loads(l) for l in path.read_text().splitlines()]
    assert [l["iteration"] for l in lines] == [0, 1, 2, 3, 4]
    assert lines[3] == json.loads(old[3]) and lines[4]["total_loss"] == 0.5


def test_metric_histories_survive_a_checkpoint(tmp_path):
    with EventStorage(0) as first:
        for i in range(30):
            first.iter = i
            first.put_scalar("loss", float(i % 7))
        saved = first.state_dict()
        expected = first.history("loss").median(20), first.history("loss").global_avg()
    torch.save(saved, tmp_path / "s.pth")
    with EventStorage(30) as second:
        second.load_state_dict(torch.load(tmp_path / "s.pth", weights_only=True))
        assert (second.history("loss").median(20), second.history("loss").global_avg()) == expected
        assert second.latest() == {}  # nothing of the old run is written again


# ---- checkpoints ---------------------------------------------------------------------------
def _checkpointer(folder):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    return Checkpointer(model, str(folder), save_to_disk=True,
                        optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))


def _three_checkpoints(folder):
    ck = _checkpointer(folder)
    for it in (2, 5, 8):
        with torch.no_grad():
            ck.model.weight.fill_(it)
        ck.save(f"model_{it:07d}", iteration=it)
        os.utime(folder / f"model_{it:07d}.pth", ns=(it * 10 ** 9, it * 10 ** 9))  # age order
    return ck


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_resume_falls_back_to_the_newest_complete_checkpoint(tmp_path, caplog, damage):
    _three_checkpoints(tmp_path)
    (tmp_path / "weights.pth").write_bytes(b"")  # not a checkpoint of this run: skipped
    last = tmp_path / "model_0000008.pth"
    if damage == "missing":
        last.unlink()
    else:
        last.write_bytes(last.read_bytes()[:200])
    fresh = _checkpointer(tmp_path)
    with caplog.at_level(logging.WARNING):
        data = fresh.resume_or_load("", resume=True)
    assert data["iteration"] == 5 and float(fresh.model.weight.detach()[0, 0]) == 5.0
    assert fresh.resumed_file == str(tmp_path / "model_0000005.pth")
    assert "names model_0000008.pth, which cannot be read; resuming from the newest complete " \
           "checkpoint" in caplog.text
    assert readable_resume_checkpoint(str(tmp_path)) == str(tmp_path / "model_0000005.pth")


def test_resume_with_no_readable_checkpoint_names_every_file(tmp_path):
    _three_checkpoints(tmp_path)
    for it in (2, 5, 8):
        (tmp_path / f"model_{it:07d}.pth").write_bytes(b"PK\x03\x04 cut")
    with pytest.raises(CheckpointReadError, match="no checkpoint in .* can be resumed") as e:
        _checkpointer(tmp_path).resume_or_load("", resume=True)
    assert all(f"model_{it:07d}.pth" in str(e.value) for it in (2, 5, 8))


def test_resume_without_a_pointer_uses_the_newest_complete_checkpoint(tmp_path, caplog):
    # A deleted last_checkpoint (or a copied folder) must not make --resume start over at 0 in a
    # folder full of checkpoints (and then cut metrics.json back to nothing).
    _three_checkpoints(tmp_path)
    (tmp_path / "last_checkpoint").unlink()
    (tmp_path / "model_0000008.pth").write_bytes(b"PK\x03\x04 cut")
    fresh = _checkpointer(tmp_path)
    assert fresh.has_checkpoint()
    with caplog.at_level(logging.WARNING):
        data = fresh.resume_or_load("", resume=True)
    assert data["iteration"] == 5 and fresh.resumed_file == str(tmp_path / "model_0000005.pth")
    assert "has no last_checkpoint file; resuming from the newest complete checkpoint" in caplog.text
    assert readable_resume_checkpoint(str(tmp_path)) == str(tmp_path / "model_0000005.pth")


def test_resume_of_a_folder_with_only_weights_files_says_so(tmp_path):
    torch.save({"model": nn.Conv2d(1, 1, 1).state_dict()}, tmp_path / "weights.pth")
    with pytest.raises(CheckpointReadError, match="record no 'iteration'"):
        _checkpointer(tmp_path).resume_or_load("", resume=True)


_KILLED_IN_SAVE = textwrap.dedent("""
    import io, os, signal, sys
    import torch
    from torch import nn
    from dl_lib.checkpoint import Checkpointer

    model = nn.Linear(3, 2)
    ck = Checkpointer(model, sys.argv[1], save_to_disk=True)
    ck.save("model_0000002", iteration=2)
    real_save = torch.save

    def killed_half_way(obj, f):  # a slow save interrupted by SIGKILL (OOM killer, scancel)
        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = killed_half_way
    with torch.no_grad():
        model.weight.fill_(7.0)
    ck.save("model_0000005", iteration=5)
""")


def test_a_kill_while_a_checkpoint_is_written_leaves_the_previous_one_resumable(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _KILLED_IN_SAVE, str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not (tmp_path / "model_0000005.pth").exists()  # only a hidden temporary file
    assert any(n.startswith(".model_0000005.pth.tmp") for n in os.listdir(tmp_path))
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000002.pth"
    fresh = _checkpointer(tmp_path)
    assert fresh.resume_or_load("", resume=True)["iteration"] == 2
    assert float(fresh.model.weight.detach().abs().max()) != 7.0
