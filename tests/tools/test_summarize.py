"""dl_summarize on a group of playgrounds whose results.json files the test writes: the table's
rows equal the inputs (preferred results file, --all, per-exit rows), published points from the
results and from published.json, the PNG, and errors naming the file."""
import json
import os

import pytest
from PIL import Image

from dl_lib.tools import summarize

CONFIG = "from dl_lib.config import config_from_delta\nconfig = config_from_delta(dict())\n"
NET = "def build_model(cfg):\n    raise NotImplementedError('not built by dl_summarize')\n"

STATIC = {"city_val": {"sem_seg": {"mIoU": 70.5, "IoU-a": 70.5},
                       "cost": {"gmac": {"mean": 12.5, "min": 12.5, "max": 12.5}},
                       "time": {"ms_per_image": 30.25, "device": "cpu (1 threads)"}}}
TRAINING = {"city_val": {"sem_seg": {"mIoU": 69.0}}}
EXITS = {"city_val": {"sem_seg": {"mIoU": 61.0, "mean_exit0": 1.5, "mean_exit1": 3.0},
                      "time": {"ms_per_image": 9.5, "device": "cpu (1 threads)"},
                      "exits": {"num_exits": 2, "mIoU": [40.0, 61.0], "gflops": [1.5, 3.0],
                                "time": {"ms_per_image": [5.0, 9.5]},
                                "published": {"ADP-C (paper)": {"mIoU": [41.0, 62.0],
                                                                "gflops": [1.4, 2.9]}}}}}


def _write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(data if isinstance(data, str) else json.dumps(data))


@pytest.fixture
def group(tmp_path, monkeypatch):
    """playground group Grp with Static (dl_test + training results), Exits (dl_test) and
    Fresh (not evaluated); outputs under tmp_path/out."""
    monkeypatch.setenv("DL_OUTPUT_ROOT", str(tmp_path / "out"))
    root = tmp_path / "playground" / "Grp"
    for name in ("Static", "Exits", "Fresh"):
        _write(str(root / name / "config.py"), CONFIG)
        _write(str(root / name / "net.py"), NET)
    out = tmp_path / "out" / "Grp"
    _write(str(out / "Static" / "inference" / "model_final" / "results.json"), STATIC)
    _write(str(out / "Static" / "results.json"), TRAINING)
    _write(str(out / "Exits" / "inference" / "model_0000099" / "results.json"), EXITS)
    _write(str(root / "published.json"), {"FPN (paper)": {"mIoU": [72.0], "gflops": [13.0]}})
    return str(root), out


def _table(text):
    """The rows of the first markdown table as dicts."""
    lines = [l for l in text.splitlines() if l.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = []
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != len(header):
            break  # the next table
        rows.append(dict(zip(header, cells)))
    return rows


def test_table_rows_equal_the_results(group, capsys):
    root, out = group
    assert summarize.main([root]) == 0
    text = (out / "summary.md").read_text()
    assert text == capsys.readouterr().out.split("wrote ")[0][:-1]
    rows = _table(text)
    # Exits (alphabetical first): final + one row per exit; Static: model_final preferred
    assert [(r["playground"], r["results"], r["exit"]) for r in rows] == [
        ("Exits", "model_0000099", "final"), ("Exits", "model_0000099", "exit0"),
        ("Exits", "model_0000099", "exit1"), ("Static", "model_final", "final")]
    assert [float(r["mIoU"]) for r in rows] == [61.0, 40.0, 61.0, 70.5]
    assert [r["GFLOPs"] for r in rows] == ["3.00", "1.50", "3.00", "12.50"]
    assert [r["counted by"] for r in rows] == ["model, last exit", "model", "model", "gmac"]
    assert [r["ms / image"] for r in rows] == ["9.50", "5.00", "9.50", "30.25"]
    assert rows[-1]["device"] == "cpu (1 threads)" and rows[-1]["dataset"] == "city_val"
    assert "ADP-C (paper) | 1 | 62.00 | 2.90" in text and "FPN (paper) | 0 | 72.00 | 13.00" in text
    assert "Not evaluated" in text and "`Fresh`" in text
    assert Image.open(out / "summary.png").size == (1100, 460)


def test_all_lists_every_results_file_and_the_plot_has_every_point(group, tmp_path):
    root, _ = group
    assert summarize.main([root, "--all", "--output", str(tmp_path / "s")]) == 0
    rows = _table((tmp_path / "s" / "summary.md").read_text())
    static = [(r["results"], float(r["mIoU"])) for r in rows if r["playground"] == "Static"]
    assert static == [("model_final", 70.5), ("training", 69.0)]

    found, published, missing = summarize.collect(root)
    assert missing and missing[0][0] == "Fresh"
    assert set(published) == {"ADP-C (paper)", "FPN (paper)"}
    fig = summarize.plot_summary(found, published)
    lines = {l.get_label(): (list(l.get_xdata()), list(l.get_ydata())) for l in fig.axes[0].lines}
    assert lines["Exits"] == ([1.5, 3.0], [40.0, 61.0])  # a line through the exits
    assert lines["Static"] == ([12.5], [70.5])
    assert lines["ADP-C (paper)"] == ([1.4, 2.9], [41.0, 62.0])
    assert lines["FPN (paper)"] == ([13.0], [72.0])
    ms = {l.get_label(): list(l.get_xdata()) for l in fig.axes[1].lines}
    assert ms == {"Exits": [5.0, 9.5], "Static": [30.25]}  # published points have no ms


def test_broken_or_missing_results_name_the_file(group, tmp_path, capsys):
    root, out = group
    bad = out / "Exits" / "inference" / "model_0000099" / "results.json"
    bad.write_text('{"city_val": {"sem_seg": ')
    with pytest.raises(SystemExit) as e:
        summarize.main([root])
    assert e.value.code == 2 and f"{bad}: not a readable results.json" in capsys.readouterr().err
    bad.write_text(json.dumps({"city_val": {"time": {}}}))
    with pytest.raises(summarize.SummaryError, match=f"{bad}: dataset 'city_val' has no mIoU"):
        summarize.collect(root)
    bad.unlink()
    (out / "Static" / "inference" / "model_final" / "results.json").unlink()
    (out / "Static" / "results.json").unlink()
    with pytest.raises(summarize.SummaryError, match="has been evaluated") as e:
        summarize.collect(root)
    assert str(out / "Static") in str(e.value)
    with pytest.raises(summarize.SummaryError, match="holds no playground"):
        summarize.collect(str(tmp_path))


def test_published_json_is_checked(group):
    root, _ = group
    _write(os.path.join(root, "published.json"), {"X": {"mIoU": [1.0, 2.0], "gflops": [1.0]}})
    with pytest.raises(summarize.SummaryError, match=r"published\.json.*2 mIoU values but 1"):
        summarize.collect(root)
    _write(os.path.join(root, "published.json"), "[1, 2]")
    with pytest.raises(summarize.SummaryError, match="must be a dict"):
        summarize.collect(root)


def test_a_config_that_does_not_load_is_read_from_its_default_output_dir(group):
    root, out = group
    _write(os.path.join(root, "OutOfTree", "config.py"), "import family_not_on_the_path\n")
    _write(os.path.join(root, "OutOfTree", "net.py"), NET)
    _write(str(out / "OutOfTree" / "results.json"), TRAINING)
    notes = []
    rows, _, _ = summarize.collect(root, notes=notes)
    assert [(r.source, r.miou) for r in rows if r.playground == "OutOfTree"] == [("training", 69.0)]
    (note,) = notes
    assert "OutOfTree/config.py did not load" in note and "family_not_on_the_path" in note
    assert str(out / "OutOfTree") in note
