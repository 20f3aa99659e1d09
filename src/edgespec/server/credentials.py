"""Per-node credentials (torch-free): read a file mapping drafter node ids to their bearer tokens, refusing one that other users can read.

Format, one drafter node per line, like an authorized_keys file: `NODE_ID TOKEN`, separated by whitespace;
blank lines and lines starting with `#` are ignored. Node ids are at most 64 characters (they become
metrics labels); every node id and every token must be unique (a token names exactly one node).
"""

from __future__ import annotations

import stat
from pathlib import Path

__all__ = ["MAX_NODE_ID_CHARS", "read_secret_file", "read_node_tokens", "parse_node_tokens"]

MAX_NODE_ID_CHARS = 64


def read_secret_file(path: Path) -> str:
    """The text of a file holding secrets; ValueError when it cannot be read or group or other users may access it."""
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f"{path} is accessible to other users (mode {stat.S_IMODE(mode):04o}); restrict it with: chmod 600 {path}")
    return text


def parse_node_tokens(text: str, source: str = "node tokens") -> dict[str, str]:
    """node id -> token from `NODE_ID TOKEN` lines; ValueError naming the line for anything else."""
    tokens: dict[str, str] = {}
    owners: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        where = f"{source}, line {number}"
        if len(parts) != 2:
            raise ValueError(f"{where}: expected 'NODE_ID TOKEN', got {len(parts)} fields")
        node, token = parts
        if len(node) > MAX_NODE_ID_CHARS:
            raise ValueError(f"{where}: node id {node[:16]!r}… is longer than {MAX_NODE_ID_CHARS} characters")
        if node in tokens:
            raise ValueError(f"{where}: node id {node!r} appears twice")
        if token in owners:
            raise ValueError(f"{where}: node {node!r} has the same token as node {owners[token]!r}; each node needs its own")
        tokens[node], owners[token] = token, node
    if not tokens:
        raise ValueError(f"{source}: no 'NODE_ID TOKEN' lines")
    return tokens


def read_node_tokens(path: Path) -> dict[str, str]:
    """node id -> token from a node tokens file (see the module docstring); ValueError with the reason."""
    return parse_node_tokens(read_secret_file(path), str(path))
