// k6 version of loadtest/plain.lua.  k6 run -e TARGET=http://127.0.0.1:18091 loadtest/k6/plain.js
import http from "k6/http";
import { check } from "k6";

export const options = { vus: 50, duration: "10s" };
const target = __ENV.TARGET || "http://127.0.0.1:18091";

export default function () {
  const r = http.get(`${target}/api/v1/users/42`);
  check(r, { "status 200": (res) => res.status === 200 });
}
