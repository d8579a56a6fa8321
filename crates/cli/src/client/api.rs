//! The REST API as the command-line client sees it: where the server is,
//! with which key, and calls whose errors say what the server said.

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Default server when nothing names one.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";
/// Where a local server keeps its generated key (read when no key is given
/// and the file is readable).
pub const LOCAL_KEY_FILE: &str = "/var/lib/firecracker-workspaces/api-key";

/// The client's saved servers (`locale2b context ...`), in
/// `$XDG_CONFIG_HOME/locale2b/cli.toml` (or `~/.config/...`).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contexts {
    /// The context used when none is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// Saved servers by name.
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// One saved server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// Base URL of the server.
    pub url: String,
    /// Its API key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
}

impl Contexts {
    /// The file (`LOCALE2B_CLI_CONFIG` overrides it).
    pub fn path() -> PathBuf {
        if let Some(p) = std::env::var_os("LOCALE2B_CLI_CONFIG") {
            return PathBuf::from(p);
        }
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
            .unwrap_or_else(|| PathBuf::from("."));
        base.join("locale2b").join("cli.toml")
    }

    /// Reads the file (empty when there is none).
    pub fn load() -> anyhow::Result<Self> {
        let path = Self::path();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                toml::from_str(&text).with_context(|| format!("invalid {}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Writes the file (0600: it holds keys).
    pub fn save(&self) -> anyhow::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = Self::path();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let tmp = path.with_extension("toml.tmp");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(toml::to_string(self)?.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }
}

/// How to reach the server: flags, then environment
/// (`LOCALE2B_BASE_URL`, `LOCALE2B_API_KEY`), then the named or current
/// context, then the local default.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// Server URL [env: LOCALE2B_BASE_URL; else the context's; else http://127.0.0.1:8080]
    #[arg(long, global = true)]
    pub url: Option<String>,
    /// API key [env: LOCALE2B_API_KEY; else the context's; else the local server's key file]
    #[arg(long, global = true)]
    pub api_key: Option<String>,
    /// A saved server (`locale2b context ls`) [env: LOCALE2B_CONTEXT]
    #[arg(long, global = true)]
    pub context: Option<String>,
}

impl Target {
    /// The URL and key to use.
    pub fn resolve(&self) -> anyhow::Result<(String, Option<String>)> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let contexts = Contexts::load()?;
        let named = self.context.clone().or_else(|| env("LOCALE2B_CONTEXT"));
        let ctx = match &named {
            Some(name) => Some(contexts.contexts.get(name).cloned().ok_or_else(|| {
                anyhow::anyhow!("no context {name:?} (see `locale2b context ls`)")
            })?),
            None => contexts
                .current
                .as_ref()
                .and_then(|c| contexts.contexts.get(c).cloned()),
        };
        let url = self
            .url
            .clone()
            .or_else(|| env("LOCALE2B_BASE_URL"))
            .or_else(|| ctx.as_ref().map(|c| c.url.clone()))
            .unwrap_or_else(|| DEFAULT_URL.to_owned());
        let key = self
            .api_key
            .clone()
            .or_else(|| env("LOCALE2B_API_KEY"))
            .or_else(|| ctx.and_then(|c| c.api_key))
            .or_else(|| {
                std::fs::read_to_string(LOCAL_KEY_FILE)
                    .ok()
                    .map(|k| k.trim().to_owned())
            });
        Ok((url.trim_end_matches('/').to_owned(), key))
    }
}

/// An error answer of the server.
#[derive(Debug, thiserror::Error)]
#[error("{message} (HTTP {status}{})", if code.is_empty() { String::new() } else { format!(", {code}") })]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// The error's `code`.
    pub code: String,
    /// The error's `message`.
    pub message: String,
}

/// A connection to one server.
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    url: String,
    key: Option<String>,
}

impl Api {
    /// For `target`.
    pub fn new(target: &Target) -> anyhow::Result<Self> {
        let (url, key) = target.resolve()?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self { http, url, key })
    }

    /// The server's base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The API key, if any.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// A request to `path` with the key.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.url));
        match &self.key {
            Some(k) => r.header("X-API-Key", k),
            None => r,
        }
    }

    /// Sends `req`; a non-2xx answer becomes an [`ApiError`].
    pub async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = req.send().await.with_context(|| {
            format!(
                "cannot reach the locale2b server at {} (is it running? --url / LOCALE2B_BASE_URL)",
                self.url
            )
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let err = &body["error"];
        let code = err["code"].as_str().unwrap_or_default().to_owned();
        let message = err["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| {
                if text.is_empty() {
                    format!("HTTP {status}")
                } else {
                    text
                }
            });
        Err(ApiError {
            status,
            code,
            message,
        }
        .into())
    }

    /// `method path` with an optional JSON body, answering JSON (`null`
    /// for an empty answer).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut r = self.request(method, path);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = self.send(r).await?;
        let text = resp.text().await?;
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        Ok(serde_json::from_str(&text)?)
    }
}

/// Percent-encodes a query value.
pub fn q(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char);
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_encoded() {
        assert_eq!(q("/workspace/a b&c"), "/workspace/a%20b%26c");
    }

    #[test]
    fn errors_say_what_the_server_said() {
        let e = ApiError {
            status: 404,
            code: "not_found".into(),
            message: "sandbox sb-x not found".into(),
        };
        assert_eq!(
            e.to_string(),
            "sandbox sb-x not found (HTTP 404, not_found)"
        );
    }

    #[test]
    fn contexts_round_trip() {
        let mut c = Contexts {
            current: Some("a".into()),
            ..Contexts::default()
        };
        c.contexts.insert(
            "a".into(),
            Context {
                url: "http://h:1".into(),
                api_key: Some("k".into()),
            },
        );
        let back: Contexts = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back.contexts["a"], c.contexts["a"]);
        assert_eq!(back.current.as_deref(), Some("a"));
    }
}
