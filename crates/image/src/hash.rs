//! SHA-256 helpers and the input hashes that key the build cache.
//!
//! Three cache keys, so that a change rebuilds only what depends on it:
//! - kernel: config fragment, kernel build script, source package + version, epoch;
//! - rootfs base (the Debian tree): the template's Debian and rootfs sections,
//!   the rootfs build script, epoch;
//! - image: kernel key, base key, agent binary sha256, template name/version, headroom.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::ImageError;

/// Lowercase hex SHA-256 of a byte slice.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lowercase hex SHA-256 of a file, read in 1 MiB chunks.
///
/// # Errors
/// [`ImageError::Io`] when the file cannot be read.
pub fn sha256_file(path: &Path) -> Result<String, ImageError> {
    let mut file = std::fs::File::open(path).map_err(|e| ImageError::io("open", path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| ImageError::io("read", path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Builds a hash over named inputs. Every name and value is length-prefixed, so
/// moving bytes from one input to the next changes the result.
#[derive(Debug, Clone)]
pub struct InputHasher {
    inner: Sha256,
}

impl InputHasher {
    /// Starts a hash in a domain (e.g. `locale2b/kernel/v1`); bump the domain's
    /// version when the meaning of the inputs changes.
    pub fn new(domain: &str) -> Self {
        let mut h = Self {
            inner: Sha256::new(),
        };
        h.field("domain", domain.as_bytes());
        h
    }

    /// Adds one named input.
    pub fn field(&mut self, name: &str, value: &[u8]) -> &mut Self {
        self.inner.update((name.len() as u64).to_le_bytes());
        self.inner.update(name.as_bytes());
        self.inner.update((value.len() as u64).to_le_bytes());
        self.inner.update(value);
        self
    }

    /// Adds one named string input.
    pub fn text(&mut self, name: &str, value: &str) -> &mut Self {
        self.field(name, value.as_bytes())
    }

    /// Returns the lowercase hex digest.
    pub fn finish(self) -> String {
        hex(&self.inner.finalize())
    }
}

/// Formats the first 16 bytes of a hex digest as a UUID (version 4 / variant bits
/// set), used for the filesystem UUID and htree hash seed so that they are fixed
/// for given inputs yet differ between images.
pub fn uuid_from_hex(hex_digest: &str) -> String {
    let mut bytes = [0u8; 16];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = hex_digest
            .get(i * 2..i * 2 + 2)
            .and_then(|s| u8::from_str_radix(s, 16).ok())
            .unwrap_or(0);
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let h = hex(&bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn sha256_file_matches_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let data = vec![7u8; 3 * (1 << 20) + 5];
        std::fs::write(&path, &data).expect("write");
        assert_eq!(sha256_file(&path).expect("hash"), sha256_hex(&data));
    }

    #[test]
    fn input_hash_is_field_boundary_sensitive() {
        let mut a = InputHasher::new("d");
        a.text("x", "ab").text("y", "c");
        let mut b = InputHasher::new("d");
        b.text("x", "a").text("y", "bc");
        let mut c = InputHasher::new("d");
        c.text("x", "ab").text("y", "c");
        let (a, b, c) = (a.finish(), b.finish(), c.finish());
        assert_ne!(a, b);
        assert_eq!(a, c);
        assert_ne!(a, {
            let mut d = InputHasher::new("other");
            d.text("x", "ab").text("y", "c");
            d.finish()
        });
    }

    #[test]
    fn uuid_is_well_formed_and_stable() {
        let h = sha256_hex(b"seed");
        let u = uuid_from_hex(&h);
        assert_eq!(u.len(), 36);
        assert_eq!(u, uuid_from_hex(&h));
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(u, uuid_from_hex(&sha256_hex(b"other")));
    }
}
