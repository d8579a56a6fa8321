//! The command-line client: `locale2b sandbox ...`, `workspace ...` and
//! `context ...` against a server's REST API (see `docs/cli.md`).

mod api;
mod cp;
mod output;
mod shell;

pub use api::Target;

use anyhow::Context as _;
use api::{q, Api, Contexts};
use base64::Engine as _;
use clap::Subcommand;
use futures::StreamExt as _;
use reqwest::Method as M;
use serde_json::{json, Value};
use std::io::Write as _;

/// `locale2b sandbox ...`.
#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Create a sandbox and print its id (`--json`: the whole answer).
    Create {
        /// Guest RAM, MiB (the server's default when absent).
        #[arg(long)]
        memory_mb: Option<u32>,
        /// vCPUs.
        #[arg(long)]
        vcpus: Option<u8>,
        /// Attach (or create) this named workspace; its disk outlives the sandbox.
        #[arg(long)]
        workspace: Option<String>,
        /// Guest image template.
        #[arg(long)]
        template: Option<String>,
        /// `cold` or `template` (clone a snapshot).
        #[arg(long)]
        boot: Option<String>,
        /// Lifetime in seconds (then destroyed, or paused with the server's on_timeout).
        #[arg(long)]
        timeout: Option<u64>,
        /// Egress policy: `none` (default: no network device), `allowlist`
        /// or `full` (docs/network.md).
        #[arg(long)]
        network: Option<String>,
        /// A domain name (`*.example.com` for every name below), IPv4
        /// address or CIDR the sandbox may reach; repeatable.
        #[arg(long)]
        allow: Vec<String>,
        /// One it may not (mode `full`); repeatable.
        #[arg(long)]
        deny: Vec<String>,
        /// Print the whole answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change a sandbox's egress policy (it must have been created with a
    /// network); takes effect at once.
    Network {
        /// Sandbox id.
        id: String,
        /// `none`, `allowlist` or `full`.
        #[arg(long)]
        mode: String,
        /// Allowed names and CIDRs; repeatable.
        #[arg(long)]
        allow: Vec<String>,
        /// Denied names and CIDRs; repeatable.
        #[arg(long)]
        deny: Vec<String>,
    },
    /// List sandboxes.
    #[command(alias = "list")]
    Ls {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one sandbox.
    Info {
        /// Sandbox id.
        id: String,
        /// JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Run a command and stream its output; exits with its exit code
    /// (124 when it timed out, 128+N when signal N ended it).
    Exec {
        /// Sandbox id.
        id: String,
        /// Working directory in the guest.
        #[arg(long, short = 'w')]
        cwd: Option<String>,
        /// Timeout, seconds.
        #[arg(long)]
        timeout: Option<u64>,
        /// Environment (KEY=VALUE), repeatable.
        #[arg(long, short = 'e')]
        env: Vec<String>,
        /// The command: one argument is a shell command line, several are
        /// a program and its arguments (quoted for the shell).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Open an interactive shell on a PTY (like `docker exec -it`).
    Shell {
        /// Sandbox id.
        id: String,
        /// Program to run instead of `bash -l`.
        #[arg(long)]
        cmd: Option<String>,
    },
    /// Copy a file between the host and a sandbox: `cp ./local ID:/path`
    /// or `cp ID:/path ./local` (`-` is stdin/stdout).
    Cp {
        /// Source: a local path or `ID:/path`.
        src: String,
        /// Destination: a local path or `ID:/path`.
        dst: String,
    },
    /// Pause a sandbox to disk.
    Pause {
        /// Sandbox id.
        id: String,
    },
    /// Resume a paused sandbox.
    Resume {
        /// Sandbox id.
        id: String,
    },
    /// Destroy sandboxes.
    #[command(alias = "destroy")]
    Rm {
        /// Sandbox ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Print a background process's output (`-f`: follow until it ends).
    Logs {
        /// Sandbox id.
        id: String,
        /// Process pid or tag (`locale2b sandbox ps ID`).
        process: String,
        /// Follow live output until the process ends.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// List a sandbox's background processes.
    Ps {
        /// Sandbox id.
        id: String,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `locale2b workspace ...`.
#[derive(Debug, Subcommand)]
pub enum WorkspaceCommand {
    /// List workspaces.
    #[command(alias = "list")]
    Ls {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete workspaces (their disks and snapshots).
    Rm {
        /// Workspace ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

/// `locale2b context ...`: saved servers.
#[derive(Debug, Subcommand)]
pub enum ContextCommand {
    /// List saved servers (`*` marks the current one).
    Ls {
        /// JSON instead of a table (keys are not shown).
        #[arg(long)]
        json: bool,
    },
    /// Save a server.
    Add {
        /// Name.
        name: String,
        /// Its URL.
        #[arg(long = "server")]
        server: String,
        /// Its API key.
        #[arg(long = "key")]
        key: Option<String>,
    },
    /// Make a saved server the current one.
    Use {
        /// Name.
        name: String,
    },
    /// Forget a saved server.
    Rm {
        /// Name.
        name: String,
    },
}

/// Runs a sandbox command; the process's exit code.
pub async fn sandbox(target: &Target, cmd: SandboxCommand) -> anyhow::Result<i32> {
    let api = Api::new(target)?;
    use SandboxCommand as C;
    match cmd {
        C::Create {
            memory_mb,
            vcpus,
            workspace,
            template,
            boot,
            timeout,
            network,
            allow,
            deny,
            json,
        } => {
            let mut body = serde_json::Map::new();
            let mut put = |k: &str, v: Option<Value>| {
                if let Some(v) = v {
                    body.insert(k.to_owned(), v);
                }
            };
            put("memory_mb", memory_mb.map(Value::from));
            put("vcpu_count", vcpus.map(Value::from));
            put("workspace_id", workspace.map(Value::from));
            put("template", template.map(Value::from));
            put("boot", boot.map(Value::from));
            put("timeout_sec", timeout.map(Value::from));
            if network.is_some() || !allow.is_empty() || !deny.is_empty() {
                let mode = network.unwrap_or_else(|| "allowlist".into());
                put(
                    "network",
                    Some(serde_json::json!({"mode": mode, "allow": allow, "deny": deny})),
                );
            }
            let sb = api
                .call(M::POST, "/sandboxes", Some(Value::Object(body)))
                .await?;
            if json {
                output::json(&sb);
            } else {
                println!("{}", output::cell(&sb["sandbox_id"]));
            }
        }
        C::Ls { json } => {
            let list = api.call(M::GET, "/sandboxes", None).await?;
            if json {
                output::json(&list);
            } else {
                let rows: Vec<Vec<String>> = list["sandboxes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| {
                        [
                            "/sandbox_id",
                            "/status",
                            "/memory_mb",
                            "/vcpu_count",
                            "/network/mode",
                            "/workspace_id",
                            "/boot",
                            "/created_at",
                        ]
                        .iter()
                        .map(|k| output::cell(s.pointer(k).unwrap_or(&Value::Null)))
                        .collect()
                    })
                    .collect();
                output::table(
                    &[
                        "ID",
                        "STATUS",
                        "MEMORY_MB",
                        "VCPUS",
                        "NETWORK",
                        "WORKSPACE",
                        "BOOT",
                        "CREATED",
                    ],
                    &rows,
                );
            }
        }
        C::Info { id, json } => {
            let sb = api
                .call(M::GET, &format!("/sandboxes/{}", q(&id)), None)
                .await?;
            if json {
                output::json(&sb);
            } else if let Some(o) = sb.as_object() {
                let w = o.keys().map(String::len).max().unwrap_or(0);
                for (k, v) in o {
                    println!("{k:<w$}  {}", output::cell(v));
                }
            }
        }
        C::Exec {
            id,
            cwd,
            timeout,
            env,
            command,
        } => return exec(&api, &id, cwd, timeout, &env, &command).await,
        C::Shell { id, cmd } => return shell::run(&api, &id, cmd.as_deref()).await,
        C::Cp { src, dst } => cp::run(&api, &src, &dst).await?,
        C::Network {
            id,
            mode,
            allow,
            deny,
        } => {
            let sb = api
                .call(
                    M::PUT,
                    &format!("/sandboxes/{}/network", q(&id)),
                    Some(serde_json::json!({"mode": mode, "allow": allow, "deny": deny})),
                )
                .await?;
            println!("{id} network: {}", sb["network"]);
        }
        C::Pause { id } => {
            api.call(M::POST, &format!("/sandboxes/{}/pause", q(&id)), None)
                .await?;
            println!("{id} paused");
        }
        C::Resume { id } => {
            api.call(M::POST, &format!("/sandboxes/{}/resume", q(&id)), None)
                .await?;
            println!("{id} running");
        }
        C::Rm { ids } => {
            let mut failed = 0;
            for id in ids {
                match api
                    .call(M::DELETE, &format!("/sandboxes/{}", q(&id)), None)
                    .await
                {
                    Ok(_) => println!("{id} destroyed"),
                    Err(e) => {
                        eprintln!("error: {id}: {e:#}");
                        failed += 1;
                    }
                }
            }
            if failed > 0 {
                return Ok(1);
            }
        }
        C::Logs {
            id,
            process,
            follow,
        } => return logs(&api, &id, &process, follow).await,
        C::Ps { id, json } => {
            let list = api
                .call(M::GET, &format!("/sandboxes/{}/processes", q(&id)), None)
                .await?;
            if json {
                output::json(&list);
            } else {
                let rows: Vec<Vec<String>> = list["processes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        ["pid", "tag", "status", "exit_code", "started_at", "command"]
                            .iter()
                            .map(|k| output::cell(&p[*k]))
                            .collect()
                    })
                    .collect();
                output::table(
                    &["PID", "TAG", "STATUS", "EXIT", "STARTED", "COMMAND"],
                    &rows,
                );
            }
        }
    }
    Ok(0)
}

/// Quotes `arg` for `/bin/sh` when it needs it.
fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b));
    if plain {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

/// The shell command line of `exec`'s arguments.
fn command_line(args: &[String]) -> String {
    match args {
        [one] => one.clone(),
        many => many
            .iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// The exit code of an `end` line.
fn exit_code_of(end: &Value) -> i32 {
    if end["timed_out"].as_bool() == Some(true) {
        return 124;
    }
    if let Some(code) = end["exit_code"].as_i64() {
        return i32::try_from(code).unwrap_or(1);
    }
    match end["signal"].as_i64() {
        Some(sig) => 128 + i32::try_from(sig).unwrap_or(0),
        None => 1,
    }
}

async fn exec(
    api: &Api,
    id: &str,
    cwd: Option<String>,
    timeout: Option<u64>,
    env: &[String],
    command: &[String],
) -> anyhow::Result<i32> {
    let mut envs = serde_json::Map::new();
    for kv in env {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--env {kv:?}: expected KEY=VALUE"))?;
        envs.insert(k.to_owned(), Value::from(v));
    }
    let mut body = json!({"command": command_line(command), "stream": true, "env": envs});
    if let Some(c) = cwd {
        body["working_dir"] = Value::from(c);
    }
    if let Some(t) = timeout {
        body["timeout_ms"] = Value::from(t.saturating_mul(1000));
    }
    let resp = api
        .send(
            api.request(M::POST, &format!("/sandboxes/{}/exec", q(id)))
                .json(&body),
        )
        .await?;
    let end = ndjson(resp).await?;
    Ok(exit_code_of(&end))
}

/// Prints an NDJSON output stream (`stdout`/`stderr`/`pty` lines) and
/// answers its `end` line.
async fn ndjson(resp: reqwest::Response) -> anyhow::Result<Value> {
    let mut body = resp.bytes_stream();
    let mut buf = Vec::new();
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    while let Some(chunk) = body.next().await {
        buf.extend_from_slice(&chunk.context("the output stream broke")?);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let v: Value = serde_json::from_slice(&line).context("malformed stream line")?;
            let data = v["data"].as_str().unwrap_or_default().as_bytes();
            match v["type"].as_str() {
                Some("stdout" | "pty") => {
                    out.write_all(data)?;
                    out.flush()?;
                }
                Some("stderr") => {
                    err.write_all(data)?;
                    err.flush()?;
                }
                Some("dropped") => eprintln!("[{} bytes of output were dropped]", v["bytes"]),
                Some("end") => return Ok(v),
                Some("error") => {
                    anyhow::bail!("{}", v["message"].as_str().unwrap_or("the stream failed"))
                }
                _ => {}
            }
        }
    }
    anyhow::bail!("the output stream ended before the command did")
}

async fn logs(api: &Api, id: &str, process: &str, follow: bool) -> anyhow::Result<i32> {
    let base = format!("/sandboxes/{}/processes/{}", q(id), q(process));
    if follow {
        let resp = api
            .send(api.request(M::GET, &format!("{base}/stream?cursor=0")))
            .await?;
        ndjson(resp).await?;
        return Ok(0);
    }
    let mut cursor = 0u64;
    loop {
        let v = api
            .call(
                M::GET,
                &format!("{base}/output?cursor={cursor}&encoding=base64"),
                None,
            )
            .await?;
        for c in v["chunks"].as_array().into_iter().flatten() {
            let data = base64::engine::general_purpose::STANDARD
                .decode(c["data"].as_str().unwrap_or_default())
                .context("malformed output chunk")?;
            if c["stream"] == "stderr" {
                std::io::stderr().write_all(&data)?;
            } else {
                std::io::stdout().write_all(&data)?;
            }
        }
        let next = v["next_cursor"].as_u64().unwrap_or(cursor);
        if next == cursor {
            return Ok(0);
        }
        cursor = next;
    }
}

/// Runs a workspace command.
pub async fn workspace(target: &Target, cmd: WorkspaceCommand) -> anyhow::Result<i32> {
    let api = Api::new(target)?;
    match cmd {
        WorkspaceCommand::Ls { json } => {
            let list = api.call(M::GET, "/workspaces", None).await?;
            if json {
                output::json(&list);
            } else {
                let rows: Vec<Vec<String>> = list["workspaces"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|w| {
                        let size = w["disk_usage_bytes"]
                            .as_u64()
                            .map_or("-".into(), output::bytes);
                        vec![
                            output::cell(&w["workspace_id"]),
                            output::cell(&w["status"]),
                            output::cell(&w["sandbox_id"]),
                            size,
                            output::cell(&w["created_at"]),
                        ]
                    })
                    .collect();
                output::table(&["ID", "STATUS", "SANDBOX", "DISK", "CREATED"], &rows);
            }
        }
        WorkspaceCommand::Rm { ids } => {
            let mut failed = 0;
            for id in ids {
                match api
                    .call(M::DELETE, &format!("/workspaces/{}", q(&id)), None)
                    .await
                {
                    Ok(_) => println!("{id} deleted"),
                    Err(e) => {
                        eprintln!("error: {id}: {e:#}");
                        failed += 1;
                    }
                }
            }
            if failed > 0 {
                return Ok(1);
            }
        }
    }
    Ok(0)
}

/// Runs a context command.
pub fn context(cmd: ContextCommand) -> anyhow::Result<i32> {
    let mut c = Contexts::load()?;
    match cmd {
        ContextCommand::Ls { json } => {
            if json {
                let list: Vec<Value> = c
                    .contexts
                    .iter()
                    .map(|(n, x)| json!({"name": n, "url": x.url, "current": c.current.as_deref() == Some(n.as_str()), "has_key": x.api_key.is_some()}))
                    .collect();
                output::json(&json!({ "contexts": list }));
            } else {
                let rows: Vec<Vec<String>> = c
                    .contexts
                    .iter()
                    .map(|(n, x)| {
                        let mark = if c.current.as_deref() == Some(n.as_str()) {
                            "*"
                        } else {
                            ""
                        };
                        vec![
                            format!("{n}{mark}"),
                            x.url.clone(),
                            if x.api_key.is_some() { "yes" } else { "no" }.into(),
                        ]
                    })
                    .collect();
                output::table(&["NAME", "URL", "KEY"], &rows);
            }
        }
        ContextCommand::Add { name, server, key } => {
            let url = reqwest::Url::parse(&server).with_context(|| {
                format!("--server {server:?} is not a URL (e.g. http://127.0.0.1:8080)")
            })?;
            c.contexts.insert(
                name.clone(),
                api::Context {
                    url: url.as_str().trim_end_matches('/').to_owned(),
                    api_key: key,
                },
            );
            if c.current.is_none() {
                c.current = Some(name.clone());
            }
            c.save()?;
            println!("context {name} saved in {}", Contexts::path().display());
        }
        ContextCommand::Use { name } => {
            anyhow::ensure!(
                c.contexts.contains_key(&name),
                "no context {name:?} (see `locale2b context ls`)"
            );
            c.current = Some(name.clone());
            c.save()?;
            println!("using context {name}");
        }
        ContextCommand::Rm { name } => {
            anyhow::ensure!(c.contexts.remove(&name).is_some(), "no context {name:?}");
            if c.current.as_deref() == Some(name.as_str()) {
                c.current = None;
            }
            c.save()?;
            println!("context {name} removed");
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_quoted_for_the_shell() {
        assert_eq!(command_line(&["echo hi | wc -c".into()]), "echo hi | wc -c");
        assert_eq!(
            command_line(&["printf".into(), "%s\n".into(), "it's".into()]),
            "printf '%s\n' 'it'\\''s'"
        );
    }

    #[test]
    fn exit_codes_follow_the_command() {
        assert_eq!(exit_code_of(&json!({"exit_code": 3})), 3);
        assert_eq!(exit_code_of(&json!({"exit_code": null, "signal": 9})), 137);
        assert_eq!(
            exit_code_of(&json!({"exit_code": null, "timed_out": true})),
            124
        );
    }
}
