"""``listenpost audio ...``: look at what preprocessing makes of a recording, without a model.

    inspect FILE [--channels agent,customer] [--mix] [--format mp3] [--json]
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

audio_app = typer.Typer(help="Audio preprocessing, without any model.", no_args_is_help=True)
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _speech_in(segments: np.ndarray, start: float, end: float) -> float:
    if len(segments) == 0:
        return 0.0
    return float(np.clip(np.minimum(segments[:, 1], end) - np.maximum(segments[:, 0], start), 0, None).sum())


def report(prepared: Any, file: Path, seconds: float) -> dict[str, Any]:
    """The JSON that ``inspect --json`` prints: facts, windows (without samples), acoustics, speech."""
    by_channel = {c.channel: s for c, s in zip(prepared.acoustics.channels, prepared.speech, strict=True)}
    windows = [
        {
            "index": w.index,
            "start": w.start,
            "end": w.end,
            "channel": w.channel,
            "role": w.role,
            "speech_s": round(_speech_in(by_channel.get(w.channel, np.zeros((0, 2))), w.start, w.end), 3),
        }
        for w in prepared.windows
    ]
    speech = [
        {"channel": c.channel, "role": c.role, "segments": np.round(s, 3).tolist()}
        for c, s in zip(prepared.acoustics.channels, prepared.speech, strict=True)
    ]
    return {
        "file": str(file),
        "audio": prepared.facts.model_dump(mode="json"),
        "windows": windows,
        "acoustics": prepared.acoustics.model_dump(mode="json"),
        "speech": speech,
        "preprocess_s": round(seconds, 4),
    }


def _print_tables(data: dict[str, Any]) -> None:
    audio = data["audio"]
    console.print(
        f"[bold]{data['file']}[/]: {audio['format']} ({audio['codec']}), {audio['sample_rate']} Hz, "
        f"{audio['channels']} channel(s), {audio['duration_s']:.2f} s; preprocessed in {data['preprocess_s']:.2f} s"
    )
    windows = Table(title="windows (16 kHz mono, for the model)")
    for column in ("#", "channel", "role", "start", "end", "length", "speech"):
        windows.add_column(column, justify="right" if column not in ("role",) else "left")
    for w in data["windows"]:
        channel = "mix" if w["channel"] is None else str(w["channel"])
        windows.add_row(str(w["index"]), channel, w["role"] or "", f"{w['start']:.2f}", f"{w['end']:.2f}",
                        f"{w['end'] - w['start']:.2f}", f"{w['speech_s']:.2f}")  # fmt: skip
    console.print(windows)
    acoustics = {k: v for k, v in data["acoustics"].items() if k != "channels"}
    call = Table(title="call acoustics (acoustics.* in rules)", show_header=False)
    for key, value in acoustics.items():
        call.add_row(key, json.dumps(value) if isinstance(value, dict) or value is None else str(value))
    console.print(call)
    channels = data["acoustics"]["channels"]
    per = Table(title="per channel (acoustics.channels[])")
    per.add_column("field")
    for c in channels:
        per.add_column(c["role"] or ("mix" if c["channel"] is None else f"ch{c['channel']}"), justify="right")
    for key in channels[0] if channels else []:
        if key not in ("channel", "role"):
            per.add_row(key, *(str(c[key]) for c in channels))
    console.print(per)


@audio_app.command("inspect")
def inspect(
    file: Annotated[Path, typer.Argument(help="A recording: WAV, FLAC, Ogg, Opus, MP3, M4A/AAC, WebM...")],
    channels: Annotated[
        str | None, typer.Option("--channels", help="Roles of channels 0, 1, ... e.g. agent,customer.")
    ] = None,
    mix: Annotated[bool, typer.Option("--mix", help="Down-mix even when roles are given.")] = False,
    declared: Annotated[
        str | None, typer.Option("--format", help="Declared format, checked against the content.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print the windows and acoustics preprocessing makes of FILE, without running any model."""
    from services.events.models import AudioRef, AudioSubmitted, ChannelRole
    from services.preprocess.errors import PreprocessError
    from services.preprocess.pipeline import prepare
    from services.preprocess.sources import read_local
    from services.settings import Settings

    settings = Settings().preprocess
    if mix:
        settings = settings.model_copy(update={"channel_mode": "mix"})
    roles = [r.strip() for r in channels.split(",")] if channels else []
    try:
        submitted = AudioSubmitted(
            audio=AudioRef(uri=str(file), format=declared),
            channels=[ChannelRole(index=i, role=r) for i, r in enumerate(roles) if r],
        )
    except ValueError as exc:
        err.print(f"[red]invalid --channels or --format:[/] {exc}")
        raise typer.Exit(2) from exc
    started = time.perf_counter()
    try:
        # The operator names the file on their own machine: its own directory is the root.
        path = file.expanduser().resolve()
        prepared = prepare(read_local(str(path), [path.parent], settings.max_bytes), submitted, settings)
    except PreprocessError as exc:
        if as_json:
            error = {"stage": exc.stage, "type": type(exc).__name__, "reason": str(exc)}
            typer.echo(json.dumps({"file": str(file), "error": error}, indent=2))
        else:
            err.print(f"[red]{exc.stage}:[/] {exc} ({type(exc).__name__})")
        raise typer.Exit(1) from exc
    data = report(prepared, file, time.perf_counter() - started)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        _print_tables(data)
