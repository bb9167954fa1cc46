use std::time::Duration;

use serde::Deserialize;

use super::*;

/// A daemon part with a top-level key, a section of its own, a duration and a check.
#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Example {
    name: String,
    extra: Extra,
}

#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Extra {
    #[serde(deserialize_with = "seconds")]
    wait: Duration,
    ports: Vec<u16>,
}

impl DaemonConfig for Example {
    const LISTEN: &'static [(&'static str, &'static [&'static str])] =
        &[("ex", &["127.0.0.1:7"]), ("ex-tls", &["127.0.0.1:8"])];
    const IDLE_TIMEOUT: Duration = Duration::from_secs(42);

    fn socket(name: &str, transport: Transport) -> Result<SocketRole, String> {
        match (name, transport) {
            ("ex", _) => Ok(SocketRole::Plain),
            ("ex-tls", Transport::Tcp) => Ok(SocketRole::Tls),
            ("ex-tls", Transport::Udp) => Err("TLS over UDP is not served".into()),
            _ => Err("not a socket of this daemon".into()),
        }
    }

    fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.name == "bad" {
            problems.push(KeyPath::new("name").problem("must not be bad"));
        }
        if self.extra.ports.windows(2).any(|w| w[0] > w[1]) {
            problems.push(
                KeyPath::new("extra")
                    .key("ports")
                    .problem("must be in order"),
            );
        }
        problems
    }
}

const FILE: &str = "/etc/inetkit/example.toml";

fn parse_example(text: &str) -> Result<Config<Example>, String> {
    from_text::<Example>(text, Path::new(FILE))
        .map(|checked| checked.config)
        .map_err(|err| err.to_string())
}

/// The one error line expected, for a text that must be refused.
fn refused(text: &str) -> String {
    match parse_example(text) {
        Ok(config) => panic!("accepted: {config:?}"),
        Err(err) => err,
    }
}

#[test]
fn empty_config_gives_defaults() {
    let c = parse_example("").unwrap();
    assert_eq!(c.limits.max_connections, 1000);
    assert_eq!(c.limits.idle_timeout(), Duration::from_secs(42));
    assert_eq!(c.log.level, LogLevel::Info);
    assert!(c.limits.idle_exit().is_none());
    assert_eq!(c.limits.login_timeout(), Some(Duration::from_secs(60)));
    assert_eq!(c.limits.max_unauthenticated_per_ip, 16);
    assert_eq!(c.listen["ex"], ["127.0.0.1:7"]);
    assert_eq!(c.daemon, Example::default());
    let d = Config::<Example>::default();
    assert_eq!((d.listen, d.limits), (c.listen, c.limits));
}

#[test]
fn sections_parse() {
    let c = parse_example(
        r#"
name = "x"
[listen]
ex = ["127.0.0.1:7", "udp://127.0.0.1:7"]
[limits]
max_connections = 5
idle_timeout = 7
idle_exit = 0.5
login_timeout = 1.5
max_unauthenticated_per_ip = 3
[log]
level = "debug"
[extra]
wait = 2.5
ports = [1, 2]
"#,
    )
    .unwrap();
    assert_eq!(c.listen["ex"].len(), 2);
    assert!(
        !c.listen.contains_key("ex-tls"),
        "[listen] replaces the default"
    );
    assert_eq!(c.limits.max_connections, 5);
    assert_eq!(c.limits.max_connections_per_ip, 64);
    assert_eq!(c.limits.idle_timeout(), Duration::from_secs(7));
    assert_eq!(c.limits.idle_exit(), Some(Duration::from_millis(500)));
    assert_eq!(c.limits.login_timeout(), Some(Duration::from_millis(1500)));
    assert_eq!(c.limits.max_unauthenticated_per_ip, 3);
    assert_eq!(c.log.level, LogLevel::Debug);
    assert_eq!(c.daemon.name, "x");
    assert_eq!(c.daemon.extra.wait, Duration::from_millis(2500));
}

#[test]
fn unknown_keys_are_refused_with_line_and_column_in_every_part() {
    let err = refused("name = \"x\"\n[limits]\n  max_conections = 5\n");
    assert!(err.starts_with(&format!("{FILE}:3:3: ")), "{err}");
    assert!(err.contains("max_conections"), "{err}");

    let err = refused("name = \"x\"\n\n  nmae = \"y\"\n");
    assert!(err.starts_with(&format!("{FILE}:3:3: ")), "{err}");
    assert!(err.contains("`nmae`"), "{err}");
    assert!(err.contains("`listen`") && err.contains("`extra`"), "{err}");

    let err = refused("[bogus]\nx = 1\n");
    assert!(err.starts_with(&format!("{FILE}:1:2: ")), "{err}");

    let err = refused("[extra]\nwait = 1\nport = [1]\n");
    assert!(err.starts_with(&format!("{FILE}:3:1: ")), "{err}");
    assert!(err.contains("`port`"), "{err}");
}

#[test]
fn wrong_types_are_refused_with_position() {
    let err = refused("[limits]\nmax_connections = \"many\"\n");
    assert!(err.contains(":2:19: "), "{err}");
    let err = refused("[log]\nlevel = \"loud\"\n");
    assert!(err.contains(":2:9: "), "{err}");
    let err = refused("[extra]\nports = [1, 70000]\n");
    assert!(err.contains(":2:13: "), "{err}");
    let err = refused("name = 5\n");
    assert!(err.contains(":1:8: "), "{err}");
}

#[test]
fn durations_are_seconds_whole_or_fractional_never_negative() {
    let err = refused("[limits]\nwrite_timeout = -1\n");
    assert_eq!(
        err,
        format!("{FILE}:2:17: expected a number of seconds, 0 or more")
    );
    let err = refused("[extra]\nwait = \"5m\"\n");
    assert!(err.contains(":2:8: "), "{err}");
    let c = parse_example("[limits]\nshutdown_timeout = 0.25\n").unwrap();
    assert_eq!(c.limits.shutdown_timeout, Duration::from_millis(250));
}

#[test]
fn syntax_error_is_refused_with_position() {
    let err = refused("name = \"x\"\n[listen\n");
    assert!(err.contains(":2:"), "{err}");
}

#[test]
fn missing_file_names_the_path_and_the_cause_once() {
    let err = load::<Example>(Path::new("/nonexistent/inetkit.toml")).unwrap_err();
    assert_eq!(err.to_string(), "/nonexistent/inetkit.toml");
    let text = chain(&err);
    assert!(
        text.starts_with("/nonexistent/inetkit.toml: No such file"),
        "{text}"
    );
    assert_eq!(text.matches("No such file").count(), 1, "{text}");
}

#[test]
fn bad_listen_addresses_are_refused_at_the_address() {
    let err = refused("[listen]\nex = [\"127.0.0.1:7\", \"127.0.0.1:99999\"]\n");
    assert!(
        err.starts_with(&format!("{FILE}:2:22: listen.ex[1]: ")),
        "{err}"
    );
    assert!(err.contains("127.0.0.1:99999"), "{err}");
}

#[test]
fn unknown_socket_names_are_refused_at_the_name() {
    let err = refused("name = \"x\"\n[listen]\nexx = [\"127.0.0.1:7\", \"127.0.0.1:8\"]\n");
    assert_eq!(
        err,
        format!("{FILE}:3:1: listen.exx: socket \"exx\": not a socket of this daemon")
    );
    let err = refused("[listen]\nex-tls = [\"udp://127.0.0.1:7\"]\n");
    assert!(
        err.contains(":2:1: ") && err.contains("TLS over UDP"),
        "{err}"
    );
}

#[test]
fn a_tls_socket_needs_a_certificate() {
    let err = refused("[listen]\nex = [\"127.0.0.1:0\"]\nex-tls = [\"127.0.0.1:0\"]\n");
    assert!(
        err.starts_with(&format!("{FILE}:3:1: listen.ex-tls: ")),
        "{err}"
    );
    assert!(err.contains("needs TLS"), "{err}");
}

#[test]
fn a_certificate_that_does_not_load_is_one_problem_at_its_key() {
    let err = refused(
        "[tls]\ncert = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/k.pem\"\n\
         [listen]\nex-tls = [\"127.0.0.1:0\"]\n",
    );
    assert!(err.starts_with(&format!("{FILE}:2:1: tls.cert: ")), "{err}");
    assert!(err.contains("/nonexistent/c.pem"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let err = refused("[tls]\ncert = \"/nonexistent/c.pem\"\n");
    assert!(
        err.contains(":1:2: tls: ") && err.contains("together"),
        "{err}"
    );
}

#[test]
fn the_built_in_listen_leaves_out_tls_sockets_without_a_certificate() {
    let c = parse_example("").unwrap();
    let (bind, left_out) = c.listen_to_bind(false);
    assert_eq!(bind.keys().collect::<Vec<_>>(), ["ex"]);
    assert_eq!(left_out, ["ex-tls"]);
    assert_eq!(c.listen_to_bind(true).0.len(), 2);
    let c = parse_example("[listen]\nex = [\"127.0.0.1:0\"]\n").unwrap();
    assert_eq!(c.listen_to_bind(false).0.len(), 1);
    assert!(defaults::<Example>(Path::new(FILE)).is_ok());
}

#[test]
fn daemon_problems_name_their_key_and_all_are_reported() {
    let err = refused("\n\nname = \"bad\"\n[extra]\nports = [2, 1]\n");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines,
        [
            format!("{FILE}:3:1: name: must not be bad"),
            format!("{FILE}:5:1: extra.ports: must be in order"),
        ]
    );
    let mut config = Config::<Example>::default();
    config.daemon.name = "bad".into();
    let err = check(config, Path::new(FILE), None).unwrap_err();
    assert_eq!(err.to_string(), format!("{FILE}: name: must not be bad"));
}

#[test]
fn problems_come_in_the_order_of_the_file() {
    let err = refused("[listen]\nzz = [\"127.0.0.1:0\"]\nex = [\"nowhere\"]\n");
    let positions: Vec<&str> = err.lines().filter_map(|l| l.split(' ').next()).collect();
    assert_eq!(positions, [format!("{FILE}:2:1:"), format!("{FILE}:3:7:")]);
}

/// Any type parses alone, as the sections' own crates test theirs.
#[test]
fn parse_takes_any_type() {
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Alone {
        #[serde(default)]
        limits: LimitsConfig,
    }
    let alone: Alone = parse("[limits]\nidle_exit = 3\n", Path::new("x.toml")).unwrap();
    assert_eq!(alone.limits.idle_exit(), Some(Duration::from_secs(3)));
    let err = parse::<Alone>("[limit]\n", Path::new("x.toml")).unwrap_err();
    assert!(err.to_string().starts_with("x.toml:1:2: "), "{err}");
}
