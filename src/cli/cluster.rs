//! Operations on what runs: `status`, `ssh`, `stop`, `start`, `logs`.

use super::{EXIT_ERROR, EXIT_OK, LockFlags};
use crate::engine::clusters::cluster_address;
use crate::engine::{Engine, Error, Result, parse_addresses};
use std::io::Write as _;

pub async fn status(engine: &Engine, json: bool) -> Result<i32> {
    let state = engine.status().await?;
    if json {
        say!(
            "{}",
            serde_json::to_string_pretty(&crate::render::json::status(&state)).unwrap_or_default()
        );
    } else {
        say_inline!("{}", crate::render::status::status(&state));
        let managed = state
            .resources
            .values()
            .any(|r| r.provider == crate::controller::handoff::NAME);
        if managed {
            let store = engine.store().await?;
            let (book, _) = crate::controller::book::read(store.as_ref()).await?;
            match book
                .lease
                .filter(|l| l.is_live(crate::controller::book::now_ms()))
            {
                Some(l) => say!("Controller: running, {}", l.describe()),
                None if book.runs.values().any(|r| r.is_active()) => {
                    say!("Controller: not running; the managed jobs above are not watched");
                    say!("hint: `skyform controller start` resumes watching them");
                }
                None => say!("Controller: not running (nothing to watch)"),
            }
        }
    }
    Ok(EXIT_OK)
}

/// `ssh CLUSTER [-- CMD]`: runs ssh (or, for this machine, the shell) to the head node,
/// with the terminal handed over; the exit code is the command's.
pub async fn shell(engine: &Engine, address: &str, command: &[String]) -> Result<i32> {
    let addr = cluster_address(address, "")?;
    let argv = engine.shell_argv(&addr, command).await?;
    let (program, args) = argv.split_first().ok_or_else(|| Error::new("no shell"))?;
    let status = std::process::Command::new(program)
        .args(args)
        .status()
        .map_err(|e| Error::new(format!("cannot run {program}: {e}")))?;
    Ok(status.code().unwrap_or(EXIT_ERROR))
}

/// `stop` / `start`.
pub async fn stop_or_start(
    engine: &Engine,
    address: &str,
    run: bool,
    lock: &LockFlags,
) -> Result<i32> {
    let addr = cluster_address(address, "; only clusters stop and start")?;
    if run {
        engine.start_cluster(&addr, lock.options()).await?;
        say!("{addr} started.");
    } else {
        engine.stop_cluster(&addr, lock.options()).await?;
        say!("{addr} stopped; its machines and files are kept.");
        say!("hint: `skyform start {addr}` starts it again; `skyform destroy` removes it");
    }
    Ok(EXIT_OK)
}

pub async fn logs(engine: &Engine, address: &str, follow: bool) -> Result<i32> {
    let addr = parse_addresses(&[address.to_string()])?.remove(0);
    let mut lines = RankedLines::default();
    engine
        .logs(&addr, follow, &mut |rank, chunk| lines.print(rank, chunk))
        .await?;
    lines.flush();
    Ok(EXIT_OK)
}

/// Log output on stdout. A job of one rank passes through as it comes; with several ranks
/// each complete line is prefixed with its rank, and a partial last line waits for the
/// rest.
#[derive(Debug, Default)]
struct RankedLines {
    pending: Vec<Vec<u8>>,
}

impl RankedLines {
    fn print(&mut self, rank: Option<usize>, chunk: &[u8]) {
        let mut out = std::io::stdout().lock();
        match rank {
            None => {
                let _ = out.write_all(chunk);
            }
            Some(r) => {
                if self.pending.len() <= r {
                    self.pending.resize(r + 1, Vec::new());
                }
                let pending = &mut self.pending[r];
                pending.extend_from_slice(chunk);
                while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=nl).collect();
                    let _ = write!(out, "(rank {r}) ");
                    let _ = out.write_all(&line);
                }
            }
        }
        let _ = out.flush();
    }

    /// Prints what is left of unfinished last lines, once the output ends.
    fn flush(&mut self) {
        for r in 0..self.pending.len() {
            if !self.pending[r].is_empty() {
                self.print(Some(r), b"\n");
            }
        }
    }
}
