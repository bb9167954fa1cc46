//! The methods rpcd offers: introspection (`system.*`), built-in host facts (`host.*`),
//! `rpc.echo`, and the `[[method]]`s of the config, with who may call what.
//!
//! Here: who calls, the registry, access checks and dispatch, parameter checks. `config`: the
//! `[builtins]` and `[[method]]` config and the registry built from it. `builtins`: the
//! built-in methods (introspection, multicall, echo, host facts).

mod builtins;
mod config;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use inetkit_auth::User;

use crate::exec;
use crate::tally::Tally;
use crate::value::{Fault, Type, Value};

pub(crate) use config::{BuiltinsConfig, MethodConfig};

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
