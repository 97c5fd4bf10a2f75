"""TLS and authentication for the tests: certificates made with the openssl
CLI, and etcd members that speak https and/or have auth enabled.

    certs = make_certs(directory)      # or session_certs(tmp_path_factory)
    member = start_secure_etcd("etcd35", workdir, tls=certs.server, ca=certs.ca)
    enable_v3_auth(member, "root", PASSWORD)
    enable_v2_auth(member, "root", PASSWORD)   # etcd 3.4 with v2 only

The member's own client (the v2/v3 helpers inherited from etcdmember.Etcd)
verifies the server against the test CA, presents the client certificate when
the member asks for one, and authenticates (v2: HTTP Basic; v3: a token from
/v3/auth/authenticate, fetched again when etcd says it expired).
"""

import base64
import json
import os
import re
import ssl
import subprocess
import urllib.error
import urllib.request

import fetch_etcd
from etcdmember import FLAVOURS, Etcd

# ---------------------------------------------------------------------------
# Certificates

EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-noenc"]

CA_EXTENSIONS = ["-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                 "-addext", "subjectKeyIdentifier=hash"]

# clientAuth too on server certificates: etcd's own v3 gateway dials the
# member with the server certificate when --client-cert-auth is on.
LEAF_EXTENSIONS = """\
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth,clientAuth
authorityKeyIdentifier = keyid
subjectKeyIdentifier = hash
"""

# What `openssl ca` needs to sign with validity dates of our choosing (the
# OpenSSL 3.0 `x509 -req` has only -days, counted from now).
CA_CONFIG = """\
[ca]
default_ca = test_ca
[test_ca]
database = {dir}/index.txt
serial = {dir}/serial
new_certs_dir = {dir}/new
default_md = sha256
policy = any_name
unique_subject = no
[any_name]
commonName = supplied
"""


class Pair:
    """A certificate and its key, in separate PEM files and in one."""

    def __init__(self, cert, key, combined):
        self.cert, self.key, self.combined = cert, key, combined

    def __repr__(self):
        return "Pair(%r)" % self.cert


class Certs:
    """Everything made by make_certs (paths; every key unencrypted).

    ca, ca_key       the test CA (ca_cert for the helper)
    other_ca         an unrelated CA, which signed nothing we serve
    server           IP:127.0.0.1 + DNS:localhost, signed by ca
    mismatch         signed by ca, names neither 127.0.0.1 nor localhost
    expired          like server, valid only 2020-01-01..02
    client           a client certificate (CN=root) signed by ca
    jwt_key, jwt_pub an EC P-256 key pair for etcd's JWT tokens (jwt_arguments)
    """


def _openssl(*args, cwd):
    result = subprocess.run(("openssl",) + args, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, timeout=30)
    if result.returncode:
        raise RuntimeError("openssl %s failed: %s" % (" ".join(args),
                                                      result.stdout.decode(errors="replace")))
    return result.stdout.decode(errors="replace")


def _new_ca(directory, name, subject):
    cert, key = os.path.join(directory, name + ".pem"), os.path.join(directory, name + ".key")
    _openssl("req", "-x509", *EC, "-keyout", key, "-out", cert, "-days", "3650",
             "-subj", subject, *CA_EXTENSIONS, cwd=directory)
    return cert, key


def _new_leaf(directory, name, subject, san, ca, ca_key, validity=None):
    """A key and a certificate signed by ca; validity (start, end) as
    YYYYMMDDHHMMSSZ signs with `openssl ca`, else 10 years from now."""
    key = os.path.join(directory, name + ".key")
    csr = os.path.join(directory, name + ".csr")
    cert = os.path.join(directory, name + ".crt")
    ext = os.path.join(directory, name + ".ext")
    with open(ext, "w") as f:
        f.write(LEAF_EXTENSIONS + ("subjectAltName = %s\n" % san if san else ""))
    _openssl("req", *EC, "-keyout", key, "-out", csr, "-subj", subject, cwd=directory)
    if validity is None:
        _openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
                 "-days", "3650", "-extfile", ext, "-out", cert, cwd=directory)
    else:
        db = os.path.join(directory, name + "-ca-db")
        os.makedirs(os.path.join(db, "new"))
        open(os.path.join(db, "index.txt"), "w").close()
        with open(os.path.join(db, "serial"), "w") as f:
            f.write("1000\n")
        config = os.path.join(db, "ca.cnf")
        with open(config, "w") as f:
            f.write(CA_CONFIG.format(dir=db))
        _openssl("ca", "-batch", "-config", config, "-cert", ca, "-keyfile", ca_key,
                 "-in", csr, "-out", cert, "-startdate", validity[0], "-enddate", validity[1],
                 "-extfile", ext, "-notext", cwd=directory)
    combined = os.path.join(directory, name + ".pem")
    with open(combined, "w") as out:
        for part in (cert, key):
            with open(part) as f:
                out.write(f.read())
    for path in (key, combined):
        os.chmod(path, 0o600)
    return Pair(cert, key, combined)


def make_certs(directory):
    directory = str(directory)
    certs = Certs()
    certs.dir = directory
    certs.ca, certs.ca_key = _new_ca(directory, "ca", "/CN=ctdb_etcd_lock test CA")
    certs.other_ca, _ = _new_ca(directory, "other-ca", "/CN=some other CA")
    leaf = lambda name, subject, san, validity=None: _new_leaf(  # noqa: E731
        directory, name, subject, san, certs.ca, certs.ca_key, validity)
    certs.server = leaf("server", "/CN=etcd test server", "IP:127.0.0.1,DNS:localhost")
    certs.mismatch = leaf("mismatch", "/CN=etcd.invalid", "DNS:etcd.invalid,IP:192.0.2.7")
    certs.expired = leaf("expired", "/CN=etcd test server", "IP:127.0.0.1,DNS:localhost",
                         ("20200101000000Z", "20200102000000Z"))
    certs.client = leaf("client", "/CN=root", None)
    certs.jwt_key, certs.jwt_pub = (os.path.join(directory, name) for name in ("jwt.key",
                                                                               "jwt.pub"))
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", certs.jwt_key, cwd=directory)
    _openssl("pkey", "-in", certs.jwt_key, "-pubout", "-out", certs.jwt_pub, cwd=directory)
    return certs


def jwt_arguments(certs):
    """etcd's arguments for JWT tokens: each carries the auth revision it was
    issued at, so a change to users or roles makes it old at once (simple
    tokens take the current one)."""
    return ["--auth-token", "jwt,pub-key=%s,priv-key=%s,sign-method=ES256" % (
        certs.jwt_pub, certs.jwt_key)]


_made = {}


def session_certs(tmp_path_factory):
    """The session's certificates, made on first call. Each test module's
    session-scoped `certs` fixture returns this, so they are made once."""
    if "certs" not in _made:
        _made["certs"] = make_certs(tmp_path_factory.mktemp("certs"))
    return _made["certs"]


def client_context(ca=None, client=None, verify=True):
    """An ssl context as a careful client makes it: the given CA (else the
    system's), host names checked; verify=False checks nothing."""
    context = ssl.create_default_context(cafile=ca)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    return context


# ---------------------------------------------------------------------------
# etcd members with TLS and authentication

class SecureEtcd(Etcd):
    """An etcd member like etcdmember.Etcd, optionally serving https.

    tls          a Pair: serve https with it (else plain http)
    client_ca    require client certificates signed by this CA
    ca           what our own client trusts (None: not verified at all, for
                 members serving a certificate that is meant to fail)
    client       the Pair our own client presents
    extra        more etcd arguments (e.g. --auth-token-ttl 1)
    """

    def __init__(self, binary, v2, workdir, tls=None, client_ca=None, ca=None, client=None,
                 extra=()):
        super().__init__(binary, v2, workdir)
        self.tls, self.client_ca, self.extra = tls, client_ca, list(extra)
        self.context = client_context(ca, client, verify=ca is not None) if tls else None
        self.v2_auth = None  # (user, password) once v2 auth is on
        self.v3_auth = None  # (user, password) once v3 auth is on
        self.auth_token = None

    @property
    def scheme(self):
        return "https" if self.tls else "http"

    @property
    def url(self):
        return "%s://127.0.0.1:%d" % (self.scheme, self.port)

    def more_arguments(self):
        argv = []
        if self.tls:
            argv += ["--cert-file", self.tls.cert, "--key-file", self.tls.key]
        if self.client_ca:
            argv += ["--client-cert-auth", "--trusted-ca-file", self.client_ca]
        return argv + list(self.extra)

    # -- our own client -----------------------------------------------------

    def raw(self, method, path, body=None, headers=None, timeout=5, context=None):
        """One request with exactly these headers: (status, body bytes)."""
        request = urllib.request.Request(self.url + path, data=body, method=method,
                                         headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=timeout,
                                        context=context or self.context) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def authenticate(self):
        user, password = self.v3_auth
        status, data = self.raw("POST", "/v3/auth/authenticate",
                                json.dumps({"name": user, "password": password}).encode(),
                                {"Content-Type": "application/json"})
        assert status == 200, ("authenticate", status, data)
        self.auth_token = json.loads(data)["token"]
        return self.auth_token

    def http(self, method, path, body=None, headers=None, timeout=5):
        """As Etcd.http, authenticated as the member needs it."""
        headers = dict(headers or {})
        if self.v2_auth and path.startswith("/v2/"):
            headers["Authorization"] = basic(*self.v2_auth)
        v3 = self.v3_auth and path.startswith("/v3/") and path != "/v3/auth/authenticate"
        for attempt in (1, 2, 3, 4):
            if v3:
                headers["Authorization"] = self.auth_token or self.authenticate()
            status, data = self.raw(method, path, body, headers, timeout)
            if not (v3 and attempt < 4 and (status == 401 or b"auth store is old" in data)):
                return status, data
            # Expired (--auth-token-ttl), or a JWT token older than a change
            # to users or roles: once more with a new one.
            self.auth_token = None


def basic(user, password):
    return "Basic " + base64.b64encode(("%s:%s" % (user, password)).encode()).decode()


def start_secure_etcd(flavour, workdir, **options):
    which, v2 = FLAVOURS[flavour]
    return SecureEtcd(fetch_etcd.etcd_binary(which), v2, str(workdir), **options).start()


def enable_v3_auth(member, user, password):
    """v3 auth on, with user holding the root role (all of the keyspace)."""
    member.v3("/auth/role/add", {"name": "root"})
    member.v3("/auth/user/add", {"name": user, "password": password})
    member.v3("/auth/user/grant", {"user": user, "role": "root"})
    member.v3("/auth/enable", {})
    member.v3_auth = (user, password)
    member.auth_token = None


def add_lock_user(member, user, password, prefix="/_locks/_ctdb/"):
    """A user (before or after auth is on) whose role may read and write the
    keys under prefix, and nothing else: what an admin gives CTDB's nodes."""
    def b64(text):
        return base64.b64encode(text.encode()).decode()
    member.v3("/auth/role/add", {"name": user})
    member.v3("/auth/role/grant", {"name": user, "perm": {
        "permType": "READWRITE", "key": b64(prefix),
        "range_end": b64(prefix[:-1] + chr(ord(prefix[-1]) + 1))}})
    member.v3("/auth/user/add", {"name": user, "password": password})
    member.v3("/auth/user/grant", {"user": user, "role": user})


def enable_v2_auth(member, user, password):
    """v2 auth on (etcd 3.4 with --enable-v2) for root, and the guest role, which
    keeps full access after that, left with none."""
    def put(path, payload):
        status, data = member.http("PUT", path, json.dumps(payload).encode(),
                                   {"Content-Type": "application/json"})
        assert status in (200, 201), (path, status, data)

    put("/v2/auth/users/" + user, {"user": user, "password": password})
    put("/v2/auth/enable", {})
    member.v2_auth = (user, password)
    put("/v2/auth/roles/guest", {"role": "guest",
                                 "revoke": {"kv": {"read": ["/*"], "write": ["/*"]}}})


# ---------------------------------------------------------------------------
# What a failed helper said

def error_reason(helper, url):
    """Assert the helper failed as it must (status 3, exactly one stderr line,
    ctdb_etcd_lock: first, naming url, no traceback) and return that line
    with url taken out, for keyword checks that url itself cannot satisfy."""
    assert helper.status() == "3", helper.stderr()
    lines = helper.stderr_lines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("ctdb_etcd_lock:"), lines
    assert url in lines[0], (url, lines)
    assert "Traceback" not in helper.stderr()
    return lines[0].replace(url, "<endpoint>")


def mentions(text, *patterns):
    """True if any of the regular expressions occurs in text, ignoring case."""
    return any(re.search(p, text, re.IGNORECASE) for p in patterns)
