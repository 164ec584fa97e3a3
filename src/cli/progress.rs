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

    pub fn event(&self, e: &Event) {
        if self.json {
            let (kind, fields) = crate::render::json::event(e);
            Self::emit(kind, fields);
            return;
        }
        let Some(line) = crate::render::human::event(e, &self.style) else {
            return;
        };
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
