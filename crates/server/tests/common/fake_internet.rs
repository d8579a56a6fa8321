//! A fake internet for end-to-end egress tests: two network namespaces the
//! fixture creates and deletes, with HTTP and DNS servers in them.
//!
//! ```text
//!   uplink ns ("the host")                 internet ns
//!   lo up                                  lo up, also holding
//!   l2bt-u 192.0.2.1/24  <---- veth ---->  l2bt-i 192.0.2.2/24
//!   default via 192.0.2.2                  default via 192.0.2.1
//!   http "host" on 192.0.2.1:80            198.51.100.10/32  http "server-a"
//!                                          203.0.113.10/32   http "server-b"
//!                                          10.77.0.10/32     http "private"
//!                                          198.51.100.53/32  dns (udp 53)
//! ```
//!
//! The internet's addresses sit on its `lo`, not on a `dummy` interface:
//! kernels built without `CONFIG_DUMMY` (like the test machines') cannot
//! create one, and a /32 on `lo` is delivered locally just the same.
//!
//! The root namespace is never touched: every command runs with `ip -n` or
//! `ip netns exec`. The servers are Python (standard library only) child
//! processes; [`Drop`] kills them and deletes both namespaces, also when
//! [`FakeInternet::start`] panics half-way.

use rand::Rng;
use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// Address of the HTTP server answering `server-a` (also `a.test`, `c.test`).
pub const A_ADDR: &str = "198.51.100.10";
/// Address of the HTTP server answering `server-b` (also `b.test`).
pub const B_ADDR: &str = "203.0.113.10";
/// A private-range address in the internet, answering `private` (`p.test`).
pub const PRIVATE_ADDR: &str = "10.77.0.10";
/// The uplink's own address ("the host"), answering `host`.
pub const HOST_ADDR: &str = "192.0.2.1";
/// The internet side of the veth pair.
pub const INTERNET_LINK_ADDR: &str = "192.0.2.2";
/// The DNS server's address (UDP port 53).
pub const DNS_ADDR: &str = "198.51.100.53";

/// Body of every GET answered on [`A_ADDR`].
pub const A_BODY: &str = "server-a";
/// Body of every GET answered on [`B_ADDR`].
pub const B_BODY: &str = "server-b";
/// Body of every GET answered on [`PRIVATE_ADDR`].
pub const PRIVATE_BODY: &str = "private";
/// Body of every GET answered on [`HOST_ADDR`].
pub const HOST_BODY: &str = "host";

/// The DNS zone: name → A record (TTL 300, class IN).
pub const ZONE: &[(&str, &str)] = &[
    ("a.test", A_ADDR),
    ("b.test", B_ADDR),
    ("c.test", A_ADDR),
    ("p.test", PRIVATE_ADDR),
];

/// Interface in the uplink namespace.
pub const UPLINK_LINK: &str = "l2bt-u";
/// Interface in the internet namespace.
pub const INTERNET_LINK: &str = "l2bt-i";

/// How long the servers get to bind their sockets.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The servers of one namespace, configured by its arguments:
/// `http=ADDR=BODY`, `dns=ADDR` and `zone=NAME=ADDR`. Prints `READY` once
/// every socket is bound and listening, and exits when its stdin closes (so
/// it does not outlive a test process that died without running `Drop`).
const SERVERS_PY: &str = r#"
import os, socket, socketserver, struct, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    def server_bind(self):
        # HTTPServer's own looks up its name (socket.getfqdn), which waits
        # for a resolver that the namespace cannot reach.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

def http_server(addr, body):
    data = body.encode()
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        def log_message(self, *args):
            pass
    return HTTPServer((addr, 80), Handler).serve_forever

def parse_query(packet):
    if len(packet) < 12:
        return None
    ident, flags, qdcount = struct.unpack("!3H", packet[:6])
    if flags & 0x8000 or qdcount != 1:
        return None
    labels, pos = [], 12
    while True:
        if pos >= len(packet):
            return None
        size = packet[pos]
        pos += 1
        if size == 0:
            break
        if size & 0xC0 or pos + size > len(packet):
            return None
        labels.append(packet[pos:pos + size])
        pos += size
    if pos + 4 > len(packet):
        return None
    qtype, qclass = struct.unpack("!HH", packet[pos:pos + 4])
    try:
        name = b".".join(labels).decode("ascii").lower()
    except UnicodeDecodeError:
        return None
    return ident, flags, name, qtype, qclass, packet[12:pos + 4]

def dns_reply(packet, zone):
    query = parse_query(packet)
    if query is None:
        return None
    ident, flags, name, qtype, qclass, question = query
    reply_flags = 0x8000 | 0x0400 | (flags & 0x0100)
    answer = b""
    if name not in zone:
        reply_flags |= 3
    elif qtype == 1 and qclass == 1:
        answer = struct.pack("!HHHIH", 0xC00C, 1, 1, 300, 4) + socket.inet_aton(zone[name])
    header = struct.pack("!6H", ident, reply_flags, 1, 1 if answer else 0, 0, 0)
    return header + question + answer

def dns_server(addr, zone):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((addr, 53))
    def serve():
        while True:
            packet, peer = sock.recvfrom(65535)
            try:
                reply = dns_reply(packet, zone)
            except Exception:
                reply = None
            if reply is not None:
                sock.sendto(reply, peer)
    return serve

def main():
    zone, dns, serves = {}, [], []
    for arg in sys.argv[1:]:
        kind, _, rest = arg.partition("=")
        if kind == "http":
            addr, _, body = rest.partition("=")
            serves.append(http_server(addr, body))
        elif kind == "dns":
            dns.append(rest)
        elif kind == "zone":
            name, _, addr = rest.partition("=")
            zone[name.lower()] = addr
        else:
            sys.exit("unknown argument " + arg)
    serves += [dns_server(addr, zone) for addr in dns]
    for serve in serves:
        threading.Thread(target=serve, daemon=True).start()
    print("READY", flush=True)
    sys.stdin.read()
    os._exit(0)

main()
"#;

/// The two namespaces and their servers; see the module documentation.
#[derive(Debug)]
pub struct FakeInternet {
    uplink: String,
    internet: String,
    servers: Vec<Child>,
}

impl FakeInternet {
    /// Creates the namespaces, starts the servers and waits until they
    /// listen. Panics with the failing command's output on any failure,
    /// after removing whatever it had created.
    pub fn start() -> Self {
        let suffix = random_suffix();
        // Built first so that a panic below drops it, which cleans up.
        let mut fake = FakeInternet {
            uplink: format!("l2bt-up-{suffix}"),
            internet: format!("l2bt-in-{suffix}"),
            servers: Vec::new(),
        };
        fake.build_uplink_and_link();
        fake.build_internet();
        fake.start_servers();
        fake
    }

    /// Name of the namespace playing the host.
    pub fn uplink(&self) -> &str {
        &self.uplink
    }

    /// Name of the namespace playing the internet.
    pub fn internet(&self) -> &str {
        &self.internet
    }

    /// The DNS server serving [`ZONE`].
    pub fn dns_server() -> Ipv4Addr {
        DNS_ADDR.parse().expect("DNS_ADDR is an IPv4 address")
    }

    /// Names of all network namespaces (`ip netns list`), for teardown checks.
    pub fn netns_names() -> Vec<String> {
        let out = run("ip", &["netns", "list"]).unwrap_or_else(|e| panic!("fake internet: {e}"));
        out.lines()
            .filter_map(|line| line.split_whitespace().next())
            .map(str::to_owned)
            .collect()
    }

    /// Interface names in namespace `ns`, without `@peer` suffixes.
    pub fn links_in(ns: &str) -> Vec<String> {
        let out = run("ip", &["-n", ns, "-o", "link", "show"])
            .unwrap_or_else(|e| panic!("fake internet: {e}"));
        out.lines().filter_map(link_name).collect()
    }

    /// `nft list tables` in namespace `ns`, or the error text if it failed.
    pub fn nft_tables_in(ns: &str) -> String {
        run("ip", &["netns", "exec", ns, "nft", "list", "tables"]).unwrap_or_else(|e| e)
    }

    /// The uplink namespace and the veth pair into the internet namespace.
    fn build_uplink_and_link(&self) {
        let (up, inet) = (self.uplink.as_str(), self.internet.as_str());
        add_netns(up);
        add_netns(inet);
        ip_in(up, "link set lo up");
        ip_in(
            up,
            &format!("link add {UPLINK_LINK} type veth peer name {INTERNET_LINK} netns {inet}"),
        );
        ip_in(up, &format!("addr add {HOST_ADDR}/24 dev {UPLINK_LINK}"));
        ip_in(up, &format!("link set {UPLINK_LINK} up"));
    }

    /// The internet's addresses, its end of the link, and both default routes.
    fn build_internet(&self) {
        let (up, inet) = (self.uplink.as_str(), self.internet.as_str());
        ip_in(inet, "link set lo up");
        for addr in [A_ADDR, B_ADDR, DNS_ADDR, PRIVATE_ADDR] {
            ip_in(inet, &format!("addr add {addr}/32 dev lo"));
        }
        ip_in(
            inet,
            &format!("addr add {INTERNET_LINK_ADDR}/24 dev {INTERNET_LINK}"),
        );
        ip_in(inet, &format!("link set {INTERNET_LINK} up"));
        ip_in(inet, &format!("route add default via {HOST_ADDR}"));
        ip_in(up, &format!("route add default via {INTERNET_LINK_ADDR}"));
    }

    /// Spawns one server process per namespace and waits for both `READY`s.
    fn start_servers(&mut self) {
        let mut internet_args = vec![
            format!("http={A_ADDR}={A_BODY}"),
            format!("http={B_ADDR}={B_BODY}"),
            format!("http={PRIVATE_ADDR}={PRIVATE_BODY}"),
            format!("dns={DNS_ADDR}"),
        ];
        internet_args.extend(
            ZONE.iter()
                .map(|(name, addr)| format!("zone={name}={addr}")),
        );
        let uplink_args = vec![format!("http={HOST_ADDR}={HOST_BODY}")];

        let deadline = Instant::now() + READY_TIMEOUT;
        let (internet, uplink) = (self.internet.clone(), self.uplink.clone());
        let ready = [
            (
                internet.as_str(),
                self.spawn_servers(&internet, &internet_args),
            ),
            (uplink.as_str(), self.spawn_servers(&uplink, &uplink_args)),
        ];
        for (index, (ns, ready)) in ready.into_iter().enumerate() {
            self.wait_ready(index, ns, &ready, deadline);
        }
    }

    /// Starts [`SERVERS_PY`] in `ns`; the receiver gets its first stdout line.
    fn spawn_servers(&mut self, ns: &str, args: &[String]) -> Receiver<String> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-c", SERVERS_PY])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("fake internet: cannot spawn servers in {ns}: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        self.servers.push(child);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            // EOF or an error leaves `line` empty: the caller reports it.
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        rx
    }

    /// Waits for server process `index` (in `ns`) to print `READY`, or
    /// panics with its stderr.
    fn wait_ready(&mut self, index: usize, ns: &str, ready: &Receiver<String>, deadline: Instant) {
        let left = deadline.saturating_duration_since(Instant::now());
        let problem = match ready.recv_timeout(left) {
            Ok(line) if line.trim() == "READY" => return,
            Ok(line) if line.is_empty() => "exited before it was ready".to_owned(),
            Ok(line) => format!("printed {line:?} instead of READY"),
            Err(_) => format!("was not ready within {READY_TIMEOUT:?}"),
        };
        let child = &mut self.servers[index];
        let _ = child.kill();
        let status = child
            .wait()
            .map_or_else(|e| e.to_string(), |s| s.to_string());
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        panic!("fake internet: servers in {ns} {problem} ({status}); stderr:\n{stderr}");
    }
}

impl Drop for FakeInternet {
    fn drop(&mut self) {
        for child in &mut self.servers {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in [&self.uplink, &self.internet] {
            let _ = run("ip", &["netns", "del", ns]);
        }
    }
}

/// Six random lowercase letters and digits.
fn random_suffix() -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..6)
        .map(|_| char::from(CHARS[rng.gen_range(0..CHARS.len())]))
        .collect()
}

/// Creates network namespace `ns`, panicking if that fails.
fn add_netns(ns: &str) {
    if let Err(e) = run("ip", &["netns", "add", ns]) {
        panic!("fake internet: {e}");
    }
}

/// Runs `ip -n <ns> <command>` (its words split on whitespace), panicking
/// with its stderr if it fails.
fn ip_in(ns: &str, command: &str) {
    let mut args = vec!["-n", ns];
    args.extend(command.split_whitespace());
    if let Err(e) = run("ip", &args) {
        panic!("fake internet: {e}");
    }
}

/// Runs a command to completion: its stdout, or a description of the failure
/// with its stderr.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let shown = format!("`{program} {}`", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{shown} could not run: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(format!(
            "{shown} failed ({}): {}",
            out.status,
            stderr.trim()
        ))
    }
}

/// The interface name in one line of `ip -o link show`
/// (`3: l2bt-u@l2bt-i: <BROADCAST,...> ...` → `l2bt-u`).
fn link_name(line: &str) -> Option<String> {
    let field = line.split_whitespace().nth(1)?;
    let name = field.trim_end_matches(':');
    Some(name.split('@').next().unwrap_or(name).to_owned())
}
