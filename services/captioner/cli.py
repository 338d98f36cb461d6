"""``listenpost facets``: the facets of caption text read on stdin.

The text may be one plain caption, or a merged timeline (``[00:00-00:30 customer] ...`` lines,
as in an ``audio.captioned`` event's ``caption``), whose lines become windows with their times
and roles.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from services.captioner.facets import extract_facets
from services.captioner.timeline import clock, parse_timeline
from services.events.models import Facets


def facets_table(facets: Facets) -> list[Table]:
    emotions = Table(title="Emotions", show_lines=False)
    for column in ("window", "time", "role", "label", "intensity", "hedged", "span"):
        emotions.add_column(column, overflow="fold")
    for e in facets.emotions:
        emotions.add_row(
            str(e.window),
            f"{clock(e.start)}-{clock(e.end)}",
            e.role or "?",
            e.label,
            f"{e.intensity:.2f}",
            "yes" if e.hedged else "",
            e.span,
        )
    sounds = Table(title="Sound events")
    for column in ("window", "time", "label", "confidence", "hedged", "span"):
        sounds.add_column(column, overflow="fold")
    for s in facets.sound_events:
        sounds.add_row(
            str(s.window), f"{clock(s.start)}-{clock(s.end)}", s.label, f"{s.confidence:.2f}", "yes" if s.hedged else "", s.span
        )
    summary = Table(show_header=False, title="Call")
    summary.add_row("languages", ", ".join(facets.languages) or "-")
    summary.add_row("speech present", str(facets.speech_present).lower())
    summary.add_row("music present", str(facets.music_present).lower())
    return [emotions, sounds, summary]


def facets_command(
    json_output: Annotated[bool, typer.Option("--json", help="Print the facets as JSON.")] = False,
    role: Annotated[
        str | None, typer.Option(help="Speaker role of windows that name none (a split channel's caption).")
    ] = None,
) -> None:
    """Read caption text on stdin (one caption, or a merged timeline) and print its facets."""
    windows = parse_timeline(sys.stdin.read())
    if role:
        for window in windows:
            window.role = window.role or role
    facets = extract_facets(windows)
    if json_output:
        typer.echo(facets.model_dump_json(indent=2))
        return
    console = Console()
    for table in facets_table(facets):
        console.print(table)


__all__ = ["facets_command", "facets_table"]
