//! Clones: creates from a template snapshot (`"boot": "template"`: the
//! first one, which builds the template, the following ones, and the
//! memory idle clones take, PSS: the template's pages count once, split
//! between its clones), and forks of a running sandbox into 1 and into
//! [`FORK_WIDE`] children.

use super::{err_note, join_notes, kib_to_mib, Bench, Metric};
use serde_json::{json, Value};
use std::path::PathBuf;

/// Clones alive while their memory is measured.
pub(super) const IDLE_CLONES: usize = 5;
/// Children of the wide fork.
pub(super) const FORK_WIDE: u32 = 10;

impl Bench {
    /// The template's memory file under the base directory (the newest,
    /// when several).
    fn template_memory(&self) -> Option<PathBuf> {
        let mut dirs: Vec<(std::time::SystemTime, PathBuf)> =
            std::fs::read_dir(self.base.join("templates"))
                .ok()?
                .flatten()
                .filter(|e| e.path().join("template.json").is_file())
                .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
                .collect();
        dirs.sort();
        dirs.pop().map(|(_, d)| d.join("memory"))
    }

    pub(super) async fn template_creates(&self) -> Vec<Metric> {
        let body = json!({ "memory_mb": self.memory_mb, "boot": "template" });
        let (mut first, mut wall, mut errs) = (Vec::new(), Vec::new(), Vec::new());
        let mut not_cloned = 0usize;
        let mut alive: Vec<String> = Vec::new();
        let n = self.counts.iterations.max(IDLE_CLONES + 1);
        for i in 0..n {
            match self.create(body.clone()).await {
                Ok((id, r)) => {
                    if r.body.get("boot").and_then(Value::as_str) != Some("template") {
                        not_cloned += 1;
                    }
                    if i == 0 {
                        first.push(r.ms);
                    } else {
                        wall.push(r.ms);
                    }
                    eprintln!("bench: template create {}/{n}: {:.0} ms", i + 1, r.ms);
                    alive.push(id);
                    // Keep the last few for the memory figures.
                    if alive.len() > IDLE_CLONES {
                        let old = alive.remove(0);
                        let _ = self.destroy(&old).await;
                    }
                }
                Err(e) => errs.push(err_note(&e)),
            }
        }
        // Each clone answers once, then sits idle while measured.
        for id in &alive {
            let _ = self.exec_true(id).await;
        }
        let (mut whole, mut guest) = (Vec::new(), Vec::new());
        let memory = self.template_memory();
        for id in &alive {
            if let (Some(pid), Some(mem)) = (self.vm_files(id).pid, &memory) {
                if let Ok((t, g)) = locale2b_vmm::process::pss_kib(pid, mem) {
                    whole.push(kib_to_mib(t));
                    guest.push(kib_to_mib(g));
                }
            }
        }
        for id in &alive {
            let _ = self.destroy(id).await;
        }
        errs.dedup();
        let mut note = vec!["POST /sandboxes {\"boot\":\"template\"}, sequential".to_owned()];
        if not_cloned > 0 {
            note.push(format!("{not_cloned} fell back to a cold boot"));
        }
        if !errs.is_empty() {
            note.push(format!("{} failed: {}", errs.len(), errs.join(" | ")));
        }
        let pss_note = format!("{} idle clones alive at once", whole.len());
        vec![
            Metric::new(
                "create.template.first",
                "ms",
                &first,
                Some("first create: boots and snapshots the template, then clones it".into()),
            ),
            Metric::new("create.template.wall", "ms", &wall, join_notes(&note)),
            Metric::new(
                "clone.pss.template_memory",
                "MiB",
                &guest,
                Some(format!(
                    "{pss_note}; PSS of the mapped template memory per clone"
                )),
            ),
            Metric::new(
                "clone.pss.process",
                "MiB",
                &whole,
                Some(format!(
                    "{pss_note}; whole VMM process (its own RAM writes, TCG translation cache)"
                )),
            ),
        ]
    }
}

impl Bench {
    /// Forks one running sandbox into 1 and into [`FORK_WIDE`] children,
    /// `--pause-cycles` times each (at least once); the children are
    /// destroyed after each fork.
    pub(super) async fn forks(&self) -> Vec<Metric> {
        let names = ["fork.1.wall", "fork.10.wall"];
        // A cold-booted parent: its snapshot's memory is a file the children
        // map (a clone's snapshot carries its RAM in the stream instead,
        // and each child would copy it).
        let body = json!({ "memory_mb": self.memory_mb, "boot": "cold" });
        let parent = match self.create(body).await {
            Ok((id, _)) => id,
            Err(e) => {
                let note = Some(format!("no parent: {}", err_note(&e)));
                return names
                    .iter()
                    .map(|n| Metric::new(n, "ms", &[], note.clone()))
                    .collect();
            }
        };
        let rounds = self.counts.pause_cycles.max(1);
        let mut out = Vec::new();
        for (name, count) in names.iter().zip([1, FORK_WIDE]) {
            let (mut ms, mut errs) = (Vec::new(), Vec::new());
            for _ in 0..rounds {
                let r = self
                    .api
                    .post(
                        &format!("/sandboxes/{parent}/fork"),
                        &json!({ "count": count }),
                        super::CREATE_TIMEOUT,
                    )
                    .await;
                match r {
                    Ok(t) => {
                        ms.push(t.ms);
                        eprintln!("bench: fork into {count}: {:.0} ms", t.ms);
                        let children = t.body["sandboxes"].as_array().cloned().unwrap_or_default();
                        for c in &children {
                            if let Some(id) = c["sandbox_id"].as_str() {
                                self.tracker.add(id);
                                let _ = self.destroy(id).await;
                            }
                        }
                    }
                    Err(e) => errs.push(err_note(&e)),
                }
            }
            errs.dedup();
            let mut note = vec![format!(
                "POST /sandboxes/{{id}}/fork {{\"count\":{count}}} of a running {} MiB sandbox until every child answered",
                self.memory_mb
            )];
            if !errs.is_empty() {
                note.push(format!("{} failed: {}", errs.len(), errs.join(" | ")));
            }
            out.push(Metric::new(name, "ms", &ms, join_notes(&note)));
        }
        let _ = self.destroy(&parent).await;
        out
    }
}
