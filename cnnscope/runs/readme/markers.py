"""The marker lines of a README, and the update of the block bodies between them.

Markers inside fenced code (``` or ~~~) are text, not markers. An HTML comment line whose name is
not a block kind and that has no `<!-- /NAME -->` partner is an ordinary comment and is left alone.
"""
import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cnnscope.errors import CnnscopeError
from cnnscope.files import atomic_write_bytes, kind_of
from cnnscope.runs.readme.kinds import KINDS, SEED_PREFIXES, is_known

# A marker is a whole line; the name is upper case. Args are parsed separately (ARG_RE).
MARKER_RE = re.compile(r"<!--[ \t]*(/?)([A-Z][A-Z0-9_]*)(?:[ \t]+(.*?))?[ \t]*-->[ \t]*")
ARG_RE = re.compile(r"""[ \t]*([a-z_]+)=(?:"([^"]*)"|'([^']*)'|([^\s"']+))""")
FENCE_RE = re.compile(r"[ \t]*(`{3,}|~{3,})(.*)")


@dataclass(frozen=True)
class Block:
    name: str  # as written in the marker: CURVES, CM_BASE, ...
    args: tuple  # ((key, value), ...) in marker order
    open_index: int  # 0-based index of the opening marker line
    close_index: int

    @property
    def line(self) -> int:
        return self.open_index + 1


# ---- parsing ----------------------------------------------------------------------------------

def split_lines(text: str) -> list[str]:
    """Lines with their endings ("\\n" or "\\r\\n"); joining them gives `text` back exactly."""
    return re.findall(r"[^\n]*\n|[^\n]+\Z", text)


def _marker_lines(lines):
    """(index, is_close, name, raw args) for every marker-shaped line outside fenced code."""
    fence = None  # the opening fence's characters while inside fenced code
    for i, line in enumerate(lines):
        bare = line.rstrip("\r\n").removeprefix("\ufeff" if i == 0 else "")  # a byte-order mark opens line 1
        if fence:
            if re.fullmatch(rf"[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*", bare):
                fence = None
            continue
        opener = FENCE_RE.fullmatch(bare)
        if opener and not (opener[1][0] == "`" and "`" in opener[2]):
            fence = opener[1]
            continue
        marker = MARKER_RE.fullmatch(bare)
        if marker:
            yield i, marker[1] == "/", marker[2], marker[3] or ""


def _parse_args(raw: str, where: str) -> tuple:
    args, pos = [], 0
    while pos < len(raw.rstrip()):
        m = ARG_RE.match(raw, pos)
        if not m:
            raise CnnscopeError(
                f"{where}: cannot read the marker arguments {raw[pos:].strip()!r}. Write them as "
                'key=value, a value with spaces in double quotes: title="RF: Net".'
            )
        value = next(v for v in m.groups()[1:] if v is not None)
        args.append((m[1], value))
        pos = m.end()
    keys = [k for k, _ in args]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise CnnscopeError(f"{where}: argument {', '.join(twice)} is given twice in the marker.")
    return tuple(args)


def parse_blocks(lines: list[str], source: str) -> list[Block]:
    """The blocks of a README; every structural mistake is a CnnscopeError naming the line."""
    found = list(_marker_lines(lines))
    closed_names = {name for _, is_close, name, _ in found if is_close}
    blocks, seen = [], {}
    open_marker = None  # (index, name, raw args)
    for i, is_close, name, raw in found:
        where = f"{source}:{i + 1}"
        if is_close:
            if raw:
                raise CnnscopeError(f"{where}: a closing marker takes no arguments; write <!-- /{name} -->.")
            if open_marker is None:
                raise CnnscopeError(
                    f"{where}: closing marker <!-- /{name} --> has no opening <!-- {name} ... --> above it."
                )
            start, open_name, open_raw = open_marker
            if name != open_name:
                raise CnnscopeError(
                    f"{where}: <!-- /{name} --> closes a block that is not open; the block {open_name} "
                    f"opened at line {start + 1} is. Blocks cannot nest or overlap: close {open_name} first."
                )
            args = _parse_args(open_raw, f"{source}:{start + 1}")
            key = (name, frozenset(args))
            if key in seen:
                raise CnnscopeError(
                    f"{source}:{start + 1}: block {name} with the same arguments is already at line "
                    f"{seen[key]}. Remove one of the two (or give them different arguments)."
                )
            seen[key] = start + 1
            blocks.append(Block(name, args, start, i))
            open_marker = None
        elif is_known(name) or name in closed_names:
            if open_marker is not None:
                raise CnnscopeError(
                    f"{where}: block {name} opens inside block {open_marker[1]} (line {open_marker[0] + 1}). "
                    f"Blocks cannot nest: close {open_marker[1]} with <!-- /{open_marker[1]} --> first."
                )
            if not is_known(name):
                raise CnnscopeError(
                    f"{where}: unknown block kind {name}. Known kinds: {', '.join(sorted(KINDS))}, and the "
                    f"seed names {', '.join(p + '_<X>' for p in SEED_PREFIXES)}."
                )
            open_marker = (i, name, raw)
    if open_marker is not None:
        start, name, _ = open_marker
        raise CnnscopeError(
            f"{source}:{start + 1}: block {name} is never closed. Add <!-- /{name} --> on its own line "
            "after the block."
        )
    return blocks


# ---- the update ---------------------------------------------------------------------------------

def _newline(text: str) -> str:
    crlf = text.count("\r\n")
    return "\r\n" if crlf and crlf >= text.count("\n") - crlf else "\n"


def update_text(text: str, renderer, source: str = "README.md") -> str:
    """`text` with every block body regenerated by `renderer` (a blocks.Renderer); raises CnnscopeError
    and changes nothing on error."""
    lines = split_lines(text)
    blocks = parse_blocks(lines, source)
    newline = _newline(text)
    out, pos = [], 0
    for block in blocks:
        where = f"{source}:{block.line}"
        out += lines[pos:block.open_index + 1]
        out.append(renderer.render(block, where).replace("\n", newline))
        pos = block.close_index
    out += lines[pos:]
    unused = [e for e in renderer.rf_entries if e not in renderer.used_rf_entries]
    if unused:
        raise CnnscopeError(
            f"The rf_models entry {unused[0].spec} fills no block: {source} has no "
            f"{' or '.join('RF_' + k for k in unused[0].block_keys())} block. Add one, or leave that entry out.",
            arguments=("rf_models",),
        )
    new = "".join(out)
    # Generated content must not change the block structure (a stray fence or marker line in a run's
    # file would swallow the closing marker on the next update).
    try:
        after = [(b.name, b.args) for b in parse_blocks(split_lines(new), source)]
    except CnnscopeError:
        after = None
    if after != [(b.name, b.args) for b in blocks]:
        raise CnnscopeError(
            f"{source}: the generated content would change the README's block structure (an unbalanced "
            "code fence or a marker line in a run's text file). Check the run files the blocks read."
        )
    return new


@dataclass
class Update:
    """A README's text before and after the update, and its number of blocks."""

    path: Path
    old: str
    new: str
    blocks: int

    @property
    def stale(self) -> bool:
        return self.old != self.new

    def diff(self) -> str:
        name = str(self.path)
        return "".join(difflib.unified_diff(
            split_lines(self.old), split_lines(self.new), fromfile=name, tofile=f"{name} (updated)"
        ))

    def write(self) -> None:
        """Replace the README the user named (through a link the user's README may be: it is theirs)."""
        data = self.new.encode("utf-8", "surrogateescape")
        atomic_write_bytes(Path(os.path.realpath(self.path)), lambda f: f.write(data))


def read_readme(path) -> str:
    path = Path(path)
    kind = kind_of(path)
    if kind == "folder":
        raise CnnscopeError(f"README {path} is a folder, not a file. Pass the README file to update: cnnscope "
                            f"update-readme {path / 'README.md'}.")
    if kind != "file":
        what = "does not exist" if kind == "missing" else f"is a {kind}, not a file"
        raise CnnscopeError(f"README {path} {what}. Pass the README to update: cnnscope update-readme PATH.")
    # surrogateescape: bytes that are not UTF-8 pass through unchanged.
    return path.read_bytes().decode("utf-8", "surrogateescape")
