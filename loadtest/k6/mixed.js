// k6 version of loadtest/mixed.lua: 70% GET users, 20% GET products, 10% POST orders.
//   k6 run loadtest/k6/mixed.js
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
const key = __ENV.API_KEY || "bench-key-0001";
let counter = 0;

export default function () {
  counter += 1;
  const n = counter % 10;
  let r;
  if (n < 7) {
    r = http.get(`${target}/api/v1/users/${counter % 100}`);
  } else if (n < 9) {
    r = http.get(`${target}/api/v1/products/${counter % 50}`);
  } else {
    r = http.post(`${target}/api/v1/orders`, JSON.stringify({ sku: "KB-001", qty: 1 }), {
      headers: { "Content-Type": "application/json", "X-API-Key": key },
    });
  }
  check(r, is2xx);
}
