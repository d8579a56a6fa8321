//! `locale2b doctor`: what this host can run, and which backend the server
//! would choose, in words.

use locale2b_config::Config;
use locale2b_manager::backend;

/// Prints the probe's decision and reasons.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let report =
        locale2b_vmm::probe::probe(&backend::probe_config(&config.vmm, &config.manager)).await;
    println!(
        "backend: {} ({})",
        report.chosen,
        backend::accel_name(&report)
    );
    for reason in &report.reasons {
        println!("  - {reason}");
    }
    let image = config
        .manager
        .base_dir
        .join("images")
        .join(&config.manager.default_template);
    if image.join("vmlinux").exists() && image.join("rootfs.ext4").exists() {
        println!("guest image: {}", image.display());
    } else {
        println!(
            "guest image: missing in {} (run `locale2b image build`)",
            image.display()
        );
    }
    let cgroups =
        locale2b_manager::cgroup::Cgroups::detect(config.manager.cgroups, &config.manager.base_dir);
    println!("host limits per sandbox: {}", cgroups.describe());
    if !cgroups.active() {
        println!("  - sandboxes will run without memory, CPU and pids limits on their VMMs");
    }
    let workspaces = config.manager.base_dir.join("workspaces");
    let probe_dir = if workspaces.exists() {
        workspaces
    } else {
        config.manager.base_dir.clone()
    };
    match locale2b_manager::host::free_space_mb(&probe_dir) {
        Some(free) => println!(
            "disk: {free} MiB free under {} (a new {} MiB workspace disk needs {} MiB with the margin)",
            probe_dir.display(),
            config.manager.disk_size_mb,
            config.manager.disk_size_mb + config.manager.disk_free_margin_mb
        ),
        None => println!("disk: {} is not readable yet", probe_dir.display()),
    }
    Ok(())
}
