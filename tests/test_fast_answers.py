"""Fast tier: etcd's answers, checked where they are parsed.  A field of
another shape than etcd gives is a TransportError naming the answer and the
field (retried like a member that did not answer); etcd's own errors become
AuthError, EtcdError or ApiNotServed; nothing else escapes."""

import json

import pytest

import ctdb_etcd_lock
from conftest import fast_config
from ctdb_etcd_lock import (ApiNotServed, AuthError, EtcdError, Response, TransportError,
                            V2Node, V3Kv, _field)

pytestmark = pytest.mark.fast

WHAT = "the answer of http://127.0.0.1:2379"


# ---------------------------------------------------------------------------
# _field: one accessor for every field

@pytest.mark.parametrize("kind, value", [
    (str, "x"), (str, ""), (int, 0), (int, -3), (bool, False), (list, []), (dict, {"a": 1}),
])
def test_field_of_the_right_kind(kind, value):
    assert _field({"f": value}, "f", kind, WHAT) == value


@pytest.mark.parametrize("text, number", [("0", 0), ("42", 42), ("-1", -1),
                                          ("18446744073709551615", 2 ** 64 - 1)])
def test_int64_is_a_decimal_string(text, number):
    assert _field({"f": text}, "f", "int64", WHAT) == number


@pytest.mark.parametrize("kind, value, shown", [
    (str, 5, "a string"),
    (int, "5", "a number"),
    (int, True, "a number"),  # a bool is no number of etcd's
    (int, 1.5, "a number"),
    (int, float("inf"), "a number"),
    (bool, 1, "true or false"),
    (list, {}, "a list"),
    (dict, [], "an object"),
    ("int64", 5, "a number in a string"),  # the gateway quotes its int64s
    ("int64", "1.5", "a number in a string"),
    ("int64", "", "a number in a string"),
    ("int64", "1" * 21, "a number in a string"),
    ("int64", "Infinity", "a number in a string"),
    ("int64", "--5", "a number in a string"),  # digits for str, not for int()
    ("int64", "\u00b2", "a number in a string"),
    ("int64", "1\u00b2", "a number in a string"),
    ("int64", None, "a number in a string"),
])
def test_field_of_another_kind_is_a_transport_error_naming_it(kind, value, shown):
    with pytest.raises(TransportError) as error:
        _field({"ttl": value}, "ttl", kind, WHAT)
    message = str(error.value)
    assert message.startswith(WHAT + " has ttl ") and message.endswith("where etcd gives "
                                                                      + shown), message


def test_field_missing_default_and_required():
    assert _field({}, "ttl", int, WHAT, 0) == 0
    assert _field({}, "ttl", int, WHAT, None) is None
    with pytest.raises(TransportError, match="has ttl None where etcd gives a number"):
        _field({}, "ttl", int, WHAT)
    # A field present but null is no missing field: its default does not apply.
    with pytest.raises(TransportError):
        _field({"ttl": None}, "ttl", int, WHAT, 0)


@pytest.mark.parametrize("record", [None, [], "node", 5])
def test_field_of_no_object(record):
    with pytest.raises(TransportError, match="is no JSON object"):
        _field(record, "key", str, WHAT, None)


# ---------------------------------------------------------------------------
# The records

ENTRY = {"key": "/_locks/_ctdb/t/00000000000000000004", "value": "holder", "ttl": 5,
         "expiration": "2026-11-25T15:46:55Z", "modifiedIndex": 7, "createdIndex": 4}


def test_v2_node_of_a_directory_with_entries():
    node = V2Node({"key": "/_locks/_ctdb/t", "dir": True, "nodes": [ENTRY, {"key": "/x",
                                                                            "dir": True}]},
                  WHAT)
    assert node.dir and node.value is None and len(node.nodes) == 2
    entry = node.nodes[0]
    assert (entry.key, entry.value, entry.ttl, entry.created, entry.modified) == (
        ENTRY["key"], "holder", 5, 4, 7)
    assert entry.index() == 7
    occupant = entry.occupant()
    assert (occupant.value, occupant.left, occupant.since, occupant.ident, occupant.expires) \
        == ("holder", 5, 4, ENTRY["key"], ENTRY["expiration"])


def test_v2_node_reads_one_level_of_entries():
    """We never ask for a directory recursively: nested nodes deeper than
    its entries (a hostile answer, deep enough to exhaust the recursion
    limit) are not read."""
    deep = {"key": "/deep", "dir": True, "createdIndex": 1, "modifiedIndex": 1}
    for _ in range(2000):
        deep = {"key": "/d", "dir": True, "nodes": [deep], "createdIndex": 1,
                "modifiedIndex": 1}
    node = V2Node({"key": "/_locks/_ctdb/t", "dir": True, "nodes": [deep], "createdIndex": 1,
                   "modifiedIndex": 1}, WHAT)
    assert [entry.key for entry in node.nodes] == ["/d"] and node.nodes[0].nodes == []


def test_v2_entry_without_expiration_has_no_time_left():
    # ttl left out once 0, and no expiration: an entry without a TTL.
    occupant = V2Node({"key": "/k", "value": "v"}, WHAT).occupant()
    assert occupant.left is None and occupant.expires is None


@pytest.mark.parametrize("field, value", [
    ("key", None), ("key", 4), ("value", 5), ("dir", "true"), ("ttl", "5"),
    ("createdIndex", "4"), ("modifiedIndex", 7.5), ("nodes", {}), ("expiration", 0),
])
def test_v2_node_field_of_another_kind(field, value):
    with pytest.raises(TransportError) as error:
        V2Node(dict(ENTRY, **{field: value}), WHAT)
    assert " has %s " % field in str(error.value)


def test_v2_entry_inside_a_directory_is_checked_too():
    with pytest.raises(TransportError, match=" has ttl "):
        V2Node({"key": "/d", "dir": True, "nodes": [dict(ENTRY, ttl=None)]}, WHAT)


@pytest.mark.parametrize("index", [None, 0, -1])
def test_v2_entry_refreshed_needs_its_modified_index(index):
    raw = dict(ENTRY)
    raw.pop("modifiedIndex")
    if index is not None:
        raw["modifiedIndex"] = index
    node = V2Node(raw, WHAT)  # a directory or a delete's answer may lack it
    with pytest.raises(TransportError, match="has no modifiedIndex for /_locks/_ctdb/t/0"):
        node.index()


def b64(text):
    import base64
    return base64.b64encode(text.encode()).decode()


def test_v3_kv():
    kv = V3Kv({"key": b64("/k"), "value": b64("holder é"), "create_revision": "12",
               "lease": "77"}, WHAT)
    assert (kv.value, kv.created, kv.lease) == ("holder é", 12, 77)
    kv = V3Kv({"create_revision": "3"}, WHAT)  # etcd leaves out zero values
    assert (kv.value, kv.lease) == ("", 0)
    assert "not base64" in V3Kv({"create_revision": "3", "value": "abc"}, WHAT).value


@pytest.mark.parametrize("raw, field", [
    ({"value": b64("v")}, "create_revision"),
    ({"create_revision": 12}, "create_revision"),
    ({"create_revision": "12", "lease": 77}, "lease"),
    ({"create_revision": "12", "value": 5}, "value"),
])
def test_v3_kv_field_of_another_kind(raw, field):
    with pytest.raises(TransportError, match=" has %s " % field):
        V3Kv(raw, WHAT)


def test_kvs_of_a_range_and_of_a_transaction():
    kv = {"value": b64("v"), "create_revision": "5", "lease": "9"}
    assert [k.created for k in ctdb_etcd_lock._kvs({"kvs": [kv, kv]}, WHAT)] == [5, 5]
    assert ctdb_etcd_lock._kvs({}, WHAT) == []
    txn = {"responses": [{"response_put": {}}, {"response_range": {"kvs": [kv]}}]}
    assert [k.lease for k in ctdb_etcd_lock._txn_range(txn, WHAT)] == [9]
    with pytest.raises(TransportError, match=" has response_range "):
        ctdb_etcd_lock._txn_range({"responses": [{"response_range": []}]}, WHAT)
    with pytest.raises(TransportError, match=" has kvs "):
        ctdb_etcd_lock._kvs({"kvs": {}}, WHAT)


@pytest.mark.parametrize("body", [b"", b"not json", b"[]", b"5", b"\xff", b'"x"'])
def test_a_body_that_is_no_json_object(body):
    with pytest.raises(TransportError) as error:
        Response(200, {}, body, "http://127.0.0.1:2379").json()
    assert str(error.value).startswith("http://127.0.0.1:2379 answered HTTP 200 with a body "
                                       "that is not etcd's JSON")


# ---------------------------------------------------------------------------
# etcd's errors, where each lock reads its answers

def answer(status, data, cluster="1f"):
    body = data if isinstance(data, bytes) else json.dumps(data).encode()
    headers = {"x-etcd-cluster-id": cluster} if cluster else {}
    return Response(status, headers, body, "http://127.0.0.1:2379")


@pytest.fixture
def v2(scripted, fake_log):
    return ctdb_etcd_lock.V2Lock(scripted(), fast_config(api="v2"), "ours", fake_log)


@pytest.fixture
def v3(scripted, fake_log):
    lock = ctdb_etcd_lock.V3Lock(scripted(), fast_config(api="v3"), "ours", fake_log)
    lock.prefix = "/v3"
    return lock


def test_v2_node_answer_and_its_cluster(v2):
    node = v2._node(answer(200, {"action": "get", "node": ENTRY}))
    assert node.key == ENTRY["key"]
    assert v2.transport.clusters == [("1f", "http://127.0.0.1:2379", None)]


@pytest.mark.parametrize("status, data, error, words", [
    (404, b"404 page not found", ApiNotServed, "does not serve the v2 API at /v2"),
    (401, {"errorCode": 110, "message": "The request requires user authentication"},
     AuthError, "refused us: The request requires user authentication; check username"),
    (412, {"errorCode": 101, "message": "Compare failed", "cause": "[a != b]"}, EtcdError,
     "Compare failed (v2 error 101, [a != b])"),
    (404, {"errorCode": 100, "message": "Key not found", "cause": "/k"}, EtcdError,
     "(v2 error 100, /k)"),
    (200, {"action": "get"}, TransportError, "answered HTTP 200 without a node"),
    (200, {"errorCode": "100"}, TransportError, "has errorCode '100'"),
    (200, {"node": []}, TransportError, "is no JSON object"),
])
def test_v2_errors(v2, status, data, error, words):
    with pytest.raises(error) as raised:
        v2._node(answer(status, data))
    assert words in str(raised.value)
    if error is EtcdError:
        assert (raised.value.status, raised.value.code) == (status, data["errorCode"])


def test_v3_answer_checks_the_cluster_with_the_member_id(v3):
    data = v3._answer(answer(200, {"header": {"cluster_id": "255", "member_id": "7"}}))
    assert data["header"]["member_id"] == "7"
    # A keepalive's header is inside its result.
    v3._answer(answer(200, {"result": {"header": {"cluster_id": "16", "member_id": "8"}}}))
    assert v3.transport.clusters == [("ff", "http://127.0.0.1:2379", 7),
                                     ("10", "http://127.0.0.1:2379", 8)]


@pytest.mark.parametrize("status, data, error, words, code", [
    (401, {"error": "etcdserver: invalid auth token", "code": 16}, AuthError,
     "v3 API at http://127.0.0.1:2379 refused us: etcdserver: invalid auth token", None),
    (400, {"error": "etcdserver: permission denied", "code": 7}, AuthError,
     "permission denied", None),
    (400, {"code": 5, "message": "etcdserver: requested lease not found"}, EtcdError,
     "requested lease not found (v3 code 5, HTTP 400)", 5),  # etcd 3.6's shape
    (200, {"error": {"grpc_code": 14, "http_code": 503, "message": "no leader"}}, EtcdError,
     "no leader (v3 code 14, HTTP 503)", 14),  # a stream's error
])
def test_v3_errors(v3, status, data, error, words, code):
    with pytest.raises(error) as raised:
        v3._answer(answer(status, data))
    assert words in str(raised.value)
    if error is EtcdError:
        assert raised.value.code == code
        assert raised.value.status == (503 if status == 200 else status)


@pytest.mark.parametrize("header", [{"cluster_id": 255}, {"cluster_id": "ff"},
                                    {"cluster_id": "1", "member_id": 2}, []])
def test_v3_header_of_another_kind(v3, header):
    with pytest.raises(TransportError, match="the v3 answer of http://127.0.0.1:2379 has"):
        v3._answer(answer(200, {"header": header}))
