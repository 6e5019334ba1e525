//! What `--web.config.file` asks of every connection and request: the TLS acceptor (rustls with
//! its aws-lc-rs provider, which prefers the post-quantum X25519MLKEM768 key exchange; client
//! certificates) and basic auth, checked with bcrypt (at most 2 verifications at
//! once, each tens of milliseconds of CPU; accepted credentials remembered by their SHA-256 so a
//! scraper's repeated credentials cost one run; unknown users checked against a dummy hash so
//! timing does not reveal user names), plus the response headers and the `/probe` concurrency
//! limit of `--web.max-concurrent-probes`.

use std::{
    collections::{BTreeMap, HashSet},
    path::Path,
    sync::{Arc, Mutex},
};

use hyper::{
    Request,
    body::Incoming,
    header::{AUTHORIZATION, HeaderName, HeaderValue},
};
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::{
    config::web::{self as web_config, ClientAuth, TlsSettings, TlsVersion, WebConfig},
    error::{Error, Result},
};

/// bcrypt verifications running at once (each takes tens of milliseconds of CPU); further
/// requests with credentials wait for a turn.
const CONCURRENT_PASSWORD_CHECKS: usize = 2;

/// What `--web.config.file` and `--web.max-concurrent-probes` ask of every request.
#[derive(Debug)]
pub struct WebPolicy {
    /// User name to bcrypt hash; empty: no authentication.
    users: BTreeMap<String, String>,
    /// SHA-256 of (user, password, hash) triples bcrypt has accepted, so that a scraper's
    /// repeated credentials cost one bcrypt run, not one per scrape.
    verified: Mutex<HashSet<[u8; 32]>>,
    password_checks: Semaphore,
    pub(super) headers: Vec<(HeaderName, HeaderValue)>,
    pub(super) probe_slots: Semaphore,
}

impl WebPolicy {
    /// The policy of `config`, allowing `max_concurrent_probes` probes at once.
    pub fn new(config: &WebConfig, max_concurrent_probes: usize) -> Self {
        let headers = config
            .headers
            .iter()
            .filter_map(|(name, value)| {
                // web_config admits only known names and values without control characters.
                Some((
                    HeaderName::from_bytes(name.as_bytes()).ok()?,
                    HeaderValue::from_str(value).ok()?,
                ))
            })
            .collect();
        WebPolicy {
            users: config.basic_auth_users.clone(),
            verified: Mutex::default(),
            password_checks: Semaphore::new(CONCURRENT_PASSWORD_CHECKS),
            headers,
            probe_slots: Semaphore::new(max_concurrent_probes),
        }
    }

    /// Whether the request's `Authorization` header holds the credentials of a configured user
    /// (always true when no users are configured).
    pub(super) async fn authorized(&self, request: &Request<Incoming>) -> bool {
        if self.users.is_empty() {
            return true;
        }
        let Some((user, password)) = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|value| basic_credentials(value.as_bytes()))
        else {
            return false;
        };
        // An unknown user costs a bcrypt run too, so timing does not reveal user names.
        let (known, hash) = match self.users.get(&user) {
            Some(hash) => (true, hash.clone()),
            None => (false, UNKNOWN_USER_HASH.to_string()),
        };
        let key: [u8; 32] = Sha256::new()
            .chain_update(user.as_bytes())
            .chain_update([0])
            .chain_update(password.as_bytes())
            .chain_update([0])
            .chain_update(hash.as_bytes())
            .finalize()
            .into();
        if known && self.verified.lock().is_ok_and(|set| set.contains(&key)) {
            return true;
        }
        let Ok(_turn) = self.password_checks.acquire().await else {
            return false;
        };
        let matches =
            tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
                .await
                .unwrap_or(false);
        if known
            && matches
            && let Ok(mut set) = self.verified.lock()
        {
            // Bounded: only accepted credentials enter, but bcrypt reads 72 bytes at most.
            if set.len() >= 1024 {
                set.clear();
            }
            set.insert(key);
        }
        known && matches
    }
}

/// A bcrypt hash (cost 10) of no password anyone knows, checked for unknown user names.
const UNKNOWN_USER_HASH: &str = "$2y$10$vtGl0r3vt0JZdBB2pGmvF.VlOH54VfGZKgkPRP5Of7BCvtfhAte4K";

/// `Basic base64(user:password)` as (user, password).
pub fn basic_credentials(header: &[u8]) -> Option<(String, String)> {
    use base64::Engine as _;
    let text = std::str::from_utf8(header).ok()?;
    let (scheme, encoded) = text.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Reads `--web.config.file` (if given) and, when it configures TLS, builds the acceptor from
/// the certificate, key and client CA files it names. Every problem is one line naming the
/// field and value, with exit code 2.
pub fn load_web_config(path: Option<&Path>) -> Result<(WebConfig, Option<TlsAcceptor>)> {
    let Some(path) = path else {
        return Ok((WebConfig::default(), None));
    };
    let invalid = |reason: String| Error::WebConfig {
        path: path.display().to_string(),
        reason,
    };
    let config = web_config::load(path).map_err(|err| invalid(err.to_string()))?;
    let acceptor = config
        .tls
        .as_ref()
        .map(tls_acceptor)
        .transpose()
        .map_err(invalid)?;
    Ok((config, acceptor))
}

/// rustls' aws-lc-rs provider; with the `prefer-post-quantum` feature its first key exchange
/// group is X25519MLKEM768.
fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A rustls acceptor for `settings` (HTTP/1.1 over TLS 1.2/1.3, aws-lc-rs as crypto provider:
/// *ring*'s has no post-quantum key exchange and is deprecated since rustls 0.23.48).
fn tls_acceptor(settings: &TlsSettings) -> Result<TlsAcceptor, String> {
    let read = |field: &str, path: &Path| {
        std::fs::read(path).map_err(|err| {
            format!(
                "tls_server_config.{field}: cannot read {:?}: {err}",
                path.display()
            )
        })
    };
    let certificates = |field: &str, path: &Path| -> Result<Vec<CertificateDer<'static>>, String> {
        let pem = read(field, path)?;
        let certificates = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| format!("tls_server_config.{field}: {:?}: {err}", path.display()))?;
        if certificates.is_empty() {
            return Err(format!(
                "tls_server_config.{field}: {:?} holds no PEM certificate",
                path.display()
            ));
        }
        Ok(certificates)
    };
    let chain = certificates("cert_file", &settings.cert_file)?;
    let key =
        PrivateKeyDer::from_pem_slice(&read("key_file", &settings.key_file)?).map_err(|err| {
            format!(
                "tls_server_config.key_file: {:?} holds no usable PEM private key: {err}",
                settings.key_file.display()
            )
        })?;
    let provider = crypto_provider();
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(version, _)| (settings.min_version..=settings.max_version).contains(version))
    .map(|(_, supported)| supported)
    .collect();
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions)
        .map_err(|err| format!("tls_server_config.min_version: {err}"))?;
    let builder = match (settings.client_auth, &settings.client_ca_file) {
        (ClientAuth::VerifyIfGiven | ClientAuth::RequireAndVerify, Some(ca_file)) => {
            let mut roots = RootCertStore::empty();
            for certificate in certificates("client_ca_file", ca_file)? {
                roots.add(certificate).map_err(|err| {
                    format!(
                        "tls_server_config.client_ca_file: {:?}: {err}",
                        ca_file.display()
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if settings.client_auth == ClientAuth::VerifyIfGiven {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier.build().map_err(|err| {
                format!(
                    "tls_server_config.client_ca_file: {:?}: {err}",
                    ca_file.display()
                )
            })?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|err| {
        format!(
            "tls_server_config.key_file: {:?} does not fit cert_file {:?}: {err}",
            settings.key_file.display(),
            settings.cert_file.display()
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_exchange_prefers_post_quantum() {
        let groups: Vec<rustls::NamedGroup> = crypto_provider()
            .kx_groups
            .iter()
            .map(|group| group.name())
            .collect();
        // The classical groups follow, for clients without ML-KEM.
        assert_eq!(groups[0], rustls::NamedGroup::X25519MLKEM768, "{groups:?}");
        for classical in [
            rustls::NamedGroup::X25519,
            rustls::NamedGroup::secp256r1,
            rustls::NamedGroup::secp384r1,
        ] {
            assert!(groups.contains(&classical), "{groups:?}");
        }
    }

    #[test]
    fn basic_credentials_are_decoded() {
        // "alice:pa:ss" in base64: the password may contain ':'.
        assert_eq!(
            basic_credentials(b"Basic YWxpY2U6cGE6c3M="),
            Some(("alice".into(), "pa:ss".into()))
        );
        assert_eq!(
            basic_credentials(b"basic  YWxpY2U6cGE6c3M= "),
            Some(("alice".into(), "pa:ss".into()))
        );
        for bad in [
            &b""[..],
            b"Basic",
            b"Bearer YWxpY2U6cGE6c3M=",
            b"Basic !!!",
            b"Basic YWxpY2U=", // "alice": no ':'
            b"Basic /w==",     // not UTF-8
            b"\xff\xfe",
        ] {
            assert_eq!(basic_credentials(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn unknown_users_cost_a_real_bcrypt_run() {
        // A parse error would return at once and tell unknown users from known ones.
        assert_eq!(
            bcrypt::verify("anything", UNKNOWN_USER_HASH).ok(),
            Some(false)
        );
        assert!(crate::config::web::check_bcrypt_hash(UNKNOWN_USER_HASH).is_ok());
    }
}
