//! `locale2b image ...` (owned by the image pipeline work).

use clap::Subcommand;

/// Image subcommands.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build the guest artifacts of a template.
    Build,
}

/// Runs an image subcommand.
pub fn run(_cmd: ImageCommand) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
