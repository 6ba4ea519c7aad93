//! `tls_certificate_expiry_seconds{name}`: seconds until each served certificate's
//! `notAfter` (negative once expired), for the "certificate expiring" alert.
//!
//! The certificates are parsed when they are loaded for serving (the HTTPS listeners are
//! built at start and on a binary upgrade, see [`crate::tls::server_config`]); only their
//! name and `notAfter` are kept, and the remaining time is computed at scrape time, so the
//! gauge counts down between scrapes without a timer. The family is keyed by name so that
//! several certificates (chosen by SNI) fit it. Not on any request path.

use parking_lot::Mutex;
use std::collections::BTreeMap;

/// name -> `notAfter` as Unix seconds.
static CERTS: Mutex<BTreeMap<String, i64>> = Mutex::new(BTreeMap::new());

/// The name and `notAfter` (Unix seconds) of a DER certificate: its first DNS
/// subjectAltName, else its subject CN, else "unnamed".
pub fn describe(der: &[u8]) -> Result<(String, i64), String> {
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("cannot parse the certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|ext| {
            ext.value.general_names.iter().find_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
        });
    let cn = || {
        cert.subject()
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
            .map(str::to_string)
    };
    let name = san.or_else(cn).unwrap_or_else(|| "unnamed".to_string());
    Ok((name, cert.validity().not_after.timestamp()))
}

/// Replaces the set of served certificates (the leaf of each chain).
pub fn set_served(certs: impl IntoIterator<Item = (String, i64)>) {
    let mut m = CERTS.lock();
    m.clear();
    m.extend(certs);
}

/// The gauge family, computed against the current time.
pub fn metric_families() -> Vec<prometheus::proto::MetricFamily> {
    use prometheus::core::Collector;
    let certs = CERTS.lock().clone();
    if certs.is_empty() {
        return Vec::new();
    }
    let Ok(v) = prometheus::IntGaugeVec::new(
        prometheus::Opts::new(
            "tls_certificate_expiry_seconds",
            "Seconds until the served certificate's notAfter (negative once expired), by name (its first DNS subjectAltName, else its CN).",
        ),
        &["name"],
    ) else {
        return Vec::new();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    for (name, not_after) in &certs {
        v.with_label_values(&[name.as_str()]).set(not_after - now);
    }
    v.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(sans: Vec<String>, cn: Option<&str>) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(sans).unwrap();
        // rcgen's default subject has a CN of its own.
        p.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        }
        p.not_after = rcgen::date_time_ymd(2030, 6, 1);
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn name_is_the_first_dns_san_else_the_cn() {
        let (name, not_after) = describe(&der(
            vec!["a.example".into(), "b.example".into()],
            Some("cn.example"),
        ))
        .unwrap();
        assert_eq!(name, "a.example");
        assert_eq!(not_after, 1_906_502_400); // 2030-06-01T00:00:00Z
        assert_eq!(
            describe(&der(vec![], Some("cn.example"))).unwrap().0,
            "cn.example"
        );
        assert_eq!(describe(&der(vec![], None)).unwrap().0, "unnamed");
        assert!(describe(b"not a certificate").is_err());
    }
}
