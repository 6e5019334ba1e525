//! The `--web.config.file` format of the Prometheus exporter-toolkit (TLS, basic auth, response
//! headers): parsing and validation, without I/O beyond reading the file itself. The files it
//! names (certificate, key, client CA) are read by [`crate::web`] when it builds the TLS setup.
//!
//! Supported keys (any other key is an error naming it, as exporter-toolkit rejects unknown keys
//! too):
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt          # PEM certificate chain (required with tls_server_config)
//!   key_file: server.key           # PEM private key (PKCS#8, PKCS#1 or SEC1)
//!   client_auth_type: RequireAndVerifyClientCert   # or NoClientCert, VerifyClientCertIfGiven
//!   client_ca_file: ca.crt         # PEM CA certificates for client certificates
//!   min_version: TLS12             # TLS12 or TLS13
//!   max_version: TLS13
//! http_server_config:
//!   http2: false                   # accepted; only HTTP/1.1 is served
//!   headers: { X-Frame-Options: deny }
//! basic_auth_users:
//!   alice: $2y$10$...              # bcrypt hash
//! ```
//!
//! Relative file names are taken relative to the directory of the configuration file, as
//! exporter-toolkit does.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::Deserialize;

/// A validated web configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebConfig {
    /// Serve HTTPS with these settings; plain HTTP when absent.
    pub tls: Option<TlsSettings>,
    /// User name to bcrypt hash; empty means no authentication.
    pub basic_auth_users: BTreeMap<String, String>,
    /// Headers added to every response (name, value).
    pub headers: Vec<(String, String)>,
}

/// `tls_server_config`, validated; paths already resolved against the configuration's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_auth: ClientAuth,
    pub client_ca_file: Option<PathBuf>,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
}

/// The `client_auth_type` policies we implement. `RequestClientCert` and `RequireAnyClientCert`
/// accept certificates without verifying them, so they are refused rather than offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `NoClientCert`: no client certificate is asked for.
    None,
    /// `VerifyClientCertIfGiven`: a certificate is optional, but verified against the CA if sent.
    VerifyIfGiven,
    /// `RequireAndVerifyClientCert`: a certificate signed by the client CA is required.
    RequireAndVerify,
}

/// TLS protocol versions rustls speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// A configuration problem: the dotted key path and what is wrong with its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            // Field names hold the file's keys (user and header names), which YAML lets contain
            // line breaks; escaped, the error stays one line.
            write!(f, "{}: {}", self.field.escape_debug(), self.reason)
        }
    }
}

fn error(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Headers exporter-toolkit lets a configuration set, and the values it accepts for some.
const ALLOWED_HEADERS: &[(&str, Option<&[&str]>)] = &[
    ("Content-Security-Policy", None),
    ("X-Frame-Options", Some(&["deny", "sameorigin"])),
    ("X-Content-Type-Options", Some(&["nosniff"])),
    ("X-XSS-Protection", None),
    ("Strict-Transport-Security", None),
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    tls_server_config: Option<RawTls>,
    http_server_config: Option<RawHttp>,
    basic_auth_users: Option<BTreeMap<String, String>>,
    /// exporter-toolkit keys we do not implement are listed so that the error can name them.
    rate_limit: Option<yaml_serde::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: Option<String>,
    key_file: Option<String>,
    client_auth_type: Option<String>,
    client_ca_file: Option<String>,
    min_version: Option<String>,
    max_version: Option<String>,
    cert: Option<yaml_serde::Value>,
    key: Option<yaml_serde::Value>,
    client_ca: Option<yaml_serde::Value>,
    client_allowed_sans: Option<yaml_serde::Value>,
    cipher_suites: Option<yaml_serde::Value>,
    prefer_server_cipher_suites: Option<yaml_serde::Value>,
    curve_preferences: Option<yaml_serde::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    #[allow(dead_code)] // Accepted for compatibility; HTTP/2 is not served.
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

/// Reads and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<WebConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| error("", format!("cannot read the file: {err}")))?;
    let base = path.parent().unwrap_or_else(|| Path::new(""));
    parse(&text, base)
}

/// Parses and validates the YAML `text`; relative paths are resolved against `base`.
pub fn parse(text: &str, base: &Path) -> Result<WebConfig, ConfigError> {
    // An empty file (or only comments) is a valid configuration with nothing enabled.
    let value: yaml_serde::Value = yaml_serde::from_str(text).map_err(|err| {
        error(
            "",
            format!("not valid YAML: {}", one_line(&err.to_string())),
        )
    })?;
    if value.is_null() {
        return Ok(WebConfig::default());
    }
    let raw: RawFile =
        yaml_serde::from_value(value).map_err(|err| error("", one_line(&err.to_string())))?;

    let mut present = Vec::new();
    if raw.rate_limit.is_some() {
        present.push("rate_limit");
    }
    if let Some(tls) = &raw.tls_server_config {
        for (name, value) in [
            ("tls_server_config.cert", &tls.cert),
            ("tls_server_config.key", &tls.key),
            ("tls_server_config.client_ca", &tls.client_ca),
            (
                "tls_server_config.client_allowed_sans",
                &tls.client_allowed_sans,
            ),
            ("tls_server_config.cipher_suites", &tls.cipher_suites),
            (
                "tls_server_config.prefer_server_cipher_suites",
                &tls.prefer_server_cipher_suites,
            ),
            (
                "tls_server_config.curve_preferences",
                &tls.curve_preferences,
            ),
        ] {
            if value.is_some() {
                present.push(name);
            }
        }
    }
    if let Some(field) = present.first() {
        return Err(error(
            *field,
            "is not supported by network-probe (supported: tls_server_config.cert_file, \
             key_file, client_auth_type, client_ca_file, min_version, max_version; \
             http_server_config.headers; basic_auth_users)",
        ));
    }

    let tls = raw
        .tls_server_config
        .map(|tls| tls_settings(tls, base))
        .transpose()?;
    let basic_auth_users = raw.basic_auth_users.unwrap_or_default();
    for (user, hash) in &basic_auth_users {
        check_bcrypt_hash(hash)
            .map_err(|reason| error(format!("basic_auth_users.{user}"), reason))?;
        if user.contains(':') {
            return Err(error(
                format!("basic_auth_users.{user}"),
                "a user name cannot contain ':' (basic auth separates user and password with it)",
            ));
        }
    }
    let mut headers = Vec::new();
    for (name, value) in raw
        .http_server_config
        .and_then(|http| http.headers)
        .unwrap_or_default()
    {
        let field = format!("http_server_config.headers.{name}");
        let Some((_, allowed)) = ALLOWED_HEADERS.iter().find(|(known, _)| *known == name) else {
            let names: Vec<&str> = ALLOWED_HEADERS.iter().map(|(name, _)| *name).collect();
            return Err(error(
                field,
                format!("is not a header that can be set (use {})", names.join(", ")),
            ));
        };
        if let Some(allowed) = allowed
            && !value.is_empty()
            && !allowed.iter().any(|ok| ok.eq_ignore_ascii_case(&value))
        {
            return Err(error(
                field,
                format!("{value:?} is not allowed (use {})", allowed.join(" or ")),
            ));
        }
        if value.bytes().any(|b| b.is_ascii_control()) {
            return Err(error(
                field,
                format!("{value:?} contains control characters"),
            ));
        }
        // Blank means unset, as in exporter-toolkit.
        if !value.is_empty() {
            headers.push((name, value));
        }
    }
    Ok(WebConfig {
        tls,
        basic_auth_users,
        headers,
    })
}

fn tls_settings(raw: RawTls, base: &Path) -> Result<TlsSettings, ConfigError> {
    let required = |value: Option<String>, field: &str| match value {
        Some(value) if !value.is_empty() => Ok(base.join(value)),
        _ => Err(error(
            format!("tls_server_config.{field}"),
            "is required when tls_server_config is present",
        )),
    };
    let cert_file = required(raw.cert_file, "cert_file")?;
    let key_file = required(raw.key_file, "key_file")?;
    let client_auth = match raw.client_auth_type.as_deref() {
        None | Some("") | Some("NoClientCert") => ClientAuth::None,
        Some("VerifyClientCertIfGiven") => ClientAuth::VerifyIfGiven,
        Some("RequireAndVerifyClientCert") => ClientAuth::RequireAndVerify,
        Some(other @ ("RequestClientCert" | "RequireAnyClientCert")) => {
            return Err(error(
                "tls_server_config.client_auth_type",
                format!(
                    "{other:?} accepts client certificates without verifying them and is not \
                     supported (use RequireAndVerifyClientCert or VerifyClientCertIfGiven)"
                ),
            ));
        }
        Some(other) => {
            return Err(error(
                "tls_server_config.client_auth_type",
                format!(
                    "{other:?} is not a policy (use NoClientCert, VerifyClientCertIfGiven or \
                     RequireAndVerifyClientCert)"
                ),
            ));
        }
    };
    let client_ca_file = raw
        .client_ca_file
        .filter(|file| !file.is_empty())
        .map(|file| base.join(file));
    match (client_auth, &client_ca_file) {
        (ClientAuth::None, Some(_)) => {
            return Err(error(
                "tls_server_config.client_ca_file",
                "is set but client_auth_type is NoClientCert (set client_auth_type to \
                 RequireAndVerifyClientCert)",
            ));
        }
        (ClientAuth::VerifyIfGiven | ClientAuth::RequireAndVerify, None) => {
            return Err(error(
                "tls_server_config.client_ca_file",
                "is required to verify client certificates",
            ));
        }
        _ => {}
    }
    let version = |value: Option<String>, field: &str, default: TlsVersion| match value.as_deref() {
        None | Some("") => Ok(default),
        Some("TLS12") => Ok(TlsVersion::Tls12),
        Some("TLS13") => Ok(TlsVersion::Tls13),
        Some(other) => Err(error(
            format!("tls_server_config.{field}"),
            format!("{other:?} is not supported (use TLS12 or TLS13)"),
        )),
    };
    let min_version = version(raw.min_version, "min_version", TlsVersion::Tls12)?;
    let max_version = version(raw.max_version, "max_version", TlsVersion::Tls13)?;
    if min_version > max_version {
        return Err(error(
            "tls_server_config.min_version",
            "is above max_version",
        ));
    }
    Ok(TlsSettings {
        cert_file,
        key_file,
        client_auth,
        client_ca_file,
        min_version,
        max_version,
    })
}

/// Checks the shape of a bcrypt hash: `$2a$`, `$2b$` or `$2y$`, a two-digit cost from 04 to
/// 31, `$`, then 53 characters of bcrypt's base64 (22 of salt, 31 of hash). The value itself is
/// never echoed: a plain-text password put there by mistake must not reach the logs.
pub fn check_bcrypt_hash(hash: &str) -> Result<(), String> {
    let reason = || {
        format!(
            "the value ({} characters) is not a bcrypt hash like $2y$10$ followed by 53 \
             characters (make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`)",
            hash.chars().count()
        )
    };
    let bytes = hash.as_bytes();
    if bytes.len() != 60 {
        return Err(reason());
    }
    let prefix_ok = matches!(&bytes[..4], b"$2a$" | b"$2b$" | b"$2y$");
    let cost = std::str::from_utf8(&bytes[4..6])
        .ok()
        .filter(|cost| cost.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|cost| cost.parse::<u32>().ok());
    let body_ok = bytes[6] == b'$'
        && bytes[7..]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'.' || *b == b'/');
    if !prefix_ok || !body_ok {
        return Err(reason());
    }
    match cost {
        Some(4..=31) => Ok(()),
        _ => Err(format!(
            "cost {:?} is outside 04 to 31",
            String::from_utf8_lossy(&bytes[4..6])
        )),
    }
}

/// YAML parser errors can span lines; start-up errors are one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$2y$10$X0h1gDsPszWURQaxFh.zoubFi6DXncSjhoQNJgRrnGs7EsimhC7zG";

    fn parse_ok(text: &str) -> WebConfig {
        parse(text, Path::new("/etc/np")).unwrap()
    }

    fn parse_err(text: &str) -> String {
        parse(text, Path::new("/etc/np")).unwrap_err().to_string()
    }

    #[test]
    fn errors_stay_one_line_when_keys_hold_line_breaks() {
        // The one-line property of fuzz/fuzz_targets/web_config.rs caught it: a quoted user
        // name with "\n" (fuzz/regressions/web_config/).
        let err = parse_err("basic_auth_users:\n  \"a\\nb\": x\n");
        assert!(err.starts_with("basic_auth_users.a\\nb: "), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn empty_file_enables_nothing() {
        assert_eq!(parse_ok(""), WebConfig::default());
        assert_eq!(parse_ok("# nothing\n"), WebConfig::default());
    }

    #[test]
    fn full_configuration() {
        let config = parse_ok(&format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: /keys/server.key\n  \
             client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  \
             min_version: TLS13\nhttp_server_config:\n  http2: true\n  headers:\n    \
             X-Frame-Options: deny\n    Strict-Transport-Security: max-age=31536000\n    \
             X-XSS-Protection: ''\nbasic_auth_users:\n  alice: {HASH}\n"
        ));
        let tls = config.tls.unwrap();
        assert_eq!(tls.cert_file, Path::new("/etc/np/server.crt"));
        assert_eq!(tls.key_file, Path::new("/keys/server.key"));
        assert_eq!(
            tls.client_ca_file.as_deref(),
            Some(Path::new("/etc/np/ca.crt"))
        );
        assert_eq!(tls.client_auth, ClientAuth::RequireAndVerify);
        assert_eq!(tls.min_version, TlsVersion::Tls13);
        assert_eq!(tls.max_version, TlsVersion::Tls13);
        assert_eq!(config.basic_auth_users["alice"], HASH);
        assert_eq!(
            config.headers,
            [
                (
                    "Strict-Transport-Security".to_string(),
                    "max-age=31536000".to_string()
                ),
                ("X-Frame-Options".to_string(), "deny".to_string()),
            ]
        );
    }

    #[test]
    fn errors_name_the_field_and_value() {
        for (text, expected) in [
            ("tls_server_config: [", "not valid YAML"),
            (
                "tls_server_config:\n  key_file: k\n",
                "tls_server_config.cert_file: is required",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: Maybe\n",
                "tls_server_config.client_auth_type: \"Maybe\" is not a policy",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: RequireAnyClientCert\n",
                "\"RequireAnyClientCert\" accepts client certificates without verifying them",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: RequireAndVerifyClientCert\n",
                "tls_server_config.client_ca_file: is required",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_ca_file: ca\n",
                "tls_server_config.client_ca_file: is set but client_auth_type is NoClientCert",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  min_version: TLS10\n",
                "tls_server_config.min_version: \"TLS10\" is not supported",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  min_version: TLS13\n  max_version: TLS12\n",
                "tls_server_config.min_version: is above max_version",
            ),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  cert: inline\n",
                "tls_server_config.cert: is not supported by network-probe",
            ),
            ("rate_limit:\n  burst: 1\n", "rate_limit: is not supported"),
            (
                "tls_config:\n  cert_file: c\n",
                "unknown field `tls_config`",
            ),
            (
                "basic_auth_users:\n  bob: hunter2\n",
                "basic_auth_users.bob: the value (7 characters) is not a bcrypt hash",
            ),
            (
                "http_server_config:\n  headers:\n    Server: x\n",
                "http_server_config.headers.Server: is not a header that can be set",
            ),
            (
                "http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
                "http_server_config.headers.X-Frame-Options: \"allow\" is not allowed",
            ),
        ] {
            let err = parse_err(text);
            assert!(err.contains(expected), "{text:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn bcrypt_hash_shapes() {
        assert_eq!(check_bcrypt_hash(HASH), Ok(()));
        assert_eq!(check_bcrypt_hash(&HASH.replace("$2y$", "$2b$")), Ok(()));
        assert!(check_bcrypt_hash(&HASH.replace("$2y$", "$2x$")).is_err());
        assert!(
            check_bcrypt_hash(&HASH.replace("$10$", "$03$"))
                .unwrap_err()
                .contains("\"03\"")
        );
        assert!(check_bcrypt_hash(&HASH.replace("$10$", "$1a$")).is_err());
        assert!(check_bcrypt_hash(&HASH[..59]).is_err());
        assert!(check_bcrypt_hash(&HASH.replace('X', "!")).is_err());
        // Never echoes the value.
        let err = check_bcrypt_hash("my secret password").unwrap_err();
        assert!(!err.contains("secret"), "{err}");
        // Multi-byte text of the right length is refused, not sliced mid-character.
        assert!(check_bcrypt_hash(&"é".repeat(30)).is_err());
    }
}
