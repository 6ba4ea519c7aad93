//! Credentials kept out of logs, `/status` and metrics.

/// `redis://user:secret@host:6379/0?x=y` -> `redis://host:6379/0`.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (s, r),
        None => ("", url),
    };
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if scheme.is_empty() {
        format!("{host}{path}")
    } else {
        format!("{scheme}://{host}{path}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        for (url, shown) in [
            (
                "redis://user:s3cret@10.0.0.5:6380/2?pass=x",
                "redis://10.0.0.5:6380/2",
            ),
            ("redis://:p%40ss@cache:6379", "redis://cache:6379"),
            ("redis://127.0.0.1/", "redis://127.0.0.1/"),
            ("rediss://a:b@h", "rediss://h"),
        ] {
            assert_eq!(redact_url(url), shown);
        }
    }
}
