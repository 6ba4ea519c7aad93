// k6 version of loadtest/plain.lua, against loadtest/gatehouse.yaml (route "users").
//   k6 run loadtest/k6/plain.js                     (-e TARGET=http://host:port for another gateway)
import http from "k6/http";
import { options as shared, target, check2xx } from "./common.js";

export const options = shared;

export default function () {
  check2xx(http.get(`${target}/api/v1/users/42`));
}
