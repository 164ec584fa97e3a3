//! The engine: one run of skyform as a library call. It loads the configuration, opens the
//! state store, builds the provider registry once, and refreshes, plans, applies, destroys
//! and imports, with typed options in and typed results and [`Notice`]s out. The CLI, the
//! controller and tests all call it; none of them prints from here — `render/` and the
//! caller's [`Reporter`] turn results into words.
//!
//! The rooms: `store` (which state store, migrations, workspaces, state edits), `session`
//! (a locked run: plan, apply a plan, imports), `refresh` (asking providers what is true),
//! `catalog` (price catalogs and the offerings of the clouds a configuration declares),
//! `clusters` (status, stop/start, shells, logs, the generated ssh config).

pub mod catalog;
pub mod clusters;
pub mod console;
pub mod refresh;
pub mod session;
pub mod store;

pub use session::{ApplyOptions, LockOptions, PlanOptions, Session};

use crate::apply::Event;
use crate::config::{self, Config, Diagnostics, InputValue, VarArgs};
use crate::model::Address;
use crate::plan::Plan;
use crate::providers::{Places, Registry};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// Why a run stopped: a message and what to do next, or a configuration whose errors were
/// reported already as diagnostics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{message}")]
    Failed {
        message: String,
        hint: Option<String>,
    },
    /// The configuration has errors; they went to the reporter as diagnostics.
    #[error("the configuration has errors")]
    InvalidConfig,
}

impl Error {
    pub fn new(message: impl Into<String>) -> Error {
        Error::Failed {
            message: message.into(),
            hint: None,
        }
    }

    /// Adds what to do next.
    #[must_use]
    pub fn hint(self, h: impl Into<String>) -> Error {
        match self {
            Error::Failed { message, .. } => Error::Failed {
                message,
                hint: Some(h.into()),
            },
            e => e,
        }
    }

    /// What to do next, if known.
    pub fn hint_text(&self) -> Option<&str> {
        match self {
            Error::Failed { hint, .. } => hint.as_deref(),
            Error::InvalidConfig => None,
        }
    }
}

impl From<crate::state::StateError> for Error {
    fn from(e: crate::state::StateError) -> Self {
        Error::Failed {
            hint: e.hint(),
            message: e.to_string(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Something a run wants its caller to know while it works. The caller decides how it looks
/// (text, JSON lines, nothing).
#[derive(Debug)]
pub enum Notice<'a> {
    /// Diagnostics of the configuration: warnings, or the errors that stop the run.
    Diagnostics(&'a Diagnostics, &'a config::Sources),
    /// Refresh asked every resource's backend.
    Refreshed { resources: usize, seconds: f64 },
    /// Something is left out or cannot be asked; the run goes on.
    Warning(String),
    /// What the controller did (launched, lost, recovered, finished a managed job).
    Controller(String),
    /// A cluster was taken into state through an `import` block.
    Imported { address: &'a Address, id: &'a str },
    /// Apply is about to carry out these changes.
    Applying(&'a Plan),
    /// Progress of apply.
    Apply(&'a Event),
    /// A state was copied from one backend to another.
    StateCopied {
        serial: u64,
        resources: usize,
        from: String,
        to: String,
    },
    /// The old backend held no state to copy.
    NothingToMigrate { from: String },
    /// A state was encrypted or decrypted in place.
    StateResealed {
        place: String,
        encrypted: bool,
        serial: u64,
    },
}

/// Receives a run's notices.
pub trait Reporter: Send + Sync {
    fn notice(&self, notice: Notice<'_>);
}

/// A reporter that drops everything (tests, and callers that only want results).
#[derive(Debug, Default, Clone, Copy)]
pub struct Quiet;

impl Reporter for Quiet {
    fn notice(&self, _: Notice<'_>) {}
}

/// Where and how a run works.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The configuration directory (absolute, so paths recorded in state do not depend on
    /// where skyform runs).
    pub dir: PathBuf,
    /// `-workspace` / `SKYFORM_WORKSPACE`; else the one `workspace select` recorded.
    pub workspace: Option<String>,
    /// `-var` and `-var-file`.
    pub vars: VarArgs,
    /// The skyform binary clusters run as node agents, for callers whose own program is not
    /// skyform (tests); `None`: `SKYFORM_AGENT_EXE`, else this program.
    pub agent_exe: Option<PathBuf>,
}

/// One run: the configuration as loaded, its variables, and the backends, made once.
pub struct Engine {
    dir: PathBuf,
    workspace_flag: Option<String>,
    agent_exe: Option<PathBuf>,
    config: Config,
    /// Problems found loading the configuration and its variables, not yet reported.
    diagnostics: Diagnostics,
    inputs: BTreeMap<String, InputValue>,
    registry: OnceLock<Arc<Registry>>,
    reporter: Arc<dyn Reporter>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("dir", &self.dir)
            .field("workspace_flag", &self.workspace_flag)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Reads the configuration in `options.dir` and its variables. Problems are kept, and
    /// reported by [`Engine::require_valid`] (commands that only read state do not need a
    /// valid configuration).
    pub fn open(options: Options, reporter: Arc<dyn Reporter>) -> Engine {
        let (mut config, mut diagnostics) = config::load(&options.dir);
        let (inputs, vdiags) = config::inputs(&mut config, &options.vars, &config::process_env());
        diagnostics.extend(vdiags);
        let mut engine = Engine {
            dir: options.dir,
            workspace_flag: options.workspace,
            agent_exe: options.agent_exe,
            config,
            diagnostics,
            inputs,
            registry: OnceLock::new(),
            reporter,
        };
        engine.config.workspace = engine.workspace().unwrap_or_else(|_| "default".into());
        engine
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The skyform program that runs as node agents and the background controller, when
    /// the caller named one (`None`: `SKYFORM_AGENT_EXE`, else this program).
    pub fn agent_exe(&self) -> Option<&Path> {
        self.agent_exe.as_deref()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn inputs(&self) -> &BTreeMap<String, InputValue> {
        &self.inputs
    }

    pub fn reporter(&self) -> &dyn Reporter {
        self.reporter.as_ref()
    }

    /// The configuration's diagnostics so far (for `validate`, which reports them itself).
    pub fn diagnostics(&self) -> &Diagnostics {
        &self.diagnostics
    }

    /// Reports the configuration's diagnostics; fails if any is an error. With errors, the
    /// configuration is evaluated too, so every problem is reported in one pass.
    pub fn require_valid(&self) -> Result<()> {
        let mut diags = self.diagnostics.clone();
        if diags.has_errors() {
            let mut collect = config::Collect::default();
            diags.extend(config::evaluate(&self.config, &self.inputs, &mut collect).1);
        }
        self.report(diags)
    }

    /// Reports diagnostics (sorted); an error among them stops the run.
    pub fn report(&self, mut diags: Diagnostics) -> Result<()> {
        diags.sort();
        if !diags.items.is_empty() {
            self.reporter
                .notice(Notice::Diagnostics(&diags, &self.config.sources));
        }
        if diags.has_errors() {
            return Err(Error::InvalidConfig);
        }
        Ok(())
    }

    /// Reports that structural problems of the configuration stop the run, without
    /// evaluating it (commands that need only its blocks).
    pub fn require_parsed(&self) -> Result<()> {
        self.report(self.diagnostics.clone())
    }

    /// The workspace this run works in: `-workspace`, else `SKYFORM_WORKSPACE`, else the
    /// one `workspace select` recorded, else `default`.
    pub fn workspace(&self) -> Result<String> {
        let name = match &self.workspace_flag {
            Some(w) => w.clone(),
            None => std::fs::read_to_string(self.dir.join(".skyform").join("workspace"))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "default".into()),
        };
        check_workspace_name(&name)?;
        Ok(name)
    }

    /// The backends of this run, built on first use and shared from then on.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry
            .get_or_init(|| {
                let places = Places {
                    agent_exe: self.agent_exe.clone(),
                    ..Places::for_dir(&self.dir, &self.config.workspace)
                };
                let inner = Arc::new(Registry::from_config(Some(&self.config), &places));
                for w in &inner.warnings {
                    self.reporter.notice(Notice::Warning(w.clone()));
                }
                // Managed jobs go to the controller, through its book in the state store.
                let store = self
                    .open_store(&self.wanted_backend())
                    .map(Arc::from)
                    .map_err(|e| e.to_string());
                let managed = crate::controller::handoff::ManagedProvider::new(
                    store,
                    self.dir.clone(),
                    self.config.workspace.clone(),
                    self.agent_exe.clone(),
                    inner.clone(),
                    crate::config::controller::declared(&self.config),
                )
                .with_vars(crate::controller::spawn::passed_vars(&self.inputs));
                let mut registry = (*inner).clone();
                registry
                    .providers
                    .insert(crate::controller::handoff::NAME, Arc::new(managed));
                Arc::new(registry)
            })
            .clone()
    }

    /// For tests and benchmarks: this engine with `registry` as its backends (in-process
    /// fakes, say) instead of those the configuration declares. The `managed` backend is not
    /// added to it: a controller driven through the library launches on `registry` itself.
    #[must_use]
    pub fn with_registry(self, registry: Arc<Registry>) -> Engine {
        let chosen = OnceLock::new();
        let _ = chosen.set(registry);
        Engine {
            registry: chosen,
            ..self
        }
    }

    /// A path under `.skyform/` of the configuration directory, for this workspace.
    pub fn workspace_path(&self, base: &str) -> PathBuf {
        self.dir
            .join(crate::state::workspace_key(base, &self.config.workspace))
    }
}

/// A workspace name: letters, digits, `-` and `_`, at most 64.
pub fn check_workspace_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::new(format!("{name:?} is not a workspace name"))
            .hint("use letters, digits, - and _ (at most 64)"))
    }
}

/// Parses addresses given on the command line or in options.
pub fn parse_addresses(list: &[String]) -> Result<Vec<Address>> {
    list.iter()
        .map(|s| {
            s.parse::<Address>().map_err(|e| {
                Error::new(e.to_string()).hint(
                    "addresses look like cluster.dev, job.train[0] or module.sweep.managed_job.run[\"a\"]",
                )
            })
        })
        .collect()
}

/// `~/` at the start of a path is the user's home.
pub fn expand_home(p: &str) -> PathBuf {
    match p.strip_prefix("~/") {
        Some(rest) => std::env::var_os("HOME")
            .map_or_else(|| PathBuf::from(p), |h| PathBuf::from(h).join(rest)),
        None => PathBuf::from(p),
    }
}
