//! The config file: what it accepts, how it fills defaults and resolves paths, and how each
//! mistake is reported (file, key, problem).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use shmesh_bridge::config::{
    parse_duration, parse_size, Config, ConfigError, ExportConfig, ImportConfig, PeerConfig,
    TlsConfig, DEFAULT_LIVENESS_TIMEOUT, DEFAULT_RECONNECT_INTERVAL, DEFAULT_WINDOW,
};

const ORIGIN: &str = "/etc/shmesh/bridge.toml";

/// A valid config every error case below changes in one place.
const GOOD: &str = r#"
name = "host-a"
listen = "10.77.0.1:7700"
liveness_timeout = "500ms"
reconnect_interval = "1s"
window = "64KiB"

[tls]
cert = "certs/host-a.pem"
key = "certs/host-a.key"
ca = "/srv/ca.pem"
pinned = ["pins/b.pem"]
allow = ["host-b", "host-c"]

[[peers]]
name = "host-b"
address = "10.77.0.2:7700"

[[peers]]
name = "host-c"

[[export]]
name = "telemetry"
peers = ["host-b"]

[[export]]
name = "status"

[[import]]
peer = "host-b"
name = "commands"

[[import]]
peer = "host-c"
name = "commands"
local_name = "commands-c"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new(ORIGIN))
}

/// Parses `text`, expects [`ConfigError::Invalid`] and returns its key and problem.
fn invalid(text: &str) -> (String, String) {
    match parse(text) {
        Err(ConfigError::Invalid { path, key, problem }) => {
            assert_eq!(path, Path::new(ORIGIN));
            (key, problem)
        }
        other => panic!("expected an Invalid error, got {other:?}"),
    }
}

/// [`GOOD`] with `from` replaced by `to` (which must occur).
fn good_with(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "{from:?} is not in the good config");
    GOOD.replacen(from, to, 1)
}

#[test]
fn a_full_config_reads_into_typed_values() {
    let config = parse(GOOD).unwrap();
    assert_eq!(
        config,
        Config {
            name: "host-a".into(),
            listen: Some("10.77.0.1:7700".parse().unwrap()),
            liveness_timeout: Duration::from_millis(500),
            reconnect_interval: Duration::from_secs(1),
            window: 65536,
            tls: Some(TlsConfig {
                cert: PathBuf::from("/etc/shmesh/certs/host-a.pem"),
                key: PathBuf::from("/etc/shmesh/certs/host-a.key"),
                ca: Some(PathBuf::from("/srv/ca.pem")),
                pinned: vec![PathBuf::from("/etc/shmesh/pins/b.pem")],
                allow: vec!["host-b".into(), "host-c".into()],
            }),
            peers: vec![
                PeerConfig {
                    name: "host-b".into(),
                    address: Some("10.77.0.2:7700".parse().unwrap()),
                },
                PeerConfig {
                    name: "host-c".into(),
                    address: None,
                },
            ],
            exports: vec![
                ExportConfig {
                    name: "telemetry".into(),
                    peers: Some(vec!["host-b".into()]),
                },
                ExportConfig {
                    name: "status".into(),
                    peers: None,
                },
            ],
            imports: vec![
                ImportConfig {
                    peer: "host-b".into(),
                    name: "commands".into(),
                    local_name: "commands".into(),
                },
                ImportConfig {
                    peer: "host-c".into(),
                    name: "commands".into(),
                    local_name: "commands-c".into(),
                },
            ],
        }
    );
    assert!(config.exports[0].offered_to("host-b"));
    assert!(!config.exports[0].offered_to("host-c"));
    assert!(config.exports[1].offered_to("host-c"));
    assert_eq!(config.peer("host-c"), Some(&config.peers[1]));
    assert_eq!(config.peer("host-z"), None);
}

#[test]
fn a_minimal_config_gets_the_defaults() {
    let config = parse(
        r#"
        name = "solo"
        [tls]
        enabled = false
        "#,
    )
    .unwrap();
    assert_eq!(config.listen, None);
    assert_eq!(config.liveness_timeout, DEFAULT_LIVENESS_TIMEOUT);
    assert_eq!(config.reconnect_interval, DEFAULT_RECONNECT_INTERVAL);
    assert_eq!(config.window, DEFAULT_WINDOW);
    assert_eq!(config.tls, None);
    assert!(config.peers.is_empty() && config.exports.is_empty() && config.imports.is_empty());
}

#[test]
fn plaintext_needs_no_certificates_or_allowlist() {
    let config = parse(
        r#"
        name = "host-a"
        listen = "[::1]:7700"
        window = 1048576
        [tls]
        enabled = false
        cert = "ignored.pem"
        [[peers]]
        name = "host-b"
        [[import]]
        peer = "host-b"
        name = "x"
        "#,
    )
    .unwrap();
    assert_eq!(config.tls, None);
    assert_eq!(config.window, 1 << 20);
    assert_eq!(
        config.listen,
        Some("[::1]:7700".parse::<SocketAddr>().unwrap())
    );
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let config = Config::parse(GOOD, Path::new("relative/dir/bridge.toml")).unwrap();
    let tls = config.tls.unwrap();
    assert_eq!(tls.cert, Path::new("relative/dir/certs/host-a.pem"));
    assert_eq!(tls.ca.as_deref(), Some(Path::new("/srv/ca.pem")));
    let config = Config::parse(GOOD, Path::new("bridge.toml")).unwrap();
    assert_eq!(config.tls.unwrap().key, Path::new("certs/host-a.key"));
}

#[test]
fn from_file_reads_and_names_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bridge.toml");
    std::fs::write(&path, GOOD).unwrap();
    let config = Config::from_file(&path).unwrap();
    assert_eq!(
        config.tls.unwrap().cert,
        dir.path().join("certs/host-a.pem")
    );

    let missing = dir.path().join("nope.toml");
    let err = Config::from_file(&missing).unwrap_err();
    assert!(matches!(&err, ConfigError::Io { path, .. } if *path == missing));
    assert!(err.to_string().contains("nope.toml"), "{err}");
}

#[test]
fn unknown_keys_are_parse_errors_with_a_location() {
    for (text, unknown) in [
        (
            good_with("window = \"64KiB\"", "windw = \"64KiB\""),
            "windw",
        ),
        (
            good_with("ca = \"/srv/ca.pem\"", "cafile = \"/srv/ca.pem\""),
            "cafile",
        ),
        (
            good_with(
                "address = \"10.77.0.2:7700\"",
                "adress = \"10.77.0.2:7700\"",
            ),
            "adress",
        ),
        (good_with("local_name =", "local ="), "local"),
        (good_with("[[export]]", "[[exports]]"), "exports"),
    ] {
        let err = parse(&text).unwrap_err();
        let ConfigError::Parse { path, message } = &err else {
            panic!("expected a Parse error for {unknown}, got {err:?}");
        };
        assert_eq!(path, Path::new(ORIGIN));
        assert!(message.contains(unknown), "{message}");
        assert!(message.contains("line"), "no location in {message}");
        assert!(err.to_string().starts_with(ORIGIN), "{err}");
    }
}

#[test]
fn bad_toml_and_wrong_types_are_parse_errors() {
    for text in [
        "name = ".to_owned(),
        good_with("name = \"host-a\"", "name = 3"),
        good_with("[tls]\n", "[tls]\nenabled = \"yes\"\n"),
        "[tls]\nenabled = false\n".to_owned(), // `name` is required
    ] {
        assert!(
            matches!(parse(&text), Err(ConfigError::Parse { .. })),
            "{text}: {:?}",
            parse(&text)
        );
    }
}

#[test]
fn a_bad_address_names_the_key_and_the_problem() {
    let text = good_with("address = \"10.77.0.2:7700\"", "address = \"10.0.0.1\"");
    let err = parse(&text).unwrap_err();
    assert_eq!(
        err.to_string(),
        "/etc/shmesh/bridge.toml: `peers[0].address`: invalid socket address \"10.0.0.1\": \
         missing port (e.g. \"10.0.0.1:7700\")"
    );
    let (key, problem) = invalid(&good_with("10.77.0.1:7700", "host-a:7700"));
    assert_eq!(key, "listen");
    assert!(problem.contains("host names are not resolved"), "{problem}");
}

#[test]
fn durations_and_sizes_are_checked() {
    let (key, problem) = invalid(&good_with("\"500ms\"", "\"500\""));
    assert_eq!(key, "liveness_timeout");
    assert!(problem.contains("missing unit"), "{problem}");
    let (key, problem) = invalid(&good_with("\"1s\"", "\"0ms\""));
    assert_eq!(key, "reconnect_interval");
    assert!(problem.contains("positive"), "{problem}");
    let (key, problem) = invalid(&good_with("\"64KiB\"", "0"));
    assert_eq!(key, "window");
    assert!(problem.starts_with("0:"), "{problem}");
    let (key, _) = invalid(&good_with("\"64KiB\"", "\"0KiB\""));
    assert_eq!(key, "window");
    let (key, problem) = invalid(&good_with("\"64KiB\"", "-5"));
    assert_eq!(key, "window");
    assert!(problem.contains("negative"), "{problem}");
    let (key, problem) = invalid(&good_with("\"64KiB\"", "1.5"));
    assert_eq!(key, "window");
    assert!(problem.contains("float"), "{problem}");
    let (key, problem) = invalid(&good_with("\"64KiB\"", "\"64k\""));
    assert_eq!(key, "window");
    assert!(problem.contains("unknown unit"), "{problem}");
}

#[test]
fn duration_and_size_parsers() {
    assert_eq!(parse_duration("7ns"), Ok(Duration::from_nanos(7)));
    assert_eq!(parse_duration("7us"), Ok(Duration::from_micros(7)));
    assert_eq!(parse_duration(" 3s "), Ok(Duration::from_secs(3)));
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    for bad in ["", "s", "1.5s", "-1s", "3 sec", "99999999999999999999s"] {
        assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
    }
    assert!(parse_duration(&format!("{}h", u64::MAX))
        .unwrap_err()
        .contains("too long"));
    assert_eq!(parse_size("0"), Ok(0));
    assert_eq!(parse_size("3B"), Ok(3));
    assert_eq!(parse_size("2GiB"), Ok(2 << 30));
    assert_eq!(parse_size("5KB"), Ok(5000));
    assert_eq!(parse_size("5MB"), Ok(5_000_000));
    assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
    for bad in ["", "KiB", "1.5MiB", "-1", "4 mib"] {
        assert!(parse_size(bad).is_err(), "{bad:?} accepted");
    }
    assert!(parse_size(&format!("{}GiB", u64::MAX))
        .unwrap_err()
        .contains("too large"));
}

#[test]
fn names_must_be_dns_names() {
    for bad in [
        "",
        "host_a",
        "-host",
        "host-",
        "a..b",
        "10.0.0.1",
        "h\u{e9}",
        &"x".repeat(64),
    ] {
        let (key, _) = invalid(&good_with("name = \"host-a\"", &format!("name = {bad:?}")));
        assert_eq!(key, "name", "{bad:?}");
    }
    let (key, _) = invalid(&good_with(
        "allow = [\"host-b\", \"host-c\"]",
        "allow = [\"host-b\", \"host-c\", \"bad name\"]",
    ));
    assert_eq!(key, "tls.allow[2]");
    let (key, _) = invalid(&good_with("name = \"host-c\"", "name = \"host c\""));
    assert_eq!(key, "peers[1].name");
}

#[test]
fn peer_mistakes_name_the_peer_key() {
    let (key, problem) = invalid(&good_with("name = \"host-c\"", "name = \"host-b\""));
    assert_eq!(key, "peers[1].name");
    assert!(problem.contains("twice (also peers[0])"), "{problem}");

    let (key, problem) = invalid(&good_with("name = \"host-c\"", "name = \"host-a\""));
    assert_eq!(key, "peers[1].name");
    assert!(problem.contains("own `name`"), "{problem}");

    // host-c has no address: without `listen` the two could never connect.
    let (key, problem) = invalid(&good_with("listen = \"10.77.0.1:7700\"\n", ""));
    assert_eq!(key, "peers[1]");
    assert!(problem.contains("neither side could connect"), "{problem}");
}

#[test]
fn tls_mistakes_name_the_tls_key() {
    let (key, _) = invalid(&good_with("cert = \"certs/host-a.pem\"\n", ""));
    assert_eq!(key, "tls.cert");
    let (key, _) = invalid(&good_with("key = \"certs/host-a.key\"\n", ""));
    assert_eq!(key, "tls.key");
    let (key, problem) = invalid(&good_with(
        "ca = \"/srv/ca.pem\"\npinned = [\"pins/b.pem\"]\n",
        "pinned = []\n",
    ));
    assert_eq!(key, "tls.ca");
    assert!(problem.contains("pinned"), "{problem}");
    // Either trust source alone is enough.
    parse(&good_with("ca = \"/srv/ca.pem\"\n", "")).unwrap();
    parse(&good_with("pinned = [\"pins/b.pem\"]\n", "")).unwrap();

    let (key, problem) = invalid(&good_with(
        "allow = [\"host-b\", \"host-c\"]",
        "allow = [\"host-b\"]",
    ));
    assert_eq!(key, "tls.allow");
    assert!(
        problem.contains("\"host-c\" (peers[1]) is missing"),
        "{problem}"
    );

    let (key, _) = invalid(&good_with(
        "allow = [\"host-b\", \"host-c\"]",
        "allow = [\"host-b\", \"host-c\", \"host-b\"]",
    ));
    assert_eq!(key, "tls.allow[2]");

    let no_peers = r#"
        name = "host-a"
        [tls]
        cert = "a.pem"
        key = "a.key"
        ca = "ca.pem"
        "#;
    let (key, problem) = invalid(no_peers);
    assert_eq!(key, "tls.allow");
    assert!(problem.starts_with("empty"), "{problem}");

    let (key, problem) = invalid("name = \"host-a\"\n");
    assert_eq!(key, "tls");
    assert!(problem.contains("enabled = false"), "{problem}");
}

#[test]
fn export_mistakes_name_the_export_key() {
    let (key, problem) = invalid(&good_with("name = \"status\"", "name = \"telemetry\""));
    assert_eq!(key, "export[1].name");
    assert!(problem.contains("also export[0]"), "{problem}");
    let (key, _) = invalid(&good_with("name = \"status\"", "name = \"a/b\""));
    assert_eq!(key, "export[1].name");
    let (key, problem) = invalid(&good_with(
        "peers = [\"host-b\"]",
        "peers = [\"host-b\", \"host-x\"]",
    ));
    assert_eq!(key, "export[0].peers[1]");
    assert!(problem.contains("unknown peer \"host-x\""), "{problem}");
    let (key, _) = invalid(&good_with(
        "peers = [\"host-b\"]",
        "peers = [\"host-b\", \"host-b\"]",
    ));
    assert_eq!(key, "export[0].peers[1]");
    let (key, _) = invalid(&good_with("peers = [\"host-b\"]", "peers = []"));
    assert_eq!(key, "export[0].peers");
}

#[test]
fn import_mistakes_name_the_import_key() {
    let (key, problem) = invalid(&good_with("peer = \"host-c\"", "peer = \"host-x\""));
    assert_eq!(key, "import[1].peer");
    assert!(problem.contains("unknown peer \"host-x\""), "{problem}");

    // Both copies would be the local segment "commands".
    let (key, problem) = invalid(&good_with(
        "local_name = \"commands-c\"",
        "local_name = \"commands\"",
    ));
    assert_eq!(key, "import[1].local_name");
    assert!(problem.contains("also import[0]"), "{problem}");

    let (key, problem) = invalid(&good_with(
        "peer = \"host-c\"\nname = \"commands\"",
        "peer = \"host-b\"\nname = \"commands\"",
    ));
    assert_eq!(key, "import[1].name");
    assert!(problem.contains("imported twice"), "{problem}");

    let (key, _) = invalid(&good_with(
        "local_name = \"commands-c\"",
        "local_name = \".hidden\"",
    ));
    assert_eq!(key, "import[1].local_name");
}

#[test]
fn the_example_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("bridge.example.toml");
    let config = Config::from_file(&path).unwrap();
    assert!(config.tls.is_some());
    assert!(!config.peers.is_empty());
    assert!(!config.exports.is_empty());
    assert!(!config.imports.is_empty());
}
