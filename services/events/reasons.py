"""Failure reasons in plain words: what dead letters, nak logs and retries say about an error.

A dead letter is read by clients no one here wrote, so its ``reason`` is the error's own
sentence and its ``error`` the error's own type: never a traceback, terminal colour codes,
this machine's file paths, or Ray's task and actor details (pid, actor id, node IP). An
error raised in a Serve replica reaches its caller as Ray's ``RayTaskError(X)`` whose text
is the remote traceback; the deployments unwrap it to ``X`` where they call a handle, and
:func:`plain_reason` / :func:`plain_error_type` are the last guard, applied by
:class:`~services.events.consumer.Poison` and :class:`~services.events.consumer.RetryLater`
to every reason they are given.
"""

from __future__ import annotations

import re

MAX_REASON_CHARS = 2000

# CSI sequences (colours, cursor moves) and the lone ESC-x ones.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
_TRACEBACK = "Traceback (most recent call last):"
# Lines of Ray's own task/actor reports: "ray::Ingress.prepare() (pid=1, ip=10.0.0.1, actor_id=...)",
# "\tactor_id: 3f...", "\tpid: 1234", "\tip: 10.0.0.1", and a traceback's frames.
_RAY_LINE = re.compile(
    r"^\s*(ray::|File \"|\(pid=)"
    r"|^\s+(class_name|actor_id|actor_name|pid|name|namespace|ip|node_id|node_ip|worker_id|job_id|task_id)\s*:",
)
_FRAME = re.compile(r'^\s*File "[^"]*", line \d+', re.MULTILINE)
_RAY_WRAPPED_TYPE = re.compile(r"^(?:RayTaskError|RayActorError)\((\w+)\)$")


def plain_reason(text: str) -> str:
    """The error's own message, with no terminal escapes, traceback, paths or Ray internals.

    A traceback (or Ray's copy of one) is reduced to its last line (the error's own ``Type: message``, read as the
    message); Ray's task/actor detail lines are dropped; the rest is kept word for word
    (a validation error's several lines stay), cut at :data:`MAX_REASON_CHARS`.
    """
    text = _ANSI.sub("", text)
    # Ray's RayTaskError(X) text is the remote traceback, sometimes without its first line.
    if _TRACEBACK in text or _FRAME.search(text):
        tail = [line for line in text.split(_TRACEBACK)[-1].splitlines() if line.strip()]
        last = tail[-1].strip() if tail else ""
        # "pkg.module.UnsupportedFormatError: audio could not be decoded: ..." -> the message
        head, sep, message = last.partition(": ")
        text = message if sep and re.fullmatch(r"[\w.]+", head) else last
    kept = [line.rstrip() for line in text.splitlines() if not _RAY_LINE.search(line)]
    plain = "\n".join(line for line in kept if line.strip()).strip()
    if len(plain) > MAX_REASON_CHARS:
        plain = plain[: MAX_REASON_CHARS - 1] + "…"
    return plain or "no reason given"


def plain_error_type(name: str) -> str:
    """``RayTaskError(UnsupportedFormatError)`` -> ``UnsupportedFormatError``; other names as they are."""
    match = _RAY_WRAPPED_TYPE.match(name.strip())
    return match.group(1) if match else name.strip()


def is_plain(text: str) -> bool:
    """True when ``text`` holds none of what a reason must not: escapes, a traceback, Ray's task lines."""
    return not (_ANSI.search(text) or _TRACEBACK in text or "ray::" in text or _FRAME.search(text))
