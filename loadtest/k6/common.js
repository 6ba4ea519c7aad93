// Shared by the k6 scenarios: the run's shape, the gateway under test and the one check.
//   -e TARGET=http://host:port for another gateway, -e API_KEY=... for another key.
import { check } from "k6";

export const options = {
  vus: 50,
  duration: "10s",
  // The run fails (k6 exits non-zero) unless every request got a 2xx answer.
  thresholds: { checks: ["rate==1.0"], http_req_failed: ["rate==0"] },
};
export const target = __ENV.TARGET || "http://127.0.0.1:18091";
export const apiKey = __ENV.API_KEY || "bench-key-0001";

// Counts `r` as a failed check unless its status is 2xx.
export function check2xx(r) {
  return check(r, { "status 2xx": (res) => res.status >= 200 && res.status < 300 });
}
