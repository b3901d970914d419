//! The bridge's configuration file (TOML).
//!
//! One file per host says who this bridge is, where it listens, which peers it dials, how it
//! proves its identity and whom it accepts ([`TlsConfig`]), which local segments it offers
//! ([`ExportConfig`]) and which remote ones it mirrors ([`ImportConfig`]). `bridge.example.toml`
//! next to this crate's `Cargo.toml` documents every key.
//!
//! Loading checks everything that can be checked without touching the network or the files the
//! config names: unknown keys, malformed addresses, durations and sizes, duplicate names,
//! imports from peers that are not configured, configured peers missing from the allowlist.
//! Each error names the file, the key (`peers[1].address`, counting from 0 like the file's
//! order) and what is wrong.
//!
//! Relative paths (certificates, keys) are resolved against the directory of the config file,
//! so a config and its `certs/` directory can move together.
//!
//! # Examples
//!
//! ```
//! use std::path::Path;
//! use std::time::Duration;
//! use shmesh_bridge::config::Config;
//!
//! let text = r#"
//!     name = "host-a"
//!     listen = "127.0.0.1:7700"
//!     liveness_timeout = "3s"
//!
//!     [tls]
//!     cert = "certs/host-a.pem"
//!     key = "certs/host-a.key"
//!     ca = "certs/ca.pem"
//!     allow = ["host-b"]
//!
//!     [[peers]]
//!     name = "host-b"
//!     address = "127.0.0.1:7701"
//!
//!     [[import]]
//!     peer = "host-b"
//!     name = "commands"
//! "#;
//! let config = Config::parse(text, Path::new("/etc/shmesh/bridge.toml"))?;
//! assert_eq!(config.liveness_timeout, Duration::from_secs(3));
//! let tls = config.tls.as_ref().expect("TLS is on unless `enabled = false`");
//! assert_eq!(tls.cert, Path::new("/etc/shmesh/certs/host-a.pem"));
//! assert_eq!(config.imports[0].local_name, "commands");
//! # Ok::<(), shmesh_bridge::config::ConfigError>(())
//! ```

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// How long a connection may stay silent before the bridge drops it, when the file says nothing.
pub const DEFAULT_LIVENESS_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the bridge waits between dials of a peer, when the file says nothing.
pub const DEFAULT_RECONNECT_INTERVAL: Duration = Duration::from_millis(200);
/// Unacknowledged bytes in flight per stream, when the file says nothing (4 MiB).
pub const DEFAULT_WINDOW: u64 = 4 << 20;

/// A bridge's whole configuration, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// This bridge's name: a DNS-style name its certificate carries as a DNS SAN, and the name
    /// peers list in their allowlists.
    pub name: String,
    /// Where to accept peers' connections; `None`: this bridge only dials.
    pub listen: Option<SocketAddr>,
    /// A connection that carried nothing (not even a heartbeat) for this long is dropped.
    pub liveness_timeout: Duration,
    /// Time between two dials of the same peer.
    pub reconnect_interval: Duration,
    /// Bytes a stream may have sent and not yet had acknowledged (> 0).
    pub window: u64,
    /// Authentication; `None` when the file says `[tls] enabled = false` (plaintext, no
    /// authentication: for benchmarks and trusted links only).
    pub tls: Option<TlsConfig>,
    /// The peers this bridge knows by name (dials, or waits for), in file order.
    pub peers: Vec<PeerConfig>,
    /// Local segments offered to peers (`[[export]]` tables), in file order.
    pub exports: Vec<ExportConfig>,
    /// Remote segments mirrored here (`[[import]]` tables), in file order.
    pub imports: Vec<ImportConfig>,
}

/// TLS 1.3 identity and trust: the `[tls]` table when `enabled` (the default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM file with this bridge's certificate, then any intermediates (absolute or relative to
    /// the process's directory when the config's path was relative).
    pub cert: PathBuf,
    /// PEM file with the private key of `cert` (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM file with the CA certificate(s) peers' certificates must chain to.
    pub ca: Option<PathBuf>,
    /// PEM files with peer certificates accepted exactly as they are (no CA needed). With both
    /// `ca` and `pinned`, a peer's certificate must be one of the pinned ones and chain to the
    /// CA.
    pub pinned: Vec<PathBuf>,
    /// Peer names accepted: after the handshake a peer is let in only if its certificate is
    /// valid for one of these names (a DNS SAN). Never empty; contains every [`PeerConfig`].
    pub allow: Vec<String>,
}

/// One `[[peers]]` table: a bridge this one talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// The peer's name: the DNS SAN its certificate must carry (and the TLS server name dialed).
    pub name: String,
    /// Where to dial it; `None`: wait for it to dial this bridge's `listen` address.
    pub address: Option<SocketAddr>,
}

/// One `[[export]]` table: a local segment offered to peers that import it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportConfig {
    /// The local segment's name.
    pub name: String,
    /// The peers it is offered to; `None`: every peer this bridge accepts.
    pub peers: Option<Vec<String>>,
}

impl ExportConfig {
    /// Whether this export is offered to the peer named `peer`.
    pub fn offered_to(&self, peer: &str) -> bool {
        self.peers
            .as_ref()
            .is_none_or(|peers| peers.iter().any(|p| p == peer))
    }
}

/// One `[[import]]` table: a peer's segment mirrored into a local one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportConfig {
    /// The peer that exports the segment (one of [`Config::peers`]).
    pub peer: String,
    /// The segment's name on the peer.
    pub name: String,
    /// The name of the local copy (defaults to `name`); unique among imports.
    pub local_name: String,
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the config file {}: {source}", path.display())]
    Io {
        /// The config file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The file is not valid TOML or does not have the expected shape (unknown key, wrong
    /// type, missing required key). The message includes the line and column.
    #[error("{}: {message}", path.display())]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The TOML parser's message.
        message: String,
    },
    /// A value is well-formed TOML but not acceptable.
    #[error("{}: `{key}`: {problem}", path.display())]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// The key, as a path: `peers[1].address` (array indices count from 0).
        key: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
}

impl Config {
    /// Reads and checks the config file at `path`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Io`] if the file cannot be read, else as [`Config::parse`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and checks config text. `origin` is the file it came from: errors name it and
    /// relative paths resolve against its directory.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Parse`] for TOML syntax, unknown keys, wrong types and missing required
    /// keys; [`ConfigError::Invalid`] for values that are not acceptable.
    pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        Checker { origin }.check(raw)
    }

    /// The configured peer named `name`.
    pub fn peer(&self, name: &str) -> Option<&PeerConfig> {
        self.peers.iter().find(|p| p.name == name)
    }
}

/// Parses a duration written as an integer and a unit: `ns`, `us`, `ms`, `s`, `m` or `h`
/// (`"500ms"`, `"3s"`, `"1m"`).
///
/// # Errors
///
/// A message saying what is wrong with `text`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use shmesh_bridge::config::parse_duration;
///
/// assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
/// assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
/// assert!(parse_duration("3").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const UNITS: &str = "write an integer and a unit: ns, us, ms, s, m or h (e.g. \"500ms\", \
                         \"3s\", \"1m\")";
    let (number, unit) = split_number(text.trim());
    let Ok(n) = number.parse::<u64>() else {
        return Err(format!("invalid duration {text:?}: {UNITS}"));
    };
    let duration = match unit {
        "ns" => Some(Duration::from_nanos(n)),
        "us" | "µs" => Some(Duration::from_micros(n)),
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        "" => return Err(format!("invalid duration {text:?}: missing unit; {UNITS}")),
        _ => return Err(format!("invalid duration {text:?}: unknown unit; {UNITS}")),
    };
    duration.ok_or_else(|| format!("invalid duration {text:?}: too long"))
}

/// Parses a byte count written as an integer with an optional unit: `B`, `KiB`, `MiB`, `GiB`
/// (powers of 1024) or `KB`, `MB`, `GB` (powers of 1000).
///
/// # Errors
///
/// A message saying what is wrong with `text`.
///
/// # Examples
///
/// ```
/// use shmesh_bridge::config::parse_size;
///
/// assert_eq!(parse_size("64KiB"), Ok(65536));
/// assert_eq!(parse_size("4 MiB"), Ok(4 << 20));
/// assert_eq!(parse_size("1000"), Ok(1000));
/// assert!(parse_size("4M").is_err());
/// ```
pub fn parse_size(text: &str) -> Result<u64, String> {
    const UNITS: &str = "write an integer with an optional unit: B, KiB, MiB, GiB, KB, MB or GB \
                         (e.g. \"64KiB\", \"4MiB\")";
    let (number, unit) = split_number(text.trim());
    let Ok(n) = number.parse::<u64>() else {
        return Err(format!("invalid size {text:?}: {UNITS}"));
    };
    let factor: u64 = match unit.trim_start() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(format!("invalid size {text:?}: unknown unit; {UNITS}")),
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("invalid size {text:?}: too large"))
}

/// Splits `"500ms"` into `("500", "ms")`.
fn split_number(text: &str) -> (&str, &str) {
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    text.split_at(end)
}

/// Checks a DNS-style name (what a certificate's DNS SAN can carry): dot-separated labels of
/// 1..=63 characters from `[A-Za-z0-9-]`, not starting or ending with `-`, at most 253
/// characters, and not all digits in the last label (that would read as an IP address).
pub(crate) fn check_dns_name(name: &str) -> Result<(), String> {
    const FORM: &str = "a name is dot-separated labels of letters, digits and '-' (e.g. \
                        \"host-a\" or \"host-a.example.net\")";
    if name.is_empty() {
        return Err(format!("empty name: {FORM}"));
    }
    if name.len() > 253 {
        return Err(format!("name {name:?} is longer than 253 characters"));
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!(
                "invalid name {name:?}: each label must be 1 to 63 characters; {FORM}"
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!("invalid name {name:?}: {FORM}"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "invalid name {name:?}: a label cannot start or end with '-'"
            ));
        }
    }
    if name
        .rsplit('.')
        .next()
        .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!(
            "invalid name {name:?}: the last label is all digits, which reads as an IP address"
        ));
    }
    Ok(())
}

/// Parses `ip:port`, explaining the common mistakes.
fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        let example = SocketAddr::new(ip, 7700);
        return Err(format!(
            "invalid socket address {text:?}: missing port (e.g. \"{example}\")"
        ));
    }
    Err(format!(
        "invalid socket address {text:?}: write an IP address and a port, e.g. \
         \"10.77.0.2:7700\" or \"[fd00::2]:7700\" (host names are not resolved)"
    ))
}

// ---- what serde reads ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    name: String,
    listen: Option<String>,
    liveness_timeout: Option<String>,
    reconnect_interval: Option<String>,
    window: Option<toml::Value>,
    tls: Option<RawTls>,
    #[serde(default)]
    peers: Vec<RawPeer>,
    #[serde(default)]
    export: Vec<RawExport>,
    #[serde(default)]
    import: Vec<RawImport>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    #[serde(default = "yes")]
    enabled: bool,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    #[serde(default)]
    pinned: Vec<PathBuf>,
    #[serde(default)]
    allow: Vec<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    name: String,
    address: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExport {
    name: String,
    peers: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImport {
    peer: String,
    name: String,
    local_name: Option<String>,
}

// ---- checks ----

struct Checker<'a> {
    origin: &'a Path,
}

impl Checker<'_> {
    fn invalid(&self, key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.origin.to_owned(),
            key: key.into(),
            problem: problem.into(),
        }
    }

    fn resolve(&self, path: PathBuf) -> PathBuf {
        match self.origin.parent() {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path,
        }
    }

    fn duration(
        &self,
        key: &str,
        text: Option<String>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some(text) = text else {
            return Ok(default);
        };
        let d = parse_duration(&text).map_err(|p| self.invalid(key, p))?;
        if d.is_zero() {
            return Err(self.invalid(key, format!("{text:?} is zero: it must be positive")));
        }
        Ok(d)
    }

    fn segment_name(&self, key: &str, name: &str) -> Result<(), ConfigError> {
        shmesh_ring::segment::object_name(name)
            .map(drop)
            .map_err(|e| self.invalid(key, e.to_string()))
    }

    fn check(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        check_dns_name(&raw.name).map_err(|p| self.invalid("name", p))?;
        let listen = raw
            .listen
            .as_deref()
            .map(parse_socket_addr)
            .transpose()
            .map_err(|p| self.invalid("listen", p))?;
        let liveness_timeout = self.duration(
            "liveness_timeout",
            raw.liveness_timeout,
            DEFAULT_LIVENESS_TIMEOUT,
        )?;
        let reconnect_interval = self.duration(
            "reconnect_interval",
            raw.reconnect_interval,
            DEFAULT_RECONNECT_INTERVAL,
        )?;
        let window = match raw.window {
            None => DEFAULT_WINDOW,
            Some(toml::Value::Integer(n)) => {
                u64::try_from(n).map_err(|_| self.invalid("window", format!("{n} is negative")))?
            }
            Some(toml::Value::String(s)) => {
                parse_size(&s).map_err(|p| self.invalid("window", p))?
            }
            Some(other) => {
                return Err(self.invalid(
                    "window",
                    format!(
                        "expected a byte count (e.g. 65536) or a size string (e.g. \"4MiB\"), \
                         found a {}",
                        other.type_str()
                    ),
                ))
            }
        };
        if window == 0 {
            return Err(self.invalid(
                "window",
                "0: no stream could send anything; use e.g. \"4MiB\"",
            ));
        }

        // Peers.
        let mut peers = Vec::with_capacity(raw.peers.len());
        let mut peer_index: HashMap<String, usize> = HashMap::new();
        for (i, p) in raw.peers.into_iter().enumerate() {
            let key = format!("peers[{i}]");
            check_dns_name(&p.name).map_err(|e| self.invalid(format!("{key}.name"), e))?;
            if p.name == raw.name {
                return Err(self.invalid(
                    format!("{key}.name"),
                    format!("{:?} is this bridge's own `name`", p.name),
                ));
            }
            if let Some(first) = peer_index.insert(p.name.clone(), i) {
                return Err(self.invalid(
                    format!("{key}.name"),
                    format!(
                        "peer {:?} is configured twice (also peers[{first}])",
                        p.name
                    ),
                ));
            }
            let address = p
                .address
                .as_deref()
                .map(parse_socket_addr)
                .transpose()
                .map_err(|e| self.invalid(format!("{key}.address"), e))?;
            if address.is_none() && listen.is_none() {
                return Err(self.invalid(
                    key,
                    format!(
                        "peer {:?} has no `address` and this bridge has no `listen` address: \
                         neither side could connect; add one of them",
                        p.name
                    ),
                ));
            }
            peers.push(PeerConfig {
                name: p.name,
                address,
            });
        }

        // TLS.
        let Some(raw_tls) = raw.tls else {
            return Err(self.invalid(
                "tls",
                "missing: add a [tls] table with `cert`, `key`, `ca` or `pinned`, and `allow` \
                 (or `enabled = false` for an unauthenticated plaintext link)",
            ));
        };
        let tls = if raw_tls.enabled {
            Some(self.check_tls(raw_tls, &peers)?)
        } else {
            None
        };

        // Names a peer may be known by: configured peers, and those allowed to dial in.
        let mut known: HashSet<&str> = peers.iter().map(|p| p.name.as_str()).collect();
        if let Some(tls) = &tls {
            known.extend(tls.allow.iter().map(String::as_str));
        }

        // Exports.
        let mut exports = Vec::with_capacity(raw.export.len());
        let mut export_index: HashMap<String, usize> = HashMap::new();
        for (i, e) in raw.export.into_iter().enumerate() {
            let key = format!("export[{i}]");
            self.segment_name(&format!("{key}.name"), &e.name)?;
            if let Some(first) = export_index.insert(e.name.clone(), i) {
                return Err(self.invalid(
                    format!("{key}.name"),
                    format!(
                        "segment {:?} is exported twice (also export[{first}])",
                        e.name
                    ),
                ));
            }
            if let Some(list) = &e.peers {
                if list.is_empty() {
                    return Err(self.invalid(
                        format!("{key}.peers"),
                        "empty: the export would be offered to nobody; omit `peers` to offer \
                         it to every accepted peer",
                    ));
                }
                let mut seen = HashSet::new();
                for (j, peer) in list.iter().enumerate() {
                    let pkey = format!("{key}.peers[{j}]");
                    if !known.contains(peer.as_str()) {
                        return Err(self.invalid(
                            pkey,
                            format!(
                                "unknown peer {peer:?}: add a [[peers]] table for it (or, with \
                                 TLS, add it to `tls.allow`)"
                            ),
                        ));
                    }
                    if !seen.insert(peer) {
                        return Err(self.invalid(pkey, format!("peer {peer:?} is listed twice")));
                    }
                }
            }
            exports.push(ExportConfig {
                name: e.name,
                peers: e.peers,
            });
        }

        // Imports.
        let mut imports = Vec::with_capacity(raw.import.len());
        let mut local_index: HashMap<String, usize> = HashMap::new();
        let mut remote_index: HashMap<(String, String), usize> = HashMap::new();
        for (i, imp) in raw.import.into_iter().enumerate() {
            let key = format!("import[{i}]");
            if !peer_index.contains_key(&imp.peer) {
                return Err(self.invalid(
                    format!("{key}.peer"),
                    format!(
                        "unknown peer {:?}: add a [[peers]] table with this name",
                        imp.peer
                    ),
                ));
            }
            self.segment_name(&format!("{key}.name"), &imp.name)?;
            let local_name = match imp.local_name {
                Some(local) => {
                    self.segment_name(&format!("{key}.local_name"), &local)?;
                    local
                }
                None => imp.name.clone(),
            };
            if let Some(first) = remote_index.insert((imp.peer.clone(), imp.name.clone()), i) {
                return Err(self.invalid(
                    format!("{key}.name"),
                    format!(
                        "segment {:?} of peer {:?} is imported twice (also import[{first}])",
                        imp.name, imp.peer
                    ),
                ));
            }
            if let Some(first) = local_index.insert(local_name.clone(), i) {
                return Err(self.invalid(
                    format!("{key}.local_name"),
                    format!(
                        "local segment {local_name:?} is the copy of two imports (also \
                         import[{first}]): give one a different `local_name`"
                    ),
                ));
            }
            imports.push(ImportConfig {
                peer: imp.peer,
                name: imp.name,
                local_name,
            });
        }

        Ok(Config {
            name: raw.name,
            listen,
            liveness_timeout,
            reconnect_interval,
            window,
            tls,
            peers,
            exports,
            imports,
        })
    }

    fn check_tls(&self, raw: RawTls, peers: &[PeerConfig]) -> Result<TlsConfig, ConfigError> {
        let cert = raw.cert.ok_or_else(|| {
            self.invalid(
                "tls.cert",
                "missing: the PEM file with this bridge's certificate (`shmesh-bridge gen-certs` \
                 makes one)",
            )
        })?;
        let key = raw.key.ok_or_else(|| {
            self.invalid(
                "tls.key",
                "missing: the PEM file with the certificate's private key",
            )
        })?;
        if raw.ca.is_none() && raw.pinned.is_empty() {
            return Err(self.invalid(
                "tls.ca",
                "missing, and `tls.pinned` is empty: nothing to check peers' certificates \
                 against; set `ca` (a CA certificate) or `pinned` (peer certificates)",
            ));
        }
        if raw.allow.is_empty() {
            return Err(self.invalid(
                "tls.allow",
                "empty: no peer would be accepted; list the names of the peers this bridge \
                 talks to",
            ));
        }
        let mut seen = HashSet::new();
        for (i, name) in raw.allow.iter().enumerate() {
            let key = format!("tls.allow[{i}]");
            check_dns_name(name).map_err(|e| self.invalid(&key, e))?;
            if !seen.insert(name.as_str()) {
                return Err(self.invalid(key, format!("{name:?} is listed twice")));
            }
        }
        for (i, peer) in peers.iter().enumerate() {
            if !seen.contains(peer.name.as_str()) {
                return Err(self.invalid(
                    "tls.allow",
                    format!(
                        "the configured peer {:?} (peers[{i}]) is missing: it would be refused \
                         after every handshake; add it to `allow` or remove the peer",
                        peer.name
                    ),
                ));
            }
        }
        Ok(TlsConfig {
            cert: self.resolve(cert),
            key: self.resolve(key),
            ca: raw.ca.map(|p| self.resolve(p)),
            pinned: raw.pinned.into_iter().map(|p| self.resolve(p)).collect(),
            allow: raw.allow,
        })
    }
}
