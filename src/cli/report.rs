//! How the engine's notices and failures look on a terminal: diagnostics and warnings on
//! stderr, apply progress as spinners on a TTY (plain lines otherwise, JSON lines with
//! `-json`), and the approval prompt.

use super::progress::Progress;
use crate::engine::{Error, Notice, Reporter};
use crate::render::Style;
use std::io::{IsTerminal, Write};
use std::sync::OnceLock;

/// The terminal a command reports to.
#[derive(Debug)]
pub struct Terminal {
    pub style: Style,
    /// Whether a person can answer on stdin.
    pub tty_in: bool,
    /// `-json`: events as JSON lines on stdout.
    pub json: bool,
    /// `-compact-warnings`: warnings without errors as one summary line each.
    compact_warnings: std::sync::atomic::AtomicBool,
    progress: OnceLock<Progress>,
}

impl Terminal {
    pub fn new(style: Style, json: bool) -> Terminal {
        Terminal {
            style,
            tty_in: std::io::stdin().is_terminal(),
            json,
            compact_warnings: std::sync::atomic::AtomicBool::new(false),
            progress: OnceLock::new(),
        }
    }

    pub fn set_compact_warnings(&self, on: bool) {
        self.compact_warnings
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    fn progress(&self) -> &Progress {
        self.progress.get_or_init(|| {
            if self.json {
                Progress::json(self.style)
            } else {
                Progress::new(self.style, std::io::stdout().is_terminal())
            }
        })
    }

    /// Prints a failure and what to do next on stderr.
    pub fn failure(&self, e: &Error) {
        // Configuration errors were printed already, as diagnostics.
        if let Error::Failed { message, hint } = e {
            eprintln!("{} {message}", self.style.red("error:"));
            if let Some(h) = hint {
                eprintln!("hint: {h}");
            }
        }
    }

    /// Asks for a yes; fails when nobody can answer.
    pub fn confirm(&self, what: &str, auto_approve: bool, input: bool) -> Result<bool, Error> {
        if auto_approve || super::env_flag("SKYFORM_AUTO_APPROVE") {
            return Ok(true);
        }
        if !input || !self.tty_in {
            let why = if input {
                "there is no terminal to ask"
            } else {
                "-input=false forbids asking"
            };
            let hint = if what.starts_with("destroy") {
                "pass -auto-approve, or apply a saved plan: skyform plan -destroy -out plan.json && skyform apply plan.json"
            } else {
                "pass -auto-approve, or apply a saved plan: skyform plan -out plan.json && skyform apply plan.json"
            };
            return Err(Error::new(format!("approval is needed to {what}, and {why}")).hint(hint));
        }
        Ok(ask(&format!(
            "\nDo you want to {what}? Only 'yes' will be accepted: "
        )))
    }
}

/// Asks a question on stdout; true when the answer is `yes`.
pub fn ask(question: &str) -> bool {
    say_inline!("{question}");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    line.trim() == "yes"
}

impl Reporter for Terminal {
    fn notice(&self, notice: Notice<'_>) {
        match notice {
            Notice::Diagnostics(diags, sources) => {
                if self
                    .compact_warnings
                    .load(std::sync::atomic::Ordering::Relaxed)
                    && !diags.has_errors()
                {
                    for d in &diags.items {
                        let at = d
                            .location
                            .as_ref()
                            .map(|l| format!(" ({})", sources.name(l.file)))
                            .unwrap_or_default();
                        eprintln!("{} {}{at}", self.style.yellow("warning:"), d.message);
                    }
                } else {
                    eprint!("{}", diags.render(sources, self.style.color));
                }
            }
            Notice::Refreshed { resources, seconds } => eprintln!(
                "Refreshing {resources} resource{}... done in {seconds:.1}s",
                if resources == 1 { "" } else { "s" }
            ),
            Notice::Warning(w) => eprintln!("warning: {w}"),
            Notice::Controller(line) => {
                eprintln!("{} {line}", crate::controller::book::rfc3339_now());
            }
            Notice::Imported { address, id } => {
                if self.json {
                    Progress::emit(
                        "imported",
                        serde_json::json!({"address": address.to_string(), "id": id}),
                    );
                } else {
                    say!("{address}: imported from {id}");
                }
            }
            Notice::Applying(plan) => {
                if self.json {
                    for fields in crate::render::json::planned(plan) {
                        Progress::emit("planned", fields);
                    }
                }
            }
            Notice::Apply(event) => self.progress().event(event),
            Notice::StateCopied {
                serial,
                resources,
                from,
                to,
            } => say!(
                "Copied the state (serial {serial}, {resources} resources) from {from} to {to}."
            ),
            Notice::NothingToMigrate { from } => {
                say!("The old backend {from} holds no state: nothing to migrate.");
            }
            Notice::StateResealed {
                place,
                encrypted,
                serial,
            } => say!(
                "The state at {place} is {} now (serial {serial}).",
                if encrypted { "encrypted" } else { "decrypted" }
            ),
        }
    }
}
