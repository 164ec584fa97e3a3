//! Configuration: `*.sky.hcl` files → checked declarations → evaluated resource instances.
//!
//! - [`load`] reads a directory (and the modules it calls) with source spans and collects
//!   every structural problem.
//! - [`evaluate`] evaluates it in dependency order against input variables, handing each
//!   resource instance to a [`InstanceSink`] (the planner).

pub mod controller;
pub mod decl;
pub mod decode;
pub mod diag;
pub mod eval;
pub mod functions;
pub mod load;
pub mod schema;
pub mod value;
pub mod vars;

pub use diag::{Diagnostic, Diagnostics, Sources};
pub use eval::{Collect, Instance, InstanceSink, OutputValue};
pub use load::ModuleSource;
pub use vars::{InputValue, VarArgs};

use sha2::Digest;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where state lives (`skyform { state "…" { … } }`); the default is the local file.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StateBackend {
    pub kind: String,
    pub settings: BTreeMap<String, String>,
}

impl Default for StateBackend {
    fn default() -> Self {
        StateBackend {
            kind: "local".into(),
            settings: BTreeMap::new(),
        }
    }
}

/// One `infra` block with its literal settings.
#[derive(Debug, Clone, PartialEq)]
pub struct InfraConfig {
    pub kind: String,
    pub name: Option<String>,
    pub settings: serde_json::Map<String, serde_json::Value>,
}

/// A loaded configuration directory.
#[derive(Debug, Clone)]
pub struct Config {
    pub dir: PathBuf,
    pub root: ModuleSource,
    pub sources: Sources,
    /// sha256 over every file read (names and contents), for saved plans.
    pub digest: String,
    pub infra: Vec<InfraConfig>,
    pub state_backend: Option<StateBackend>,
    /// `skyform { catalog_dir = … }`.
    pub catalog_dir: Option<String>,
    /// The workspace, for `skyform.workspace` (the CLI sets it; `default` otherwise).
    pub workspace: String,
}

/// Reads the configuration in `dir`. Problems are returned, never thrown.
pub fn load(dir: &Path) -> (Config, Diagnostics) {
    let mut loader = load::Loader::new(dir);
    let mut root = loader.load_dir(dir);
    // Evaluation knows the root module by its real path (as it does the modules it calls).
    root.dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mut diags = std::mem::take(&mut loader.diags);
    let sources = loader.sources;
    let mut hasher = sha2::Sha256::new();
    for i in 0..sources.len() {
        hasher.update(sources.name(i).as_bytes());
        hasher.update([0]);
        hasher.update(sources.text(i).as_bytes());
        hasher.update([0]);
    }
    let digest = format!("sha256:{}", functions::hex(&hasher.finalize()));
    let infra = root
        .infra
        .iter()
        .map(|i| InfraConfig {
            kind: i.kind.clone(),
            name: i.name.clone(),
            settings: literal_settings(&i.body, &mut diags),
        })
        .collect();
    let state_backend = root.skyform.as_ref().and_then(|(_, b)| {
        let s = b.block("state")?;
        let settings = literal_settings(s, &mut diags)
            .into_iter()
            .map(|(k, v)| {
                let text = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, text)
            })
            .collect();
        Some(StateBackend {
            kind: s.label.clone().unwrap_or_else(|| "local".into()),
            settings,
        })
    });
    let catalog_dir = root.skyform.as_ref().and_then(|(_, b)| {
        literal_settings(b, &mut Diagnostics::default())
            .get("catalog_dir")
            .and_then(|v| v.as_str().map(String::from))
    });
    (
        Config {
            dir: dir.to_path_buf(),
            root,
            sources,
            digest,
            infra,
            state_backend,
            catalog_dir,
            workspace: "default".into(),
        },
        diags,
    )
}

fn literal_settings(
    body: &load::BodyDecl,
    diags: &mut Diagnostics,
) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    for (name, attr) in &body.attrs {
        match value::safe_evaluate(&attr.eval_expr, &hcl::eval::Context::new()) {
            Ok(v) => {
                out.insert(name.clone(), value::to_json(&v));
            }
            Err(_) => diags.push(
                Diagnostic::error(format!("{name} must be a literal value here"))
                    .at(attr.file, Some(attr.span.clone()))
                    .label("references are not allowed in this block")
                    .hint("write the value itself; infra and state settings are read before anything is evaluated"),
            ),
        }
    }
    out
}

/// Gathers variable values from flags, files and the environment.
pub fn inputs(
    config: &mut Config,
    args: &VarArgs,
    env: &BTreeMap<String, String>,
) -> (BTreeMap<String, InputValue>, Diagnostics) {
    let mut diags = Diagnostics::default();
    let values = vars::collect_inputs(&config.dir, args, env, &mut config.sources, &mut diags);
    (values, diags)
}

/// Evaluates the configuration; each resource instance goes to `resolver` in dependency order.
pub fn evaluate<R: InstanceSink>(
    config: &Config,
    inputs: &BTreeMap<String, InputValue>,
    resolver: &mut R,
) -> (BTreeMap<String, OutputValue>, Diagnostics) {
    evaluate_with(config, inputs, resolver, false)
}

/// Checks a configuration offline: as [`evaluate`], but a required variable without a value
/// is an unknown rather than an error (its value is only needed to plan).
pub fn validate(config: &Config, inputs: &BTreeMap<String, InputValue>) -> Diagnostics {
    evaluate_with(config, inputs, &mut Collect::default(), true).1
}

fn evaluate_with<R: InstanceSink>(
    config: &Config,
    inputs: &BTreeMap<String, InputValue>,
    resolver: &mut R,
    missing_vars_unknown: bool,
) -> (BTreeMap<String, OutputValue>, Diagnostics) {
    let mut diags = Diagnostics::default();
    let root = &config.root;
    let outputs = {
        let mut ev = eval::Evaluator {
            diags: &mut diags,
            resolver,
            root_dir: &root.dir,
            workspace: &config.workspace,
            missing_vars_unknown,
            tainted: Default::default(),
            controller: controller::Declared::of(config),
        };
        ev.eval_root(root, inputs)
    };
    (outputs, diags)
}

/// The environment as a sorted map (for `SKYFORM_VAR_*`).
pub fn process_env() -> BTreeMap<String, String> {
    std::env::vars().collect()
}
