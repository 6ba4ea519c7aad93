// k6 version of loadtest/apikey.lua.  k6 run -e TARGET=... -e API_KEY=... loadtest/k6/apikey.js
import http from "k6/http";
import { check } from "k6";

export const options = { vus: 50, duration: "10s" };
const target = __ENV.TARGET || "http://127.0.0.1:18091";
const key = __ENV.API_KEY || "bench-key-0001";

export default function () {
  const r = http.get(`${target}/api/v1/orders/7`, { headers: { "X-API-Key": key } });
  check(r, { "not 401/403": (res) => res.status !== 401 && res.status !== 403 });
}
