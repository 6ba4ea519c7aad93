//! The ACME background service: orders, renews and stores certificates, then hands them to
//! the listeners' certificate store. It follows the live config through the app's shared
//! state, so it sits with the other services above the app (the settings, the challenge
//! state and the metrics it shares with the request path live in [`super`]).

use super::*;
use crate::app::Shared;

/// The stored certificate when it covers every domain (it may be due for renewal).
fn stored(s: &AcmeSettings) -> Option<CertEntry> {
    let (cert, key) = storage::cert_paths(s);
    if !cert.is_file() || !key.is_file() {
        return None;
    }
    match crate::tls::store::load_acme(&cert, &key) {
        Ok(e) if s.domains.iter().all(|d| e.names.contains(d)) => Some(e),
        Ok(_) => {
            tracing::info!(
                "acme: the stored certificate {} does not cover every domain of server.tls.acme.domains: ordering a new one",
                cert.display()
            );
            None
        }
        Err(e) => {
            tracing::warn!(
                "acme: the stored certificate {} is unusable ({e}): ordering a new one",
                cert.display()
            );
            None
        }
    }
}

/// When a certificate expiring at `not_after` is due for renewal (Unix seconds).
fn renewal_at(s: &AcmeSettings, not_after: i64) -> i64 {
    not_after - s.renew_before.as_secs() as i64
}

/// Issues and renews the certificates of `server.tls.acme` (a Pingora background service).
pub struct AcmeService {
    shared: Arc<Shared>,
}

impl AcmeService {
    /// Serves a stored certificate that is still valid from the first handshake on (read
    /// before the listeners start: a file read, no network).
    pub fn new(shared: Arc<Shared>) -> AcmeService {
        let settings = current(&shared);
        if let Some(s) = &settings {
            ACTIVE.store(true, Ordering::Relaxed);
            if let Some(e) = stored(s).filter(|e| e.not_after > now_unix()) {
                shared.certs.set_acme(vec![Arc::new(e)]);
            }
        }
        AcmeService { shared }
    }

    fn record(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.shared.acme.status.lock());
    }
}

fn current(shared: &Shared) -> Option<AcmeSettings> {
    shared
        .snapshot()
        .server
        .tls
        .as_ref()
        .and_then(|t| t.acme.clone())
}

#[async_trait]
impl BackgroundService for AcmeService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Settings acted on; a reload that changes them (domains, directory) starts over.
        let mut acting: Option<AcmeSettings> = None;
        let mut next = tokio::time::Instant::now();
        let mut backoff = Duration::ZERO;
        loop {
            let settings = current(&self.shared);
            if settings != acting {
                backoff = Duration::ZERO;
                next = tokio::time::Instant::now();
                match &settings {
                    None => self.shared.certs.set_acme(Vec::new()),
                    Some(s) => {
                        ACTIVE.store(true, Ordering::Relaxed);
                        let e = stored(s).filter(|e| e.not_after > now_unix());
                        self.shared
                            .certs
                            .set_acme(e.into_iter().map(Arc::new).collect());
                    }
                }
                acting = settings.clone();
            }
            if let Some(s) = settings.filter(|_| tokio::time::Instant::now() >= next) {
                let now = now_unix();
                let valid = stored(&s).filter(|e| renewal_at(&s, e.not_after) > now);
                if let Some(e) = valid {
                    // Not due: serve it (its file may have been replaced) and look again
                    // when it is, or in RECHECK.
                    let due = Duration::from_secs((renewal_at(&s, e.not_after) - now) as u64);
                    self.shared.certs.set_acme(vec![Arc::new(e)]);
                    next = tokio::time::Instant::now() + due.min(RECHECK);
                    self.record(|st| {
                        st.next_attempt = Some(now + due.min(RECHECK).as_secs() as i64)
                    });
                } else {
                    let order = tokio::time::timeout(ORDER_TIMEOUT, issue(&s, &self.shared.acme));
                    let res = tokio::select! {
                        _ = shutdown.changed() => return,
                        r = order => r.unwrap_or_else(|_| Err(format!("no certificate within {ORDER_TIMEOUT:?}"))),
                    };
                    match res {
                        Ok(e) => {
                            ISSUED.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(
                                domains = %s.domains.join(","),
                                not_after = e.not_after,
                                serial = %e.serial,
                                "acme: certificate issued, serving it for new handshakes"
                            );
                            let due = renewal_at(&s, e.not_after) - now_unix();
                            self.shared.certs.set_acme(vec![Arc::new(e)]);
                            backoff = Duration::ZERO;
                            let wait = Duration::from_secs(due.max(60) as u64).min(RECHECK);
                            next = tokio::time::Instant::now() + wait;
                            self.record(|st| {
                                st.last_error = None;
                                st.failures = 0;
                                st.issued_at = Some(now_unix());
                                st.next_attempt = Some(now_unix() + wait.as_secs() as i64);
                            });
                        }
                        Err(err) => {
                            FAILED.fetch_add(1, Ordering::Relaxed);
                            backoff = if backoff.is_zero() {
                                BACKOFF_FIRST
                            } else {
                                (backoff * 2).min(BACKOFF_MAX)
                            };
                            next = tokio::time::Instant::now() + backoff;
                            tracing::error!(
                                domains = %s.domains.join(","),
                                directory = %s.directory,
                                "acme: order failed, next attempt in {}s: {err}",
                                backoff.as_secs()
                            );
                            self.record(|st| {
                                st.last_error = Some(err);
                                st.failures += 1;
                                st.next_attempt = Some(now_unix() + backoff.as_secs() as i64);
                            });
                        }
                    }
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                // Also how a reload that changes `server.tls.acme` is noticed.
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

/// One order: account (stored or created), HTTP-01 for every domain, finalization, the chain
/// and key stored, and loaded for serving.
async fn issue(s: &AcmeSettings, state: &AcmeState) -> Result<CertEntry, String> {
    use instant_acme::{
        AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy,
    };
    storage::prepare(s)?;
    let account = storage::account(s).await?;
    let ids: Vec<Identifier> = s.domains.iter().cloned().map(Identifier::Dns).collect();
    let mut order = match account.new_order(&NewOrder::new(&ids)).await {
        Ok(o) => o,
        Err(e) => {
            let e = e.to_string();
            if e.contains("accountDoesNotExist") {
                // The server forgot the stored account (deactivated, or a test server that
                // restarted): the next attempt creates a new one.
                storage::forget_account(s);
            }
            return Err(format!("new order: {e}"));
        }
    };
    let mut tokens = Vec::new();
    let res: Result<(), String> = async {
        let mut authzs = order.authorizations();
        while let Some(a) = authzs.next().await {
            let mut a = a.map_err(|e| format!("authorization: {e}"))?;
            match a.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(format!("authorization is {other:?}")),
            }
            let name = a.identifier().to_string();
            let mut ch = a
                .challenge(ChallengeType::Http01)
                .ok_or_else(|| format!("the ACME server offers no http-01 challenge for {name}"))?;
            state.publish_challenge(&ch.token, ch.key_authorization().as_str());
            tokens.push(ch.token.clone());
            ch.set_ready()
                .await
                .map_err(|e| format!("challenge for {name}: {e}"))?;
        }
        Ok(())
    }
    .await;
    let res = match res {
        Ok(()) => {
            let retries = RetryPolicy::new()
                .initial_delay(Duration::from_millis(500))
                .timeout(Duration::from_secs(120));
            match order.poll_ready(&retries).await {
                Ok(OrderStatus::Ready) => Ok(()),
                Ok(status) => Err(order_failure(&mut order, status).await),
                Err(e) => Err(format!("validation: {e}")),
            }
        }
        Err(e) => Err(e),
    };
    state.withdraw_challenges(&tokens);
    res?;
    let key_pem = order
        .finalize()
        .await
        .map_err(|e| format!("finalize: {e}"))?;
    let retries = RetryPolicy::new()
        .initial_delay(Duration::from_millis(500))
        .timeout(Duration::from_secs(120));
    let chain_pem = order
        .poll_certificate(&retries)
        .await
        .map_err(|e| format!("certificate: {e}"))?;
    storage::save_cert(s, &chain_pem, &key_pem)
}

/// Why an order ended `invalid`: the first failed challenge's problem.
async fn order_failure(
    order: &mut instant_acme::Order,
    status: instant_acme::OrderStatus,
) -> String {
    let mut why = Vec::new();
    let mut authzs = order.authorizations();
    while let Some(Ok(a)) = authzs.next().await {
        for ch in &a.challenges {
            if let Some(p) = &ch.error {
                why.push(format!("{}: {p}", a.identifier()));
            }
        }
    }
    if why.is_empty() {
        format!("the order is {status:?}")
    } else {
        format!("the order is {status:?}: {}", why.join("; "))
    }
}
