#!/usr/bin/env python3
"""A tiny webhook receiver that verifies Standard Webhooks signatures (Python stdlib only,
independent of Fleet's code). Usage:

    WEBHOOK_SECRET=whsec_... python3 scripts/webhook-receiver.py [port]

Prints one line per delivery: verified or not, the webhook-id and the body.
"""
import base64, hashlib, hmac, os, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer

SECRET = os.environ.get("WEBHOOK_SECRET", "")
TOLERANCE = 300


def verify(msg_id, timestamp, signatures, body):
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > TOLERANCE:
        return False
    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(s[3:], expected) for s in signatures.split(" ") if s.startswith("v1,"))


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        ok = verify(self.headers.get("webhook-id", ""), self.headers.get("webhook-timestamp", ""),
                    self.headers.get("webhook-signature", ""), body)
        print(f"{'verified' if ok else 'REJECTED'} {self.headers.get('webhook-id')} {body.decode(errors='replace')}", flush=True)
        self.send_response(200 if ok else 401)
        self.end_headers()

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    if not SECRET:
        sys.exit("set WEBHOOK_SECRET to the endpoint's whsec_ secret")
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9999
    print(f"listening on 127.0.0.1:{port}", flush=True)
    HTTPServer(("127.0.0.1", port), Handler).serve_forever()
