//! Re-reading files on a timer, for the things that reload without a restart (policies,
//! certificates).
//!
//! Changes are detected by content, not modification time: a SHA-256 over the files' names
//! and bytes. That catches every real change (including Kubernetes' symlink swaps of mounted
//! secrets, and two writes within one mtime tick) and costs a few kilobytes of reading per
//! period. The same digest names a policy's version.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

/// Files read together, and a digest of their names and contents.
pub(crate) struct Snapshot {
    pub(crate) files: Vec<(PathBuf, Vec<u8>)>,
    pub(crate) digest: String,
}

/// Reads `paths` in the given order.
pub(crate) fn snapshot(paths: &[PathBuf]) -> std::io::Result<Snapshot> {
    let mut hasher = Sha256::new();
    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        let bytes = std::fs::read(path)?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        hasher.update(name.unwrap_or_default().as_bytes());
        hasher.update([0]);
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(&bytes);
        files.push((path.clone(), bytes));
    }
    let digest = hasher.finalize();
    let digest = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok(Snapshot { files, digest })
}

/// The files directly in `dir` whose names end with `extension`, sorted by name.
pub(crate) fn files_in(dir: &Path, extension: &str) -> std::io::Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let matches = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(extension) && !n.starts_with('.'));
        if matches && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

/// Runs `tick` every `period` (the first time one period from now) until `shutdown`.
pub(crate) fn every<F, Fut>(
    period: Duration,
    shutdown: CancellationToken,
    mut tick: F,
) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let start = tokio::time::Instant::now() + period;
        let mut ticks = tokio::time::interval_at(start, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => tick().await,
            }
        }
    })
}
