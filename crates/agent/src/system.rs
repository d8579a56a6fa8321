//! `hello`, `ping`, `init`, `sync` and `shutdown`.

use crate::context::{AgentContext, SandboxState};
use base64::Engine as _;
use locale2b_protocol::{
    ErrorBody, ErrorCode, HelloRequest, HelloResponse, InitRequest, PongResponse, Response,
    AGENT_VERSION, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use std::io::Write as _;
use std::sync::Arc;

/// `hello`: refuses a host older than [`MIN_PROTOCOL_VERSION`].
///
/// # Errors
/// `incompatible_version`.
pub fn hello(req: &HelloRequest) -> Result<Response, ErrorBody> {
    if req.protocol_version < MIN_PROTOCOL_VERSION {
        return Err(ErrorBody::new(
            ErrorCode::IncompatibleVersion,
            format!(
                "host speaks protocol {}, this agent needs at least {MIN_PROTOCOL_VERSION}",
                req.protocol_version
            ),
        ));
    }
    tracing::info!(client = %req.client, version = req.protocol_version, "host said hello");
    Ok(Response::Hello(HelloResponse {
        protocol_version: PROTOCOL_VERSION,
        min_protocol_version: MIN_PROTOCOL_VERSION,
        agent_version: AGENT_VERSION.to_owned(),
    }))
}

/// `ping`.
pub fn ping(ctx: &AgentContext) -> Response {
    Response::Pong(PongResponse {
        agent_version: AGENT_VERSION.to_owned(),
        uptime_ms: ctx.uptime_ms(),
        sandbox_id: ctx.state().sandbox_id,
    })
}

/// Sets the hostname (`sethostname(2)`).
///
/// # Errors
/// The OS error (EINVAL for a name over 64 bytes, EPERM without privilege).
pub fn set_hostname(name: &str) -> std::io::Result<()> {
    nix::unistd::sethostname(name).map_err(std::io::Error::from)
}

/// Brings the loopback interface up (the kernel then gives it 127.0.0.1/8
/// and ::1): as PID 1 nothing else does, and servers in the guest bind
/// it (exposed ports reach them there).
pub fn bring_up_loopback() -> std::io::Result<()> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    // SAFETY: socket() takes no pointers; its descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero ifreq is valid (a C struct of plain data).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq passed,
    // which lives across both calls.
    unsafe {
        if libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The guest's NIC.
pub const NIC: &str = "eth0";

fn sockaddr_in(ip: std::net::Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size on Linux; the
    // kernel reads the first as the second for AF_INET.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl_ifreq(
    fd: &std::os::fd::OwnedFd,
    request: libc::c_ulong,
    req: &mut libc::ifreq,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: the SIOC*IF* requests read/write the ifreq passed, which
    // outlives the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), request as _, req as *mut libc::ifreq) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Gives `eth0` its address, brings it up, adds the default route and
/// writes `/etc/resolv.conf` (the host's resolver for this sandbox).
/// Idempotent: a restored or cloned guest gets it again.
///
/// # Errors
/// The OS error of the step that failed (no `eth0`: `NotFound`).
pub fn configure_network(net: &locale2b_protocol::GuestNetwork) -> std::io::Result<()> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_owned());
    let (addr, prefix) = net
        .address
        .split_once('/')
        .ok_or_else(|| bad("address needs a /prefix"))?;
    let addr: std::net::Ipv4Addr = addr.parse().map_err(|_| bad("address is not IPv4"))?;
    let prefix: u32 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(|| bad("bad prefix"))?;
    let gateway: std::net::Ipv4Addr = net
        .gateway
        .parse()
        .map_err(|_| bad("gateway is not IPv4"))?;
    let mask = std::net::Ipv4Addr::from(if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    });
    if !std::path::Path::new("/sys/class/net").join(NIC).exists() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the guest has no eth0",
        ));
    }
    // SAFETY: socket() takes no pointers; its descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero ifreq is valid (a C struct of plain data).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(NIC.bytes().chain([0])) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_addr = sockaddr_in(addr);
    ioctl_ifreq(&fd, libc::SIOCSIFADDR, &mut req)?;
    req.ifr_ifru.ifru_netmask = sockaddr_in(mask);
    ioctl_ifreq(&fd, libc::SIOCSIFNETMASK, &mut req)?;
    ioctl_ifreq(&fd, libc::SIOCGIFFLAGS, &mut req)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    ioctl_ifreq(&fd, libc::SIOCSIFFLAGS, &mut req)?;
    // SAFETY: an all-zero rtentry is valid (plain data, null pointers).
    let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
    route.rt_dst = sockaddr_in(std::net::Ipv4Addr::UNSPECIFIED);
    route.rt_genmask = sockaddr_in(std::net::Ipv4Addr::UNSPECIFIED);
    route.rt_gateway = sockaddr_in(gateway);
    route.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    // SAFETY: SIOCADDRT reads the rtentry passed, which outlives the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCADDRT as _, &route) } < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
        }
    }
    // resolv.conf may be a symlink into a read-only place: replace it.
    let _ = std::fs::remove_file("/etc/resolv.conf");
    std::fs::write(
        "/etc/resolv.conf",
        format!("nameserver {}\n", net.nameserver),
    )?;
    tracing::info!(address = %net.address, gateway = %net.gateway, "eth0 configured");
    Ok(())
}

/// `/etc/hosts` text with the `127.0.1.1` line naming `hostname` (added
/// when there is none), so the name resolves (`sudo` and many tools look
/// their own host up).
pub fn hosts_with(current: &str, hostname: &str) -> String {
    let line = format!("127.0.1.1\t{hostname}");
    let mut out = Vec::new();
    let mut replaced = false;
    for l in current.lines() {
        if l.split_whitespace().next() == Some("127.0.1.1") {
            if !replaced {
                out.push(line.clone());
                replaced = true;
            }
        } else {
            out.push(l.to_owned());
        }
    }
    if !replaced {
        out.push(line);
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}

/// Points `/etc/hosts` at `hostname` (see [`hosts_with`]).
///
/// # Errors
/// The OS error.
pub fn set_hosts_entry(hostname: &str) -> std::io::Result<()> {
    let path = std::path::Path::new("/etc/hosts");
    let current = std::fs::read_to_string(path).unwrap_or_default();
    let tmp = path.with_extension("locale2b-tmp");
    std::fs::write(&tmp, hosts_with(&current, hostname))?;
    std::fs::rename(&tmp, path)
}

/// Sets the wall clock (`clock_settime(CLOCK_REALTIME)`).
///
/// # Errors
/// The OS error.
pub fn set_clock(unix_time_ms: u64) -> std::io::Result<()> {
    let secs = i64::try_from(unix_time_ms / 1000).map_err(std::io::Error::other)?;
    let nanos = i64::try_from((unix_time_ms % 1000) * 1_000_000).map_err(std::io::Error::other)?;
    let ts = nix::sys::time::TimeSpec::new(secs, nanos);
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts).map_err(std::io::Error::from)
}

/// `RNDRESEEDCRNG` (`_IO('R', 0x07)`): reseed the kernel CRNG from the
/// input pool now. Needs CAP_SYS_ADMIN; a failure is logged (the bytes are
/// mixed in either way and the kernel reseeds on its own schedule).
fn reseed_crng(urandom: &std::fs::File) {
    use std::os::fd::AsRawFd as _;
    const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
    // SAFETY: an argument-less ioctl on a descriptor we own.
    let rc = unsafe { libc::ioctl(urandom.as_raw_fd(), RNDRESEEDCRNG as _) };
    if rc != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "RNDRESEEDCRNG failed");
    }
}

/// The machine id of a sandbox: 32 hex digits derived from its id, so it
/// is stable across pause and resume and differs between clones.
pub fn machine_id_of(sandbox_id: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("locale2b machine-id {sandbox_id}").as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `/etc/machine-id` for `sandbox_id` (only when it changes).
fn set_machine_id(sandbox_id: &str) -> std::io::Result<()> {
    let id = format!("{}\n", machine_id_of(sandbox_id));
    if std::fs::read_to_string("/etc/machine-id").is_ok_and(|cur| cur == id) {
        return Ok(());
    }
    let tmp = "/etc/.machine-id.tmp";
    std::fs::write(tmp, &id)?;
    std::fs::rename(tmp, "/etc/machine-id")
}

/// `init`: records identity and environment defaults, mixes entropy into
/// the kernel pool, and (when the agent manages the system) reseeds the
/// CRNG and sets the machine id, hostname and wall clock.
///
/// # Errors
/// `invalid_request` for bad base64 or an unusable hostname, or the OS error.
pub async fn init(ctx: &Arc<AgentContext>, req: InitRequest) -> Result<Response, ErrorBody> {
    let entropy = match &req.entropy_b64 {
        Some(s) => Some(
            base64::engine::general_purpose::STANDARD
                .decode(s.as_bytes())
                .map_err(|e| {
                    ErrorBody::new(
                        ErrorCode::InvalidRequest,
                        format!("entropy_b64 is not valid base64: {e}"),
                    )
                })?,
        ),
        None => None,
    };
    let hostname = req
        .hostname
        .clone()
        .unwrap_or_else(|| req.sandbox_id.clone());
    if hostname.is_empty() || hostname.len() > 64 || hostname.contains(['\0', '/']) {
        return Err(ErrorBody::new(
            ErrorCode::InvalidRequest,
            format!("hostname {hostname:?} must be 1 to 64 bytes without '/' or NUL"),
        ));
    }
    if let Some(bytes) = entropy {
        // Writing to /dev/urandom mixes the bytes into the input pool
        // (without crediting entropy); the reseed makes the CRNG draw from
        // it now, so clones restored from one snapshot part ways at once.
        let res = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/urandom")
            .and_then(|mut f| {
                f.write_all(&bytes)?;
                if ctx.config.manage_system {
                    reseed_crng(&f);
                }
                Ok(())
            });
        res.map_err(|e| ErrorBody::io("/dev/urandom", &e))?;
    }
    if ctx.config.manage_system {
        if let Err(e) = set_machine_id(&req.sandbox_id) {
            tracing::warn!(error = %e, "cannot write /etc/machine-id");
        }
        set_hostname(&hostname).map_err(|e| ErrorBody::io("sethostname", &e))?;
        if let Err(e) = set_hosts_entry(&hostname) {
            tracing::warn!(error = %e, "cannot update /etc/hosts");
        }
        if let Some(ms) = req.unix_time_ms {
            set_clock(ms).map_err(|e| ErrorBody::io("clock_settime", &e))?;
        }
        if let Some(net) = &req.network {
            configure_network(net).map_err(|e| ErrorBody::io("configuring eth0", &e))?;
        }
    }
    if let Some(secs) = req.process_retention_sec {
        ctx.processes
            .set_retention(std::time::Duration::from_secs(secs));
    }
    tracing::info!(sandbox_id = %req.sandbox_id, hostname, "sandbox initialised");
    ctx.set_state(SandboxState {
        sandbox_id: Some(req.sandbox_id),
        workspace_id: req.workspace_id,
        env: req.env,
    });
    Ok(Response::Done)
}

/// `sync`.
///
/// # Errors
/// `internal` if the blocking task failed.
pub async fn sync() -> Result<Response, ErrorBody> {
    tokio::task::spawn_blocking(nix::unistd::sync)
        .await
        .map_err(|e| ErrorBody::new(ErrorCode::Internal, format!("sync failed: {e}")))?;
    Ok(Response::Done)
}

/// Called once the `done` answer to `shutdown` is written: stops the
/// listeners; in init mode the main loop then syncs and ends the VM.
pub fn shutdown_after_reply(ctx: &AgentContext) {
    tracing::info!("shutdown requested by the host");
    // Init mode powers off from its main loop once the listeners stopped
    // and the transports had a moment to deliver this answer.
    ctx.request_shutdown();
}

/// Syncs every filesystem and ends the VM. Does not return on success; if
/// `reboot(2)` fails the error is logged and the thread parks.
///
/// A guest *reset* is what ends the VMM process on both backends: QEMU runs
/// with `-no-reboot` (a reset exits the process) and Firecracker exits on a
/// guest reset (`reboot=k`). A power-off request would leave QEMU's microvm
/// (no ACPI power-off path) halted but alive until the host kills it.
pub fn power_off() {
    nix::unistd::sync();
    tracing::info!("locale2b-agent: powering off");
    match nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT) {
        Ok(never) => match never {},
        Err(e) => tracing::error!(error = %e, "power off failed"),
    }
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_ids_are_stable_per_sandbox_and_differ_between_sandboxes() {
        let a = machine_id_of("sb-a");
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(a, machine_id_of("sb-a"));
        assert_ne!(a, machine_id_of("sb-b"));
    }

    #[test]
    fn the_hosts_file_names_the_sandbox() {
        let image = "127.0.0.1\tlocalhost\n127.0.1.1\tlocale2b\n::1\t\tlocalhost\n";
        assert_eq!(
            hosts_with(image, "sb-abc"),
            "127.0.0.1\tlocalhost\n127.0.1.1\tsb-abc\n::1\t\tlocalhost\n"
        );
        assert_eq!(hosts_with("", "sb-abc"), "127.0.1.1\tsb-abc\n");
        let twice = "127.0.1.1 a\n127.0.1.1 b\n";
        assert_eq!(hosts_with(twice, "c"), "127.0.1.1\tc\n");
    }
}
