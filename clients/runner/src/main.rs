//! `scriptd-runner`: streams variable updates to a RUNNING scriptd run over
//! its runner stream (`GET /runs/:runId/stream`).
//!
//! ```text
//! scriptd-runner --url http://127.0.0.1:8080 --tenant t1 --token alice \
//!     --run 0193a0a0-0000-7000-8000-000000000001 --file updates.jsonl \
//!     [--finish SUCCEEDED] [--inflight 256] [--max-reconnects 10]
//! ```
//!
//! Each non-empty line of `--file` (`-` for stdin) is one frame: a JSON
//! array of items, or one item object, items as in `POST /runs/:runId/vars`
//! (`{"key":"cart.total","numVal":42.5}`; exactly one of strVal, numVal,
//! boolVal, jsonVal). A file is checked whole before anything is sent; on
//! stdin, a bad line stops the stream after what came before it is acked.
//! Frames continue after the run's committed `streamSeq`, so running again
//! after a crash appends (upserts are idempotent per key). A lost connection
//! is reopened with backoff and the unanswered frames resent.
//!
//! With `--finish`, the run is finished with that status after the last
//! frame is acked; without it, the run stays RUNNING.
//!
//! Prints one line of JSON to stdout once the stream started, also when it
//! ends in an error: `{"frames","acked","duplicates","refused":[{"seq",
//! "line","code","message"}],"reconnects","lastSeq","unacked"}`, plus
//! `"run"` when finished. Exit status: 0; 2 when some frames were refused; 1 on an error
//! (printed to stderr).

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use scriptd_runner::{parse_line, Runner, RunnerConfig, FINISH_STATUSES};
use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};

/// Streams variable updates (JSON lines) to a scriptd run.
#[derive(Debug, Parser)]
#[command(name = "scriptd-runner", version)]
struct Args {
    /// The server's HTTP base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The tenant (sent as x-tenant-id).
    #[arg(long)]
    tenant: String,
    /// The bearer token.
    #[arg(long)]
    token: String,
    /// The run's id.
    #[arg(long)]
    run: String,
    /// The updates, one frame per line; `-` for stdin.
    #[arg(long)]
    file: String,
    /// Finish the run with this status after the last frame.
    #[arg(long, value_parser = FINISH_STATUSES)]
    finish: Option<String>,
    /// At most this many frames unacknowledged.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    inflight: u32,
    /// Give up after this many failed reconnection attempts in a row.
    #[arg(long, default_value_t = 10)]
    max_reconnects: u32,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("scriptd-runner: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn open(file: &str) -> Result<Box<dyn AsyncBufRead + Unpin>> {
    if file == "-" {
        return Ok(Box::new(BufReader::new(tokio::io::stdin())));
    }
    let f = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("opening {file}"))?;
    Ok(Box::new(BufReader::new(f)))
}

/// Checks every line of a file before anything is sent.
async fn check_file(file: &str) -> Result<()> {
    let mut lines = open(file).await?.lines();
    let mut n = 0usize;
    while let Some(line) = lines
        .next_line()
        .await
        .with_context(|| format!("reading {file}"))?
    {
        n += 1;
        parse_line(&line).with_context(|| format!("{file}:{n}"))?;
    }
    Ok(())
}

async fn run(args: Args) -> Result<ExitCode> {
    if args.file != "-" {
        check_file(&args.file).await?;
    }
    let mut cfg = RunnerConfig::new(&args.url, &args.tenant, &args.token, &args.run);
    cfg.inflight = args.inflight as usize;
    cfg.max_reconnects = args.max_reconnects;
    let mut runner = Runner::start(cfg).await?;

    // The line of each seq, to name the lines of refused frames.
    let mut lines_of: Vec<(i64, usize)> = Vec::new();
    let (outcome, run) = match stream(&args, &mut runner, &mut lines_of).await {
        Ok(run) => (Ok(()), run),
        Err(e) => (Err(e), None),
    };

    let report = runner.report();
    let mut summary = report.to_json();
    summary["frames"] = lines_of.len().into();
    summary["unacked"] = runner.unacked().into();
    if let Some(refused) = summary["refused"].as_array_mut() {
        for r in refused {
            let seq = r["seq"].as_i64().unwrap_or(0);
            if let Ok(i) = lines_of.binary_search_by_key(&seq, |(s, _)| *s) {
                r["line"] = lines_of[i].1.into();
            }
        }
    }
    if let Some(run) = run {
        summary["run"] = run;
    }
    println!("{summary}");
    for (seq, code, message) in &report.refused {
        eprintln!("scriptd-runner: frame {seq} refused: {code}: {message}");
    }
    outcome?;
    Ok(if report.refused.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// Sends every line, then finishes (with `--finish`) or closes: the
/// finished run, if finished.
async fn stream(
    args: &Args,
    runner: &mut Runner,
    lines_of: &mut Vec<(i64, usize)>,
) -> Result<Option<Value>> {
    let mut lines = open(&args.file).await?.lines();
    let mut n = 0usize;
    while let Some(line) = lines
        .next_line()
        .await
        .with_context(|| format!("reading {}", args.file))?
    {
        n += 1;
        match parse_line(&line) {
            Ok(None) => {}
            Ok(Some(items)) => lines_of.push((runner.send_vars(items).await?, n)),
            Err(e) => {
                // What came before is acked; the run stays RUNNING.
                runner.close().await?;
                return Err(e.context(format!("{}:{n}", args.file)));
            }
        }
    }
    match &args.finish {
        Some(status) => Ok(Some(runner.finish(status).await?)),
        None => {
            runner.close().await?;
            Ok(None)
        }
    }
}
