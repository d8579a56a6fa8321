//! `locale2b`: parses the command line, reads the configuration and hands
//! over to a library crate. One module per subcommand.

use clap::{Parser, Subcommand};
use locale2b_config::{Config, LogConfig, LogFormat};

mod bench;
mod client;
mod doctor;
mod image;
mod key;
mod serve;

/// Self-hosted microVM sandboxes for AI agents.
#[derive(Debug, Parser)]
#[command(name = "locale2b", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    target: client::Target,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the REST API server (configuration: LOCALE2B_* variables, see docs/configuration.md).
    Serve,
    /// Build or verify guest images (kernel + rootfs + manifest).
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Explain which VMM backend this host can run, and why.
    Doctor,
    /// Measure boot, exec, file, pause/resume, API latency and density against a real server
    /// (`bench soak`: a long mixed load, then leak checks).
    Bench(bench::BenchArgs),
    /// Sandboxes on a server: create, ls, info, exec, shell, cp, pause, resume, rm, logs, ps.
    #[command(subcommand)]
    Sandbox(client::SandboxCommand),
    /// Workspaces on a server: ls, rm.
    #[command(subcommand)]
    Workspace(client::WorkspaceCommand),
    /// API keys in a keys file (LOCALE2B_API_KEYS_FILE): add one (only its hash is written) or
    /// revoke one; a running server picks the change up on the next request.
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Saved servers for the client commands (like `docker context`).
    #[command(subcommand)]
    Context(client::ContextCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

fn init_tracing(config: &LogConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
}

/// Runs a client command and exits with its code (1 with the message on
/// an error).
fn client_exit(result: anyhow::Result<i32>) -> ! {
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1)
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Sandbox(cmd) => client_exit(on_runtime(client::sandbox(&cli.target, cmd))),
        Command::Workspace(cmd) => client_exit(on_runtime(client::workspace(&cli.target, cmd))),
        Command::Context(cmd) => client_exit(client::context(cmd)),
        Command::Key(cmd) => key::run(cmd),
        Command::Completion { shell } => {
            use clap::CommandFactory as _;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "locale2b",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Image(cmd) => image::run(cmd, &Config::from_env()?),
        Command::Serve => {
            let config = Config::from_env()?;
            init_tracing(&config.log);
            runtime()?.block_on(serve::run(config))
        }
        Command::Bench(args) => bench::run(args, &Config::from_env()?),
        Command::Doctor => {
            let config = Config::from_env()?;
            runtime()?.block_on(doctor::run(config))
        }
    }
}

/// Runs a client command on a runtime that is not waited for afterwards
/// (a blocked read of stdin, as `shell` leaves one, must not keep the
/// process alive).
fn on_runtime(f: impl std::future::Future<Output = anyhow::Result<i32>>) -> anyhow::Result<i32> {
    let rt = runtime()?;
    let result = rt.block_on(f);
    rt.shutdown_background();
    result
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
