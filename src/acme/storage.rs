//! `server.tls.acme.storage`: the ACME account and the issued certificates on disk.
//!
//! Layout, under one directory per ACME server (`storage/<host>/`, e.g.
//! `acme-v02.api.letsencrypt.org`): `account.json` (the account URL and its private key),
//! `<first domain>.crt` (the chain) and `<first domain>.key`. Directories are created 0700 and
//! files written 0600 through a temporary file renamed into place, so a crash never leaves
//! half a key and a reader never sees one.

use super::AcmeSettings;
use crate::tls::store::CertEntry;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The chain and key files of the settings' certificate.
pub(super) fn cert_paths(s: &AcmeSettings) -> (PathBuf, PathBuf) {
    let dir = super::server_dir(s);
    let name = s
        .domains
        .first()
        .map(String::as_str)
        .unwrap_or("certificate");
    (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    )
}

fn account_path(s: &AcmeSettings) -> PathBuf {
    super::server_dir(s).join("account.json")
}

/// Creates the storage directories (0700).
pub(super) fn prepare(s: &AcmeSettings) -> Result<(), String> {
    let dir = super::server_dir(s);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

/// Writes `data` to `path` with mode 0600, atomically.
fn write_private(path: &Path, data: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let res = (|| {
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        // The umask cannot widen it, but an existing file's mode is not reset by open.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    res.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    })
}

/// The stored account of this ACME server, or a new one (stored before it is used).
pub(super) async fn account(s: &AcmeSettings) -> Result<instant_acme::Account, String> {
    use instant_acme::{Account, AccountCredentials, NewAccount};
    let builder = || {
        match &s.ca {
            Some(ca) => Account::builder_with_root(ca),
            None => Account::builder(),
        }
        .map_err(|e| format!("ACME HTTP client: {e}"))
    };
    let path = account_path(s);
    if let Ok(text) = std::fs::read(&path) {
        // The parse error of a file holding a private key could quote it: not shown.
        let creds: AccountCredentials = serde_json::from_slice(&text)
            .map_err(|_| format!("{} is not an ACME account file", path.display()))?;
        return builder()?
            .from_credentials(creds)
            .await
            .map_err(|e| format!("ACME directory {}: {e}", s.directory));
    }
    let contact = s.email.as_ref().map(|e| format!("mailto:{e}"));
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, creds) = builder()?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            s.directory.clone(),
            None,
        )
        .await
        .map_err(|e| format!("new account at {}: {e}", s.directory))?;
    let json = serde_json::to_vec(&creds).map_err(|e| format!("account: {e}"))?;
    write_private(&path, &json)?;
    tracing::info!(directory = %s.directory, "acme: account created");
    Ok(account)
}

/// Removes the stored account (the ACME server no longer knows it).
pub(super) fn forget_account(s: &AcmeSettings) {
    let _ = std::fs::remove_file(account_path(s));
}

/// Stores an issued chain and its key, and loads them for serving (which checks that they
/// fit together before anything is replaced).
pub(super) fn save_cert(
    s: &AcmeSettings,
    chain_pem: &str,
    key_pem: &str,
) -> Result<CertEntry, String> {
    let (cert, key) = cert_paths(s);
    let (new_cert, new_key) = (
        cert.with_extension("crt.new"),
        key.with_extension("key.new"),
    );
    write_private(&new_cert, chain_pem.as_bytes())?;
    write_private(&new_key, key_pem.as_bytes())?;
    let entry = crate::tls::store::load_acme(&new_cert, &new_key)
        .map_err(|e| format!("the issued certificate: {e}"))?;
    // The key first: between the two renames the old chain sits beside the new key, which
    // `stored()` refuses (it does not fit) and the next turn orders again at worst.
    for (from, to) in [(&new_key, &key), (&new_cert, &cert)] {
        std::fs::rename(from, to).map_err(|e| format!("cannot write {}: {e}", to.display()))?;
    }
    Ok(entry)
}
