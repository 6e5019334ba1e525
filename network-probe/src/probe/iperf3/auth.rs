//! The iperf3 RSA login (servers started with `--rsa-private-key-path` and
//! `--authorized-users-path`): reading the public key file a module names (bounded, once, when
//! the configuration is loaded; `/probe` never lets a request name one) and encrypting the
//! time-stamped credentials into the auth token.

use std::time::SystemTime;

use super::protocol;
use crate::probe::BadRequest;

/// RSA padding for the auth token: 3.12-3.16 servers use PKCS#1 v1.5; 3.17+ default to OAEP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    Pkcs1,
    Oaep,
}

/// Credentials for servers started with `--rsa-private-key-path` and `--authorized-users-path`.
#[derive(Clone, Debug)]
pub struct Auth {
    pub username: String,
    pub password: String,
    pub public_key: rsa::RsaPublicKey,
    pub padding: Padding,
}

/// Largest `public_key_file` read; a PEM RSA public key of 16384 bits is about 3 KiB.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// Reads the key file a query names: a regular file, at most [`MAX_KEY_FILE_BYTES`]. The name
/// comes from the request: `/dev/zero` must not grow the daemon's memory without end, nor a
/// FIFO block its runtime thread in `open`.
pub(super) fn read_key_file(path: &str) -> Result<String, BadRequest> {
    use std::io::Read as _;
    let cannot = |err: std::io::Error| {
        BadRequest(format!(
            "parameter \"public_key_file\": cannot read {path:?}: {err}"
        ))
    };
    if !std::fs::metadata(path).map_err(cannot)?.is_file() {
        return Err(BadRequest(format!(
            "parameter \"public_key_file\": {path:?} is not a regular file"
        )));
    }
    let mut pem = String::new();
    std::fs::File::open(path)
        .map_err(cannot)?
        .take(MAX_KEY_FILE_BYTES + 1)
        .read_to_string(&mut pem)
        .map_err(cannot)?;
    if pem.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(BadRequest(format!(
            "parameter \"public_key_file\": {path:?} is larger than {MAX_KEY_FILE_BYTES} bytes, \
             too large for a public key"
        )));
    }
    Ok(pem)
}

/// Reads and parses the public key file `path` (see [`read_key_file`]); the error names the
/// parameter and the path.
pub fn load_public_key(path: &str) -> Result<rsa::RsaPublicKey, BadRequest> {
    let pem = read_key_file(path)?;
    parse_public_key(&pem).map_err(|err| {
        BadRequest(format!(
            "parameter \"public_key_file\": {path:?} holds no RSA public key in PEM: {err}"
        ))
    })
}

/// A PEM RSA public key: SubjectPublicKeyInfo ("PUBLIC KEY", what iperf3 reads) or PKCS#1.
pub fn parse_public_key(pem: &str) -> Result<rsa::RsaPublicKey, String> {
    use rsa::{pkcs1::DecodeRsaPublicKey as _, pkcs8::DecodePublicKey as _};
    rsa::RsaPublicKey::from_public_key_pem(pem.trim())
        .or_else(|_| rsa::RsaPublicKey::from_pkcs1_pem(pem.trim()))
        .map_err(|err| err.to_string())
}

/// The base64 auth token for `auth`, stamped with the current time.
pub fn auth_token(auth: &Auth) -> Result<String, String> {
    use base64::Engine as _;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64);
    let text = protocol::auth_plaintext(&auth.username, &auth.password, now);
    let encrypted = match auth.padding {
        Padding::Pkcs1 => auth.public_key.encrypt(
            &mut crate::support::random::OsRng,
            rsa::Pkcs1v15Encrypt,
            text.as_bytes(),
        ),
        Padding::Oaep => auth.public_key.encrypt(
            &mut crate::support::random::OsRng,
            rsa::Oaep::new::<sha1::Sha1>(),
            text.as_bytes(),
        ),
    }
    .map_err(|err| format!("encrypting the auth token: {err}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(encrypted))
}
