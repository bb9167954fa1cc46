//! `inetkit user check NAME --config FILE`: checks a password where that daemon's `[auth]`
//! finds users, the users file or a directory (LDAP, PostgreSQL), as a login would.

use std::path::Path;

use anyhow::{bail, Context};
use inetkit_auth::AuthConfig;
use serde::Deserialize;

/// Only the `[auth]` section of a daemon's config; the daemon's other sections are its own.
#[derive(Deserialize)]
struct AuthOnly {
    #[serde(default)]
    auth: AuthConfig,
}

pub(crate) fn check(config: &Path, given: &str) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let auth = inetkit_runtime::config::parse::<AuthOnly>(&text, config)?.auth;
    let Some(directory) = auth.directory() else {
        // No directory: the users file this config names, as `check` without --config.
        return crate::user::check(&auth.users_file, given);
    };
    let directory = directory.context("[auth.directory]")?;
    let what = directory.describe();
    let domains = if auth.local_domains.is_empty() {
        inetkit_auth::default_local_domains()
    } else {
        auth.local_domains.clone()
    };
    let found = directory
        .lookup_blocking(given, &domains)
        .with_context(|| format!("{what} does not answer"))?
        .with_context(|| format!("no user {given} in the {what}"))?;
    let name = found.entry.user.name.clone();
    let password = crate::user::read_password(false)?;
    if let Some(dn) = &found.bind_dn {
        let ok = futures::executor::block_on(directory.bind(dn, &password))
            .with_context(|| format!("{what} does not answer"))?;
        if !ok {
            bail!("wrong password for {name}");
        }
        println!("password ok for {name} (LDAP bind as {dn})");
        return Ok(());
    }
    let stored = found
        .entry
        .password
        .as_ref()
        .with_context(|| format!("{name} has no usable password"))?;
    if !stored.verify(&password) {
        bail!("wrong password for {name}");
    }
    println!(
        "password ok for {name} ({}, from the {what})",
        stored.scheme()
    );
    Ok(())
}
