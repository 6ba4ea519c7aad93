//! The handshake-signature half of a rustls certificate verifier (server or client side):
//! whatever a verifier decides about the certificate itself, the TLS 1.2 and 1.3 handshake
//! signatures are checked the same way, with the signature algorithms of a crypto provider.
//! Runs in the TLS handshake, before any Pingora phase.

use pingora::tls::{
    CertificateDer, DigitallySignedStruct, HandshakeSignatureValid, RusTlsError, SignatureScheme,
};
use rustls::crypto::WebPkiSupportedAlgorithms;

/// TLS 1.2 (`tls13: false`) or 1.3 handshake signature of `message`, checked with `algs`
/// (`None`: no crypto provider, the handshake fails).
pub fn verify_signature(
    tls13: bool,
    algs: Option<WebPkiSupportedAlgorithms>,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, RusTlsError> {
    let algs = algs.ok_or_else(|| RusTlsError::General("no crypto provider".into()))?;
    if tls13 {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algs)
    } else {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algs)
    }
}

/// The signature schemes `algs` can check (none without a crypto provider).
pub fn schemes(algs: Option<WebPkiSupportedAlgorithms>) -> Vec<SignatureScheme> {
    algs.map(|a| a.supported_schemes()).unwrap_or_default()
}

/// Writes a verifier's `verify_tls12_signature`, `verify_tls13_signature` and
/// `supported_verify_schemes` (the same in `ServerCertVerifier` and `ClientCertVerifier`)
/// inside its `impl`; `$algs` is a function of `&Self` giving the
/// `Option<WebPkiSupportedAlgorithms>` to check with.
macro_rules! handshake_signatures {
    ($algs:expr) => {
        $crate::util::handshake::handshake_signatures!(@sig verify_tls12_signature, false, $algs);
        $crate::util::handshake::handshake_signatures!(@sig verify_tls13_signature, true, $algs);

        fn supported_verify_schemes(&self) -> Vec<pingora::tls::SignatureScheme> {
            $crate::util::handshake::schemes(($algs)(self))
        }
    };
    (@sig $name:ident, $tls13:literal, $algs:expr) => {
        fn $name(
            &self,
            message: &[u8],
            cert: &pingora::tls::CertificateDer<'_>,
            dss: &pingora::tls::DigitallySignedStruct,
        ) -> Result<pingora::tls::HandshakeSignatureValid, pingora::tls::RusTlsError> {
            $crate::util::handshake::verify_signature($tls13, ($algs)(self), message, cert, dss)
        }
    };
}
pub(crate) use handshake_signatures;
