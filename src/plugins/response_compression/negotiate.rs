//! `Accept-Encoding` negotiation (RFC 9110 section 12.5.3) for response-compression's
//! `request_filter`: the codings ([`Algo`]) and the one this client gets.

use http::HeaderValue;

/// A content coding the gateway can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algo {
    Br,
    Gzip,
    Zstd,
}

impl Algo {
    pub const ALL: [Algo; 3] = [Algo::Br, Algo::Gzip, Algo::Zstd];

    /// The `Content-Encoding` / `Accept-Encoding` token (and the `encoding` metric label).
    pub fn token(self) -> &'static str {
        match self {
            Algo::Br => "br",
            Algo::Gzip => "gzip",
            Algo::Zstd => "zstd",
        }
    }

    pub(super) fn from_token(s: &str) -> Option<Algo> {
        Algo::ALL.into_iter().find(|a| a.token() == s)
    }

    /// Valid levels: gzip 1-9, brotli 0-11, zstd 1-19 (20-22 need a large window per
    /// response).
    pub fn levels(self) -> std::ops::RangeInclusive<u32> {
        match self {
            Algo::Br => 0..=11,
            Algo::Gzip => 1..=9,
            Algo::Zstd => 1..=19,
        }
    }

    pub(super) fn index(self) -> usize {
        match self {
            Algo::Br => 0,
            Algo::Gzip => 1,
            Algo::Zstd => 2,
        }
    }
}

/// q-values in thousandths (`q=0.5` is 500).
type Q = u16;
const Q_ONE: Q = 1000;

/// Parses a qvalue: `0`, `0.x` up to three decimals, `1`, `1.0`... Anything else is `None`.
fn parse_q(v: &[u8]) -> Option<Q> {
    let (int, frac) = match v.iter().position(|&b| b == b'.') {
        Some(p) => (&v[..p], &v[p + 1..]),
        None => (v, &[][..]),
    };
    if frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut thousandths: Q = 0;
    for i in 0..3 {
        thousandths = thousandths * 10 + frac.get(i).map_or(0, |d| Q::from(d - b'0'));
    }
    match int {
        b"0" => Some(thousandths),
        b"1" if thousandths == 0 => Some(Q_ONE),
        _ => None,
    }
}

/// What one `Accept-Encoding` (all its field lines) says, before the server's preference.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// Explicit q per [`Algo::index`].
    algos: [Option<Q>; 3],
    star: Option<Q>,
    identity: Option<Q>,
}

impl Accepted {
    /// Reads every `Accept-Encoding` value. Codings are case-insensitive; `x-gzip` is
    /// `gzip` (RFC 9110 8.4.1.3); parameters other than `q` are ignored; an element with an
    /// invalid q is ignored; a coding listed twice keeps its lowest q (a client contradicting
    /// itself is taken at its most restrictive).
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Accepted {
        let mut acc = Accepted::default();
        for value in values {
            for element in value.split(|&b| b == b',') {
                let mut parts = element.split(|&b| b == b';');
                let coding = parts.next().unwrap_or_default().trim_ascii();
                if coding.is_empty() {
                    continue;
                }
                let mut q = Some(Q_ONE);
                for p in parts {
                    let Some(eq) = p.iter().position(|&b| b == b'=') else {
                        continue;
                    };
                    if p[..eq].trim_ascii().eq_ignore_ascii_case(b"q") {
                        q = parse_q(p[eq + 1..].trim_ascii());
                    }
                }
                let Some(q) = q else {
                    continue;
                };
                let slot = if coding.eq_ignore_ascii_case(b"gzip")
                    || coding.eq_ignore_ascii_case(b"x-gzip")
                {
                    &mut acc.algos[Algo::Gzip.index()]
                } else if coding.eq_ignore_ascii_case(b"br") {
                    &mut acc.algos[Algo::Br.index()]
                } else if coding.eq_ignore_ascii_case(b"zstd") {
                    &mut acc.algos[Algo::Zstd.index()]
                } else if coding == b"*" {
                    &mut acc.star
                } else if coding.eq_ignore_ascii_case(b"identity") {
                    &mut acc.identity
                } else {
                    continue;
                };
                *slot = Some(slot.map_or(q, |old| old.min(q)));
            }
        }
        acc
    }

    /// The q the client gives `a`: its own entry, else `*`'s, else 0 (not acceptable).
    pub fn q(&self, a: Algo) -> Q {
        self.algos[a.index()].or(self.star).unwrap_or(0)
    }

    /// The coding to send: the acceptable one (q > 0) with the highest q, ties broken by
    /// `preference` (the configured `algorithms`, best first); `None` for identity. Identity
    /// wins over every coding only when the client names it with a strictly higher q
    /// (`identity, gzip;q=0.5`): unnamed, it is merely always acceptable. `identity;q=0` or
    /// `*;q=0` never force a coding the client did not accept: the answer then goes out
    /// uncompressed, as NGINX does (406 would help nobody).
    pub fn choose(&self, preference: &[Algo]) -> Option<Algo> {
        let mut best: Option<(Algo, Q)> = None;
        for &a in preference {
            let q = self.q(a);
            if q > 0 && best.is_none_or(|(_, bq)| q > bq) {
                best = Some((a, q));
            }
        }
        let (algo, q) = best?;
        match self.identity {
            Some(iq) if iq > q => None,
            _ => Some(algo),
        }
    }
}

/// The coding for a request's `Accept-Encoding` header lines (none: no coding).
pub fn negotiate<'a>(
    values: impl IntoIterator<Item = &'a HeaderValue>,
    preference: &[Algo],
) -> Option<Algo> {
    Accepted::parse(values.into_iter().map(HeaderValue::as_bytes)).choose(preference)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(v: &str) -> Accepted {
        Accepted::parse([v.as_bytes()])
    }

    const PREF: &[Algo] = &[Algo::Br, Algo::Zstd, Algo::Gzip];

    fn choose(v: &str) -> Option<Algo> {
        accepted(v).choose(PREF)
    }

    #[test]
    fn q_values() {
        assert_eq!(parse_q(b"0"), Some(0));
        assert_eq!(parse_q(b"0.5"), Some(500));
        assert_eq!(parse_q(b"0.125"), Some(125));
        assert_eq!(parse_q(b"0.05"), Some(50));
        assert_eq!(parse_q(b"1"), Some(1000));
        assert_eq!(parse_q(b"1.000"), Some(1000));
        assert_eq!(parse_q(b"0."), Some(0));
        for bad in [
            &b"1.5"[..],
            b"2",
            b"0.1234",
            b"-1",
            b"",
            b"abc",
            b".5",
            b"0.5x",
        ] {
            assert_eq!(parse_q(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn server_preference_breaks_ties() {
        assert_eq!(choose("gzip, deflate, br, zstd"), Some(Algo::Br));
        assert_eq!(choose("gzip, deflate, zstd"), Some(Algo::Zstd));
        assert_eq!(choose("gzip"), Some(Algo::Gzip));
        assert_eq!(choose("GZIP"), Some(Algo::Gzip));
        assert_eq!(choose("x-gzip"), Some(Algo::Gzip));
        assert_eq!(
            accepted("br, gzip").choose(&[Algo::Gzip, Algo::Br]),
            Some(Algo::Gzip)
        );
        // Only configured algorithms are chosen.
        assert_eq!(accepted("br").choose(&[Algo::Gzip]), None);
    }

    #[test]
    fn higher_q_wins_over_preference() {
        assert_eq!(choose("br;q=0.5, gzip"), Some(Algo::Gzip));
        assert_eq!(choose("br;q=0.5, gzip;q=0.8, zstd;q=0.1"), Some(Algo::Gzip));
        assert_eq!(choose("gzip;q=1.0, br;q=0.999"), Some(Algo::Gzip));
        assert_eq!(choose(" gzip ; q = 0.4 , br ; Q=0.3 "), Some(Algo::Gzip));
    }

    #[test]
    fn q_zero_excludes() {
        assert_eq!(choose("gzip;q=0"), None);
        assert_eq!(choose("gzip;q=0, br"), Some(Algo::Br));
        assert_eq!(choose("gzip;q=0.000, br;q=0"), None);
        assert_eq!(choose("*;q=0"), None);
        assert_eq!(choose("*;q=0, gzip"), Some(Algo::Gzip));
        assert_eq!(choose("br;q=0, *"), Some(Algo::Zstd));
        // Listed twice: the most restrictive entry counts.
        assert_eq!(choose("gzip, gzip;q=0"), None);
    }

    #[test]
    fn star_and_identity() {
        assert_eq!(choose("*"), Some(Algo::Br));
        assert_eq!(choose("*;q=0.5, gzip"), Some(Algo::Gzip));
        assert_eq!(choose("identity"), None);
        assert_eq!(choose("identity;q=0"), None);
        assert_eq!(choose("identity;q=0, gzip"), Some(Algo::Gzip));
        assert_eq!(choose("identity;q=0, *;q=0"), None);
        // Identity named with a higher q than every coding wins; equal q does not.
        assert_eq!(choose("identity, gzip;q=0.5"), None);
        assert_eq!(choose("identity, gzip"), Some(Algo::Gzip));
        assert_eq!(choose("identity;q=0.5, gzip;q=0.6"), Some(Algo::Gzip));
    }

    #[test]
    fn absent_empty_and_odd_headers() {
        assert_eq!(
            Accepted::parse(std::iter::empty::<&[u8]>()).choose(PREF),
            None
        );
        assert_eq!(choose(""), None);
        assert_eq!(choose(" , ,"), None);
        assert_eq!(choose("deflate, compress"), None);
        // An invalid q drops that element only.
        assert_eq!(choose("br;q=2, gzip"), Some(Algo::Gzip));
        assert_eq!(choose("br;q=abc"), None);
        // Other parameters are ignored.
        assert_eq!(choose("gzip;level=9"), Some(Algo::Gzip));
        // Several field lines are one list.
        assert_eq!(
            Accepted::parse([&b"gzip;q=0.2"[..], b"zstd;q=0.3"]).choose(PREF),
            Some(Algo::Zstd)
        );
        let values = [
            HeaderValue::from_static("gzip"),
            HeaderValue::from_static("br;q=0"),
        ];
        assert_eq!(negotiate(values.iter(), PREF), Some(Algo::Gzip));
    }
}
