"""Fast tier: the locks (V2Lock, V3Lock, LockSet) against a scripted
transport on a fake clock.  Each test gives the requests a lock must make,
in order, with etcd's answers: any other request fails it.  What is checked
is what a bug would break: which send the validity counts from, what goes
back on contention, what a refresh compares, what is left alone."""

import base64

import pytest

import ctdb_etcd_lock
from conftest import fast_config
from ctdb_etcd_lock import (ApiNotServed, EtcdError, EtcdLockError, LockContended, LockLost,
                            TransportError)

pytestmark = pytest.mark.fast

OURS = "host=a pnn=0 pid=1 id=0000000000000001"
OTHER = "host=b pnn=1 pid=2 id=00000000000000ff"
DIR = "/_locks/_ctdb/t"
URL = "/v2/keys" + DIR
TTL = 9


def entry(number, value=OURS, index=None, ttl=TTL):
    key = "%s/%020d" % (DIR, number)
    return {"key": key, "value": value, "ttl": ttl, "expiration": "2026-01-01T00:00:00Z",
            "createdIndex": number, "modifiedIndex": index or number}


def created(node):
    return 201, {"action": "create", "node": node}


def listing(*nodes):
    return 200, {"action": "get", "node": {"key": DIR, "dir": True, "nodes": list(nodes)}}


def v2_error(code, status=None):
    status = status or {100: 404, 101: 412, 104: 403, 107: 403, 300: 500}[code]
    return status, {"errorCode": code, "message": "etcd says %d" % code, "cause": DIR}


def slow(seconds, answer, watch):
    """An answer that takes ``seconds`` of the fake clock to come."""
    def answering(call):
        watch.now += seconds
        return answer
    return answering


@pytest.fixture
def v2(scripted, fake_log):
    transport = scripted()
    return ctdb_etcd_lock.V2Lock(transport, fast_config(api="v2"), OURS, fake_log)


def held_v2(lock, index=5):
    """Script an acquire that takes the lock with entry 5; take it."""
    lock.transport.expect("POST", URL, created(entry(5, index=index)))
    lock.transport.expect("GET", URL + "?quorum=true", listing(entry(5, index=index)))
    return lock.acquire(lock.transport.clock() + 8)


# ---------------------------------------------------------------------------
# v2: acquire

def test_v2_acquire_counts_from_the_send_of_its_post(v2, fake_watch):
    v2.transport.expect("POST", URL, slow(1.5, created(entry(5)), fake_watch))
    v2.transport.expect("GET", URL + "?quorum=true", slow(0.5, listing(entry(5)), fake_watch))
    valid_until = v2.acquire(1008)
    assert valid_until == 1000 + TTL  # not 1002 + TTL: etcd started the TTL after the send
    post = v2.transport.calls[0]
    assert (post.form, post.api) == ({"value": OURS, "ttl": TTL}, "v2")
    assert (v2.entry, v2.index, v2.index_sent) == (DIR + "/%020d" % 5, 5, None)


def test_v2_contended_gives_its_entry_back_before_it_says_so(v2):
    v2.transport.expect("POST", URL, created(entry(6)))
    v2.transport.expect("GET", URL, listing(entry(3, OTHER, ttl=4), entry(6)))
    v2.transport.expect("DELETE", URL + "/%020d?prevValue=" % 6, (200, {"node": entry(6)}))
    with pytest.raises(LockContended) as contended:
        v2.acquire(1008)
    occupant = contended.value.occupant
    assert (occupant.value, occupant.left, occupant.ident) == (OTHER, 4, DIR + "/%020d" % 3)
    assert contended.value.lock is v2
    delete = v2.transport.calls[-1]
    assert delete.behind and "host%3Da" in delete.path  # compare-and-delete on our value
    v2.release(1008)  # nothing of ours is left: no request


def test_v2_post_sent_twice_keeps_the_first_entry_and_removes_the_other(v2, fake_watch):
    def resent(call):
        v2.transport.unanswered += 1  # the first send's answer was lost
        return created(entry(8))
    v2.transport.expect("POST", URL, resent)
    v2.transport.expect("GET", URL, listing(entry(7), entry(8)))
    v2.transport.expect("DELETE", URL + "/%020d?prevValue=" % 8, (200, {"node": entry(8)}))
    assert v2.acquire(1008) == 1000 + TTL
    assert v2.entry == DIR + "/%020d" % 7 and v2.resent
    # release() also looks for any other entry a lost answer may have queued.
    v2.transport.expect("DELETE", URL + "/%020d?" % 7, (200, {"node": entry(7)}))
    v2.transport.expect("GET", URL, listing())
    v2.release(1008)


def test_v2_plain_key_where_the_directory_belongs(v2):
    v2.transport.expect("POST", URL, v2_error(104))
    with pytest.raises(EtcdLockError, match="plain key at /_locks/_ctdb/t where the lock's "
                                            "directory belongs"):
        v2.acquire(1008)


def test_v2_not_served_is_api_not_served(v2):
    v2.transport.expect("POST", URL, (404, b"404 page not found"))
    with pytest.raises(ApiNotServed):
        v2.acquire(1008)
    assert not v2.posted  # nothing was queued: release() asks nothing
    v2.release(1008)


def test_v2_next_round_removes_entries_of_its_former_values(v2):
    held_v2(v2)
    v2.transport.expect("DELETE", URL + "/%020d?" % 5, (200, {"node": entry(5)}))
    v2.release(1008)
    v2.next_round(ctdb_etcd_lock.next_value(OURS))
    new = v2.value
    assert new != OURS and new.startswith("host=a pnn=0 pid=1 id=")
    # A POST of the earlier try, applied late, stands first: nobody's lock.
    v2.transport.expect("POST", URL, created(entry(9, new)))
    v2.transport.expect("GET", URL, listing(entry(6, OURS), entry(9, new)))
    v2.transport.expect("DELETE", URL + "/%020d?" % 6, (200, {"node": entry(6)}))
    assert v2.acquire(1008) == 1000 + TTL
    assert "prevValue=" + OURS.replace(" ", "+").replace("=", "%3D") in \
        v2.transport.calls[-1].path  # the former value's entry, by the former value


# ---------------------------------------------------------------------------
# v2: refresh

def test_v2_refresh_compares_value_and_index_and_counts_from_its_send(v2, fake_watch):
    held_v2(v2, index=5)
    fake_watch.now = 1002
    v2.transport.expect("PUT", URL + "/%020d" % 5, slow(1, (200, {"node": entry(5, index=11)}),
                                                        fake_watch))
    v2.transport.expect("GET", URL, listing(entry(5, index=11)))
    assert v2.refresh(1008) == 1002 + TTL
    assert v2.transport.calls[-2].form == {"refresh": "true", "prevValue": OURS,
                                           "prevIndex": 5, "ttl": TTL}
    fake_watch.now = 1004
    v2.transport.expect("PUT", URL, (200, {"node": entry(5, index=12)}))
    v2.transport.expect("GET", URL, listing(entry(5, index=12)))
    assert v2.refresh(1010) == 1004 + TTL
    assert v2.transport.calls[-2].form["prevIndex"] == 11  # moved on with each refresh


def test_v2_refresh_applied_late_counts_from_the_first_send_of_its_index(v2, fake_watch):
    # Issue 14: a refresh we gave up on (sent at 1002, index 5) reaches the
    # leader late and moves the entry on; the next refresh (sent at 1005,
    # also index 5) fails its compare.  The entry was refreshed by the one
    # sent at 1002: the lock is valid until 1002 + TTL, not 1005 + TTL.
    held_v2(v2, index=5)
    fake_watch.now = 1002

    def lost(call):
        fake_watch.now = call.deadline
        v2.transport.unanswered += 1
        raise TransportError("http://127.0.0.1:2379 did not answer within 2.0s")
    v2.transport.expect("PUT", URL, lost)
    with pytest.raises(TransportError):
        v2.refresh(1004)
    fake_watch.now = 1005
    v2.transport.expect("PUT", URL, v2_error(101))
    v2.transport.expect("GET", URL + "/%020d?quorum=true" % 5,
                        (200, {"node": entry(5, index=14)}))
    v2.transport.expect("GET", URL + "?quorum=true", listing(entry(5, index=14)))
    assert v2.refresh(1010) == 1002 + TTL
    assert [call.form["prevIndex"] for call in v2.transport.calls if call.method == "PUT"] \
        == [5, 5]
    # From the index it moved on to, a refresh counts from its own send again.
    fake_watch.now = 1006
    v2.transport.expect("PUT", URL, (200, {"node": entry(5, index=15)}))
    v2.transport.expect("GET", URL, listing(entry(5, index=15)))
    assert v2.refresh(1010) == 1006 + TTL
    assert v2.transport.calls[-2].form["prevIndex"] == 14


def test_v2_compare_failed_on_the_same_index_proves_nothing(v2):
    held_v2(v2, index=5)
    v2.transport.expect("PUT", URL, v2_error(101))
    v2.transport.expect("GET", URL + "/", (200, {"node": entry(5, index=5)}))
    with pytest.raises(TransportError, match="refused a refresh whose compare holds"):
        v2.refresh(1008)


def test_v2_compare_failed_on_another_value_is_lost(v2):
    held_v2(v2, index=5)
    v2.transport.expect("PUT", URL, v2_error(101))
    v2.transport.expect("GET", URL + "/", (200, {"node": entry(5, OTHER, index=9)}))
    with pytest.raises(LockLost, match="no longer holds our value"):
        v2.refresh(1008)


@pytest.mark.parametrize("answer, error, words", [
    (v2_error(100), LockLost, "is gone (expired or deleted)"),
    (v2_error(107), LockLost, "refused"),  # a 4xx about the lock itself
    (v2_error(300), EtcdError, "etcd says 300"),  # a 5xx may pass: tried again
    ((404, b"404 page not found"), TransportError, "does not serve the v2 API"),
])
def test_v2_refresh_errors(v2, answer, error, words):
    held_v2(v2)
    v2.transport.expect("PUT", URL, answer)
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        v2.refresh(1008)


def test_v2_refreshed_but_no_longer_first_is_lost(v2):
    held_v2(v2)
    v2.transport.expect("PUT", URL, (200, {"node": entry(5, index=8)}))
    v2.transport.expect("GET", URL, listing(entry(2, OTHER), entry(5, index=8)))
    with pytest.raises(LockLost, match="no longer first: %s holds the lock" % OTHER):
        v2.refresh(1008)


def test_v2_release_after_a_post_cut_short_finds_its_entry_in_the_answer_in_flight(v2):
    v2.posted = True  # the POST went out; a signal came before its answer
    v2.transport.in_flight = [ctdb_etcd_lock.Response(
        201, {}, b'{"node": {"key": "%s/%020d", "value": "%s"}}' % (
            DIR.encode(), 4, OURS.encode()), "http://127.0.0.1:2379")]
    v2.transport.expect("DELETE", URL + "/%020d?" % 4, (200, {"node": entry(4)}))
    # Another send of the POST may have queued one more (simulation seed 1167).
    v2.transport.expect("GET", URL + "?quorum=true", listing(entry(3, OTHER), entry(7)))
    v2.transport.expect("DELETE", URL + "/%020d?" % 7, (200, {"node": entry(7)}))
    v2.release(1008)
    assert v2.transport.calls[0].behind and v2.entry is None


# ---------------------------------------------------------------------------
# v3

LEASE = "4328981870989014278"
HEADER = {"cluster_id": "2856622976426568043", "member_id": "9834178318453423123",
          "revision": "20"}


def b64(text):
    return base64.b64encode(text.encode()).decode()


def kv(value=OURS, lease=LEASE, revision="20"):
    return {"key": b64(DIR), "value": b64(value), "create_revision": revision, "lease": lease}


def granted(ttl="9", lease=LEASE):
    return 200, {"header": HEADER, "ID": lease, "TTL": ttl}


PUT = (200, {"header": HEADER, "succeeded": True})
REVOKED = (200, {"header": HEADER})


@pytest.fixture
def v3(scripted, fake_log):
    return ctdb_etcd_lock.V3Lock(scripted(), fast_config(api="v3"), OURS, fake_log)


def held_v3(lock):
    lock.transport.expect("POST", "/v3/lease/grant", granted())
    lock.transport.expect("POST", "/v3/kv/txn", PUT)
    return lock.acquire(lock.transport.clock() + 8)


@pytest.mark.parametrize("ttl, valid", [("9", 1000 + 9), ("5", 1000 + 5), ("60", 1000 + 9)])
def test_v3_acquire_counts_from_the_grant_and_the_shorter_ttl(v3, fake_watch, ttl, valid):
    v3.transport.expect("POST", "/v3/lease/grant", slow(1, granted(ttl), fake_watch))
    v3.transport.expect("POST", "/v3/kv/txn", slow(1, PUT, fake_watch))
    assert v3.acquire(1008) == valid
    txn = v3.transport.calls[1].body
    assert txn["compare"] == [{"target": "CREATE", "key": b64(DIR), "create_revision": "0"}]
    assert txn["success"][0]["request_put"] == {"key": b64(DIR), "value": b64(OURS),
                                                "lease": LEASE}
    assert (v3.lease, v3.revision) == (int(LEASE), 20)


def test_v3_contended_revokes_its_lease_before_it_says_so(v3):
    v3.transport.expect("POST", "/v3/lease/grant", granted())
    v3.transport.expect("POST", "/v3/kv/txn", (200, {"header": HEADER, "responses": [
        {"response_range": {"kvs": [kv(OTHER, lease="77", revision="3")]}}]}))
    v3.transport.expect("POST", "/v3/lease/timetolive",
                        (200, {"header": HEADER, "TTL": "3", "grantedTTL": "9"}))
    v3.transport.expect("POST", "/v3/lease/revoke", REVOKED)
    with pytest.raises(LockContended) as contended:
        v3.acquire(1008)
    occupant = contended.value.occupant
    assert (occupant.value, occupant.left, occupant.granted, occupant.ident,
            occupant.rounding) == (OTHER, 3, 9, (3, 77), 1)
    assert v3.transport.calls[-1].body == {"ID": LEASE} and v3.lease is None
    v3.release(1008)  # nothing left: no request


def test_v3_own_put_with_its_answer_lost_is_adopted_only_on_this_lease(v3):
    v3.transport.expect("POST", "/v3/lease/grant", granted())
    v3.transport.expect("POST", "/v3/kv/txn", (200, {"header": HEADER, "responses": [
        {"response_range": {"kvs": [kv(revision="17")]}}]}))
    assert v3.acquire(1008) == 1000 + TTL and v3.revision == 17


def test_v3_refresh_counts_from_the_keepalive_and_proves_the_key(v3, fake_watch):
    held_v3(v3)
    fake_watch.now = 1002
    v3.transport.expect("POST", "/v3/lease/keepalive",
                        slow(1, (200, {"result": {"header": HEADER, "TTL": "9"}}), fake_watch))
    v3.transport.expect("POST", "/v3/kv/range", (200, {"header": HEADER, "kvs": [kv()]}))
    assert v3.refresh(1008) == 1002 + TTL


@pytest.mark.parametrize("keepalive, found, words, keeps_revision", [
    ({"result": {"header": HEADER}}, None, "expired or was revoked", True),
    ({"result": {"header": HEADER, "TTL": "9"}}, [], "is gone (deleted)", False),
    ({"result": {"header": HEADER, "TTL": "9"}}, [kv(OTHER)], "was replaced", False),
    ({"result": {"header": HEADER, "TTL": "9"}}, [kv(revision="21")], "was replaced", False),
])
def test_v3_refresh_lost(v3, keepalive, found, words, keeps_revision):
    held_v3(v3)
    v3.transport.expect("POST", "/v3/lease/keepalive", (200, keepalive))
    if found is not None:
        v3.transport.expect("POST", "/v3/kv/range", (200, {"header": HEADER, "kvs": found}))
    with pytest.raises(LockLost, match=words.replace("(", r"\(").replace(")", r"\)")):
        v3.refresh(1008)
    # A key not ours any more is left alone: release() only revokes our lease.
    if keeps_revision:
        v3.transport.expect("POST", "/v3/kv/txn", PUT)
    v3.transport.expect("POST", "/v3/lease/revoke", REVOKED)
    v3.release(1008)


OLD_TOKEN = (400, {"code": 3, "message": "etcdserver: revision of auth store is old"})


def token(name):
    return (200, {"header": HEADER, "token": name})


@pytest.fixture
def v3_user(scripted, fake_log):
    """A v3 lock with credentials, holding on token "t1"."""
    lock = ctdb_etcd_lock.V3Lock(scripted(), fast_config(api="v3", username="ctdb",
                                                         password="pw"), OURS, fake_log)
    lock.transport.expect("POST", "/v3/auth/authenticate", token("t1"))
    held_v3(lock)
    return lock


def test_v3_token_older_than_a_change_to_users_gets_new_ones(v3_user):
    keepalive = (200, {"result": {"header": HEADER, "TTL": "9"}})
    for answer in (OLD_TOKEN, token("t2"), OLD_TOKEN, token("t3"), keepalive):
        v3_user.transport.expect("POST", "/v3/", answer)
    v3_user.transport.expect("POST", "/v3/kv/range", (200, {"header": HEADER, "kvs": [kv()]}))
    assert v3_user.refresh(1008) == 1000 + TTL
    sent = [(c.path, (c.headers or {}).get("Authorization")) for c in v3_user.transport.calls]
    assert sent[-6:] == [("/v3/lease/keepalive", "t1"), ("/v3/auth/authenticate", None),
                         ("/v3/lease/keepalive", "t2"), ("/v3/auth/authenticate", None),
                         ("/v3/lease/keepalive", "t3"), ("/v3/kv/range", "t3")]
    assert v3_user.transport.token == "t3"  # for asking members their cluster


def test_v3_token_old_again_and_again_is_no_word_about_the_lock(v3_user):
    for answer in (OLD_TOKEN, token("t2"), OLD_TOKEN, token("t3"), OLD_TOKEN, token("t4"),
                   OLD_TOKEN):
        v3_user.transport.expect("POST", "/v3/", answer)
    with pytest.raises(EtcdError) as refused:
        v3_user.refresh(1008)
    assert not ctdb_etcd_lock._final(refused.value)  # retried until the fence


def test_v3_connection_closed_on_a_token_gets_a_new_one_once(v3_user):
    closed = TransportError("127.0.0.1 closed the connection without an answer")
    keepalive = (200, {"result": {"header": HEADER, "TTL": "9"}})
    for answer in (closed, token("t2"), keepalive):
        v3_user.transport.expect("POST", "/v3/", answer)
    v3_user.transport.expect("POST", "/v3/kv/range", (200, {"header": HEADER, "kvs": [kv()]}))
    assert v3_user.refresh(1008) == 1000 + TTL
    for answer in (closed, token("t3"), closed):  # not a token matter: no more tries
        v3_user.transport.expect("POST", "/v3/", answer)
    with pytest.raises(TransportError):
        v3_user.refresh(1008)


@pytest.mark.parametrize("error", [
    {"grpc_code": 2, "http_code": 500, "message": "not a primary lessor",
     "http_status": "Internal Server Error"},  # 3.4, 3.5
    {"code": 2, "message": "not a primary lessor"},  # 3.6, 3.7
], ids=["3.5", "3.6"])
def test_v3_keepalive_while_the_leader_is_lost_may_pass(v3, error):
    # A member that lost its leadership (or an unmapped error: gRPC's
    # Unknown) answers 500: another member, or the next refresh, may do.
    held_v3(v3)
    v3.transport.expect("POST", "/v3/lease/keepalive", (500, {"error": error}))
    with pytest.raises(EtcdError) as refused:
        v3.refresh(1008)
    assert not ctdb_etcd_lock._final(refused.value)
    assert "not a primary lessor" in str(refused.value)


def test_v3_release_compares_revision_and_value_then_revokes_behind(v3):
    held_v3(v3)
    v3.transport.expect("POST", "/v3/kv/txn", PUT)
    v3.transport.expect("POST", "/v3/lease/revoke", (404, {"error": "lease not found",
                                                          "code": 5}))  # expired: no error
    v3.release(1008)
    txn, revoke = v3.transport.calls[-2:]
    assert txn.body["compare"] == [
        {"target": "CREATE", "key": b64(DIR), "create_revision": "20"},
        {"target": "VALUE", "key": b64(DIR), "value": b64(OURS)}]
    assert revoke.behind and not txn.behind
    v3.release(1008)  # again: nothing


def test_v3_gateway_of_etcd_3_3(v3):
    v3.transport.expect("POST", "/v3/lease/grant", (404, b"404 page not found"))
    v3.transport.expect("POST", "/v3beta/lease/grant", granted())
    v3.transport.expect("POST", "/v3beta/kv/txn", PUT)
    v3.acquire(1008)
    assert v3.prefix == "/v3beta"


# ---------------------------------------------------------------------------
# LockSet (api = auto): both or none

@pytest.fixture
def auto(scripted, fake_log):
    config = fast_config()
    return ctdb_etcd_lock.make_lock(config, scripted(), OURS, fake_log)


def test_auto_gives_back_the_v3_half_on_v2_contention(auto):
    transport = auto.transport
    transport.expect("POST", "/v3/lease/grant", granted())
    transport.expect("POST", "/v3/kv/txn", PUT)
    transport.expect("POST", URL, created(entry(6)))
    transport.expect("GET", URL, listing(entry(2, OTHER), entry(6)))
    transport.expect("DELETE", URL + "/%020d?" % 6, (200, {"node": entry(6)}))  # v2's own
    transport.expect("POST", "/v3/kv/txn", PUT)  # the v3 key, compare-and-delete
    transport.expect("POST", "/v3/lease/revoke", REVOKED)
    with pytest.raises(LockContended) as contended:
        auto.acquire(1008)
    assert contended.value.lock is auto.candidates[1] and auto.held == []
    assert contended.value.occupant.value == OTHER


def test_auto_without_v2_holds_v3_alone_and_watches_for_v2(auto):
    transport = auto.transport
    transport.expect("POST", "/v3/lease/grant", granted())
    transport.expect("POST", "/v3/kv/txn", PUT)
    transport.expect("POST", URL, (404, b"404 page not found"))
    assert auto.acquire(1008) == 1000 + TTL
    assert auto.api == "v3" and auto.held == [auto.candidates[0]]
    transport.v2_served = [False, True]
    assert auto.look_around(1002) is True  # asked: no v2 there
    with pytest.raises(LockLost, match="serves v2 now, but the lock was taken without v2"):
        auto.look_around(1002)


def test_auto_valid_until_the_earliest_of_both(auto, fake_watch):
    transport = auto.transport
    transport.expect("POST", "/v3/lease/grant", granted("5"))
    transport.expect("POST", "/v3/kv/txn", PUT)
    transport.expect("POST", URL, slow(2, created(entry(5)), fake_watch))
    transport.expect("GET", URL, listing(entry(5)))
    assert auto.acquire(1008) == 1000 + 5  # v3's shorter lease; v2 from 1000 + 9
    assert auto.api == "v3+v2"
    fake_watch.now = 1003
    transport.expect("POST", "/v3/lease/keepalive", (200, {"result": {"TTL": "9"}}))
    transport.expect("POST", "/v3/kv/range", (200, {"kvs": [kv()]}))
    transport.expect("PUT", URL, slow(1, (200, {"node": entry(5, index=8)}), fake_watch))
    transport.expect("GET", URL, listing(entry(5, index=8)))
    assert auto.refresh(1010) == 1003 + TTL  # v2's PUT was sent at 1003 too


def test_auto_v2_place_set_by_hand_is_required(scripted, fake_log):
    config = fast_config(version_prefix="/v2", lines={"version_prefix": 1})
    lock = ctdb_etcd_lock.make_lock(config, scripted(), OURS, fake_log)
    assert [(one.api, one.required) for one in lock.candidates] == [("v3", False),
                                                                     ("v2", True)]
    lock.transport.expect("POST", "/v3/lease/grant", granted())
    lock.transport.expect("POST", "/v3/kv/txn", PUT)
    lock.transport.expect("POST", URL, (404, b"404 page not found"))
    with pytest.raises(ApiNotServed):
        lock.acquire(1008)
    # The v3 half still goes back when the caller releases.
    lock.transport.expect("POST", "/v3/kv/txn", PUT)
    lock.transport.expect("POST", "/v3/lease/revoke", REVOKED)
    lock.release(1008)
