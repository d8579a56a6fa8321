//! Template definitions: `image/templates/<name>.toml` in the recipe directory.
//!
//! A template is data only. Adding a variant (python-ml, nodejs, ...) means adding
//! one TOML file; the kernel is shared between templates that name the same
//! fragment and source package, and so is its cache entry.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::ImageError;

/// A parsed template file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// Template name; must equal the file stem. Installed to `images/<name>/`.
    pub name: String,
    /// Template version; part of the input hash.
    pub version: String,
    /// One line for humans.
    #[serde(default)]
    pub description: String,
    /// Timestamp used for every file, the kernel build stamp and the manifest
    /// (`SOURCE_DATE_EPOCH`). Overridable per build.
    pub source_date_epoch: u64,
    /// Kernel recipe.
    pub kernel: KernelSpec,
    /// Debian tree recipe.
    pub debian: DebianSpec,
    /// Root filesystem details.
    #[serde(default)]
    pub rootfs: RootfsSpec,
}

/// Where the kernel comes from: compiled from a fragment, or Debian's
/// prebuilt kernel package with a small initramfs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelSpec {
    /// Config fragment, relative to the recipe's `image/` directory.
    pub fragment: String,
    /// Debian package that provides the source tarball (its version is an input).
    pub source_package: String,
    /// The source tarball installed by that package.
    pub source_tarball: PathBuf,
    /// Debian's prebuilt kernel package (e.g. `linux-image-cloud-amd64`):
    /// used, with an initramfs that loads its modules, while the compiled
    /// kernel is not built yet (`locale2b image build --kernel`).
    #[serde(default)]
    pub package: Option<String>,
}

/// How the Debian tree is made (mmdebstrap).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebianSpec {
    /// Suite, e.g. `bookworm`.
    pub suite: String,
    /// mmdebstrap variant (`minbase`, `apt`, ...).
    pub variant: String,
    /// apt source lines (`deb URI SUITE COMPONENTS`).
    pub mirrors: Vec<String>,
    /// Packages installed on top of the variant.
    pub packages: Vec<String>,
}

/// Root filesystem details.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootfsSpec {
    /// Guest hostname written to /etc/hostname and /etc/hosts.
    #[serde(default = "default_hostname")]
    pub hostname: String,
    /// Free space left in the (sparse) ext4 image, MiB.
    #[serde(default = "default_headroom")]
    pub headroom_mib: u64,
    /// Shell commands run inside the tree (chroot, `sh -eu`) after the packages
    /// are installed, in order.
    #[serde(default)]
    pub setup: Vec<String>,
}

impl Default for RootfsSpec {
    fn default() -> Self {
        Self {
            hostname: default_hostname(),
            headroom_mib: default_headroom(),
            setup: Vec::new(),
        }
    }
}

fn default_hostname() -> String {
    "locale2b".to_owned()
}

fn default_headroom() -> u64 {
    64
}

/// Path of a template file inside a recipe directory.
pub fn template_path(recipe_dir: &Path, name: &str) -> PathBuf {
    recipe_dir
        .join("image")
        .join("templates")
        .join(format!("{name}.toml"))
}

impl Template {
    /// Loads and validates `image/templates/<name>.toml` from `recipe_dir`.
    ///
    /// # Errors
    /// [`ImageError::TemplateNotFound`] when the file is missing,
    /// [`ImageError::TemplateInvalid`] / [`ImageError::TemplateValue`] when it is malformed.
    pub fn load(recipe_dir: &Path, name: &str) -> Result<(Self, Vec<u8>), ImageError> {
        validate_name(name, name)?;
        let path = template_path(recipe_dir, name);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ImageError::TemplateNotFound {
                    name: name.to_owned(),
                    path,
                });
            }
            Err(e) => return Err(ImageError::io("read", path, e)),
        };
        let template = Self::parse(&path, &bytes)?;
        if template.name != name {
            return Err(ImageError::TemplateValue {
                name: name.to_owned(),
                reason: format!("file declares name {:?}", template.name),
            });
        }
        Ok((template, bytes))
    }

    /// Parses template text; `path` is only used in error messages.
    ///
    /// # Errors
    /// [`ImageError::TemplateInvalid`] or [`ImageError::TemplateValue`].
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self, ImageError> {
        let text = String::from_utf8_lossy(bytes);
        let template: Self =
            toml::from_str(&text).map_err(|source| ImageError::TemplateInvalid {
                path: path.to_owned(),
                source,
            })?;
        template.validate()?;
        Ok(template)
    }

    fn validate(&self) -> Result<(), ImageError> {
        validate_name(&self.name, &self.name)?;
        let bad = |reason: String| ImageError::TemplateValue {
            name: self.name.clone(),
            reason,
        };
        if self
            .debian
            .packages
            .iter()
            .any(|p| p.is_empty() || p.contains([',', ' ', '\'']))
        {
            return Err(bad(
                "package names must be non-empty without commas, spaces or quotes".into(),
            ));
        }
        if self.debian.mirrors.is_empty() {
            return Err(bad("debian.mirrors is empty".into()));
        }
        if self.kernel.fragment.contains("..") {
            return Err(bad("kernel.fragment must stay inside image/".into()));
        }
        if let Some(p) = &self.kernel.package {
            let ok = !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
            if !ok {
                return Err(bad(format!(
                    "kernel.package {p:?} is not a Debian package name"
                )));
            }
        }
        Ok(())
    }

    /// The setup commands as one shell script (empty when there are none).
    pub fn setup_script(&self) -> Option<String> {
        if self.rootfs.setup.is_empty() {
            return None;
        }
        let mut script = String::from("# generated from the template's rootfs.setup\n");
        for line in &self.rootfs.setup {
            script.push_str(line);
            script.push('\n');
        }
        Some(script)
    }
}

/// Template names become directory names: lowercase letters, digits, `-`, `_`.
fn validate_name(name: &str, context: &str) -> Result<(), ImageError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ImageError::TemplateValue {
            name: context.to_owned(),
            reason: "name must be 1-64 of [a-z0-9_-]".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "t"
version = "1"
source_date_epoch = 1700000000
[kernel]
fragment = "kernel/locale2b.config"
source_package = "linux-source-6.1"
source_tarball = "/usr/src/linux-source-6.1.tar.xz"
[debian]
suite = "bookworm"
variant = "minbase"
mirrors = ["deb http://deb.debian.org/debian bookworm main"]
packages = ["python3"]
"#;

    #[test]
    fn parses_minimal_template_with_defaults() {
        let t = Template::parse(Path::new("t.toml"), MINIMAL.as_bytes()).expect("parse");
        assert_eq!(t.name, "t");
        assert_eq!(t.rootfs.hostname, "locale2b");
        assert_eq!(t.rootfs.headroom_mib, 64);
        assert!(t.setup_script().is_none());
    }

    #[test]
    fn rejects_unknown_fields() {
        let text = format!("{MINIMAL}\n[extra]\nx = 1\n");
        let err = Template::parse(Path::new("t.toml"), text.as_bytes()).expect_err("must fail");
        assert!(matches!(err, ImageError::TemplateInvalid { .. }), "{err:?}");
    }

    #[test]
    fn rejects_bad_names_and_packages() {
        let text = MINIMAL.replace("name = \"t\"", "name = \"../x\"");
        assert!(Template::parse(Path::new("t.toml"), text.as_bytes()).is_err());
        let text = MINIMAL.replace("[\"python3\"]", "[\"a,b\"]");
        assert!(Template::parse(Path::new("t.toml"), text.as_bytes()).is_err());
    }

    #[test]
    fn shipped_templates_parse() {
        let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let dir = recipe.join("image/templates");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("templates dir") {
            let path = entry.expect("entry").path();
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let (t, _) = Template::load(&recipe, stem).expect("shipped template loads");
            assert!(
                recipe.join("image").join(&t.kernel.fragment).is_file(),
                "fragment of {stem}"
            );
            seen += 1;
        }
        assert!(seen >= 1, "no templates in {}", dir.display());
    }
}
