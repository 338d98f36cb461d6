"""``listenpost crm ...``: CRM mappings, checked and tried on a call.

    check [PATH]                                   every error of the mapping files (file:line:column: cause)
    preview CAPTIONED.json [--decisions D.json]    the request a call's summary would be sent as
            [--mapping FILE|NAME] [--target T.yaml]

``preview`` prints the method and URL, the headers and the JSON body. Secrets are never read:
a base URL or a token from a secret is shown by the secret's name.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from services.dsl.errors import FileError
from services.dsl.mapping import read_document
from services.dsl.yaml_source import schema_errors
from services.notify.call_summary import SummaryError, summarise
from services.notify.crm import (
    CrmConfig,
    CrmMapping,
    CrmMappingError,
    CrmMappingLoadError,
    lint_mappings,
    load_mappings,
    preview,
    resolve_mapping,
)

crm_app = typer.Typer(help="CRM write-back: mappings of a call's summary to a CRM's request (docs/notifications.md).",
                      no_args_is_help=True)  # fmt: skip


def _default_dir() -> Path:
    from services.settings import Settings

    return Settings().notify.crm_mappings_dir


def _fail(message: str, code: int) -> typer.Exit:
    sys.stderr.write(message.rstrip("\n") + "\n")
    return typer.Exit(code)


@crm_app.command("check")
def crm_check(
    path: Annotated[Path | None, typer.Argument(help="A mapping file or folder (default: the setting notify.crm_mappings_dir).")] = None,
) -> None:
    """Validate CRM mapping files; print every error as file:line:column: cause (exit 1)."""
    target = path or _default_dir()
    errors = lint_mappings(target)
    if errors:
        raise _fail("\n".join(str(e) for e in errors), 1)
    names = sorted(load_mappings(target))
    sys.stdout.write(f"{target}: ok: {len(names)} mapping{'' if len(names) == 1 else 's'} ({', '.join(names)})\n")


@crm_app.command("preview")
def crm_preview(
    captioned: Annotated[Path, typer.Argument(help="The audio.captioned event (structured JSON), or its data alone.")],
    decisions: Annotated[
        Path | None, typer.Option("--decisions", help="Its decisions: a JSON list of decision CloudEvents, or JSON lines.")
    ] = None,
    mapping: Annotated[
        str | None, typer.Option("--mapping", "-m", help="A mapping file, or a mapping's name in notify.crm_mappings_dir.")
    ] = None,
    target: Annotated[
        Path | None, typer.Option("--target", "-t", help="A CRM target (YAML: name, url or url_secret, auth, mapping...).")
    ] = None,
    ruleset_version: Annotated[str | None, typer.Option("--ruleset-version", help="The rule set that evaluated the call.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print {method, url, headers, body} as JSON.")] = False,
) -> None:
    """Print the request a call's summary would be sent as (secrets shown by name, never read)."""
    try:
        attributes, data = _captioned(captioned)
        decided = _decisions(decisions) if decisions is not None else []
    except (OSError, ValueError) as exc:
        raise _fail(f"error: {exc}", 2) from None
    config = _target(target) if target is not None else None
    chosen = _mapping(mapping, config)
    try:
        summary = summarise(data, attributes, decided, ruleset_version=ruleset_version)
        request = preview(summary, chosen, config)
    except SummaryError as exc:
        raise _fail(f"error: {exc}", 2) from None
    except CrmMappingError as exc:
        raise _fail(f"error: {exc}", 1) from None
    body = json.loads(request.body)
    if as_json:
        out = {"method": request.method, "url": request.url, "headers": request.headers, "body": body}
        sys.stdout.write(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
        return
    lines = [f"{request.method} {request.url}", *(f"{k}: {v}" for k, v in request.headers.items()), ""]
    sys.stdout.write("\n".join(lines) + "\n" + json.dumps(body, indent=2, ensure_ascii=False) + "\n")


def _captioned(path: Path) -> tuple[dict[str, Any], Any]:
    value = _json(path)
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object (the captioned event, or its data)")
    if "specversion" not in value:
        return {}, value
    attributes = {k: v for k, v in value.items() if k not in ("data", "data_base64")}
    if "data" not in value:
        where = f" (dataref {value['dataref']!r})" if "dataref" in value else ""
        raise ValueError(f"{path}: the event has no data{where}; a claim-checked event's data must be fetched and passed")
    return attributes, value["data"]


def _decisions(path: Path) -> list[Any]:
    try:
        value = _json(path)
    except ValueError:
        # JSON lines: one decision per line (what `nats sub --raw` or a stream export writes).
        text = path.read_text(encoding="utf-8")
        value = [json.loads(line) for line in text.splitlines() if line.strip()]
    return value if isinstance(value, list) else [value]


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON: {exc}") from exc


def _target(path: Path) -> CrmConfig:
    try:
        doc = read_document(path, "a CRM target (name, url or url_secret, auth, mapping)")
        return CrmConfig.model_validate(doc.data)
    except FileError as exc:
        raise _fail(str(exc), 2) from None
    except ValidationError as exc:
        raise _fail("\n".join(str(e) for e in schema_errors(doc, exc, (), CrmConfig)), 2) from None


def _mapping(mapping: str | None, config: CrmConfig | None) -> CrmMapping:
    """``--mapping`` (a file, or a name in the mappings folder), else the target's mapping."""
    try:
        if mapping is not None and Path(mapping).is_file():
            return next(iter(load_mappings(Path(mapping)).values()))
        if mapping is None:
            if config is None:
                raise _fail("error: give --mapping, or a --target that names its mapping", 2)
            if not isinstance(config.mapping, str):
                return resolve_mapping(config, {})
        name = mapping if mapping is not None else str(config.mapping if config else "")
        folder = _default_dir()
        loaded = load_mappings(folder)
        if name not in loaded:
            raise _fail(f"error: CRM mapping {name!r} is neither a file nor a mapping in {folder} "
                        f"(there: {', '.join(sorted(loaded)) or 'none'})", 2)  # fmt: skip
        return loaded[name]
    except CrmMappingLoadError as exc:
        raise _fail("\n".join(str(e) for e in exc.errors), 2) from None
