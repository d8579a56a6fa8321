//! Errors of the image pipeline.

use std::path::PathBuf;

/// Everything that can go wrong while building, installing or verifying an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The template file does not exist in the recipe directory.
    #[error("template {name:?} not found (looked for {path})")]
    TemplateNotFound {
        /// Template name asked for.
        name: String,
        /// Path that was tried.
        path: PathBuf,
    },
    /// The template file is not valid TOML or does not match the format.
    #[error("invalid template {path}")]
    TemplateInvalid {
        /// Template file.
        path: PathBuf,
        /// Parser error.
        #[source]
        source: toml::de::Error,
    },
    /// A template value is outside what the pipeline accepts.
    #[error("invalid template {name:?}: {reason}")]
    TemplateValue {
        /// Template name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The guest agent binary is missing.
    #[error("agent binary not found at {path} (build it with `cargo build --release -p locale2b-agent` or pass --agent)")]
    AgentMissing {
        /// Path that was tried.
        path: PathBuf,
    },
    /// A filesystem operation failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done ("read", "create", ...).
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An external tool could not be started.
    #[error("could not run {program}")]
    ToolSpawn {
        /// Program name.
        program: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An external build step exited unsuccessfully.
    #[error("{step} failed ({status})")]
    ToolFailed {
        /// Build step ("kernel", "rootfs base", ...).
        step: String,
        /// Exit status as printed by the OS.
        status: String,
    },
    /// A build step finished without producing what it promised.
    #[error("{step} did not produce {path}")]
    MissingOutput {
        /// Build step.
        step: String,
        /// Expected output.
        path: PathBuf,
    },
    /// A manifest could not be parsed or written.
    #[error("invalid manifest {path}")]
    Manifest {
        /// Manifest file.
        path: PathBuf,
        /// JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// Installed artifacts do not match their manifest.
    #[error("{} artifact(s) in {dir} do not match manifest.json: {}", mismatches.len(), describe(mismatches))]
    Mismatch {
        /// Image directory that was verified.
        dir: PathBuf,
        /// Every artifact that differs.
        mismatches: Vec<Mismatch>,
    },
}

/// One artifact whose size or checksum differs from the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// File name inside the image directory.
    pub file: String,
    /// What the manifest says (`sha256:<hex>` or `size:<n>`).
    pub expected: String,
    /// What the file has.
    pub actual: String,
}

fn describe(mismatches: &[Mismatch]) -> String {
    mismatches
        .iter()
        .map(|m| format!("{} expected {} got {}", m.file, m.expected, m.actual))
        .collect::<Vec<_>>()
        .join("; ")
}

impl ImageError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
