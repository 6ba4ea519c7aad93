#!/usr/bin/env python3
"""Mint an HS256 JWT for the load tests (standard library only).

    export JWT=$(python3 loadtest/mint_jwt.py)          # for loadtest/gatehouse.yaml
    python3 loadtest/mint_jwt.py --secret "$SECRET" --iss my-app --ttl 3600

The defaults match the consumer "bench" of loadtest/gatehouse.yaml. gatehouse refuses HS256
secrets shorter than 32 bytes (RFC 7518 3.2), so this script does too.
"""
import argparse, base64, hashlib, hmac, json, sys, time

DEFAULT_SECRET = "bench-secret-0123456789abcdef0123456789"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--secret", default=DEFAULT_SECRET, help="HS256 secret, at least 32 bytes")
    p.add_argument("--iss", default="bench-app", help="matched against jwt_secrets[].key (key_claim_name: iss)")
    p.add_argument("--ttl", type=int, default=3600)
    p.add_argument("--roles", default="reader")
    a = p.parse_args()
    if len(a.secret.encode()) < 32:
        sys.exit(f"--secret has {len(a.secret.encode())} bytes: HS256 secrets must be at least 32 bytes")
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    claims = {"iss": a.iss, "sub": "bench", "exp": int(time.time()) + a.ttl, "roles": a.roles.split(",")}
    payload = b64(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode()
    sig = b64(hmac.new(a.secret.encode(), signing_input, hashlib.sha256).digest())
    print(f"{header}.{payload}.{sig}")


if __name__ == "__main__":
    main()
