// k6 version of loadtest/apikey.lua: API key + rate limit + header rewrites (route "orders").
//   k6 run loadtest/k6/apikey.js                    (-e API_KEY=... for another key)
import http from "k6/http";
import { options as shared, target, check2xx, apiKey as key } from "./common.js";

export const options = shared;

export default function () {
  check2xx(http.get(`${target}/api/v1/orders/7`, { headers: { "X-API-Key": key } }));
}
