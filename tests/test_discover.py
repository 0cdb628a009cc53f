from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from docingest.discover import discover
from docingest.errors import ConfigError, SourceError
from docingest.models import Skipped, SourceFile

SAMPLE_DOCS = Path(__file__).resolve().parents[1] / "examples" / "sample-docs"


def write(root: Path, rel: str, content: str | bytes = "# doc\n") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def run(root: Path, **kwargs: Any) -> list[SourceFile | Skipped]:
    return list(discover(root, **kwargs))


def summary(results: list[SourceFile | Skipped]) -> list[tuple[str, str]]:
    """(path, kind) for loaded files, (path, reason) for skipped ones, in discovery order."""
    return [(r.path, r.kind if isinstance(r, SourceFile) else r.reason) for r in results]


def by_path(results: list[SourceFile | Skipped]) -> dict[str, SourceFile | Skipped]:
    return {r.path: r for r in results}


def git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.email=test@example.com", "-c", "user.name=Test", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


def test_missing_or_non_directory_root_raises_at_call_time(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        discover(tmp_path / "nope")  # no iteration needed
    file = write(tmp_path, "a.md")
    with pytest.raises(SourceError, match="is not a directory"):
        discover(file)


def test_selects_by_extension_with_kinds_in_path_order(tmp_path: Path) -> None:
    for rel in ["a.md", "a/b.md", "a-b.md", "B.MDX", "c.markdown", "d.rst", "e.txt", "setup.py", "x/y.json"]:
        write(tmp_path, rel)
    write(tmp_path, "f.ipynb", '{"cells": []}')
    results = discover(tmp_path)
    assert isinstance(results, Iterator)
    assert summary(list(results)) == [
        ("B.MDX", "markdown"),
        ("a-b.md", "markdown"),
        ("a.md", "markdown"),
        ("a/b.md", "markdown"),
        ("c.markdown", "markdown"),
        ("d.rst", "rst"),
        ("e.txt", "text"),
        ("f.ipynb", "notebook"),
    ]
    first = by_path(run(tmp_path))["a/b.md"]
    assert first == SourceFile("a/b.md", tmp_path.resolve() / "a" / "b.md", 6, "markdown")


def test_custom_extensions(tmp_path: Path) -> None:
    write(tmp_path, "a.md")
    write(tmp_path, "b.adoc", "= Title\n")
    assert summary(run(tmp_path, extensions=["adoc"])) == [("b.adoc", "text")]


def test_binary_content_is_skipped_whatever_the_extension(
    tmp_path: Path, make_png: Callable[[int, int], bytes]
) -> None:
    png = make_png(16, 16)
    write(tmp_path, "logo.md", png)
    write(tmp_path, "controls.txt", bytes(range(1, 8)) * 300)  # no NUL, but all control bytes
    write(tmp_path, "latin1.txt", "Café crème, déjà vu.\n".encode("latin-1"))  # invalid UTF-8, still text
    write(tmp_path, "cut.md", "é" * 5000)  # 10,000 bytes: the 8 KB probe cuts a character in two
    results = by_path(run(tmp_path))
    assert results["logo.md"] == Skipped("logo.md", "binary", "binary content", size=len(png))
    assert results["controls.txt"] == Skipped("controls.txt", "binary", "binary content", size=2100)
    assert isinstance(results["latin1.txt"], SourceFile)
    assert isinstance(results["cut.md"], SourceFile)


def test_empty_and_too_large(tmp_path: Path) -> None:
    write(tmp_path, "empty.md", "")
    write(tmp_path, "huge.txt", "x" * 5_000_000)  # one 5 MB line
    write(tmp_path, "small.md", "0123456789")
    assert run(tmp_path) == [
        Skipped("empty.md", "empty", size=0),
        Skipped("huge.txt", "too_large", "5000000 bytes > max_file_bytes 2000000", size=5_000_000),
        SourceFile("small.md", tmp_path.resolve() / "small.md", 10, "markdown"),
    ]
    assert summary(run(tmp_path, max_file_bytes=9)) == [
        ("empty.md", "empty"),
        ("huge.txt", "too_large"),
        ("small.md", "too_large"),
    ]


def test_lockfiles_and_minified_files_are_reported_whatever_their_extension(tmp_path: Path) -> None:
    names = ["package-lock.json", "poetry.lock", "yarn.lock", "pnpm-lock.yaml", "Cargo.lock", "uv.lock"]
    for name in names:
        write(tmp_path, f"deps/{name}", "{}\n")
    write(tmp_path, "web/app.min.js", "!function(){}();")
    write(tmp_path, "web/site.min.css", "a{b:c}")
    write(tmp_path, "web/app.js.map", '{"version":3}')
    write(tmp_path, "web/app.js", "function f() {}\n")  # unselected and unremarkable: not reported
    write(tmp_path, "tool.py", "print(1)\n")
    assert run(tmp_path) == [
        Skipped("deps/Cargo.lock", "lockfile", size=3),
        Skipped("deps/package-lock.json", "lockfile", size=3),
        Skipped("deps/pnpm-lock.yaml", "lockfile", size=3),
        Skipped("deps/poetry.lock", "lockfile", size=3),
        Skipped("deps/uv.lock", "lockfile", size=3),
        Skipped("deps/yarn.lock", "lockfile", size=3),
        Skipped("web/app.js.map", "minified", size=13),
        Skipped("web/app.min.js", "minified", size=16),
        Skipped("web/site.min.css", "minified", size=6),
    ]


def test_generated_marker_in_the_first_kilobyte(tmp_path: Path) -> None:
    write(tmp_path, "api.md", "<!-- DO NOT EDIT: generated by gen_api.py -->\n# API\n")
    write(tmp_path, "prebuilt.md", "[//]: # (This file is automatically generated using a script.)\n# X\n")
    write(tmp_path, "prose.md", "# Reference\n\nThe reference pages are generated from docstrings.\n")
    write(tmp_path, "late.md", "# Late\n\n" + "word " * 300 + "\n<!-- do not edit -->\n")  # marker after 1 KB
    results = by_path(run(tmp_path))
    assert results["api.md"] == Skipped(
        "api.md", "generated", "marker 'DO NOT EDIT' in the first 1 KB", size=52
    )
    assert isinstance(results["prebuilt.md"], Skipped)
    assert results["prebuilt.md"].reason == "generated"
    assert isinstance(results["prose.md"], SourceFile)
    assert isinstance(results["late.md"], SourceFile)


def test_dot_directories_are_reported_once_and_never_entered(tmp_path: Path) -> None:
    write(tmp_path, ".github/ISSUE_TEMPLATE.md")
    write(tmp_path, ".github/workflows/ci.yml", "on: push\n")
    write(tmp_path, ".github/workflows/notes.md")
    write(tmp_path, "docs/.drafts/idea.md")
    write(tmp_path, ".git/HEAD", "ref: refs/heads/main\n")
    write(tmp_path, ".git/description.md")
    (tmp_path / ".empty").mkdir()
    write(tmp_path, ".hidden-file.md")  # a dot-file is an ordinary file
    write(tmp_path, "docs/index.md")
    assert summary(run(tmp_path, use_git=False)) == [
        (".github", "dot_directory"),
        (".hidden-file.md", "markdown"),
        ("docs/.drafts", "dot_directory"),
        ("docs/index.md", "markdown"),
    ]


def test_gitignore_files_apply_outside_git(tmp_path: Path) -> None:
    write(tmp_path, ".gitignore", "build/\n*.draft.md\n")
    write(tmp_path, "docs/.gitignore", "private.md\n!keep.draft.md\n")
    for rel in [
        "build/out.md",
        "notes.draft.md",
        "docs/private.md",
        "docs/keep.draft.md",
        "docs/other.draft.md",
        "docs/build/x.md",
        "other/private.md",
        "index.md",
    ]:
        write(tmp_path, rel)
    assert [r.path for r in run(tmp_path)] == ["docs/keep.draft.md", "index.md", "other/private.md"]


def test_include_globs_replace_extension_selection_and_exclude_wins(tmp_path: Path) -> None:
    files = ["README.md", "docs/guide.md", "docs/secret.md", "docs/page.html", "docs/deep/x.md", "tool.py"]
    for rel in files:
        write(tmp_path, rel)
    results = run(tmp_path, include=["docs/*.md", "*.html"], exclude=["docs/secret*", "*.py"])
    # Gitignore syntax: "docs/*.md" is anchored and "*" does not cross "/", so docs/deep/x.md is out.
    assert summary(results) == [
        ("docs/guide.md", "markdown"),
        ("docs/page.html", "text"),
        ("docs/secret.md", "excluded"),
    ]
    assert by_path(results)["docs/secret.md"] == Skipped(
        "docs/secret.md", "excluded", "matches an --exclude glob", size=6
    )


def test_exclude_without_include(tmp_path: Path) -> None:
    for rel in ["a.md", "legacy/b.md", "legacy/c.rst", "legacy/d.py"]:
        write(tmp_path, rel)
    assert summary(run(tmp_path, exclude=["legacy/"])) == [
        ("a.md", "markdown"),
        ("legacy/b.md", "excluded"),
        ("legacy/c.rst", "excluded"),
    ]


_UNCLOSED = "has a '[' that no ']' closes, so gitignore syntax drops the whole pattern: write \\[ for a '['"


@pytest.mark.parametrize(
    ("glob", "why"),
    [
        ("[", _UNCLOSED),
        ("docs/[!a.md", _UNCLOSED),
        ("docs\\", "ends with a '\\' that escapes nothing: write \\\\ for a backslash"),
        ("#notes.md", "starts with '#', which makes it a comment in gitignore syntax: write \\# for a '#'"),
        ("  ", "is empty, so it matches nothing"),
        ("/", "is '/' alone, which matches no path in gitignore syntax"),
        ("!", "is a '!' (negation) with no glob after it"),
        ("[z-a].md", "has an invalid bracket expression (bad character range z-a)"),
    ],
    ids=["unclosed", "unclosed-class", "backslash", "comment", "blank", "slash", "bare-not", "range"],
)
@pytest.mark.parametrize("flag", ["include", "exclude"])
def test_a_glob_that_can_never_match_is_refused_at_call_time(
    tmp_path: Path, flag: str, glob: str, why: str
) -> None:
    write(tmp_path, "a.md")
    with pytest.raises(ConfigError) as info:
        discover(tmp_path, **{flag: ["*.md", glob]})  # no iteration needed
    assert str(info.value) == f"--{flag} '{glob}' {why}"


def test_negated_globs_alone_are_refused_and_escapes_select_the_literal_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        discover(tmp_path, include=["!docs/old/**"])
    assert str(info.value) == (
        "--include '!docs/old/**': a '!' glob only takes back paths another --include glob matches, "
        "so negated globs alone match nothing; add the glob they carve out of (e.g. 'docs/**')"
    )
    for rel in ["[draft].md", "#notes.md", "docs/a.md", "docs/old/b.md"]:
        write(tmp_path, rel)
    assert summary(run(tmp_path, include=["\\[draft].md", "\\#notes.md"])) == [
        ("#notes.md", "markdown"),
        ("[draft].md", "markdown"),
    ]
    assert summary(run(tmp_path, include=["docs/**", "!docs/old/**"])) == [("docs/a.md", "markdown")]


@pytest.mark.timeout(10)
def test_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    write(outside, "secret.md", "# outside\n")
    os.mkfifo(outside / "pipe.md")  # opening it for reading would block: the test would time out
    write(root, "docs/real.md", "# real\n")
    (root / "alias.md").symlink_to("docs/real.md")
    (root / "escape.md").symlink_to(outside / "secret.md")
    (root / "pipe.md").symlink_to("../outside/pipe.md")
    (root / "shared").symlink_to(outside)  # a directory outside
    (root / "dangling.md").symlink_to("missing.md")
    (root / "docs" / "loop").symlink_to("..")  # directory link to an ancestor
    (root / "cycle-a.md").symlink_to("cycle-b.md")
    (root / "cycle-b.md").symlink_to("cycle-a.md")
    (root / "mirror").symlink_to("docs")
    (root / "tool.py").symlink_to(outside / "secret.md")  # reported whatever its name
    os.mkfifo(root / "fifo.md")

    results = run(root)
    assert summary(results) == [
        ("alias.md", "markdown"),
        ("cycle-a.md", "symlink_loop"),
        ("cycle-b.md", "symlink_loop"),
        ("dangling.md", "symlink_broken"),
        ("docs/loop", "symlink_loop"),
        ("docs/real.md", "markdown"),
        ("escape.md", "symlink_outside"),
        ("fifo.md", "unreadable"),
        ("mirror", "symlink_directory"),
        ("pipe.md", "symlink_outside"),
        ("shared", "symlink_outside"),
        ("tool.py", "symlink_outside"),
    ]
    found = by_path(results)
    assert found["alias.md"] == SourceFile("alias.md", root.resolve() / "docs" / "real.md", 7, "markdown")
    assert found["escape.md"] == Skipped(
        "escape.md", "symlink_outside", f"points to {outside / 'secret.md'} (outside the source)"
    )
    assert found["fifo.md"] == Skipped("fifo.md", "unreadable", "not a regular file", size=0)
    loaded = [r.abspath for r in results if isinstance(r, SourceFile)]
    assert all(path.is_relative_to(root.resolve()) for path in loaded)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path, "locked.md")
    path.chmod(0)
    try:
        assert run(tmp_path) == [Skipped("locked.md", "unreadable", "Permission denied", size=6)]
    finally:
        path.chmod(0o644)


def test_git_work_tree_lists_tracked_and_untracked_but_not_ignored(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    write(repo, ".gitignore", "ignored.md\nout/\n")
    write(repo, "docs/tracked.md")
    write(repo, "docs/deleted.md")
    write(repo, ".github/ISSUE_TEMPLATE.md")
    write(repo, ".github/pull_request_template.md")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "init")
    (repo / "docs" / "deleted.md").unlink()  # still in the index, gone from disk
    write(repo, "docs/untracked.md")
    write(repo, "docs/ignored.md")
    write(repo, "out/report.md")
    write(repo, "poetry.lock", "x\n")

    assert summary(run(repo)) == [
        (".github", "dot_directory"),
        ("docs/tracked.md", "markdown"),
        ("docs/untracked.md", "markdown"),
        ("poetry.lock", "lockfile"),
    ]
    # A subdirectory of a work tree: paths are relative to it, the repository's .gitignore applies.
    assert summary(run(repo / "docs")) == [("tracked.md", "markdown"), ("untracked.md", "markdown")]
    # The walk (use_git=False) reads the same .gitignore and finds the same files.
    assert summary(run(repo, use_git=False)) == summary(run(repo))


def test_sample_docs_tree() -> None:
    assert summary(run(SAMPLE_DOCS)) == [
        (".github", "dot_directory"),
        ("README.md", "markdown"),
        ("docs/assets/app.min.js", "minified"),
        ("docs/assets/logo.md", "binary"),
        ("docs/changelog.txt", "text"),
        ("docs/guide/configuration.md", "markdown"),
        ("docs/guide/getting-started.md", "markdown"),
        ("docs/index.md", "markdown"),
        ("docs/package-lock.json", "lockfile"),
        ("docs/reference/api.rst", "rst"),
        ("docs/tutorial.ipynb", "notebook"),
    ]
    assert sum(f.stat().st_size for f in SAMPLE_DOCS.rglob("*") if f.is_file()) < 200_000


def test_an_include_that_names_a_lockfile_or_generated_file_loads_it_and_a_wildcard_does_not(
    tmp_path: Path,
) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "package-lock.json").write_text('{"lockfileVersion": 3}\n')
    (tmp_path / "docs" / "prebuilt.md").write_text("# Prebuilt\n\nAutomatically generated. Do not edit.\n")

    def outcome(*include: str) -> dict[str, str]:
        return {
            item.path: item.reason if isinstance(item, Skipped) else "loaded"
            for item in discover(tmp_path, include=list(include))
        }

    named = {"docs/package-lock.json": "loaded", "docs/prebuilt.md": "loaded"}
    assert outcome("docs/package-lock.json", "docs/prebuilt.md") == named
    assert outcome("/docs/package-lock.json", "prebuilt.md") == named  # rooted path; a name at any depth
    assert outcome("docs/*", "**/*.md") == {
        "docs/package-lock.json": "lockfile",
        "docs/prebuilt.md": "generated",
    }
    assert outcome("*.md") == {"docs/package-lock.json": "lockfile", "docs/prebuilt.md": "generated"}
