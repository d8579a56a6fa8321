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
    Ok(())
}
