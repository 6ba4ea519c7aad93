// k6 version of loadtest/cached.lua: a hot set of 20 product pages (route "products").
//   k6 run loadtest/k6/cached.js
import http from "k6/http";
import { options as shared, target, check2xx } from "./common.js";

export const options = shared;
let counter = 0;

export default function () {
  counter += 1;
  check2xx(http.get(`${target}/api/v1/products/${counter % 20}`));
}
