"""NIST SPHERE (LDC telephone corpora), also when named .wav: decoded through the real prepare path,
and every malformed or hostile header refused with its own error before anything is decoded."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile

from services.events.models import AudioRef, AudioSubmitted, ChannelRole
from services.preprocess.channels import MODEL_RATE
from services.preprocess.decode import decode_audio
from services.preprocess.errors import (
    AudioDecodeError,
    AudioTooLongError,
    ChannelSecondsError,
    FormatMismatchError,
    PreprocessError,
    SamplesPerByteError,
    TruncatedAudioError,
    UnsupportedFormatError,
    ZeroChannelsError,
)
from services.preprocess.formats import Container, sniff, sphere_header
from services.preprocess.pipeline import prepare
from services.preprocess.sources import read_local
from services.settings import PreprocessSettings
from tests.audio_factory import sndfile_bytes, speech

RATE = 8000  # telephone: 8 kHz, the two parties on two channels
SECONDS = 3.0
FRAMES = int(RATE * SECONDS)


def submitted(fmt: str | None = None) -> AudioSubmitted:
    return AudioSubmitted(audio=AudioRef(data_base64="AA==", format=fmt))


def call() -> np.ndarray:
    """(frames, 2) float32: one voice per channel, as a telephone recorder writes them."""
    return np.stack([speech(SECONDS, RATE, seed=0, f0=110.0), speech(SECONDS, RATE, seed=1, f0=210.0)], axis=1)


def sphere(
    fields: list[str], body: bytes, *, size: int = 1024, size_line: str | None = None, pad: bytes = b" "
) -> bytes:
    """A hand-written SPHERE file: the header lines as LDC writes them, padded to ``size`` bytes."""
    lines = ["NIST_1A", size_line if size_line is not None else f"{size:7d}", *fields]
    head = "".join(line + "\n" for line in lines).encode("latin-1")
    assert len(head) <= size
    return head + pad * (size - len(head)) + body


def ldc_fields(
    *, count: int | str = FRAMES, channels: int | str = 2, coding: str = "pcm", n_bytes: int = 2, order: str = "01"
) -> list[str]:
    """Header lines in the order and style of an LDC telephone corpus (Switchboard-like)."""
    return [
        "database_id -s11 SWITCHBOARD",
        "database_version -s3 1.0",
        "conversation_id -s4 2001",
        f"channel_count -i {channels}",
        f"sample_count -i {count}",
        f"sample_rate -i {RATE}",
        f"sample_n_bytes -i {n_bytes}",
        f"sample_byte_format -s{len(order)} {order}",
        f"sample_coding -s{len(coding)} {coding}",
        "sample_checksum -i 31337",
        "end_head",
    ]


def pcm16(samples: np.ndarray, byte_order: str = "<") -> bytes:
    return np.round(samples * 32767).astype(f"{byte_order}i2").tobytes()


def refuses(data: bytes, error: type[Exception], message: str, settings: PreprocessSettings | None = None) -> None:
    """prepare() raises exactly ``error`` (not a subclass, not a parent) with exactly ``message``."""
    with pytest.raises(PreprocessError) as caught:
        prepare(data, submitted(), settings or PreprocessSettings())
    assert type(caught.value) is error
    assert str(caught.value) == message


# --- decoding ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subtype", "codec", "rtol", "atol"),
    [
        ("PCM_16", "pcm_16", 0.0, 1 / 32768),  # 16-bit quantisation: half a step each way
        ("ULAW", "ulaw", 1 / 32, 2**-10),  # G.711: 8 bits, logarithmic steps of ~1/16 of the level
        ("ALAW", "alaw", 1 / 32, 2**-10),
    ],
)
def test_telephone_sphere_decodes_with_exact_facts(subtype: str, codec: str, rtol: float, atol: float) -> None:
    source = call()
    data = sndfile_bytes(source, RATE, "NIST", subtype)
    assert data.startswith(b"NIST_1A\n   1024\n") and sniff(data) == Container("sph", "sndfile")

    prepared = prepare(data, submitted(), PreprocessSettings())
    facts = prepared.facts
    assert (facts.format, facts.codec, facts.sample_rate, facts.channels) == ("sph", codec, RATE, 2)
    assert facts.duration_s == SECONDS
    (window,) = prepared.windows  # no roles named: the two parties down-mixed, resampled to 16 kHz
    assert window.channel is None and window.samples.shape[0] == pytest.approx(SECONDS * MODEL_RATE, abs=2)
    assert prepared.acoustics.speech_ratio > 0.8

    decoded = decode_audio(data)
    assert (decoded.format, decoded.sample_rate, decoded.samples.shape) == ("sph", RATE, (FRAMES, 2))
    np.testing.assert_allclose(decoded.samples, source, rtol=rtol, atol=atol)


def test_the_parties_stay_apart_on_their_channels() -> None:
    data = sndfile_bytes(call(), RATE, "NIST", "ULAW")
    roles = [ChannelRole(index=0, role="agent"), ChannelRole(index=1, role="customer")]
    named = AudioSubmitted(audio=AudioRef(data_base64="AA==", format="sph"), channels=roles)
    prepared = prepare(data, named, PreprocessSettings())
    assert [(w.channel, w.role) for w in prepared.windows] == [(0, "agent"), (1, "customer")]
    assert prepared.facts.channels == 2 and prepared.facts.codec == "ulaw"


def test_a_sphere_file_named_wav_is_decoded_as_what_it_is(tmp_path: Path) -> None:
    """Archives name SPHERE files .wav; a format taken from that name says wav. The bytes decide."""
    path = tmp_path / "sw02001.wav"
    path.write_bytes(sndfile_bytes(call(), RATE, "NIST", "PCM_16"))
    data = read_local(str(path), [tmp_path], PreprocessSettings().max_bytes)
    for declared in ("wav", "WAV", "audio/wav", "audio/x-wav", "wave", None):
        facts = prepare(data, submitted(declared), PreprocessSettings()).facts
        assert (facts.format, facts.codec, facts.channels, facts.duration_s) == ("sph", "pcm_16", 2, SECONDS)


@pytest.mark.parametrize("declared", ["sph", "SPHERE", "nist", "audio/x-nist"])
def test_sphere_format_names_are_accepted(declared: str) -> None:
    data = sndfile_bytes(call(), RATE, "NIST", "PCM_16")
    assert prepare(data, submitted(declared), PreprocessSettings()).facts.format == "sph"


def test_an_ldc_header_big_endian_with_a_longer_header() -> None:
    """What LDC writes, not libsndfile: extra fields, a checksum, big-endian samples, a 2048-byte header."""
    source = call()
    data = sphere(ldc_fields(order="10"), pcm16(source, ">"), size=2048)
    header = sphere_header(data)
    assert (header.header_size, header.sample_count, header.sample_rate) == (2048, FRAMES, RATE)
    assert (header.channel_count, header.sample_n_bytes, header.sample_coding) == (2, 2, "pcm")
    decoded = decode_audio(data)
    assert decoded.samples.shape == (FRAMES, 2)
    np.testing.assert_allclose(decoded.samples, np.round(source * 32767) / 32768, atol=1e-7)


def test_a_header_padded_with_nuls_right_after_end_head() -> None:
    data = sphere(ldc_fields(), pcm16(call()), pad=b"\x00")
    data = data.replace(b"end_head\n", b"end_head\x00", 1)
    facts = prepare(data, submitted(), PreprocessSettings()).facts
    assert (facts.format, facts.codec, facts.duration_s) == ("sph", "pcm_16", SECONDS)


def test_mu_law_spelled_out_and_sample_count_absent() -> None:
    """Older headers spell "mu-law"; without sample_count the length is what the bytes hold."""
    body = sndfile_bytes(call(), RATE, "NIST", "ULAW")[1024:]
    fields = [f for f in ldc_fields(coding="mu-law", n_bytes=1, order="1") if not f.startswith("sample_count")]
    facts = prepare(sphere(fields, body), submitted(), PreprocessSettings()).facts
    assert (facts.format, facts.codec, facts.duration_s, facts.channels) == ("sph", "ulaw", SECONDS, 2)


def test_bytes_after_sample_count_are_not_decoded() -> None:
    """libsndfile would read trailing bytes as samples (it ignores sample_count): they are no audio."""
    source = call()
    data = sphere(ldc_fields(), pcm16(source) + b"\x7f\xff" * 20_000)  # loud trailing junk
    decoded = decode_audio(data)
    assert decoded.samples.shape == (FRAMES, 2)
    np.testing.assert_allclose(decoded.samples, np.round(source * 32767) / 32768, atol=1e-7)


# --- hostile and malformed headers ------------------------------------------------------------------

BODY = pcm16(call())
BAD = "audio could not be decoded: SPHERE header"


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (sphere(ldc_fields(), BODY)[:600], TruncatedAudioError,
         "audio is truncated: the SPHERE header is 1024 bytes, the file holds 600"),
        (b"NIST_1A\n   10", TruncatedAudioError,
         "audio is truncated: the file holds 13 bytes, less than a 1024-byte SPHERE header"),
        (sphere(ldc_fields(), BODY, size_line="   abcd"), AudioDecodeError,
         f"{BAD} size 'abcd' is not a number of bytes"),
        (sphere(ldc_fields(), BODY, size_line="  -1024"), AudioDecodeError,
         f"{BAD} size '-1024' is not a number of bytes"),
        (sphere(ldc_fields(), BODY, size_line="999999999999999"), AudioDecodeError,
         f"{BAD} size 999999999999999 is not a multiple of 1024 bytes between 1024 and 65536"),
        (sphere(ldc_fields(), BODY, size_line=" 131072"), AudioDecodeError,
         f"{BAD} size 131072 is not a multiple of 1024 bytes between 1024 and 65536"),
        (sphere(ldc_fields(), BODY, size_line="   1500"), AudioDecodeError,
         f"{BAD} size 1500 is not a multiple of 1024 bytes between 1024 and 65536"),
        (sphere(ldc_fields(), b"", size_line="  65536"), TruncatedAudioError,
         "audio is truncated: the SPHERE header is 65536 bytes, the file holds 1024"),
        (sphere(ldc_fields()[:-1], BODY), AudioDecodeError, f"{BAD} has no end_head within its 1024 bytes"),
        (sphere(["channel_count 2", *ldc_fields()], BODY), AudioDecodeError,
         f"{BAD} line 'channel_count 2 ' is not 'name -i|-r|-sN value'"),
        (sphere(["sample_rate -i 16000", *ldc_fields()], BODY), AudioDecodeError, f"{BAD} gives 'sample_rate' twice"),
        (sphere(["database_id -s\u00b9 SWB", *ldc_fields()], BODY), AudioDecodeError,  # latin-1 0xB9: isdigit() says yes
         f"{BAD} line 'database_id -s\u00b9 SWB' is not 'name -i|-r|-sN value'"),
        (sphere([f.replace("sample_count -i ", "sample_count -i \u00b2") for f in ldc_fields()], BODY),
         AudioDecodeError, f"{BAD} line 'sample_count -i \u00b224000': the value is not an integer"),
        (sphere([f.replace("sample_n_bytes -i 2", "sample_n_bytes -i 2sample_coding -s4 ulaw") for f in ldc_fields()],
                BODY), AudioDecodeError,  # a line that swallowed the next: libsndfile would still find the coding
         f"{BAD} line 'sample_n_bytes -i 2sample_coding -s4 ulaw': the value is not an integer"),
        (sphere([f.replace("conversation_id -s4 2001", "conversation_id -s4 20\x0001") for f in ldc_fields()], BODY),
         AudioDecodeError, f"{BAD} holds a NUL byte before end_head"),
        (sphere(["sample_n_bytes -s1 x", *ldc_fields(coding="ulaw", n_bytes=1, order="1")[:6],
                 *ldc_fields(coding="ulaw", n_bytes=1, order="1")[7:]], BODY),
         AudioDecodeError, f"{BAD} field sample_n_bytes is not a number: 'x'"),
        (sphere([f for f in ldc_fields() if "channel_count" not in f], BODY), AudioDecodeError,
         f"{BAD} gives no channel_count"),
        (sphere([f for f in ldc_fields() if "sample_rate" not in f], BODY), AudioDecodeError,
         f"{BAD} gives no sample_rate"),
        (sphere([f.replace("sample_rate -i 8000", "sample_rate -r 8000.0") for f in ldc_fields()], BODY),
         AudioDecodeError, f"{BAD} field sample_rate is -r, not an integer (-i)"),
        (sphere([f.replace("sample_n_bytes -i 2", "sample_n_bytes -s1 2") for f in ldc_fields(order="1")], BODY),
         AudioDecodeError, f"{BAD} field sample_n_bytes is -s, not an integer (-i)"),  # libsndfile would not see it
        (sphere(ldc_fields(channels=0), BODY), ZeroChannelsError, "audio has zero channels (the SPHERE header says 0)"),
        (sphere(ldc_fields(channels=5000), BODY), AudioDecodeError, f"{BAD} field channel_count is 5000, outside 0-1024"),
        (sphere(ldc_fields(count=-5), BODY), AudioDecodeError,
         f"{BAD} field sample_count is -5, outside 0-4611686018427387904"),
        (sphere(ldc_fields(count="9" * 40), BODY), AudioDecodeError,
         f"{BAD} field sample_count has 40 digits, outside 0-4611686018427387904"),
        (sphere(ldc_fields(coding="ulaw", n_bytes=2), BODY), AudioDecodeError,
         f"{BAD} says ulaw samples of 2 bytes; ulaw samples are 1 byte"),
        (sphere(ldc_fields(n_bytes=4, order="0123"), BODY), UnsupportedFormatError,
         "audio could not be decoded: SPHERE sample_byte_format -s4 '0123' for 4-byte samples is not one we decode "
         "(01 or 10)"),
        (sphere(ldc_fields(coding="g729"), BODY), UnsupportedFormatError,
         "audio could not be decoded: SPHERE sample_coding 'g729' is not one we decode (pcm, ulaw, alaw)"),
        (sphere([*ldc_fields()[:-1], "channels_interleaved -s5 FALSE", "end_head"], BODY), UnsupportedFormatError,
         "audio could not be decoded: SPHERE file with channels not interleaved: not supported"),
    ],
    ids=["cut-in-header", "cut-in-first-line", "size-not-a-number", "size-negative", "size-huge", "size-over-64k",
         "size-not-1024-multiple", "header-longer-than-file", "no-end-head", "line-without-type", "duplicate-field",
         "unicode-digit-length", "unicode-digit-value", "swallowed-line", "nul-in-header", "string-width-not-a-number",
         "no-channel-count", "no-sample-rate", "rate-not-integer", "pcm-width-as-string", "zero-channels",
         "channels-over-libsndfile", "negative-sample-count", "sample-count-40-digits", "ulaw-of-2-bytes",
         "byte-order-0123", "unknown-coding", "not-interleaved"],
)  # fmt: skip
def test_malformed_headers_have_specific_errors(data: bytes, error: type[Exception], message: str) -> None:
    refuses(data, error, message)


@pytest.mark.parametrize(
    "coding",
    ["pcm,embedded-shorten-v2.00", "ulaw,embedded-shorten-v2.00", "pcm,embedded-shorten-v1.09", "shorten"],
)
def test_shorten_compressed_sphere_is_refused_naming_the_reason(coding: str) -> None:
    """LDC compressed many corpora with shorten; libsndfile cannot decode it, so we say so plainly."""
    data = sphere(ldc_fields(coding=coding, n_bytes=1 if coding.startswith("ulaw") else 2), b"ajkq" + bytes(4000))
    refuses(
        data,
        UnsupportedFormatError,
        f"audio could not be decoded: SPHERE file compressed with shorten (sample_coding {coding!r}): "
        "not supported; decompress it with sph2pipe first",
    )


def test_wavpack_compressed_sphere_is_refused_too() -> None:
    data = sphere(ldc_fields(coding="pcm,embedded-wavpack"), bytes(4000))
    refuses(
        data,
        UnsupportedFormatError,
        "audio could not be decoded: SPHERE file compressed with wavpack (sample_coding 'pcm,embedded-wavpack'): "
        "not supported; decompress it with sph2pipe first",
    )


def test_a_sample_count_far_beyond_the_bytes_is_refused_before_libsndfile_opens_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A header claiming 10^12 frames must cost nothing: refused from the header against the file's size."""

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("libsndfile opened a SPHERE file whose header claims more than the file holds")

    data = sphere(ldc_fields(count=10**12), BODY)
    monkeypatch.setattr(soundfile, "SoundFile", never)
    refuses(data, TruncatedAudioError, "audio is truncated: the SPH header declares 125000000.00 s, the file holds 3.00 s")


def test_a_short_file_is_refused_as_truncated() -> None:
    data = sphere(ldc_fields(), BODY[: len(BODY) // 2])
    refuses(data, TruncatedAudioError, "audio is truncated: the SPH header declares 3.00 s, the file holds 1.50 s")


@pytest.mark.parametrize(
    ("limit", "error", "message"),
    [
        ({"max_samples_per_byte": 0.25}, SamplesPerByteError,
         "audio decodes to more than 0 samples per encoded byte: its SPH header declares 48,000 samples from "
         "97,024 bytes (0.5 per byte; limit LISTENPOST_PREPROCESS__MAX_SAMPLES_PER_BYTE=0.25)"),
        ({"max_channel_seconds": 2.0}, ChannelSecondsError,
         "audio is over the limit of 2 channel-seconds: 1 kept channel(s) x 3.0 s = 3 (its header's length; "
         "limit LISTENPOST_PREPROCESS__MAX_CHANNEL_SECONDS=2)"),
        ({"max_duration_s": 2.0}, AudioTooLongError, "audio is 3.0 s long, over the limit of 2 s"),
    ],
    ids=["samples-per-byte", "channel-seconds", "duration"],
)  # fmt: skip
def test_the_decode_limits_refuse_from_the_sphere_header_before_decoding(
    monkeypatch: pytest.MonkeyPatch, limit: dict[str, float], error: type[Exception], message: str
) -> None:
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("samples were decoded although the header alone is over a limit")

    data = sphere(ldc_fields(), BODY)
    monkeypatch.setattr(soundfile.SoundFile, "read", never)
    refuses(data, error, message, PreprocessSettings().model_copy(update=limit))


def test_a_field_libsndfile_cannot_see_is_refused_not_misread() -> None:
    """libsndfile parses only the first 1024 bytes: a coding past them would decode mu-law as PCM."""
    fields = [f for f in ldc_fields(coding="ulaw", n_bytes=1, order="1") if not f.startswith("sample_coding")]
    padding = [f"comment_{i:03d} -s40 {'x' * 40}" for i in range(20)]  # pushes what follows past byte 1024
    data = sphere([*fields[:-1], *padding, "sample_coding -s4 ulaw", "end_head"], bytes(FRAMES * 2), size=2048)
    refuses(
        data,
        AudioDecodeError,
        "audio could not be decoded: libsndfile reads this SPHERE header as 8000 Hz x 2 PCM_S8, "
        "not 8000 Hz x 2 ULAW as written",
    )


@pytest.mark.parametrize(
    ("data", "declared", "message"),
    [
        (sndfile_bytes(call(), RATE, "NIST", "PCM_16"), "mp3",
         "declared audio format 'mp3' does not match the content, which is SPH"),
        (sndfile_bytes(call(), RATE, "NIST", "ULAW"), "audio/flac",
         "declared audio format 'audio/flac' does not match the content, which is SPH"),
        (sndfile_bytes(call(), RATE, "WAV", "PCM_16"), "sph",
         "declared audio format 'sph' does not match the content, which is WAV"),
        (sndfile_bytes(call(), RATE, "NIST", "PCM_16"), "rf64",
         "declared audio format 'rf64' does not match the content, which is SPH"),
    ],
    ids=["mp3-on-sphere", "flac-on-sphere", "sph-on-riff", "rf64-on-sphere"],
)  # fmt: skip
def test_a_declared_format_that_mismatches_is_refused(data: bytes, declared: str, message: str) -> None:
    with pytest.raises(FormatMismatchError, match=f"^{re.escape(message)}$") as caught:
        prepare(data, submitted(declared), PreprocessSettings())
    assert caught.value.stage == "decode-audio"


@pytest.mark.parametrize("subtype", ["PCM_16", "ULAW"])
def test_damaged_sphere_files_never_crash(subtype: str) -> None:
    """Cut and bit-flipped SPHERE files either decode or raise a PreprocessError: never anything else."""
    good = sndfile_bytes(call(), RATE, "NIST", subtype)
    rng = np.random.default_rng(7)
    refusals: dict[str, list[str]] = {"cut": [], "flipped": []}
    decoded = 0
    bytes_per_second = (len(good) - 1024) / 3.0  # call() is 3 s after a 1024-byte header
    refused_cuts, expected_refused_cuts = [], []
    for trial in range(24):
        damaged = bytearray(good)
        kind = "cut" if trial % 3 == 0 else "flipped"
        if kind == "cut":
            damaged = damaged[: int(rng.integers(1, len(good)))]
            # The decoder tolerates a quarter second missing at the end (decode.py), no more.
            expected_refused_cuts.append((len(good) - len(damaged)) / bytes_per_second > 0.25)
        else:  # flip bytes in the header, where a flip changes what the file claims to be
            for at in rng.integers(0, 160, size=int(rng.integers(1, 6))):
                damaged[at] = int(rng.integers(0, 256))
        try:
            prepare(bytes(damaged), submitted(), PreprocessSettings())
            decoded += 1
            refused = False
        except PreprocessError as exc:  # anything else fails the test
            refusals[kind].append(str(exc))
            refused = True
        if kind == "cut":
            refused_cuts.append(refused)
    # A file cut by more than the tolerance holds fewer samples than its header promises: refused.
    assert refused_cuts == expected_refused_cuts and any(refused_cuts)
    assert all(r.startswith("audio is truncated") for r in refusals["cut"]), refusals["cut"]
    assert all(refusals["flipped"]) and decoded + len(refusals["cut"]) + len(refusals["flipped"]) == 24
