//! A networked sandbox keeps its network across a server restart: the VM
//! and its namespace outlive the manager, the new manager re-attaches,
//! starts the sandbox's resolver again and applies its rules; the policy
//! can still be changed and destroy removes it all. Real guest, and the
//! fake internet of the server's end-to-end tests (its own namespaces).

#![allow(clippy::unwrap_used, clippy::field_reassign_with_default, dead_code)]

mod common;

#[path = "../../server/tests/common/fake_internet.rs"]
mod fake_internet;

use common::*;
use fake_internet::FakeInternet;
use locale2b_manager::network::{NetworkMode, NetworkPolicy};
use locale2b_manager::{CreateSandbox, ExecSpec, GuestOps, SandboxStatus};
use std::time::Duration;

async fn fetch(
    m: &locale2b_manager::SandboxManager,
    id: &locale2b_protocol::SandboxId,
    url: &str,
) -> String {
    let out = m
        .guest(id)
        .exec(ExecSpec {
            timeout: Some(Duration::from_secs(60)),
            ..ExecSpec::shell(format!(
                "curl -s --connect-timeout 5 -m 30 {url}; echo \" rc=$?\""
            ))
        })
        .await
        .unwrap();
    out.stdout.trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_networked_sandbox_keeps_its_network_across_a_server_restart() {
    let Some(image) = image_dir() else { return };
    if !nix::unistd::geteuid().is_root() {
        locale2b_testkit::require_or_skip(
            "egress network tests need root (namespaces, taps, nftables)",
        );
        return;
    }
    let internet = FakeInternet::start();
    let base = TestBase::new(&image);
    let mut config = base.config();
    config.manager.network_uplink_netns = Some(internet.uplink().to_owned());
    config.manager.network_dns_upstream = Some(fake_internet::DNS_ADDR.into());
    let m = manager(config.clone()).await;
    let sb = m
        .create(CreateSandbox {
            network: Some(NetworkPolicy {
                mode: NetworkMode::Allowlist,
                allow: vec!["a.test".into()],
                deny: vec![],
            }),
            ..CreateSandbox::default()
        })
        .await
        .unwrap();
    let id = sb.sandbox_id.clone();
    let netns = format!("l2b-{id}");
    let guard = scopeguard(&netns);
    assert_eq!(
        fetch(&m, &id, "http://a.test/").await,
        format!("{} rc=0", fake_internet::A_BODY)
    );

    // "Crash" the server: drop the manager, nothing is torn down.
    drop(m);
    assert!(
        FakeInternet::netns_names().contains(&netns),
        "the namespace outlives the server"
    );
    let m = manager(config).await;
    assert_eq!(m.get(&id).await.unwrap().status, SandboxStatus::Running);
    assert_eq!(
        fetch(&m, &id, "http://a.test/").await,
        format!("{} rc=0", fake_internet::A_BODY),
        "the resolver answers again after the restart"
    );
    assert_eq!(
        fetch(&m, &id, "http://b.test/").await,
        "rc=6",
        "and still only the allowed name"
    );
    assert_eq!(
        fetch(&m, &id, &format!("http://{}/", fake_internet::B_ADDR)).await,
        "rc=28"
    );
    m.set_network(
        &id,
        NetworkPolicy {
            mode: NetworkMode::Full,
            ..NetworkPolicy::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        fetch(&m, &id, "http://b.test/").await,
        format!("{} rc=0", fake_internet::B_BODY)
    );
    m.destroy(&id).await.unwrap();
    assert!(!FakeInternet::netns_names().contains(&netns));
    assert!(pids_mentioning(base.path().to_str().unwrap()).is_empty());
    drop(guard);
}

/// Deletes the namespace if the test fails before destroy does.
fn scopeguard(netns: &str) -> impl Drop + '_ {
    struct G<'a>(&'a str);
    impl Drop for G<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", self.0])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
    G(netns)
}
