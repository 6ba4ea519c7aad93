// k6 version of loadtest/jwt.lua (route "secure"). Mint the token first:
//   k6 run -e JWT=$(python3 loadtest/mint_jwt.py) loadtest/k6/jwt.js
import http from "k6/http";
import { check } from "k6";

export const options = {
  vus: 50,
  duration: "10s",
  // The run fails (k6 exits non-zero) unless every request got a 2xx answer.
  thresholds: { checks: ["rate==1.0"], http_req_failed: ["rate==0"] },
};
const target = __ENV.TARGET || "http://127.0.0.1:18091";
const is2xx = { "status 2xx": (r) => r.status >= 200 && r.status < 300 };
const token = __ENV.JWT;
if (!token) {
  throw new Error("set JWT: k6 run -e JWT=$(python3 loadtest/mint_jwt.py) loadtest/k6/jwt.js");
}

export default function () {
  check(http.get(`${target}/api/v1/secure/1`, { headers: { Authorization: `Bearer ${token}` } }), is2xx);
}
