"""`edgespec models fetch|list`: get a named pair into the user's cache, and show what the cache holds (typer sub-app; torch loads only when converting)."""

from __future__ import annotations

import json

import typer

__all__ = ["app", "pair_option_help", "pair_path", "resolve_pair"]

app = typer.Typer(no_args_is_help=True, help="Model pairs: fetch a named pair into the cache, list what is cached.")

pair_option_help = "Named draft/target pair: bundled (shipped) or smollm2 (fetched on first use; see `edgespec models fetch`)."


def _console():
    from rich.console import Console

    return Console(highlight=False, stderr=True)


@app.command("fetch")
def fetch_command(
    pair: str = typer.Argument(..., help="Pair to fetch: smollm2 (the bundled pair ships with edgespec)."),
    json_out: bool = typer.Option(False, "--json", help="End with one JSON object on the last line."),
) -> None:
    """Download, convert and build a named pair into the cache (idempotent; needs no network once cached)."""
    from edgespec.models.catalog import PAIRS, FetchError, cached_pair, fetch_pair
    from edgespec.models.gguf import GGUFError
    from edgespec.progress import progress_bars

    if pair not in PAIRS:
        raise typer.BadParameter(f"unknown pair {pair!r}; known pairs: {', '.join(PAIRS)}", param_hint="PAIR")
    console = _console()
    was_cached = cached_pair(pair) is not None
    try:
        with progress_bars(console) as report:
            draft, target = fetch_pair(pair, say=lambda msg: console.print(f"[dim]· {msg}[/dim]"), report=report)
    except (FetchError, GGUFError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)
    state = "already cached" if was_cached else "fetched"
    console.print(f"{pair}: {state}\n  target {target}\n  draft  {draft}")
    if json_out:
        print(json.dumps({"pair": pair, "target": str(target), "draft": str(draft), "cached": was_cached}))


@app.command("list")
def list_command(json_out: bool = typer.Option(False, "--json", help="End with one JSON object on the last line.")) -> None:
    """Show the named pairs and every model in the cache, with its size and where it came from."""
    from rich.console import Console
    from rich.table import Table

    from edgespec.models.catalog import PAIRS, cached_models, cached_pair
    from edgespec.models.gguf import models_cache

    pairs = [{"pair": name, "description": spec.description, "ready": cached_pair(name) is not None} for name, spec in PAIRS.items()]
    models = cached_models()
    console = Console(highlight=False)
    if not console.is_terminal:  # pipes and logs: wide enough for the paths
        console = Console(highlight=False, width=160)
    table = Table(title="pairs (--pair NAME)")
    for col in ("pair", "ready", "what"):
        table.add_column(col)
    for p in pairs:
        table.add_row(p["pair"], "yes" if p["ready"] else "no: edgespec models fetch " + p["pair"], p["description"])
    console.print(table)
    cache = Table(title=f"cached models in {models_cache()}")
    for col in ("name", "size MB", "from", "pair"):
        cache.add_column(col, justify="right" if col == "size MB" else "left")
    for m in models:
        cache.add_row(m["name"], f"{m['bytes'] / 1e6:.1f}", m["origin"], ", ".join(m["pairs"]))
    console.print(cache if models else f"no models cached in {models_cache()}")
    if json_out:
        print(json.dumps({"cache": str(models_cache()), "pairs": pairs, "models": models}))


def pair_path(pair: str, role: str, given):
    """`given` when set, else the named pair's "draft" or "target" directory (exit 2 for an unknown name or a failed fetch)."""
    from edgespec.models.catalog import PAIRS, FetchError, pair_dirs

    if given is not None:
        return given
    if pair not in PAIRS:
        raise typer.BadParameter(f"unknown pair {pair!r}; known pairs: {', '.join(PAIRS)}", param_hint="--pair")
    try:
        draft, target = pair_dirs(pair)
    except FetchError as exc:
        typer.echo(f"error: --pair {pair}: {exc}", err=True)
        raise typer.Exit(2)
    return draft if role == "draft" else target


def resolve_pair(pair: str, draft, target, need_draft: bool = True):
    """(draft, target) paths for `--pair` and `--draft/--target`: explicit paths win, the pair fills in the rest."""
    return (pair_path(pair, "draft", draft) if need_draft else draft), pair_path(pair, "target", target)
