//! Driving a running system: its processes (launch, stop, freeze, restart, readiness) and
//! its admin ports (metrics, logs, provider faults).

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use tokio::process::{Child, Command};

use super::{Freeze, Service, Signal, System, sample};

impl System {
    pub(super) fn launch(&mut self, service: Service) -> anyhow::Result<()> {
        let process = self
            .processes
            .get_mut(&service)
            .context("unknown service")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_dir.join(format!("{}.log", service.name())))?;
        let child = Command::new(self.bin_dir.join(service.name()))
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .envs(process.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", service.name()))?;
        process.child = Some(child);
        Ok(())
    }

    /// The process id of `service` while it runs (for tools that sample it from /proc).
    pub fn pid(&self, service: Service) -> Option<u32> {
        self.processes.get(&service)?.child.as_ref()?.id()
    }

    /// Polls the service's `/ready` until it answers 200.
    pub async fn wait_ready(&mut self, service: Service, timeout: Duration) -> anyhow::Result<()> {
        let port = self.processes[&service].admin_port;
        let url = format!("http://127.0.0.1:{port}/ready");
        let http = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Some(process) = self.processes.get_mut(&service)
                && let Some(child) = process.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "{} exited with {status} while starting; see {}",
                    service.name(),
                    self.log_dir.display()
                );
            }
            if let Ok(response) = http.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!(
                    "{} not ready after {timeout:?}; see {}",
                    service.name(),
                    self.log_dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops `service` with `signal` and waits for the process to exit.
    pub async fn stop(&mut self, service: Service, signal: Signal) -> anyhow::Result<()> {
        let process = self
            .processes
            .get_mut(&service)
            .context("unknown service")?;
        let Some(mut child) = process.child.take() else {
            return Ok(());
        };
        match signal {
            Signal::Kill => child.start_kill()?,
            Signal::Term => {
                let pid = child.id().context("process already reaped")?;
                let status = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()?;
                ensure!(status.success(), "kill -TERM {pid} failed");
            }
        }
        tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .context("service did not exit within 30 s")??;
        Ok(())
    }

    /// The value of the first sample of `series` (a metric name, with its labels if it has
    /// any) in `service`'s `/metrics`, or `None` if it has none.
    pub async fn metric(&self, service: Service, series: &str) -> anyhow::Result<Option<f64>> {
        let (_, text) = self.admin(service, "/metrics").await?;
        Ok(sample(&text, series))
    }

    /// `GET` of `path` on `service`'s admin port: status and body.
    pub async fn admin(&self, service: Service, path: &str) -> anyhow::Result<(u16, String)> {
        let port = self.processes[&service].admin_port;
        let response = reqwest::get(format!("http://127.0.0.1:{port}{path}")).await?;
        Ok((response.status().as_u16(), response.text().await?))
    }

    /// Everything `service` has logged so far.
    pub fn log(&self, service: Service) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(
            self.log_dir.join(format!("{}.log", service.name())),
        )?)
    }

    /// The full name of `topic` in this system.
    pub fn topic(&self, topic: &str) -> String {
        format!("{}.{topic}", self.run_id)
    }

    /// The broker's own address (services given a link of their own in
    /// `Options::service_brokers` bootstrap there instead).
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// Freezes or thaws `service` (SIGSTOP / SIGCONT): a hung dependency, not a dead one.
    pub fn freeze(&mut self, service: Service, freeze: Freeze) -> anyhow::Result<()> {
        let process = self
            .processes
            .get_mut(&service)
            .context("unknown service")?;
        let pid = process
            .child
            .as_ref()
            .and_then(Child::id)
            .context("service is not running")?;
        let signal = match freeze {
            Freeze::Stop => "-STOP",
            Freeze::Continue => "-CONT",
        };
        let status = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()?;
        ensure!(status.success(), "kill {signal} {pid} failed");
        Ok(())
    }

    /// `PUT` of `body` as JSON to `path` on `service`'s admin port.
    pub async fn admin_put(
        &self,
        service: Service,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<(u16, String)> {
        let port = self.processes[&service].admin_port;
        let response = reqwest::Client::new()
            .put(format!("http://127.0.0.1:{port}{path}"))
            .json(body)
            .send()
            .await?;
        Ok((response.status().as_u16(), response.text().await?))
    }

    /// Starts `service` again with the same settings and waits until it is ready.
    pub async fn restart(&mut self, service: Service) -> anyhow::Result<()> {
        self.launch(service)?;
        self.wait_ready(service, Duration::from_secs(60)).await
    }

    /// Sets (or replaces) one environment variable of `service` for its next start.
    pub fn set_env(&mut self, service: Service, key: &str, value: &str) -> anyhow::Result<()> {
        let process = self
            .processes
            .get_mut(&service)
            .context("unknown service")?;
        process.env.retain(|(k, _)| k != key);
        process.env.push((key.to_owned(), value.to_owned()));
        Ok(())
    }
}
