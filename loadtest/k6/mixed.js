// k6 version of loadtest/mixed.lua: 70% GET users, 20% GET products, 10% POST orders.
//   k6 run loadtest/k6/mixed.js
import http from "k6/http";
import { options as shared, target, check2xx, apiKey as key } from "./common.js";

export const options = shared;
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
  check2xx(r);
}
