#!/usr/bin/env python3
"""Mint an HS256 JWT for load tests (standard library only).

    python3 loadtest/mint_jwt.py --secret bench-secret --iss bench-app --ttl 3600
"""
import argparse, base64, hashlib, hmac, json, time


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--secret", required=True)
    p.add_argument("--iss", required=True, help="matched against jwt_secrets[].key (key_claim_name: iss)")
    p.add_argument("--ttl", type=int, default=3600)
    p.add_argument("--roles", default="reader")
    a = p.parse_args()
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    claims = {"iss": a.iss, "sub": "bench", "exp": int(time.time()) + a.ttl, "roles": a.roles.split(",")}
    payload = b64(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode()
    sig = b64(hmac.new(a.secret.encode(), signing_input, hashlib.sha256).digest())
    print(f"{header}.{payload}.{sig}")


if __name__ == "__main__":
    main()
