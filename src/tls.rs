//! TLS to PostgreSQL and Redis, with rustls and the ring provider.
//!
//! PostgreSQL follows libpq's `sslmode`: `disable`; `prefer` (the default) and `require` encrypt
//! without checking the certificate, unless a CA is given, when they check it as `verify-ca`
//! does; `verify-ca` checks the chain; `verify-full` checks the chain and the host name. The CA
//! is the URL's `sslrootcert`, else `database.ca_file`, else the system's roots. Redis uses TLS
//! for `rediss://` URLs, always verifying, against `redis.ca_file` or the system's roots.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

/// How much of the server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    /// Encrypt, but accept any certificate (libpq's `prefer` and `require` without a CA).
    Nothing,
    /// The chain must lead to a trusted root; the host name is not compared.
    Chain,
    /// The chain, and the certificate must name the host connected to.
    Full,
}

/// A PostgreSQL URL made fit for tokio-postgres, and the TLS it asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct PgTls {
    /// The URL with `sslmode=verify-*` turned into `require` and `sslrootcert` taken out.
    pub url: String,
    /// What is checked when the connection is encrypted.
    pub verify: Verify,
    /// The CA bundle named by `sslrootcert`, unless it is `system`.
    pub root_cert: Option<PathBuf>,
}

/// Reads `sslmode` and `sslrootcert` out of a PostgreSQL URL or `key=value` string, which
/// tokio-postgres does not understand beyond `disable`, `prefer` and `require`.
pub fn parse_pg(url: &str, ca_file: Option<&Path>) -> anyhow::Result<PgTls> {
    let mut mode = None;
    let mut root = None;
    let rewritten = if let Some((base, query)) = url.split_once('?').filter(|_| url.contains("://"))
    {
        let mut kept = Vec::new();
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("sslmode", v)) => mode = Some(v.to_owned()),
                Some(("sslrootcert", v)) => root = Some(decode(v)),
                _ => kept.push(pair),
            }
        }
        if let Some(m) = &mode {
            kept.push(pg_mode(m)?);
        }
        if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        }
    } else if url.contains("://") {
        url.to_owned()
    } else {
        // key=value form; values written without quotes.
        let mut kept = Vec::new();
        for word in url.split_whitespace() {
            match word.split_once('=') {
                Some(("sslmode", v)) => {
                    mode = Some(v.to_owned());
                    kept.push(format!(
                        "sslmode={}",
                        pg_mode(v)?.trim_start_matches("sslmode=")
                    ));
                }
                Some(("sslrootcert", v)) => root = Some(v.to_owned()),
                _ => kept.push(word.to_owned()),
            }
        }
        kept.join(" ")
    };
    let root_cert = match root.as_deref() {
        Some("system") => None,
        Some(path) => Some(PathBuf::from(path)),
        None => ca_file.map(Path::to_path_buf),
    };
    let has_ca = root_cert.is_some();
    let verify = match mode.as_deref() {
        Some("verify-full") => Verify::Full,
        Some("verify-ca") => Verify::Chain,
        // As libpq: with a CA given, `require` checks the chain.
        _ if has_ca => Verify::Chain,
        _ => Verify::Nothing,
    };
    Ok(PgTls {
        url: rewritten,
        verify,
        root_cert,
    })
}

/// The `sslmode` pair tokio-postgres gets for the one written in the URL.
fn pg_mode(mode: &str) -> anyhow::Result<&'static str> {
    match mode {
        "disable" => Ok("sslmode=disable"),
        "prefer" | "allow" => Ok("sslmode=prefer"),
        "require" | "verify-ca" | "verify-full" => Ok("sslmode=require"),
        other => anyhow::bail!(
            "database.url: sslmode `{other}` is not one of disable, prefer, require, verify-ca, verify-full"
        ),
    }
}

fn decode(v: &str) -> String {
    percent_encoding::percent_decode_str(v)
        .decode_utf8_lossy()
        .into_owned()
}

/// The connector for tokio-postgres: rustls configured as the URL asks.
pub fn postgres(tls: &PgTls) -> anyhow::Result<MakeRustlsConnect> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let chain = match tls.verify {
        Verify::Nothing => None,
        Verify::Chain | Verify::Full => {
            let roots = roots(tls.root_cert.as_deref(), "database")?;
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .context("building the PostgreSQL certificate verifier")?;
            Some(webpki)
        }
    };
    let config = match chain {
        Some(webpki) if tls.verify == Verify::Full => {
            builder.with_webpki_verifier(webpki).with_no_client_auth()
        }
        chain => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Lenient { chain, provider }))
            .with_no_client_auth(),
    };
    Ok(MakeRustlsConnect::new(config))
}

/// Trust anchors: the PEM bundle `file`, or the system's (the same store the redis crate reads,
/// so both stores trust the same roots; an operator adds a private CA the usual way).
pub fn roots(file: Option<&Path>, section: &str) -> anyhow::Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    if let Some(file) = file {
        let certs = CertificateDer::pem_file_iter(file)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("{section}: reading the CA file {}", file.display()))?;
        let (added, _) = store.add_parsable_certificates(certs);
        anyhow::ensure!(
            added > 0,
            "{section}: the CA file {} holds no usable certificate",
            file.display()
        );
        return Ok(store);
    }
    let found = rustls_native_certs::load_native_certs();
    store.add_parsable_certificates(found.certs);
    anyhow::ensure!(
        !store.is_empty(),
        "{section}: no system CA certificates found (install ca-certificates, or set {section}.ca_file)"
    );
    Ok(store)
}

/// The Redis client: TLS for `rediss://`, with `ca_file` as the only root when given.
pub fn redis_client(url: &str, ca_file: Option<&Path>) -> anyhow::Result<redis::Client> {
    let invalid = |e: redis::RedisError| anyhow::anyhow!("redis.url is not a valid Redis URL: {e}");
    match ca_file {
        Some(file) if url.starts_with("rediss://") => {
            let pem = std::fs::read(file)
                .with_context(|| format!("redis: reading the CA file {}", file.display()))?;
            roots(Some(file), "redis")?;
            redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
            .map_err(invalid)
        }
        Some(_) => {
            anyhow::bail!("redis.ca_file is set but redis.url does not start with rediss://")
        }
        None => redis::Client::open(url).map_err(invalid),
    }
}

/// libpq's `require` (no `chain`): any certificate, as long as the server holds its key.
/// `verify-ca` (a `chain`): the full check, except that a certificate naming another host passes.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            // The name is compared only after the chain has been verified.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_is_read_and_rewritten() {
        let t = parse_pg(
            "postgres://u@db/x?sslmode=verify-full&application_name=a",
            None,
        )
        .unwrap();
        assert_eq!(
            t.url,
            "postgres://u@db/x?application_name=a&sslmode=require"
        );
        assert_eq!(t.verify, Verify::Full);
        assert_eq!(t.root_cert, None);

        let t = parse_pg(
            "postgres://u@db/x?sslmode=verify-ca&sslrootcert=%2Fetc%2Fca.pem",
            Some(Path::new("/other.pem")),
        )
        .unwrap();
        assert_eq!(t.url, "postgres://u@db/x?sslmode=require");
        assert_eq!(t.verify, Verify::Chain);
        assert_eq!(t.root_cert, Some(PathBuf::from("/etc/ca.pem")));

        // require checks the chain once a CA is given, as libpq does
        let t = parse_pg(
            "postgres://u@db/x?sslmode=require",
            Some(Path::new("/ca.pem")),
        )
        .unwrap();
        assert_eq!(t.verify, Verify::Chain);
        let t = parse_pg("postgres://u@db/x?sslmode=require", None).unwrap();
        assert_eq!(t.verify, Verify::Nothing);
        let t = parse_pg(
            "postgres://u@db/x?sslrootcert=system&sslmode=verify-full",
            None,
        )
        .unwrap();
        assert_eq!((t.verify, t.root_cert), (Verify::Full, None));

        let t = parse_pg("postgres://u@db/x", None).unwrap();
        assert_eq!(t.url, "postgres://u@db/x");

        let t = parse_pg(
            "host=db user=u sslmode=verify-full sslrootcert=/ca.pem",
            None,
        )
        .unwrap();
        assert_eq!(t.url, "host=db user=u sslmode=require");
        assert_eq!(t.verify, Verify::Full);
        assert_eq!(t.root_cert, Some(PathBuf::from("/ca.pem")));

        let err = parse_pg("postgres://u@db/x?sslmode=verify", None).unwrap_err();
        assert!(err.to_string().contains("verify-full"), "{err}");
    }
}
