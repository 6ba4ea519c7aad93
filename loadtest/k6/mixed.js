// k6 version of loadtest/mixed.lua: 70% GET users, 20% GET products, 10% POST orders.
import http from "k6/http";
import { check } from "k6";

export const options = { vus: 50, duration: "10s" };
const target = __ENV.TARGET || "http://127.0.0.1:18091";
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
      headers: { "Content-Type": "application/json" },
    });
  }
  check(r, { "no 5xx": (res) => res.status < 500 });
}
