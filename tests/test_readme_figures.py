"""README.md's pictures and its copy-a-playground example.

Every image the README shows is a committed PNG under docs/figures/, small, and
``tools/make_readme_figures.py --list`` names the project command that makes it; the worked
example's commands work: the folder it copies is a playground, its ``sed`` changes the config
key it says it changes, and the copy loads with the example's ``dl_train`` overrides.
"""
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(REPO, "README.md")).read()
SCRIPT = os.path.join(REPO, "tools", "make_readme_figures.py")
PROJECT_COMMANDS = ("dl_train", "dl_test", "dl_demo", "dl_plot", "dl_summarize", "dl_flops",
                    "dl_browse")
IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
MAX_BYTES = 300 * 1024


def _listed():
    """``--list`` output as {docs/figures/<name>.png: [command lines]}."""
    out = subprocess.run([sys.executable, SCRIPT, "--list"], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    figures, current = {}, None
    for line in out.splitlines():
        if not line.startswith(" "):
            current = line.split(":", 1)[0]
            figures[current] = []
        else:
            figures[current].append(line.strip())
    return figures


def _section(title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.S | re.M)
    assert m, f"README has no section '## {title}'"
    return m.group(1)


def test_readme_images_exist_are_small_and_have_a_producing_command():
    links = IMAGE_LINK.findall(README)
    assert len(links) >= 4, "README shows fewer pictures than the figures script makes"
    listed = _listed()
    for link in links:
        path = os.path.join(REPO, link)
        assert os.path.isfile(path), f"README shows {link}, which is not in the repository"
        assert link.startswith("docs/figures/"), (
            f"README shows {link}; `make figures` regenerates only docs/figures/")
        assert os.path.getsize(path) < MAX_BYTES, f"{link} is over 300 KB"
        with Image.open(path) as im:
            assert im.format == "PNG" and min(im.size) > 16
        commands = listed.get(link)
        assert commands, f"tools/make_readme_figures.py --list does not name {link}"
        assert any(c in line for line in commands for c in PROJECT_COMMANDS), (
            f"--list names no project command for {link}: {commands}")


def test_every_listed_figure_is_a_docs_figure_with_a_command():
    listed = _listed()
    assert listed
    for png, commands in listed.items():
        assert re.fullmatch(r"docs/figures/[a-z0-9_]+\.png", png), png
        assert commands and any(c in " ".join(commands) for c in PROJECT_COMMANDS), png


def _figures_module():
    sys.path.insert(0, os.path.join(REPO, "tools"))
    try:
        import make_readme_figures
    finally:
        sys.path.pop(0)
    return make_readme_figures


def test_a_command_this_checkout_lacks_is_skipped_not_failed(monkeypatch):
    figures = _figures_module()
    monkeypatch.setitem(figures.MODULES, "dl_not_yet", "dl_lib.tools.not_yet_written")
    with pytest.raises(figures.Skip, match="dl_not_yet does not exist"):
        figures._tool_argv("dl_not_yet")
    assert figures._tool_argv("dl_plot")[-1] in (os.path.join(os.path.dirname(sys.executable),
                                                              "dl_plot"), "dl_lib.tools.plot_logs")
    runner = figures.Runner(os.path.join(REPO, "output", "unused"), 1, False)
    runner._help["dl_flops"] = "  --out DIR   folder\n  --dataset NAME\n"
    assert runner.has_option("dl_flops", "--out") and runner.has_option("dl_flops", "--dataset")
    assert not runner.has_option("dl_flops", "--output")  # a whole option, not a prefix


def test_save_small_fits_the_limits(tmp_path):
    figures = _figures_module()
    import numpy as np

    noise = np.random.default_rng(0).integers(0, 256, (300, 480, 3), dtype=np.uint8)
    src = tmp_path / "big.png"
    Image.fromarray(noise).save(src)
    assert os.path.getsize(src) > 300 * 1024  # noise does not compress: the loop must shrink it
    size = figures.save_small(str(src), str(tmp_path / "small.png"), max_width=400, max_kb=40)
    assert size == os.path.getsize(tmp_path / "small.png") <= 40 * 1024
    with Image.open(tmp_path / "small.png") as im:
        assert im.width < 400 and abs(im.width / im.height - 480 / 300) < 0.02


def test_copy_a_playground_example_runs(tmp_path, monkeypatch):
    block = re.search(r"```bash\n(.*?)```", _section("Start a variant: copy a playground"), re.S)
    assert block, "the variant section has no bash block"
    lines = [ln.split("#")[0].strip() for ln in block.group(1).splitlines()]
    cp = next(shlex.split(ln) for ln in lines if ln.startswith("cp -r "))
    src, dst = cp[2], cp[3]
    assert os.path.isfile(os.path.join(REPO, src, "config.py")), f"the example copies {src}"
    assert os.path.isfile(os.path.join(REPO, src, "net.py"))
    sed = next(shlex.split(ln) for ln in lines if ln.startswith("sed -i "))
    pattern, replacement = re.fullmatch(r"s/(.*?)/(.*?)/", sed[2]).groups()
    train = next(shlex.split(ln) for ln in lines if ln.startswith("dl_train"))
    overrides = train[train.index("--num-gpus") + 2:]

    # the same steps in a scratch tree: <tmp>/<Group>/<Name>
    copy = tmp_path / os.path.basename(os.path.dirname(dst)) / os.path.basename(dst)
    shutil.copytree(os.path.join(REPO, src), copy)
    config = (copy / sed[3]).read_text()
    assert pattern in config, f"the example's sed finds no {pattern!r} in {src}/config.py"
    (copy / sed[3]).write_text(config.replace(pattern, replacement))

    from dl_lib import playground

    monkeypatch.setenv("DL_OUTPUT_ROOT", str(tmp_path / "out"))
    key, value = replacement.split("=")
    original = playground.load_config(os.path.join(REPO, src))
    cfg = playground.load_config(str(copy), overrides)
    assert cfg.OUTPUT_DIR == str(tmp_path / "out" / os.path.relpath(dst, "playground"))
    found = [node[key] for node in _nodes(cfg) if key in node]
    before = [node[key] for node in _nodes(original) if key in node]
    assert found == [float(value)] and before != found, (key, before, found)
    for k, v in zip(overrides[::2], overrides[1::2]):
        node = cfg
        for part in k.split("."):
            node = node[part]
        assert str(node) == v


def _nodes(cfg):
    yield cfg
    for v in cfg.values():
        if isinstance(v, dict):
            yield from _nodes(v)


@pytest.mark.parametrize("target", ["figures"])
def test_makefile_target_runs_the_script(target):
    makefile = open(os.path.join(REPO, "Makefile")).read()
    m = re.search(rf"^{target}:.*\n\t(.+)$", makefile, re.M)
    assert m and "tools/make_readme_figures.py" in m.group(1)
    assert f"make {target}" in README
