#!/usr/bin/python3
"""Checks the DKIM signature of one email with dkimpy (Debian's python3-dkim), an
implementation independent of the one that signed it.

Usage: dkim_verify.py NAME RECORD < message

NAME is the DNS name the public key would be published at
(`<selector>._domainkey.<domain>`) and RECORD the TXT record's text
(`v=DKIM1; k=rsa; p=...`). No DNS is asked: dkimpy's lookup is given a function that
knows this one record only, so a signature naming another selector or domain fails.

Prints one JSON object: {"ok": bool, "domain": ..., "selector": ..., "headers": [...],
"log": [...]} (the signed header names as the signature lists them; the log holds
dkimpy's reasons when it fails). Exits 0 when the signature verifies, 1 otherwise.
"""

import json
import logging
import sys

import dkim


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    name, record = sys.argv[1].strip().rstrip(".").lower(), sys.argv[2].encode()
    message = sys.stdin.buffer.read()

    def lookup(qname, timeout=5):
        asked = qname.decode() if isinstance(qname, bytes) else qname
        return record if asked.strip().rstrip(".").lower() == name else None

    lines = []

    class Keep(logging.Handler):
        def emit(self, rec):
            lines.append(rec.getMessage())

    log = logging.getLogger("dkim-verify")
    log.setLevel(logging.DEBUG)
    log.addHandler(Keep())
    d = dkim.DKIM(message, logger=log)
    try:
        ok = bool(d.verify(dnsfunc=lookup))
    except dkim.DKIMException as e:
        ok = False
        lines.append(f"{type(e).__name__}: {e}")
    sig = d.signature_fields or {}
    field = lambda k: sig.get(k, b"").decode(errors="replace")
    headers = [h.strip().lower() for h in field(b"h").split(":") if h.strip()]
    print(json.dumps({"ok": ok, "domain": field(b"d"), "selector": field(b"s"),
                      "algorithm": field(b"a"), "canonicalization": field(b"c"),
                      "headers": headers, "log": lines}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
