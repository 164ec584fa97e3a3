//! One function per command.

use super::{
    Cli, Command, EXIT_CHANGES, EXIT_ERROR, EXIT_OK, LockFlags, OffersRequest, PlanFlags,
    StateCommand, VarFlags,
};
use crate::apply::{Applier, Event, Summary};
use crate::config::{self, Config, Diagnostics, InputValue, VarArgs};
use crate::model::Address;
use crate::plan::{self, Options, Plan};
use crate::providers::aws::{AwsProvider, AwsSettings};
use crate::providers::{Registry, local::LocalProvider};
use crate::render::{self, Style};
use crate::state::{self, LocalStore, LockInfo, State, StateStore};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A command's failure: the message, and what to do next.
struct Failure {
    message: String,
    hint: Option<String>,
}

impl Failure {
    fn new(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            hint: None,
        }
    }
    fn hint(mut self, h: impl Into<String>) -> Failure {
        self.hint = Some(h.into());
        self
    }
}

impl From<state::StateError> for Failure {
    fn from(e: state::StateError) -> Self {
        let hint = e.hint();
        Failure {
            message: e.to_string(),
            hint,
        }
    }
}

type Result<T> = std::result::Result<T, Failure>;

/// When the store refuses or fails a write, the state this run holds (which may record
/// resources that now exist) is kept in `.skyform/errored-state.json`, so nothing is lost.
fn keep_errored_state(ctx: &Ctx, state: &State, e: state::StateError) -> Failure {
    let path = ctx.dir.join(".skyform").join("errored-state.json");
    // Encrypted like the state it stands in for.
    let bytes = ctx
        .configured_codec()
        .map_err(|f| f.message)
        .and_then(|c| c.encode(state).map_err(|e| e.to_string()));
    let kept = bytes
        .and_then(|bytes| {
            std::fs::create_dir_all(ctx.dir.join(".skyform"))
                .map(|()| bytes)
                .map_err(|e| e.to_string())
        })
        .and_then(|bytes| LocalStore::write_atomic(&path, &bytes).map_err(|e| e.to_string()));
    let mut f = Failure::from(e);
    match kept {
        Ok(()) => {
            f.message
                .push_str("\nthis run's state is kept in .skyform/errored-state.json");
            if f.hint.is_none() {
                f.hint = Some(
                    "once the store works again: skyform state push .skyform/errored-state.json"
                        .into(),
                );
            }
        }
        Err(w) => f.message.push_str(&format!(
            "\nand keeping this run's state in {} failed too: {w}",
            path.display()
        )),
    }
    f
}

/// Copies the state from `from` to `to`, holding both locks.
async fn migrate_state(
    ctx: &Ctx,
    from: &config::StateBackend,
    to: &config::StateBackend,
    force_copy: bool,
) -> Result<()> {
    let (old_codec, new_codec) = (codec_for(from)?, codec_for(to)?);
    let flags = LockFlags::immediate();
    if same_place(from, to) {
        // Only the encryption changes: one store that reads the old way and writes the new.
        let codec = state::seal::Codec {
            accept_plaintext: old_codec.decrypt.is_none(),
            decrypt: old_codec.decrypt,
            encrypt: new_codec.encrypt,
        };
        let store = ctx.open_store_with(to, codec)?;
        let held = lock(store.as_ref(), "migrate-state", &flags).await?;
        let done = async {
            if let Some(state) = store.read().await? {
                store.write(&state).await?;
                let how = if to.settings.contains_key("encryption_key_env") {
                    "encrypted"
                } else {
                    "decrypted"
                };
                say!(
                    "The state at {} is {how} now (serial {}).",
                    store.describe(),
                    state.serial
                );
            }
            Ok(())
        }
        .await;
        held.release().await;
        return done;
    }
    let old = ctx.open_store_with(from, old_codec)?;
    // A plaintext state already in the new place is read, to be compared.
    let new = ctx.open_store_with(
        to,
        state::seal::Codec {
            accept_plaintext: true,
            ..new_codec
        },
    )?;
    let old_lock = lock(old.as_ref(), "migrate-state", &flags).await?;
    let new_lock = match lock(new.as_ref(), "migrate-state", &flags).await {
        Ok(l) => l,
        Err(e) => {
            old_lock.release().await;
            return Err(e);
        }
    };
    let copied = copy_state(old.as_ref(), new.as_ref(), force_copy).await;
    new_lock.release().await;
    old_lock.release().await;
    copied
}

/// The key the `state` block's `encryption_key_env` names, if any.
fn codec_for(b: &config::StateBackend) -> Result<state::seal::Codec> {
    match b.settings.get("encryption_key_env") {
        Some(var) => Ok(state::seal::Codec::new(Some(std::sync::Arc::new(
            state::seal::Sealer::from_env(var)?,
        )))),
        None => Ok(state::seal::Codec::default()),
    }
}

/// The same state object, perhaps encrypted differently.
fn same_place(a: &config::StateBackend, b: &config::StateBackend) -> bool {
    let strip = |x: &config::StateBackend| {
        let mut x = x.clone();
        x.settings.remove("encryption_key_env");
        x
    };
    strip(a) == strip(b)
}

async fn copy_state(old: &dyn StateStore, new: &dyn StateStore, force_copy: bool) -> Result<()> {
    let Some(state) = old.read().await? else {
        say!(
            "The old backend {} holds no state: nothing to migrate.",
            old.describe()
        );
        return Ok(());
    };
    if let Some(there) = new.read().await?
        && there != state
        && !force_copy
    {
        return Err(Failure::new(format!(
            "{} already holds a state (lineage {}, serial {}); not overwriting it with the one from {} (lineage {}, serial {})",
            new.describe(),
            there.lineage,
            there.serial,
            old.describe(),
            state.lineage,
            state.serial
        ))
        .hint("skyform init -migrate-state -force-copy overwrites it; -reconfigure keeps it and leaves the old one"));
    }
    new.write(&state).await?;
    say!(
        "Copied the state (serial {}, {} resources) from {} to {}.",
        state.serial,
        state.resources.len(),
        old.describe(),
        new.describe()
    );
    Ok(())
}

/// A `fmt` failure (a file that cannot be read or written).
#[derive(Debug)]
pub struct FmtFailure(pub String);

struct Ctx {
    dir: PathBuf,
    style: Style,
    tty_in: bool,
    /// `-workspace` / `SKYFORM_WORKSPACE`.
    workspace_flag: Option<String>,
}

impl Ctx {
    /// The state store the configuration's `skyform { state … }` block names (the local file
    /// `.skyform/state.json` by default). When the block changed since `init` recorded it and
    /// the old backend holds a state, this refuses: the state must be migrated first.
    async fn store(&self) -> Result<Box<dyn StateStore>> {
        let (config, _) = config::load(&self.dir);
        let wanted = config.state_backend.clone().unwrap_or_default();
        let recorded = self.recorded_backend();
        let changed = recorded != wanted;
        let left_behind = if changed {
            let old = self.open_store(&recorded)?;
            old.read().await.map_err(|e| {
                Failure::new(format!(
                    "the state backend changed since init, and the state may still be in {}, which cannot be read: {e}",
                    old.describe()
                ))
                .hint("if the state is already where the configuration points (the same bucket at another endpoint, say): skyform init -reconfigure")
            })?
        } else {
            None
        };
        if left_behind.is_some() {
            return Err(Failure::new(format!(
                "the state backend changed since init: the state is in {} but the configuration names {}",
                self.open_store(&recorded)?.describe(),
                self.open_store(&wanted)?.describe()
            ))
            .hint("skyform init -migrate-state copies it over; skyform init -reconfigure uses the new backend as it is"));
        }
        if changed {
            // Nothing was left behind: this is the backend now, so a later change of the
            // block is noticed even if `init` never ran.
            self.record_backend(&wanted)?;
        }
        self.open_store(&wanted)
    }

    /// The workspace this run works in: `-workspace`, else `SKYFORM_WORKSPACE`, else the
    /// one `workspace select` recorded, else `default`.
    fn workspace(&self) -> Result<String> {
        let name = match &self.workspace_flag {
            Some(w) => w.clone(),
            None => std::fs::read_to_string(self.dir.join(".skyform").join("workspace"))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "default".into()),
        };
        check_workspace_name(&name)?;
        Ok(name)
    }

    /// The configuration, with the workspace set for `skyform.workspace`.
    fn load_config(&self) -> Result<(Config, config::Diagnostics)> {
        let (mut config, diags) = config::load(&self.dir);
        config.workspace = self.workspace()?;
        Ok((config, diags))
    }

    /// The codec the configuration's `state` block asks for.
    fn configured_codec(&self) -> Result<state::seal::Codec> {
        let (config, _) = config::load(&self.dir);
        codec_for(&config.state_backend.unwrap_or_default())
    }

    fn open_store(&self, b: &config::StateBackend) -> Result<Box<dyn StateStore>> {
        self.open_store_with(b, codec_for(b)?)
    }

    fn open_store_with(
        &self,
        b: &config::StateBackend,
        codec: state::seal::Codec,
    ) -> Result<Box<dyn StateStore>> {
        self.open_store_in(b, codec, &self.workspace()?)
    }

    fn open_store_in(
        &self,
        b: &config::StateBackend,
        codec: state::seal::Codec,
        workspace: &str,
    ) -> Result<Box<dyn StateStore>> {
        if b.kind == "local" {
            let base = b
                .settings
                .get("path")
                .map_or(".skyform/state.json", String::as_str);
            let path = self.dir.join(state::workspace_key(base, workspace));
            return Ok(Box::new(LocalStore::new(path).with_codec(codec)));
        }
        let mut settings = b.settings.clone();
        let key = settings
            .get("key")
            .map_or("skyform/state.json", String::as_str);
        let key = state::workspace_key(key.trim_start_matches('/'), workspace);
        settings.insert("key".into(), key);
        state::object::open(&b.kind, &settings)
            .map(|s| Box::new(s.with_codec(codec)) as Box<dyn StateStore>)
            .map_err(|e| {
                Failure::new(format!("cannot open the state backend: {e}")).hint(
                    "fix the `skyform { state … }` block; docs/state.md lists each backend's settings",
                )
            })
    }

    /// The backend `init` last set up (`.skyform/backend.json`); the local file before any.
    fn recorded_backend(&self) -> config::StateBackend {
        std::fs::read(self.dir.join(".skyform").join("backend.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn record_backend(&self, b: &config::StateBackend) -> Result<()> {
        let dir = self.dir.join(".skyform");
        std::fs::create_dir_all(&dir)
            .map_err(|e| Failure::new(format!("cannot create {}: {e}", dir.display())))?;
        let bytes = serde_json::to_vec_pretty(b).unwrap_or_default();
        LocalStore::write_atomic(&dir.join("backend.json"), &bytes)?;
        Ok(())
    }

    /// The backends of this build. `local` offers placements when the configuration declares
    /// `infra "local"` or no infra at all (the embedded default).
    fn registry(&self, config: Option<&Config>) -> Arc<Registry> {
        let mut providers: BTreeMap<&'static str, Arc<dyn crate::providers::Provider>> =
            BTreeMap::new();
        let settings = config
            .and_then(|c| c.infra.iter().find(|i| i.kind == "local"))
            .map(|i| &i.settings);
        // Each workspace has its own sandboxes, as it has its own state.
        let root = self.dir.join(state::workspace_key(
            ".skyform/local",
            &self.workspace().unwrap_or_else(|_| "default".into()),
        ));
        let mut local = LocalProvider::new(root, settings);
        // What already runs here stays manageable; new placements only where allowed.
        local.offer =
            config.is_none_or(|c| c.infra.is_empty() || c.infra.iter().any(|i| i.kind == "local"));
        providers.insert("local", Arc::new(local));
        // AWS is always there, so resources in state stay manageable; clients are made lazily.
        let aws = config
            .and_then(|c| c.infra.iter().find(|i| i.kind == "aws"))
            .map(|i| &i.settings);
        providers.insert(
            "aws",
            Arc::new(AwsProvider::new(
                AwsSettings::from_infra(aws, &expand_home("~/")),
                expand_home("~/.skyform/ssh"),
            )),
        );
        let home = expand_home("~/");
        let mut pools = Vec::new();
        for i in config
            .iter()
            .flat_map(|c| &c.infra)
            .filter(|i| i.kind == "ssh")
        {
            let name = i.name.clone().unwrap_or_default();
            match crate::providers::ssh::Pool::from_infra(&name, &i.settings, &home) {
                Ok(p) => pools.push(p),
                Err(e) => eprintln!("warning: infra \"ssh\" \"{name}\": {e}; the pool is left out"),
            }
        }
        providers.insert(
            "ssh",
            Arc::new(crate::providers::ssh::SshProvider::new(pools)),
        );
        let contexts = config
            .iter()
            .flat_map(|c| &c.infra)
            .filter(|i| i.kind == "kubernetes")
            .map(|i| {
                let name = i.name.clone().unwrap_or_default();
                crate::providers::kubernetes::Context::from_infra(&name, &i.settings, &home)
            })
            .collect();
        providers.insert(
            "k8s",
            Arc::new(crate::providers::kubernetes::KubeProvider::new(contexts)),
        );
        Arc::new(Registry { providers })
    }
}

fn print_failure(f: &Failure, style: &Style) {
    // An empty message means the diagnostics were printed already.
    if !f.message.is_empty() {
        eprintln!("{} {}", style.red("error:"), f.message);
    }
    if let Some(h) = &f.hint {
        eprintln!("hint: {h}");
    }
}

pub async fn run(cli: Cli) -> i32 {
    // -chdir works as in Terraform: every relative path is taken from DIR.
    let color = !cli.no_color
        && !env_flag("SKYFORM_NO_COLOR")
        && std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none();
    if let Some(d) = &cli.chdir
        && let Err(e) = std::env::set_current_dir(d)
    {
        print_failure(
            &Failure::new(format!("cannot change to {}: {e}", d.display()))
                .hint("-chdir takes an existing directory"),
            &Style { color },
        );
        return EXIT_ERROR;
    }
    // Absolute, so paths recorded in state (sandboxes) do not depend on where skyform runs.
    let base = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let style = Style { color };
    let dir_of = |d: &Option<PathBuf>| -> PathBuf {
        d.as_ref().map_or_else(|| base.clone(), |d| base.join(d))
    };
    let workspace_flag = cli.workspace.clone();
    let ctx = |dir: PathBuf| Ctx {
        dir,
        style,
        tty_in: std::io::stdin().is_terminal(),
        workspace_flag: workspace_flag.clone(),
    };
    let result = match cli.command {
        Command::Init {
            dir,
            migrate_state,
            reconfigure,
            force_copy,
        } => {
            let how = if migrate_state {
                BackendChange::Migrate { force_copy }
            } else if reconfigure {
                BackendChange::Reconfigure
            } else {
                BackendChange::Refuse
            };
            init(&ctx(dir_of(&dir)), how).await
        }
        Command::Validate { dir, json, vars } => validate(&ctx(dir_of(&dir)), json, &vars),
        Command::Fmt { dir, check, diff } => {
            super::fmt::run(&dir_of(&dir), check, diff).map_err(|e| Failure::new(e.0))
        }
        Command::Plan {
            dir,
            flags,
            out,
            detailed_exitcode,
            json,
            format,
            destroy,
        } => {
            plan_cmd(
                &ctx(dir_of(&dir)),
                &flags,
                out.as_deref(),
                detailed_exitcode || env_flag("SKYFORM_DETAILED_EXITCODE"),
                super::PlanFormat::pick(format, json),
                destroy,
            )
            .await
        }
        Command::Apply {
            planfile,
            flags,
            auto_approve,
            input,
            run,
            wait,
        } => {
            // `apply DIR` is accepted as well as `apply PLANFILE`.
            let (dir, planfile) = match planfile {
                Some(p) if base.join(&p).is_dir() => (base.join(p), None),
                other => (base.clone(), other.map(|p| base.join(p))),
            };
            apply_cmd(
                &ctx(dir),
                planfile.as_deref(),
                &flags,
                auto_approve,
                input,
                &run,
                wait,
                false,
            )
            .await
        }
        Command::Destroy {
            dir,
            auto_approve,
            input,
            vars,
            lock,
            run,
        } => {
            let flags = PlanFlags {
                vars,
                target: Vec::new(),
                replace: Vec::new(),
                refresh: true,
                refresh_only: false,
                lock,
            };
            apply_cmd(
                &ctx(dir_of(&dir)),
                None,
                &flags,
                auto_approve,
                input,
                &run,
                false,
                true,
            )
            .await
        }
        Command::Show {
            planfile,
            json,
            format,
        } => {
            show(
                &ctx(base.clone()),
                planfile.map(|p| base.join(p)).as_deref(),
                json,
                super::PlanFormat::pick(format, json),
            )
            .await
        }
        Command::Output { name, json, raw } => {
            output(&ctx(base.clone()), name.as_deref(), json, raw).await
        }
        Command::State { command } => state_cmd(&ctx(base.clone()), command).await,
        Command::Workspace { command } => workspace_cmd(&ctx(base.clone()), command).await,
        Command::ForceUnlock { lock_id, force } => {
            force_unlock(&ctx(base.clone()), &lock_id, force).await
        }
        Command::Status { json } => status(&ctx(base.clone()), json).await,
        Command::Ssh { cluster, command } => shell(&ctx(base.clone()), &cluster, &command).await,
        Command::Stop { cluster, lock } => power(&ctx(base.clone()), &cluster, false, &lock).await,
        Command::Start { cluster, lock } => power(&ctx(base.clone()), &cluster, true, &lock).await,
        Command::Logs { address, follow } => logs(&ctx(base.clone()), &address, follow).await,
        Command::Graph { dir, format } => graph(&ctx(dir_of(&dir)), &format),
        Command::Offers {
            request,
            all,
            json,
            catalog_dir,
        } => offers(&ctx(base.clone()), &request, all, json, catalog_dir).await,
        Command::Catalog {
            command,
            catalog_dir,
        } => match command {
            super::CatalogCommand::List => catalog_list(&ctx(base.clone()), catalog_dir),
            super::CatalogCommand::Update {
                url,
                clouds,
                timeout,
            } => catalog_update(&ctx(base.clone()), catalog_dir, url, clouds, timeout).await,
        },
        Command::Agent { .. } | Command::Link { .. } | Command::Runtime { .. } => Ok(EXIT_OK),
    };
    match result {
        Ok(code) => code,
        Err(f) => {
            print_failure(&f, &style);
            EXIT_ERROR
        }
    }
}

/// A boolean environment setting: 1, true, yes or on (any case) mean yes.
fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

fn var_args(v: &VarFlags) -> VarArgs {
    VarArgs {
        vars: v.vars.clone(),
        var_files: v.var_files.clone(),
    }
}

/// Loads config and variables; prints diagnostics and fails if there are errors.
fn load(ctx: &Ctx, vars: &VarFlags) -> Result<(Config, BTreeMap<String, InputValue>)> {
    let (mut config, mut diags) = ctx.load_config()?;
    let (inputs, vdiags) = config::inputs(&mut config, &var_args(vars), &config::process_env());
    diags.extend(vdiags);
    if diags.has_errors() {
        // Evaluate anyway, so that every problem is reported in one pass.
        let mut collect = config::Collect::default();
        diags.extend(config::evaluate(&config, &inputs, &mut collect).1);
    }
    report(&config, &mut diags, ctx.style)?;
    Ok((config, inputs))
}

fn report(config: &Config, diags: &mut Diagnostics, style: Style) -> Result<()> {
    diags.sort();
    if !diags.items.is_empty() {
        eprint!("{}", diags.render(&config.sources, style.color));
    }
    if diags.has_errors() {
        return Err(Failure {
            message: String::new(),
            hint: None,
        });
    }
    Ok(())
}

/// What `init` does when the `state` block changed since the last init.
#[derive(Debug, Clone, Copy)]
enum BackendChange {
    Refuse,
    Reconfigure,
    Migrate { force_copy: bool },
}

async fn init(ctx: &Ctx, how: BackendChange) -> Result<i32> {
    let (config, mut diags) = ctx.load_config()?;
    report(&config, &mut diags, ctx.style)?;
    let wanted = config.state_backend.clone().unwrap_or_default();
    let recorded = ctx.recorded_backend();
    if recorded != wanted {
        match how {
            BackendChange::Migrate { force_copy } => {
                migrate_state(ctx, &recorded, &wanted, force_copy).await?;
                ctx.record_backend(&wanted)?;
            }
            BackendChange::Reconfigure => ctx.record_backend(&wanted)?,
            // `ctx.store()` below refuses while the old backend holds a state, and records
            // the new one otherwise.
            BackendChange::Refuse => {}
        }
    }
    let store = ctx.store().await?;
    if store.read().await?.is_none() {
        store.write(&State::new()).await?;
        say!("Created the state at {}.", store.describe());
    } else {
        say!("The state at {} is ready.", store.describe());
    }
    say!("Infra:");
    let mut kinds: Vec<String> = config.infra.iter().map(|i| i.kind.clone()).collect();
    if kinds.is_empty() {
        kinds.push("local".into());
    }
    // Each kind once, in the order declared (several ssh pools or contexts are one backend).
    let mut seen = std::collections::BTreeSet::new();
    kinds.retain(|k| seen.insert(k.clone()));
    let registry = ctx.registry(Some(&config));
    let mut hints = Vec::new();
    for k in kinds {
        let backend = if k == "kubernetes" { "k8s" } else { k.as_str() };
        let status = match (k.as_str(), registry.get(backend)) {
            ("local", _) => "ready (this machine)".to_string(),
            (_, Some(p)) => match p.check().await {
                Ok(s) => s,
                Err(e) => {
                    hints.push(match k.as_str() {
                        "aws" => format!(
                            "{k}: plans work without credentials, apply needs them (AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; see docs/{k}.md)"
                        ),
                        _ => format!("{k}: check the infra \"{k}\" blocks (see docs/{k}.md)"),
                    });
                    e.message
                }
            },
            ("gcp" | "lambda", None) => {
                "plans only: prices from the catalogs; no backend in this build yet".to_string()
            }
            _ => "not available in this build yet".to_string(),
        };
        say!("  {k:<12} {status}");
    }
    for h in hints {
        say!("\nhint: {h}");
    }
    say!("\nhint: run `skyform plan` to see what would be created");
    Ok(EXIT_OK)
}

fn validate(ctx: &Ctx, json: bool, vars: &VarFlags) -> Result<i32> {
    let (mut config, mut diags) = ctx.load_config()?;
    let (inputs, vdiags) = config::inputs(&mut config, &var_args(vars), &config::process_env());
    diags.extend(vdiags);
    diags.extend(config::validate(&config, &inputs));
    diags.sort();
    if json {
        say!(
            "{}",
            serde_json::to_string_pretty(&diags.to_json(&config.sources)).unwrap_or_default()
        );
        return Ok(if diags.has_errors() {
            EXIT_ERROR
        } else {
            EXIT_OK
        });
    }
    if !diags.items.is_empty() {
        eprint!("{}", diags.render(&config.sources, ctx.style.color));
    }
    if diags.has_errors() {
        return Ok(EXIT_ERROR);
    }
    say!("{}", ctx.style.green("The configuration is valid."));
    Ok(EXIT_OK)
}

fn parse_addrs(list: &[String]) -> Result<Vec<Address>> {
    list.iter()
        .map(|s| s.parse::<Address>().map_err(|e| Failure::new(e.to_string()).hint("addresses look like cluster.dev, job.train[0] or module.sweep.managed_job.run[\"a\"]")))
        .collect()
}

/// Holds the state lock for the duration of a command (nothing with `-lock=false`).
struct Locked<'a> {
    store: &'a dyn StateStore,
    info: Option<LockInfo>,
}

impl Locked<'_> {
    async fn release(self) {
        if let Some(info) = &self.info {
            let _ = self.store.unlock(&info.id).await;
        }
    }
}

async fn lock<'a>(store: &'a dyn StateStore, op: &str, flags: &LockFlags) -> Result<Locked<'a>> {
    if !flags.lock {
        // Writes stay conditional on object stores: an unlocked run still cannot overwrite
        // a newer state there.
        return Ok(Locked { store, info: None });
    }
    let info = LockInfo::new(op);
    state::lock_with_timeout(store, &info, flags.lock_timeout).await?;
    Ok(Locked {
        store,
        info: Some(info),
    })
}

/// Refresh + plan (the caller holds the lock).
async fn make_plan(
    ctx: &Ctx,
    config: &Config,
    inputs: &BTreeMap<String, InputValue>,
    state: &mut State,
    flags: &PlanFlags,
    destroy: bool,
) -> Result<Plan> {
    if flags.refresh_only && (destroy || !flags.refresh) {
        return Err(Failure::new(
            "-refresh-only cannot be combined with -destroy or -refresh=false",
        ));
    }
    let before = state.clone();
    let registry = ctx.registry(Some(config));
    let mut options = Options {
        destroy,
        targets: parse_addrs(&flags.target)?,
        replace: parse_addrs(&flags.replace)?,
        ..Options::default()
    };
    if flags.refresh && !state.resources.is_empty() {
        let t = std::time::Instant::now();
        let n = state.resources.len();
        let r = plan::refresh::refresh(state, &registry, 64).await;
        eprintln!(
            "Refreshing {n} resource{}... done in {:.1}s",
            if n == 1 { "" } else { "s" },
            t.elapsed().as_secs_f64()
        );
        options.degraded = r.degraded;
        options.drift = r.drift;
    }
    // Destroying needs no placements (and so no catalogs).
    let mut offerings = if destroy {
        Vec::new()
    } else {
        catalog_offerings(ctx, config)?
    };
    for p in registry.providers.values() {
        match p.survey().await {
            Ok(o) => {
                offerings.extend(o.offerings);
                for why in o.unavailable {
                    eprintln!("warning: {why}; it offers nothing in this plan");
                }
            }
            Err(e) => eprintln!("warning: {} offers nothing: {e}", p.name()),
        }
    }
    let mut import_diags = config::Diagnostics::default();
    let mut imported: Vec<(Address, serde_json::Value)> = Vec::new();
    if !destroy && !flags.refresh_only {
        for i in &config.root.imports {
            if state.resources.contains_key(&i.to) {
                continue; // Already in state: nothing to import.
            }
            match import_one(&registry, &i.to, &i.id).await {
                Ok(found) => {
                    // One cluster in the world is one resource in state: destroying one
                    // address would take the other's machines.
                    let holder = state
                        .resources
                        .iter()
                        .filter(|(a, _)| a.kind == crate::model::Kind::Cluster)
                        .map(|(a, r)| (a, &r.private))
                        .chain(imported.iter().map(|(a, p)| (a, p)))
                        .find(|(_, p)| same_cluster(p, &found.private))
                        .map(|(a, _)| a.clone());
                    if let Some(other) = holder {
                        import_diags.push(
                            config::Diagnostic::error(format!(
                                "cannot import {}: {} is that cluster already",
                                i.to, other
                            ))
                            .at(i.file, Some(i.span.clone()))
                            .label("this import")
                            .hint(format!("remove this import block, or `skyform state mv {other} {}`", i.to)),
                        );
                        continue;
                    }
                    imported.push((i.to.clone(), found.private.clone()));
                    options
                        .imports
                        .insert(i.to.clone(), (i.id.clone(), found.computed));
                }
                Err(e) => import_diags.push(
                    config::Diagnostic::error(format!("cannot import {}: {e}", i.to))
                        .at(i.file, Some(i.span.clone()))
                        .label("this import")
                        .hint("check the id: local:SANDBOX_DIR, ssh:POOL/TOKEN or aws:REGION/TOKEN (docs/language.md#import)"),
                ),
            }
        }
    }
    // Clusters a backend holds under this state's lineage that state does not know (the
    // state lost them: restored from an older copy, `state rm`): adopted through an
    // implicit import, never made a second time.
    let mut adopting: Vec<(Address, String)> = Vec::new();
    if !destroy && !flags.refresh_only && !state.lineage.is_empty() {
        for (name, p) in &registry.providers {
            let held: Vec<&crate::state::ResourceState> = state
                .resources
                .values()
                .filter(|r| r.provider == *name)
                .collect();
            let found = match p.find_own(&state.lineage, &held).await {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("warning: cannot look for {name} clusters of this state: {e}");
                    continue;
                }
            };
            for (addr, id) in found {
                if state.resources.contains_key(&addr) || options.imports.contains_key(&addr) {
                    continue;
                }
                let id = format!("{name}:{id}");
                match import_one(&registry, &addr, &id).await {
                    Ok(found) => {
                        options
                            .imports
                            .insert(addr.clone(), (id.clone(), found.computed));
                        adopting.push((addr, id));
                    }
                    Err(e) => eprintln!(
                        "warning: {addr} has a cluster at {id} that cannot be adopted: {e}"
                    ),
                }
            }
        }
    }
    let (plan, mut diags) = plan::plan(config, inputs, state, &offerings, &options);
    for (addr, id) in &adopting {
        if !plan.changes.iter().any(|c| &c.address == addr) {
            eprintln!(
                "warning: {id} was made by this state for {addr}, which the configuration no longer declares; delete it by hand, or declare {addr} again to adopt it"
            );
        }
    }
    for i in &config.root.imports {
        if options.imports.contains_key(&i.to) && !plan.changes.iter().any(|c| c.address == i.to) {
            diags.push(
                config::Diagnostic::error(format!(
                    "import to {}: the configuration declares no such cluster",
                    i.to
                ))
                .at(i.file, Some(i.span.clone()))
                .label("imported here")
                .hint(format!(
                    "declare {} so skyform knows what it is, then plan again",
                    i.to
                )),
            );
        }
    }
    diags.extend(import_diags);
    report(config, &mut diags, ctx.style)?;
    if flags.refresh_only {
        // What apply would record: the state's changes, with refresh's account of why for
        // the resources that changed (a cluster already recorded as broken is no news).
        let changes = plan::refresh::changes(&before, state);
        let changed: std::collections::BTreeSet<&str> = changes
            .iter()
            .filter_map(|l| l.split_once(": ").map(|(a, _)| a))
            .collect();
        let mut p = plan.into_refresh_only();
        p.drift
            .retain(|l| l.split_once(": ").is_some_and(|(a, _)| changed.contains(a)));
        for line in &changes {
            if !p.drift.contains(line) {
                p.drift.push(line.clone());
            }
        }
        return Ok(p);
    }
    Ok(plan)
}

async fn plan_cmd(
    ctx: &Ctx,
    flags: &PlanFlags,
    out: Option<&Path>,
    detailed: bool,
    format: super::PlanFormat,
    destroy: bool,
) -> Result<i32> {
    let json = format != super::PlanFormat::Human;
    let (config, inputs) = load(ctx, &flags.vars)?;
    let store = ctx.store().await?;
    let guard = lock(store.as_ref(), "plan", &flags.lock).await?;
    let result = async {
        let mut state = store.read().await?.unwrap_or_default();
        make_plan(ctx, &config, &inputs, &mut state, flags, destroy).await
    }
    .await;
    guard.release().await;
    let plan = result?;
    print_plan(ctx, &plan, format);
    if let Some(path) = out {
        let bytes = serde_json::to_vec(&plan).map_err(|e| Failure::new(e.to_string()))?;
        LocalStore::write_atomic(path, &bytes)?;
        if !json {
            say!(
                "\nSaved the plan to {}. Apply exactly it with `skyform apply {}`.",
                path.display(),
                path.display()
            );
        }
    } else if !json && plan.has_changes() {
        say!(
            "\nhint: save this plan with -out plan.json and apply exactly it with `skyform apply plan.json`"
        );
    }
    Ok(if detailed && plan.has_changes() {
        EXIT_CHANGES
    } else {
        EXIT_OK
    })
}

fn confirm(ctx: &Ctx, what: &str, auto_approve: bool, input: bool) -> Result<bool> {
    if auto_approve || env_flag("SKYFORM_AUTO_APPROVE") {
        return Ok(true);
    }
    if !input || !ctx.tty_in {
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
        return Err(Failure::new(format!("approval is needed to {what}, and {why}")).hint(hint));
    }
    say_inline!("\nDo you want to {what}? Only 'yes' will be accepted: ");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    Ok(line.trim() == "yes")
}

#[allow(clippy::too_many_arguments)]
async fn apply_cmd(
    ctx: &Ctx,
    planfile: Option<&Path>,
    flags: &PlanFlags,
    auto_approve: bool,
    input: bool,
    run: &super::RunFlags,
    wait: bool,
    destroy: bool,
) -> Result<i32> {
    let saved: Option<Plan> = match planfile {
        Some(p) => {
            let bytes = std::fs::read(p)
                .map_err(|e| Failure::new(format!("cannot read plan {}: {e}", p.display())))?;
            Some(serde_json::from_slice(&bytes).map_err(|e| {
                Failure::new(format!("{} is not a skyform plan: {e}", p.display()))
                    .hint("make one with skyform plan -out FILE")
            })?)
        }
        None => None,
    };
    crate::runtime::proc::ignore_sigpipe();
    let (config, mut inputs) = load(ctx, &flags.vars)?;
    let store = ctx.store().await?;
    let guard = lock(
        store.as_ref(),
        if destroy { "destroy" } else { "apply" },
        &flags.lock,
    )
    .await?;
    let result = apply_locked(
        ctx,
        &config,
        &mut inputs,
        store.as_ref(),
        saved,
        flags,
        auto_approve,
        input,
        run,
        wait,
        destroy,
    )
    .await;
    guard.release().await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn apply_locked(
    ctx: &Ctx,
    config: &Config,
    inputs: &mut BTreeMap<String, InputValue>,
    store: &dyn StateStore,
    saved: Option<Plan>,
    flags: &PlanFlags,
    auto_approve: bool,
    input: bool,
    run: &super::RunFlags,
    wait: bool,
    destroy: bool,
) -> Result<i32> {
    if run.json && wait {
        return Err(Failure::new("apply -json does not wait for jobs (-wait)")
            .hint("follow them with `skyform status -json` after the apply"));
    }
    let stored = store.read().await?;
    let fresh = stored.is_none();
    let stored_before = stored.clone();
    let mut state = stored.unwrap_or_default();
    if let Some(want) = run.check_serial
        && state.serial != want
    {
        return Err(Failure::new(format!(
            "the state's serial is {}, not {want} (-check-serial): it changed since you looked",
            state.serial
        ))
        .hint("look at what changed with `skyform show`, then plan again"));
    }
    let plan = match saved {
        Some(p) => {
            if p.skyform_version != env!("CARGO_PKG_VERSION") {
                return Err(Failure::new(format!(
                    "the plan was made by skyform {}, this is {}",
                    p.skyform_version,
                    env!("CARGO_PKG_VERSION")
                ))
                .hint("make a new plan with this version"));
            }
            if p.config_digest != config.digest {
                return Err(
                    Failure::new("the configuration changed since the plan was made")
                        .hint("make a new plan: skyform plan -out FILE"),
                );
            }
            let state_moved = if fresh {
                p.serial != 0
            } else {
                p.lineage != state.lineage || p.serial != state.serial
            };
            if state_moved {
                return Err(Failure::new(format!(
                    "stale plan: it was made against state serial {} of lineage {}, the state is now serial {} of lineage {}",
                    p.serial, p.lineage, state.serial, state.lineage
                ))
                .hint("make a new plan: skyform plan -out FILE"));
            }
            if fresh {
                state.lineage = p.lineage.clone();
            }
            // The plan's variables are the ones used from here on.
            *inputs = p
                .variables
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        InputValue {
                            raw: config::vars::RawValue::Parsed(config::eval::json_to_hcl(v)),
                            source: config::vars::ValueSource::Flag,
                            location: None,
                        },
                    )
                })
                .collect();
            // Refresh so apply works from what is true now.
            let registry = ctx.registry(Some(config));
            plan::refresh::refresh(&mut state, &registry, 64).await;
            if p.refresh_only
                && let Some(before) = &stored_before
            {
                // What the review saw is what gets recorded: anything else moved since.
                let unseen: Vec<String> = plan::refresh::changes(before, &state)
                    .into_iter()
                    .filter(|l| !p.drift.contains(l))
                    .collect();
                if !unseen.is_empty() {
                    return Err(Failure::new(format!(
                        "more changed outside skyform since the refresh-only plan was made:\n  {}",
                        unseen.join("\n  ")
                    ))
                    .hint("make a new plan: skyform plan -refresh-only -out FILE"));
                }
            }
            p
        }
        None => {
            if run.json && !(auto_approve || env_flag("SKYFORM_AUTO_APPROVE")) {
                return Err(Failure::new(
                    "apply -json cannot ask for approval: its output is for machines",
                )
                .hint("pass -auto-approve, or apply a saved plan: skyform plan -out plan.json && skyform apply -json plan.json"));
            }
            let p = make_plan(ctx, config, inputs, &mut state, flags, destroy).await?;
            if !run.json {
                say_inline!("{}", render::human::plan(&p, &ctx.style));
            }
            if !p.has_changes() {
                // Nothing to do, but what refresh learned (resources gone) is kept.
                if !fresh
                    && stored_before
                        .as_ref()
                        .is_some_and(|b| b.resources != state.resources)
                {
                    state.serial += 1;
                    store.write(&state).await?;
                }
                if run.json {
                    emit_summary(&Summary::default(), &p, &state);
                }
                return Ok(EXIT_OK);
            }
            let what = if destroy {
                "destroy these resources"
            } else if p.refresh_only {
                "record these changes in the state"
            } else {
                "perform these actions"
            };
            if !confirm(ctx, what, auto_approve, input)? {
                say!("Apply cancelled.");
                return Ok(EXIT_ERROR);
            }
            if !run.json {
                say!();
            }
            p
        }
    };
    if plan.refresh_only {
        // Nothing to do but record what refresh found.
        state.serial += 1;
        store.write(&state).await?;
        if run.json {
            emit_summary(&Summary::default(), &plan, &state);
        } else {
            say!(
                "{}",
                ctx.style.green(&format!(
                    "Apply complete! The state records what changed outside skyform ({} change{}); no resource was touched.",
                    plan.drift.len(),
                    if plan.drift.len() == 1 { "" } else { "s" }
                ))
            );
        }
        return Ok(EXIT_OK);
    }
    let imported = apply_imports(ctx, config, &plan, &mut state, store, run.json).await?;
    let registry = ctx.registry(Some(config));
    let (tx, rx) = tokio::sync::watch::channel(false);
    let ctrl_c = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!(
                "\nInterrupt received: finishing the operations in flight, then stopping. Interrupt again to abandon them."
            );
            let _ = tx.send(true);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    let progress = if run.json {
        emit_planned(&plan);
        super::progress::Progress::json(ctx.style)
    } else {
        super::progress::Progress::new(ctx.style, std::io::stdout().is_terminal())
    };
    let on_event = |e: &Event| progress.event(e);
    let resolve = |state: &State| -> BTreeMap<Address, crate::model::Spec> {
        let (p, _) = plan::plan(config, inputs, state, &[], &Options::default());
        p.changes
            .into_iter()
            .filter_map(|c| c.after.map(|a| (c.address, a)))
            .collect()
    };
    let applier = Applier {
        resolve: Some(&resolve),
        registry: registry.clone(),
        store,
        root: config
            .dir
            .canonicalize()
            .unwrap_or_else(|_| config.dir.clone()),
        parallelism: run.parallelism.max(1),
        on_event: &on_event,
        interrupt: rx,
        failover: run.failover(),
    };
    let mut summary = match applier.apply(&plan, &mut state).await {
        Ok(s) => s,
        Err(crate::apply::ApplyError::State(e)) => return Err(keep_errored_state(ctx, &state, e)),
    };
    ctrl_c.abort();
    summary.imported = imported;
    // Outputs, evaluated against the state as it is now (none once everything is destroyed).
    if destroy || plan.destroy {
        state.outputs.clear();
    } else {
        let outputs = outputs_now(config, inputs, &state);
        crate::apply::set_outputs(&mut state, &outputs);
    }
    state.serial += 1;
    if let Err(e) = store.write(&state).await {
        return Err(keep_errored_state(ctx, &state, e));
    }
    write_ssh_config(ctx, &state, &registry);
    if run.json {
        emit_summary(&summary, &plan, &state);
        return Ok(if summary.ok() { EXIT_OK } else { EXIT_ERROR });
    }
    print_summary(&summary, &plan, &state, destroy, &ctx.style);
    if !summary.ok() {
        return Ok(EXIT_ERROR);
    }
    if wait {
        return wait_for_jobs(ctx, config, &plan).await;
    }
    if !destroy
        && plan
            .changes
            .iter()
            .any(|c| c.address.kind != crate::model::Kind::Cluster && c.action.is_change())
    {
        say!("\nhint: follow the jobs with `skyform status` and `skyform logs ADDRESS -f`");
    }
    Ok(EXIT_OK)
}

fn outputs_now(
    config: &Config,
    inputs: &BTreeMap<String, InputValue>,
    state: &State,
) -> BTreeMap<String, config::OutputValue> {
    let (p, _) = plan::plan(config, inputs, state, &[], &Options::default());
    p.outputs
        .into_iter()
        // An output still unknown (its resource failed) is left out rather than stored.
        .filter(|(_, o)| {
            o.after
                .as_ref()
                .is_some_and(|v| !crate::model::contains_unknown(v))
        })
        .filter_map(|(k, o)| {
            o.after.map(|v| {
                (
                    k,
                    config::OutputValue {
                        value: v,
                        sensitive: o.sensitive,
                    },
                )
            })
        })
        .collect()
}

/// Whether two resources' private data name the same thing in the world (the same token
/// of an ssh or AWS cluster, or the same sandbox).
fn same_cluster(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    ["token", "dir"].iter().any(|k| {
        let (x, y) = (a.get(*k), b.get(*k));
        x.is_some() && x == y
    })
}

/// Asks the backend an import id names (`BACKEND:ID`) for the cluster it identifies.
async fn import_one(
    registry: &crate::providers::Registry,
    to: &Address,
    id: &str,
) -> std::result::Result<crate::providers::Created, String> {
    let (backend, rest) = id
        .split_once(':')
        .ok_or_else(|| format!("{id:?} does not name its backend"))?;
    let p = registry
        .get(backend)
        .ok_or_else(|| format!("no backend {backend:?} in this build"))?;
    p.import(to, rest).await.map_err(|e| e.message)
}

/// Takes the clusters the plan imports into state (again asking their backends, since the
/// world may have moved since the plan), writing state after each.
async fn apply_imports(
    ctx: &Ctx,
    config: &Config,
    plan: &Plan,
    state: &mut State,
    store: &dyn StateStore,
    json: bool,
) -> Result<usize> {
    let registry = ctx.registry(Some(config));
    let mut done = 0;
    for c in plan.changes.iter().filter(|c| c.import.is_some()) {
        let id = c.import.clone().unwrap_or_default();
        if state.resources.contains_key(&c.address) {
            continue;
        }
        let found = import_one(&registry, &c.address, &id)
            .await
            .map_err(|e| Failure::new(format!("cannot import {}: {e}", c.address)))?;
        let provider = id.split_once(':').map(|(b, _)| b).unwrap_or_default();
        state.resources.insert(
            c.address.clone(),
            crate::state::ResourceState {
                status: crate::state::Status::Ready,
                provider: provider.to_string(),
                spec: c.after.clone().ok_or_else(|| {
                    Failure::new(format!("the plan has no specification for {}", c.address))
                })?,
                computed: found.computed,
                private: found.private,
                placement: None,
                dependencies: c.depends_on.clone(),
                sensitive: c.sensitive.clone(),
                attempts: Vec::new(),
                leftovers: Vec::new(),
            },
        );
        state.serial += 1;
        store.write(state).await?;
        done += 1;
        if json {
            super::progress::Progress::emit(
                "imported",
                serde_json::json!({"address": c.address.to_string(), "id": id}),
            );
        } else {
            say!("{}: imported from {id}", c.address);
        }
    }
    Ok(done)
}

/// `apply -json`: one `planned` line per change, before anything is done.
fn emit_planned(plan: &Plan) {
    for c in plan.changes.iter().filter(|c| c.action.is_change()) {
        let placement = c.candidates.first().map(|p| {
            serde_json::json!({
                "infra": p.offering.infra(),
                "instance_type": p.offering.instance_type,
                "hourly_cost_micros": p.hourly,
            })
        });
        super::progress::Progress::emit(
            "planned",
            serde_json::json!({
                "address": c.address.to_string(),
                "actions": render::json::action_list(c.action),
                "reasons": c.reasons,
                "placement": placement,
                "candidates": c.candidates.len(),
            }),
        );
    }
}

/// `apply -json`: the last line, what was done.
fn emit_summary(s: &Summary, plan: &Plan, state: &State) {
    let cost = state.hourly_cost();
    let failures: Vec<serde_json::Value> = s
        .failures
        .iter()
        .map(|(a, e)| serde_json::json!({"address": a.to_string(), "error": e}))
        .collect();
    super::progress::Progress::emit(
        "summary",
        serde_json::json!({
            "ok": s.ok(),
            "interrupted": s.interrupted,
            "imported": s.imported,
            "added": s.added,
            "changed": s.changed,
            "replaced": s.replaced,
            "destroyed": s.destroyed,
            "failures": failures,
            "skipped": s.skipped.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "serial": state.serial,
            "lineage": state.lineage,
            "cost_before_micros": plan.cost_before,
            "cost_after_micros": cost,
        }),
    );
}

fn print_summary(s: &Summary, plan: &Plan, state: &State, destroy: bool, style: &Style) {
    let cost = state.hourly_cost();
    say!();
    if s.interrupted {
        say!(
            "{}",
            style.yellow("Apply interrupted: the state records everything that was done.")
        );
    }
    if !s.failures.is_empty() {
        say!(
            "{}",
            style.red(&format!(
                "{} failed: {} error{}.",
                if destroy { "Destroy" } else { "Apply" },
                s.failures.len(),
                if s.failures.len() == 1 { "" } else { "s" }
            ))
        );
        for (addr, e) in &s.failures {
            say!("  {addr}: {e}");
        }
        if !s.skipped.is_empty() {
            let names: Vec<String> = s.skipped.iter().map(ToString::to_string).collect();
            say!("  skipped because of these: {}", names.join(", "));
        }
        say!(
            "hint: fix the cause and run `skyform {}` again; finished work is kept",
            if destroy { "destroy" } else { "apply" }
        );
    }
    if destroy && s.ok() {
        say!(
            "{}",
            style.green(&format!(
                "Destroy complete! Resources: {} destroyed.",
                s.destroyed
            ))
        );
    } else if s.ok() {
        say!(
            "{}",
            style.green(&format!(
                "Apply complete! Resources: {}{} added, {} changed, {} replaced, {} destroyed. Cost now {}/h.",
                if s.imported > 0 {
                    format!("{} imported, ", s.imported)
                } else {
                    String::new()
                },
                s.added,
                s.changed,
                s.replaced,
                s.destroyed,
                crate::optimizer::dollars(cost)
            ))
        );
    }
    let _ = plan;
    let history: Vec<(&Address, &crate::state::Attempt)> = state
        .resources
        .iter()
        .filter(|(_, r)| r.attempts.len() > 1)
        .flat_map(|(a, r)| r.attempts.iter().map(move |t| (a, t)))
        .collect();
    if !history.is_empty() {
        say!("\nFailover history");
        let rows: Vec<Vec<String>> = history
            .iter()
            .map(|(a, t)| {
                vec![
                    a.to_string(),
                    t.infra.clone(),
                    t.instance_type.clone(),
                    format!("{:.1}s", t.seconds),
                    t.result.clone(),
                ]
            })
            .collect();
        let table =
            render::human::table(&["resource", "infra", "instance", "time", "result"], &rows);
        for line in table.lines() {
            say!("  {line}");
        }
    }
    if !state.outputs.is_empty() && !destroy {
        say!("\nOutputs:");
        for (k, o) in &state.outputs {
            let v = if o.sensitive {
                "(sensitive value)".to_string()
            } else {
                render::human::value(&o.value)
            };
            say!("  {k} = {v}");
        }
    }
}

async fn wait_for_jobs(ctx: &Ctx, config: &Config, plan: &Plan) -> Result<i32> {
    let registry = ctx.registry(Some(config));
    let store = ctx.store().await?;
    let watched: Vec<Address> = plan
        .changes
        .iter()
        .filter(|c| {
            matches!(
                c.address.kind,
                crate::model::Kind::Job | crate::model::Kind::ManagedJob
            ) && matches!(c.action, plan::Action::Create | plan::Action::Replace)
        })
        .map(|c| c.address.clone())
        .collect();
    say!("\nWaiting for {} job(s)...", watched.len());
    loop {
        let mut state = store.read().await?.unwrap_or_default();
        plan::refresh::refresh(&mut state, &registry, 64).await;
        let statuses: Vec<(Address, String)> = watched
            .iter()
            .map(|a| {
                (
                    a.clone(),
                    state
                        .resources
                        .get(a)
                        .and_then(|r| r.computed.get("status"))
                        .and_then(|s| s.as_str())
                        .unwrap_or("UNKNOWN")
                        .to_string(),
                )
            })
            .collect();
        if statuses.iter().all(|(_, s)| {
            [
                "SUCCEEDED",
                "FAILED",
                "CANCELLED",
                "LOST",
                "DEGRADED",
                "UNKNOWN",
            ]
            .contains(&s.as_str())
        }) {
            let failed: Vec<&(Address, String)> =
                statuses.iter().filter(|(_, s)| s != "SUCCEEDED").collect();
            for (a, s) in &statuses {
                say!("  {a}: {s}");
            }
            return Ok(if failed.is_empty() {
                EXIT_OK
            } else {
                EXIT_ERROR
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

/// Where the catalogs are: the flag (or SKYFORM_CATALOG_DIR), the configuration's
/// `catalog_dir`, else `~/.skyform/catalogs`.
fn catalog_dir(ctx: &Ctx, flag: Option<PathBuf>) -> PathBuf {
    if let Some(d) = flag {
        return d;
    }
    let (config, _) = config::load(&ctx.dir);
    if let Some(d) = config.catalog_dir {
        // Relative to the configuration, like every other path in it.
        return ctx.dir.join(expand_home(&d));
    }
    expand_home("~/.skyform/catalogs")
}

fn expand_home(p: &str) -> PathBuf {
    match p.strip_prefix("~/") {
        Some(rest) => std::env::var_os("HOME")
            .map_or_else(|| PathBuf::from(p), |h| PathBuf::from(h).join(rest)),
        None => PathBuf::from(p),
    }
}

fn load_catalog(dir: &Path) -> Result<crate::optimizer::catalog::Catalog> {
    let catalog = crate::optimizer::catalog::Catalog::load(dir).map_err(|e| {
        Failure::new(e.to_string()).hint(format!(
            "put SkyPilot-format catalogs in {} (<cloud>/vms.csv) with `skyform catalog update`, or point SKYFORM_CATALOG_DIR (or catalog_dir, or --catalog-dir for offers) at them",
            dir.display()
        ))
    })?;
    if catalog.clouds.is_empty() {
        return Err(Failure::new(format!("no catalogs in {}", dir.display()))
            .hint("a catalog directory holds <cloud>/vms.csv files (aws, gcp, lambda, …) in SkyPilot's format"));
    }
    Ok(catalog)
}

/// Writes a document to stdout as one line of JSON, streamed (a plan can be large).
fn write_json_out<T: serde::Serialize>(value: &T) {
    use std::io::Write as _;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let _ = serde_json::to_writer(&mut out, value);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

/// A list-of-strings setting of an infra block (empty when absent).
fn string_list(infra: &config::InfraConfig, name: &str) -> Vec<String> {
    infra
        .settings
        .get(name)
        .and_then(|r| r.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The catalog offerings of the clouds the configuration declares (`infra "aws" { regions,
/// price_multiplier }`, …); none when it declares no cloud.
fn catalog_offerings(ctx: &Ctx, config: &Config) -> Result<Vec<crate::optimizer::Offering>> {
    let flag = std::env::var_os("SKYFORM_CATALOG_DIR").map(PathBuf::from);
    Ok(scoped_offerings(ctx, config, flag, None)?.unwrap_or_default())
}

/// The catalog offerings of the clouds a configuration declares, with its regions, zones and
/// price multipliers; `None` when it declares no cloud. `kinds` defaults to what the
/// configuration's requests can ask for.
fn scoped_offerings(
    ctx: &Ctx,
    config: &Config,
    flag_dir: Option<PathBuf>,
    kinds: Option<crate::optimizer::catalog::Kinds>,
) -> Result<Option<Vec<crate::optimizer::Offering>>> {
    let clouds: Vec<&config::InfraConfig> = config
        .infra
        .iter()
        .filter(|i| ["aws", "gcp", "lambda"].contains(&i.kind.as_str()))
        .collect();
    if clouds.is_empty() {
        return Ok(None);
    }
    let dir = catalog_dir(ctx, flag_dir);
    let catalog = load_catalog(&dir)?;
    let mut wanted: Vec<(String, f64, Vec<String>)> = Vec::new();
    let mut scopes: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
    // Offerings no request of this configuration can use are not built: without the word
    // `use_spot` nothing asks for spot, and without `accelerators` or `instance_type` nothing
    // asks for a GPU machine.
    let mentions =
        |word: &str| (0..config.sources.len()).any(|i| config.sources.text(i).contains(word));
    let kinds = kinds.unwrap_or(crate::optimizer::catalog::Kinds {
        on_demand: true,
        spot: mentions("use_spot"),
        gpu: mentions("accelerators") || mentions("instance_type"),
        cpu: true,
    });
    for infra in clouds {
        let regions = string_list(infra, "regions");
        let multiplier = infra
            .settings
            .get("price_multiplier")
            .and_then(|m| m.as_f64())
            .unwrap_or(1.0);
        if !(multiplier.is_finite() && multiplier > 0.0) {
            return Err(Failure::new(format!(
                "infra \"{}\": price_multiplier = {multiplier} is not a positive number",
                infra.kind
            ))
            .hint("a multiplier scales the catalog's prices: 0.8 for a 20% discount"));
        }
        let Some(cloud) = catalog.clouds.get(&infra.kind) else {
            return Err(Failure::new(format!(
                "infra \"{}\" is declared, but {} has no {}/vms.csv",
                infra.kind,
                dir.display(),
                infra.kind
            ))
            .hint("`skyform catalog update` fetches it"));
        };
        let known: std::collections::BTreeSet<&str> =
            cloud.vms.iter().map(|v| v.region.as_str()).collect();
        if let Some(bad) = regions.iter().find(|r| !known.contains(r.as_str())) {
            let names: Vec<&str> = known.iter().copied().collect();
            let hint = match config::diag::did_you_mean(bad, names.iter().copied()) {
                Some(s) => format!("did you mean {s:?}?"),
                None => format!("the {} catalog has: {}", infra.kind, names.join(", ")),
            };
            return Err(Failure::new(format!(
                "infra \"{}\": region {bad:?} is not in the catalog",
                infra.kind
            ))
            .hint(hint));
        }
        let zones = string_list(infra, "zones");
        let zone_regions: std::collections::BTreeSet<&str> = cloud
            .vms
            .iter()
            .filter(|v| v.zone.as_ref().is_some_and(|z| zones.contains(z)))
            .map(|v| v.region.as_str())
            .collect();
        if let Some(bad) = zones
            .iter()
            .find(|z| !cloud.vms.iter().any(|v| v.zone.as_ref() == Some(*z)))
        {
            return Err(Failure::new(format!(
                "infra \"{}\": zone {bad:?} is not in the catalog",
                infra.kind
            ))
            .hint("zones look like us-east-1a (aws) or us-central1-b (gcp)"));
        }
        let zone_regions: Vec<String> = zone_regions.into_iter().map(String::from).collect();
        wanted.push((infra.kind.clone(), multiplier, regions));
        scopes.insert(infra.kind.clone(), (zones, zone_regions));
    }
    // zones: spot offerings in those zones; on-demand ones in their regions.
    Ok(Some(
        catalog
            .offerings_of(&wanted, kinds)
            .into_iter()
            .filter(|o| {
                scopes.get(&o.cloud).is_none_or(|(zones, zone_regions)| {
                    zones.is_empty()
                        || match &o.zone {
                            Some(z) => zones.contains(z),
                            None => o.region.as_ref().is_some_and(|r| zone_regions.contains(r)),
                        }
                })
            })
            .collect(),
    ))
}

impl OffersRequest {
    fn resources(&self) -> Result<crate::model::Resources> {
        let bad = |what: &str, e: crate::model::RequestError| {
            Failure::new(format!("invalid {what}: {}", e.message)).hint(e.hint)
        };
        let accelerators = match &self.accelerators {
            None => None,
            Some(s) => {
                let list: Vec<crate::model::Accelerator> = s
                    .split(',')
                    .map(|a| a.parse().map_err(|e| bad("accelerators", e)))
                    .collect::<Result<_>>()?;
                Some(if list.len() == 1 {
                    crate::model::Accelerators::One(list.into_iter().next().expect("one"))
                } else {
                    crate::model::Accelerators::AnyOf(list)
                })
            }
        };
        Ok(crate::model::Resources {
            accelerators,
            cpus: self
                .cpus
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(|e| bad("cpus", e))?,
            memory: self
                .memory
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(|e| bad("memory", e))?,
            use_spot: Some(self.spot),
            infra: self.infra.clone(),
            instance_type: self.instance_type.clone(),
            max_hourly_cost: self.max_hourly_cost,
            ..Default::default()
        })
    }
}

async fn offers(
    ctx: &Ctx,
    request: &OffersRequest,
    all: bool,
    json: bool,
    flag_dir: Option<PathBuf>,
) -> Result<i32> {
    let resources = request.resources()?;
    let kinds = crate::optimizer::catalog::Kinds {
        on_demand: !request.spot,
        spot: request.spot,
        gpu: request.accelerators.is_some() || request.instance_type.is_some(),
        cpu: request.accelerators.is_none(),
    };
    // In a configuration that declares clouds, its regions, zones and prices apply; elsewhere
    // every cloud of the catalogs at list price.
    let (config, _) = ctx.load_config()?;
    let list_dir = catalog_dir(ctx, flag_dir.clone());
    let mut offerings = match scoped_offerings(ctx, &config, flag_dir.clone(), Some(kinds))? {
        Some(o) => o,
        None => {
            let catalog = load_catalog(&catalog_dir(ctx, flag_dir))?;
            let wanted: Vec<(String, f64, Vec<String>)> = catalog
                .clouds
                .keys()
                .map(|c| (c.clone(), 1.0, Vec::new()))
                .collect();
            catalog.offerings_of(&wanted, kinds)
        }
    };
    // This machine only when asked for: offers are about where one could rent.
    if request
        .infra
        .as_deref()
        .is_some_and(|i| i.starts_with("local"))
    {
        for p in ctx.registry(None).providers.values() {
            offerings.extend(p.offerings().await.unwrap_or_default());
        }
    }
    let ranked = crate::optimizer::rank(
        &resources,
        request.nodes.max(1),
        &offerings,
        &Default::default(),
    )
    .map_err(|no| {
        // Where the public accelerator list says it can be found, when not here.
        let list = std::fs::read(list_dir.join("common").join("accelerators.csv"))
            .map(|b| crate::optimizer::catalog::parse_accelerators(&b))
            .unwrap_or_default();
        let listed: Vec<String> = resources
            .accelerators
            .iter()
            .flat_map(|a| a.choices().to_vec())
            .filter_map(|a| {
                let clouds = list.get(&a.name.to_uppercase())?;
                Some(format!("the public list has {} on {}", a.name, clouds.join(", ")))
            })
            .collect();
        let reason = if listed.is_empty() { no.reason.clone() } else { format!("{}; {}", no.reason, listed.join("; ")) };
        Failure::new(format!("no offer matches: {reason}"))
            .hint("relax the request; `skyform offers NAME:COUNT --all` lists what the catalogs have for an accelerator")
    })?;
    if json {
        let rows: Vec<serde_json::Value> = ranked
            .iter()
            .map(|c| serde_json::to_value(c).unwrap_or_default())
            .collect();
        say!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
        return Ok(EXIT_OK);
    }
    let shown = if all {
        ranked.len()
    } else {
        ranked.len().min(20)
    };
    say!(
        "{:<36} {:<20} {:<14} {:>5} {:>9} {:<5} {:>10}",
        "INFRA",
        "INSTANCE",
        "ACCELERATORS",
        "vCPU",
        "MEMORY",
        "SPOT",
        "$/h"
    );
    for c in &ranked[..shown] {
        let o = &c.offering;
        let acc = o
            .accelerators
            .iter()
            .map(|(n, k)| format!("{n}:{}", crate::model::request::fmt_num(*k)))
            .collect::<Vec<_>>()
            .join(",");
        say!(
            "{:<36} {:<20} {:<14} {:>5} {:>9} {:<5} {:>10}",
            o.infra(),
            o.instance_type,
            if acc.is_empty() { "-".to_string() } else { acc },
            crate::model::request::fmt_num(o.cpus),
            format!("{} GiB", crate::model::request::fmt_size(o.memory_gib)),
            if o.spot { "spot" } else { "-" },
            crate::optimizer::dollars(c.hourly).trim_start_matches('$')
        );
    }
    if shown < ranked.len() {
        say!(
            "
(showing {shown} of {}; --all for every one, -json for machines)",
            ranked.len()
        );
    }
    Ok(EXIT_OK)
}

async fn catalog_update(
    ctx: &Ctx,
    flag_dir: Option<PathBuf>,
    url: String,
    clouds: Vec<String>,
    timeout: std::time::Duration,
) -> Result<i32> {
    let dir = catalog_dir(ctx, flag_dir);
    say!("Downloading catalogs from {url} into {} ...", dir.display());
    let target = dir.clone();
    let result = tokio::task::spawn_blocking(move || {
        crate::optimizer::catalog::update(&url, &clouds, &target, timeout)
    })
    .await
    .map_err(|e| Failure::new(e.to_string()))?;
    let updated = result.map_err(|e| {
        Failure::new(e.to_string()).hint("check the URL (--url or SKYFORM_CATALOG_URL) and the network; the old catalogs are unchanged")
    })?;
    for u in &updated {
        say!(
            "  {}  {} rows, {} KiB",
            u.path.display(),
            u.rows,
            u.bytes / 1024
        );
    }
    say!("\nhint: `skyform catalog list` shows what is loaded; plans use it from now on");
    Ok(EXIT_OK)
}

fn catalog_list(ctx: &Ctx, flag_dir: Option<PathBuf>) -> Result<i32> {
    let dir = catalog_dir(ctx, flag_dir);
    let catalog = load_catalog(&dir)?;
    say!("Catalogs in {}:", dir.display());
    say!("{:<10} {:>8}  {:<12} FILE", "CLOUD", "ROWS", "AGE");
    for f in &catalog.files {
        let age = f
            .modified
            .and_then(|m| std::time::SystemTime::now().duration_since(m).ok())
            .map_or_else(
                || "-".to_string(),
                |d| {
                    let h = d.as_secs() / 3600;
                    if h >= 48 {
                        format!("{} days", h / 24)
                    } else {
                        format!("{h} h")
                    }
                },
            );
        say!(
            "{:<10} {:>8}  {:<12} {}",
            f.cloud,
            f.rows,
            age,
            f.path.display()
        );
    }
    Ok(EXIT_OK)
}

async fn read_state(ctx: &Ctx) -> Result<State> {
    let store = ctx.store().await?;
    store.read().await?.ok_or_else(|| {
        Failure::new(format!("no state at {}", store.describe())).hint("run `skyform apply` first")
    })
}

/// A plan in the chosen format, on stdout.
fn print_plan(ctx: &Ctx, plan: &Plan, format: super::PlanFormat) {
    match format {
        super::PlanFormat::Json => write_json_out(&render::json::plan(plan)),
        super::PlanFormat::Markdown => say_inline!("{}", render::markdown::plan(plan)),
        super::PlanFormat::Human => say_inline!("{}", render::human::plan(plan, &ctx.style)),
    }
}

async fn show(
    ctx: &Ctx,
    planfile: Option<&Path>,
    json: bool,
    format: super::PlanFormat,
) -> Result<i32> {
    if let Some(p) = planfile {
        let bytes = std::fs::read(p)
            .map_err(|e| Failure::new(format!("cannot read plan {}: {e}", p.display())))?;
        let plan: Plan = serde_json::from_slice(&bytes)
            .map_err(|e| Failure::new(format!("{} is not a skyform plan: {e}", p.display())))?;
        print_plan(ctx, &plan, format);
        return Ok(EXIT_OK);
    }
    if format == super::PlanFormat::Markdown {
        return Err(Failure::new("-format markdown shows plans only")
            .hint("skyform show -format markdown PLANFILE"));
    }
    let state = read_state(ctx).await?;
    if json {
        say!(
            "{}",
            serde_json::to_string_pretty(&state_json(&state)).unwrap_or_default()
        );
        return Ok(EXIT_OK);
    }
    if state.resources.is_empty() {
        say!("The state is empty.");
    }
    for (addr, r) in &state.resources {
        say!("# {addr}  ({:?})", r.status);
        for (k, v) in r.spec.attributes() {
            let shown = if r.sensitive.contains(&k) || k == "secrets" {
                "(sensitive value)".to_string()
            } else {
                render::human::value(&v)
            };
            say!("    {k} = {shown}");
        }
        for (k, v) in &r.computed {
            say!("    {k} = {}", render::human::value(v));
        }
        say!();
    }
    Ok(EXIT_OK)
}

/// State as JSON with sensitive values removed.
fn state_json(state: &State) -> serde_json::Value {
    let mut v = serde_json::to_value(state).unwrap_or_default();
    if let Some(res) = v.get_mut("resources").and_then(|r| r.as_object_mut()) {
        for (addr, r) in res.iter_mut() {
            let sensitive: Vec<String> = state
                .resources
                .iter()
                .find(|(a, _)| a.to_string() == *addr)
                .map(|(_, r)| r.sensitive.clone())
                .unwrap_or_default();
            if let Some(spec) = r.get_mut("spec").and_then(|s| s.as_object_mut()) {
                for k in sensitive.iter().map(String::as_str).chain(["secrets"]) {
                    if let Some(x) = spec.get_mut(k) {
                        *x = serde_json::Value::Null;
                    }
                }
            }
        }
    }
    if let Some(outs) = v.get_mut("outputs").and_then(|o| o.as_object_mut()) {
        for o in outs.values_mut() {
            if o.get("sensitive").and_then(|s| s.as_bool()) == Some(true) {
                o["value"] = serde_json::Value::Null;
            }
        }
    }
    v
}

async fn output(ctx: &Ctx, name: Option<&str>, json: bool, raw: bool) -> Result<i32> {
    let state = read_state(ctx).await?;
    match name {
        Some(n) => {
            let o = state.outputs.get(n).ok_or_else(|| {
                Failure::new(format!("no output {n:?}")).hint("list them with `skyform output`")
            })?;
            if raw {
                match &o.value {
                    serde_json::Value::String(s) => say!("{s}"),
                    serde_json::Value::Number(_) | serde_json::Value::Bool(_) => {
                        say!("{}", o.value)
                    }
                    _ => {
                        return Err(
                            Failure::new("-raw works only for strings, numbers and bools")
                                .hint("use -json for lists and maps"),
                        );
                    }
                }
            } else if json {
                say!(
                    "{}",
                    serde_json::to_string_pretty(&o.value).unwrap_or_default()
                );
            } else {
                say!("{}", render::human::value(&o.value));
            }
        }
        None => {
            if json {
                let m: serde_json::Map<String, serde_json::Value> = state
                    .outputs
                    .iter()
                    .map(|(k, o)| {
                        (
                            k.clone(),
                            serde_json::json!({"value": o.value, "sensitive": o.sensitive}),
                        )
                    })
                    .collect();
                say!("{}", serde_json::to_string_pretty(&m).unwrap_or_default());
            } else {
                for (k, o) in &state.outputs {
                    let v = if o.sensitive {
                        "(sensitive value)".to_string()
                    } else {
                        render::human::value(&o.value)
                    };
                    say!("{k} = {v}");
                }
            }
        }
    }
    Ok(EXIT_OK)
}

async fn state_cmd(ctx: &Ctx, cmd: StateCommand) -> Result<i32> {
    let store = ctx.store().await?;
    match cmd {
        StateCommand::List => {
            for a in read_state(ctx).await?.resources.keys() {
                say!("{a}");
            }
        }
        StateCommand::Show { address } => {
            let addr: Address = parse_addrs(&[address])?.remove(0);
            let state = read_state(ctx).await?;
            let r = state.resources.get(&addr).ok_or_else(|| {
                Failure::new(format!("{addr} is not in state"))
                    .hint("list addresses with `skyform state list`")
            })?;
            let mut v = state_json(&state);
            let one = v
                .get_mut("resources")
                .and_then(|r| r.get_mut(addr.to_string()))
                .cloned()
                .unwrap_or_default();
            let _ = r;
            say!("{}", serde_json::to_string_pretty(&one).unwrap_or_default());
        }
        StateCommand::Rm { address } => {
            let addr: Address = parse_addrs(&[address])?.remove(0);
            edit_state(store.as_ref(), "state rm", |state| {
                if state.resources.remove(&addr).is_none() {
                    return Err(Failure::new(format!("{addr} is not in state")));
                }
                state.serial += 1;
                Ok(format!(
                    "Removed {addr} from state (it still exists in the world; skyform forgot it)."
                ))
            })
            .await?;
        }
        StateCommand::Mv { from, to } => {
            let mut both = parse_addrs(&[from, to])?;
            let to = both.remove(1);
            let from = both.remove(0);
            if from.kind != to.kind {
                return Err(Failure::new(format!(
                    "cannot move a {} to a {}",
                    from.kind, to.kind
                )));
            }
            edit_state(store.as_ref(), "state mv", |state| {
                if state.resources.contains_key(&to) {
                    return Err(Failure::new(format!("{to} already exists in state")));
                }
                let res = state
                    .resources
                    .remove(&from)
                    .ok_or_else(|| Failure::new(format!("{from} is not in state")))?;
                state.resources.insert(to.clone(), res);
                state.serial += 1;
                Ok(format!("Moved {from} to {to}."))
            })
            .await?;
        }
        StateCommand::Pull => {
            let state = read_state(ctx).await?;
            say_inline!("{}", String::from_utf8_lossy(&state.to_json()));
        }
        StateCommand::Push { file, force } => {
            let bytes = std::fs::read(&file)
                .map_err(|e| Failure::new(format!("cannot read {}: {e}", file.display())))?;
            // Sealed (an errored-state.json of an encrypted state) or plaintext.
            let codec = state::seal::Codec {
                accept_plaintext: true,
                ..ctx.configured_codec()?
            };
            let new = codec.decode(&bytes, &file.display().to_string())?;
            let existed = store.read().await?.is_some();
            edit_state(store.as_ref(), "state push", |state| {
                if existed && !force {
                    if state.lineage != new.lineage {
                        return Err(Failure::new(format!(
                            "{} has lineage {}, the state has {}",
                            file.display(),
                            new.lineage,
                            state.lineage
                        ))
                        .hint("pass -force to replace a state of another lineage"));
                    }
                    if new.serial <= state.serial {
                        return Err(Failure::new(format!(
                            "{} has serial {}, not above the state's {}",
                            file.display(),
                            new.serial,
                            state.serial
                        ))
                        .hint("pass -force to overwrite a newer state"));
                    }
                }
                *state = new;
                Ok(format!(
                    "Pushed {} (serial {}).",
                    file.display(),
                    state.serial
                ))
            })
            .await?;
        }
    }
    Ok(EXIT_OK)
}

/// Locks the state, lets `edit` change it, writes it back and prints what `edit` says.
async fn edit_state(
    store: &dyn StateStore,
    op: &str,
    edit: impl FnOnce(&mut State) -> Result<String>,
) -> Result<()> {
    let guard = lock(store, op, &LockFlags::immediate()).await?;
    let result = async {
        let mut state = store.read().await?.unwrap_or_default();
        let message = edit(&mut state)?;
        store.write(&state).await?;
        say!("{message}");
        Ok(())
    }
    .await;
    guard.release().await;
    result
}

/// `ssh CLUSTER [-- CMD]`: runs ssh (or, for this machine, the shell) to the head node,
/// with the terminal handed over; the exit code is the command's.
async fn shell(ctx: &Ctx, address: &str, command: &[String]) -> Result<i32> {
    let addr: Address = parse_addrs(&[address.to_string()])?.remove(0);
    if addr.kind != crate::model::Kind::Cluster {
        return Err(Failure::new(format!("{addr} is not a cluster")));
    }
    let (config, _) = ctx.load_config()?;
    let registry = ctx.registry(Some(&config));
    let store = ctx.store().await?;
    let state = store.read().await?.unwrap_or_default();
    let (res, p) = cluster_and_backend(&state, &addr, &registry)?;
    let argv = p
        .shell(res, command)
        .map_err(|e| Failure::new(format!("cannot open a shell on {addr}: {e}")))?;
    let (program, args) = argv.split_first().ok_or_else(|| Failure::new("no shell"))?;
    let status = std::process::Command::new(program)
        .args(args)
        .status()
        .map_err(|e| Failure::new(format!("cannot run {program}: {e}")))?;
    Ok(status.code().unwrap_or(EXIT_ERROR))
}

/// Writes `.skyform/ssh_config` (per workspace): a `Host` entry for each cluster reached with
/// ssh, named like its address without `cluster.` (`ssh -F .skyform/ssh_config dev`, or
/// `Include` it from `~/.ssh/config`). Removed when no cluster has one.
fn write_ssh_config(ctx: &Ctx, state: &State, registry: &Registry) {
    let ws = ctx.workspace().unwrap_or_else(|_| "default".into());
    let path = ctx
        .dir
        .join(state::workspace_key(".skyform/ssh_config", &ws));
    let mut text = format!(
        "# Written by skyform after each apply: the head node of each cluster of {} (workspace {ws}).\n",
        ctx.dir.display()
    );
    let mut any = false;
    for (addr, r) in &state.resources {
        if addr.kind != crate::model::Kind::Cluster {
            continue;
        }
        let Some(entry) = registry.get(&r.provider).and_then(|p| p.ssh_entry(r).ok()) else {
            continue;
        };
        let name: String = addr
            .to_string()
            .replacen("cluster.", "", 1)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || ".-_".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        text.push('\n');
        text.push_str(&entry.config_block(name.trim_matches('-')));
        any = true;
    }
    let result = if any {
        path.parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                LocalStore::write_atomic(&path, text.as_bytes()).map_err(|e| e.to_string())
            })
    } else {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
            _ => Ok(()),
        }
    };
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the ssh config");
    }
}

/// A resource in state and the backend that keeps it.
fn cluster_and_backend<'a>(
    state: &'a State,
    addr: &Address,
    registry: &'a Registry,
) -> Result<(
    &'a crate::state::ResourceState,
    &'a dyn crate::providers::Provider,
)> {
    let res = state.resources.get(addr).ok_or_else(|| {
        Failure::new(format!("{addr} is not in state")).hint("`skyform state list` shows what is")
    })?;
    let p = registry.get(&res.provider).ok_or_else(|| {
        Failure::new(format!(
            "provider {:?} is not available in this build",
            res.provider
        ))
    })?;
    Ok((res, p))
}

/// `stop` / `start`: the cluster's backend stops or starts its machines; state follows.
async fn power(ctx: &Ctx, address: &str, run: bool, flags: &LockFlags) -> Result<i32> {
    let addr: Address = parse_addrs(&[address.to_string()])?.remove(0);
    if addr.kind != crate::model::Kind::Cluster {
        return Err(Failure::new(format!(
            "{addr} is not a cluster; only clusters stop and start"
        )));
    }
    let (config, _) = ctx.load_config()?;
    let registry = ctx.registry(Some(&config));
    let store = ctx.store().await?;
    let op = if run { "start" } else { "stop" };
    let guard = lock(store.as_ref(), op, flags).await?;
    let result = async {
        let mut state = store.read().await?.unwrap_or_default();
        let (res, p) = cluster_and_backend(&state, &addr, &registry)?;
        let res = res.clone();
        let done = if run {
            p.start(&res).await.map(Some)
        } else {
            p.stop(&res).await.map(|()| None)
        };
        let private = done.map_err(|e| Failure::new(format!("cannot {op} {addr}: {e}")))?;
        let mut res = res;
        if let Some(private) = private {
            res.private = private;
        }
        // Addresses change across a stop and start: record what is true now.
        let now = p.refresh(&addr, &res, None).await;
        if let Some(r) = state.resources.get_mut(&addr) {
            r.private = res.private.clone();
            if let Ok(crate::providers::Observed::Up(c)) = now {
                r.computed.extend(c);
            }
            r.computed.insert(
                "status".into(),
                serde_json::json!(if run { "UP" } else { "STOPPED" }),
            );
        }
        state.serial += 1;
        store.write(&state).await?;
        write_ssh_config(ctx, &state, &registry);
        if run {
            say!("{addr} started.");
        } else {
            say!("{addr} stopped; its machines and files are kept.");
            say!("hint: `skyform start {addr}` starts it again; `skyform destroy` removes it");
        }
        Ok(0)
    }
    .await;
    guard.release().await;
    result
}

async fn force_unlock(ctx: &Ctx, id: &str, force: bool) -> Result<i32> {
    let store = ctx.store().await?;
    let holder = store
        .lock_holder()
        .await?
        .ok_or_else(|| Failure::new("the state is not locked"))?;
    if !holder.id.starts_with(id) || id.len() < 4 {
        return Err(Failure::new(format!(
            "lock id {id} does not match the current lock {}",
            holder.id
        ))
        .hint("copy the id from the lock error"));
    }
    say!(
        "The lock is held by {} ({}) since {}.",
        holder.who,
        holder.operation,
        holder.created
    );
    if !force {
        if !ctx.tty_in {
            return Err(Failure::new(
                "force-unlock needs confirmation, and there is no terminal to ask",
            )
            .hint("pass -force if you are sure that run is dead"));
        }
        say_inline!("Remove it? Only 'yes' will be accepted: ");
        let _ = std::io::stdout().flush();
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        if line.trim() != "yes" {
            say!("Kept the lock.");
            return Ok(EXIT_ERROR);
        }
    }
    store.unlock(&holder.id).await?;
    say!("Removed the lock.");
    Ok(EXIT_OK)
}

async fn status(ctx: &Ctx, json: bool) -> Result<i32> {
    let mut state = read_state(ctx).await?;
    let (config, _) = ctx.load_config()?;
    let registry = ctx.registry(Some(&config));
    plan::refresh::refresh(&mut state, &registry, 64).await;
    if json {
        let rows: Vec<serde_json::Value> = state
            .resources
            .iter()
            .map(|(a, r)| serde_json::json!({"address": a.to_string(), "status": r.computed.get("status"), "exit_code": r.computed.get("exit_code"), "placement": r.placement.as_ref().map(|p| p.offering.infra()), "hourly_cost_micros": r.placement.as_ref().map(|p| p.hourly)}))
            .collect();
        say!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
        return Ok(EXIT_OK);
    }
    let get = |r: &state::ResourceState, k: &str| {
        r.computed
            .get(k)
            .map(|v| {
                v.as_str()
                    .map(String::from)
                    .unwrap_or_else(|| v.to_string())
            })
            .unwrap_or_else(|| "-".into())
    };
    let mut total = 0;
    let mut clusters = Vec::new();
    let mut jobs = Vec::new();
    for (a, r) in &state.resources {
        let nodes = match &r.spec {
            crate::model::Spec::Cluster(c) => c.num_nodes,
            crate::model::Spec::ManagedJob(m) => m.num_nodes,
            crate::model::Spec::Service(s) => s.replica_policy.min_replicas,
            crate::model::Spec::Job(j) => {
                jobs.push(vec![
                    a.to_string(),
                    j.cluster.to_string(),
                    get(r, "status"),
                    get(r, "exit_code").replace("null", "-"),
                ]);
                continue;
            }
        };
        let cost = r.placement.as_ref().map_or(0, |p| p.hourly);
        total += cost;
        clusters.push(vec![
            a.to_string(),
            r.placement
                .as_ref()
                .map_or("-".into(), |p| p.offering.infra()),
            nodes.to_string(),
            get(r, "status"),
            crate::optimizer::dollars(cost)
                .trim_start_matches('$')
                .to_string(),
        ]);
    }
    say!(
        "{}",
        render::human::table(&["CLUSTER", "INFRA", "NODES", "STATUS", "$/h"], &clusters)
    );
    if !jobs.is_empty() {
        say!(
            "\n{}",
            render::human::table(&["JOB", "CLUSTER", "STATUS", "EXIT"], &jobs)
        );
    }
    say!("\nTotal: {}/h", crate::optimizer::dollars(total));
    Ok(EXIT_OK)
}

async fn logs(ctx: &Ctx, address: &str, follow: bool) -> Result<i32> {
    let addr: Address = parse_addrs(&[address.to_string()])?.remove(0);
    let (config, _) = ctx.load_config()?;
    let registry = ctx.registry(Some(&config));
    let mut offsets: Vec<u64> = Vec::new();
    let mut pending: Vec<Vec<u8>> = Vec::new();
    let mut failures = 0;
    loop {
        let mut state = read_state(ctx).await?;
        let res = state.resources.get(&addr).cloned().ok_or_else(|| {
            Failure::new(format!("{addr} is not in state"))
                .hint("list addresses with `skyform state list`")
        })?;
        let cluster = match &res.spec {
            crate::model::Spec::Job(j) => state.resources.get(&j.cluster).cloned(),
            _ => None,
        };
        let provider = registry
            .get(&res.provider)
            .ok_or_else(|| Failure::new(format!("provider {} is not available", res.provider)))?;
        // Files on this machine are cheap to poll; remote hosts are asked once a second.
        let poll =
            std::time::Duration::from_millis(if res.provider == "local" { 200 } else { 1000 });
        let ranks =
            match drain_logs(provider, &res, cluster.as_ref(), &mut offsets, &mut pending).await {
                Ok(n) => {
                    failures = 0;
                    n
                }
                // Following, a host that does not answer for a moment is waited for.
                Err(e) if follow && !offsets.is_empty() && failures < 30 => {
                    failures += 1;
                    if failures == 1 {
                        eprintln!("warning: {}; trying again", e.message);
                    }
                    tokio::time::sleep(poll).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
        if ranks == 0 {
            return Err(Failure::new(format!("{addr} has no logs"))
                .hint("logs exist for jobs, managed jobs and services"));
        }
        if !follow {
            flush_partial(&mut pending);
            return Ok(EXIT_OK);
        }
        // Only this resource (and its cluster) is asked again, however big the state.
        let cluster_addr = match &res.spec {
            crate::model::Spec::Job(j) => Some(j.cluster.clone()),
            _ => None,
        };
        state
            .resources
            .retain(|a, _| a == &addr || Some(a) == cluster_addr.as_ref());
        plan::refresh::refresh(&mut state, &registry, 8).await;
        let finished = state
            .resources
            .get(&addr)
            .and_then(|r| r.computed.get("status"))
            .and_then(|s| s.as_str())
            .is_none_or(|s| ["SUCCEEDED", "FAILED", "CANCELLED", "LOST", "DEGRADED"].contains(&s));
        if finished {
            // One last read for lines written just before the end.
            drain_logs(provider, &res, cluster.as_ref(), &mut offsets, &mut pending).await?;
            flush_partial(&mut pending);
            return Ok(EXIT_OK);
        }
        tokio::time::sleep(poll).await;
    }
}

/// Prints everything each rank has logged past `offsets` (a log may come in several chunks);
/// returns the number of ranks.
async fn drain_logs(
    provider: &dyn crate::providers::Provider,
    res: &crate::state::ResourceState,
    cluster: Option<&crate::state::ResourceState>,
    offsets: &mut Vec<u64>,
    pending: &mut Vec<Vec<u8>>,
) -> Result<usize> {
    loop {
        let chunks = provider
            .read_logs(res, cluster, offsets)
            .await
            .map_err(|e| Failure::new(format!("cannot read the logs: {e}")))?;
        offsets.resize(chunks.len(), 0);
        pending.resize(chunks.len(), Vec::new());
        let multi = chunks.len() > 1;
        let mut more = false;
        for (rank, chunk) in chunks.iter().enumerate() {
            offsets[rank] += chunk.len() as u64;
            more |= chunk.len() >= 1 << 20;
            print_log(chunk, &mut pending[rank], multi.then_some(rank));
        }
        if !more {
            return Ok(chunks.len());
        }
    }
}

/// Prints a chunk of a log. With a rank, each complete line is prefixed with it and a
/// partial last line waits in `pending` for the rest; without one, bytes pass through.
fn print_log(chunk: &[u8], pending: &mut Vec<u8>, rank: Option<usize>) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match rank {
        None => {
            let _ = out.write_all(chunk);
        }
        Some(r) => {
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
fn flush_partial(pending: &mut [Vec<u8>]) {
    for (r, p) in pending.iter_mut().enumerate() {
        if !p.is_empty() {
            p.push(b'\n');
            print_log(&[], p, Some(r));
        }
    }
}

fn graph(ctx: &Ctx, format: &str) -> Result<i32> {
    let (config, inputs) = load(ctx, &VarFlags::default())?;
    let mut collect = config::Collect::default();
    let (_, mut diags) = config::evaluate(&config, &inputs, &mut collect);
    report(&config, &mut diags, ctx.style)?;
    let g = crate::graph::Graph::build(collect.instances.iter().map(|i| {
        (
            i.address.clone(),
            i.depends_on.iter().cloned().collect::<Vec<_>>(),
        )
    }));
    match format {
        "dot" => say_inline!("{}", g.to_dot()),
        "mermaid" => say_inline!("{}", g.to_mermaid()),
        other => {
            return Err(Failure::new(format!("unknown graph format {other:?}"))
                .hint("use -format dot or -format mermaid"));
        }
    }
    Ok(EXIT_OK)
}

fn check_workspace_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Failure::new(format!("{name:?} is not a workspace name"))
            .hint("use letters, digits, - and _ (at most 64)"))
    }
}

async fn workspace_cmd(ctx: &Ctx, command: super::WorkspaceCommand) -> Result<i32> {
    use super::WorkspaceCommand as W;
    let (config, _) = ctx.load_config()?;
    let backend = config.state_backend.clone().unwrap_or_default();
    let open = |ws: &str| ctx.open_store_in(&backend, codec_for(&backend)?, ws);
    let current = ctx.workspace()?;
    let mut all = open("default")?.workspaces().await?;
    all.retain(|w| w != "default");
    all.insert(0, "default".to_string());
    let select = |name: &str| -> Result<()> {
        let dir = ctx.dir.join(".skyform");
        std::fs::create_dir_all(&dir)
            .map_err(|e| Failure::new(format!("cannot create {}: {e}", dir.display())))?;
        LocalStore::write_atomic(&dir.join("workspace"), format!("{name}\n").as_bytes())?;
        Ok(())
    };
    match command {
        W::List => {
            for w in &all {
                let mark = if *w == current { "*" } else { " " };
                say!("{mark} {w}");
            }
        }
        W::Show => say!("{current}"),
        W::New { name } => {
            check_workspace_name(&name)?;
            if all.contains(&name) {
                return Err(Failure::new(format!("workspace {name:?} already exists"))
                    .hint(format!("skyform workspace select {name}")));
            }
            open(&name)?.write(&State::new()).await?;
            select(&name)?;
            say!("Created and switched to workspace {name:?}. Its state is empty.");
        }
        W::Select { name } => {
            check_workspace_name(&name)?;
            if !all.contains(&name) {
                return Err(Failure::new(format!("there is no workspace {name:?}"))
                    .hint(format!("skyform workspace new {name}")));
            }
            select(&name)?;
            say!("Switched to workspace {name:?}.");
        }
        W::Delete { name, force } => {
            if name == "default" {
                return Err(Failure::new("the default workspace cannot be deleted"));
            }
            if name == current {
                return Err(Failure::new(format!("{name:?} is the current workspace"))
                    .hint("skyform workspace select default, then delete it"));
            }
            if !all.contains(&name) {
                return Err(Failure::new(format!("there is no workspace {name:?}")));
            }
            let store = open(&name)?;
            let flags = LockFlags::immediate();
            let held = lock(store.as_ref(), "workspace delete", &flags).await?;
            let done = async {
                let n = store.read().await?.map_or(0, |s| s.resources.len());
                if n > 0 && !force {
                    return Err(Failure::new(format!(
                        "workspace {name:?} still has {n} resources; deleting it would forget them"
                    ))
                    .hint(format!(
                        "skyform -workspace {name} destroy first, or delete -force to forget them"
                    )));
                }
                store.remove().await?;
                Ok(())
            }
            .await;
            held.release().await;
            done?;
            say!("Deleted workspace {name:?}.");
        }
    }
    Ok(EXIT_OK)
}
