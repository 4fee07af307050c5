"""A local Web Push service for the notification tests (RFC 8030 + RFC 8291 + RFC 8292).

It hands out subscriptions as a browser would (POST /subscribe: a P-256 key pair and an
auth secret of its own; {"gone": true} makes one whose pushes answer 410), and on
POST /push/<id> checks the VAPID token (ES256 over the JWT, audience = this origin,
expiry within 24 h) with `cryptography`, then decrypts the aes128gcm body with the
subscription's private key using `http_ece` (an implementation independent of Fleet's).
GET /messages/<id> lists what was decrypted. Usage: push-service.py <port>
"""
import base64
import json
import os
import sys
import time
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import http_ece
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 10080
ORIGIN = f"http://127.0.0.1:{PORT}"
SUBS = {}
MESSAGES = {}
LOCK = threading.Lock()


def b64d(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def b64e(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def check_vapid(header):
    if not header or not header.startswith("vapid "):
        return "no vapid authorization"
    parts = dict(p.strip().split("=", 1) for p in header[6:].split(","))
    token, key = parts.get("t", ""), parts.get("k", "")
    pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b64d(key))
    head, claims, sig = token.split(".")
    raw = b64d(sig)
    der = utils.encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    pub.verify(der, f"{head}.{claims}".encode(), ec.ECDSA(hashes.SHA256()))
    c = json.loads(b64d(claims))
    if c.get("aud") != ORIGIN:
        return f"aud {c.get('aud')!r} is not {ORIGIN}"
    if not (time.time() < c.get("exp", 0) <= time.time() + 24 * 3600):
        return "exp out of range"
    if not str(c.get("sub", "")).startswith(("mailto:", "https:")):
        return "sub"
    return None


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, code, body=None, headers=()):
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            return self.reply(200, {"ok": True})
        if self.path.startswith("/messages/"):
            with LOCK:
                return self.reply(200, MESSAGES.get(self.path.rsplit("/", 1)[1], []))
        self.reply(404)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
        if self.path == "/subscribe":
            opts = json.loads(body or b"{}")
            sid = b64e(os.urandom(12))
            priv = ec.generate_private_key(ec.SECP256R1())
            pub = priv.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
            auth = os.urandom(16)
            with LOCK:
                SUBS[sid] = {"priv": priv, "auth": auth, "gone": bool(opts.get("gone"))}
            return self.reply(201, {"endpoint": f"{ORIGIN}/push/{sid}", "keys": {"p256dh": b64e(pub), "auth": b64e(auth)}})
        if self.path.startswith("/push/"):
            sid = self.path.rsplit("/", 1)[1]
            sub = SUBS.get(sid)
            if sub is None:
                return self.reply(404)
            if sub["gone"]:
                return self.reply(410)
            err = check_vapid(self.headers.get("Authorization"))
            if err:
                return self.reply(401, {"error": err})
            if self.headers.get("Content-Encoding") != "aes128gcm" or not self.headers.get("TTL"):
                return self.reply(400, {"error": "Content-Encoding aes128gcm and TTL are required"})
            try:
                plain = http_ece.decrypt(body, private_key=sub["priv"], auth_secret=sub["auth"], version="aes128gcm")
            except Exception as e:  # noqa: BLE001 - the test reads the reason
                return self.reply(400, {"error": f"decrypt: {e}"})
            with LOCK:
                MESSAGES.setdefault(sid, []).append(
                    {"payload": plain.decode(), "ttl": self.headers.get("TTL"), "urgency": self.headers.get("Urgency")}
                )
            return self.reply(201, None, [("Location", f"{ORIGIN}/messages/{sid}")])
        self.reply(404)


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
