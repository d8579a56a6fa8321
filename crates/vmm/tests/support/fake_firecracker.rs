//! A stand-in for the `firecracker` binary, for tests on hosts where
//! Firecracker is not installed. It takes the same command line
//! (`--api-sock PATH --id ID`) and serves the public API contract and the
//! behaviour measured against a real Firecracker (see ARCHITECTURE.md):
//!
//! * 204 for successful PUT/PATCH, 200 + JSON for `GET /`, 400 with
//!   `{"fault_message": "..."}` for every error;
//! * strict bodies (unknown fields are refused);
//! * state machine Not started → Running ⇄ Paused;
//! * files are checked where Firecracker opens them (logger file, kernel,
//!   drives), the vsock Unix socket is bound at `PUT /vsock`;
//! * `PUT /snapshot/create` only while paused; `PUT /snapshot/load` only on a
//!   fresh process, and a failed load ends the process;
//! * `SendCtrlAltDel` powers the "guest" off: the process exits.
//!
//! No guest runs. Every request is appended as one JSON line to
//! `<api socket>.requests.jsonl` so tests can check exactly what was sent.

use serde::{Deserialize, Serialize};
use serde_json::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    NotStarted,
    Running,
    Paused,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            Self::NotStarted => "Not started",
            Self::Running => "Running",
            Self::Paused => "Paused",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Logger {
    log_path: String,
    level: Option<String>,
    show_level: Option<bool>,
    show_log_origin: Option<bool>,
    module: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Metrics {
    metrics_path: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct MachineConfig {
    vcpu_count: u8,
    mem_size_mib: u32,
    #[serde(default)]
    smt: bool,
    #[serde(default)]
    track_dirty_pages: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_template: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    huge_pages: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct BootSource {
    kernel_image_path: String,
    boot_args: Option<String>,
    initrd_path: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Drive {
    drive_id: String,
    path_on_host: String,
    is_root_device: bool,
    #[serde(default)]
    is_read_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cache_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    io_engine: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    partuuid: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Vsock {
    guest_cid: u32,
    uds_path: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct NetworkInterface {
    iface_id: String,
    host_dev_name: String,
    #[serde(default)]
    guest_mac: Option<String>,
    #[serde(default)]
    rx_rate_limiter: Option<serde_json::Value>,
    #[serde(default)]
    tx_rate_limiter: Option<serde_json::Value>,
}

/// `02:4c:…`: six hex byte pairs separated by colons.
fn valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Action {
    action_type: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VmState {
    state: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotCreate {
    snapshot_path: String,
    mem_file_path: String,
    snapshot_type: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemBackend {
    backend_type: String,
    backend_path: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VsockOverride {
    uds_path: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct SnapshotLoad {
    snapshot_path: String,
    mem_backend: Option<MemBackend>,
    mem_file_path: Option<String>,
    enable_diff_snapshots: Option<bool>,
    track_dirty_pages: Option<bool>,
    resume_vm: Option<bool>,
    vsock_override: Option<VsockOverride>,
    network_overrides: Option<serde_json::Value>,
    clock_realtime: Option<bool>,
    huge_pages: Option<String>,
}

/// What the fake writes as its "microVM state" file.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct SnapshotState {
    fake_firecracker_snapshot: u32,
    machine: MachineConfig,
    drives: Vec<Drive>,
    vsock: Option<Vsock>,
}

struct Vm {
    id: String,
    state: State,
    machine: MachineConfig,
    boot_source: bool,
    configured: bool,
    drives: Vec<Drive>,
    vsock: Option<Vsock>,
    vsock_listener: Option<UnixListener>,
    record: PathBuf,
}

/// Outcome of one request.
enum Reply {
    NoContent,
    Json(serde_json::Value),
    Fault(String),
}

/// What to do after answering.
#[derive(PartialEq, Eq)]
enum After {
    Continue,
    Exit(i32),
}

fn fault(msg: impl Into<String>) -> (Reply, After) {
    (Reply::Fault(msg.into()), After::Continue)
}

fn ok() -> (Reply, After) {
    (Reply::NoContent, After::Continue)
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| {
        format!("An error occurred when deserializing the json body of a request: {e}.")
    })
}

const NOT_AFTER_START: &str =
    "The requested operation is not supported after starting the microVM.";
const NOT_BEFORE_START: &str =
    "The requested operation is not supported before starting the microVM.";

impl Vm {
    fn handle(&mut self, method: &str, path: &str, body: &[u8]) -> (Reply, After) {
        match (method, path) {
            ("GET", "/") => (
                Reply::Json(json!({
                    "id": self.id,
                    "state": self.state.as_str(),
                    "vmm_version": "1.17.0-fake",
                    "app_name": "Firecracker",
                })),
                After::Continue,
            ),
            ("GET", "/machine-config") => (
                Reply::Json(serde_json::to_value(&self.machine).unwrap_or_default()),
                After::Continue,
            ),
            ("PUT", "/logger") => match parse::<Logger>(body) {
                Err(e) => fault(e),
                Ok(l) => match std::fs::OpenOptions::new().append(true).open(&l.log_path) {
                    Ok(mut f) => {
                        let _ = writeln!(f, "fake-firecracker: logger configured");
                        ok()
                    }
                    Err(e) => fault(format!(
                        "Cannot initialize logger due to Failed to open target file: {e}"
                    )),
                },
            },
            ("PUT", "/metrics") => match parse::<Metrics>(body) {
                Err(e) => fault(e),
                Ok(m) => match std::fs::OpenOptions::new()
                    .append(true)
                    .open(&m.metrics_path)
                {
                    Ok(_) => ok(),
                    Err(e) => fault(format!("Cannot initialize metrics: {e}")),
                },
            },
            ("PUT", "/machine-config") => {
                if self.state != State::NotStarted {
                    return fault(NOT_AFTER_START);
                }
                match parse::<MachineConfig>(body) {
                    Err(e) => fault(e),
                    Ok(m) if m.vcpu_count == 0 || m.vcpu_count > 32 => {
                        fault("Machine config error: The number of vCPUs must be greater than 0, less than 32 and must be 1 or an even number if SMT is enabled.")
                    }
                    Ok(m) if m.mem_size_mib == 0 => fault("The memory size (MiB) is invalid."),
                    Ok(m) => {
                        self.machine = m;
                        self.configured = true;
                        ok()
                    }
                }
            }
            ("PUT", "/boot-source") => {
                if self.state != State::NotStarted {
                    return fault(NOT_AFTER_START);
                }
                match parse::<BootSource>(body) {
                    Err(e) => fault(e),
                    Ok(b) => {
                        if let Err(e) = std::fs::File::open(&b.kernel_image_path) {
                            fault(format!("Boot source error: The kernel file cannot be opened: {e}"))
                        } else if let Some(Err(e)) = b.initrd_path.as_ref().map(std::fs::File::open) {
                            fault(format!("Boot source error: The initrd file cannot be opened: {e}"))
                        } else {
                            self.boot_source = true;
                            self.configured = true;
                            ok()
                        }
                    }
                }
            }
            ("PUT", p) if p.starts_with("/drives/") => {
                if self.state != State::NotStarted {
                    return fault(NOT_AFTER_START);
                }
                let id = &p["/drives/".len()..];
                if !valid_resource_id(id) {
                    return fault("API Resource IDs can only contain alphanumeric characters and underscores.");
                }
                match parse::<Drive>(body) {
                    Err(e) => fault(e),
                    Ok(d) if d.drive_id != id => {
                        fault("The id from the path does not match the id from the body!")
                    }
                    Ok(d) => {
                        let open = std::fs::OpenOptions::new()
                            .read(true)
                            .write(!d.is_read_only)
                            .open(&d.path_on_host);
                        if let Err(e) = open {
                            return fault(format!(
                                "Drive config error: Unable to create the virtio block device: Virtio backend error: Error manipulating the backing file: {e} {}",
                                d.path_on_host
                            ));
                        }
                        if d.is_root_device
                            && self
                                .drives
                                .iter()
                                .any(|x| x.is_root_device && x.drive_id != d.drive_id)
                        {
                            return fault("A root block device already exists!");
                        }
                        self.drives.retain(|x| x.drive_id != d.drive_id);
                        self.drives.push(d);
                        self.configured = true;
                        ok()
                    }
                }
            }
            ("PUT", p) if p.starts_with("/network-interfaces/") => {
                if self.state != State::NotStarted {
                    return fault(NOT_AFTER_START);
                }
                let id = &p["/network-interfaces/".len()..];
                if !valid_resource_id(id) {
                    return fault("API Resource IDs can only contain alphanumeric characters and underscores.");
                }
                match parse::<NetworkInterface>(body) {
                    Err(e) => fault(e),
                    Ok(n) if n.iface_id != id => {
                        fault("The id from the path does not match the id from the body!")
                    }
                    Ok(n) if n.host_dev_name.is_empty() || n.host_dev_name.len() > 15 => fault(format!(
                        "Could not create the network device: Open tap device failed: invalid name {:?}",
                        n.host_dev_name
                    )),
                    Ok(n) if n.guest_mac.as_deref().is_some_and(|m| !valid_mac(m)) => {
                        fault("Invalid MAC address")
                    }
                    Ok(_) => {
                        self.configured = true;
                        ok()
                    }
                }
            }
            ("PUT", "/vsock") => {
                if self.state != State::NotStarted {
                    return fault(NOT_AFTER_START);
                }
                match parse::<Vsock>(body) {
                    Err(e) => fault(e),
                    Ok(v) if v.guest_cid < 3 => fault("Invalid guest CID"),
                    Ok(v) => match UnixListener::bind(&v.uds_path) {
                        Err(e) => fault(format!("Cannot create vsock device: {e}")),
                        Ok(l) => {
                            self.vsock_listener = Some(l);
                            self.vsock = Some(v);
                            self.configured = true;
                            ok()
                        }
                    },
                }
            }
            ("PUT", "/actions") => match parse::<Action>(body) {
                Err(e) => fault(e),
                Ok(a) => match a.action_type.as_str() {
                    "InstanceStart" if self.state != State::NotStarted => fault(NOT_AFTER_START),
                    "InstanceStart" if !self.boot_source => {
                        fault("Start microvm error: Cannot start microvm without kernel configuration.")
                    }
                    "InstanceStart" => {
                        self.state = State::Running;
                        ok()
                    }
                    "SendCtrlAltDel" if self.state == State::NotStarted => fault(NOT_BEFORE_START),
                    // The "guest" powers off at once and Firecracker exits.
                    "SendCtrlAltDel" => (Reply::NoContent, After::Exit(0)),
                    "FlushMetrics" => ok(),
                    other => fault(format!("unknown action_type {other:?}")),
                },
            },
            ("PATCH", "/vm") => match parse::<VmState>(body) {
                Err(e) => fault(e),
                Ok(_) if self.state == State::NotStarted => fault(NOT_BEFORE_START),
                Ok(s) => match s.state.as_str() {
                    "Paused" => {
                        self.state = State::Paused;
                        ok()
                    }
                    "Resumed" => {
                        self.state = State::Running;
                        ok()
                    }
                    other => fault(format!(
                        "unknown variant `{other}`, expected `Paused` or `Resumed`"
                    )),
                },
            },
            ("PUT", "/snapshot/create") => match parse::<SnapshotCreate>(body) {
                Err(e) => fault(e),
                Ok(_) if self.state != State::Paused => {
                    fault("Create snapshot error: Cannot save the microVM state: Operation not allowed: save/restore unavailable while running")
                }
                Ok(c)
                    if !matches!(
                        c.snapshot_type.as_deref(),
                        None | Some("Full") | Some("Diff")
                    ) =>
                {
                    fault("unknown snapshot_type")
                }
                Ok(c) => match self.write_snapshot(&c) {
                    Ok(()) => ok(),
                    Err(e) => fault(format!("Cannot create snapshot: {e}")),
                },
            },
            ("PUT", "/snapshot/load") => {
                if self.state != State::NotStarted || self.configured {
                    return fault("Load snapshot error: Loading a microVM snapshot not allowed after configuring boot-specific resources.");
                }
                let load = match parse::<SnapshotLoad>(body) {
                    Err(e) => return fault(e),
                    Ok(l) => l,
                };
                match self.load_snapshot(&load) {
                    Ok(()) => ok(),
                    // A failed load ends the process (measured).
                    Err(e) => (
                        Reply::Fault(format!("Load snapshot error: {e}")),
                        After::Exit(1),
                    ),
                }
            }
            _ => fault(format!(
                "Invalid request method and/or path: {method} {}.",
                path.trim_start_matches('/')
            )),
        }
    }

    fn write_snapshot(&self, c: &SnapshotCreate) -> std::io::Result<()> {
        let state = SnapshotState {
            fake_firecracker_snapshot: 1,
            machine: self.machine.clone(),
            drives: self.drives.clone(),
            vsock: self.vsock.clone(),
        };
        std::fs::write(&c.snapshot_path, serde_json::to_vec_pretty(&state)?)?;
        let mem = std::fs::File::create(&c.mem_file_path)?;
        mem.set_len(u64::from(self.machine.mem_size_mib) << 20)
    }

    fn load_snapshot(&mut self, l: &SnapshotLoad) -> Result<(), String> {
        let mem_path = match (&l.mem_backend, &l.mem_file_path) {
            (Some(b), None) if b.backend_type == "File" => b.backend_path.clone(),
            (Some(b), None) => return Err(format!("unsupported backend_type {}", b.backend_type)),
            (None, Some(p)) => p.clone(),
            _ => return Err("exactly one of mem_backend and mem_file_path is required".into()),
        };
        let text = std::fs::read(&l.snapshot_path)
            .map_err(|e| format!("cannot read {}: {e}", l.snapshot_path))?;
        let state: SnapshotState = serde_json::from_slice(&text)
            .map_err(|e| format!("invalid snapshot state file: {e}"))?;
        let mem_len = std::fs::metadata(&mem_path)
            .map_err(|e| format!("cannot open memory file {mem_path}: {e}"))?
            .len();
        if mem_len != u64::from(state.machine.mem_size_mib) << 20 {
            return Err(format!(
                "memory file {mem_path} has {mem_len} bytes, expected {} MiB",
                state.machine.mem_size_mib
            ));
        }
        for d in &state.drives {
            std::fs::metadata(&d.path_on_host)
                .map_err(|e| format!("cannot open drive {}: {e}", d.path_on_host))?;
        }
        if let Some(mut v) = state.vsock.clone() {
            if let Some(o) = &l.vsock_override {
                v.uds_path.clone_from(&o.uds_path);
            }
            let listener = UnixListener::bind(&v.uds_path)
                .map_err(|e| format!("Failed to restore vsock device: {e} ({})", v.uds_path))?;
            self.vsock_listener = Some(listener);
            self.vsock = Some(v);
        }
        self.machine = state.machine;
        self.drives = state.drives;
        self.state = if l.resume_vm.unwrap_or(false) {
            State::Running
        } else {
            State::Paused
        };
        Ok(())
    }

    fn record(&self, method: &str, path: &str, body: &[u8]) {
        let body: serde_json::Value =
            serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
        let line = json!({"method": method, "path": path, "body": body});
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.record)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// Firecracker's rule for resource ids in paths (measured: `drive-0` is
/// refused).
fn valid_resource_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Reads one request; `None` at end of stream.
fn read_request(
    reader: &mut BufReader<UnixStream>,
) -> std::io::Result<Option<(String, String, Vec<u8>)>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 {
            return Ok(None);
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((name, value)) = h.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                len = value.trim().parse().unwrap_or(0);
            }
        }
    }
    if len > 51_200 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "body too large",
        ));
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    Ok(Some((method, path, body)))
}

fn write_reply(stream: &mut UnixStream, reply: &Reply) -> std::io::Result<()> {
    let (status, body) = match reply {
        Reply::NoContent => ("204 No Content", None),
        Reply::Json(v) => ("200 OK", Some(v.to_string())),
        Reply::Fault(m) => (
            "400 Bad Request",
            Some(json!({ "fault_message": m }).to_string()),
        ),
    };
    let mut out =
        format!("HTTP/1.1 {status}\r\nServer: Firecracker API\r\nConnection: keep-alive\r\n");
    match body {
        Some(b) => out.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        )),
        None => out.push_str("\r\n"),
    }
    stream.write_all(out.as_bytes())
}

fn main() {
    let mut api_sock = None;
    let mut id = "anonymous-instance".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--api-sock" => api_sock = args.next(),
            "--id" => id = args.next().unwrap_or(id),
            other => {
                eprintln!("fake-firecracker: unknown argument {other}");
                std::process::exit(1);
            }
        }
    }
    let api_sock = PathBuf::from(api_sock.unwrap_or_else(|| "/run/firecracker.socket".into()));
    let listener = match UnixListener::bind(&api_sock) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("fake-firecracker: cannot bind {}: {e}", api_sock.display());
            std::process::exit(1);
        }
    };
    let mut record = api_sock.clone().into_os_string();
    record.push(".requests.jsonl");
    let mut vm = Vm {
        id,
        state: State::NotStarted,
        machine: MachineConfig {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            track_dirty_pages: false,
            cpu_template: None,
            huge_pages: None,
        },
        boot_source: false,
        configured: false,
        drives: Vec::new(),
        vsock: None,
        vsock_listener: None,
        record: record.into(),
    };
    eprintln!("fake-firecracker: API on {}", api_sock.display());
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if serve(&mut vm, stream) {
            break;
        }
    }
}

/// Serves one connection; true when the process must exit.
fn serve(vm: &mut Vm, stream: UnixStream) -> bool {
    let Ok(mut writer) = stream.try_clone() else {
        return false;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let (method, path, body) = match read_request(&mut reader) {
            Ok(Some(r)) => r,
            Ok(None) | Err(_) => return false,
        };
        vm.record(&method, &path, &body);
        let (reply, after) = vm.handle(&method, &path, &body);
        if let Reply::Fault(m) = &reply {
            eprintln!("fake-firecracker: {method} {path} refused: {m}");
        }
        let _ = write_reply(&mut writer, &reply);
        if let After::Exit(code) = after {
            let _ = writer.flush();
            // Like Firecracker, leave the socket files behind.
            eprintln!("fake-firecracker: exiting with status {code}");
            std::process::exit(code);
        }
    }
}
