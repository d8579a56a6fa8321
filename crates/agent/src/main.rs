//! `locale2b-agent`: the guest agent binary. Parses the command line and
//! calls the library.

use locale2b_agent::{init, serial, serve_unix, vsock, AgentContext, Config};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage:
  locale2b-agent serve --unix PATH [--max-frame BYTES] [--idle-timeout-sec N] [--workspace DIR]
  locale2b-agent init      (guest init mode; the default when running as PID 1)
  locale2b-agent --version";

enum Command {
    Version,
    Init,
    Serve { unix: PathBuf, config: Config },
}

fn parse(args: &[String]) -> Result<Command, String> {
    // As PID 1 the kernel may pass stray command-line words as arguments;
    // exiting would panic the kernel, so PID 1 is always init.
    if std::process::id() == 1 {
        return Ok(Command::Init);
    }
    match args.first().map(String::as_str) {
        Some("--version" | "-V") => Ok(Command::Version),
        Some("init") => Ok(Command::Init),
        Some("serve") => {
            let mut unix = None;
            let mut config = Config::default();
            let mut it = args[1..].iter();
            while let Some(flag) = it.next() {
                let mut value = || {
                    it.next()
                        .cloned()
                        .ok_or_else(|| format!("{flag} needs a value"))
                };
                match flag.as_str() {
                    "--unix" => unix = Some(PathBuf::from(value()?)),
                    "--max-frame" => {
                        config.max_frame =
                            value()?.parse().map_err(|e| format!("--max-frame: {e}"))?;
                    }
                    "--idle-timeout-sec" => {
                        let secs: u64 = value()?
                            .parse()
                            .map_err(|e| format!("--idle-timeout-sec: {e}"))?;
                        config.idle_timeout = Duration::from_secs(secs);
                    }
                    "--workspace" => config.workspace_dir = PathBuf::from(value()?),
                    other => return Err(format!("unknown option {other:?}")),
                }
            }
            let unix = unix.ok_or("serve needs --unix PATH")?;
            if config.max_frame < 1024 {
                return Err("--max-frame must be at least 1024".into());
            }
            Ok(Command::Serve { unix, config })
        }
        Some(other) => Err(format!("unknown command {other:?}")),
        None => Err("no command given".into()),
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOCALE2B_AGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = match parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("locale2b-agent: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match cmd {
        Command::Version => {
            println!("locale2b-agent {}", locale2b_protocol::AGENT_VERSION);
            ExitCode::SUCCESS
        }
        Command::Serve { unix, config } => {
            init_tracing();
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("locale2b-agent: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let ctx = AgentContext::new(config);
            let result = rt.block_on(async move {
                let sig_ctx = ctx.clone();
                tokio::spawn(async move {
                    let _ = tokio::signal::ctrl_c().await;
                    sig_ctx.request_shutdown();
                });
                eprintln!("locale2b-agent: ready");
                serve_unix(&unix, ctx).await
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("locale2b-agent: {}", init::error_chain(&e));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Init => run_init(),
    }
}

/// Init mode. As PID 1 this never returns: it ends by powering off.
fn run_init() -> ExitCode {
    let pid1 = std::process::id() == 1;
    init_tracing();
    if pid1 {
        if let Err(e) = init::setup_system() {
            tracing::error!(error = %init::error_chain(&e), "system setup failed");
        }
    }
    let config = Config {
        manage_system: true,
        power_off_on_shutdown: pid1,
        ..Config::default()
    };
    let ctx = AgentContext::new(config);
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("locale2b-agent: cannot start the runtime: {e}");
            if pid1 {
                locale2b_agent::system::power_off();
            }
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        tokio::spawn(init::run_reaper(ctx.clone()));
        tokio::spawn(init::run_signal_handler(ctx.clone()));
        let mut listening = false;
        match vsock::bind_vsock() {
            Ok(Some(listener)) => {
                listening = true;
                let c = ctx.clone();
                tokio::spawn(async move {
                    if let Err(e) = vsock::serve_vsock(listener, c).await {
                        tracing::error!(error = %init::error_chain(&e), "vsock listener failed");
                    }
                });
            }
            Ok(None) => tracing::info!("no /dev/vsock"),
            Err(e) => tracing::error!(error = %init::error_chain(&e), "vsock listener failed"),
        }
        match vsock::bind_forward() {
            Ok(Some(listener)) => {
                let c = ctx.clone();
                tokio::spawn(async move {
                    if let Err(e) = vsock::serve_forward(listener, c).await {
                        tracing::error!(error = %init::error_chain(&e), "vsock forward listener failed");
                    }
                });
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %init::error_chain(&e), "vsock forward listener failed"),
        }
        match serial::open_agent_port() {
            Ok(Some((path, port))) => {
                listening = true;
                tracing::info!(path = %path.display(), "serving the virtio-serial agent port");
                tokio::spawn(serial::serve_serial(port, ctx.clone()));
            }
            Ok(None) => tracing::info!("no virtio-serial agent port"),
            Err(e) => tracing::error!(error = %init::error_chain(&e), "serial port failed"),
        }
        if listening {
            eprintln!("locale2b-agent: ready");
        } else {
            tracing::error!("no agent channel (neither vsock nor virtio-serial port)");
        }
        ctx.shutdown_token().cancelled().await;
        // Give the vsock/serial transports a bounded moment to deliver the
        // answer to `shutdown` before the VM ends.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    });
    if pid1 {
        locale2b_agent::system::power_off();
    }
    ExitCode::SUCCESS
}
