"""README.md: every repository path it names exists (or it says the path is created by a run), it
says how to reach the console scripts, and every playground has a result or says it has none."""
import glob
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(REPO, "README.md")).read()
PARAGRAPHS = re.split(r"\n\s*\n", README)
NOT_IN_REPO = "not in the repository"
# Backticked tokens that are paths inside the repository (no placeholders, no options).
REPO_PATH = re.compile(r"^(\.ci|benchmarks|csrc|datasets|dl_lib|docs|playground|tests|tools|output)"
                       r"(/[\w.\-]+)*/?$|^(setup\.py|constraints\.txt|Makefile)$")
SECTIONS = re.split(r"\n#+ ", README)


def test_markdown_links_point_to_files():
    for target in re.findall(r"\]\(([^)#][^)]*)\)", README):
        if not target.startswith(("http://", "https://")):
            assert os.path.exists(os.path.join(REPO, target)), f"README links to missing {target}"


def test_every_named_path_exists_or_is_said_to_be_created():
    checked = 0
    for paragraph in PARAGRAPHS:
        for token in re.findall(r"`([^`\n]+)`", paragraph):
            if not REPO_PATH.match(token):
                continue
            checked += 1
            exists = os.path.exists(os.path.join(REPO, token.rstrip("/")))
            assert exists or NOT_IN_REPO in paragraph.replace("\n", " "), (
                f"README names `{token}`, which is not in the repository, without saying so")
    assert checked >= 5  # the pattern still finds the paths


def test_says_how_to_reach_the_console_scripts():
    assert "source .venv/bin/activate" in README
    assert ".venv/bin/dl_train" in README


def test_every_playground_has_a_result_or_says_it_has_none():
    folders = sorted(os.path.relpath(os.path.dirname(p), REPO)
                     for p in glob.glob(os.path.join(REPO, "playground", "*", "*", "net.py")))
    assert folders
    for folder in folders:
        text = " ".join(" ".join(s.split()) for s in SECTIONS if folder in " ".join(s.split()))
        assert text, f"README does not mention {folder}"
        assert re.search(r"mIoU\W*\d", text) or "no expected result" in text, (
            f"README gives {folder} no result (mIoU <number>) and does not say it has none")
