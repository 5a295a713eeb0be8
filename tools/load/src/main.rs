//! `faultline-load`: the command line over [`faultline_load`]; see its docs for the modes.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use faultline_load::config::{Cli, Command, LocalMode};
use faultline_load::plan::Plan;
use faultline_load::{chart, local, remote};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("faultline-load: starting the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("faultline-load: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(command: Command) -> anyhow::Result<()> {
    // Ctrl-C ends the current phase early; what was measured so far is still reported.
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\n[load] interrupted: finishing up");
            on_signal.cancel();
        }
    });
    let (result, workload) = match command {
        Command::Run {
            target,
            workload,
            steady,
        } => (
            remote::run(&target, &workload, &Plan::Steady(steady), stop).await?,
            workload,
        ),
        Command::Ramp {
            target,
            workload,
            ramp,
        } => (
            remote::run(&target, &workload, &Plan::Ramp(ramp), stop).await?,
            workload,
        ),
        Command::Local { local, mode } => {
            let (workload, plan) = match mode {
                LocalMode::Run { workload, steady } => (workload, Plan::Steady(steady)),
                LocalMode::Ramp { workload, ramp } => (workload, Plan::Ramp(ramp)),
            };
            (local::run(&local, &workload, &plan, stop).await?, workload)
        }
    };
    print!("{}", result.table());
    std::fs::create_dir_all(&workload.out)
        .with_context(|| format!("creating {}", workload.out.display()))?;
    let json = workload.out.join("result.json");
    let svg = workload.out.join("chart.svg");
    result.write_json(&json)?;
    chart::write(&svg, &result)?;
    println!("\n  wrote {} and {}", json.display(), svg.display());
    Ok(())
}
