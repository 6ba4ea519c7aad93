-- Plain proxied GET over HTTPS with "Connection: close": the proxy closes the connection after
-- each answer and wrk opens a new one, so every request pays a TCP and TLS handshake. Run with
-- loadtest/no_resume.c preloaded (compare.sh's tls13-new scenario does), or wrk resumes the
-- previous TLS session instead of making a full handshake.
-- Exits 1 with a FAIL line when any answer is not 2xx (loadtest/check.lua).
package.path = (debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "?.lua;" .. package.path
require("check").install()

wrk.method = "GET"
wrk.path = "/api/v1/users/42"
wrk.headers["Connection"] = "close"
