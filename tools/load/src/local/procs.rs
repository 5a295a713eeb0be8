//! RSS and CPU of the processes under test, sampled from /proc.
//!
//! Every interval the sampler reads each process's `VmRSS` (`/proc/<pid>/status`) and its
//! user + system CPU time (`/proc/<pid>/stat`). The report gives RSS at the start, its peak
//! and at the end, and CPU as average cores used and milliseconds per completed order,
//! which is what tells whether the broker, a service or Postgres is the limit.
//!
//! /proc lives in memory, so these small reads never wait on a disk.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Clock ticks per second in /proc's CPU times: `USER_HZ`, 100 on every Linux ABI.
const TICKS_PER_SECOND: f64 = 100.0;
/// Samples kept per process at most (a day at one a second).
const MAX_SAMPLES: usize = 86_400;

/// A process to watch.
#[derive(Debug, Clone)]
pub struct Watched {
    /// What the table calls it.
    pub name: String,
    pub pid: u32,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    rss_kib: u64,
    cpu_ticks: u64,
}

/// Samples processes until [`Sampler::finish`].
#[derive(Debug)]
pub struct Sampler {
    stop: CancellationToken,
    task: JoinHandle<Vec<(Watched, Vec<Sample>)>>,
}

/// One process over the run.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessReport {
    pub name: String,
    pub pid: u32,
    /// Samples taken.
    pub samples: usize,
    /// RSS at the first sample, MiB.
    pub rss_start_mib: f64,
    /// Largest RSS sampled, MiB.
    pub rss_max_mib: f64,
    /// RSS at the last sample, MiB.
    pub rss_end_mib: f64,
    /// CPU seconds used between the first and the last sample.
    pub cpu_s: f64,
    /// `cpu_s` over the wall time between them: cores kept busy on average.
    pub cpu_cores: f64,
    /// CPU milliseconds per completed order.
    pub cpu_ms_per_order: f64,
}

impl Sampler {
    /// Starts sampling `processes` every `interval`.
    pub fn start(processes: Vec<Watched>, interval: Duration) -> Self {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut series: Vec<(Watched, Vec<Sample>)> =
                processes.into_iter().map(|p| (p, Vec::new())).collect();
            let mut ticker = tokio::time::interval(interval);
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    _ = ticker.tick() => {}
                }
                for (process, samples) in &mut series {
                    if samples.len() < MAX_SAMPLES
                        && let Some(sample) = sample(process.pid)
                    {
                        samples.push(sample);
                    }
                }
            }
            // One last sample, so the window ends when the run does.
            for (process, samples) in &mut series {
                if let Some(sample) = sample(process.pid) {
                    samples.push(sample);
                }
            }
            series
        });
        Self { stop, task }
    }

    /// Stops sampling; reports each process, with CPU per order over `orders`.
    pub async fn finish(self, orders: u64) -> Vec<ProcessReport> {
        self.stop.cancel();
        let series = self.task.await.unwrap_or_default();
        series
            .into_iter()
            .map(|(process, samples)| report(process, &samples, orders))
            .collect()
    }
}

fn report(process: Watched, samples: &[Sample], orders: u64) -> ProcessReport {
    let mib = |kib: u64| kib as f64 / 1_024.0;
    let (first, last) = (samples.first(), samples.last());
    let cpu_s = match (first, last) {
        (Some(a), Some(b)) => b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64 / TICKS_PER_SECOND,
        _ => 0.0,
    };
    let wall = match (first, last) {
        (Some(a), Some(b)) => b.at.saturating_duration_since(a.at).as_secs_f64(),
        _ => 0.0,
    };
    ProcessReport {
        name: process.name,
        pid: process.pid,
        samples: samples.len(),
        rss_start_mib: first.map_or(0.0, |s| mib(s.rss_kib)),
        rss_max_mib: mib(samples.iter().map(|s| s.rss_kib).max().unwrap_or(0)),
        rss_end_mib: last.map_or(0.0, |s| mib(s.rss_kib)),
        cpu_s,
        cpu_cores: if wall > 0.0 { cpu_s / wall } else { 0.0 },
        cpu_ms_per_order: if orders > 0 {
            cpu_s * 1_000.0 / orders as f64
        } else {
            0.0
        },
    }
}

fn sample(pid: u32) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(Sample {
        at: Instant::now(),
        rss_kib: rss_kib(&status)?,
        cpu_ticks: cpu_ticks(&stat)?,
    })
}

/// `VmRSS` from a `/proc/<pid>/status`, in KiB.
fn rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime from a `/proc/<pid>/stat`, in ticks. The command name (field 2) is in
/// parentheses and may hold spaces or parentheses itself, so fields are counted from the
/// last `)`: utime and stime are fields 14 and 15, the 12th and 13th after it.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The pid of the process listening on 127.0.0.1:`port` (or any address), found through
/// the socket's inode in /proc/net/tcp and the /proc/<pid>/fd links that point to it. Only
/// processes whose fds we may read are found.
pub fn listener_pid(port: u16) -> Option<u32> {
    let tables = ["/proc/net/tcp", "/proc/net/tcp6"];
    let inode = tables
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .find_map(|table| listening_inode(&table, port))?;
    let wanted = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path())
                .is_ok_and(|target| target.as_os_str() == wanted.as_str())
            {
                return Some(pid);
            }
        }
    }
    None
}

/// The inode of the socket in LISTEN state (`0A`) on `port` in a /proc/net/tcp table.
fn listening_inode(table: &str, port: u16) -> Option<u64> {
    let port_hex = format!(":{port:04X}");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local = fields.get(1)?;
        let state = fields.get(3)?;
        if local.ends_with(&port_hex) && *state == "0A" {
            fields.get(9)?.parse().ok()
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_and_cpu_read_from_proc_text() {
        let status = "Name:\ttansu\nVmPeak:\t  99999 kB\nVmRSS:\t   32768 kB\n";
        assert_eq!(rss_kib(status), Some(32_768));
        let stat = "4242 (tokio (rt) 1) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0";
        assert_eq!(cpu_ticks(stat), Some(300));
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn the_listening_socket_is_found_by_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:2384 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1\n   1: 0100007F:2384 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 999 1\n";
        assert_eq!(listening_inode(table, 9092), Some(12_345));
        assert_eq!(listening_inode(table, 5432), None);
    }

    #[test]
    fn our_own_process_samples() {
        let sample = sample(std::process::id()).expect("/proc/self is readable");
        assert!(sample.rss_kib > 0);
    }
}
