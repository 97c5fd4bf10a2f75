"""The v3 JSON gateway: leases, and which api settings exclude each other."""

import itertools

import pytest

from etcdmember import b64


def test_key_is_on_a_lease_of_lock_ttl(etcd, spawn, key):
    helper = spawn(etcd, api="v3", lock_ttl=3)
    assert helper.status() == "0"
    kv = etcd.v3_kv(key)
    lease = kv["lease"]
    ttl = etcd.v3("/lease/timetolive", {"ID": lease})
    assert ttl["grantedTTL"] == "3"
    helper.terminate()
    assert lease not in etcd.leases()


def test_contention_leaves_no_lease_behind(etcd, spawn, key):
    holder = spawn(etcd, api="v3")
    assert holder.status() == "0"
    leases = set(etcd.leases())
    other = spawn(etcd, api="v3", args=("-v",))
    assert other.status() == "1"
    assert set(etcd.leases()) == leases
    assert "held by host=" in other.stderr()  # -v names the holder
    holder.terminate()


def test_lease_revoked_from_under_the_holder(etcd, spawn, key):
    holder = spawn(etcd, api="v3", args=())
    assert holder.status() == "0"
    etcd.v3("/lease/revoke", {"ID": etcd.v3_kv(key)["lease"]})
    holder.wait(timeout=3)
    lines = holder.stderr_lines()
    assert len(lines) == 1 and "lock lost" in lines[0], lines
    assert etcd.v3_kv(key) is None


@pytest.mark.parametrize("how", ["deleted and put again", "written over"])
def test_key_taken_over_is_left_alone(etcd, spawn, key, how):
    # Even with our very value: a new create revision, or a plain put over
    # ours (same create revision, no lease), is not our lock any more.
    holder = spawn(etcd, api="v3", args=())
    assert holder.status() == "0"
    kv = etcd.v3_kv(key)
    if how == "deleted and put again":
        etcd.v3_delete(key)
        lease = etcd.v3("/lease/grant", {"TTL": 30})["ID"]
        etcd.v3("/kv/put", {"key": b64(key), "value": kv["value"], "lease": lease})
    else:
        etcd.v3("/kv/put", {"key": b64(key), "value": b64("someone else")})
    after = etcd.v3_kv(key)
    holder.wait(timeout=3)
    assert "lock lost" in holder.stderr()
    assert etcd.v3_kv(key) == after  # left alone on exit
    etcd.v3_delete(key)


def _pairs(etcd):
    apis = ["v2", "v3", "auto"] if etcd.serves_v2 else ["v3", "auto"]
    return [pair for pair in itertools.product(apis, repeat=2)
            if set(pair) != {"v2", "v3"}]


def test_every_pair_but_v2_v3_excludes(etcd, spawn):
    for first, second in _pairs(etcd):
        holder = spawn(etcd, api=first, args=())
        assert holder.status() == "0", (first, second)
        other = spawn(etcd, api=second, args=())
        assert other.status() == "1", (first, second)
        holder.terminate()


def test_v2_and_v3_do_not_exclude_each_other(etcd34, spawn):
    # Separate keyspaces: the README warns never to mix these two settings.
    v2 = spawn(etcd34, api="v2")
    assert v2.status() == "0"
    v3 = spawn(etcd34, api="v3")
    assert v3.status() == "0"
    v2.terminate()
    v3.terminate()


@pytest.mark.parametrize("holder_api", ["v2", "original"])
def test_auto_gives_back_v3_before_saying_contention(etcd34, spawn, spawn_original, key,
                                                     holder_api):
    holder = spawn(etcd34, api="v2") if holder_api == "v2" else spawn_original(etcd34)
    assert holder.status() == "0"
    leases = set(etcd34.leases())
    auto = spawn(etcd34, api="auto", args=())
    assert auto.status() == "1"
    # ctdbd sends SIGTERM the moment it reads '1': by then the v3 key taken
    # on the way must already be gone, lease and all.
    auto.proc.kill()
    assert etcd34.v3_kv(key) is None
    assert set(etcd34.leases()) == leases
    holder.terminate()


def test_auto_against_original_holding_v3_free(etcd34, spawn, spawn_original):
    auto = spawn(etcd34, api="auto")
    assert auto.status() == "0"
    original = spawn_original(etcd34)
    assert original.status() != "0"
    auto.terminate()


# etcd takes requests up to --max-request-bytes (1.5 MiB by default): a
# value this big on the lock's key is legal, and its answer (base64, in
# JSON) is 1.2 MB.
BIG_VALUE = "host=big pnn=1 pid=42 id=00 " + "x" * 900000


def test_a_900_kb_value_on_the_key_is_contention(etcd, spawn, key):
    etcd.v3_put(key, BIG_VALUE)
    try:
        other = spawn(etcd, api="v3", args=("-v",))
        assert other.status() == "1", other.stderr()[:2000]
        assert other.wait() == 1
        assert "held by host=big pnn=1 pid=42" in other.stderr(), other.stderr()[:2000]
        assert len(other.stderr()) < 5000
    finally:
        etcd.v3_delete(key)
