"""The README names only files a clone has (tools/readme_commands.py runs its commands)."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_readme_links_and_names_only_files_in_the_repository():
    text = (ROOT / "README.md").read_text()
    assert "../" not in text, "the README points outside the repository: a user's clone has nothing there"
    linked = re.findall(r"\]\(([^)#:]+)\)", text)
    named = re.findall(r"`((?:tests|trainers|keras_resnet|docs|deploy|tools|saved_models)/[\w./-]+\.\w+)`", text)
    assert linked and named
    for path in [*linked, *named]:
        assert (ROOT / path).exists(), f"README names {path}, which is not in the repository"
