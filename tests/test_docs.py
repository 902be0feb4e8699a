"""The documentation holds up in a clone: every link and image resolves to a file in the repository (and every
anchor to a heading), nothing tracked points outside the repository to the workplace's shared folder, and every
`bora-diffusion` command the README shows uses flags its subcommand has.

Each checker is a plain function, tested first on bad documents built in tmp_path, so that a check which finds
nothing on the real files has shown it can find something.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from bora_diffusion.app.server import build_parser as build_app_parser
from bora_diffusion.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Written in two pieces so that this file does not match its own check.
OUTSIDE = ("../" + "shared", "/work/" + "shared")

_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
# [text](target) and ![alt](target); the text may hold one level of brackets, the target an optional "title".
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^()\s<>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def split_fences(text: str) -> tuple[list[str], list[list[str]]]:
    """(the prose lines, with fenced code blocks blanked out; the fenced blocks' lines, one list per block)."""
    prose: list[str] = []
    blocks: list[list[str]] = []
    fence: str | None = None
    for line in text.splitlines():
        match = _FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
            blocks.append([])
            prose.append("")
        elif fence is not None and match and match.group(1) == fence and not line.strip().strip(fence):
            fence = None
            prose.append("")
        elif fence is not None:
            blocks[-1].append(line)
            prose.append("")
        else:
            prose.append(line)
    return prose, blocks


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text (code ticks and link targets dropped), lower case,
    everything but letters, digits, '_', '-' and spaces removed, spaces turned into '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link shows its text
    text = text.replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file; a repeated heading gets -1, -2, ... as on GitHub."""
    prose, _ = split_fences(path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    found: set[str] = set()
    for line in prose:
        match = _HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[str]:
    """The targets of every link and image in a Markdown file's prose (not in code)."""
    prose, _ = split_fences(path.read_text(encoding="utf-8"))
    text = _INLINE_CODE.sub("", "\n".join(prose))  # `[x](y)` in code is no link; [`x`](y) stays one
    return _LINK.findall(text)


def broken_links(path: Path, root: Path, tracked: set[Path] | None = None) -> list[str]:
    """Why each relative link of `path` fails to resolve to a file inside `root` (or to a heading there); with
    `tracked` (resolved paths), also a file that exists here but not in a clone."""
    problems = []
    for target in links(path):
        if _SCHEME.match(target):
            continue  # http(s), mailto: not a file of the repository
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path.resolve()
        if not resolved.is_relative_to(root.resolve()):
            problems.append(f"{target}: outside the repository")
        elif not resolved.exists():
            problems.append(f"{target}: no such file")
        elif tracked is not None and resolved.is_file() and resolved not in tracked:
            problems.append(f"{target}: not tracked by git, so a clone lacks it")
        elif anchor:
            if resolved.suffix != ".md":
                problems.append(f"{target}: an anchor into a file that is not Markdown")
            elif anchor not in anchors(resolved):
                problems.append(f"{target}: no heading with anchor #{anchor} in {resolved.name}")
    return problems


def subparsers() -> dict[str, argparse.ArgumentParser]:
    """bora-diffusion's subcommands by name; `app` hands its options to the app's own parser."""
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    commands = dict(action.choices)
    commands["app"] = build_app_parser()
    return commands


SEPARATORS = ("&&", "||", ";", "|", "&")


def command_flags(text: str) -> list[tuple[str, str]]:
    """(subcommand, --flag) for every `bora-diffusion SUB ... --flag` and `python app.py --flag` command in the
    fenced code blocks of a Markdown text (a command starts a line or follows `&&`, `;`, `|`; continuation lines
    are joined and comments dropped); (subcommand, "") once per command."""
    found = []
    _, blocks = split_fences(text)
    for block in blocks:
        for line in "\n".join(block).replace("\\\n", " ").splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            try:
                words = list(lexer)
            except ValueError:
                continue  # not shell (a Python block's quotes)
            command: str | None = None
            starts = True  # at the start of a command: the line's first word, or after a separator
            for i, word in enumerate(words):
                if word in SEPARATORS:
                    command, starts = None, True
                    continue
                if starts and word == "bora-diffusion" and i + 1 < len(words):
                    command = words[i + 1]
                    found.append((command, ""))
                elif starts and word == "python" and words[i + 1 : i + 2] == ["app.py"]:
                    command = "app"
                elif command is not None and word.startswith("--"):
                    found.append((command, word.split("=", 1)[0]))
                starts = False
    return found


def unknown_flags(text: str) -> list[str]:
    commands = subparsers()
    problems = []
    for command, flag in command_flags(text):
        if command not in commands:
            problems.append(f"bora-diffusion {command}: no such subcommand")
        elif flag and flag not in commands[command]._option_string_actions:
            problems.append(f"bora-diffusion {command} {flag}: no such flag")
    return sorted(set(problems))


def tracked_files(root: Path) -> list[str]:
    """The paths git tracks under `root`, relative to it."""
    listed = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z"], capture_output=True, check=True
    ).stdout
    return [name.decode() for name in listed.split(b"\0") if name]


def outside_mentions(root: Path) -> list[str]:
    """file:line of every mention of the shared folder outside the repository in a file git tracks."""
    found = []
    for name in tracked_files(root):
        path = root / name
        if not path.is_file():
            continue  # deleted in the work tree, or a submodule
        data = path.read_bytes()
        for needle in OUTSIDE:
            for match in re.finditer(re.escape(needle.encode()), data):
                line = data.count(b"\n", 0, match.start()) + 1
                found.append(f"{name}:{line}: {needle}")
    return found


IN_GIT = (ROOT / ".git").exists()


# --- the checkers catch what they are for ---------------------------------------------------------------------


def test_slug_follows_githubs_rule():
    assert slug("Using the library") == "using-the-library"
    assert slug("Does the embedded base follow prompts? (`scripts/bench_base.py`)") == (
        "does-the-embedded-base-follow-prompts-scriptsbench_basepy"
    )
    assert slug("(a) Per shape (out, in) x count: overhead ms") == "a-per-shape-out-in-x-count-overhead-ms"
    assert (
        slug("`lora`: Low-Rank Adaptation (arXiv 2106.09685)") == "lora-low-rank-adaptation-arxiv-210609685"
    )
    assert slug("See [the docs](docs/x.md) now") == "see-the-docs-now"


def test_broken_links_are_found(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Title\n\n## Part two\n\n## Part two\n")
    (tmp_path / "img.png").write_bytes(b"\x89PNG")
    (tmp_path / "README.md").write_text(
        "# Top\n\n"
        "[fine](docs/a.md) [anchor](docs/a.md#part-two) [second](docs/a.md#part-two-1) ![pic](img.png)\n"
        "[here](#top) [web](https://example.org/x.md) `[in code](nowhere.md)`\n"
        "[gone](docs/missing.md) [bad anchor](docs/a.md#part-three) [away](" + OUTSIDE[0] + "/METHODS.md)\n"
        "![lost](docs/img/lost.png) [own](#nothing)\n"
        "```\n[in a block](nowhere.md)\n# not a heading\n```\n"
    )
    assert sorted(broken_links(tmp_path / "README.md", tmp_path)) == sorted(
        [
            "docs/missing.md: no such file",
            "docs/a.md#part-three: no heading with anchor #part-three in a.md",
            OUTSIDE[0] + "/METHODS.md: outside the repository",
            "docs/img/lost.png: no such file",
            "#nothing: no heading with anchor #nothing in README.md",
        ]
    )
    assert "not-a-heading" not in anchors(tmp_path / "README.md")
    tracked = {(tmp_path / name).resolve() for name in ("README.md", "docs/a.md")}
    assert "img.png: not tracked by git, so a clone lacks it" in broken_links(
        tmp_path / "README.md", tmp_path, tracked
    )


def test_unknown_flags_and_subcommands_are_found():
    text = (
        "Prose: `bora-diffusion train --nope` is not checked.\n"
        "```bash\n"
        "bora-diffusion train concepts/kettle --out runs/a --rank 4 \\\n"
        "    --stepz 200 --lr=1e-3   # --comment is not a flag\n"
        "bora-diffusion generate a.safetensors --prompt 'a --quoted word' --out x && bora-diffusion frobnicate\n"
        "python app.py --host 0.0.0.0 --auth a:b --colour red\n"
        "bora-diffusion app --port 7861 --portt 1\n"
        "```\n"
        "```\n"
        "cli.py    the bora-diffusion command --not-a-command-line\n"
        "```\n"
    )
    assert unknown_flags(text) == [
        "bora-diffusion app --colour: no such flag",
        "bora-diffusion app --portt: no such flag",
        "bora-diffusion frobnicate: no such subcommand",
        "bora-diffusion train --stepz: no such flag",
    ]


def test_outside_mentions_are_found(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "ok.md").write_text("shared cores, shared/ alone\n")
    (tmp_path / "bad.py").write_text("# one\n# see " + OUTSIDE[0] + "/SETUP.md\n")
    (tmp_path / "untracked.md").write_text(OUTSIDE[1] + "\n")
    subprocess.run(["git", "-C", str(tmp_path), "add", "ok.md", "bad.py"], check=True)
    assert outside_mentions(tmp_path) == ["bad.py:2: " + OUTSIDE[0]]


# --- the real documents ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_and_image_resolves_in_the_repository(doc):
    assert (
        links(doc) or doc.name != "README.md"
    )  # the README links its docs; a parser that finds none is broken
    tracked = {(ROOT / name).resolve() for name in tracked_files(ROOT)} if IN_GIT else None
    assert broken_links(doc, ROOT, tracked) == []


def test_no_tracked_file_points_at_the_shared_folder_outside_the_repository():
    if not IN_GIT:
        pytest.skip("not a git checkout: no tracked files to read")
    found = outside_mentions(ROOT)
    assert not found, "a clone has no such folder; say it in words or link docs/: " + ", ".join(found)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_in_the_code_blocks_uses_real_flags(doc):
    assert unknown_flags(doc.read_text(encoding="utf-8")) == []


def test_the_readme_shows_its_commands_and_starts_with_the_two_entry_points():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    shown = {command for command, _ in command_flags(text)}
    assert {"train", "generate", "export", "compose", "import", "evaluate", "compare", "app"} <= shown
    _, blocks = split_fences(text)
    first = [line.split("#")[0].strip() for line in blocks[0]]
    assert first == ["bash scripts/main.sh", "bash scripts/test.sh"]
