//! The built-in methods: introspection (`system.listMethods`, `system.methodHelp`,
//! `system.methodSignature`), `system.multicall`, `rpc.echo` and the host facts (`host.*`).

use std::time::Duration;

use super::{Builtin, Caller, Params, Registry, MULTICALL};
use crate::tally::Tally;
use crate::value::{Fault, Value};

impl Registry {
    pub(super) async fn builtin(
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
