use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use ldap3::SearchEntry;
use serde::Deserialize;

use super::ldap::{Ldap, LdapConfig};
use super::pool::Pool;
use super::*;
use crate::AuthConfig;

/// A stored password as `userPassword` would hold it.
fn stored() -> String {
    crate::hash::hash_password(b"secret").unwrap_or_default()
}

fn limits() -> DirectoryLimits {
    DirectoryLimits {
        timeout: Duration::from_millis(500),
        connections: 2,
        cache_ttl: Duration::from_secs(5),
    }
}

#[derive(Debug, Deserialize)]
struct Daemon {
    #[serde(default)]
    auth: AuthConfig,
}

fn parse(text: &str) -> Result<AuthConfig, String> {
    inetkit_runtime::config::parse::<Daemon>(text, Path::new("test.toml"))
        .map(|d| d.auth)
        .map_err(|e| e.to_string())
}

fn ldap_config(auth_bind: bool) -> LdapConfig {
    let Ok(auth) = parse(&format!(
        "[auth.directory]\ntype = \"ldap\"\nurl = \"ldap://127.0.0.1:9\"\nbase = \"ou=people\"\n\
         auth_bind = {auth_bind}\nextra_attributes = {{ quota = \"description\", groups = \"memberOf\" }}\n"
    )) else {
        panic!("did not parse")
    };
    match auth.directory {
        Some(DirectoryConfig::Ldap(c)) => c,
        other => panic!("{other:?}"),
    }
}

fn search_entry(attrs: &[(&str, &[&str])]) -> SearchEntry {
    SearchEntry {
        dn: "uid=alice,ou=people".into(),
        attrs: attrs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.iter().map(|s| (*s).to_owned()).collect()))
            .collect(),
        bin_attrs: HashMap::new(),
    }
}

#[test]
fn the_section_parses_with_defaults_and_refuses_unknown_keys() {
    let config = ldap_config(false);
    assert_eq!(config.filter, "(&(objectClass=posixAccount)(uid=%u))");
    assert_eq!(config.password_attribute, "userPassword");
    assert_eq!(parse("").map(|a| a.directory), Ok(None));
    let Ok(pg) = parse(
        "[auth]\ncache_ttl = 0\n[auth.directory]\ntype = \"postgresql\"\nconnection = \"host=/run/postgresql\"\nquery = \"SELECT password FROM u WHERE name = $1\"\n",
    ) else {
        panic!("did not parse")
    };
    assert!(matches!(pg.directory, Some(DirectoryConfig::Postgresql(_))));
    assert_eq!(pg.directory_limits().cache_ttl, Duration::ZERO);
    assert!(parse(
        "[auth.directory]\ntype = \"ldap\"\nurl = \"ldap://x\"\nbase = \"b\"\nfiltre = \"x\"\n"
    )
    .is_err());
    assert!(parse("[auth.directory]\ntype = \"nis\"\n").is_err());
}

#[test]
fn settings_that_cannot_work_are_said_before_any_login() {
    let problem = |text: &str| parse(text).ok().and_then(|a| a.problem());
    assert_eq!(problem(""), None);
    let bad_url = problem("[auth.directory]\ntype = \"ldap\"\nurl = \"http://x\"\nbase = \"b\"\n");
    assert!(bad_url.is_some_and(|p| p.contains("expected ldap:// or ldaps://")));
    let no_placeholder =
        problem("[auth.directory]\ntype = \"ldap\"\nurl = \"ldap://x\"\nbase = \"b\"\nfilter = \"(uid=alice)\"\n");
    assert!(no_placeholder.is_some_and(|p| p.contains("%u")));
    let no_parameter = problem(
        "[auth.directory]\ntype = \"postgresql\"\nconnection = \"host=x\"\nquery = \"SELECT 1\"\n",
    );
    assert!(no_parameter.is_some_and(|p| p.contains("$1")));
}

#[test]
fn an_ldap_entry_makes_the_record_a_users_file_line_gives() {
    let Ok(ldap) = Ldap::new(ldap_config(false), limits()) else {
        panic!("config refused")
    };
    let hash = stored();
    let found = ldap.entry(
        "alice",
        search_entry(&[
            ("uid", &["Alice"]),
            ("homeDirectory", &["/srv/alice"]),
            ("userPassword", &[&hash]),
            ("description", &["2 G"]),
            ("memberOf", &["staff", "admins"]),
        ]),
    );
    let Some(found) = found else {
        panic!("no entry")
    };
    assert_eq!(found.entry.user.name, "alice");
    assert_eq!(
        found.entry.user.home.as_deref(),
        Some(Path::new("/srv/alice"))
    );
    assert_eq!(found.entry.user.extra_field("quota"), Some("2_G"));
    assert_eq!(found.entry.user.extra_field("groups"), Some("staff,admins"));
    assert!(found.entry.password.is_some());
    assert_eq!(found.bind_dn, None);

    // A name no users file could hold is nobody.
    assert!(ldap
        .entry("x", search_entry(&[("uid", &["../root"])]))
        .is_none());
}

#[test]
fn in_bind_mode_the_entry_carries_its_dn_and_no_hash() {
    let Ok(ldap) = Ldap::new(ldap_config(true), limits()) else {
        panic!("config refused")
    };
    let hash = stored();
    let Some(found) = ldap.entry(
        "alice",
        search_entry(&[("uid", &["alice"]), ("userPassword", &[&hash])]),
    ) else {
        panic!("no entry")
    };
    assert!(found.entry.password.is_none());
    assert_eq!(found.bind_dn.as_deref(), Some("uid=alice,ou=people"));
}

#[tokio::test]
async fn the_pool_is_bounded_and_keeps_only_connections_that_worked() {
    let pool: Pool<u32> = Pool::new(1, Duration::from_millis(100));
    let first = pool.take(|| async { Ok(1) }).await;
    let Ok(first) = first else {
        panic!("no connection")
    };
    // The one slot is taken: the next caller waits its timeout, then is told "busy".
    let busy = pool.take(|| async { Ok(2) }).await;
    assert!(matches!(busy, Err(DirectoryError::Busy(1))));
    first.give_back();
    let Ok(again) = pool.take(|| async { Ok(3) }).await else {
        panic!("no connection")
    };
    assert_eq!(
        again.conn,
        Some(1),
        "the connection given back serves again"
    );
    drop(again); // not given back: failed, so dropped
    let Ok(fresh) = pool.take(|| async { Ok(4) }).await else {
        panic!("no connection")
    };
    assert_eq!(
        fresh.conn,
        Some(4),
        "a failed connection is replaced by a new one"
    );
    drop(fresh);
    let slow = pool
        .take(|| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(5)
        })
        .await;
    assert!(matches!(slow, Err(DirectoryError::Timeout("connect", _))));
}

#[test]
fn a_directory_that_does_not_answer_is_unavailable_not_a_wrong_password() {
    // Port 9 (discard) on loopback: nothing listens in a test environment; connect fails.
    let Ok(directory) = Directory::new(&DirectoryConfig::Ldap(ldap_config(false)), limits()) else {
        panic!("config refused")
    };
    let outcome = directory.lookup_blocking("alice", &[]);
    assert!(
        matches!(
            outcome,
            Err(DirectoryError::Connect(_) | DirectoryError::Timeout(..))
        ),
        "{outcome:?}"
    );
    // Names no users file could hold never reach the directory.
    assert!(matches!(directory.lookup_blocking("../x", &[]), Ok(None)));
}

#[tokio::test]
async fn a_login_against_a_directory_that_does_not_answer_is_a_temporary_failure() {
    let Ok(auth) = parse(
        "[auth]\nguard_state = \"\"\n[auth.directory]\ntype = \"postgresql\"\nconnection = \"host=127.0.0.1 port=9 sslmode=disable\"\nquery = \"SELECT password FROM u WHERE name = $1\"\n",
    ) else {
        panic!("did not parse")
    };
    let authenticator = auth.authenticator();
    let outcome = authenticator
        .login([127, 0, 0, 1].into(), "alice", b"secret")
        .await;
    assert!(
        matches!(outcome, Err(crate::AuthError::DirectoryUnavailable(_))),
        "{outcome:?}"
    );
}
