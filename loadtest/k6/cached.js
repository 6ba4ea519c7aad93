// k6 version of loadtest/cached.lua: a hot set of 20 product pages.
import http from "k6/http";
import { check } from "k6";

export const options = { vus: 50, duration: "10s" };
const target = __ENV.TARGET || "http://127.0.0.1:18091";
let counter = 0;

export default function () {
  counter += 1;
  const r = http.get(`${target}/api/v1/products/${counter % 20}`);
  check(r, { "status 200": (res) => res.status === 200 });
}
