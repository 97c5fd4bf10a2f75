"""Property tests (hypothesis), in-process: whatever a config file holds,
and whatever comes back in place of etcd's answers, the helper's parsers
end in one of their own errors or a valid result, never another exception.

    read_config          ConfigError naming the file (and the line), or a Config
    Connection.answer    an answer (status, headers, body) or ValueError,
                         _Closed, an OSError: what Transport turns into a
                         TransportError naming the member
    V2Lock, V3Lock       taken, refused, contended, lost (an EtcdLockError),
                         or released, from any sequence of answers

Deterministic: the profile below derandomizes every run and keeps no
example database, so CI sees the same examples each time.
"""

import os
import re
import socket
import tempfile
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ctdb_etcd_lock as helper

settings.register_profile(
    "ctdb_etcd_lock", derandomize=True, database=None, deadline=None, print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PROFILE = settings.get_profile("ctdb_etcd_lock")

pytestmark = pytest.mark.fast  # in-process, over a socket pair at most

CONFIG_DIR = tempfile.mkdtemp(prefix="properties-")


def config_file(data):
    path = os.path.join(CONFIG_DIR, "etcd")
    with open(path, "wb") as f:
        f.write(data)
    return path


def read(data):
    """read_config on a file of these bytes: a Config, or the ConfigError's
    message (which must name the file, and a line the file has)."""
    path = config_file(data)
    try:
        return helper.read_config(path, True)
    except helper.ConfigError as e:
        message = str(e)
    assert path in message, message
    lines = data.count(b"\n") + 1
    for number in re.findall(re.escape(path) + r":(\d+)", message):
        assert 1 <= int(number) <= lines, (message, lines)
    return message


# ---------------------------------------------------------------------------
# The config file

@settings(PROFILE, max_examples=300)
@given(st.binary(max_size=600))
def test_config_of_random_bytes(data):
    read(data)


@settings(PROFILE, max_examples=300)
@given(st.text(max_size=400))
def test_config_of_random_text(text):
    read(text.encode("utf-8", "surrogatepass"))


KEYS = sorted(helper.SETTINGS) + sorted(helper.ALIASES) + ["lock_tll", "x", ""]

# Values of the kinds python-etcd users wrote, and of none.
VALUES = st.one_of(
    st.integers(-10, 100000).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["true", "false", "True", "no", "v2", "v3", "auto", "http", "https",
                     "127.0.0.1", "[::1]:2379", "etcd1, etcd2:2381", "http://a:1, https://b",
                     "(('10.0.0.1', 2379), ('10.0.0.2', 2379))", "('a', 'b')", "/v2",
                     "example.com", "''", '"x"', "'\\ud800'", "(" * 50, "[[1]]", "2a", ""]),
    st.text(alphabet=st.characters(blacklist_characters="\n"), max_size=40),
)


@st.composite
def settings_files(draw):
    lines = []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["setting", "setting", "setting", "comment", "blank"]))
        if kind == "setting":
            lines.append("%s%s=%s%s" % (
                draw(st.sampled_from(KEYS)), draw(st.sampled_from(["", " ", "\t"])),
                draw(st.sampled_from(["", " "])), draw(VALUES)))
        elif kind == "comment":
            lines.append(draw(st.sampled_from(["#", ";", "  # "])) + draw(VALUES))
        else:
            lines.append(draw(st.sampled_from(["", "  ", "\r"])))
    bom = draw(st.sampled_from(["", "\ufeff"]))
    ending = draw(st.sampled_from(["\n", "\r\n"]))
    return (bom + ending.join(lines)).encode("utf-8", "surrogatepass")


@settings(PROFILE, max_examples=400)
@given(settings_files())
def test_config_of_settings_with_random_values(data):
    config = read(data)
    if isinstance(config, helper.Config):
        # A config that parses is one the helper can go on with.
        assert 2 <= config.lock_ttl <= 3600 and config.refresh < config.lock_ttl
        assert config.api in ("auto", "v2", "v3")
        assert config.srv_domain or config.endpoints


# ---------------------------------------------------------------------------
# The HTTP answer parser of Connection, over a real socket pair

def connection_reading(data, reused=False):
    """A Connection whose server sent data, then closed."""
    ours, theirs = socket.socketpair()
    theirs.sendall(data)
    theirs.close()
    conn = helper.Connection.__new__(helper.Connection)
    conn.endpoint = helper.Endpoint("http", "127.0.0.1", 2379)
    conn.clock, conn.watch = time.monotonic, helper.Watch(1)
    conn.buffer = conn.head = b""
    conn.used, conn.sent = reused, True
    conn.want_read = conn.want_write = helper._Never
    ours.setblocking(False)
    conn.sock = ours
    return conn


def answer_of(data, reused=False):
    conn = connection_reading(data, reused)
    try:
        return conn.answer(time.monotonic() + 2, first=reused)
    except (ValueError, helper._Closed, OSError):
        return None
    finally:
        conn.sock.close()


HEADER_LINES = st.one_of(
    st.sampled_from([b"Content-Length: 5", b"Content-Length: -1", b"Content-Length: 99999999",
                     b"Content-Length: x", b"Transfer-Encoding: chunked",
                     b"Transfer-Encoding: gzip, chunked", b"Connection: close",
                     b"Content-Type: application/json", b"X-Etcd-Cluster-Id: 1f", b": ",
                     b"no colon"]),
    st.binary(max_size=40).filter(lambda line: b"\r\n" not in line))

CHUNKS = st.lists(st.binary(max_size=30), max_size=6).map(
    lambda chunks: b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n")


@st.composite
def http_answers(draw):
    status = draw(st.sampled_from([b"HTTP/1.1 200 OK", b"HTTP/1.0 201 Created",
                                   b"HTTP/1.1 999", b"HTTP/2 200", b"HTTP/1.1 -1 X",
                                   b"HTTP/1.1 2OO OK", b""]) | st.binary(max_size=20))
    head = b"\r\n".join([status] + draw(st.lists(HEADER_LINES, max_size=5)))
    body = draw(st.binary(max_size=80) | CHUNKS)
    answer = head + b"\r\n\r\n" + body
    cut = draw(st.integers(0, len(answer)))
    return answer[:cut] if draw(st.booleans()) else answer


@settings(PROFILE, max_examples=500)
@given(st.binary(max_size=300), st.booleans())
def test_http_answer_of_random_bytes(data, reused):
    check_answer(answer_of(data, reused))


@settings(PROFILE, max_examples=500)
@given(http_answers(), st.booleans())
def test_http_answer_of_broken_http(data, reused):
    check_answer(answer_of(data, reused))


def check_answer(answer):
    if answer is not None:
        status, headers, body, keep_alive = answer
        assert isinstance(status, int) and isinstance(body, bytes)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
        assert len(body) <= helper.Connection.MAX_ANSWER and keep_alive in (True, False)


@settings(PROFILE, max_examples=200)
@given(st.lists(st.binary(min_size=1, max_size=20), min_size=1, max_size=8))
def test_a_good_answer_reads_the_same_however_it_is_cut_into_chunks(chunks):
    body = b"".join(chunks)
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"".join(
        b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"
    assert answer_of(data)[2] == body
    for cut in range(len(data)):  # every answer cut short is no answer
        assert answer_of(data[:cut]) is None


# ---------------------------------------------------------------------------
# The v2 and v3 locks, on answers in place of etcd's

VALUE = "host=test pnn=0 pid=1 id=0123456789abcdef"
V3_VALUE = "aG9zdD10ZXN0IHBubj0wIHBpZD0xIGlkPTAxMjM0NTY3ODlhYmNkZWY="  # base64 of VALUE
KEY = "/_locks/_ctdb/props"
HEADER = {"cluster_id": "2856622976426568043", "member_id": "9834178318453423123",
          "revision": "2", "raft_term": "2"}
NODE = {"key": KEY + "/00000000000000000004", "value": VALUE, "ttl": 5,
        "expiration": "2026-11-25T15:46:55Z", "modifiedIndex": 4, "createdIndex": 4}

# The answers of a real etcd to each step, in the shapes it gives them.
V2_ANSWERS = [
    (201, {"action": "create", "node": NODE}),
    (200, {"action": "get", "node": {"key": KEY, "dir": True, "nodes": [NODE]}}),
    (200, {"action": "compareAndSwap", "node": NODE, "prevNode": NODE}),
    (200, {"action": "get", "node": {"key": KEY, "dir": True, "nodes": [NODE]}}),
    (200, {"action": "compareAndDelete", "node": {"key": NODE["key"]}, "prevNode": NODE}),
    (404, {"errorCode": 100, "message": "Key not found", "cause": KEY, "index": 5}),
]
V3_ANSWERS = [
    (200, {"header": HEADER, "ID": "4328981870989014278", "TTL": "5"}),
    (200, {"header": HEADER, "succeeded": True,
           "responses": [{"response_put": {"header": {"revision": "2"}}}]}),
    (200, {"result": {"header": HEADER, "ID": "4328981870989014278", "TTL": "5"}}),
    (200, {"header": HEADER, "count": "1", "kvs": [{
        "key": "L19sb2Nrcy9fY3RkYi9wcm9wcw==", "create_revision": "2", "mod_revision": "2",
        "version": "1", "value": V3_VALUE, "lease": "4328981870989014278"}]}),
    (200, {"header": HEADER, "succeeded": True, "responses": [
        {"response_delete_range": {"header": {"revision": "3"}, "deleted": "1"}}]}),
    (200, {"header": HEADER}),
    (400, {"error": "etcdserver: requested lease not found", "code": 5,
           "message": "etcdserver: requested lease not found"}),
]

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)


# A value of another type than etcd's: the mistakes a broken server makes.
WRONG_TYPE = st.sampled_from([None, True, 0, 1, -1, 2 ** 70, 1.5, "", "1", "x", [], [{}], {},
                              {"": None}])


def mutated(value):
    """value, with any part of it kept, dropped, given another type, or
    replaced by other JSON; numbers as strings and strings of digits as
    numbers."""
    if isinstance(value, dict):
        return st.fixed_dictionaries({}, optional={
            key: st.one_of(st.just(item), mutated(item), WRONG_TYPE, JSON)
            for key, item in value.items()
        }) | st.fixed_dictionaries(
            {key: st.one_of(st.just(item), mutated(item)) for key, item in value.items()})
    if isinstance(value, list):
        return st.lists(st.one_of(*(mutated(item) for item in value)) if value else JSON,
                        max_size=3) | WRONG_TYPE
    return st.one_of(st.just(value), WRONG_TYPE, JSON,
                     st.just(str(value)) if isinstance(value, int) else st.nothing(),
                     st.just(int(value)) if isinstance(value, str) and value.isdigit()
                     else st.nothing())


def one_part_changed(draw, data):
    """data with one value somewhere inside it given another type, or gone."""
    import copy
    paths = []

    def walk(value, path):
        children = value.items() if isinstance(value, dict) else \
            enumerate(value) if isinstance(value, list) else ()
        for key, item in children:
            paths.append(path + [key])
            walk(item, path + [key])
    walk(data, [])
    changed = copy.deepcopy(data)
    if not paths:
        return changed
    *parents, last = draw(st.sampled_from(paths))
    place = changed
    for key in parents:
        place = place[key]
    old = place[last]
    swapped = [str(old)] if isinstance(old, int) else \
        [int(old)] if isinstance(old, str) and old.isdigit() else []
    new = draw(st.sampled_from(["gone"] + swapped) | WRONG_TYPE)
    if new == "gone" and isinstance(place, dict):
        del place[last]
    elif new != "gone":
        place[last] = new
    return changed


@st.composite
def responses(draw, real):
    """etcd's answers in etcd's order, one or two of them broken: changed
    in part, or no etcd answer at all; and the sequence cut short anywhere."""
    import json
    answers = [(status, json.dumps(data).encode()) for status, data in real]
    for _ in range(draw(st.integers(1, 2))):
        turn = draw(st.integers(0, len(real) - 1))
        status, data = real[turn]
        if draw(st.booleans()):
            answers[turn] = (status, json.dumps(one_part_changed(draw, data)).encode())
            continue
        answers[turn] = draw(st.one_of(
            st.tuples(st.sampled_from([status, status, 200, 201, 307, 400, 401, 404, 500]),
                      mutated(data).map(lambda changed: json.dumps(changed).encode())),
            st.tuples(st.integers(100, 599), st.binary(max_size=40)),
            st.tuples(st.sampled_from([200, 201, 404]),
                      JSON.map(lambda other: json.dumps(other).encode()))))
    return answers[:draw(st.just(len(answers)) | st.integers(0, len(answers)))]


class Answers:
    """Stands in for Transport.request: hands out the answers in turn, then
    fails as an unreachable etcd does."""

    def __init__(self, transport, answers):
        self.answers = list(answers)
        transport.request = self.request
        transport.check_members = lambda deadline: None

    def request(self, method, path, deadline, **ignored):
        if not self.answers:
            raise helper.TransportError("no more answers")
        status, body = self.answers.pop(0)
        headers = {"x-etcd-cluster-id": "27a4c376471fe96b", "content-type": "application/json"}
        return helper.Response(status, headers, body, "http://127.0.0.1:2379")


def lock_of(api, answers):
    path = config_file(("lock_name = props\nlock_ttl = 5\nrefresh = 1\napi = %s\n"
                        % api).encode())
    config = helper.read_config(path, True)
    log = helper.Log(0)
    transport = helper.Transport(config, log, helper.Watch(1))
    Answers(transport, answers)
    return helper.make_lock(config, transport, VALUE, log)


# The errors the Lock interface names; a plain EtcdLockError only where a
# lock or the transport says one of these things.
LOCK_ERRORS = (helper.LockContended, helper.LockLost, helper.ApiNotServed, helper.AuthError,
               helper.EtcdError, helper.TransportError)
PLAIN = ("belongs to cluster", "a plain key at")


def lock_error(error):
    assert isinstance(error, LOCK_ERRORS) or type(error) is helper.EtcdLockError and any(
        words in str(error) for words in PLAIN), repr(error)


def take_refresh_release(lock):
    """What the helper does with a lock, each step ending in a result or an
    error the Lock interface names; anything else fails the test.  A lock
    taken or refreshed is valid from a send of that step for at most its
    TTL (5 s): never from before the step, nor for longer."""
    clock = lock.transport.clock
    deadline = clock() + 5
    try:
        for step in (lock.acquire, lock.refresh):
            asked = clock()
            valid_until = step(deadline)
            assert isinstance(valid_until, float) and asked < valid_until <= clock() + 5
    except helper.EtcdLockError as e:
        lock_error(e)
    try:
        lock.release(deadline)
    except helper.EtcdLockError as e:
        lock_error(e)


@settings(PROFILE, max_examples=400)
@given(responses(V2_ANSWERS))
def test_v2_lock_on_any_answers(answers):
    take_refresh_release(lock_of("v2", answers))


@settings(PROFILE, max_examples=400)
@given(responses(V3_ANSWERS))
def test_v3_lock_on_any_answers(answers):
    take_refresh_release(lock_of("v3", answers))


@settings(PROFILE, max_examples=200)
@given(responses(V3_ANSWERS[:2] + V2_ANSWERS[:2] + V3_ANSWERS[2:4] + V2_ANSWERS[2:4]))
def test_auto_lock_on_any_answers(answers):
    take_refresh_release(lock_of("auto", answers))


def test_the_real_answers_take_the_lock():
    # The answers above are etcd's: in order, they take, refresh and release.
    for api, real in (("v2", V2_ANSWERS), ("v3", V3_ANSWERS)):
        import json
        lock = lock_of(api, [(status, json.dumps(data).encode()) for status, data in real])
        deadline = time.monotonic() + 5
        assert lock.acquire(deadline) > time.monotonic()
        assert lock.refresh(deadline) > time.monotonic()
        lock.release(deadline)



def test_json_nested_too_deep_is_no_answer_of_etcd():
    """Deep nesting under the size cap makes json raise RecursionError:
    still an answer etcd would not give, not an internal error."""
    deep = b"[" * 400000 + b"]" * 400000
    try:
        helper.Response(200, {}, deep, "http://127.0.0.1:1").json()
    except helper.TransportError:
        return
    raise AssertionError("no TransportError")


def test_a_value_that_is_not_base64_still_names_a_holder():
    assert "not base64" in helper._b64_text("abc")  # bad padding
