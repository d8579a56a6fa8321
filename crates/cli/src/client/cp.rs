//! `locale2b sandbox cp`: one file either way, streamed (no size limit but
//! the server's `max_upload_bytes`), checked with SHA-256 on upload.

use super::api::{q, Api};
use super::output::Progress;
use anyhow::Context as _;
use futures::StreamExt as _;
use reqwest::Method as M;
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt as _;

/// One side of a copy.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Local(String),
    Guest { id: String, path: String },
}

/// `ID:/path` is a guest path (the id starts with a letter and has no
/// `/`); anything else is local.
fn parse(arg: &str) -> End {
    if let Some((id, path)) = arg.split_once(':') {
        let is_id = id.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if is_id && path.starts_with('/') {
            return End::Guest {
                id: id.to_owned(),
                path: path.to_owned(),
            };
        }
    }
    End::Local(arg.to_owned())
}

fn base_name(path: &str) -> anyhow::Result<&str> {
    Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow::anyhow!("{path:?} names no file"))
}

/// Copies `src` to `dst`.
pub async fn run(api: &Api, src: &str, dst: &str) -> anyhow::Result<()> {
    match (parse(src), parse(dst)) {
        (End::Local(from), End::Guest { id, path }) => {
            let path = if path.ends_with('/') {
                format!("{path}{}", base_name(&from)?)
            } else {
                path
            };
            upload(api, &from, &id, &path).await
        }
        (End::Guest { id, path }, End::Local(to)) => {
            let to = if to != "-" && Path::new(&to).is_dir() {
                PathBuf::from(&to)
                    .join(base_name(&path)?)
                    .to_string_lossy()
                    .into_owned()
            } else {
                to
            };
            download(api, &id, &path, &to).await
        }
        (End::Local(_), End::Local(_)) => {
            anyhow::bail!(
                "one side of cp must be in a sandbox: ID:/path (e.g. cp ./a.txt sb-x:/workspace/)"
            )
        }
        (End::Guest { .. }, End::Guest { .. }) => {
            anyhow::bail!(
                "cp copies between the host and a sandbox; copy through the host for two sandboxes"
            )
        }
    }
}

async fn upload(api: &Api, from: &str, id: &str, path: &str) -> anyhow::Result<()> {
    // The checksum first (one read), then the streamed body.
    let (data, size, sha) = if from == "-" {
        use tokio::io::AsyncReadExt as _;
        let mut all = Vec::new();
        tokio::io::stdin().read_to_end(&mut all).await?;
        let sha = hex(&Sha256::digest(&all));
        let size = all.len() as u64;
        (Some(all), size, sha)
    } else {
        let from2 = from.to_owned();
        let (size, sha) = tokio::task::spawn_blocking(move || -> anyhow::Result<(u64, String)> {
            let mut f =
                std::fs::File::open(&from2).with_context(|| format!("cannot open {from2}"))?;
            let mut h = Sha256::new();
            let size = std::io::copy(&mut f, &mut h)?;
            Ok((size, hex(&h.finalize())))
        })
        .await??;
        (None, size, sha)
    };
    let what = format!("{from} -> {id}:{path}");
    let body = match data {
        Some(all) => reqwest::Body::from(all),
        None => {
            let file = tokio::fs::File::open(from)
                .await
                .with_context(|| format!("cannot open {from}"))?;
            let progress = std::sync::Arc::new(std::sync::Mutex::new(Progress::new(
                what.clone(),
                Some(size),
            )));
            let p = progress.clone();
            let stream = tokio_util::io::ReaderStream::new(file).inspect(move |chunk| {
                if let Ok(c) = chunk {
                    p.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .add(c.len() as u64);
                }
            });
            let body = reqwest::Body::wrap_stream(stream);
            let resp = api
                .send(
                    api.request(
                        M::PUT,
                        &format!(
                            "/sandboxes/{}/files/content?path={}&sha256={sha}",
                            q(id),
                            q(path)
                        ),
                    )
                    .header("content-length", size)
                    .body(body),
                )
                .await?;
            drop(resp);
            if let Ok(p) = std::sync::Arc::try_unwrap(progress) {
                p.into_inner()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .finish();
            }
            return Ok(());
        }
    };
    api.send(
        api.request(
            M::PUT,
            &format!(
                "/sandboxes/{}/files/content?path={}&sha256={sha}",
                q(id),
                q(path)
            ),
        )
        .body(body),
    )
    .await?;
    Progress::new(what, Some(size)).finish_with(size);
    Ok(())
}

async fn download(api: &Api, id: &str, path: &str, to: &str) -> anyhow::Result<()> {
    let resp = api
        .send(api.request(
            M::GET,
            &format!("/sandboxes/{}/files/content?path={}", q(id), q(path)),
        ))
        .await?;
    let total = resp.content_length();
    let mut body = resp.bytes_stream();
    if to == "-" {
        let mut out = tokio::io::stdout();
        while let Some(chunk) = body.next().await {
            out.write_all(&chunk.context("the download broke")?).await?;
        }
        out.flush().await?;
        return Ok(());
    }
    // Into a temporary file next to the target, renamed when complete.
    let tmp = format!("{to}.locale2b-part");
    let mut file = tokio::fs::File::create(&tmp)
        .await
        .with_context(|| format!("cannot create {tmp}"))?;
    let mut progress = Progress::new(format!("{id}:{path} -> {to}"), total);
    let result = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.context("the download broke")?;
            file.write_all(&chunk).await?;
            progress.add(chunk.len() as u64);
        }
        file.sync_all().await?;
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    tokio::fs::rename(&tmp, to)
        .await
        .with_context(|| format!("cannot write {to}"))?;
    progress.finish();
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_are_told_apart() {
        assert_eq!(
            parse("sb-abc:/workspace/x"),
            End::Guest {
                id: "sb-abc".into(),
                path: "/workspace/x".into()
            }
        );
        assert_eq!(parse("./a:b"), End::Local("./a:b".into()));
        assert_eq!(parse("C:relative"), End::Local("C:relative".into()));
        assert_eq!(parse("-"), End::Local("-".into()));
    }
}
