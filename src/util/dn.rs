//! Distinguished names (RFC 4514 strings such as `CN=partner-a,O=Acme`) compared in a
//! normalised form, without allocating: the names a config writes (`consumers[].
//! mtls_credentials[].subject`) and the subjects of verified client certificates.
//!
//! The normalised form of a name is a sequence of [`Token`]s, produced by [`walk`]:
//!
//! - the RDNs stay in the order written (RFC 4514's order: most specific first, as the
//!   gateway renders a certificate's subject), and so do the attributes of a multi-valued
//!   RDN (`+`);
//! - attribute types are case-insensitive, and the usual short names, long names and dotted
//!   OIDs of one type are the same type (`CN`, `commonName` and `2.5.4.3`; `emailAddress`,
//!   `E`, `Email`);
//! - spaces (and tabs) around `,`, `+` and `=` are ignored; spaces inside a value are kept,
//!   and a value's leading or trailing space counts only when escaped (`\ `);
//! - escapes are decoded (`\,` and `\2C` are the same comma; `\C3\A9` is `é`); values are
//!   compared byte for byte after that (case-sensitive).
//!
//! Hex-encoded values (`#04...`) are not supported, and `;` is not accepted as a separator.

/// One token of a normalised name: a byte of an attribute type (upper case) or of a decoded
/// value, or a structural mark. Type bytes and value bytes cannot be confused: [`EQ`] sits
/// between them.
pub type Token = u16;

/// Between an attribute's type and its value.
pub const EQ: Token = 0x100;
/// Between two RDNs (`,`).
pub const NEXT_RDN: Token = 0x101;
/// Between two attributes of one multi-valued RDN (`+`).
pub const NEXT_ATTR: Token = 0x102;

/// Attribute types known by several names: every spelling (compared ignoring ASCII case)
/// and the one that stands for them all.
const ALIASES: &[(&[&str], &str)] = &[
    (&["CN", "commonName", "2.5.4.3"], "CN"),
    (&["SN", "surname", "2.5.4.4"], "SN"),
    (&["serialNumber", "2.5.4.5"], "SERIALNUMBER"),
    (&["C", "countryName", "2.5.4.6"], "C"),
    (&["L", "localityName", "2.5.4.7"], "L"),
    (&["ST", "stateOrProvinceName", "2.5.4.8"], "ST"),
    (&["STREET", "streetAddress", "2.5.4.9"], "STREET"),
    (&["O", "organizationName", "2.5.4.10"], "O"),
    (
        &[
            "OU",
            "organizationalUnit",
            "organizationalUnitName",
            "2.5.4.11",
        ],
        "OU",
    ),
    (&["title", "2.5.4.12"], "TITLE"),
    (&["GN", "givenName", "2.5.4.42"], "GN"),
    (
        &["DC", "domainComponent", "0.9.2342.19200300.100.1.25"],
        "DC",
    ),
    (&["UID", "userId", "0.9.2342.19200300.100.1.1"], "UID"),
    (
        &["emailAddress", "E", "Email", "1.2.840.113549.1.9.1"],
        "EMAILADDRESS",
    ),
];

fn is_space(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Emits the canonical spelling of attribute type `t` (already trimmed).
fn emit_type(t: &[u8], emit: &mut impl FnMut(Token)) -> Result<(), &'static str> {
    let first = t.first().ok_or("an attribute type is empty")?;
    let name_ok =
        first.is_ascii_alphabetic() && t.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-');
    let oid_ok = t.iter().all(|b| b.is_ascii_digit() || *b == b'.')
        && !t.starts_with(b".")
        && !t.ends_with(b".")
        && !t.windows(2).any(|w| w == b"..");
    if !name_ok && !oid_ok {
        return Err("an attribute type must be a name (CN, O, ...) or a dotted OID");
    }
    let canonical = ALIASES
        .iter()
        .find(|(names, _)| names.iter().any(|n| n.as_bytes().eq_ignore_ascii_case(t)))
        .map(|(_, c)| c.as_bytes());
    for b in canonical.unwrap_or(t) {
        emit(Token::from(b.to_ascii_uppercase()));
    }
    Ok(())
}

/// Walks the RFC 4514 name `dn`, handing its normalised form to `emit` token by token
/// (see the module doc). An error says what is wrong with `dn`; tokens emitted before it
/// are meaningless then.
pub fn walk(dn: &str, emit: &mut impl FnMut(Token)) -> Result<(), &'static str> {
    let b = dn.as_bytes();
    let n = b.len();
    let mut i = 0;
    if b.iter().all(|c| is_space(*c)) {
        return Err("the name is empty");
    }
    loop {
        // TYPE
        while i < n && is_space(b[i]) {
            i += 1;
        }
        let start = i;
        while i < n && !matches!(b[i], b'=' | b',' | b'+') {
            i += 1;
        }
        if i == n || b[i] != b'=' {
            return Err("every attribute is TYPE=value (RDNs separated by ',')");
        }
        let mut end = i;
        while end > start && is_space(b[end - 1]) {
            end -= 1;
        }
        emit_type(&b[start..end], emit)?;
        emit(EQ);
        i += 1;
        // value
        while i < n && is_space(b[i]) {
            i += 1;
        }
        if i < n && b[i] == b'#' {
            return Err("hex-encoded values (#...) are not supported: write the value as text (\\# for a literal #)");
        }
        while i < n && !matches!(b[i], b',' | b'+') {
            match b[i] {
                b'\\' => {
                    let Some(&e) = b.get(i + 1) else {
                        return Err("a '\\' at the end escapes nothing");
                    };
                    if let (Some(h), Some(l)) = (hex_val(e), b.get(i + 2).and_then(|x| hex_val(*x)))
                    {
                        emit(Token::from(h << 4 | l));
                        i += 3;
                    } else if matches!(
                        e,
                        b' ' | b'"' | b'#' | b'+' | b',' | b';' | b'<' | b'=' | b'>' | b'\\'
                    ) {
                        emit(Token::from(e));
                        i += 2;
                    } else {
                        return Err(
                            "after '\\' comes a space, one of \"#+,;<=>\\ or two hex digits",
                        );
                    }
                }
                b';' => {
                    return Err(
                        "';' is not a separator: write ',' between RDNs (\\; for a literal ;)",
                    )
                }
                c if is_space(c) => {
                    let run = i;
                    while i < n && is_space(b[i]) {
                        i += 1;
                    }
                    // Spaces before a separator or the end are not part of the value.
                    if i < n && !matches!(b[i], b',' | b'+') {
                        for c in &b[run..i] {
                            emit(Token::from(*c));
                        }
                    }
                }
                c => {
                    emit(Token::from(c));
                    i += 1;
                }
            }
        }
        if i == n {
            return Ok(());
        }
        emit(if b[i] == b',' { NEXT_RDN } else { NEXT_ATTR });
        i += 1;
        if b[i..].iter().all(|c| is_space(*c)) {
            return Err("the name ends with a separator");
        }
    }
}

/// The normalised form of `dn`, or why it is not an RFC 4514 name.
pub fn normalise(dn: &str) -> Result<Box<[Token]>, &'static str> {
    let mut out = Vec::with_capacity(dn.len() + 4);
    walk(dn, &mut |t| out.push(t))?;
    Ok(out.into_boxed_slice())
}

/// `dn` is a well-formed name whose normalised form is `normal`.
pub fn matches(dn: &str, normal: &[Token]) -> bool {
    let mut at = 0;
    let mut same = true;
    let ok = walk(dn, &mut |t| {
        same &= normal.get(at) == Some(&t);
        at += 1;
    })
    .is_ok();
    ok && same && at == normal.len()
}

/// Feeds the normalised form of `dn` to `h` exactly as hashing [`normalise`]'s tokens one by
/// one would; `false` when `dn` is not a well-formed name.
pub fn hash_into(dn: &str, h: &mut impl std::hash::Hasher) -> bool {
    walk(dn, &mut |t| h.write_u16(t)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same(a: &str, b: &str) -> bool {
        matches(a, &normalise(b).unwrap())
    }

    #[test]
    fn spacing_case_aliases_and_escapes_normalise() {
        assert!(same("CN=partner-a,O=Acme", "CN=partner-a,O=Acme"));
        assert!(same("CN=partner-a,O=Acme", " cn = partner-a ,  o=Acme "));
        assert!(same(
            "CN=partner-a,O=Acme",
            "commonName=partner-a,2.5.4.10=Acme"
        ));
        assert!(same("Email=a@b.example", "emailAddress=a@b.example"));
        assert!(same("CN=a\\, b", "CN=a\\2C b"));
        assert!(same("CN=caf\u{e9}", "CN=caf\\C3\\A9"));
        assert!(same("CN=a b", "CN=a b"));
        assert!(same("CN=\\ x\\ ", "CN=\\20x\\20"));
        assert!(same("CN=a+UID=b,O=c", "CN=a + uid=b, O=c"));
        // Values are case-sensitive, order matters, kinds of separator matter.
        assert!(!same("CN=Partner-a,O=Acme", "CN=partner-a,O=Acme"));
        assert!(!same("O=Acme,CN=partner-a", "CN=partner-a,O=Acme"));
        assert!(!same("CN=a+O=b", "CN=a,O=b"));
        assert!(!same("CN=a,O=Acme", "CN=a"));
        assert!(!same("CN=a", "CN=a,O=Acme"));
        assert!(!same("CN=a b", "CN=ab"));
        assert!(!same("CN= x", "CN=\\ x"));
        // An escaped separator is part of the value.
        assert!(!same("CN=a\\,O=b", "CN=a,O=b"));
        // Unknown types are compared as written, ignoring case.
        assert!(same("1.2.3.4=x", "1.2.3.4=x"));
        assert!(same("fooBar=x", "FOOBAR=x"));
    }

    #[test]
    fn malformed_names_are_refused() {
        for bad in [
            "",
            "  ",
            "partner-a",
            "CN=a,",
            "CN=a, ",
            ",CN=a",
            "CN=a,,O=b",
            "=a",
            "C N=a",
            "1..2=x",
            "CN=#04026869",
            "CN=a;O=b",
            "CN=a\\",
            "CN=a\\q",
        ] {
            assert!(normalise(bad).is_err(), "{bad:?}");
            assert!(!matches(bad, &[]), "{bad:?}");
        }
    }

    #[test]
    fn hashing_follows_the_tokens() {
        use std::hash::Hasher;
        let mut a = std::collections::hash_map::DefaultHasher::new();
        assert!(hash_into("cn = x , o=y", &mut a));
        let mut b = std::collections::hash_map::DefaultHasher::new();
        for t in normalise("CN=x,O=y").unwrap().iter() {
            b.write_u16(*t);
        }
        assert_eq!(a.finish(), b.finish());
        assert!(!hash_into("CN=x,", &mut a));
    }
}
