//! TLS 1.3 with mutual authentication, and the allowlist check after the handshake.
//!
//! Every bridge is both a TLS server (for peers that dial it) and a TLS client (for peers it
//! dials), with the same certificate ([`crate::certs`] makes suitable ones). Both sides present
//! a certificate and both check the other's:
//! - against the CA in `tls.ca` (rustls' `WebPkiClientVerifier` / `WebPkiServerVerifier`),
//! - or, with `tls.pinned`, by comparing the peer's end-entity certificate byte for byte with
//!   the pinned ones (and, when `tls.ca` is set too, also requiring it to chain to the CA); the
//!   handshake signatures are verified with the provider's algorithms as usual, so a peer must
//!   hold the pinned certificate's private key.
//!
//! A client dials a peer under the peer's configured name (the TLS server name), so a server
//! certificate must be valid for that name. After the handshake, [`authorize`] takes the
//! peer's certificate and returns the first name of the allowlist it is valid for: a peer that
//! fails authentication never completes the handshake, and one that is not on the allowlist
//! must be dropped by the caller without a single byte of mirrored data.
//!
//! Only TLS 1.3 is offered and accepted, with rustls' `ring` provider.
//!
//! # Examples
//!
//! ```no_run
//! use std::net::TcpStream;
//! use shmesh_bridge::config::Config;
//! use shmesh_bridge::tls::{authorize, TlsIdentity};
//!
//! let config = Config::from_file("bridge.toml")?;
//! let tls = config.tls.as_ref().expect("TLS enabled");
//! let identity = TlsIdentity::load(tls)?;
//! let peer = &config.peers[0];
//! let mut conn = identity.connect(&peer.name)?;
//! let mut sock = TcpStream::connect(peer.address.expect("an address to dial"))?;
//! while conn.is_handshaking() {
//!     conn.complete_io(&mut sock)?;
//! }
//! let name = authorize(&conn, &tls.allow)?;
//! assert_eq!(name, peer.name);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
};

use crate::config::TlsConfig;

/// This bridge's TLS identity and trust, loaded from the files a [`TlsConfig`] names: ready
/// to make server and client connections. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TlsIdentity {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

/// Why a [`TlsIdentity`] could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read the {what} file {}: {source}", path.display())]
    Io {
        /// Which file: `"certificate"`, `"key"`, `"CA"`, `"pinned certificate"`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A file does not hold what it should.
    #[error("the {what} file {}: {problem}", path.display())]
    BadFile {
        /// Which file: `"certificate"`, `"key"`, `"CA"`, `"pinned certificate"`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong (no PEM certificate in it, no private key, malformed PEM, ...).
        problem: String,
    },
    /// rustls refused the certificates or key (e.g. the key does not belong to the
    /// certificate, or a CA certificate cannot be a trust anchor).
    #[error("{what}: {source}")]
    Rustls {
        /// What was being set up.
        what: String,
        /// rustls' error.
        #[source]
        source: rustls::Error,
    },
    /// The certificate verifier could not be built from the CA.
    #[error("cannot check peers against the CA {}: {source}", path.display())]
    Verifier {
        /// The CA file.
        path: PathBuf,
        /// rustls' error.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
}

/// Why an authenticated peer is not let in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The handshake has not finished, so nothing is known about the peer yet.
    #[error("the TLS handshake has not finished: authorize the peer after it")]
    Handshaking,
    /// The peer presented no certificate (cannot happen after a successful handshake with a
    /// [`TlsIdentity`]'s configs, which require one).
    #[error("the peer presented no certificate")]
    NoCertificate,
    /// The peer's certificate cannot be parsed.
    #[error("the peer's certificate cannot be parsed: {0}")]
    BadCertificate(String),
    /// The peer's certificate is valid for none of the allowed names.
    #[error(
        "the peer's certificate is for {names_in_cert:?}, none of which is allowed (tls.allow = \
         {allow:?}): add the peer's name to tls.allow if it should be accepted"
    )]
    NotAllowed {
        /// The DNS names the certificate carries.
        names_in_cert: Vec<String>,
        /// The allowlist it was checked against.
        allow: Vec<String>,
    },
}

impl TlsIdentity {
    /// Reads this bridge's certificate chain and key, the CA and the pinned certificates, and
    /// builds the server and client configurations (TLS 1.3 only, client certificates
    /// required).
    ///
    /// # Errors
    ///
    /// [`TlsError::Io`] when a file cannot be read, [`TlsError::BadFile`] when it holds no
    /// usable PEM item, [`TlsError::Rustls`] when rustls refuses the key or a certificate,
    /// [`TlsError::Verifier`] when no verifier can be built from the CA.
    pub fn load(config: &TlsConfig) -> Result<TlsIdentity, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = read_certs("certificate", &config.cert)?;
        let key = read_key(&config.key)?;

        let roots = config
            .ca
            .as_deref()
            .map(|path| read_roots(path).map(|roots| (path, Arc::new(roots))))
            .transpose()?;
        let mut pinned = Vec::with_capacity(config.pinned.len());
        for path in &config.pinned {
            let mut certs = read_certs("pinned certificate", path)?;
            // A pinned file holds the peer's end-entity certificate first (a chain file works).
            pinned.push(certs.swap_remove(0));
        }

        let verifier_err = |path: &Path| {
            let path = path.to_owned();
            move |source| TlsError::Verifier { path, source }
        };
        let ca_client_verifier = roots
            .as_ref()
            .map(|(path, roots)| {
                WebPkiClientVerifier::builder_with_provider(Arc::clone(roots), provider.clone())
                    .build()
                    .map_err(verifier_err(path))
            })
            .transpose()?;
        let ca_server_verifier = roots
            .as_ref()
            .map(|(path, roots)| {
                WebPkiServerVerifier::builder_with_provider(Arc::clone(roots), provider.clone())
                    .build()
                    .map_err(verifier_err(path))
            })
            .transpose()?;

        let (client_verifier, server_verifier): (
            Arc<dyn ClientCertVerifier>,
            Arc<dyn ServerCertVerifier>,
        ) = if pinned.is_empty() {
            match (ca_client_verifier, ca_server_verifier) {
                (Some(c), Some(s)) => (c, s),
                _ => {
                    return Err(TlsError::BadFile {
                        what: "certificate",
                        path: config.cert.clone(),
                        problem: "neither `tls.ca` nor `tls.pinned` is set: nothing to check \
                                  peers against"
                            .into(),
                    })
                }
            }
        } else {
            let pinned = Arc::new(pinned);
            (
                Arc::new(PinnedClientVerifier {
                    pinned: Arc::clone(&pinned),
                    ca: ca_client_verifier,
                    provider: provider.clone(),
                }),
                Arc::new(PinnedServerVerifier {
                    pinned,
                    ca: ca_server_verifier,
                    provider: provider.clone(),
                }),
            )
        };

        let rustls_err = |what: &str| {
            let what = what.to_owned();
            move |source| TlsError::Rustls { what, source }
        };
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(rustls_err("TLS 1.3 with the ring provider"))?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(rustls_err(&format!(
                "the certificate {} with the key {}",
                config.cert.display(),
                config.key.display()
            )))?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(rustls_err("TLS 1.3 with the ring provider"))?
            .dangerous()
            .with_custom_certificate_verifier(server_verifier)
            .with_client_auth_cert(chain, key)
            .map_err(rustls_err(&format!(
                "the certificate {} with the key {}",
                config.cert.display(),
                config.key.display()
            )))?;
        Ok(TlsIdentity {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// The configuration for accepting peers: TLS 1.3 only, a client certificate required and
    /// checked against the CA or the pinned certificates.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.server)
    }

    /// The configuration for dialing peers: TLS 1.3 only, this bridge's certificate offered,
    /// the server's checked against the CA or the pinned certificates and the name dialed.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.client)
    }

    /// A new server side of a connection, for a peer that dialed in.
    ///
    /// # Errors
    ///
    /// rustls' error (none is expected with these configs).
    pub fn accept(&self) -> Result<rustls::ServerConnection, rustls::Error> {
        rustls::ServerConnection::new(self.server_config())
    }

    /// A new client side of a connection to the peer named `peer` (its configured name, which
    /// its certificate must carry).
    ///
    /// # Errors
    ///
    /// [`rustls::Error::General`] if `peer` is not a DNS name (the config checks that).
    pub fn connect(&self, peer: &str) -> Result<rustls::ClientConnection, rustls::Error> {
        let name = ServerName::try_from(peer.to_owned()).map_err(|e| {
            rustls::Error::General(format!("{peer:?} cannot be a TLS server name: {e}"))
        })?;
        rustls::ClientConnection::new(self.client_config(), name)
    }
}

/// After the handshake: the first name in `allow` the peer's end-entity certificate is valid
/// for (a DNS SAN, checked as rustls checks server names). Call it on either side of a
/// connection (`&ServerConnection` and `&ClientConnection` dereference to
/// [`rustls::CommonState`]) and drop the connection on an error.
///
/// # Errors
///
/// [`AuthError::Handshaking`] before the handshake finished, [`AuthError::NoCertificate`],
/// [`AuthError::BadCertificate`], [`AuthError::NotAllowed`] listing the certificate's names.
pub fn authorize(conn: &rustls::CommonState, allow: &[String]) -> Result<String, AuthError> {
    if conn.is_handshaking() {
        return Err(AuthError::Handshaking);
    }
    let der = conn
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or(AuthError::NoCertificate)?;
    let cert = webpki::EndEntityCert::try_from(der)
        .map_err(|e| AuthError::BadCertificate(e.to_string()))?;
    for name in allow {
        let Ok(server_name) = ServerName::try_from(name.as_str()) else {
            continue;
        };
        if cert.verify_is_valid_for_subject_name(&server_name).is_ok() {
            return Ok(name.clone());
        }
    }
    Err(AuthError::NotAllowed {
        names_in_cert: dns_names(der),
        allow: allow.to_vec(),
    })
}

/// The DNS names of a certificate's subject alternative names (for error messages).
fn dns_names(der: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(s) => Some((*s).to_owned()),
            _ => None,
        })
        .collect()
}

// ---- reading PEM files ----

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Io {
        what,
        path: path.to_owned(),
        source,
    })
}

fn bad(what: &'static str, path: &Path, problem: impl Into<String>) -> TlsError {
    TlsError::BadFile {
        what,
        path: path.to_owned(),
        problem: problem.into(),
    }
}

/// All certificates of a PEM file, at least one.
fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(what, path)?;
    let certs = rustls_pemfile::certs(&mut bytes.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(what, path, format!("malformed PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad(
            what,
            path,
            "holds no PEM certificate (a \"-----BEGIN CERTIFICATE-----\" block)",
        ));
    }
    Ok(certs)
}

/// The first private key of a PEM file.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read("key", path)?;
    rustls_pemfile::private_key(&mut bytes.as_slice())
        .map_err(|e| bad("key", path, format!("malformed PEM: {e}")))?
        .ok_or_else(|| {
            bad(
                "key",
                path,
                "holds no PEM private key (a \"-----BEGIN PRIVATE KEY-----\", \"RSA PRIVATE \
                 KEY\" or \"EC PRIVATE KEY\" block)",
            )
        })
}

/// The CA certificates of a PEM file as trust anchors.
fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs("CA", path)? {
        roots.add(cert).map_err(|source| TlsError::Rustls {
            what: format!("a certificate in the CA file {}", path.display()),
            source,
        })?;
    }
    Ok(roots)
}

// ---- pinned certificates ----

fn is_pinned(pinned: &[CertificateDer<'static>], end_entity: &CertificateDer<'_>) -> bool {
    pinned.iter().any(|p| p.as_ref() == end_entity.as_ref())
}

fn not_pinned() -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
}

fn no_tls12() -> rustls::Error {
    rustls::Error::PeerIncompatible(rustls::PeerIncompatible::SupportedVersionsExtensionRequired)
}

/// Accepts client certificates that are exactly one of the pinned ones (and chain to the CA,
/// if one is configured).
struct PinnedClientVerifier {
    pinned: Arc<Vec<CertificateDer<'static>>>,
    ca: Option<Arc<dyn ClientCertVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for PinnedClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedClientVerifier")
            .field("pinned", &self.pinned.len())
            .field("ca", &self.ca.is_some())
            .finish()
    }
}

impl ClientCertVerifier for PinnedClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        match &self.ca {
            Some(ca) => ca.root_hint_subjects(),
            None => &[],
        }
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if !is_pinned(&self.pinned, end_entity) {
            return Err(not_pinned());
        }
        if let Some(ca) = &self.ca {
            ca.verify_client_cert(end_entity, intermediates, now)?;
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(no_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
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

/// Accepts server certificates that are exactly one of the pinned ones and valid for the name
/// dialed (and chain to the CA, if one is configured).
struct PinnedServerVerifier {
    pinned: Arc<Vec<CertificateDer<'static>>>,
    ca: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for PinnedServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedServerVerifier")
            .field("pinned", &self.pinned.len())
            .field("ca", &self.ca.is_some())
            .finish()
    }
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !is_pinned(&self.pinned, end_entity) {
            return Err(not_pinned());
        }
        match &self.ca {
            Some(ca) => {
                ca.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
            }
            None => {
                let cert = webpki::EndEntityCert::try_from(end_entity).map_err(|_| {
                    rustls::Error::InvalidCertificate(CertificateError::BadEncoding)
                })?;
                cert.verify_is_valid_for_subject_name(server_name)
                    .map_err(|_| {
                        rustls::Error::InvalidCertificate(CertificateError::NotValidForName)
                    })?;
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(no_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
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
