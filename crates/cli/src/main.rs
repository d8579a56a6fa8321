//! `locale2b`: parses the command line and hands over to a library crate.
//! One module per subcommand.

use clap::{Parser, Subcommand};

mod image;

/// Self-hosted microVM sandboxes for AI agents.
#[derive(Debug, Parser)]
#[command(name = "locale2b", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build or verify guest images (kernel + rootfs + manifest).
    #[command(subcommand)]
    Image(image::ImageCommand),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Image(cmd) => image::run(cmd),
    }
}
