"""Merging window captions into the call's timeline, with overlapping windows."""

from __future__ import annotations

from services.captioner.text import sentences, words
from services.captioner.timeline import merge_timeline, near_duplicate, new_text, parse_timeline
from services.events.models import Window


def w(index: int, start: float, end: float, caption: str, channel: int | None = None, role: str | None = None) -> Window:
    return Window(index=index, start=start, end=end, channel=channel, role=role, caption=caption)


def test_lines_in_time_order_with_roles_and_channels() -> None:
    merged = merge_timeline(
        [
            w(2, 30, 45, "The agent thanks the caller.", channel=0, role="agent"),
            w(0, 0, 30, "The agent greets the caller.", channel=0, role="agent"),
            w(1, 0, 30, "The customer sighs.", channel=1, role="customer"),
            w(3, 3600, 3630, "Hold music.", channel=2),
            w(4, 3630, 3640, "Silence."),
        ]
    )
    assert merged.splitlines() == [
        "[00:00-00:30 agent] The agent greets the caller.",
        "[00:00-00:30 customer] The customer sighs.",
        "[00:30-00:45 agent] The agent thanks the caller.",
        "[1:00:00-1:00:30 ch2] Hold music.",
        "[1:00:30-1:00:40] Silence.",
    ]


def test_overlap_text_is_not_repeated() -> None:
    first = (
        "A woman speaks calmly in English about her bill. A phone rings twice in the background. "
        "She then asks whether the late fee can be waived."
    )
    # The next window overlaps the first by 5 s: it re-describes the end of the first one.
    second = (
        "She then asks whether the late fee can be waived. "
        "A phone rings twice in the background! "
        "The agent agrees and the woman sounds relieved."
    )
    merged = merge_timeline([w(0, 0, 30, first, role="customer"), w(1, 25, 55, second, role="customer")])
    assert merged.splitlines() == [
        f"[00:00-00:30 customer] {first}",
        "[00:25-00:55 customer] The agent agrees and the woman sounds relieved.",
    ]
    for sentence in sentences(first):
        assert merged.count(sentence.rstrip(".!")) == 1


def test_near_duplicates_are_caught_but_new_sentences_kept() -> None:
    previous = "The caller, a middle-aged man, sounds increasingly frustrated and raises his voice."
    reworded = "The caller, a middle-aged man, sounds increasingly frustrated and raises his voice sharply."
    different = "The caller, a middle-aged man, now sounds calm and thanks the agent."
    assert near_duplicate(words(reworded), words(previous))
    assert not near_duplicate(words(different), words(previous))
    assert new_text(f"{reworded} {different}", previous) == different


def test_no_dedup_without_overlap_or_across_channels() -> None:
    text = "A siren wails in the distance."
    windows = [
        w(0, 0, 30, text, channel=0, role="agent"),
        w(1, 25, 55, text, channel=1, role="customer"),  # overlaps, but another channel
        w(2, 30, 60, text, channel=0, role="agent"),  # same channel, no overlap
    ]
    assert merge_timeline(windows).count(text) == 3


def test_a_window_with_nothing_new_gets_no_line() -> None:
    text = "Hold music plays. A beep sounds."
    merged = merge_timeline([w(0, 0, 30, text), w(1, 20, 40, "Hold music plays.")])
    assert merged == f"[00:00-00:30] {text}"


def test_parse_timeline_reads_merged_lines_back() -> None:
    windows = [
        w(0, 0, 30, "The agent greets the caller.", channel=0, role="agent"),
        w(1, 0, 30, "Line noise.", channel=1),
        w(2, 30, 60, "The customer is angry."),
    ]
    parsed = parse_timeline(merge_timeline(windows) + "\nShe raises her voice.")
    assert [(p.start, p.end, p.channel, p.role, p.caption) for p in parsed] == [
        (0.0, 30.0, None, "agent", "The agent greets the caller."),
        (0.0, 30.0, 1, None, "Line noise."),
        (30.0, 60.0, None, None, "The customer is angry.\nShe raises her voice."),
    ]
    plain = parse_timeline("Just a caption.\nOn two lines.")
    assert len(plain) == 1 and plain[0].caption == "Just a caption.\nOn two lines."
    assert parse_timeline("") == []
