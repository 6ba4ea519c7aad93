// k6 version of loadtest/plain.lua, against loadtest/gatehouse.yaml (route "users").
//   k6 run loadtest/k6/plain.js                     (-e TARGET=http://host:port for another gateway)
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

export default function () {
  check(http.get(`${target}/api/v1/users/42`), is2xx);
}
