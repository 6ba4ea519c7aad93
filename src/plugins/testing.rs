//! Hook-level test helpers: a real Pingora [`Session`] over a mock stream that holds one
//! request head (as pingap's plugin tests do), and a request context on a config compiled
//! from YAML. A hook that writes to the client would fail the mock: request hooks answer
//! with a [`super::Reply`], which the gateway writes.

use crate::ctx::RequestCtx;
use crate::ctx::Runtime;
use pingora::proxy::Session;
use std::sync::Arc;

/// A session whose request head is `head` (lines without the final blank line, `\n` or
/// `\r\n`), already read.
pub(crate) async fn session(head: &str) -> Session {
    let raw = format!(
        "{}\r\n\r\n",
        head.trim_end().replace("\r\n", "\n").replace('\n', "\r\n")
    );
    let mock = tokio_test::io::Builder::new().read(raw.as_bytes()).build();
    let mut s = Session::new_h1(Box::new(mock));
    assert!(
        s.downstream_session
            .read_request()
            .await
            .expect("request head"),
        "a request head"
    );
    s
}

/// The runtime of a config whose one route `r` (paths `/`) has the plugin list `plugins`
/// (YAML lines indented for the route's `plugins:` key).
pub(crate) fn runtime(plugins: &str) -> Arc<Runtime> {
    let y = format!(
        "upstreams:\n  - name: u\n    targets: [{{ addr: \"127.0.0.1:9\" }}]\nroutes:\n  - name: r\n    paths: [\"/\"]\n    upstream: u\n    plugins:\n{plugins}\n"
    );
    let rt = crate::config::load_str(
        &y,
        std::path::Path::new("."),
        &Default::default(),
        &Default::default(),
        1,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    Arc::new(rt)
}

/// A context for a request routed to `rt`'s first route.
pub(crate) fn ctx(rt: &Arc<Runtime>) -> RequestCtx {
    let mut ctx = RequestCtx::new(rt.clone());
    ctx.route = Some(0);
    ctx.request_id = "rid-1".into();
    ctx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::{phase, Answer, Hooks, Outcome, Plugin};
    use pingora::http::{RequestHeader, ResponseHeader};

    fn plugin(rt: &Runtime, i: usize) -> &Plugin {
        &rt.routes[0].plugins.plugins[i]
    }

    #[tokio::test]
    async fn correlation_id_reads_sends_and_echoes_its_header() {
        let rt = runtime(
            "      - name: correlation-id\n        config: { header_name: X-Correlation-ID }",
        );
        let Plugin::CorrelationId(p) = plugin(&rt, 0) else {
            panic!("correlation-id");
        };
        let mut s = session("GET /a HTTP/1.1\nHost: x\nX-Correlation-ID: abc-123").await;
        let mut ctx = ctx(&rt);
        assert!(matches!(
            p.request(&mut s, &mut ctx).await,
            Outcome::Continue
        ));
        assert_eq!(ctx.request_id, "abc-123", "the incoming id is kept");
        let mut up = RequestHeader::build("GET", b"/a", None).unwrap();
        p.upstream_request(&mut up, &ctx).unwrap();
        assert_eq!(up.headers["x-correlation-id"], "abc-123");
        let mut resp = ResponseHeader::build(200, None).unwrap();
        p.response(
            &mut Answer {
                head: &mut resp,
                gateway_made: false,
            },
            &mut ctx,
        )
        .unwrap();
        assert_eq!(resp.headers["x-correlation-id"], "abc-123");
        // An invalid incoming id is not taken.
        let mut s = session("GET /a HTTP/1.1\nHost: x\nX-Correlation-ID: a b").await;
        let mut ctx = super::ctx(&rt);
        p.request(&mut s, &mut ctx).await;
        assert_eq!(ctx.request_id, "rid-1");
    }

    #[tokio::test]
    async fn size_limit_refuses_a_declared_length_and_lowers_the_cap() {
        let rt = runtime(
            "      - name: request-size-limiting\n        config: { allowed_payload_size: 1kb }",
        );
        let Plugin::RequestSizeLimiting(p) = plugin(&rt, 0) else {
            panic!("request-size-limiting");
        };
        let mut ctx = ctx(&rt);
        let mut s = session("POST /a HTTP/1.1\nHost: x\nContent-Length: 1024").await;
        assert!(matches!(
            p.request(&mut s, &mut ctx).await,
            Outcome::Continue
        ));
        assert_eq!(
            ctx.body_limit, 1024,
            "chunked bodies are cut at the same cap"
        );
        let mut s = session("POST /a HTTP/1.1\nHost: x\nContent-Length: 1025").await;
        match p.request(&mut s, &mut ctx).await {
            Outcome::Respond(r) => assert_eq!((r.status, r.code), (413, Some("payload_too_large"))),
            Outcome::Continue => panic!("over the limit"),
        }
    }

    #[tokio::test]
    async fn cors_answers_preflights_and_decorates_last() {
        let rt = runtime(
            "      - name: cors\n        config: { origins: [\"https://app.example\"], methods: [GET, PUT] }\n      - name: security-headers",
        );
        let Plugin::Cors(p) = plugin(&rt, 0) else {
            panic!("cors");
        };
        let mut s = session(
            "OPTIONS /a HTTP/1.1\nHost: x\nOrigin: https://app.example\nAccess-Control-Request-Method: PUT",
        )
        .await;
        let mut ctx = ctx(&rt);
        let Outcome::Respond(r) = p.request(&mut s, &mut ctx).await else {
            panic!("a preflight is answered");
        };
        assert_eq!((r.status, r.code), (204, None));
        assert!(r.headers.iter().any(
            |(n, v)| n == "access-control-allow-methods" && v.to_str().unwrap().contains("PUT")
        ));
        // A plain request goes on.
        let mut s = session("GET /a HTTP/1.1\nHost: x\nOrigin: https://app.example").await;
        assert!(matches!(
            p.request(&mut s, &mut ctx).await,
            Outcome::Continue
        ));
        // On the way back cors runs after every other plugin (RESPONSE_LAST).
        let chain = &rt.routes[0].plugins;
        assert!(chain.has(phase::RESPONSE_LAST));
        ctx.origin = Some(http::HeaderValue::from_static("https://app.example"));
        let mut resp = ResponseHeader::build(200, None).unwrap();
        chain.response(&mut resp, &mut ctx, false).unwrap();
        assert_eq!(
            resp.headers["access-control-allow-origin"],
            "https://app.example"
        );
        assert_eq!(resp.headers["x-frame-options"], "DENY");
    }

    #[tokio::test]
    async fn a_chain_skips_the_phases_none_of_its_plugins_serves() {
        let rt = runtime("      - name: security-headers");
        let chain = &rt.routes[0].plugins;
        assert!(chain.has(phase::RESPONSE));
        for p in [
            phase::REQUEST,
            phase::REQUEST_BODY,
            phase::UPSTREAM_REQUEST,
            phase::CACHE,
            phase::LOGGING,
            phase::HAND_OFF,
        ] {
            assert!(!chain.has(p), "phase {p}");
        }
        // Nothing to run: no plugin is asked, the request goes on.
        let mut s = session("GET /a HTTP/1.1\nHost: x").await;
        let mut ctx = ctx(&rt);
        assert!(chain.request(&mut s, &mut ctx).await.is_none());
    }

    #[tokio::test]
    async fn key_auth_through_the_chain() {
        let y = "      - name: key-auth";
        let rt = {
            let y = format!(
                "consumers:\n  - {{ username: alice, keyauth_credentials: [{{ key: k-alice }}] }}\nupstreams:\n  - name: u\n    targets: [{{ addr: \"127.0.0.1:9\" }}]\nroutes:\n  - name: r\n    paths: [\"/\"]\n    upstream: u\n    plugins:\n{y}\n"
            );
            Arc::new(
                crate::config::load_str(
                    &y,
                    std::path::Path::new("."),
                    &Default::default(),
                    &Default::default(),
                    1,
                )
                .unwrap_or_else(|e| panic!("{e}")),
            )
        };
        let chain = &rt.routes[0].plugins;
        let mut ctx = ctx(&rt);
        let mut s = session("GET /a HTTP/1.1\nHost: x").await;
        let r = chain.request(&mut s, &mut ctx).await.expect("refused");
        assert_eq!((r.status, r.code), (401, Some("missing_api_key")));
        let mut s = session("GET /a HTTP/1.1\nHost: x\nX-API-Key: k-alice").await;
        assert!(chain.request(&mut s, &mut ctx).await.is_none());
        assert_eq!(ctx.consumer, Some(0));
        let mut up = RequestHeader::build("GET", b"/a", None).unwrap();
        up.insert_header("x-api-key", "k-alice").unwrap();
        chain.upstream_request(&mut up, &ctx).unwrap();
        assert_eq!(up.headers["x-consumer-username"], "alice");
        assert!(!up.headers.contains_key("x-api-key"), "hide_credentials");
    }
}
