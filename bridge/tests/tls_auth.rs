//! Mutual TLS 1.3 between two bridges over a real loopback TCP connection, with certificates
//! made by `certs::generate`: who gets in, who is refused where, and what a refused peer
//! receives (nothing).

use std::fs;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;

use rustls::{ClientConfig, ServerConfig};
use shmesh_bridge::certs::{self, CertError};
use shmesh_bridge::config::TlsConfig;
use shmesh_bridge::tls::{authorize, AuthError, TlsError, TlsIdentity};
use shmesh_testkit::{Watchdog, DEADLINE};

const REQUEST: &[u8] = b"hello from the client";
const REPLY: &[u8] = b"hello from the server";

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// A directory of generated certificates.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new(hosts: &[&str]) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        certs::generate(dir.path(), &names(hosts)).unwrap();
        Pki { dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// The TLS config of bridge `name`, trusting this CA.
    fn tls(&self, name: &str, allow: &[&str]) -> TlsConfig {
        TlsConfig {
            cert: self.path(&format!("{name}.pem")),
            key: self.path(&format!("{name}.key")),
            ca: Some(self.path("ca.pem")),
            pinned: Vec::new(),
            allow: names(allow),
        }
    }

    /// The TLS config of bridge `name`, trusting exactly the certificates of `pinned`.
    fn pinned(&self, name: &str, pinned: &[&str], allow: &[&str]) -> TlsConfig {
        TlsConfig {
            ca: None,
            pinned: pinned
                .iter()
                .map(|p| self.path(&format!("{p}.pem")))
                .collect(),
            ..self.tls(name, allow)
        }
    }
}

/// What one side of a connection saw.
#[derive(Debug)]
enum Outcome {
    /// The handshake failed with this error.
    HandshakeFailed(io::Error),
    /// The handshake finished but `authorize` refused the peer; no data was exchanged.
    Refused(AuthError),
    /// The peer was authorized as this name, and these bytes arrived from it.
    Talked { peer: String, received: Vec<u8> },
}

impl Outcome {
    /// The rustls error a failed handshake carries.
    fn tls_error(&self) -> &rustls::Error {
        match self {
            Outcome::HandshakeFailed(e) => e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .unwrap_or_else(|| panic!("not a TLS error: {e}")),
            other => panic!("expected a failed handshake, got {other:?}"),
        }
    }
}

fn with_deadline(sock: &TcpStream) {
    sock.set_read_timeout(Some(DEADLINE)).unwrap();
    sock.set_write_timeout(Some(DEADLINE)).unwrap();
}

/// Runs a handshake and, if both sides authorize each other, one request and one reply, on a
/// real loopback connection: the server in one thread, the client in another.
fn run(
    server: Arc<ServerConfig>,
    server_allow: &[&str],
    client: Arc<ClientConfig>,
    client_allow: &[&str],
    dial_name: &str,
) -> (Outcome, Outcome) {
    let _watchdog = Watchdog::new("tls handshake", DEADLINE * 2);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server_allow = names(server_allow);
    let client_allow = names(client_allow);
    let dial_name = rustls::pki_types::ServerName::try_from(dial_name.to_owned()).unwrap();

    let server = thread::spawn(move || {
        let (mut sock, _) = listener.accept().unwrap();
        with_deadline(&sock);
        let mut conn = rustls::ServerConnection::new(server).unwrap();
        while conn.is_handshaking() {
            if let Err(e) = conn.complete_io(&mut sock) {
                return Outcome::HandshakeFailed(e);
            }
        }
        let peer = match authorize(&conn, &server_allow) {
            Ok(peer) => peer,
            // A refused peer gets nothing: the connection is dropped unread and unanswered.
            Err(e) => return Outcome::Refused(e),
        };
        let mut stream = rustls::StreamOwned::new(conn, sock);
        let mut received = vec![0; REQUEST.len()];
        stream.read_exact(&mut received).unwrap();
        stream.write_all(REPLY).unwrap();
        stream.conn.send_close_notify();
        stream.flush().unwrap();
        Outcome::Talked { peer, received }
    });

    let client = thread::spawn(move || {
        let mut sock = TcpStream::connect(addr).unwrap();
        with_deadline(&sock);
        let mut conn = rustls::ClientConnection::new(client, dial_name).unwrap();
        while conn.is_handshaking() {
            if let Err(e) = conn.complete_io(&mut sock) {
                return Outcome::HandshakeFailed(e);
            }
        }
        let peer = match authorize(&conn, &client_allow) {
            Ok(peer) => peer,
            Err(e) => return Outcome::Refused(e),
        };
        let mut stream = rustls::StreamOwned::new(conn, sock);
        // In TLS 1.3 the client finishes first: a server that then refuses the client's
        // certificate answers this request with an alert, never with data.
        if let Err(e) = stream.write_all(REQUEST).and_then(|()| stream.flush()) {
            return Outcome::HandshakeFailed(e);
        }
        let mut received = Vec::new();
        if let Err(e) = stream.read_to_end(&mut received) {
            return Outcome::HandshakeFailed(e);
        }
        Outcome::Talked { peer, received }
    });
    (server.join().unwrap(), client.join().unwrap())
}

fn identity(tls: &TlsConfig) -> TlsIdentity {
    TlsIdentity::load(tls).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn good_peers_authenticate_each_other_and_talk() {
    let pki = Pki::new(&["host-a", "host-b"]);
    let a = identity(&pki.tls("host-a", &["host-b"]));
    let b = identity(&pki.tls("host-b", &["host-a"]));
    let (server, client) = run(
        a.server_config(),
        &["host-x", "host-b"],
        b.client_config(),
        &["host-a"],
        "host-a",
    );
    match server {
        Outcome::Talked { peer, received } => {
            assert_eq!(peer, "host-b");
            assert_eq!(received, REQUEST);
        }
        other => panic!("server: {other:?}"),
    }
    match client {
        Outcome::Talked { peer, received } => {
            assert_eq!(peer, "host-a");
            assert_eq!(received, REPLY);
        }
        other => panic!("client: {other:?}"),
    }
}

#[test]
fn the_connections_are_tls13() {
    let pki = Pki::new(&["host-a", "host-b"]);
    let a = identity(&pki.tls("host-a", &["host-b"]));
    let b = identity(&pki.tls("host-b", &["host-a"]));
    let mut server = a.accept().unwrap();
    let mut client = b.connect("host-a").unwrap();
    // In memory: pump records between the two until both finish.
    let mut buf = Vec::new();
    for _ in 0..10 {
        if !server.is_handshaking() && !client.is_handshaking() {
            break;
        }
        buf.clear();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        let mut rd = buf.as_slice();
        while !rd.is_empty() {
            server.read_tls(&mut rd).unwrap();
        }
        server.process_new_packets().unwrap();
        buf.clear();
        while server.wants_write() {
            server.write_tls(&mut buf).unwrap();
        }
        let mut rd = buf.as_slice();
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
        }
        client.process_new_packets().unwrap();
    }
    assert!(!server.is_handshaking() && !client.is_handshaking());
    assert_eq!(
        server.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(
        client.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(authorize(&server, &names(&["host-b"])).unwrap(), "host-b");
    assert_eq!(authorize(&client, &names(&["host-a"])).unwrap(), "host-a");
}

#[test]
fn a_client_certificate_from_another_ca_is_refused_by_the_server() {
    let pki = Pki::new(&["host-a"]);
    let other = Pki::new(&["host-b"]);
    let a = identity(&pki.tls("host-a", &["host-b"]));
    // host-b's certificate is from another CA; host-b itself trusts host-a's CA.
    let b = identity(&TlsConfig {
        ca: Some(pki.path("ca.pem")),
        ..other.tls("host-b", &["host-a"])
    });
    let (server, client) = run(
        a.server_config(),
        &["host-b"],
        b.client_config(),
        &["host-a"],
        "host-a",
    );
    assert!(
        matches!(
            server.tls_error(),
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
        ),
        "{server:?}"
    );
    // The client got no reply data, only the server's alert.
    assert!(
        matches!(client, Outcome::HandshakeFailed(_)),
        "client: {client:?}"
    );
}

#[test]
fn a_server_certificate_from_another_ca_is_refused_by_the_client() {
    let pki = Pki::new(&["host-b"]);
    let other = Pki::new(&["host-a"]);
    let a = identity(&TlsConfig {
        ca: Some(pki.path("ca.pem")),
        ..other.tls("host-a", &["host-b"])
    });
    let b = identity(&pki.tls("host-b", &["host-a"]));
    let (server, client) = run(
        a.server_config(),
        &["host-b"],
        b.client_config(),
        &["host-a"],
        "host-a",
    );
    assert!(
        matches!(
            client.tls_error(),
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
        ),
        "{client:?}"
    );
    assert!(matches!(server, Outcome::HandshakeFailed(_)), "{server:?}");
}

#[test]
fn a_server_is_refused_when_its_certificate_is_not_for_the_name_dialed() {
    let pki = Pki::new(&["host-a", "host-b"]);
    let a = identity(&pki.tls("host-a", &["host-b"]));
    let b = identity(&pki.tls("host-b", &["host-a", "host-c"]));
    // host-b means to dial host-c and reaches host-a.
    let (_, client) = run(
        a.server_config(),
        &["host-b"],
        b.client_config(),
        &["host-a", "host-c"],
        "host-c",
    );
    assert!(
        matches!(
            client.tls_error(),
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. }
            ) | rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
        ),
        "{client:?}"
    );
}

#[test]
fn a_valid_certificate_not_on_the_allowlist_is_not_authorized() {
    let pki = Pki::new(&["host-a", "host-c"]);
    let a = identity(&pki.tls("host-a", &["host-b"]));
    let c = identity(&pki.tls("host-c", &["host-a"]));
    let (server, _) = run(
        a.server_config(),
        &["host-b"],
        c.client_config(),
        &["host-a"],
        "host-a",
    );
    match server {
        Outcome::Refused(e) => {
            assert_eq!(
                e,
                AuthError::NotAllowed {
                    names_in_cert: names(&["host-c"]),
                    allow: names(&["host-b"]),
                }
            );
            assert!(e.to_string().contains("host-c"), "{e}");
        }
        other => panic!("server: {other:?}"),
    }
}

#[test]
fn pinned_mode_accepts_exactly_the_pinned_certificate() {
    let pki = Pki::new(&["host-a", "host-b", "host-c"]);
    let a = identity(&pki.pinned("host-a", &["host-b"], &["host-b", "host-c"]));
    let b = identity(&pki.pinned("host-b", &["host-a"], &["host-a"]));
    let (server, client) = run(
        a.server_config(),
        &["host-b", "host-c"],
        b.client_config(),
        &["host-a"],
        "host-a",
    );
    assert!(
        matches!(&server, Outcome::Talked { peer, received } if peer == "host-b" && received == REQUEST),
        "server: {server:?}"
    );
    assert!(
        matches!(&client, Outcome::Talked { peer, received } if peer == "host-a" && received == REPLY),
        "client: {client:?}"
    );

    // host-c's certificate is from the same CA and allowlisted, but not pinned.
    let c = identity(&pki.pinned("host-c", &["host-a"], &["host-a"]));
    let (server, _) = run(
        a.server_config(),
        &["host-b", "host-c"],
        c.client_config(),
        &["host-a"],
        "host-a",
    );
    assert!(
        matches!(
            server.tls_error(),
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure
            )
        ),
        "{server:?}"
    );

    // And the client side: host-c pins host-b, so host-a's server is refused.
    let c = identity(&pki.pinned("host-c", &["host-b"], &["host-a"]));
    let (_, client) = run(
        a.server_config(),
        &["host-c"],
        c.client_config(),
        &["host-a"],
        "host-a",
    );
    assert!(
        matches!(
            client.tls_error(),
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure
            )
        ),
        "{client:?}"
    );
}

#[test]
fn pinned_with_a_ca_requires_both() {
    let pki = Pki::new(&["host-a"]);
    let other = Pki::new(&["host-b"]);
    // host-a pins host-b's certificate but also requires its own CA, which host-b's is not from.
    let a = identity(
        &TlsConfig {
            ca: Some(pki.path("ca.pem")),
            ..pki.pinned("host-a", &[], &["host-b"])
        }
        .with_pinned(other.path("host-b.pem")),
    );
    let b = identity(&TlsConfig {
        ca: Some(pki.path("ca.pem")),
        ..other.tls("host-b", &["host-a"])
    });
    let (server, _) = run(
        a.server_config(),
        &["host-b"],
        b.client_config(),
        &["host-a"],
        "host-a",
    );
    assert!(
        matches!(
            server.tls_error(),
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
        ),
        "{server:?}"
    );
}

trait WithPinned {
    fn with_pinned(self, path: PathBuf) -> Self;
}

impl WithPinned for TlsConfig {
    fn with_pinned(mut self, path: PathBuf) -> Self {
        self.pinned.push(path);
        self
    }
}

/// Client config trusting `pki`'s CA, built by hand (TLS 1.3 unless `versions` says otherwise).
fn raw_client(
    pki: &Pki,
    versions: &[&'static rustls::SupportedProtocolVersion],
    cert_of: Option<&str>,
) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let ca = fs::read(pki.path("ca.pem")).unwrap();
    for cert in rustls_pemfile::certs(&mut ca.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots);
    let config = match cert_of {
        None => builder.with_no_client_auth(),
        Some(name) => {
            let pem = fs::read(pki.path(&format!("{name}.pem"))).unwrap();
            let chain = rustls_pemfile::certs(&mut pem.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = fs::read(pki.path(&format!("{name}.key"))).unwrap();
            let key = rustls_pemfile::private_key(&mut key.as_slice())
                .unwrap()
                .unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    Arc::new(config)
}

#[test]
fn a_client_without_a_certificate_is_refused() {
    let pki = Pki::new(&["host-a"]);
    let a = identity(&pki.tls("host-a", &["host-b"]));
    let (server, client) = run(
        a.server_config(),
        &["host-b"],
        raw_client(&pki, &[&rustls::version::TLS13], None),
        &["host-a"],
        "host-a",
    );
    assert!(
        matches!(server.tls_error(), rustls::Error::NoCertificatesPresented),
        "{server:?}"
    );
    assert!(matches!(client, Outcome::HandshakeFailed(_)), "{client:?}");
}

#[test]
fn a_tls12_only_client_is_refused() {
    let pki = Pki::new(&["host-a", "host-b"]);
    let a = identity(&pki.tls("host-a", &["host-b"]));
    let (server, client) = run(
        a.server_config(),
        &["host-b"],
        raw_client(&pki, &[&rustls::version::TLS12], Some("host-b")),
        &["host-a"],
        "host-a",
    );
    assert!(
        matches!(server.tls_error(), rustls::Error::PeerIncompatible(_)),
        "{server:?}"
    );
    assert!(matches!(client, Outcome::HandshakeFailed(_)), "{client:?}");
}

#[test]
fn the_same_certificates_work_after_a_second_generate_adds_a_host() {
    let pki = Pki::new(&["host-a"]);
    let ca_before = fs::read(pki.path("ca.pem")).unwrap();
    let made = certs::generate(pki.dir.path(), &names(&["host-b"])).unwrap();
    assert!(made.ca_reused);
    assert_eq!(fs::read(pki.path("ca.pem")).unwrap(), ca_before);
    // host-b's certificate from the second run chains to the CA host-a has trusted all along.
    let a = identity(&pki.tls("host-a", &["host-b"]));
    let b = identity(&pki.tls("host-b", &["host-a"]));
    let (server, client) = run(
        a.server_config(),
        &["host-b"],
        b.client_config(),
        &["host-a"],
        "host-a",
    );
    assert!(matches!(server, Outcome::Talked { .. }), "{server:?}");
    assert!(matches!(client, Outcome::Talked { .. }), "{client:?}");
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn generate_writes_keys_0600_and_names_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    // A key file that exists with a wide mode is replaced by a 0600 one.
    fs::create_dir(&out).unwrap();
    fs::write(out.join("host-a.key"), "old").unwrap();
    fs::set_permissions(out.join("host-a.key"), fs::Permissions::from_mode(0o644)).unwrap();
    let made = certs::generate(&out, &names(&["host-a", "host-b"])).unwrap();
    assert!(!made.ca_reused);
    assert_eq!(made.ca_cert, out.join("ca.pem"));
    assert_eq!(made.ca_key, out.join("ca.key"));
    assert_eq!(mode(&made.ca_key), 0o600);
    assert_eq!(made.hosts.len(), 2);
    for (host, name) in made.hosts.iter().zip(["host-a", "host-b"]) {
        assert_eq!(host.name, name);
        assert_eq!(host.cert, out.join(format!("{name}.pem")));
        assert_eq!(host.key, out.join(format!("{name}.key")));
        assert_eq!(mode(&host.key), 0o600, "{}", host.key.display());
        assert!(fs::read_to_string(&host.key)
            .unwrap()
            .contains("PRIVATE KEY"));
    }
    // No temporary files are left behind.
    let mut files: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "ca.key",
            "ca.pem",
            "host-a.key",
            "host-a.pem",
            "host-b.key",
            "host-b.pem"
        ]
    );
}

#[test]
fn generate_refuses_bad_names_and_half_a_ca() {
    let dir = tempfile::tempdir().unwrap();
    for bad in [&["bad name"][..], &["ca"], &["h", "h"], &[]] {
        let err = certs::generate(dir.path(), &names(bad)).unwrap_err();
        assert!(
            matches!(err, CertError::InvalidName { .. } | CertError::NoNames),
            "{bad:?}: {err}"
        );
    }
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "wrote files");

    certs::generate(dir.path(), &names(&["host-a"])).unwrap();
    fs::remove_file(dir.path().join("ca.key")).unwrap();
    let err = certs::generate(dir.path(), &names(&["host-b"])).unwrap_err();
    assert!(matches!(err, CertError::CaIncomplete { .. }), "{err}");

    // A CA key that does not belong to the CA certificate is refused.
    let other = Pki::new(&["x"]);
    fs::copy(other.path("ca.key"), dir.path().join("ca.key")).unwrap();
    let err = certs::generate(dir.path(), &names(&["host-b"])).unwrap_err();
    assert!(matches!(err, CertError::BadCa { .. }), "{err}");
    assert!(err.to_string().contains("not the key of ca.pem"), "{err}");

    // A host certificate is not a CA.
    fs::copy(dir.path().join("host-a.pem"), dir.path().join("ca.pem")).unwrap();
    fs::copy(dir.path().join("host-a.key"), dir.path().join("ca.key")).unwrap();
    let err = certs::generate(dir.path(), &names(&["host-b"])).unwrap_err();
    assert!(err.to_string().contains("not a CA certificate"), "{err}");
}

#[test]
fn loading_names_the_file_and_the_problem() {
    let pki = Pki::new(&["host-a", "host-b"]);
    let good = pki.tls("host-a", &["host-b"]);

    let missing = TlsConfig {
        cert: pki.path("nope.pem"),
        ..good.clone()
    };
    match TlsIdentity::load(&missing).unwrap_err() {
        TlsError::Io { what, path, .. } => {
            assert_eq!(what, "certificate");
            assert_eq!(path, pki.path("nope.pem"));
        }
        other => panic!("{other}"),
    }

    // A key where the certificate should be.
    let swapped = TlsConfig {
        cert: pki.path("host-a.key"),
        ..good.clone()
    };
    let err = TlsIdentity::load(&swapped).unwrap_err();
    assert!(
        matches!(
            &err,
            TlsError::BadFile {
                what: "certificate",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("host-a.key"), "{err}");

    let no_key = TlsConfig {
        key: pki.path("host-a.pem"),
        ..good.clone()
    };
    let err = TlsIdentity::load(&no_key).unwrap_err();
    assert!(
        matches!(&err, TlsError::BadFile { what: "key", .. }),
        "{err}"
    );

    let not_pem = pki.path("garbage.pem");
    fs::write(&not_pem, "this is not PEM\n").unwrap();
    let bad_ca = TlsConfig {
        ca: Some(not_pem.clone()),
        ..good.clone()
    };
    let err = TlsIdentity::load(&bad_ca).unwrap_err();
    assert!(
        matches!(&err, TlsError::BadFile { what: "CA", .. }),
        "{err}"
    );

    let bad_pin = TlsConfig {
        pinned: vec![not_pem],
        ..good.clone()
    };
    let err = TlsIdentity::load(&bad_pin).unwrap_err();
    assert!(
        matches!(
            &err,
            TlsError::BadFile {
                what: "pinned certificate",
                ..
            }
        ),
        "{err}"
    );

    // host-b's key does not belong to host-a's certificate.
    let mismatched = TlsConfig {
        key: pki.path("host-b.key"),
        ..good
    };
    let err = TlsIdentity::load(&mismatched).unwrap_err();
    assert!(matches!(&err, TlsError::Rustls { .. }), "{err}");
}

#[test]
fn authorize_waits_for_the_handshake() {
    let pki = Pki::new(&["host-a"]);
    let a = identity(&pki.tls("host-a", &["host-b"]));
    let conn = a.connect("host-b").unwrap();
    assert_eq!(
        authorize(&conn, &names(&["host-b"])),
        Err(AuthError::Handshaking)
    );
    assert!(a.connect("not a name").is_err());
}
