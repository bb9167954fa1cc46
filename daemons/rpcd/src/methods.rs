//! The methods rpcd offers: introspection (`system.*`), built-in host facts (`host.*`),
//! `rpc.echo`, and the `[[method]]`s of the config, with who may call what.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Semaphore;

use inetkit_auth::User;
use inetkit_runtime::config::{optional_seconds, seconds, KeyPath, Problem};

use crate::exec::{self, ArgsMode, ResultKind};
use crate::tally::Tally;
use crate::value::{Fault, Type, Value};

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

const MULTICALL: &str = "system.multicall";

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Caller {
    pub peer: IpAddr,
    pub user: Option<User>,
}

impl Caller {
    pub(crate) fn name(&self) -> &str {
        self.user.as_ref().map_or("-", |u| u.name.as_str())
    }

    /// The user's groups: the `groups=a,b` extra field of the users file.
    fn in_any_group(&self, groups: &[String]) -> bool {
        let Some(list) = self.user.as_ref().and_then(|u| u.extra_field("groups")) else {
            return false;
        };
        list.split(',').any(|g| groups.iter().any(|want| want == g))
    }
}

/// Parameters as they came: by position (XML-RPC, JSON arrays) or by name (JSON objects).
#[derive(Debug, Clone)]
pub enum Params {
    Positional(Vec<Value>),
    Named(Vec<(String, Value)>),
}

#[derive(Debug, Clone, Copy)]
enum Builtin {
    ListMethods,
    MethodHelp,
    MethodSignature,
    Multicall,
    Echo,
    Uptime,
    LoadAvg,
    Hostname,
    Time,
}

enum Kind {
    Builtin(Builtin),
    Command {
        command: exec::Command,
        slots: Arc<Semaphore>,
        queue_timeout: Duration,
    },
}

struct Method {
    help: String,
    /// `None`: any parameters (no signature).
    params: Option<Vec<(String, Type)>>,
    returns: Type,
    public: bool,
    users: Vec<String>,
    groups: Vec<String>,
    kind: Kind,
}

pub struct Registry {
    methods: BTreeMap<String, Method>,
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

    pub fn len(&self) -> usize {
        self.methods.len()
    }

    /// May `caller` call `method`? Public methods: anyone. Others: a logged-in user, and
    /// when the method names users or groups, one of those.
    fn allowed(method: &Method, caller: &Caller) -> bool {
        if method.public {
            return true;
        }
        let Some(user) = &caller.user else {
            return false;
        };
        if method.users.is_empty() && method.groups.is_empty() {
            return true;
        }
        method.users.contains(&user.name) || caller.in_any_group(&method.groups)
    }

    /// Is `name` a method anyone may call without logging in?
    pub fn is_public(&self, name: &str) -> bool {
        self.methods.get(name).is_some_and(|m| m.public)
    }

    fn visible(&self, name: &str, caller: &Caller) -> Option<&Method> {
        self.methods.get(name).filter(|m| Self::allowed(m, caller))
    }

    /// Calls `name`. What it came to is added to `tally`: the call, or for a multicall that
    /// ran, each call inside it.
    pub async fn call(
        &self,
        caller: &Caller,
        name: &str,
        params: Params,
        tally: &mut Tally,
    ) -> Result<Value, Fault> {
        if name == MULTICALL {
            tally.name(name);
        }
        let result = self.dispatch(caller, name, params, tally).await;
        if name != MULTICALL || result.is_err() {
            tally.add(Some(name), result.as_ref().err());
        }
        result
    }

    async fn dispatch(
        &self,
        caller: &Caller,
        name: &str,
        params: Params,
        tally: &mut Tally,
    ) -> Result<Value, Fault> {
        let Some(method) = self.methods.get(name) else {
            return Err(if caller.user.is_some() {
                Fault::not_found(name)
            } else {
                // Anonymous callers learn nothing about which names exist.
                Fault::new(Fault::AUTH_REQUIRED, "authentication required")
            });
        };
        if !Self::allowed(method, caller) {
            return Err(match caller.user {
                None => Fault::new(Fault::AUTH_REQUIRED, "authentication required"),
                Some(_) => Fault::new(Fault::FORBIDDEN, format!("you may not call {name}")),
            });
        }
        let params = check_params(method, params)?;
        match &method.kind {
            Kind::Builtin(b) => self.builtin(*b, caller, params, tally).await,
            Kind::Command {
                command,
                slots,
                queue_timeout,
            } => {
                tally.command();
                // The command's timeout starts once it has a slot.
                let Ok(Ok(_slot)) = tokio::time::timeout(*queue_timeout, slots.acquire()).await
                else {
                    return Err(Fault::new(
                        Fault::BUSY,
                        format!("{name} is at its concurrency limit; try again later"),
                    ));
                };
                let user = caller.user.as_ref().map(|u| u.name.as_str());
                exec::run(command, name, user, &params).await
            }
        }
    }

    async fn builtin(
        &self,
        b: Builtin,
        caller: &Caller,
        params: Vec<(String, Value)>,
        tally: &mut Tally,
    ) -> Result<Value, Fault> {
        let method_arg = || match params.first() {
            Some((_, Value::String(s))) => self
                .visible(s, caller)
                .map(|m| (s.as_str(), m))
                .ok_or_else(|| Fault::not_found(s)),
            _ => Err(Fault::invalid_params("expected a method name")),
        };
        Ok(match b {
            Builtin::ListMethods => Value::Array(
                self.methods
                    .iter()
                    .filter(|(_, m)| Self::allowed(m, caller))
                    .map(|(n, _)| Value::string(n.clone()))
                    .collect(),
            ),
            Builtin::MethodHelp => Value::String(method_arg()?.1.help.clone()),
            Builtin::MethodSignature => {
                let (_, m) = method_arg()?;
                match &m.params {
                    // The introspection spec's answer for "no signature".
                    None => Value::string("undef"),
                    Some(ps) => {
                        let mut sig = vec![Value::string(m.returns.name())];
                        sig.extend(ps.iter().map(|(_, t)| Value::string(t.name())));
                        Value::Array(vec![Value::Array(sig)])
                    }
                }
            }
            Builtin::Multicall => {
                let Some((_, Value::Array(calls))) = params.into_iter().next() else {
                    return Err(Fault::invalid_params("expected an array of calls"));
                };
                // How many calls one request may make is checked before anything runs
                // (`calls_in`), for multicalls and batches alike.
                let mut results = Vec::with_capacity(calls.len());
                for call in calls {
                    let (name, result) = match multicall_entry(call) {
                        Ok((name, _)) if name == MULTICALL => {
                            let fault = Fault::new(
                                Fault::INVALID_REQUEST,
                                "system.multicall cannot be nested",
                            );
                            (Some(name), Err(fault))
                        }
                        Ok((name, inner)) => {
                            let params = Params::Positional(inner);
                            let result =
                                Box::pin(self.dispatch(caller, &name, params, tally)).await;
                            (Some(name), result)
                        }
                        Err(fault) => (None, Err(fault)),
                    };
                    tally.add(name.as_deref(), result.as_ref().err());
                    results.push(match result {
                        Ok(value) => Value::Array(vec![value]),
                        Err(fault) => crate::xmlrpc::fault_struct(&fault),
                    });
                }
                Value::Array(results)
            }
            Builtin::Echo => Value::Array(params.into_iter().map(|(_, v)| v).collect()),
            Builtin::Uptime => Value::Double(uptime()?),
            Builtin::LoadAvg => {
                let (one, five, fifteen) = sysinfo()?.load_average();
                Value::Array(vec![
                    Value::Double(one),
                    Value::Double(five),
                    Value::Double(fifteen),
                ])
            }
            Builtin::Hostname => {
                let uts = nix::sys::utsname::uname().map_err(|e| {
                    tracing::error!("uname: {e}");
                    internal("host facts unavailable")
                })?;
                Value::String(uts.nodename().to_string_lossy().into_owned())
            }
            Builtin::Time => {
                let t = time::OffsetDateTime::now_utc();
                Value::DateTime(format!(
                    "{:04}{:02}{:02}T{:02}:{:02}:{:02}",
                    t.year(),
                    u8::from(t.month()),
                    t.day(),
                    t.hour(),
                    t.minute(),
                    t.second()
                ))
            }
        })
    }

    /// The method names a request calls, including those inside a `system.multicall`, to
    /// decide before running anything whether it needs a login.
    pub fn names_in<'a>(&self, method: &'a str, params: &'a Params) -> Vec<&'a str> {
        let mut names = vec![method];
        if let Some(calls) = multicall_calls(method, params) {
            for call in calls {
                if let Value::Struct(members) = call {
                    for (k, v) in members {
                        if let ("methodName", Value::String(n)) = (k.as_str(), v) {
                            names.push(n);
                        }
                    }
                }
            }
        }
        names
    }
}

/// How many calls a request for `method` makes: one, or the calls inside a multicall.
pub(crate) fn calls_in(method: &str, params: &Params) -> usize {
    multicall_calls(method, params).map_or(1, <[Value]>::len)
}

/// The calls a `system.multicall` request asks for.
fn multicall_calls<'a>(method: &str, params: &'a Params) -> Option<&'a [Value]> {
    if method != MULTICALL {
        return None;
    }
    let first = match params {
        Params::Positional(p) => p.first(),
        Params::Named(p) => p.first().map(|(_, v)| v),
    };
    match first {
        Some(Value::Array(calls)) => Some(calls),
        _ => None,
    }
}

fn internal(message: &str) -> Fault {
    Fault::new(Fault::INTERNAL_ERROR, message)
}

/// Seconds since boot, as `/proc/uptime` says them (to the nanosecond rather than to the
/// hundredth): the boot-time clock, which counts suspended time too and follows a time
/// namespace's offset. Not from /proc: the unit's ProcSubset=pid hides /proc/uptime. Not from
/// `sysinfo(2)` either, which gives whole seconds and costs a system call, where this clock
/// is read in the vDSO (`sysinfo` was 3-5% of the daemon's time under a load of
/// `host.uptime` calls).
fn uptime() -> Result<f64, Fault> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).map_err(|e| {
        tracing::error!("clock_gettime(CLOCK_BOOTTIME): {e}");
        internal("host facts unavailable")
    })?;
    Ok(Duration::from(now).as_secs_f64())
}

fn sysinfo() -> Result<nix::sys::sysinfo::SysInfo, Fault> {
    nix::sys::sysinfo::sysinfo().map_err(|e| {
        tracing::error!("sysinfo: {e}");
        internal("host facts unavailable")
    })
}

/// One `{methodName, params}` struct of a multicall.
fn multicall_entry(call: Value) -> Result<(String, Vec<Value>), Fault> {
    let bad = || {
        Fault::new(
            Fault::INVALID_REQUEST,
            "each call is a struct with methodName and params",
        )
    };
    let Value::Struct(members) = call else {
        return Err(bad());
    };
    let mut name = None;
    let mut params = Vec::new();
    for (k, v) in members {
        match (k.as_str(), v) {
            ("methodName", Value::String(n)) => name = Some(n),
            ("params", Value::Array(p)) => params = p,
            _ => return Err(bad()),
        }
    }
    Ok((name.ok_or_else(bad)?, params))
}

/// Checks parameters against the signature and names them.
fn check_params(method: &Method, params: Params) -> Result<Vec<(String, Value)>, Fault> {
    let Some(sig) = &method.params else {
        // No signature: any positional parameters.
        return match params {
            Params::Positional(p) => Ok(p.into_iter().map(|v| (String::new(), v)).collect()),
            Params::Named(p) => Ok(p),
        };
    };
    let named: Vec<(String, Value)> = match params {
        Params::Positional(values) => {
            if values.len() != sig.len() {
                return Err(Fault::invalid_params(format!(
                    "expected {} parameters, got {}",
                    sig.len(),
                    values.len()
                )));
            }
            sig.iter().map(|(n, _)| n.clone()).zip(values).collect()
        }
        Params::Named(mut given) => {
            let mut out = Vec::with_capacity(sig.len());
            for (name, _) in sig {
                let at = given
                    .iter()
                    .position(|(k, _)| k == name)
                    .ok_or_else(|| Fault::invalid_params(format!("missing parameter {name:?}")))?;
                out.push(given.swap_remove(at));
            }
            if let Some((extra, _)) = given.first() {
                return Err(Fault::invalid_params(format!(
                    "unknown parameter {:?}",
                    extra.escape_debug().to_string()
                )));
            }
            out
        }
    };
    for ((name, value), (_, ty)) in named.iter().zip(sig) {
        if !ty.accepts(value) {
            return Err(Fault::invalid_params(format!(
                "parameter {name:?} must be {ty}, not {}",
                value.type_name()
            )));
        }
    }
    Ok(named)
}
