"""What the property tests (``tests/test_fuzz_*.py``) and ``make fuzz``
(``tools/fuzz.py``) share: Hypothesis profiles, the rules read from
``docs/protocol.rst``, strategies for requests and records, and a small
blocking client that drives a real server over loopback.

Profiles (``HYPOTHESIS_PROFILE``):

``chatserver-ci`` (the default)
    What ``make test`` runs: a bounded number of examples per property
    (``FUZZ_CI_EXAMPLES``, default 100, scaled down for the end-to-end
    ones), no deadline (a loaded CI machine must not make a property
    flaky), derandomized and without an example database, so every run
    tries the same examples.
``chatserver-fuzz``
    What ``make fuzz`` runs: ``FUZZ_EXAMPLES`` per property (default
    1,000,000), random, with failures kept in ``.hypothesis/`` and tried
    first next time.  Each property also stops after ``FUZZ_SECONDS``
    (default 60), so a run is bounded in time whatever the count.

The properties assert the specification's general guarantees (error codes
from its tables, one answer per request, a clean failure), not details of
today's implementation: the tables are parsed from the spec itself.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from chatserver.wire import channel

# Hypothesis's caches compare keys of every kind, bytes with ints too,
# which Python's -b (tools/run_trial.py) reports: not ours to fix.
warnings.filterwarnings("ignore", category=BytesWarning, module=r"hypothesis\.")

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "docs" / "protocol.rst"

CI_PROFILE = "chatserver-ci"
FUZZ_PROFILE = "chatserver-fuzz"

settings.register_profile(
    CI_PROFILE,
    max_examples=int(os.environ.get("FUZZ_CI_EXAMPLES", "100")),
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.register_profile(
    FUZZ_PROFILE,
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "1000000")),
    deadline=None,
    derandomize=False,
    database=DirectoryBasedExampleDatabase(str(ROOT / ".hypothesis" / "examples")),
    print_blob=True,
    suppress_health_check=list(HealthCheck),
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", CI_PROFILE)
if PROFILE not in (CI_PROFILE, FUZZ_PROFILE):
    PROFILE = CI_PROFILE  # someone else's profile name: ours stay bounded
settings.load_profile(PROFILE)
FUZZING = PROFILE == FUZZ_PROFILE
#: Per-property time budget under ``make fuzz``.
FUZZ_SECONDS = float(os.environ.get("FUZZ_SECONDS", "60"))
#: Where ``check`` appends one JSON line per property run (``make fuzz``).
FUZZ_REPORT = os.environ.get("FUZZ_REPORT")
#: trial's per-test timeout for the fuzz tests (120 s by default).
TEST_TIMEOUT = 120 if not FUZZING else int(FUZZ_SECONDS * 1.5 + 120)


# --- running a property ------------------------------------------------------


def check(
    test: Callable[[Any], None], strategy: st.SearchStrategy[Any], *, scale: float = 1.0, name: str = ""
) -> int:
    """Run ``test(value)`` for values drawn from ``strategy`` under the
    active profile; ``scale`` shrinks the example count of slow properties.
    Returns how many examples ran.

    Under ``make fuzz`` the run is cut into chunks (each a fresh Hypothesis
    run with its own random seed) until the examples or the time budget are
    used up: Hypothesis has no time limit of its own, and one run of a
    million examples would keep its whole search tree in memory."""
    name = name or test.__name__
    profile = settings.get_profile(PROFILE)
    total = max(1, int(profile.max_examples * scale)) if not FUZZING else profile.max_examples
    count = 0

    def run(value: Any) -> None:
        nonlocal count
        count += 1
        test(value)

    start = time.monotonic()
    deadline = start + FUZZ_SECONDS
    chunk = total if not FUZZING else min(total, 200)
    while True:
        before = count
        runner = settings(profile, max_examples=chunk)(given(strategy)(run))
        try:
            runner()
        except BaseException as e:
            _report(name, count, time.monotonic() - start, failed=True)
            notes = getattr(e, "__notes__", None)
            if notes and not isinstance(e, KeyboardInterrupt):
                raise AssertionError(f"{name}: {type(e).__name__}: {e}\n" + "\n".join(notes)) from e
            raise
        ran = count - before
        now = time.monotonic()
        if not FUZZING or count >= total or now >= deadline or ran < chunk // 2:
            break
        rate = count / max(now - start, 1e-3)
        chunk = int(max(100, min(total - count, rate * min(30.0, deadline - now))))
    _report(name, count, time.monotonic() - start, failed=False)
    return count


def skip_when_fuzzing() -> None:
    """For the type-by-type runs of ``make test``: under ``make fuzz`` the
    general property has the time to cover every type."""
    if FUZZING:
        from twisted.trial.unittest import SkipTest

        raise SkipTest("make fuzz runs the general property instead")


def _report(name: str, count: int, seconds: float, failed: bool) -> None:
    if not FUZZING:
        return
    rate = count / max(seconds, 1e-3)
    status = "FAILED" if failed else "ok"
    print(f"fuzz {name}: {count} examples in {seconds:.1f} s ({rate:.0f}/s) {status}", file=sys.stderr)
    if FUZZ_REPORT:
        with open(FUZZ_REPORT, "a", encoding="utf-8") as f:
            f.write(
                json.dumps({"property": name, "examples": count, "seconds": seconds, "failed": failed}) + "\n"
            )


# --- the rules, read from the specification ----------------------------------


def _section(text: str, title: str, underline: str) -> str:
    match = re.search(
        rf"^{re.escape(title)}\n{re.escape(underline)}{{3,}}\n(.*?)(?=^\S[^\n]*\n[=~\-^]{{3,}}\n)",
        text,
        re.M | re.S,
    )
    if match is None:
        raise AssertionError(f"docs/protocol.rst has no section {title!r}")
    return match.group(1)


def _spec_text() -> str:
    return SPEC.read_text(encoding="utf-8")


def spec_alert_codes() -> dict[int, str]:
    """The ALERT codes of the spec's table: code -> name."""
    section = _section(_spec_text(), "Alert", "-")
    codes = {int(c): name for c, name in re.findall(r"^(\d+)\s+([a-z_]+)\s", section, re.M)}
    assert codes.get(channel.ALERT_DECODE_ERROR) == "decode_error", codes
    return codes


def spec_error_codes() -> frozenset[str]:
    """The ``error`` codes of the spec's Errors table."""
    section = _section(_spec_text(), "Errors", "-")
    codes = frozenset(re.findall(r"^   \* - ``([a-z_]+)``", section, re.M))
    assert {"bad_field", "unknown_type", "internal_error"} <= codes, codes
    return codes


def spec_requests() -> dict[str, dict[str, bool]]:
    """The spec's Requests table: type -> {member: required}, members in
    table order.  ``a`` or ``b`` makes both optional (``login``)."""
    section = _section(_spec_text(), "Requests", "-")
    lines = section.splitlines()
    rules = [i for i, line in enumerate(lines) if re.fullmatch(r"=+(  +=+)+", line)]
    border = lines[rules[0]]
    spans = [(m.start(), m.end()) for m in re.finditer(r"=+", border)]
    rows: list[tuple[str, str]] = []
    for line in lines[rules[1] + 1 : rules[2]]:
        first = line[spans[0][0] : spans[1][0]].strip()
        members = line[spans[1][0] : spans[2][0]].strip()
        if first:
            rows.append((first, members))
        elif rows:
            rows[-1] = (rows[-1][0], rows[-1][1] + " " + members)
    table: dict[str, dict[str, bool]] = {}
    for first, members in rows:
        kind = re.fullmatch(r"`([a-z_]+)`_", first)
        assert kind is not None, first
        table[kind.group(1)] = {
            name: star == "\\*" for name, star in re.findall(r"``([a-z0-9_]+)``(\\\*)?", members)
        }
    assert table["say"] == {"room": True, "body": False, "e2e": False, "txn_id": False, "resend": False}, (
        table["say"]
    )
    return table


ALERT_CODES = spec_alert_codes()
ERROR_CODES = spec_error_codes()
REQUEST_TABLE = spec_requests()

#: The codes a value check may give (section "Values"), and the others
#: validation gives (before anything else about a request is looked at).
VALUE_CODES = {"username": "bad_username", "room": "bad_room", "password": "bad_password", "body": "bad_body"}
VALIDATION_CODES = frozenset(
    {"unknown_type", "missing_field", "unknown_field", "bad_field", *VALUE_CODES.values()}
)

#: The kind of value (spec section "Values") of each request member.
#: A member added to the Requests table needs a line here.
MEMBER_KINDS = {
    "user": "username",
    "to": "username",
    "password": "password",
    "token": "token",
    "invite": "invite_code",
    "room": "room",
    "body": "body",
    "kind": "kind",
    "topic": "topic",
    "reason": "reason",
    "stream": "stream",
    "after": "event_id",
    "before": "event_id",
    "limit": "limit",
    "duration": "duration",
    "subscribe": "flag",
    "txn_id": "txn_id",
    "resend": "flag",
    "encrypted": "flag",
    "device": "device_id",
    "name": "device_name",
    "identity": "identity",
    "one_time_keys": "one_time_keys",
    "fallback_key": "signed_key",
    "proof": "signature",
    "users": "users",
    "devices": "claims",
    "messages": "to_device",
    "upto": "event_id",
    "e2e": "megolm_payload",  # in a say; a dm's is below
}

#: Members whose kind depends on the request: the cursors and page sizes
#: of the paged lists.
REQUEST_MEMBER_KINDS = {
    ("who", "after"): "username",
    ("rooms", "after"): "room",
    ("devices", "after"): "username",
    ("who", "limit"): "list_limit",
    ("rooms", "limit"): "list_limit",
    ("say", "e2e"): "megolm_payload",
    ("dm", "e2e"): "olm_payload",
}


def member_kind(request: str, member: str) -> str:
    """The kind of value (spec section "Values") of ``member`` in ``request``."""
    return REQUEST_MEMBER_KINDS.get((request, member), MEMBER_KINDS[member])


MAX_BODY = 4000  # [chat] max_body_length, the default
MAX_SAFE = (1 << 53) - 1
TEN_YEARS = 315360000


# --- strategies: values --------------------------------------------------------

_CONTROLS = "".join(chr(c) for c in [*range(0x00, 0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0)])
#: Any character but a lone surrogate (which JSON text cannot carry).
chars = st.characters(exclude_categories=("Cs",))
#: Characters a body, topic or reason may hold.
text_chars = st.characters(exclude_categories=("Cs",), exclude_characters=_CONTROLS)
controls = st.sampled_from(_CONTROLS)
surrogates = st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff"])

_LOWER = "abcdefghijklmnopqrstuvwxyz0123456789"
#: The characters of a transaction id (spec "Values").
_TXN_CHARS = st.sampled_from("ABCXYZabcxyz0189_-")
#: U+0020 to U+007E: the characters of an invite code (spec "Values").
_PRINTABLE_ASCII = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
_NAME_REST = _LOWER + "_-"

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(chars, max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(chars, max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


def _name(first: str, rest: str, min_rest: int, max_rest: int) -> st.SearchStrategy[str]:
    return st.builds(
        lambda a, b: a + b, st.sampled_from(first), st.text(rest, min_size=min_rest, max_size=max_rest)
    )


#: Valid usernames, some with ASCII capitals (which mean the lowercase name).
usernames = _name(_LOWER + "ABCXYZ", _NAME_REST + "QRSZ", 1, 31)
lower_usernames = _name(_LOWER, _NAME_REST, 1, 31)
room_names = _name(_LOWER, _NAME_REST, 0, 31)


def _not_blank(parts: tuple[str, str, str]) -> str:
    return parts[0] + parts[1] + parts[2]


def bodies(max_length: int = MAX_BODY) -> st.SearchStrategy[str]:
    """Valid bodies: no controls but tab and newline, not only white space."""
    allowed = st.one_of(text_chars, st.sampled_from("\t\n "))
    visible = text_chars.filter(lambda c: not c.isspace())
    return (
        st.tuples(st.text(allowed, max_size=20), visible, st.text(allowed, max_size=40))
        .map(_not_blank)
        .filter(lambda s: len(s) <= max_length)
    )


_B64_CHARS = "ABCXYZabcxyz0189+/"
_DEVICE_CHARS = "ABCXYZabcxyz0189_-"
b64_keys = st.text(_B64_CHARS, min_size=43, max_size=43)
b64_signatures = st.text(_B64_CHARS, min_size=86, max_size=86)
device_ids = st.text(_DEVICE_CHARS, min_size=1, max_size=32)
signed_keys = st.fixed_dictionaries(
    {"key_id": st.text(_B64_CHARS, min_size=1, max_size=32), "key": b64_keys, "signature": b64_signatures}
)
#: Any small JSON object (a to_device body: opaque to the server).
json_objects = st.dictionaries(st.text(chars, max_size=8), json_values, max_size=4)


def _e2e_values(kind: str) -> st.SearchStrategy[Any] | None:
    """Valid values of the end-to-end encryption members (section
    "End-to-end encryption"), or None for another kind."""
    if kind == "device_id":
        return device_ids
    if kind == "device_name":
        return st.text(text_chars.filter(lambda c: c not in "\t\n"), max_size=64)
    if kind == "identity":
        return st.fixed_dictionaries(
            {"curve25519": b64_keys, "ed25519": b64_keys, "signature": b64_signatures}
        )
    if kind == "signed_key":
        return signed_keys
    if kind == "signature":
        return b64_signatures
    if kind == "one_time_keys":
        return st.lists(signed_keys, max_size=5, unique_by=lambda k: k["key_id"])
    if kind == "users":
        return st.lists(usernames, min_size=1, max_size=5)
    if kind == "claims":
        return st.lists(
            st.fixed_dictionaries({"user": usernames, "device": device_ids}), min_size=1, max_size=5
        )
    if kind == "to_device":
        return st.lists(
            st.fixed_dictionaries({"user": usernames, "device": device_ids, "body": json_objects}),
            min_size=1,
            max_size=5,
        )
    if kind == "olm_payload":
        message = st.fixed_dictionaries(
            {"type": st.sampled_from([0, 1]), "body": st.text(_B64_CHARS, min_size=1, max_size=60)}
        )
        return st.fixed_dictionaries(
            {
                "algorithm": st.just("olm.v1"),
                "sender_key": b64_keys,
                "device": device_ids,
                "ciphertext": st.dictionaries(
                    lower_usernames,
                    st.dictionaries(device_ids, message, min_size=1, max_size=2),
                    min_size=1,
                    max_size=2,
                ),
            }
        )
    if kind == "megolm_payload":
        return st.fixed_dictionaries(
            {
                "algorithm": st.just("megolm.v1"),
                "sender_key": b64_keys,
                "device": device_ids,
                "session_id": b64_keys,
                "ciphertext": st.text(_B64_CHARS, min_size=1, max_size=200),
                "devices": st.text("0123456789abcdef", min_size=64, max_size=64),
            }
        )
    return None


def valid_values(
    kind: str, request: str, pools: dict[str, list[str]] | None = None
) -> st.SearchStrategy[Any]:
    """Valid values of a member kind; ``pools`` narrows names to a few (so
    that a long fuzz run does not create a million rooms)."""
    if pools and kind in ("username", "room") and kind in pools:
        return st.sampled_from(pools[kind])
    if kind == "username":
        return usernames
    if kind == "room":
        return room_names
    if kind == "password":
        return st.text(chars, min_size=8 if request == "register" else 1, max_size=40) | st.text(
            chars, min_size=1000, max_size=1024
        ).filter(lambda s: len(s) >= (8 if request == "register" else 1))
    if kind == "token":
        return st.text(st.characters(max_codepoint=127), min_size=16, max_size=128)
    if kind == "invite_code":
        return st.text(_PRINTABLE_ASCII, min_size=1, max_size=128)
    if kind == "txn_id":
        return st.text(_TXN_CHARS, min_size=8, max_size=64)
    if kind == "body":
        return bodies()
    if kind == "topic":
        return st.text(text_chars, max_size=300)
    if kind == "reason":
        return st.text(text_chars, max_size=200)
    if kind == "kind":
        return st.sampled_from(["public", "private", "readonly"])
    if kind == "stream":
        # Not lowercased in a stream: "dm:Alice:bob" is refused.
        users = (
            st.sampled_from(sorted({u.lower() for u in pools["username"]}))
            if pools and "username" in pools
            else lower_usernames
        )
        rooms = st.sampled_from(pools["room"]) if pools and "room" in pools else room_names
        return rooms.map(lambda r: "room:" + r) | st.tuples(users, users).map(lambda p: f"dm:{p[0]}:{p[1]}")
    if kind == "event_id":
        return st.integers(0, MAX_SAFE) | st.integers(0, 100)
    if kind == "limit":
        return st.integers(1, 1000)
    if kind == "list_limit":
        return st.integers(1, 200)
    if kind == "duration":
        return st.integers(1, TEN_YEARS) | st.floats(0, TEN_YEARS, exclude_min=True)
    if kind == "flag":
        return st.booleans()
    e2e_values = _e2e_values(kind)
    if e2e_values is not None:
        return e2e_values
    raise AssertionError(f"no strategy for values of kind {kind!r}: add one to tests/fuzzing.py")


def normalized(kind: str, value: Any) -> Any:
    """The value a valid member has after validation."""
    if kind == "username":
        return value.lower()
    if kind == "duration":
        return float(value)
    if kind == "users":
        return list(dict.fromkeys(name.lower() for name in value))
    if kind == "claims":
        return list(dict.fromkeys((item["user"].lower(), item["device"]) for item in value))
    if kind == "to_device":
        return [dict(item, user=item["user"].lower()) for item in value]
    return value


def _wrong_types(accepted: tuple[type, ...]) -> st.SearchStrategy[Any]:
    def wrong(v: Any) -> bool:
        if isinstance(v, bool):
            return bool not in accepted
        return not isinstance(v, accepted)

    return json_values.filter(wrong)


def _with_bad_char(valid: st.SearchStrategy[str], bad: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.tuples(valid, bad, st.integers(0, 40)).map(lambda t: t[0][: t[2]] + t[1] + t[0][t[2] :])


def invalid_values(kind: str, request: str) -> st.SearchStrategy[tuple[Any, str]]:
    """(value, expected error code) pairs: a value of the wrong JSON type
    (always ``bad_field``) or out of the kind's range (its own code)."""
    code = VALUE_CODES.get(kind, "bad_field")
    strings = (str,)
    numbers = (int, float)
    if kind in (
        "username",
        "room",
        "password",
        "token",
        "txn_id",
        "invite_code",
        "body",
        "topic",
        "reason",
        "stream",
        "kind",
    ):
        wrong = _wrong_types(strings)
    elif kind in ("event_id", "limit", "list_limit"):
        wrong = _wrong_types((int,)) | st.floats(allow_nan=False, allow_infinity=False)
    elif kind == "duration":
        wrong = _wrong_types(numbers)
    elif kind == "flag":
        wrong = _wrong_types((bool,)) | st.sampled_from([0, 1, "true"])
    elif kind in _E2E_BAD:
        wrong = _wrong_types(_E2E_TYPES[kind])
        return wrong.map(lambda v: (v, "bad_field")) | st.sampled_from(_E2E_BAD[kind]).map(
            lambda v: (v, "bad_field")
        )
    else:
        raise AssertionError(f"no strategy for values of kind {kind!r}")
    out = wrong.map(lambda v: (v, "bad_field"))
    bad: st.SearchStrategy[Any]
    if kind == "username":
        bad = st.one_of(
            st.text(_NAME_REST, min_size=33, max_size=60).map(lambda s: "a" + s),
            st.sampled_from(_LOWER),
            st.just(""),
            st.builds(
                lambda c, s: c + s, st.sampled_from("_-"), st.text(_NAME_REST, min_size=1, max_size=10)
            ),
            _with_bad_char(lower_usernames, st.sampled_from(" .:/@é\u00c9\u0130\u212a") | controls),
        )
    elif kind == "room":
        bad = st.one_of(
            st.text(_NAME_REST, min_size=32, max_size=60).map(lambda s: "a" + s),
            st.just(""),
            st.builds(lambda c, s: c + s, st.sampled_from("_-"), st.text(_NAME_REST, max_size=10)),
            _with_bad_char(room_names, st.sampled_from(" .:/@éABZ") | controls),
        )
    elif kind == "password":
        minimum = 8 if request == "register" else 1
        bad = st.text(chars, max_size=minimum - 1) | st.text(chars, min_size=1025, max_size=1100)
    elif kind == "token":
        bad = st.one_of(
            st.text(st.characters(max_codepoint=127), max_size=15),
            st.text(st.characters(max_codepoint=127), min_size=129, max_size=200),
            _with_bad_char(
                st.text(st.characters(max_codepoint=127), min_size=16, max_size=100),
                st.sampled_from("é€\u0100"),
            ),
        )
    elif kind == "txn_id":
        bad = st.one_of(
            st.text(_TXN_CHARS, max_size=7),
            st.text(_TXN_CHARS, min_size=65, max_size=80),
            _with_bad_char(st.text(_TXN_CHARS, min_size=8, max_size=60), st.sampled_from(" .:/é+=")),
        )
    elif kind == "invite_code":
        bad = st.one_of(
            st.just(""),
            st.text(_PRINTABLE_ASCII, min_size=129, max_size=160),
            _with_bad_char(
                st.text(_PRINTABLE_ASCII, min_size=1, max_size=100),
                st.sampled_from("é€\u0100\t\n") | controls,
            ),
        )
    elif kind == "body":
        bad = st.one_of(
            st.text(st.sampled_from(" \t\n\u00a0\u2003\u3000"), max_size=10),
            st.text(text_chars, min_size=1, max_size=5).map(lambda s: "x" * MAX_BODY + s),
            _with_bad_char(bodies(MAX_BODY - 1), controls),
        )
    elif kind in ("topic", "reason"):
        limit = 300 if kind == "topic" else 200
        bad = st.text(text_chars, min_size=limit + 1, max_size=limit + 20) | _with_bad_char(
            st.text(text_chars, max_size=limit - 1), controls
        )
    elif kind == "kind":
        bad = st.text(chars, max_size=10).filter(lambda s: s not in ("public", "private", "readonly"))
    elif kind == "stream":
        bad = st.one_of(
            st.text(chars, max_size=20).filter(
                lambda s: (
                    not re.fullmatch(
                        r"room:[a-z0-9][a-z0-9_-]{0,31}|dm:[a-z0-9][a-z0-9_-]{1,31}:[a-z0-9][a-z0-9_-]{1,31}",
                        s,
                    )
                )
            ),
            st.just("room:"),
            st.just("dm:alice"),
            st.just("dm:alice:bob:carol"),
            st.just("room:Lobby"),
            st.just("dm:Alice:bob"),
            st.just("dm:a:bob"),
        )
    elif kind == "event_id":
        bad = st.integers(max_value=-1) | st.integers(min_value=MAX_SAFE + 1)
    elif kind == "limit":
        bad = st.integers(max_value=0) | st.integers(min_value=1001)
    elif kind == "list_limit":
        bad = st.integers(max_value=0) | st.integers(min_value=201)
    elif kind == "duration":
        bad = st.one_of(
            st.integers(max_value=0),
            st.integers(min_value=TEN_YEARS + 1),
            st.floats(max_value=0, allow_nan=False, allow_infinity=False),
            st.floats(min_value=TEN_YEARS, exclude_min=True, allow_nan=False, allow_infinity=False),
        )
    else:  # flag: only the wrong type is wrong
        return out
    return out | bad.map(lambda v: (v, code))


_KEY = "A" * 43
_SIG = "B" * 86
_SIGNED = {"key_id": "AAAAAAAAAAA", "key": _KEY, "signature": _SIG}
#: The JSON types each end-to-end member takes, and values of the right
#: type that break one rule (each is ``bad_field``).
_E2E_TYPES: dict[str, tuple[type, ...]] = {
    "device_id": (str,),
    "device_name": (str,),
    "identity": (dict,),
    "signed_key": (dict,),
    "signature": (str,),
    "one_time_keys": (list,),
    "users": (list,),
    "claims": (list,),
    "to_device": (list,),
    "olm_payload": (dict,),
    "megolm_payload": (dict,),
}
_E2E_BAD: dict[str, list[Any]] = {
    "device_id": ["", "x" * 33, "A B", "é"],
    "device_name": ["x" * 65, "a\nb", "a\x85"],
    "identity": [
        {"curve25519": _KEY, "ed25519": _KEY},
        {"curve25519": _KEY[:-1], "ed25519": _KEY, "signature": _SIG},
        {"curve25519": _KEY, "ed25519": _KEY, "signature": _SIG, "extra": 1},
        {"curve25519": _KEY, "ed25519": "=" * 43, "signature": _SIG},
    ],
    "signed_key": [dict(_SIGNED, key_id=""), dict(_SIGNED, signature=_SIG + "A"), {"key": _KEY}],
    "signature": ["", _SIG[:-1], _SIG + "A", "=" * 86],
    "one_time_keys": [[_SIGNED, _SIGNED], [dict(_SIGNED, key_id=str(i)) for i in range(51)], ["key"]],
    "users": [[], ["alice"] * 101, [1]],
    "claims": [[], [{"user": "alice"}], [{"user": "alice", "device": ""}], ["alice"]],
    "to_device": [
        [],
        [{"user": "alice", "device": "D"}],
        [{"user": "alice", "device": "D", "body": "text"}],
        [{"user": "alice", "device": "D", "body": {"x": "y" * 16001}}],
    ],
    "olm_payload": [
        {
            "algorithm": "megolm.v1",
            "sender_key": _KEY,
            "device": "D",
            "ciphertext": {"bob": {"D": {"type": 0, "body": "QQ"}}},
        },
        {"algorithm": "olm.v1", "sender_key": _KEY, "device": "D", "ciphertext": {}},
        {
            "algorithm": "olm.v1",
            "sender_key": _KEY,
            "device": "D",
            "ciphertext": {"bob": {"D": {"type": 2, "body": "QQ"}}},
        },
        {
            "algorithm": "olm.v1",
            "sender_key": _KEY,
            "device": "D",
            "ciphertext": {"Bob": {"D": {"type": 0, "body": "QQ"}}},
        },
        {"algorithm": "olm.v1", "sender_key": _KEY, "device": "D"},
    ],
    "megolm_payload": [
        {
            "algorithm": "olm.v1",
            "sender_key": _KEY,
            "device": "D",
            "session_id": _KEY,
            "ciphertext": "QQ",
            "devices": "0" * 64,
        },
        {
            "algorithm": "megolm.v1",
            "sender_key": _KEY,
            "device": "D",
            "session_id": _KEY,
            "ciphertext": "QQ",
            "devices": "0" * 63,
        },
        {
            "algorithm": "megolm.v1",
            "sender_key": _KEY,
            "device": "D",
            "session_id": _KEY,
            "ciphertext": "",
            "devices": "0" * 64,
        },
    ],
}

refs = st.text(chars, max_size=64) | st.integers(0, MAX_SAFE)
#: (ref, whether the answer carries it) for refs the server must refuse.
bad_refs = st.one_of(
    _wrong_types((str, int)).map(lambda v: (v, False)),
    st.booleans().map(lambda v: (v, False)),
    st.text(chars, min_size=65, max_size=90).map(lambda v: (v, True)),
    st.integers(max_value=-1).map(lambda v: (v, True)),
    st.integers(min_value=MAX_SAFE + 1, max_value=2**70).map(lambda v: (v, True)),
)


# --- strategies: requests ------------------------------------------------------


@st.composite
def valid_requests(
    draw: Any, kinds: list[str] | None = None, pools: dict[str, list[str]] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(request, the cleaned request validation must return)."""
    kind = draw(st.sampled_from(kinds or sorted(REQUEST_TABLE)))
    request: dict[str, Any] = {"type": kind}
    clean: dict[str, Any] = {"type": kind}
    for member, required in REQUEST_TABLE[kind].items():
        if required or draw(st.booleans()):
            value_kind = member_kind(kind, member)
            value = draw(valid_values(value_kind, kind, pools))
            request[member] = value
            clean[member] = normalized(value_kind, value)
    if draw(st.booleans()):
        request["ref"] = clean["ref"] = draw(refs)
    # Members in any order: the check order is the table's, not the JSON's.
    order = draw(st.permutations(list(request)))
    return {k: request[k] for k in order}, clean


class Mutation:
    """A request broken in exactly one way, and the error it must get."""

    def __init__(
        self, request: dict[str, Any], code: str, field: str, how: str, echo_ref: bool = True
    ) -> None:
        self.request = request
        self.code = code
        self.field = field
        self.how = how
        #: Whether the error carries the request's ``ref``.
        self.echo_ref = echo_ref

    def __repr__(self) -> str:
        return f"Mutation({self.how}: {self.request!r} -> {self.code} on {self.field!r})"


@st.composite
def mutated_requests(
    draw: Any, kinds: list[str] | None = None, pools: dict[str, list[str]] | None = None
) -> Mutation:
    request, _ = draw(valid_requests(kinds, pools))
    kind = request["type"]
    schema = REQUEST_TABLE[kind]
    choices = ["unknown_member", "bad_ref", "unknown_type"]
    if schema:
        choices += ["bad_value", "bad_value", "bad_value"]
    if any(schema.values()):
        choices.append("missing")
    how = draw(st.sampled_from(choices))
    request = dict(request)
    if how == "bad_value":
        member = draw(st.sampled_from(sorted(schema)))
        value, code = draw(invalid_values(member_kind(kind, member), kind))
        request[member] = value
        return Mutation(request, code, member, f"bad {member}")
    if how == "missing":
        member = draw(st.sampled_from(sorted(m for m, required in schema.items() if required)))
        del request[member]
        return Mutation(request, "missing_field", member, f"no {member}")
    if how == "unknown_member":
        name = draw(
            st.text(chars, max_size=60).filter(lambda n: n not in schema and n not in ("type", "ref"))
        )
        request[name] = draw(json_values)
        return Mutation(request, "unknown_field", name[:40], "unknown member")
    if how == "bad_ref":
        value, echoed = draw(bad_refs)
        request["ref"] = value
        return Mutation(request, "bad_field", "ref", "bad ref", echo_ref=echoed)
    name = draw(st.text(chars, max_size=50).filter(lambda n: n not in REQUEST_TABLE))
    request["type"] = name
    return Mutation(request, "unknown_type", "type", "unknown type")


#: Any JSON object with a string type: a known or unknown request type and
#: members of any name and value.
any_events = st.builds(
    lambda kind, members: {**members, "type": kind},
    st.sampled_from(sorted(REQUEST_TABLE)) | st.text(chars, max_size=12),
    st.dictionaries(
        st.sampled_from(sorted({m for t in REQUEST_TABLE.values() for m in t} | {"ref"}))
        | st.text(chars, max_size=8),
        json_values,
        max_size=5,
    ),
)


# --- a blocking client ---------------------------------------------------------


class Closed(Exception):
    """The server ended the connection."""


class BlockingClient:
    """One connection to a server on loopback, driven step by step with
    the real client half of ``chatserver.wire.channel`` over a plain socket, so
    it can run in a thread beside the reactor or in a separate driver."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""
        self.eof = False
        self.channel: channel.SecureChannel | None = None
        self.closed_by: channel.PeerClosed | None = None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "BlockingClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # lines

    def send(self, data: bytes) -> bool:
        """Write ``data``; False if the server has already gone."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    def send_line(self, line: bytes) -> bool:
        return self.send(line + b"\n")

    def send_record(self, record: bytes) -> bool:
        return self.send(channel.encode_line(record))

    def read_line(self) -> bytes | None:
        """The next line, or None at the end of the connection.  A server
        that says nothing for ``timeout`` seconds raises ``socket.timeout``."""
        while b"\n" not in self._buffer:
            if self.eof:
                return None
            try:
                data = self.sock.recv(1 << 16)
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
                return None
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def read_to_end(self) -> list[bytes]:
        lines = []
        while (line := self.read_line()) is not None:
            lines.append(line)
        return lines

    # the channel

    def handshake(self, hs: channel.ClientHandshake | None = None) -> channel.SecureChannel:
        hs = hs or channel.ClientHandshake()
        self.send_record(hs.hello())
        hs.receive_server_hello(self._record())
        for record in hs.key_exchange():
            self.send_record(record)
        self.channel = hs.receive_finished(self._record())
        return self.channel

    def _record(self) -> bytes:
        line = self.read_line()
        if line is None:
            raise Closed("connection ended during the handshake")
        return channel.decode_line(line)

    def send_events(self, events: list[dict[str, Any]]) -> bool:
        assert self.channel is not None
        return self.send(self.channel.seal_events(events))

    def send_plaintext(self, plaintext: bytes, rtype: int = channel.DATA) -> bool:
        assert self.channel is not None
        return self.send(self.channel.seal(rtype, plaintext))

    def read_events(self) -> list[dict[str, Any]] | None:
        """The events of the next DATA record ([] for a KEY_UPDATE); None
        at the end of the connection (``closed_by`` tells if it was a CLOSE)."""
        assert self.channel is not None
        line = self.read_line()
        if line is None:
            return None
        try:
            return self.channel.open(line) or []
        except channel.PeerClosed as e:
            self.closed_by = e
            return None

    def request(self, event: dict[str, Any]) -> dict[str, Any]:
        """Send one request with a ref and return its answer."""
        ref = event.setdefault("ref", "r")
        if not self.send_events([event]):
            raise Closed("server gone")
        while True:
            events = self.read_events()
            if events is None:
                raise Closed(f"connection ended before the answer to {event['type']}")
            for answer in events:
                if answer.get("ref") == ref:
                    return answer

    def login(self, user: str, password: str, register: bool = False) -> dict[str, Any]:
        self.handshake()
        answer = self.request(
            {"type": "register" if register else "login", "user": user, "password": password}
        )
        if answer["type"] != "welcome":
            raise AssertionError(f"could not log in as {user}: {answer}")
        return answer


def is_answer(event: dict[str, Any]) -> bool:
    """Answers carry the request's ref; an error always is one (the error
    for a ref of the wrong type carries none).  Notifications never do."""
    return "ref" in event or event.get("type") == "error"


PASSWORD = "correct horse battery"
#: Names the end-to-end properties use, so a long run makes few rooms and
#: accounts.  ``fuzzer`` is the account the properties log in with; the
#: others exist or not.
USER_POOL = ["fuzzer", "friend", "admin", "nobody", "Fuzzer", "x1"]
ROOM_POOL = ["lobby", "fuzz", "secret", "quiet", "r1", "r2", "nope"]
POOLS = {"username": USER_POOL, "room": ROOM_POOL}
#: An admin session may disable accounts: not the ones the runs need.
ADMIN_POOLS = {"username": ["nobody", "Nobody", "x1", "ghost"], "room": ROOM_POOL}


class Step:
    """One record of a session: events (each with its expected answer ref),
    or raw plaintext that is no valid event list."""

    def __init__(
        self,
        events: list[tuple[dict[str, Any], Any, Mutation | None]] | None = None,
        poison: bytes | None = None,
        raw: bytes | None = None,
    ) -> None:
        self.events = events or []
        self.poison = poison
        #: A line sent as it is, not sealed: after the handshake any line
        #: that is not a sealed record of this channel ends the connection.
        self.raw = raw

    def __repr__(self) -> str:
        if self.poison is not None:
            return f"Step(poison={self.poison!r})"
        if self.raw is not None:
            return f"Step(raw={self.raw[:100]!r}{'...' if len(self.raw) > 100 else ''})"
        return f"Step({[e for e, _, _ in self.events]!r})"


#: DATA plaintexts that must end the connection (no answer to them).
poisons = st.one_of(
    st.binary(max_size=40).filter(lambda b: not _decodes(b)),
    st.sampled_from(
        [
            b"",
            b"[]",
            b"{}",
            b"[1]",
            b'[{"type":1}]',
            b"[NaN]",
            b'[{"type":"ping","x":"\\ud800"}]',
            b"[" * 100000,
            b"\xff",
        ]
    ),
)


#: Lines that are no sealed record of the channel (not base64, another
#: record type, a sealed type that fails authentication, too long).
raw_lines = st.one_of(
    st.binary(max_size=80).filter(lambda b: b"\n" not in b),
    st.tuples(
        st.sampled_from(
            [channel.DATA, channel.CLOSE, channel.KEY_UPDATE, channel.CLIENT_HELLO, channel.ALERT, 0]
        ),
        st.binary(max_size=80),
    ).map(lambda t: channel.encode_line(bytes((t[0],)) + t[1])[:-1]),
    st.integers(65537, 70000).map(lambda n: b"A" * n),
)


def _decodes(plaintext: bytes) -> bool:
    try:
        channel.decode_events(plaintext)
    except channel.ChannelError:
        return False
    return True


@st.composite
def sessions(draw: Any, kinds: list[str] | None = None) -> dict[str, Any]:
    """A connection's worth of traffic after a real handshake: whether to
    log in first, and records of valid, mutated and arbitrary requests,
    perhaps ending with a record that is not a valid event list."""
    user = draw(st.sampled_from(["fuzzer", "fuzzer", "fuzzer", "admin"]))
    pools = ADMIN_POOLS if user == "admin" else POOLS
    ref = 0
    steps = []
    for _ in range(draw(st.integers(1, 4))):
        events = []
        for _ in range(draw(st.integers(1, 4))):
            ref += 1
            choice = draw(st.sampled_from(["valid", "valid", "mutated", "mutated", "any"]))
            if choice == "valid":
                event, _ = draw(valid_requests(kinds, pools))
                event["ref"] = ref
                events.append((event, ref, None))
            elif choice == "mutated":
                mutation = draw(mutated_requests(kinds, pools))
                event = mutation.request
                if mutation.field != "ref":
                    event["ref"] = ref
                    events.append((event, ref, mutation))
                else:
                    echoed = event["ref"] if mutation.echo_ref else None
                    events.append((event, echoed, mutation))
            else:
                event = draw(any_events)
                event["ref"] = ref
                events.append((event, ref, None))
        steps.append(Step(events))
    # (sampled_from: Hypothesis draws the ends of an integer range often)
    end = draw(st.sampled_from(["none"] * 16 + ["poison", "poison", "raw", "raw"]))
    if end == "poison":
        steps.append(Step(poison=draw(poisons)))
    elif end == "raw":
        steps.append(Step(raw=draw(raw_lines)))
    return {
        "user": user,
        "login": draw(st.sampled_from([True] * 4 + [False])),
        "rekey_after": draw(st.sampled_from([2, 5, channel.REKEY_AFTER_RECORDS])),
        "steps": steps,
    }


def seed(port: int) -> None:
    """The accounts and rooms the sessions expect (the server is new):
    ``fuzzer`` owns the rooms ``fuzz`` (public), ``secret`` (private) and
    ``quiet`` (readonly); ``friend`` is invited to ``secret``."""
    with BlockingClient(port) as client:
        client.login("fuzzer", PASSWORD, register=True)
        for room, kind in (("fuzz", "public"), ("secret", "private"), ("quiet", "readonly")):
            answer = client.request({"type": "create", "room": room, "kind": kind, "ref": room})
            assert answer["type"] == "ack", answer
    with BlockingClient(port) as client:
        client.login("friend", PASSWORD, register=True)
    with BlockingClient(port) as client:
        client.login("fuzzer", PASSWORD)
        answer = client.request({"type": "invite", "room": "secret", "user": "friend"})
        assert answer["type"] == "invited", answer


SENTINEL = "fuzz-sentinel"


def run_session(port: int, plan: dict[str, Any], password: str = PASSWORD) -> dict[str, Any]:
    """Play one session against the server on ``port`` and check what the
    spec promises whatever the requests: one answer per request, in order,
    with its ref; errors with codes from the spec's table (validation
    errors exactly as the mutation predicts, no ``internal_error``); and a
    connection that stays open unless the session gave it a reason to end.
    Returns what happened, for the caller's checks (logs)."""
    with BlockingClient(port) as client:
        client.handshake(channel.ClientHandshake(rekey_after=plan["rekey_after"]))
        if plan["login"]:
            answer = client.request(
                {"type": "login", "user": plan["user"], "password": password, "ref": "login"}
            )
            assert answer["type"] == "welcome", answer
        expected: list[tuple[dict[str, Any], Any, Mutation | None]] = []
        poisoned = False
        for step in plan["steps"]:
            if step.poison is not None or step.raw is not None:
                if step.poison is not None:
                    client.send_plaintext(step.poison)
                else:
                    client.send_line(step.raw)
                poisoned = True
                break
            client.send_events([event for event, _, _ in step.events])
            expected.extend(step.events)
        if not poisoned:
            client.send_events([{"type": "ping", "ref": SENTINEL}])
        answers: list[dict[str, Any]] = []
        done = False
        while not done:
            events = client.read_events()
            if events is None:
                break
            for event in events:
                if event.get("ref") == SENTINEL:
                    done = True
                elif is_answer(event):
                    answers.append(event)
        # Only a reason the session gave may end it early: a logout that
        # was answered ``logged_out`` (then CLOSE "logout"), or a record
        # that is no event list (no CLOSE).
        logged_out = any(a.get("type") == "logged_out" for a in answers)
        _check_answers(expected, answers, complete=done)
        if not done:
            assert logged_out or poisoned, (
                f"connection ended without a reason ({client.closed_by!r}) after {answers!r}"
            )
            if client.closed_by is not None:
                assert client.closed_by.code == "logout", client.closed_by
        return {"answers": answers, "complete": done, "closed_by": client.closed_by, "poisoned": poisoned}


def _check_answers(
    expected: list[tuple[dict[str, Any], Any, Mutation | None]], answers: list[dict[str, Any]], complete: bool
) -> None:
    assert len(answers) <= len(expected), f"more answers than requests: {answers!r}"
    if complete:
        assert len(answers) == len(expected), f"{len(expected)} requests, {len(answers)} answers: {answers!r}"
    for (event, ref, mutation), answer in zip(expected, answers, strict=False):
        assert answer.get("ref") == ref, f"answer {answer!r} to {event!r}: expected ref {ref!r}"
        if answer["type"] != "error":
            assert mutation is None, f"{mutation!r} was answered {answer!r}"
            continue
        code = answer.get("code")
        assert code in ERROR_CODES, f"error code {code!r} is not in the spec's table: {answer!r} to {event!r}"
        assert code != "internal_error", f"internal error for {event!r}: {answer!r}"
        assert isinstance(answer.get("message"), str) and isinstance(answer.get("request"), str), answer
        if mutation is not None:
            field = answer.get("field")
            assert (code, field) == (mutation.code, mutation.field), f"{mutation!r} got {answer!r}"


# --- the handshake under attack ------------------------------------------------


@st.composite
def handshake_attacks(draw: Any) -> dict[str, Any]:
    """Where in the handshake to misbehave (0: first line; 1: after the
    SERVER_HELLO; 2: after a valid KEY_EXCHANGE, in place of FINISHED),
    and the line to send there (``None``: the valid record, mutated at
    ``mutate``, which the runner builds once it knows it)."""
    stage = draw(st.integers(0, 2))
    kind = draw(st.sampled_from(["mutated", "mutated", "record", "bytes", "alert", "long"]))
    plan: dict[str, Any] = {"stage": stage, "kind": kind, "line": None, "mutate": None}
    if kind == "mutated":
        plan["mutate"] = (
            draw(st.integers(0, 3)),
            draw(st.integers(0, 1 << 16)),
            draw(st.integers(1, 255)),
            draw(st.binary(min_size=1, max_size=8)),
        )
    elif kind == "record":
        rtype = draw(
            st.sampled_from(
                [
                    channel.CLIENT_HELLO,
                    channel.KEY_EXCHANGE,
                    channel.FINISHED,
                    channel.SERVER_HELLO,
                    channel.DATA,
                    0,
                    0xFF,
                ]
            )
        )
        plan["line"] = channel.encode_line(bytes((rtype,)) + draw(st.binary(max_size=120)))[:-1]
    elif kind == "bytes":
        plan["line"] = draw(st.binary(min_size=0, max_size=80).filter(lambda b: b"\n" not in b))
    elif kind == "alert":
        code = draw(st.sampled_from(sorted(ALERT_CODES)) | st.integers(0, 255))
        plan["line"] = channel.encode_line(
            bytes((channel.ALERT, code)) + draw(st.text(chars, max_size=30)).encode()
        )[:-1]
    else:
        plan["line"] = b"A" * draw(st.integers(65537, 70000))
    return plan


def _mutate(valid: bytes, how: tuple[int, int, int, bytes]) -> bytes:
    op, where, mask, extra = how
    n = len(valid)
    i = where % n
    if op == 0:
        return valid[: max(1, i)]
    if op == 1:
        return valid + extra
    if op == 2:
        return valid[:i] + bytes((valid[i] ^ mask,)) + valid[i + 1 :]
    return valid


def run_handshake_attack(port: int, plan: dict[str, Any]) -> dict[str, Any]:
    """Misbehave once in the handshake.  The server must either go on as
    the spec says (only for a record that is valid there) or refuse: at
    most one ALERT, with a code of the spec's table, then the end of the
    connection.  Returns what happened."""
    with BlockingClient(port) as client:
        hs = channel.ClientHandshake()
        hello = hs.hello()
        stage = plan["stage"]
        valid = hello
        if stage >= 1:
            client.send_record(hello)
            hs.receive_server_hello(client._record())
            kex, finished = hs.key_exchange()
            valid = kex
        if stage >= 2:
            client.send_record(kex)
            valid = finished
        line = plan["line"]
        record = valid
        if line is None:
            record = _mutate(valid, plan["mutate"])
            line = channel.encode_line(record)[:-1]
        client.send_line(line)
        if stage == 1 and line == channel.encode_line(kex)[:-1]:
            client.send_record(finished)  # the valid KEY_EXCHANGE: finish
            stage = 2
            line = channel.encode_line(finished)[:-1]
        try:
            answer = client.read_line()
        except socket.timeout:
            raise AssertionError(f"no answer and no close after {plan!r}") from None
        outcome: dict[str, Any] = {"answer": answer, "alert": None}
        if answer is None:
            return outcome  # closed without a word: allowed ("may" send an ALERT)
        first = channel.decode_line(answer)
        if first[0] == channel.ALERT:
            assert len(first) >= 2, first
            outcome["alert"] = first[1]
            assert first[1] in ALERT_CODES, (
                f"ALERT code {first[1]} is not in the spec's table "
                f"(after {line[:80]!r} at stage {plan['stage']})"
            )
            assert len(first) - 2 <= 200, f"ALERT text of {len(first) - 2} bytes"
            try:
                rest = client.read_to_end()
            except socket.timeout:
                raise AssertionError("the connection stayed open after an ALERT") from None
            assert rest == [], f"lines after the ALERT: {rest!r}"
            return outcome
        # The server went on: then what we sent was valid there.
        expected = {0: channel.SERVER_HELLO, 2: channel.FINISHED}.get(stage)
        assert first[0] == expected, (
            f"server answered {first[:8]!r} to {line[:80]!r} at stage {plan['stage']}"
        )
        if stage == 0:
            fields = spec_impl_parse_client_hello(channel.decode_line(line))
            assert channel.PROTOCOL_VERSION in fields["versions"] and 1 in fields["suites"], fields
        else:
            assert line == channel.encode_line(finished)[:-1], (
                "a FINISHED that is not the right one was accepted"
            )
            hs.receive_finished(first)
        return outcome


def spec_impl_parse_client_hello(record: bytes) -> dict[str, Any]:
    from tests import spec_impl

    return spec_impl.parse_client_hello(record)


__all__ = [
    "ALERT_CODES",
    "BlockingClient",
    "ERROR_CODES",
    "FUZZING",
    "REQUEST_TABLE",
    "TEST_TIMEOUT",
    "check",
    "run_session",
    "sessions",
]
