// k6 version of loadtest/jwt.lua. Mint the token with loadtest/mint_jwt.py first.
// k6 run -e TARGET=... -e JWT=$(python3 loadtest/mint_jwt.py --secret bench-secret --iss bench-app) loadtest/k6/jwt.js
import http from "k6/http";
import { check } from "k6";

export const options = { vus: 50, duration: "10s" };
const target = __ENV.TARGET || "http://127.0.0.1:18091";
const token = __ENV.JWT;

export default function () {
  const r = http.get(`${target}/api/v1/secure/1`, { headers: { Authorization: `Bearer ${token}` } });
  check(r, { "status 200": (res) => res.status === 200 });
}
