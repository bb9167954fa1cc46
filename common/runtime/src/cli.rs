//! The command line every daemon takes.

use std::path::PathBuf;

/// What the command line asks for when it asks the daemon to run (or check its config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// The config file.
    pub config: PathBuf,
    /// The config was named on the command line (a missing default file is not an error,
    /// except to `--check-config`).
    pub config_given: bool,
    /// `--check-config`: check the config, say what is wrong, and exit.
    pub check_config: bool,
}

/// The command line, understood.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Run the daemon, or check its config.
    Run(Args),
    /// `--help` or `--version`: print this and exit 0.
    Exit(String),
    /// A usage error: print this and exit 2.
    Usage(String),
}

/// What each daemon is, for its `--help`: the NAME line of its man page.
fn summary(program: &str) -> Option<&'static str> {
    Some(match program {
        "inetkit-echo" => "echo, discard, chargen, daytime and time services",
        "inetkit-dns-forwarder" => "caching, spoof-resistant DNS forwarder",
        "inetkit-smtp-submit" => "SMTP mail submission server with a durable spool",
        "inetkit-pop3d" => "POP3 server over the inetkit mail store",
        "inetkit-imapd" => "IMAP server over the inetkit mail store",
        "inetkit-ftpd" => "FTP and FTPS server with each user confined to a directory",
        "inetkit-rpcd" => "XML-RPC and JSON-RPC server for sysadmin-defined commands",
        _ => return None,
    })
}

/// Parses the arguments (without the program name) of `program`, whose config is
/// `default_config` unless `--config` names another.
pub fn parse(
    program: &str,
    default_config: &str,
    args: impl IntoIterator<Item = String>,
) -> Parsed {
    let mut parsed = Args {
        config: PathBuf::from(default_config),
        config_given: false,
        check_config: false,
    };
    let what = summary(program).unwrap_or("an inetkit daemon");
    let usage = format!(
        "usage: {program} [--config FILE] [--check-config]\n\
         \n\
         {program}: {what}, started by systemd.\n\
         Serves the sockets systemd passes (LISTEN_FDS), or binds those in the config's\n\
         [listen] section when started by hand.\n\
         \n\
         \x20 -c, --config FILE   config file (default {default_config})\n\
         \x20     --check-config  check the config, print what is wrong, and exit\n\
         \x20 -h, --help          this text\n\
         \x20 -V, --version       the version\n\
         \n\
         See {program}(8), and {program}.toml(5) for the config."
    );
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-c" | "--config" => match args.next() {
                Some(file) => {
                    parsed.config = PathBuf::from(file);
                    parsed.config_given = true;
                }
                None => return Parsed::Usage(format!("{arg} needs a file\n{usage}")),
            },
            _ if arg.starts_with("--config=") => {
                parsed.config = PathBuf::from(arg.strip_prefix("--config=").unwrap_or_default());
                parsed.config_given = true;
            }
            "--check-config" => parsed.check_config = true,
            "-h" | "--help" => return Parsed::Exit(usage),
            "-V" | "--version" => {
                return Parsed::Exit(format!("{program} {}", env!("CARGO_PKG_VERSION")))
            }
            _ => return Parsed::Usage(format!("unknown argument {arg:?}\n{usage}")),
        }
    }
    Parsed::Run(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Parsed {
        parse(
            "inetkit-x",
            "/etc/inetkit/x.toml",
            args.iter().map(|s| s.to_string()),
        )
    }

    #[test]
    fn defaults_and_flags() {
        let Parsed::Run(a) = run(&[]) else { panic!() };
        assert_eq!(a.config, PathBuf::from("/etc/inetkit/x.toml"));
        assert!(!a.config_given && !a.check_config);
        let Parsed::Run(a) = run(&["--config", "/tmp/a.toml", "--check-config"]) else {
            panic!()
        };
        assert_eq!(a.config, PathBuf::from("/tmp/a.toml"));
        assert!(a.config_given && a.check_config);
        let Parsed::Run(a) = run(&["--config=/b.toml"]) else {
            panic!()
        };
        assert_eq!(a.config, PathBuf::from("/b.toml"));
    }

    #[test]
    fn errors_and_exits() {
        assert!(matches!(run(&["--bogus"]), Parsed::Usage(_)));
        assert!(matches!(run(&["--config"]), Parsed::Usage(_)));
        assert!(matches!(run(&["--help"]), Parsed::Exit(t) if t.contains("--check-config")));
        assert!(matches!(run(&["-V"]), Parsed::Exit(t) if t.starts_with("inetkit-x ")));
    }

    #[test]
    fn help_says_what_the_daemon_is_and_names_its_man_pages() {
        let daemons = [
            "echo",
            "dns-forwarder",
            "smtp-submit",
            "pop3d",
            "imapd",
            "ftpd",
            "rpcd",
        ];
        for name in daemons {
            let program = format!("inetkit-{name}");
            let args = ["--help".to_owned()];
            let Parsed::Exit(help) = parse(&program, "/etc/x.toml", args) else {
                panic!("{program} --help")
            };
            let what = summary(&program).unwrap_or_else(|| panic!("{program} has no summary"));
            assert!(help.contains(&format!("{program}: {what}, started by systemd.")));
            assert!(help.contains(&format!("See {program}(8), and {program}.toml(5)")));
        }
    }
}
