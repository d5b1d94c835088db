"""dl_plot on metrics.json files the test writes (the JSONWriter's format, and one written by the
writer itself): default and chosen keys, curve values, one line per file, the PNG size, and
errors naming the file, line or key."""
import json
import math

import pytest
from PIL import Image

from dl_lib.tools import plot_logs


def _write_metrics(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def _records(scale):
    recs = [{"iteration": i, "total_loss": scale / (i + 1), "lr": 0.01 * (1 - i / 10),
             "loss_sem_seg": scale / (i + 2), "time": 0.1} for i in range(10)]
    recs[4]["sem_seg/mIoU"] = 10.0 * scale
    recs[9]["sem_seg/mIoU"] = 20.0 * scale
    recs[9]["sem_seg/exit0/mIoU"] = 5.0 * scale
    return recs


def test_default_keys_values_and_png(tmp_path, capsys):
    a = _write_metrics(tmp_path / "Grp" / "A" / "metrics.json", _records(1.0))
    b = _write_metrics(tmp_path / "Grp" / "B" / "metrics.json", _records(2.0))
    runs = [(a, plot_logs.read_metrics(a)), (b, plot_logs.read_metrics(str(tmp_path / "Grp/B")))]
    keys = plot_logs.select_keys(runs, None)
    assert keys == ["total_loss", "lr", "sem_seg/mIoU", "sem_seg/exit0/mIoU"]
    assert plot_logs.curves(runs[1][1], "sem_seg/mIoU") == ([4, 9], [20.0, 40.0])
    fig = plot_logs.plot_curves(runs, keys)
    lines = fig.axes[0].lines
    assert [l.get_label() for l in lines] == ["Grp/A", "Grp/B"]
    assert list(lines[1].get_ydata()) == pytest.approx([2.0 / (i + 1) for i in range(10)])
    assert fig.axes[0].get_yscale() == "log" and fig.axes[1].get_yscale() == "linear"

    assert plot_logs.main([a, b, "--output", str(tmp_path / "c.png")]) == 0
    # 4 panels: rows of 3 -> 3 x 2 panels of 5 x 3.4 inches at 100 dpi
    assert Image.open(tmp_path / "c.png").size == (1500, 680)
    assert plot_logs.main([a, "--keys", "loss_*", "lr"]) == 0  # default output next to the file
    assert Image.open(tmp_path / "Grp" / "A" / "metrics.png").size == (1000, 340)
    assert "loss_sem_seg, lr" in capsys.readouterr().out


def test_writer_output_reads_back(tmp_path):
    from dl_lib.utils.events import EventStorage, JSONWriter

    path = tmp_path / "metrics.json"
    writer = JSONWriter(str(path))
    with EventStorage(0) as storage:
        for i in range(3):
            storage.iter = i
            storage.put_scalar("total_loss", 1.0 + i, smoothing_hint=False)
            writer.write()
    writer.close()
    records = plot_logs.read_metrics(str(path))
    assert plot_logs.curves(records, "total_loss") == ([0, 1, 2], [1.0, 2.0, 3.0])


def test_nan_values_are_skipped():
    recs = [{"iteration": 0, "lr": 1.0}, {"iteration": 1, "lr": math.nan}, {"iteration": 2}]
    assert plot_logs.curves(recs, "lr") == ([0], [1.0])


def test_errors_name_the_file_line_or_key(tmp_path, capsys):
    good = _write_metrics(tmp_path / "metrics.json", _records(1.0))
    broken = tmp_path / "broken.json"
    broken.write_text('{"iteration": 0, "lr": 1}\n{"iteration": 1, "lr"\n')
    with pytest.raises(plot_logs.PlotLogsError, match=f"{broken}, line 2: not JSON"):
        plot_logs.read_metrics(str(broken))
    with pytest.raises(plot_logs.PlotLogsError, match="cannot read .*missing.json"):
        plot_logs.read_metrics(str(tmp_path / "missing.json"))
    (tmp_path / "empty.json").write_text("\n")
    with pytest.raises(plot_logs.PlotLogsError, match="empty.json holds no metrics"):
        plot_logs.read_metrics(str(tmp_path / "empty.json"))
    with pytest.raises(SystemExit) as e:
        plot_logs.main([good, "--keys", "accuracy"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "no key matches 'accuracy'" in err and "total_loss" in err
    only_time = _write_metrics(tmp_path / "t" / "metrics.json", [{"iteration": 0, "time": 1.0}])
    with pytest.raises(plot_logs.PlotLogsError, match="choose with --keys from: time"):
        plot_logs.select_keys([(only_time, plot_logs.read_metrics(only_time))], None)
