"""Discovery: which files of a source tree are read, and why every other notable file is not.

``discover(root)`` streams, in path order, a ``SourceFile`` for each file to load and a
``Skipped`` (with a stable reason code) for each file the user might expect to be read but
will not be. Rules, in the order they apply:

1. Listing. Inside a git work tree the files are those of ``git ls-files -co --exclude-standard``
   (tracked plus untracked-but-not-ignored); elsewhere the tree is walked and every ``.gitignore``
   (root and nested) is applied. Git-ignored files are not listed and not reported.
2. Dot-directories (``.github/``, ``.vscode/``...) are reported once, as the directory, and
   never entered; ``.git`` is never entered nor reported.
3. Symlinks are never followed out of the root (``symlink_outside``: the link's target path
   is resolved, the target itself is never opened), broken ones are ``symlink_broken``,
   symlink cycles and directory links to an ancestor are ``symlink_loop``. Other directory
   symlinks are not followed either (``symlink_directory``): the files they point at are
   discovered under their real path, so following would only read them twice. These are
   reported whatever the link's name. A link to a file inside the root is read under the
   link's path (``SourceFile.abspath`` is the resolved target).
4. Selection. By default a file is selected by its extension (``DEFAULT_EXTENSIONS``). Include
   globs *replace* that rule: with ``include`` given, exactly the files matching one of the
   globs are selected, whatever their extension. Globs use gitignore syntax and are matched
   against the POSIX path relative to the root. Unselected files are not reported, except
   lockfiles (``lockfile``) and minified bundles or source maps (``minified``), which are
   always reported so the report shows what was avoided. An include glob without a wildcard
   names files: those are loaded even if lockfiles, minified or generated (rule 6).
5. ``exclude`` globs win over everything above: a file that would have been selected or
   reported is reported as ``excluded``.
   A glob that can never match (``[`` never closed, a trailing ``\\``, a ``#`` comment, empty) is
   refused with ``ConfigError`` before anything is listed: see :func:`glob_problem`.
6. A selected file is skipped if it is not a regular file or cannot be read (``unreadable``),
   empty (``empty``), bigger than ``max_file_bytes`` (``too_large``), binary whatever its
   extension (``binary``: a NUL byte or mostly control bytes in the first 8 KB), or carries a
   generated-file marker such as "DO NOT EDIT" in its first 1 KB (``generated``).

Only a bounded prefix (8 KB) of a file is read here.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import pathspec

from docingest.errors import ConfigError, SourceError
from docingest.models import FileKind, Skipped, SourceFile

__all__ = [
    "DEFAULT_EXTENSIONS",
    "LOCKFILE_NAMES",
    "check_globs",
    "discover",
    "glob_problem",
    "kind_for",
    "matching",
]

DEFAULT_EXTENSIONS: tuple[str, ...] = (".md", ".mdx", ".markdown", ".rst", ".txt", ".ipynb")

_KINDS: dict[str, FileKind] = {
    ".md": "markdown",
    ".mdx": "markdown",
    ".markdown": "markdown",
    ".rst": "rst",
    ".txt": "text",
    ".ipynb": "notebook",
}

LOCKFILE_NAMES: frozenset[str] = frozenset(
    {
        "package-lock.json",
        "npm-shrinkwrap.json",
        "yarn.lock",
        "pnpm-lock.yaml",
        "bun.lockb",
        "poetry.lock",
        "pipfile.lock",
        "pdm.lock",
        "uv.lock",
        "cargo.lock",
        "gemfile.lock",
        "composer.lock",
        "go.sum",
        "flake.lock",
        "mix.lock",
        "podfile.lock",
        "pubspec.lock",
        "packages.lock.json",
        "conda-lock.yml",
    }
)
_MINIFIED_SUFFIXES = (".min.js", ".min.mjs", ".min.css", ".map")

BINARY_PROBE_BYTES = 8192
GENERATED_PROBE_BYTES = 1024
# Bytes that do not occur in text: C0 controls except \t \n \v \f \r, \b and ESC; plus DEL.
_CONTROL_BYTES = frozenset(range(32)) - {8, 9, 10, 11, 12, 13, 27} | {127}
_GENERATED_MARKER = re.compile(
    r"do not edit|@generated|auto-?generated file"
    r"|this file (?:is|was|has been) (?:auto(?:matically)?[- ]?)?generated",
    re.IGNORECASE,
)


def kind_for(path: str) -> FileKind:
    """The loader kind of a path, from its extension; unknown extensions load as plain text."""
    return _KINDS.get(_suffix(path), "text")


def discover(
    root: Path,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    max_file_bytes: int = 2_000_000,
    extensions: Sequence[str] = DEFAULT_EXTENSIONS,
    use_git: bool = True,
) -> Iterator[SourceFile | Skipped]:
    """Stream the files under ``root`` to load, and the notable ones skipped, in path order.

    ``use_git=False`` walks the tree (applying ``.gitignore`` files) even inside a git work tree.
    Raises ``SourceError`` at once if ``root`` is missing or not a directory, ``ConfigError`` if
    a glob can never match.
    """
    root = Path(root)
    if not root.exists():
        raise SourceError(f"source {str(root)!r} does not exist: pass a directory of documentation")
    if not root.is_dir():
        raise SourceError(f"source {str(root)!r} is not a directory: pass the directory that holds it")
    check_globs("--include", include)
    check_globs("--exclude", exclude)
    base = root.resolve()
    selector = _Selector(
        include=_spec(include),
        exclude=_spec(exclude),
        extensions=frozenset(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions),
        max_file_bytes=max_file_bytes,
        # "a/b.json" and "/b.json" name a path from the root; "b.json" a file name at any depth
        named=frozenset(
            g.strip().lstrip("/") if "/" in g.strip() else "/" + g.strip()
            for g in include
            if not _WILDCARD.search(g)
        ),
    )
    listing = _git_listing(base) if use_git else None
    entries = _from_git(listing) if listing is not None else _walk(base)
    return _discover(base, entries, selector)


def _discover(
    base: Path, entries: Iterator[str | Skipped], selector: _Selector
) -> Iterator[SourceFile | Skipped]:
    for entry in entries:
        if isinstance(entry, Skipped):
            yield entry
            continue
        result = _classify(base, entry, selector)
        if result is not None:
            yield result


class _Selector:
    def __init__(
        self,
        *,
        include: pathspec.GitIgnoreSpec | None,
        exclude: pathspec.GitIgnoreSpec | None,
        extensions: frozenset[str],
        max_file_bytes: int,
        named: frozenset[str] = frozenset(),
    ) -> None:
        self.include = include
        self.exclude = exclude
        self.extensions = extensions
        self.max_file_bytes = max_file_bytes
        #: --include globs without a wildcard: the files they name are loaded even if lockfiles,
        #: minified or generated, because the user asked for those very files
        self.named = named

    def names(self, rel: str) -> bool:
        """Whether an --include glob names ``rel`` itself (a path, or a file name at any depth)."""
        return rel in self.named or ("/" + rel.rsplit("/", 1)[-1]) in self.named

    def selected(self, rel: str) -> bool:
        if self.include is not None:
            return self.include.match_file(rel)
        return _suffix(rel) in self.extensions

    def excluded(self, rel: str) -> bool:
        return self.exclude is not None and self.exclude.match_file(rel)


_WILDCARD = re.compile(r"[*?\[\\!]")


def _spec(globs: Sequence[str]) -> pathspec.GitIgnoreSpec | None:
    return pathspec.GitIgnoreSpec.from_lines(globs) if globs else None


def glob_problem(glob: str) -> str | None:
    """Why a gitignore-style glob can never match a path (None: it is a valid glob).

    Git's syntax drops some patterns without a word (an unclosed ``[``, a ``#`` comment, a blank
    line) and pathspec follows it; on the command line that would only select nothing, silently.
    """
    body = glob if glob.endswith("\\ ") else glob.rstrip()  # as git: trailing spaces unless escaped
    if not body:
        return "is empty, so it matches nothing"
    if body.startswith("#"):
        return "starts with '#', which makes it a comment in gitignore syntax: write \\# for a '#'"
    if body == "/":
        return "is '/' alone, which matches no path in gitignore syntax"
    try:
        pattern = pathspec.GitIgnoreSpec.from_lines([glob]).patterns[0]
    except re.error as exc:
        return f"has an invalid bracket expression ({exc.msg})"
    except ValueError as exc:
        if (len(body) - len(body.rstrip("\\"))) % 2:
            return "ends with a '\\' that escapes nothing: write \\\\ for a backslash"
        if body == "!":
            return "is a '!' (negation) with no glob after it"
        return f"is not a valid gitignore-style glob ({exc})"
    if pattern.include is None:
        return (
            "has a '[' that no ']' closes, so gitignore syntax drops the whole pattern: write \\[ for a '['"
        )
    return None


def check_globs(flag: str, globs: Sequence[str]) -> None:
    """Refuse (``ConfigError``, naming ``flag``) globs of which one, or all together, match nothing."""
    for glob in globs:
        problem = glob_problem(glob)
        if problem is not None:
            raise ConfigError(f"{flag} '{glob}' {problem}")
    if globs and all(glob.startswith("!") for glob in globs):
        raise ConfigError(
            f"{flag} {_quoted(globs)}: a '!' glob only takes back paths another {flag} glob matches, "
            "so negated globs alone match nothing; add the glob they carve out of (e.g. 'docs/**')"
        )


def matching(globs: Sequence[str], paths: Iterable[str]) -> list[str]:
    """Those of ``paths`` that ``globs`` match, as ``include`` selects files in :func:`discover`."""
    spec = _spec(globs)
    return [] if spec is None else [p for p in paths if spec.match_file(p)]


def _quoted(globs: Sequence[str]) -> str:
    return ", ".join(f"'{glob}'" for glob in globs)


def _suffix(rel: str) -> str:
    name = rel.rsplit("/", 1)[-1]
    dot = name.rfind(".")
    return name[dot:].lower() if dot > 0 else ""


def _notable(rel: str) -> str | None:
    """The reason a file is reported whatever its extension: lockfiles and minified bundles."""
    name = rel.rsplit("/", 1)[-1].lower()
    if name in LOCKFILE_NAMES:
        return "lockfile"
    if name.endswith(_MINIFIED_SUFFIXES):
        return "minified"
    return None


# ---------------------------------------------------------------------------------------------
# Listing: git, or a walk with .gitignore files. Both yield relative POSIX paths in path order,
# and a Skipped for each dot-directory (once) or unreadable directory.


def _git_listing(base: Path) -> list[str] | None:
    """Paths git lists under ``base``, or None when ``base`` is not in a usable git work tree."""
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE")}
    try:
        probe = subprocess.run(
            ["git", "rev-parse", "--is-inside-work-tree"], cwd=base, env=env, capture_output=True, check=False
        )
        if probe.returncode != 0 or probe.stdout.strip() != b"true":
            return None
        listed = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"],
            cwd=base,
            env=env,
            capture_output=True,
            check=False,
        )
    except OSError:  # git is not installed
        return None
    if listed.returncode != 0:
        return None
    paths = {os.fsdecode(p) for p in listed.stdout.split(b"\0") if p}
    # A trailing slash marks a nested repository git does not enter; neither do we.
    return sorted(p for p in paths if not p.endswith("/"))


def _from_git(paths: list[str]) -> Iterator[str | Skipped]:
    reported: set[str] = set()
    for rel in paths:
        parts = rel.split("/")
        hidden = next((i for i, part in enumerate(parts[:-1]) if part.startswith(".")), None)
        if hidden is None:
            yield rel
            continue
        directory = "/".join(parts[: hidden + 1])
        if directory not in reported:
            reported.add(directory)
            yield _dot_directory(directory)


def _dot_directory(rel: str) -> Skipped:
    return Skipped(rel, "dot_directory", "hidden directory, not entered")


_IgnoreStack = tuple[tuple[str, pathspec.GitIgnoreSpec], ...]


def _walk(base: Path) -> Iterator[str | Skipped]:
    yield from _walk_dir(base, "", ())


def _walk_dir(directory: Path, prefix: str, ignores: _IgnoreStack) -> Iterator[str | Skipped]:
    gitignore = directory / ".gitignore"
    if gitignore.is_file() and not gitignore.is_symlink():
        try:
            lines = gitignore.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            lines = []
        ignores = (*ignores, (prefix, pathspec.GitIgnoreSpec.from_lines(lines)))
    try:
        with os.scandir(directory) as it:
            entries = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in it]
    except OSError as exc:
        yield Skipped(prefix.rstrip("/") or ".", "unreadable", f"cannot list directory: {exc.strerror}")
        return
    # A directory sorts as "name/", so this walk yields paths in plain string order.
    entries.sort(key=lambda e: e[0] + "/" if e[1] else e[0])
    for name, is_dir in entries:
        rel = prefix + name
        if is_dir and name == ".git":
            continue
        if _ignored(rel, is_dir, ignores):
            continue
        if not is_dir:
            yield rel
        elif name.startswith("."):
            if _has_entries(directory / name):
                yield _dot_directory(rel)
        else:
            yield from _walk_dir(directory / name, rel + "/", ignores)


def _ignored(rel: str, is_dir: bool, ignores: _IgnoreStack) -> bool:
    """Git's rule: the deepest .gitignore with a matching pattern decides; its last match wins."""
    ignored = False
    for prefix, spec in ignores:
        result = spec.check_file(rel[len(prefix) :] + ("/" if is_dir else ""))
        if result.include is not None:
            ignored = result.include
    return ignored


def _has_entries(directory: Path) -> bool:
    try:
        with os.scandir(directory) as it:
            return any(True for _ in it)
    except OSError:
        return True


# ---------------------------------------------------------------------------------------------
# Classification of one listed path.


def _classify(base: Path, rel: str, selector: _Selector) -> SourceFile | Skipped | None:
    path = base / rel
    try:
        st = os.lstat(path)
    except FileNotFoundError:  # listed by git's index but deleted from the work tree
        return None
    except OSError as exc:
        return Skipped(rel, "unreadable", exc.strerror or str(exc))
    notable = _notable(rel)
    wanted = notable is not None or selector.selected(rel)
    is_link = stat.S_ISLNK(st.st_mode)
    if not wanted and not is_link:
        return None
    if selector.excluded(rel):
        return Skipped(rel, "excluded", "matches an --exclude glob", size=st.st_size)
    target = path
    if is_link:
        # Reported whatever the link's name when it cannot be followed as a file.
        followed = _follow_symlink(base, rel, path)
        if isinstance(followed, Skipped):
            return followed
        target, st = followed
    if not wanted or stat.S_ISDIR(st.st_mode):  # a directory: e.g. a submodule git lists as a path
        return None
    size = st.st_size
    if notable is not None and not selector.names(rel):
        return Skipped(rel, notable, size=size)
    if not stat.S_ISREG(st.st_mode):
        return Skipped(rel, "unreadable", "not a regular file", size=size)
    if size == 0:
        return Skipped(rel, "empty", size=0)
    if size > selector.max_file_bytes:
        return Skipped(
            rel, "too_large", f"{size} bytes > max_file_bytes {selector.max_file_bytes}", size=size
        )
    try:
        with open(target, "rb") as fh:
            head = fh.read(BINARY_PROBE_BYTES)
    except OSError as exc:
        return Skipped(rel, "unreadable", exc.strerror or str(exc), size=size)
    if _is_binary(head):
        return Skipped(rel, "binary", "binary content", size=size)
    marker = _GENERATED_MARKER.search(head[:GENERATED_PROBE_BYTES].decode("utf-8", errors="replace"))
    if marker is not None and not selector.names(rel):
        return Skipped(rel, "generated", f"marker {marker.group(0)!r} in the first 1 KB", size=size)
    return SourceFile(path=rel, abspath=target, size=size, kind=kind_for(rel))


def _follow_symlink(base: Path, rel: str, path: Path) -> tuple[Path, os.stat_result] | Skipped:
    """Resolve a symlink without touching anything outside ``base``."""
    try:
        link = os.readlink(path)
    except OSError as exc:
        return Skipped(rel, "unreadable", exc.strerror or str(exc))
    target = Path(os.path.realpath(path))
    if not target.is_relative_to(base):
        return Skipped(rel, "symlink_outside", f"points to {link} (outside the source)")
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return Skipped(rel, "symlink_loop", f"points to {link}: symlink cycle")
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return Skipped(rel, "symlink_broken", f"points to {link}, which does not exist")
        return Skipped(rel, "unreadable", exc.strerror or str(exc))
    if stat.S_ISDIR(st.st_mode):
        if path.parent.resolve().is_relative_to(target):
            return Skipped(rel, "symlink_loop", f"points to {link}, a directory that contains it")
        detail = f"points to {link}; directory links are not followed, the files are read at their own path"
        return Skipped(rel, "symlink_directory", detail)
    return target, st


def _is_binary(head: bytes) -> bool:
    """NUL byte, or more than 10% control bytes, or (not UTF-8 and) more than 30% undecodable."""
    if not head:
        return False
    if b"\0" in head:
        return True
    controls = sum(1 for b in head if b in _CONTROL_BYTES)
    if controls * 10 > len(head):
        return True
    try:
        head.decode("utf-8")
        return False
    except UnicodeDecodeError as exc:
        if exc.start >= len(head) - 3 and exc.reason == "unexpected end of data":
            return False  # the probe cut a multi-byte character
    replaced = head.decode("utf-8", errors="replace").count("\ufffd")
    return replaced * 10 > len(head) * 3
