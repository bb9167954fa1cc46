//! Running a configured command: directly (never through a shell), in its own process group,
//! with a cleared environment, a timeout that kills the whole group, and capped output.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::value::{Fault, Value};

/// How a command gets its parameters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArgsMode {
    /// Each parameter is one more argv entry after the configured ones.
    #[default]
    Argv,
    /// The parameters are a JSON object (by name) on stdin; argv is as configured.
    StdinJson,
}

/// What the caller gets back on success.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResultKind {
    /// stdout as a string (invalid UTF-8 replaced by U+FFFD).
    #[default]
    Text,
    /// stdout parsed as JSON.
    Json,
}

#[derive(Debug, Clone)]
pub(crate) struct Command {
    pub argv: Vec<String>,
    pub args: ArgsMode,
    pub cwd: PathBuf,
    /// Names of the daemon's environment variables the command sees; nothing else passes.
    pub env: Vec<String>,
    pub timeout: Duration,
    pub max_stdout: usize,
    pub max_stderr: usize,
    pub result: ResultKind,
    /// May a string parameter start with `-`? Off by default: the program would take it for
    /// an option (`--help`, `-rf`); a sysadmin whose program ends its options with `--` in
    /// argv can allow it.
    pub allow_options: bool,
}

/// One argv entry for a checked parameter. The rule against a leading `-` applies to the
/// text the program gets, whatever the type it came as (`-9`, `-inf`, a date written
/// `--…`). NUL cannot be in an argv entry at all: refused.
fn to_arg(name: &str, value: &Value, allow_options: bool) -> Result<String, Fault> {
    let text = match value {
        Value::String(s) | Value::DateTime(s) => s.clone(),
        Value::Int(n) => n.to_string(),
        Value::Double(d) if d.is_finite() => d.to_string(),
        Value::Double(_) => {
            return Err(Fault::invalid_params(format!(
                "parameter {name}: not a finite number"
            )))
        }
        Value::Bool(b) => b.to_string(),
        other => {
            return Err(Fault::invalid_params(format!(
                "parameter {name}: a {} cannot be a command argument",
                other.type_name()
            )))
        }
    };
    if text.starts_with('-') && !allow_options {
        return Err(Fault::invalid_params(format!(
            "parameter {name}: may not start with '-' (it would be read as an option)"
        )));
    }
    if text.contains('\0') {
        return Err(Fault::invalid_params(format!(
            "parameter {name}: NUL cannot be passed in a command argument"
        )));
    }
    Ok(text)
}

/// Kills the command's whole process group when dropped: at the timeout, when the output cap
/// is passed, when the client goes away (the call's future is dropped), and after a normal
/// exit too, so nothing it left in the background outlives the call.
struct Group(Option<Pid>);

impl Group {
    fn kill(&self) {
        if let Some(pid) = self.0 {
            // ESRCH: the group is already gone.
            let _ = killpg(pid, Signal::SIGKILL);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads up to `cap` bytes; says whether there was more. When `drain`, the rest is read and
/// thrown away (stderr: the command must not block on a full pipe); otherwise reading stops.
async fn read_capped<R: AsyncRead + Unpin>(mut r: R, cap: usize, drain: bool) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let mut over = false;
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(out.len());
                out.extend_from_slice(&buf[..n.min(room)]);
                if n > room {
                    over = true;
                    if !drain {
                        break;
                    }
                }
            }
        }
    }
    (out, over)
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => "ended abnormally".to_owned(),
    }
}

/// Runs `command` with `params` (checked against the signature already, named as given).
pub(crate) async fn run(
    command: &Command,
    method: &str,
    user: Option<&str>,
    params: &[(String, Value)],
) -> Result<Value, Fault> {
    let (program, fixed) = command
        .argv
        .split_first()
        .ok_or_else(|| Fault::new(Fault::INTERNAL_ERROR, "method has an empty argv"))?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(fixed);
    let mut stdin_json = None;
    match command.args {
        ArgsMode::Argv => {
            for (name, value) in params {
                cmd.arg(to_arg(name, value, command.allow_options)?);
            }
        }
        ArgsMode::StdinJson => {
            let object: serde_json::Map<String, serde_json::Value> = params
                .iter()
                .map(|(k, v)| (k.clone(), v.to_json()))
                .collect();
            let mut bytes = serde_json::to_vec(&object)
                .map_err(|e| Fault::new(Fault::INTERNAL_ERROR, e.to_string()))?;
            bytes.push(b'\n');
            stdin_json = Some(bytes);
        }
    }
    cmd.current_dir(&command.cwd).env_clear();
    for name in &command.env {
        if let Some(value) = std::env::var_os(name) {
            cmd.env(name, value);
        }
    }
    cmd.env("INETKIT_RPC_METHOD", method);
    if let Some(user) = user {
        cmd.env("INETKIT_RPC_USER", user);
    }
    cmd.stdin(if stdin_json.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0)
    .kill_on_drop(true);

    let mut child = cmd.spawn().map_err(|e| {
        tracing::error!(method, program = %program, "cannot start the command: {e}");
        Fault::new(
            Fault::INTERNAL_ERROR,
            "the method's command could not be started",
        )
    })?;
    let group = Group(
        child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw),
    );
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();

    let feed = async move {
        if let (Some(mut stdin), Some(bytes)) = (stdin, stdin_json) {
            // A command that does not read its input closes the pipe: not an error here.
            let _ = stdin.write_all(&bytes).await;
        }
    };
    let out = async {
        let Some(stdout) = stdout else {
            return (Vec::new(), false);
        };
        let (bytes, over) = read_capped(stdout, command.max_stdout, false).await;
        if over {
            group.kill();
        }
        (bytes, over)
    };
    let err = async {
        match stderr {
            Some(stderr) => read_capped(stderr, command.max_stderr, true).await,
            None => (Vec::new(), false),
        }
    };
    let all = async {
        let ((), (out, out_over), (err, err_over), status) =
            tokio::join!(feed, out, err, child.wait());
        (out, out_over, err, err_over, status)
    };
    let Ok((stdout, out_over, stderr, err_over, status)) =
        tokio::time::timeout(command.timeout, all).await
    else {
        group.kill();
        return Err(Fault::new(
            Fault::TIMEOUT,
            format!(
                "timed out after {} s; the command and its process group were killed",
                command.timeout.as_secs_f64()
            ),
        ));
    };
    drop(group);
    let status = status.map_err(|e| Fault::new(Fault::INTERNAL_ERROR, e.to_string()))?;

    if out_over {
        return Err(Fault::new(
            Fault::OUTPUT_TOO_LARGE,
            format!(
                "output cut: the command wrote more than {} bytes to stdout and was killed",
                command.max_stdout
            ),
        ));
    }
    if !status.success() {
        let mut message = format!("{}: {}", describe(status), String::from_utf8_lossy(&stderr));
        if err_over {
            message.push_str(&format!("[stderr cut at {} bytes]", command.max_stderr));
        }
        return Err(Fault::new(
            Fault::COMMAND_FAILED,
            message.trim_end().to_owned(),
        ));
    }
    match command.result {
        ResultKind::Text => Ok(Value::String(String::from_utf8_lossy(&stdout).into_owned())),
        ResultKind::Json => serde_json::from_slice::<serde_json::Value>(&stdout)
            .map(|json| Value::from_json(&json))
            .map_err(|e| {
                Fault::new(
                    Fault::BAD_OUTPUT,
                    format!("the command's output is not JSON: {e}"),
                )
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arg(value: Value, allow_options: bool) -> Result<String, i64> {
        to_arg("p", &value, allow_options).map_err(|f| f.code)
    }

    #[test]
    fn no_argument_of_any_type_starts_with_a_dash() {
        for value in [
            Value::string("--help"),
            Value::Int(-9),
            Value::Double(-1.5),
            Value::Double(f64::NEG_INFINITY),
            Value::Double(-0.0),
            Value::DateTime("--20261125T17:02:11".into()),
        ] {
            assert_eq!(
                arg(value.clone(), false),
                Err(Fault::INVALID_PARAMS),
                "{value:?}"
            );
        }
        assert_eq!(arg(Value::Int(-9), true), Ok("-9".into()));
        assert_eq!(arg(Value::Double(-1.5), true), Ok("-1.5".into()));
        assert_eq!(arg(Value::Int(9), false), Ok("9".into()));
        assert_eq!(arg(Value::Bool(true), false), Ok("true".into()));
        assert_eq!(
            arg(Value::DateTime("20261125T17:02:11".into()), false),
            Ok("20261125T17:02:11".into())
        );
    }

    #[test]
    fn no_infinity_nan_or_nul() {
        for value in [
            Value::Double(f64::NAN),
            Value::Double(f64::INFINITY),
            Value::Double(f64::NEG_INFINITY),
            Value::string("a\0b"),
            Value::Nil,
        ] {
            assert_eq!(
                arg(value.clone(), true),
                Err(Fault::INVALID_PARAMS),
                "{value:?}"
            );
        }
    }
}
