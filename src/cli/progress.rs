//! How apply reports progress: spinners on a terminal, one plain line per event otherwise.

use crate::apply::Event;
use crate::model::Address;
use crate::render::Style;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug)]
pub struct Progress {
    style: Style,
    bars: Option<(MultiProgress, Mutex<BTreeMap<Address, ProgressBar>>)>,
    /// JSON lines instead of text (`apply -json`).
    json: bool,
}

impl Progress {
    /// Spinners when `tty`, plain lines otherwise.
    pub fn new(style: Style, tty: bool) -> Progress {
        Progress {
            style,
            bars: tty.then(|| (MultiProgress::new(), Mutex::new(BTreeMap::new()))),
            json: false,
        }
    }

    /// One JSON object per line and event (`apply -json`); see docs/json-format.md.
    pub fn json(style: Style) -> Progress {
        Progress {
            style,
            bars: None,
            json: true,
        }
    }

    /// Prints one JSON event line: `type` and `timestamp` first, then `fields`.
    pub fn emit(kind: &str, fields: serde_json::Value) {
        let mut line = serde_json::Map::new();
        line.insert("type".into(), kind.into());
        line.insert(
            "timestamp".into(),
            humantime::format_rfc3339_millis(std::time::SystemTime::now())
                .to_string()
                .into(),
        );
        if let serde_json::Value::Object(f) = fields {
            line.extend(f);
        }
        say!(
            "{}",
            serde_json::to_string(&serde_json::Value::Object(line)).unwrap_or_default()
        );
    }

    /// An event as `apply -json` reports it: its type and fields.
    fn json_of(e: &Event) -> (&'static str, serde_json::Value) {
        use serde_json::json;
        match e {
            Event::Started { address, what } => (
                "attempt",
                json!({"address": address.to_string(), "what": what}),
            ),
            Event::Done {
                address,
                what,
                seconds,
            } => (
                "applied",
                json!({"address": address.to_string(), "what": what, "seconds": seconds}),
            ),
            Event::Failed { address, error } => (
                "error",
                json!({"address": address.to_string(), "error": error}),
            ),
            Event::FailedOver {
                address,
                infra,
                instance_type,
                error,
                seconds,
                blocked,
                next,
            } => (
                "failover",
                json!({
                    "address": address.to_string(), "infra": infra,
                    "instance_type": instance_type, "error": error, "seconds": seconds,
                    "blocked": blocked, "next": next,
                }),
            ),
            Event::Skipped { address, because } => (
                "skipped",
                json!({"address": address.to_string(), "because": because.to_string()}),
            ),
            Event::StateWritten { serial } => ("state", json!({"serial": serial})),
        }
    }

    fn line(&self, e: &Event) -> Option<String> {
        let s = &self.style;
        Some(match e {
            Event::Started { address, what } => format!("{address}: {what}..."),
            Event::Done {
                address,
                what,
                seconds,
            } => format!("{address}: {what} ({seconds:.1}s)"),
            Event::Failed { address, error } => format!("{address}: {} {error}", s.red("failed:")),
            Event::FailedOver {
                address,
                infra,
                instance_type,
                error,
                seconds,
                blocked,
                next,
            } => {
                format!(
                    "{address}: {infra} {instance_type} failed after {seconds:.1}s: {error}\n{address}:   {blocked}; trying {next}"
                )
            }
            Event::Skipped { address, because } => {
                format!("{address}: skipped because {because} failed")
            }
            Event::StateWritten { .. } => return None,
        })
    }

    pub fn event(&self, e: &Event) {
        if self.json {
            let (kind, fields) = Self::json_of(e);
            Self::emit(kind, fields);
            return;
        }
        let Some(line) = self.line(e) else { return };
        let Some((multi, bars)) = &self.bars else {
            say!("{line}");
            return;
        };
        let Ok(mut bars) = bars.lock() else { return };
        match e {
            Event::Started { address, .. } => {
                // A retry (failover) starts again: the earlier spinner is done.
                if let Some(old) = bars.remove(address) {
                    old.finish_and_clear();
                }
                let bar = multi.add(ProgressBar::new_spinner());
                if let Ok(st) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
                    bar.set_style(st);
                }
                bar.set_message(line);
                bar.enable_steady_tick(Duration::from_millis(120));
                bars.insert(address.clone(), bar);
            }
            Event::Done { address, .. } | Event::Failed { address, .. } => {
                match bars.remove(address) {
                    Some(bar) => {
                        if let Ok(st) = ProgressStyle::with_template("  {msg}") {
                            bar.set_style(st);
                        }
                        bar.finish_with_message(line);
                    }
                    None => {
                        let _ = multi.println(line);
                    }
                }
            }
            _ => {
                let _ = multi.println(line);
            }
        }
    }
}
