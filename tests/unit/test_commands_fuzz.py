"""Property-based: ``parse_command`` accepts exactly the contract, whatever a producer sends.

For arbitrary keys (None, empty, huge, binary), values and header lists (missing, duplicated,
non-UTF-8 values, huge, negative, overflowing or conflicting numbers, random ``delayq-`` names;
header names are ``str`` because the Kafka client decodes them as UTF-8), the
parser either returns a command that obeys the wire contract or raises :class:`InvalidRecord`
with a reason: never any other exception, since anything else would stop the ingest agent on a
record that should have gone to the dead-letter topic.

The records are checked against a small reference model of the README's contract, written
independently of ``app/commands.py``: a record the model calls valid must be accepted with
exactly the expected fields, one it calls invalid must be refused. A returned job must also
survive the table's binary encoding (a job the table cannot store is not a valid command).

Deterministic and bounded: ``derandomize=True``, no example database, 500 examples per property.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from app import names
from app.commands import Cancel, Command, parse_command
from app.errors import InvalidRecord
from app.jobs import Header, Job, decode_job, encode_job
from app.names import MAX_JOB_ID_BYTES
from app.times import MAX_DUE_MS

FORBIDDEN = frozenset({"delayq-ingest", "delayq-fired", "delayq-jobs-changelog", "route-src"})
CONTRACT = (names.HEADER_TARGET, names.HEADER_DUE_MS, names.HEADER_DELAY_MS, names.HEADER_KEY)
#: Kafka's topic name rule, whole string (no trailing newline let through by ``$``).
TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")

FUZZ = settings(
    max_examples=500,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- strategies ---------------------------------------------------------------------------------

_good_job_ids = st.one_of(
    st.binary(min_size=1, max_size=40),
    st.text(min_size=1, max_size=20).map(str.encode),
    st.integers(MAX_JOB_ID_BYTES - 2, MAX_JOB_ID_BYTES).map(lambda n: b"j" * n),
)
_bad_job_ids = st.one_of(
    st.none(),
    st.just(b""),
    st.integers(MAX_JOB_ID_BYTES + 1, MAX_JOB_ID_BYTES + 2).map(lambda n: b"j" * n),
    st.integers(2_000, 200_000).map(lambda n: b"\xff" * n),
)
#: Job ids: none, empty, around the 1024-byte limit and far beyond; mostly good ones.
job_ids = st.integers(0, 3).flatmap(lambda i: _bad_job_ids if i == 0 else _good_job_ids)
values = st.one_of(st.none(), st.binary(max_size=64), st.just(b""), st.just(b"\x00" * 100_000))
timestamps = st.one_of(
    st.integers(0, MAX_DUE_MS),
    st.integers(1_600_000_000_000, 1_900_000_000_000),
    st.integers(MAX_DUE_MS - 1_000, MAX_DUE_MS),
    st.just(0),
)

_numbers = st.one_of(
    st.integers(0, 10_000),
    st.integers(1_600_000_000_000, 1_900_000_000_000),
    st.integers(MAX_DUE_MS - 2, MAX_DUE_MS + 2),
    st.integers(-(10**20), 10**20),
    st.integers(2**63 - 2, 2**64 + 2),
)
number_values = st.one_of(
    _numbers.map(lambda n: str(n).encode()),
    # Leading zeros, padding, signs, exponents, decimals, separators, non-ASCII digits.
    _numbers.map(lambda n: f"000{abs(n)}".encode()),
    _numbers.map(lambda n: f" {n}\t".encode()),
    _numbers.map(lambda n: f"+{n}".encode()),
    _numbers.map(lambda n: f"{n}.0".encode()),
    _numbers.map(lambda n: f"{n:_}".encode()),
    st.sampled_from([b"", b" ", b"1e9", b"0x10", b"NaN", b"inf", b"-0", "١٢".encode(), b"\xff1"]),
    st.text(alphabet="0123456789", min_size=1, max_size=30).map(str.encode),
    # Thousands of digits: beyond Python's int() string limit (4300 digits).
    st.integers(4_290, 4_310).map(lambda n: b"9" * n),
    st.integers(4_301, 50_000).map(lambda n: b"1" * n),
    st.none(),
)
target_values = st.one_of(
    st.sampled_from(["out", "orders.v2", "a", "a" * 249, "a" * 250, ".", "..", "x_y-z"]).map(
        str.encode
    ),
    st.sampled_from(sorted(FORBIDDEN)).map(str.encode),
    st.sampled_from(["", " ", "bad topic", "a/b", "é", "out\n", "out ", "\nout", "\x00"]).map(
        str.encode
    ),
    st.from_regex(TOPIC_NAME, fullmatch=True).map(str.encode),
    st.binary(max_size=12),
    st.sampled_from([b"\xff\xfe", b"out\xff", b"\xc3"]),
    st.none(),
)
key_values = st.one_of(st.none(), st.binary(max_size=32), st.just(b""))
foreign_names = st.one_of(
    st.sampled_from(["trace-id", "content-type", "", "Delayq-Target", "DELAYQ-DUE-MS", "delayq"]),
    st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=12),
)
#: Header names longer than 65535 UTF-8 bytes (Kafka allows them).
huge_names = st.integers(65_530, 70_000).map(lambda n: "h" * n)
reserved_names = st.one_of(
    st.sampled_from(
        [names.HEADER_JOB_ID, names.HEADER_ERROR, "delayq-", "delayq-due", "delayq-targets"]
    ),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", max_size=10).map(lambda s: f"delayq-{s}"),
)
foreign_values = st.one_of(st.none(), st.binary(max_size=32), st.just(b"\xff" * 70_000))


good_targets = st.one_of(
    st.sampled_from(["out", "orders.v2", "a" * 249, "x_y-z"]),
    st.from_regex(TOPIC_NAME, fullmatch=True),
).map(str.encode)
good_numbers = st.one_of(
    st.integers(0, 10_000), st.integers(1_600_000_000_000, 1_900_000_000_000)
).map(lambda n: str(n).encode())


@st.composite
def header_lists(draw: st.DrawFn) -> list[Header]:
    """A header list around a schedule skeleton: parts left out, repeated, mangled, shuffled.

    Three shapes: "tame" (a well-formed schedule skeleton), "cancel" (no contract header) and
    "wild" (every part drawn from anything), each among foreign and reserved headers, so that
    accepted schedules and cancels are common too.
    """
    shape = draw(st.sampled_from(["tame", "cancel", "wild"]))
    wild = shape == "wild"
    headers: list[Header] = []
    if shape == "tame" or (wild and draw(st.booleans())):
        headers.append((names.HEADER_TARGET, draw(target_values if wild else good_targets)))
    timing = {
        "tame": ["due", "delay"],
        "cancel": ["none"],
        "wild": ["due", "delay", "both", "none"],
    }
    numbers = number_values if wild else good_numbers
    match draw(st.sampled_from(timing[shape])):
        case "due":
            headers.append((names.HEADER_DUE_MS, draw(numbers)))
        case "delay":
            headers.append((names.HEADER_DELAY_MS, draw(numbers)))
        case "both":
            headers.append((names.HEADER_DUE_MS, draw(numbers)))
            headers.append((names.HEADER_DELAY_MS, draw(numbers)))
    if shape != "cancel" and draw(st.booleans()):
        headers.append((names.HEADER_KEY, draw(key_values)))
    noise = [st.tuples(foreign_names, foreign_values), st.tuples(reserved_names, foreign_values)]
    if wild:  # a second copy of a contract header, same or other value
        noise.append(st.tuples(st.sampled_from(CONTRACT), st.one_of(number_values, target_values)))
    extras = draw(st.lists(st.one_of(noise), max_size=6))
    rare = draw(st.integers(0, 29))
    if rare == 0:  # a header name longer than a u16 can count
        extras.append((draw(huge_names), b"v"))
    for extra in extras:
        headers.insert(draw(st.integers(0, len(headers))), extra)
    if rare == 1:  # more headers than a u16 can count
        headers.extend([("h", None)] * 65_536)
    return headers


# --- the reference model of the contract --------------------------------------------------------

#: The model could not decide (the parser may accept or refuse, see ``_number``).
EITHER = object()


@dataclass(frozen=True)
class Refused:
    why: str


def _number(raw: bytes | None) -> int | Refused | object:
    """A contract number: decimal ASCII digits.

    Either way (the parser may accept or refuse): surrounding ASCII whitespace, and absurd
    zero padding of a number in range.
    """
    if raw is not None and re.fullmatch(rb"[0-9]+", raw):
        significant = raw.lstrip(b"0") or b"0"
        if len(significant) > 20:
            return Refused(f"{len(significant)}-digit number")
        return int(significant) if len(raw) <= 20 else EITHER
    stripped = (raw or b"").strip(b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f")
    if stripped and stripped != raw and re.fullmatch(rb"[0-9]+", stripped):
        return EITHER
    return Refused(f"not a decimal number: {raw!r}")


def expected(
    key: bytes | None, value: bytes | None, headers: list[Header], timestamp_ms: int, version: int
) -> Command | Refused | object:
    """What the README's wire contract says this record is."""
    if not key or len(key) > MAX_JOB_ID_BYTES:
        return Refused("job id")
    ours: dict[str, bytes | None] = {}
    for name, raw in headers:
        if name in CONTRACT:
            if name in ours:
                return Refused(f"{name} twice")
            ours[name] = raw
    if names.HEADER_TARGET not in ours:
        return Cancel(key) if value is None and not ours else Refused("no target")
    try:
        target = (ours[names.HEADER_TARGET] or b"").decode()
    except UnicodeDecodeError:
        return Refused("target not UTF-8")
    if not TOPIC_NAME.fullmatch(target) or target in {".", ".."} or target in FORBIDDEN:
        return Refused(f"bad target {target!r}")
    if (names.HEADER_DUE_MS in ours) == (names.HEADER_DELAY_MS in ours):
        return Refused("not exactly one of due/delay")
    if names.HEADER_DUE_MS in ours:
        due = _number(ours[names.HEADER_DUE_MS])
    else:
        delay = _number(ours[names.HEADER_DELAY_MS])
        due = timestamp_ms + delay if isinstance(delay, int) else delay
    if isinstance(due, int) and not 0 <= due <= MAX_DUE_MS:
        return Refused(f"due {due} out of range")
    if not isinstance(due, int):
        return due
    foreign = tuple((n, v) for n, v in headers if not n.startswith(names.HEADER_PREFIX))
    # The table stores header names and counts as u16: what it cannot store is not valid.
    if len(foreign) > 0xFFFF or any(len(n.encode()) > 0xFFFF for n, _v in foreign):
        return Refused("cannot be stored")
    return Job(key, due, target, ours.get(names.HEADER_KEY), value, foreign, version)


# --- properties -----------------------------------------------------------------------------


def _short(thing: object, limit: int = 300) -> str:
    """A repr fit for a failure message (records here can be megabytes)."""
    text = repr(thing)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def _check(
    key: bytes | None,
    value: bytes | None,
    headers: list[Header],
    timestamp_ms: int,
    version: int,
) -> None:
    want = expected(key, value, headers, timestamp_ms, version)
    try:
        got = parse_command(
            key,
            value,
            headers,
            timestamp_ms=timestamp_ms,
            version=version,
            forbidden_targets=FORBIDDEN,
        )
    except InvalidRecord as exc:  # any other exception fails the test as it is
        event("refused")
        assert exc.reason.strip(), "a refusal must say why"
        assert str(exc) == exc.reason
        assert not isinstance(want, Cancel | Job), (
            f"refused ({_short(exc.reason)}) but valid: {_short(want)}"
        )
        return
    assert not isinstance(want, Refused), (
        f"accepted {_short(got)}, but the contract says: {_short(want.why)}"
    )
    assert isinstance(got, Cancel | Job)
    event(f"accepted: {type(got).__name__}")
    assert got.job_id == key
    assert 0 < len(got.job_id) <= MAX_JOB_ID_BYTES
    if isinstance(got, Cancel):
        assert value is None
        assert want == got
        return
    assert 0 <= got.due_ms <= MAX_DUE_MS
    assert TOPIC_NAME.fullmatch(got.target), _short(got.target)
    assert got.target not in FORBIDDEN
    assert got.value == value
    assert got.version == version
    assert not any(n.startswith(names.HEADER_PREFIX) for n, _v in got.headers)
    if want is not EITHER:
        assert got == want
    # The table can store it, and gives back the same job.
    assert decode_job(encode_job(got)) == got


@FUZZ
@given(key=job_ids, value=values, headers=header_lists(), timestamp_ms=timestamps)
@example(  # a due time beyond int()'s 4300-digit limit must be refused, not crash
    key=b"j",
    value=b"v",
    headers=[("delayq-target", b"out"), ("delayq-due-ms", b"1" * 5_000)],
    timestamp_ms=0,
)
@example(  # "out\n" is not a topic name (a regex '$' matches before a final newline)
    key=b"j",
    value=b"v",
    headers=[("delayq-target", b"out\n"), ("delayq-delay-ms", b"0")],
    timestamp_ms=0,
)
@example(  # the table stores a header name's length as a u16
    key=b"j",
    value=b"v",
    headers=[("delayq-target", b"out"), ("delayq-delay-ms", b"0"), ("h" * 65_536, b"")],
    timestamp_ms=0,
)
@example(  # ... and the header count as a u16
    key=b"j",
    value=b"v",
    headers=[("delayq-target", b"out"), ("delayq-delay-ms", b"0"), *[("h", None)] * 65_536],
    timestamp_ms=0,
)
def test_any_record_is_a_valid_command_or_refused_with_a_reason(
    key: bytes | None, value: bytes | None, headers: list[Header], timestamp_ms: int
) -> None:
    _check(key, value, headers, timestamp_ms, version=7)


@FUZZ
@given(
    key=st.binary(min_size=1, max_size=MAX_JOB_ID_BYTES),
    value=st.one_of(st.none(), st.binary(max_size=64)),
    target=st.from_regex(TOPIC_NAME, fullmatch=True).filter(
        lambda t: t not in FORBIDDEN and t not in {".", ".."}
    ),
    due=st.one_of(st.integers(0, MAX_DUE_MS), st.just(MAX_DUE_MS), st.just(0)),
    use_delay=st.booleans(),
    fwd_key=st.one_of(st.none(), st.binary(max_size=16)),
    foreign=st.lists(
        st.tuples(
            st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=8).filter(
                lambda n: not n.startswith(names.HEADER_PREFIX)
            ),
            st.one_of(st.none(), st.binary(max_size=16)),
        ),
        max_size=5,
    ),
    reserved=st.lists(st.tuples(reserved_names, st.binary(max_size=8)), max_size=3),
    timestamp_ms=timestamps,
    data=st.data(),
)
def test_every_well_formed_schedule_is_accepted_exactly(
    key: bytes,
    value: bytes | None,
    target: str,
    due: int,
    use_delay: bool,
    fwd_key: bytes | None,
    foreign: list[Header],
    reserved: list[Header],
    timestamp_ms: int,
    data: st.DataObject,
) -> None:
    # Given a schedule that keeps every rule, its headers in any order among foreign and
    # reserved (dropped) ones
    if use_delay:
        timestamp_ms = min(timestamp_ms, due)
        timing = (names.HEADER_DELAY_MS, str(due - timestamp_ms).encode())
    else:
        timing = (names.HEADER_DUE_MS, str(due).encode())
    contract: list[Header] = [(names.HEADER_TARGET, target.encode()), timing]
    if fwd_key is not None:
        contract.append((names.HEADER_KEY, fwd_key))
    headers = list(foreign)
    for item in [*contract, *reserved]:
        headers.insert(data.draw(st.integers(0, len(headers))), item)
    # Then it is accepted as exactly that job
    command = parse_command(
        key, value, headers, timestamp_ms=timestamp_ms, version=3, forbidden_targets=FORBIDDEN
    )
    assert command == Job(key, due, target, fwd_key, value, tuple(foreign), 3)
    _check(key, value, headers, timestamp_ms, version=3)
