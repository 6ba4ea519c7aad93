// k6 version of loadtest/jwt.lua (route "secure"). Mint the token first:
//   k6 run -e JWT=$(python3 loadtest/mint_jwt.py) loadtest/k6/jwt.js
import http from "k6/http";
import { options as shared, target, check2xx } from "./common.js";

export const options = shared;
const token = __ENV.JWT;
if (!token) {
  throw new Error("set JWT: k6 run -e JWT=$(python3 loadtest/mint_jwt.py) loadtest/k6/jwt.js");
}

export default function () {
  check2xx(http.get(`${target}/api/v1/secure/1`, { headers: { Authorization: `Bearer ${token}` } }));
}
