//! Configuration and shared state of a running agent.

use crate::children::ChildRegistry;
use crate::process::ProcessTable;
use locale2b_protocol::DEFAULT_MAX_FRAME;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Default idle timeout of one connection: 10 minutes.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// Agent configuration (built once by the binary from its command line).
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest frame accepted or sent.
    pub max_frame: usize,
    /// A connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// Directory relative paths resolve from, and the default `exec`
    /// working directory when it exists.
    pub workspace_dir: PathBuf,
    /// Whether `init` may change machine-wide state (hostname, wall clock).
    /// True in the guest; false when serving on a Unix socket on a host.
    pub manage_system: bool,
    /// Whether `shutdown` powers the machine off (PID 1) instead of only
    /// stopping the listeners.
    pub power_off_on_shutdown: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_frame: DEFAULT_MAX_FRAME,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            workspace_dir: PathBuf::from("/workspace"),
            manage_system: false,
            power_off_on_shutdown: false,
        }
    }
}

/// Identity and defaults set by the host's `init` request.
#[derive(Debug, Clone, Default)]
pub struct SandboxState {
    /// Sandbox id from the last `init`.
    pub sandbox_id: Option<String>,
    /// Workspace id from the last `init`.
    pub workspace_id: Option<String>,
    /// Environment defaults for every later `exec`.
    pub env: BTreeMap<String, String>,
}

/// Everything a connection handler needs; shared by all connections.
#[derive(Debug)]
pub struct AgentContext {
    /// The configuration.
    pub config: Config,
    started: Instant,
    state: Mutex<SandboxState>,
    shutdown: CancellationToken,
    /// Children spawned by `exec` and the process table, so the init
    /// reaper leaves them alone.
    pub children: Arc<ChildRegistry>,
    /// Processes started for the host (protocol 2).
    pub processes: ProcessTable,
}

impl AgentContext {
    /// Creates the shared context.
    pub fn new(config: Config) -> Arc<Self> {
        Arc::new(Self {
            config,
            started: Instant::now(),
            state: Mutex::new(SandboxState::default()),
            shutdown: CancellationToken::new(),
            children: Arc::default(),
            processes: ProcessTable::default(),
        })
    }

    /// Milliseconds since the agent started.
    pub fn uptime_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A copy of the sandbox state.
    pub fn state(&self) -> SandboxState {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the sandbox state.
    pub fn set_state(&self, state: SandboxState) {
        *self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = state;
    }

    /// Asks every listener and connection to stop.
    pub fn request_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Token cancelled when the agent shuts down.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }
}
