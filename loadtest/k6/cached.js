// k6 version of loadtest/cached.lua: a hot set of 20 product pages (route "products").
//   k6 run loadtest/k6/cached.js
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
let counter = 0;

export default function () {
  counter += 1;
  check(http.get(`${target}/api/v1/products/${counter % 20}`), is2xx);
}
