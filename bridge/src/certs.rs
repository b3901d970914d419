//! Certificates for a set of bridges: one private CA, and per host a leaf certificate its
//! bridge presents both as a TLS server and as a TLS client (`shmesh-bridge gen-certs`).
//!
//! [`generate`] writes into one directory:
//! - `ca.pem`, `ca.key`: the CA (ECDSA P-256, valid 20 years). Made on the first run and reused
//!   by later ones, so hosts can be added to an existing deployment;
//! - `<name>.pem`, `<name>.key` per host: a certificate with the DNS subject alternative name
//!   `<name>` and the extended key usages serverAuth and clientAuth, signed by the CA (valid 10
//!   years), and its key. Re-running for an existing name replaces both.
//!
//! Key files are written with mode 0600 (and `ca.key` should stay on the machine that issues
//! certificates: a bridge needs only `ca.pem`, its own `.pem` and its own `.key`).
//!
//! # Examples
//!
//! ```
//! use shmesh_bridge::certs;
//!
//! let dir = tempfile::tempdir()?;
//! let made = certs::generate(dir.path(), &["host-a".to_owned(), "host-b".to_owned()])?;
//! assert!(!made.ca_reused);
//! assert_eq!(made.hosts[1].cert, dir.path().join("host-b.pem"));
//! // A later run adds a host under the same CA.
//! let more = certs::generate(dir.path(), &["host-c".to_owned()])?;
//! assert!(more.ca_reused);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// File name of the CA certificate in the output directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key in the output directory.
pub const CA_KEY_FILE: &str = "ca.key";

/// How long a new CA certificate is valid.
const CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
/// How long a new host certificate is valid.
const HOST_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates are valid from this long before they are made, so a peer whose clock is a bit
/// behind accepts them at once.
const BACKDATE: Duration = Duration::from_secs(24 * 3600);

/// What [`generate`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedCerts {
    /// The CA certificate (`ca.pem`): what every bridge's `tls.ca` points to.
    pub ca_cert: PathBuf,
    /// The CA private key (`ca.key`, mode 0600).
    pub ca_key: PathBuf,
    /// Whether an existing CA was reused instead of made.
    pub ca_reused: bool,
    /// One entry per requested name, in order.
    pub hosts: Vec<HostCert>,
}

/// The certificate and key of one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCert {
    /// The host's name, the certificate's DNS subject alternative name.
    pub name: String,
    /// `<name>.pem`: the certificate (the bridge's `tls.cert`).
    pub cert: PathBuf,
    /// `<name>.key`: its private key, mode 0600 (the bridge's `tls.key`).
    pub key: PathBuf,
}

/// Why certificates could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A requested name cannot be a certificate's DNS name.
    #[error("cannot make a certificate for {name:?}: {problem}")]
    InvalidName {
        /// The name.
        name: String,
        /// What is wrong with it.
        problem: String,
    },
    /// No names were given.
    #[error("no host names given: name at least one bridge to make a certificate for")]
    NoNames,
    /// A file or directory could not be read or written.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done (`"create directory"`, `"read"`, `"write"`, ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Only one of `ca.pem` and `ca.key` exists in the directory.
    #[error(
        "{} exists but {} does not: restore the missing file, or remove {} to make a new CA \
         (then every host needs a new certificate)",
        present.display(), missing.display(), present.display()
    )]
    CaIncomplete {
        /// The file that exists.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
    /// The existing CA certificate or key cannot be used.
    #[error("cannot reuse the CA in {}: {problem}", dir.display())]
    BadCa {
        /// The directory holding `ca.pem` and `ca.key`.
        dir: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// rcgen could not make a key or certificate.
    #[error("cannot make {what}: {source}")]
    Generate {
        /// What was being made.
        what: String,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },
}

/// Makes (or reuses) a CA in `dir` and a certificate and key for each of `names` signed by it.
/// Creates `dir` if needed.
///
/// # Errors
///
/// [`CertError::NoNames`], [`CertError::InvalidName`] (checked before anything is written),
/// [`CertError::CaIncomplete`] or [`CertError::BadCa`] when an existing CA cannot be reused,
/// [`CertError::Io`], [`CertError::Generate`].
pub fn generate(dir: &Path, names: &[String]) -> Result<GeneratedCerts, CertError> {
    if names.is_empty() {
        return Err(CertError::NoNames);
    }
    for (i, name) in names.iter().enumerate() {
        crate::config::check_dns_name(name).map_err(|problem| CertError::InvalidName {
            name: name.clone(),
            problem,
        })?;
        if name == "ca" {
            return Err(CertError::InvalidName {
                name: name.clone(),
                problem: "its files would overwrite the CA's ca.pem and ca.key".into(),
            });
        }
        if names[..i].contains(name) {
            return Err(CertError::InvalidName {
                name: name.clone(),
                problem: "it is given twice".into(),
            });
        }
    }
    fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;

    let ca_cert = dir.join(CA_CERT_FILE);
    let ca_key = dir.join(CA_KEY_FILE);
    let now = SystemTime::now();
    let (issuer, ca_reused) = match (ca_cert.exists(), ca_key.exists()) {
        (true, true) => (load_ca(dir, &ca_cert, &ca_key)?, true),
        (false, false) => (make_ca(now, &ca_cert, &ca_key)?, false),
        (true, false) => {
            return Err(CertError::CaIncomplete {
                present: ca_cert,
                missing: ca_key,
            })
        }
        (false, true) => {
            return Err(CertError::CaIncomplete {
                present: ca_key,
                missing: ca_cert,
            })
        }
    };

    let mut hosts = Vec::with_capacity(names.len());
    for name in names {
        let key = KeyPair::generate().map_err(gen_err(format!("a key for {name:?}")))?;
        let mut params = CertificateParams::new(vec![name.clone()])
            .map_err(gen_err(format!("a certificate for {name:?}")))?;
        params
            .distinguished_name
            .push(DnType::CommonName, name.as_str());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + HOST_VALIDITY).into();
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(gen_err(format!("a certificate for {name:?}")))?;
        let host = HostCert {
            name: name.clone(),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        };
        write_file(&host.key, key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&host.cert, cert.pem().as_bytes(), 0o644)?;
        hosts.push(host);
    }
    Ok(GeneratedCerts {
        ca_cert,
        ca_key,
        ca_reused,
        hosts,
    })
}

/// Makes a new CA and writes `ca.pem` and `ca.key`.
fn make_ca(
    now: SystemTime,
    cert_path: &Path,
    key_path: &Path,
) -> Result<Issuer<'static, KeyPair>, CertError> {
    let key = KeyPair::generate().map_err(gen_err("the CA key".into()))?;
    let mut params = CertificateParams::new(Vec::<String>::new())
        .map_err(gen_err("the CA certificate".into()))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    // A name of its own for each CA (from its public key): a certificate from another
    // shmesh-bridge CA is then reported as from an unknown issuer, not as a bad signature.
    let id: String = key.public_key_raw()[1..9]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("shmesh-bridge CA {id}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + CA_VALIDITY).into();
    let cert = params
        .self_signed(&key)
        .map_err(gen_err("the CA certificate".into()))?;
    // The key first: a crash between the two leaves `CaIncomplete`, never a CA without its key
    // that later runs would have to refuse anyway.
    write_file(key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(Issuer::new(params, key))
}

/// Reads an existing CA and checks its key belongs to its certificate.
fn load_ca(
    dir: &Path,
    cert_path: &Path,
    key_path: &Path,
) -> Result<Issuer<'static, KeyPair>, CertError> {
    let bad = |problem: String| CertError::BadCa {
        dir: dir.to_owned(),
        problem,
    };
    let cert_pem = fs::read_to_string(cert_path).map_err(io_err("read", cert_path))?;
    let key_pem = fs::read_to_string(key_path).map_err(io_err("read", key_path))?;
    let key = KeyPair::from_pem(&key_pem).map_err(|e| {
        bad(format!(
            "{CA_KEY_FILE} is not a PEM private key rcgen can use: {e}"
        ))
    })?;
    let der = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .next()
        .ok_or_else(|| bad(format!("{CA_CERT_FILE} holds no PEM certificate")))?
        .map_err(|e| bad(format!("{CA_CERT_FILE} is not valid PEM: {e}")))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| bad(format!("{CA_CERT_FILE} is not an X.509 certificate: {e}")))?;
    if !parsed.is_ca() {
        return Err(bad(format!("{CA_CERT_FILE} is not a CA certificate")));
    }
    if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(bad(format!(
            "{CA_KEY_FILE} is not the key of {CA_CERT_FILE}: restore the matching pair"
        )));
    }
    Issuer::from_ca_cert_der(&der, key)
        .map_err(|e| bad(format!("{CA_CERT_FILE} cannot sign certificates: {e}")))
}

/// Writes `bytes` to `path` with `mode`: into a temporary file in the same directory created
/// with that mode, then renamed over `path`, so a key is never readable by others, not even
/// while it is written or when `path` existed with a wider mode.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| {
        let _ = fs::remove_file(&tmp);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        // The umask may have narrowed the mode; make it exact.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_err("chmod", &tmp))?;
        file.write_all(bytes).map_err(io_err("write", &tmp))?;
        file.sync_all().map_err(io_err("sync", &tmp))?;
        fs::rename(&tmp, path).map_err(io_err("rename into place", path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CertError {
    let path = path.to_owned();
    move |source| CertError::Io { op, path, source }
}

fn gen_err(what: String) -> impl FnOnce(rcgen::Error) -> CertError {
    move |source| CertError::Generate { what, source }
}
