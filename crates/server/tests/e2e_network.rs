//! End-to-end: egress policies against real guests and a fake internet.
//!
//! The test builds its own namespaces (`common::fake_internet`): an uplink
//! namespace that plays the host, and an "internet" behind it with two web
//! servers on public-looking addresses, one on a private address and a
//! DNS zone for them. The server under test sends sandbox traffic out
//! through that uplink (`network_uplink_netns`) and asks that DNS server
//! (`network_dns_upstream`); nothing leaves the test's namespaces.

#![allow(clippy::unwrap_used)]

mod common;

use common::fake_internet::{self as net, FakeInternet};
use common::*;
use reqwest::Method as M;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Deletes the namespaces of the sandboxes a failed test leaves behind.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for id in &self.0 {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &format!("l2b-{id}")])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        == Some("0")
}

/// `curl` of `url` in the guest (5 s to resolve and connect, 30 s in all): the body and curl's exit
/// code (`rc=0` fetched, `rc=6` name not resolved, `rc=28` no answer: the
/// packets were dropped).
async fn fetch(s: &Server, id: &str, url: &str) -> String {
    s.exec_ok(
        id,
        &format!("curl -s --connect-timeout 5 -m 30 {url}; echo \" rc=$?\""),
    )
    .await
    .trim()
    .to_owned()
}

/// Forks `id` once; checks the child's policy mode and that it has a
/// namespace of its own; answers the child's id.
async fn fork(s: &Server, id: &str, mode: &str, namespaces: &mut Namespaces) -> String {
    let (st, forked) = s
        .call(M::POST, &format!("/sandboxes/{id}/fork"), Some(json!({})))
        .await;
    assert_eq!(st, StatusCode::OK, "{forked}");
    let child = forked["sandboxes"][0]["sandbox_id"]
        .as_str()
        .unwrap()
        .to_owned();
    namespaces.0.push(child.clone());
    assert_eq!(forked["sandboxes"][0]["network"]["mode"], mode);
    assert!(FakeInternet::netns_names().contains(&format!("l2b-{child}")));
    child
}

async fn set_network(s: &Server, id: &str, policy: Value) -> (StatusCode, Value) {
    s.call(M::PUT, &format!("/sandboxes/{id}/network"), Some(policy))
        .await
}

#[tokio::test]
async fn egress_policies_allow_what_they_name_and_nothing_private_and_leave_nothing_behind() {
    let Some(image) = image_dir() else { return };
    if !is_root() {
        locale2b_testkit::require_or_skip(
            "egress network tests need root (namespaces, taps, nftables)",
        );
        return;
    }
    let internet = FakeInternet::start();
    let uplink = internet.uplink().to_owned();
    let s = Server::start_with(&image, 4, |c| {
        c.manager.network_uplink_netns = Some(uplink.clone());
        c.manager.network_dns_upstream = Some(net::DNS_ADDR.into());
    })
    .await;
    let mut namespaces = Namespaces(Vec::new());

    // Bad input is refused before anything boots, naming the entry.
    for (policy, says) in [
        (
            json!({"mode": "allowlist", "allow": ["exa mple.com"]}),
            "\"exa mple.com\" is not a valid domain name",
        ),
        (
            json!({"mode": "allowlist", "allow": ["10.0.0.1/33"]}),
            "\"10.0.0.1/33\"",
        ),
        (json!({"mode": "full", "deny": ["10.0.0.1/8"]}), "host bits"),
        (json!({"mode": "open"}), "\"open\" is not one of"),
    ] {
        let (st, body) = s
            .call(M::POST, "/sandboxes", Some(json!({"network": policy})))
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(says),
            "{says}: {body}"
        );
    }
    let (_, list) = s.call(M::GET, "/sandboxes", None).await;
    assert_eq!(list["sandboxes"].as_array().unwrap().len(), 0, "{list}");

    // allowlist: one name.
    let (st, sb) = s
        .call(
            M::POST,
            "/sandboxes",
            Some(json!({"network": {"mode": "allowlist", "allow": ["a.test"]}})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{sb}");
    let id = sb["sandbox_id"].as_str().unwrap().to_owned();
    namespaces.0.push(id.clone());
    assert_eq!(
        sb["network"],
        json!({"mode": "allowlist", "allow": ["a.test"], "deny": []})
    );
    assert_eq!(sb["boot"], "cold", "a networked sandbox boots cold: {sb}");
    let netns = format!("l2b-{id}");
    assert!(FakeInternet::netns_names().contains(&netns));
    assert!(FakeInternet::nft_tables_in(&netns).contains("table inet locale2b"));
    let veths: Vec<String> = FakeInternet::links_in(&uplink)
        .into_iter()
        .filter(|l| l.starts_with("l2b") && l != net::UPLINK_LINK)
        .collect();
    assert_eq!(veths.len(), 1, "one veth in the uplink: {veths:?}");

    assert_eq!(
        s.exec_ok(&id, "ls /sys/class/net")
            .await
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["eth0", "lo"]
    );
    assert_eq!(
        fetch(&s, &id, "http://a.test/").await,
        format!("{} rc=0", net::A_BODY)
    );
    assert_eq!(
        fetch(&s, &id, "http://b.test/").await,
        "rc=6",
        "a name outside the list does not resolve"
    );
    assert_eq!(
        fetch(&s, &id, "http://c.test/").await,
        "rc=6",
        "not even one with an allowed address"
    );
    let (st, out) = s
        .call(
            M::POST,
            &format!("/sandboxes/{id}/exec"),
            Some(json!({"command": "getent hosts b.test"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_ne!(out["exit_code"], 0, "{out}");
    assert_eq!(
        fetch(&s, &id, &format!("http://{}/", net::B_ADDR)).await,
        "rc=28",
        "the other server by address"
    );
    assert_eq!(
        fetch(&s, &id, &format!("http://{}/", net::HOST_ADDR)).await,
        "rc=28",
        "the host's own address"
    );
    assert_eq!(
        fetch(&s, &id, &format!("http://{}/", net::PRIVATE_ADDR)).await,
        "rc=28",
        "a private range"
    );
    // Asking the fake internet's DNS server directly does not get through.
    let (_, out) = s
        .call(
            M::POST,
            &format!("/sandboxes/{id}/exec"),
            Some(json!({"command": format!("python3 -c \"import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2); s.sendto(b'\\x00\\x01\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x01b\\x04test\\x00\\x00\\x01\\x00\\x01', ('{}', 53)); s.recv(512)\"", net::DNS_ADDR)})),
        )
        .await;
    assert!(
        out["stderr"].as_str().unwrap().contains("timed out"),
        "direct DNS is dropped: {out}"
    );

    // A fork gets its own namespace with the parent's policy.
    let child = fork(&s, &id, "allowlist", &mut namespaces).await;
    assert_eq!(
        fetch(&s, &child, "http://a.test/").await,
        format!("{} rc=0", net::A_BODY)
    );
    assert_eq!(fetch(&s, &child, "http://b.test/").await, "rc=6");
    let (st, body) = s
        .call(M::DELETE, &format!("/sandboxes/{child}"), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert!(!FakeInternet::netns_names().contains(&format!("l2b-{child}")));
    assert_eq!(
        fetch(&s, &id, "http://a.test/").await,
        format!("{} rc=0", net::A_BODY),
        "the parent is unaffected"
    );

    // full, changed on the running sandbox: both servers, by name and
    // address; still nothing private, nor the host.
    let (st, body) = set_network(&s, &id, json!({"mode": "full"})).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["network"]["mode"], "full");
    assert_eq!(
        fetch(&s, &id, "http://b.test/").await,
        format!("{} rc=0", net::B_BODY)
    );
    assert_eq!(
        fetch(&s, &id, &format!("http://{}/", net::B_ADDR)).await,
        format!("{} rc=0", net::B_BODY)
    );
    assert_eq!(
        fetch(&s, &id, "http://c.test/").await,
        format!("{} rc=0", net::A_BODY)
    );
    assert_eq!(
        fetch(&s, &id, &format!("http://{}/", net::HOST_ADDR)).await,
        "rc=28"
    );
    assert_eq!(
        fetch(&s, &id, "http://p.test/").await,
        "rc=28",
        "a name that resolves to a private address"
    );

    // full minus a deny CIDR and a deny name; an allow CIDR opens a private range.
    let (st, body) = set_network(
        &s,
        &id,
        json!({"mode": "full", "allow": [format!("{}/32", net::PRIVATE_ADDR)], "deny": ["203.0.113.0/24", "c.test"]}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(
        fetch(&s, &id, &format!("http://{}/", net::B_ADDR)).await,
        "rc=28"
    );
    assert_eq!(fetch(&s, &id, "http://c.test/").await, "rc=6");
    assert_eq!(
        fetch(&s, &id, "http://a.test/").await,
        format!("{} rc=0", net::A_BODY)
    );
    assert_eq!(
        fetch(&s, &id, &format!("http://{}/", net::PRIVATE_ADDR)).await,
        format!("{} rc=0", net::PRIVATE_BODY)
    );

    // Bad policies on a running sandbox: 400, and the policy stays.
    let (st, body) = set_network(
        &s,
        &id,
        json!({"mode": "allowlist", "allow": ["a.test", "300.1.1.1"]}),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"300.1.1.1\""),
        "{body}"
    );
    let (_, got) = s.call(M::GET, &format!("/sandboxes/{id}"), None).await;
    assert_eq!(got["network"]["mode"], "full", "{got}");

    // Back to an allowlist; the policy survives pause and resume.
    let (st, _) = set_network(&s, &id, json!({"mode": "allowlist", "allow": ["a.test"]})).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        fetch(&s, &id, &format!("http://{}/", net::B_ADDR)).await,
        "rc=28"
    );
    let (st, body) = s
        .call(M::POST, &format!("/sandboxes/{id}/pause"), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let (st, body) = s
        .call(M::POST, &format!("/sandboxes/{id}/resume"), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(
        fetch(&s, &id, "http://a.test/").await,
        format!("{} rc=0", net::A_BODY)
    );
    assert_eq!(fetch(&s, &id, "http://b.test/").await, "rc=6");

    // none cuts everything, the device stays.
    let (st, _) = set_network(&s, &id, json!({"mode": "none"})).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        fetch(&s, &id, &format!("http://{}/", net::A_ADDR)).await,
        "rc=28"
    );
    assert_eq!(
        fetch(&s, &id, "http://a.test/").await,
        "rc=28",
        "DNS is dropped too"
    );
    // Its fork has the device too (the snapshot has it) and the same
    // policy; a new policy opens it again.
    let child = fork(&s, &id, "none", &mut namespaces).await;
    assert_eq!(
        fetch(&s, &child, &format!("http://{}/", net::A_ADDR)).await,
        "rc=28"
    );
    let (st, body) = set_network(
        &s,
        &child,
        json!({"mode": "allowlist", "allow": ["a.test"]}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(
        fetch(&s, &child, "http://a.test/").await,
        format!("{} rc=0", net::A_BODY)
    );
    let (st, body) = s
        .call(M::DELETE, &format!("/sandboxes/{child}"), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{body}");

    // A sandbox without a network has no interface but lo, and cannot get one.
    let (st, plain) = s.call(M::POST, "/sandboxes", Some(json!({}))).await;
    assert_eq!(st, StatusCode::OK, "{plain}");
    let plain_id = plain["sandbox_id"].as_str().unwrap().to_owned();
    assert_eq!(plain["network"]["mode"], "none");
    assert_eq!(s.exec_ok(&plain_id, "ls /sys/class/net").await.trim(), "lo");
    let (st, body) = set_network(&s, &plain_id, json!({"mode": "full"})).await;
    assert_eq!(st, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("without a network"),
        "{body}"
    );
    assert!(!FakeInternet::netns_names().contains(&format!("l2b-{plain_id}")));

    // Destroy removes the namespace, its tap and rules, and the veth pair.
    for sid in [&id, &plain_id] {
        let (st, body) = s.call(M::DELETE, &format!("/sandboxes/{sid}"), None).await;
        assert_eq!(st, StatusCode::OK, "{body}");
    }
    assert!(
        !FakeInternet::netns_names().contains(&netns),
        "namespace left behind"
    );
    let left: Vec<String> = FakeInternet::links_in(&uplink)
        .into_iter()
        .filter(|l| l.starts_with("l2b") && l != net::UPLINK_LINK)
        .collect();
    assert!(left.is_empty(), "veth left behind: {left:?}");
    let tables = FakeInternet::nft_tables_in(&netns);
    assert!(!tables.contains("locale2b"), "{tables}");
}
