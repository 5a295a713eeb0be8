//! The two things a service binary does besides serving, for deployments:
//!
//! - `<service> --check-config` loads and validates the configuration exactly as a start
//!   would, then exits: 0 when it is usable, 2 naming the bad variable when not. CI runs it
//!   with the environment that docker-compose and the Kubernetes ConfigMaps set, so a
//!   misspelt key (`CHECKOUT_KAFKA__BROKER`) fails there rather than in a deploy.
//! - `<service> healthcheck [PATH]` asks the service's own admin server for `PATH` (default
//!   `/ready`) and exits 0 on a 200, 1 otherwise. The container image has no shell and no
//!   curl, so this is what a docker-compose healthcheck runs.
//!
//! Without an argument the binary serves, as it always has.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use crate::config::ConfigError;

/// How long a healthcheck waits for the admin server, connecting and answering each.
const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run the service.
    Serve,
    /// Load and validate the configuration, then exit.
    CheckConfig,
    /// Probe the admin server's `path`, then exit.
    Healthcheck {
        /// The admin route to ask, `/ready` unless given.
        path: String,
    },
}

impl Command {
    /// Reads the arguments after the program name.
    pub fn parse(mut args: impl Iterator<Item = String>) -> Result<Self, String> {
        let command = match args.next().as_deref() {
            None => Self::Serve,
            Some("--check-config") => Self::CheckConfig,
            Some("healthcheck") => Self::Healthcheck {
                path: args.next().unwrap_or_else(|| "/ready".to_owned()),
            },
            Some(other) => {
                return Err(format!(
                    "unknown argument {other:?}; expected none, --check-config or healthcheck [PATH]"
                ));
            }
        };
        match args.next() {
            None => Ok(command),
            Some(extra) => Err(format!("unexpected argument {extra:?}")),
        }
    }
}

/// Answers `--check-config` and `healthcheck` for `service` and returns the exit code, or
/// `None` when the binary should serve. `load` loads and validates the service's
/// configuration and returns its admin address.
pub fn answer<F>(service: &'static str, prefix: &str, load: F) -> Option<ExitCode>
where
    F: FnOnce() -> Result<SocketAddr, ConfigError>,
{
    let command = match Command::parse(std::env::args().skip(1)) {
        Ok(command) => command,
        Err(error) => {
            eprintln!("{service}: {error}");
            return Some(ExitCode::from(2));
        }
    };
    match command {
        Command::Serve => None,
        Command::CheckConfig => {
            // The telemetry variables are read at start too, so they are checked with the rest.
            let telemetry = faultline_telemetry::TelemetryConfig::from_env(service);
            let checked = telemetry
                .map_err(|error| error.to_string())
                .and_then(|_| load().map_err(|error| describe(prefix, &error)));
            Some(match checked {
                Ok(_) => {
                    println!("{service}: configuration is valid");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("{service}: {error}");
                    ExitCode::from(2)
                }
            })
        }
        Command::Healthcheck { path } => {
            let checked = load()
                .map_err(|error| describe(prefix, &error))
                .and_then(|admin| healthcheck(admin, &path));
            Some(match checked {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("{service}: healthcheck {path}: {error}");
                    ExitCode::FAILURE
                }
            })
        }
    }
}

/// A configuration error, with each key figment complains about spelt as the environment
/// variable that would set it (`CHECKOUT_KAFKA__BROKER`), which is what an operator edits.
pub fn describe(prefix: &str, error: &ConfigError) -> String {
    let ConfigError::Load(load) = error else {
        return error.to_string();
    };
    let mut lines = Vec::new();
    for error in load.as_ref().clone() {
        // figment's path ends with the offending key, unknown fields included.
        let variable = if error.path.is_empty() {
            String::new()
        } else {
            format!("{prefix}_{}: ", error.path.join("__").to_uppercase())
        };
        lines.push(format!("{variable}{error}"));
    }
    lines.join("\n")
}

/// `GET path` on the admin server at `admin` over plain HTTP/1.0 with the standard library
/// only: `Ok` on a 200. An unspecified listen address (`0.0.0.0`) is asked on loopback.
pub fn healthcheck(admin: SocketAddr, path: &str) -> Result<(), String> {
    let target = match admin.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), admin.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), admin.port())
        }
        _ => admin,
    };
    let mut stream = TcpStream::connect_timeout(&target, HEALTHCHECK_TIMEOUT)
        .map_err(|error| format!("cannot connect to {target}: {error}"))?;
    stream
        .set_read_timeout(Some(HEALTHCHECK_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(HEALTHCHECK_TIMEOUT)))
        .map_err(|error| error.to_string())?;
    // One write: a request sent in pieces may meet a server that answered the first piece.
    let request = format!("GET {path} HTTP/1.0\r\nHost: {target}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|error| format!("cannot send the request: {error}"))?;
    // The status line is all that is needed. It may arrive in pieces (a server writes it as
    // it formats it, and TCP keeps no message boundaries), so read until its end.
    let mut head = [0_u8; 64];
    let mut filled = 0;
    while filled < head.len() && !head[..filled].contains(&b'\n') {
        let read = stream
            .read(&mut head[filled..])
            .map_err(|error| format!("no answer: {error}"))?;
        if read == 0 {
            break;
        }
        filled += read;
    }
    let answer = String::from_utf8_lossy(&head[..filled]);
    let status = answer.split_whitespace().nth(1).unwrap_or("none");
    if status == "200" {
        Ok(())
    } else {
        Err(format!("answered status {status}"))
    }
}

#[cfg(test)]
// `figment::Jail` closures must return `figment::Error`, which is large; not our choice.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, String> {
        Command::parse(args.iter().map(|arg| (*arg).to_owned()))
    }

    #[test]
    fn arguments() {
        assert_eq!(parse(&[]), Ok(Command::Serve));
        assert_eq!(parse(&["--check-config"]), Ok(Command::CheckConfig));
        assert_eq!(
            parse(&["healthcheck"]),
            Ok(Command::Healthcheck {
                path: "/ready".into()
            })
        );
        assert_eq!(
            parse(&["healthcheck", "/healthz"]),
            Ok(Command::Healthcheck {
                path: "/healthz".into()
            })
        );
        assert!(parse(&["--chek-config"]).is_err());
        assert!(parse(&["--check-config", "extra"]).is_err());
    }

    #[test]
    fn an_unknown_key_is_named_as_its_variable() {
        #[derive(Debug, serde::Serialize, serde::Deserialize, Default)]
        #[serde(deny_unknown_fields)]
        struct Example {
            kafka: crate::config::KafkaSettings,
        }
        figment::Jail::expect_with(|jail| {
            jail.set_env("EXAMPLE_KAFKA__BROKER", "kafka:9092");
            let error = crate::config::load::<Example>("EXAMPLE")
                .err()
                .map(|error| describe("EXAMPLE", &error))
                .unwrap_or_default();
            assert!(error.contains("EXAMPLE_KAFKA__BROKER"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn a_healthcheck_reads_the_status_line() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            for status in ["200 OK", "503 Service Unavailable"] {
                let (mut stream, _) = listener.accept().expect("accept");
                // The whole request first, as a real server does.
                let mut request = Vec::new();
                let mut chunk = [0_u8; 256];
                while !request.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(read) => request.extend_from_slice(&chunk[..read]),
                    }
                }
                // In two writes with a pause between, as a server under load may send it.
                let _ = stream.write_all(b"HTTP/1.1 ");
                let _ = stream.flush();
                std::thread::sleep(std::time::Duration::from_millis(50));
                let _ = write!(stream, "{status}\r\ncontent-length: 0\r\n\r\n");
            }
        });
        assert_eq!(healthcheck(addr, "/ready"), Ok(()));
        let refused = healthcheck(addr, "/ready").unwrap_err();
        assert!(refused.contains("503"), "{refused}");
        server.join().expect("server thread");
    }
}
