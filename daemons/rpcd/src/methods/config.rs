//! The `[builtins]` and `[[method]]` sections of the config, and the registry built from them
//! (the checks of both).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Semaphore;

use inetkit_runtime::config::{optional_seconds, seconds, KeyPath, Problem};

use super::{Builtin, Kind, Method, Registry};
use crate::exec::{self, ArgsMode, ResultKind};
use crate::value::Type;

/// A `[[method]]` of the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodConfig {
    pub name: String,
    #[serde(default)]
    pub help: String,
    #[serde(default)]
    pub params: Vec<ParamConfig>,
    /// The result's type, for `system.methodSignature`; by default `string` for a text result
    /// and `struct` for a JSON one.
    pub returns: Option<Type>,
    pub argv: Vec<String>,
    #[serde(default)]
    pub args: ArgsMode,
    #[serde(default = "root")]
    pub cwd: PathBuf,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default = "default_timeout", deserialize_with = "seconds")]
    pub timeout: Duration,
    #[serde(default = "default_max_stdout")]
    pub max_stdout: usize,
    #[serde(default = "default_max_stderr")]
    pub max_stderr: usize,
    #[serde(default)]
    pub result: ResultKind,
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub public: bool,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// How long a call waits for a free slot when `concurrency` calls are running; by
    /// default the method's timeout.
    #[serde(default, deserialize_with = "optional_seconds")]
    pub queue_timeout: Option<Duration>,
    /// Let string parameters start with `-` (see `exec::Command::allow_options`).
    #[serde(default)]
    pub allow_options: bool,
}

fn root() -> PathBuf {
    PathBuf::from("/")
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_stdout() -> usize {
    1 << 20
}
fn default_max_stderr() -> usize {
    64 << 10
}
fn default_concurrency() -> usize {
    4
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamConfig {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: Type,
}

/// `[builtins]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BuiltinsConfig {
    /// Built-in methods anyone may call without logging in (`host.uptime`, …). The
    /// introspection methods are always public and list only what the caller may call.
    pub public: Vec<String>,
}

impl Registry {
    /// The built-in methods and the configured ones. Its problems are the checks of
    /// `[builtins]` and `[[method]]` (the start and `--check-config` both build it).
    pub fn new(builtins: &BuiltinsConfig, configured: &[MethodConfig]) -> Result<Self, Problem> {
        let mut methods = BTreeMap::new();
        let string = |n: &str| Some(vec![(n.to_owned(), Type::String)]);
        let builtin = |help: &str, params, returns, b| Method {
            help: help.to_owned(),
            params,
            returns,
            public: false,
            users: Vec::new(),
            groups: Vec::new(),
            kind: Kind::Builtin(b),
        };
        for (name, method) in [
            (
                "system.listMethods",
                builtin(
                    "The names of the methods you may call.",
                    Some(vec![]),
                    Type::Array,
                    Builtin::ListMethods,
                ),
            ),
            (
                "system.methodHelp",
                builtin(
                    "The help text of a method.",
                    string("method"),
                    Type::String,
                    Builtin::MethodHelp,
                ),
            ),
            (
                "system.methodSignature",
                builtin(
                    "The signatures of a method: arrays of the result type then the parameter types.",
                    string("method"),
                    Type::Array,
                    Builtin::MethodSignature,
                ),
            ),
            (
                "system.multicall",
                builtin(
                    "Calls several methods: takes an array of {methodName, params} structs and \
                     returns an array holding [result] or a fault struct for each.",
                    Some(vec![("calls".to_owned(), Type::Array)]),
                    Type::Array,
                    Builtin::Multicall,
                ),
            ),
            (
                "rpc.echo",
                builtin(
                    "Returns its parameters as an array (for testing clients).",
                    None,
                    Type::Array,
                    Builtin::Echo,
                ),
            ),
            (
                "host.uptime",
                builtin(
                    "Seconds since the host booted.",
                    Some(vec![]),
                    Type::Double,
                    Builtin::Uptime,
                ),
            ),
            (
                "host.loadavg",
                builtin(
                    "The 1, 5 and 15 minute load averages.",
                    Some(vec![]),
                    Type::Array,
                    Builtin::LoadAvg,
                ),
            ),
            (
                "host.hostname",
                builtin(
                    "The host's name.",
                    Some(vec![]),
                    Type::String,
                    Builtin::Hostname,
                ),
            ),
            (
                "host.time",
                builtin(
                    "The host's clock, in UTC.",
                    Some(vec![]),
                    Type::DateTime,
                    Builtin::Time,
                ),
            ),
        ] {
            methods.insert(name.to_owned(), method);
        }
        for (i, name) in builtins.public.iter().enumerate() {
            match methods.get_mut(name) {
                Some(m) if !name.starts_with("system.") => m.public = true,
                _ => {
                    return Err(KeyPath::new("builtins")
                        .key("public")
                        .index(i)
                        .problem(format!("{name:?} is not a built-in method")))
                }
            }
        }
        for m in methods.iter_mut().filter(|(n, _)| n.starts_with("system.")) {
            m.1.public = true;
        }

        for (i, c) in configured.iter().enumerate() {
            let name = &c.name;
            let check = |ok: bool, key: &str, message: String| {
                let at = KeyPath::new("method").index(i).key(key);
                if ok {
                    Ok(())
                } else {
                    Err(at.problem(format!("method {name:?}: {message}")))
                }
            };
            check(
                !name.is_empty() && !name.starts_with("system.") && !name.starts_with("rpc."),
                "name",
                "the name is empty or in a reserved namespace (system., rpc.)".into(),
            )?;
            check(
                !methods.contains_key(name),
                "name",
                "defined twice, or shadows a built-in".into(),
            )?;
            check(
                c.argv.first().is_some_and(|p| p.starts_with('/')),
                "argv",
                "argv must start with an absolute program path".into(),
            )?;
            check(
                !c.timeout.is_zero(),
                "timeout",
                "timeout must be a positive number of seconds".into(),
            )?;
            check(
                c.concurrency > 0,
                "concurrency",
                "concurrency must be 1 or more".into(),
            )?;
            let queue_timeout = c.queue_timeout.unwrap_or(c.timeout);
            if c.args == ArgsMode::Argv {
                for (j, p) in c.params.iter().enumerate() {
                    let scalar = matches!(
                        p.ty,
                        Type::Int
                            | Type::I8
                            | Type::Bool
                            | Type::String
                            | Type::Double
                            | Type::DateTime
                    );
                    if !scalar {
                        return Err(KeyPath::new("method")
                            .index(i)
                            .key("params")
                            .index(j)
                            .problem(format!(
                                "method {name:?}: parameter {:?} of type {} cannot be a command \
                                 argument; use args = \"stdin-json\"",
                                p.name, p.ty
                            )));
                    }
                }
            }
            let returns = c.returns.unwrap_or(match c.result {
                ResultKind::Text => Type::String,
                ResultKind::Json => Type::Struct,
            });
            methods.insert(
                name.clone(),
                Method {
                    help: c.help.clone(),
                    params: Some(c.params.iter().map(|p| (p.name.clone(), p.ty)).collect()),
                    returns,
                    public: c.public,
                    users: c.users.clone(),
                    groups: c.groups.clone(),
                    kind: Kind::Command {
                        command: exec::Command {
                            argv: c.argv.clone(),
                            args: c.args,
                            cwd: c.cwd.clone(),
                            env: c.env.clone(),
                            timeout: c.timeout,
                            max_stdout: c.max_stdout,
                            max_stderr: c.max_stderr,
                            result: c.result,
                            allow_options: c.allow_options,
                        },
                        slots: Arc::new(Semaphore::new(c.concurrency)),
                        queue_timeout,
                    },
                },
            );
        }
        Ok(Registry { methods })
    }
}
