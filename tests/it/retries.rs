//! Retry policy: connect failures (any method), 502/503/504 for idempotent methods only.
use crate::common;

use common::*;
use reqwest::Method;

/// `n` sequential requests with `method`: (count of 200, count of 502, other statuses).
async fn run(gw: &Gateway, method: Method, n: usize) -> (usize, usize, Vec<u16>) {
    let (mut ok, mut bad, mut other) = (0, 0, Vec::new());
    for i in 0..n {
        let mut req = gw
            .client
            .request(method.clone(), gw.url(&format!("/rt/{i}")));
        if method == Method::POST || method == Method::PUT || method == Method::PATCH {
            req = req.body("{\"x\":1}");
        }
        let (s, _) = gw.send(req).await;
        match s {
            200 => ok += 1,
            502 => bad += 1,
            s => other.push(s),
        }
    }
    (ok, bad, other)
}

#[tokio::test]
async fn get_retried_on_upstream_502() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    a.set_status(502);
    let gw = one_upstream(&[target(&a), target(&b)], "", "/rt", "");

    let (ok, bad, other) = run(&gw, Method::GET, 20).await;
    assert_eq!((ok, bad, other), (20, 0, vec![]), "default retries: 1");
    assert!(
        a.hits() >= 5,
        "failing target should have been tried: {}",
        a.hits()
    );
    assert_eq!(b.hits(), 20);
}

#[tokio::test]
async fn put_and_delete_retried_on_upstream_503() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    a.set_status(503);
    let gw = one_upstream(&[target(&a), target(&b)], "retries: 1", "/rt", "");

    let (ok, _, other) = run(&gw, Method::PUT, 10).await;
    assert_eq!((ok, other), (10, vec![]));
    let (ok, _, other) = run(&gw, Method::DELETE, 10).await;
    assert_eq!((ok, other), (10, vec![]));
    assert!(a.hits() >= 5);
    assert_eq!(b.hits(), 20);
}

#[tokio::test]
async fn get_retried_on_connect_refused() {
    let b = Backend::start("b");
    let gw = one_upstream(&[target_addr(&dead_addr()), target(&b)], "", "/rt", "");

    let (ok, bad, other) = run(&gw, Method::GET, 20).await;
    assert_eq!((ok, bad, other), (20, 0, vec![]));
    assert_eq!(b.hits(), 20);
}

#[tokio::test]
async fn post_retried_on_connect_refused() {
    let b = Backend::start("b");
    let gw = one_upstream(&[target_addr(&dead_addr()), target(&b)], "", "/rt", "");

    let (ok, bad, other) = run(&gw, Method::POST, 20).await;
    assert_eq!(
        (ok, bad, other),
        (20, 0, vec![]),
        "connect failures are retried for any method"
    );
    assert_eq!(b.hits(), 20);
    assert!(b.requests().iter().all(|r| r.body == b"{\"x\":1}"));
}

#[tokio::test]
async fn post_not_retried_on_upstream_502() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    a.set_status(502);
    let gw = one_upstream(&[target(&a), target(&b)], "retries: 2", "/rt", "");

    let (ok, bad, other) = run(&gw, Method::POST, 20).await;
    assert!(other.is_empty(), "{other:?}");
    assert!(bad > 0, "POST answered 502 by a must reach the client");
    assert_eq!(a.hits(), bad, "every POST that reached a was not retried");
    assert_eq!(b.hits(), ok);

    a.reset();
    b.reset();
    let (ok, bad, _) = run(&gw, Method::PATCH, 10).await;
    assert!(bad > 0, "PATCH answered 502 by a must reach the client");
    assert_eq!((a.hits(), b.hits()), (bad, ok));
}

#[tokio::test]
async fn retries_zero_means_no_retry() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    a.set_status(502);
    let gw = one_upstream(&[target(&a), target(&b)], "retries: 0", "/rt", "");

    let (ok, bad, other) = run(&gw, Method::GET, 20).await;
    assert!(other.is_empty(), "{other:?}");
    assert!(
        bad >= 5,
        "with retries: 0 clients see a's 502s: ok={ok} bad={bad}"
    );
    assert_eq!((a.hits(), b.hits()), (bad, ok));
}

#[tokio::test]
async fn retries_zero_connect_refused_is_502() {
    let b = Backend::start("b");
    let gw = one_upstream(
        &[target_addr(&dead_addr()), target(&b)],
        "retries: 0",
        "/rt",
        "",
    );

    let mut saw_502 = false;
    for _ in 0..6 {
        let (s, body) = gw.send(gw.client.get(gw.url("/rt/x"))).await;
        if s == 502 {
            assert_error_body(&body, "bad_gateway");
            saw_502 = true;
        } else {
            assert_eq!(s, 200, "{body}");
        }
    }
    assert!(saw_502, "retries: 0 must expose the connect failure");
}

#[tokio::test]
async fn last_upstream_502_passed_through_when_all_fail() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    for x in [&a, &b] {
        x.set_status(502);
        x.set_body(Some("{\"upstream_says\":\"own 502 body\"}"));
    }
    let gw = one_upstream(&[target(&a), target(&b)], "retries: 1", "/rt", "");

    for _ in 0..5 {
        let (s, body) = gw.send(gw.client.get(gw.url("/rt/x"))).await;
        assert_eq!(s, 502, "{body}");
        assert!(
            body.contains("own 502 body"),
            "the last attempt's own 502 passes through: {body}"
        );
    }
    // one try + one retry per request
    assert_eq!(a.hits() + b.hits(), 10);
    assert_eq!(
        (a.hits(), b.hits()),
        (5, 5),
        "the retry goes to the other target"
    );
}

#[tokio::test]
async fn last_upstream_504_passed_through_when_all_fail() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    for x in [&a, &b] {
        x.set_status(504);
        x.set_body(Some("{\"upstream_says\":\"own 504 body\"}"));
    }
    let gw = one_upstream(&[target(&a), target(&b)], "retries: 1", "/rt", "");

    let (s, body) = gw.send(gw.client.get(gw.url("/rt/x"))).await;
    assert_eq!(s, 504, "{body}");
    assert!(body.contains("own 504 body"), "{body}");
    assert_eq!(a.hits() + b.hits(), 2);
}
