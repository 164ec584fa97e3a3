//! A session: the state store opened and locked for one operation, the state read, and the
//! run's plan and apply against it. The lock is held from `Engine::session` until
//! `Session::release`, so a plan, the user's approval and its apply see one state.

use super::store::lock;
use super::{Engine, Error, Notice, Result, parse_addresses, refresh};
use crate::apply::{Applier, ApplyError, FailoverOptions, Summary};
use crate::config::{self, Diagnostic, InputValue};
use crate::model::{Address, Kind, Spec};
use crate::plan::{self, Options, Plan};
use crate::providers::{Created, Registry};
use crate::state::{ResourceState, State, StateStore, Status};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How long to wait for the state lock, or no lock at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockOptions {
    pub lock: bool,
    pub timeout: Duration,
}

impl Default for LockOptions {
    /// Take the lock now or fail.
    fn default() -> Self {
        LockOptions {
            lock: true,
            timeout: Duration::ZERO,
        }
    }
}

/// What a plan is asked for.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Plan to destroy everything in state.
    pub destroy: bool,
    /// Only these resources (and what they depend on).
    pub targets: Vec<Address>,
    /// Replace these even if unchanged.
    pub replace: Vec<Address>,
    /// Ask the backends what is running first.
    pub refresh: bool,
    /// Only record what changed outside skyform.
    pub refresh_only: bool,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            destroy: false,
            targets: Vec::new(),
            replace: Vec::new(),
            refresh: true,
            refresh_only: false,
        }
    }
}

impl PlanOptions {
    /// From addresses as the command line gives them.
    pub fn with_addresses(mut self, targets: &[String], replace: &[String]) -> Result<Self> {
        self.targets = parse_addresses(targets)?;
        self.replace = parse_addresses(replace)?;
        Ok(self)
    }
}

/// How apply carries out a plan.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// How many changes run at once.
    pub parallelism: usize,
    pub failover: FailoverOptions,
    /// Set to `true` to stop starting new changes (Ctrl-C): those in flight finish.
    pub interrupt: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            parallelism: 10,
            failover: FailoverOptions::default(),
            interrupt: None,
        }
    }
}

/// The state store locked for one operation, and the state as this session knows it.
pub struct Session<'e> {
    engine: &'e Engine,
    store: Box<dyn StateStore>,
    lock: Option<crate::state::LockInfo>,
    /// Whether the store held no state when the session began.
    fresh: bool,
    /// The state as read from the store, copied only when something will compare with it
    /// (before a refresh-only plan's refresh; `None` in a fresh session): a copy of a
    /// large state costs as much as the state.
    stored: Option<State>,
    /// Whether a refresh changed the state's resources (see [`Session::keep_refreshed`]).
    refresh_changed: bool,
    /// The state as this session knows it (refreshed, applied to).
    pub state: State,
    /// The variables in use: the configuration's, or a saved plan's.
    inputs: BTreeMap<String, InputValue>,
}

impl std::fmt::Debug for Session<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("store", &self.store.describe())
            .field("serial", &self.state.serial)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Opens the state store, locks it for `operation` and reads the state.
    pub async fn session(&self, operation: &str, options: LockOptions) -> Result<Session<'_>> {
        let store = self.store().await?;
        let info = lock(store.as_ref(), operation, options.lock, options.timeout)
            .await?
            .into_info();
        let mut session = Session {
            engine: self,
            store,
            lock: info,
            fresh: true,
            stored: None,
            refresh_changed: false,
            state: State::default(),
            inputs: self.inputs.clone(),
        };
        match session.store.read().await {
            Ok(stored) => {
                session.fresh = stored.is_none();
                session.state = stored.unwrap_or_default();
                Ok(session)
            }
            Err(e) => {
                session.release().await;
                Err(e.into())
            }
        }
    }
}

impl Session<'_> {
    /// Releases the state lock.
    pub async fn release(self) {
        if let Some(info) = &self.lock {
            let _ = self.store.unlock(&info.id).await;
        }
    }

    /// Writes the session's state to the store.
    pub async fn write(&mut self) -> Result<()> {
        self.store.write(&self.state).await?;
        Ok(())
    }

    /// Whether the store held no state when the session began.
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// Keeps a copy of the state as read, for what compares with it after a refresh.
    fn keep_stored(&mut self) {
        if !self.fresh && self.stored.is_none() {
            self.stored = Some(self.state.clone());
        }
    }

    /// Fails unless the state's serial is `want` (`-check-serial`).
    pub fn check_serial(&self, want: u64) -> Result<()> {
        if self.state.serial != want {
            return Err(Error::new(format!(
                "the state's serial is {}, not {want} (-check-serial): it changed since you looked",
                self.state.serial
            ))
            .hint("look at what changed with `skyform show`, then plan again"));
        }
        Ok(())
    }

    /// Refreshes the state from the backends.
    async fn refresh(&mut self, registry: &std::sync::Arc<Registry>) -> refresh::Refreshed {
        let t = std::time::Instant::now();
        let n = self.state.resources.len();
        let r = refresh::refresh(&mut self.state, registry, 64).await;
        self.refresh_changed |= r.changed;
        self.engine.reporter.notice(Notice::Refreshed {
            resources: n,
            seconds: t.elapsed().as_secs_f64(),
        });
        r
    }

    /// Refresh and plan.
    pub async fn plan(&mut self, opts: &PlanOptions) -> Result<Plan> {
        let engine = self.engine;
        let reporter = engine.reporter();
        if opts.refresh_only && (opts.destroy || !opts.refresh) {
            return Err(Error::new(
                "-refresh-only cannot be combined with -destroy or -refresh=false",
            ));
        }
        let config = engine.config();
        // Only a refresh-only plan compares with the state before refresh; a full copy of a
        // large state is not free.
        let before = opts.refresh_only.then(|| self.state.clone());
        let registry = engine.registry();
        let mut options = Options {
            destroy: opts.destroy,
            targets: opts.targets.clone(),
            replace: opts.replace.clone(),
            ..Options::default()
        };
        if opts.refresh && !opts.refresh_only && self.lock.is_some() {
            self.release_unfinished(&registry).await;
        }
        if opts.refresh && !self.state.resources.is_empty() {
            let r = self.refresh(&registry).await;
            options.degraded = r.degraded;
            options.drift = r.drift;
        }
        // Destroying needs no placements (and so no catalogs).
        let (offerings, unavailable) = engine.offerings(!opts.destroy).await?;
        for why in unavailable {
            reporter.notice(Notice::Warning(why));
        }
        let mut diags = config::Diagnostics::default();
        let mut adopting = Vec::new();
        if !opts.destroy && !opts.refresh_only {
            self.find_imports(&registry, &mut options, &mut diags).await;
            adopting = self.find_adoptions(&registry, &mut options).await;
        }
        let (plan, plan_diags) =
            plan::plan(config, &self.inputs, &self.state, &offerings, &options);
        for (addr, id) in &adopting {
            if !plan.changes.iter().any(|c| &c.address == addr) {
                reporter.notice(Notice::Warning(format!(
                    "{id} was made by this state for {addr}, which the configuration no longer declares; delete it by hand, or declare {addr} again to adopt it"
                )));
            }
        }
        let mut all = plan_diags;
        for i in &config.root.imports {
            if options.imports.contains_key(&i.to)
                && !plan.changes.iter().any(|c| c.address == i.to)
            {
                all.push(
                    Diagnostic::error(format!(
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
        all.extend(diags);
        engine.report(all)?;
        if let Some(before) = &before {
            return Ok(refresh_only(plan, before, &self.state));
        }
        Ok(plan)
    }

    /// The clusters `import` blocks name that state does not hold yet, asked of their
    /// backends; each goes into `options.imports`, problems into `diags`.
    async fn find_imports(
        &self,
        registry: &Registry,
        options: &mut Options,
        diags: &mut config::Diagnostics,
    ) {
        let mut imported: Vec<(Address, serde_json::Value)> = Vec::new();
        for i in &self.engine.config().root.imports {
            if self.state.resources.contains_key(&i.to) {
                continue; // Already in state: nothing to import.
            }
            match import_one(registry, &i.to, &i.id).await {
                Ok(found) => {
                    // One cluster in the world is one resource in state: destroying one
                    // address would take the other's machines.
                    let holder = self
                        .state
                        .resources
                        .iter()
                        .filter(|(a, _)| a.kind == Kind::Cluster)
                        .map(|(a, r)| (a, &r.private))
                        .chain(imported.iter().map(|(a, p)| (a, p)))
                        .find(|(_, p)| same_cluster(p, &found.private))
                        .map(|(a, _)| a.clone());
                    if let Some(other) = holder {
                        diags.push(
                            Diagnostic::error(format!(
                                "cannot import {}: {} is that cluster already",
                                i.to, other
                            ))
                            .at(i.file, Some(i.span.clone()))
                            .label("this import")
                            .hint(format!(
                                "remove this import block, or `skyform state mv {other} {}`",
                                i.to
                            )),
                        );
                        continue;
                    }
                    imported.push((i.to.clone(), found.private.clone()));
                    options
                        .imports
                        .insert(i.to.clone(), (i.id.clone(), found.computed));
                }
                Err(e) => diags.push(
                    Diagnostic::error(format!("cannot import {}: {e}", i.to))
                        .at(i.file, Some(i.span.clone()))
                        .label("this import")
                        .hint("check the id: local:SANDBOX_DIR, ssh:POOL/TOKEN or aws:REGION/TOKEN (docs/language.md#import)"),
                ),
            }
        }
    }

    /// Gives back what killed runs of this state took and never recorded (only a run that
    /// holds the lock may: another could be making it right now), before refresh (which
    /// then finds those creations gone) and the survey (which offers what was freed).
    async fn release_unfinished(&self, registry: &Registry) {
        if self.state.lineage.is_empty() {
            return;
        }
        let reporter = self.engine.reporter();
        for (name, p) in &registry.providers {
            let held: Vec<&ResourceState> = self
                .state
                .resources
                .values()
                .filter(|r| r.provider == *name)
                .collect();
            match p.release_unfinished(&self.state.lineage, &held).await {
                Ok(lines) => {
                    for l in lines {
                        reporter.notice(Notice::Warning(l));
                    }
                }
                Err(e) => reporter.notice(Notice::Warning(format!(
                    "cannot look for what killed runs left on {name}: {e}"
                ))),
            }
        }
    }

    /// Clusters a backend holds under this state's lineage that state does not know (the
    /// state lost them: restored from an older copy, `state rm`): adopted through an
    /// implicit import, never made a second time. Answers the addresses and ids adopted.
    async fn find_adoptions(
        &self,
        registry: &Registry,
        options: &mut Options,
    ) -> Vec<(Address, String)> {
        let reporter = self.engine.reporter();
        let mut adopting = Vec::new();
        if self.state.lineage.is_empty() {
            return adopting;
        }
        for (name, p) in &registry.providers {
            let held: Vec<&ResourceState> = self
                .state
                .resources
                .values()
                .filter(|r| r.provider == *name)
                .collect();
            let found = match p.find_own(&self.state.lineage, &held).await {
                Ok(f) => f,
                Err(e) => {
                    reporter.notice(Notice::Warning(format!(
                        "cannot look for {name} clusters of this state: {e}"
                    )));
                    continue;
                }
            };
            for (addr, id) in found {
                if self.state.resources.contains_key(&addr) || options.imports.contains_key(&addr) {
                    continue;
                }
                let id = format!("{name}:{id}");
                match import_one(registry, &addr, &id).await {
                    Ok(found) => {
                        options
                            .imports
                            .insert(addr.clone(), (id.clone(), found.computed));
                        adopting.push((addr, id));
                    }
                    Err(e) => reporter.notice(Notice::Warning(format!(
                        "{addr} has a cluster at {id} that cannot be adopted: {e}"
                    ))),
                }
            }
        }
        adopting
    }

    /// Takes a saved plan: checks it was made by this version, for this configuration and
    /// against this state, adopts its variables, and refreshes so apply works from what is
    /// true now. A refresh-only plan must still describe everything that moved.
    pub async fn take_saved(&mut self, plan: Plan) -> Result<Plan> {
        let p = plan;
        if p.skyform_version != env!("CARGO_PKG_VERSION") {
            return Err(Error::new(format!(
                "the plan was made by skyform {}, this is {}",
                p.skyform_version,
                env!("CARGO_PKG_VERSION")
            ))
            .hint("make a new plan with this version"));
        }
        if p.config_digest != self.engine.config().digest {
            return Err(
                Error::new("the configuration changed since the plan was made")
                    .hint("make a new plan: skyform plan -out FILE"),
            );
        }
        let fresh = self.is_fresh();
        let state_moved = if fresh {
            p.serial != 0
        } else {
            p.lineage != self.state.lineage || p.serial != self.state.serial
        };
        if state_moved {
            return Err(Error::new(format!(
                "stale plan: it was made against state serial {} of lineage {}, the state is now serial {} of lineage {}",
                p.serial, p.lineage, self.state.serial, self.state.lineage
            ))
            .hint("make a new plan: skyform plan -out FILE"));
        }
        if fresh {
            self.state.lineage = p.lineage.clone();
        }
        // The plan's variables are the ones used from here on.
        self.inputs = p
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
        let registry = self.engine.registry();
        if p.refresh_only {
            self.keep_stored();
        }
        let r = refresh::refresh(&mut self.state, &registry, 64).await;
        self.refresh_changed |= r.changed;
        if p.refresh_only
            && let Some(before) = &self.stored
        {
            // What the review saw is what gets recorded: anything else moved since.
            let unseen: Vec<String> = refresh::changes(before, &self.state)
                .into_iter()
                .filter(|d| !p.drift.contains(d))
                .map(|d| crate::render::human::drift(&d))
                .collect();
            if !unseen.is_empty() {
                return Err(Error::new(format!(
                    "more changed outside skyform since the refresh-only plan was made:\n  {}",
                    unseen.join("\n  ")
                ))
                .hint("make a new plan: skyform plan -refresh-only -out FILE"));
            }
        }
        Ok(p)
    }

    /// When a plan has nothing to do: keeps what refresh learned (resources gone), if
    /// anything.
    pub async fn keep_refreshed(&mut self) -> Result<()> {
        if !self.fresh && self.refresh_changed {
            self.state.serial += 1;
            self.store.write(&self.state).await?;
        }
        Ok(())
    }

    /// Carries out a plan: imports, then the changes (concurrently, with failover, state
    /// written after each), then outputs and the ssh config. A refresh-only plan records
    /// what refresh found and touches nothing.
    /// What was done comes back as a [`Summary`]; the state as written is `self.state`.
    pub async fn apply(&mut self, plan: &Plan, opts: ApplyOptions) -> Result<Summary> {
        let engine = self.engine;
        if plan.refresh_only {
            self.state.serial += 1;
            self.store.write(&self.state).await?;
            return Ok(Summary::default());
        }
        let imported = self.apply_imports(plan).await?;
        let registry = engine.registry();
        engine.reporter.notice(Notice::Applying(plan));
        let config = engine.config();
        let inputs = &self.inputs;
        let resolve = |state: &State| -> BTreeMap<Address, Spec> {
            let (p, _) = plan::plan(config, inputs, state, &[], &Options::default());
            p.changes
                .into_iter()
                .filter_map(|c| {
                    c.after
                        .map(|a| (c.address, std::sync::Arc::unwrap_or_clone(a)))
                })
                .collect()
        };
        let on_event = |e: &crate::apply::Event| engine.reporter.notice(Notice::Apply(e));
        // Without a caller's interrupt, one that never fires.
        let (_never, quiet) = tokio::sync::watch::channel(false);
        let applier = Applier {
            resolve: Some(&resolve),
            registry: registry.clone(),
            store: self.store.as_ref(),
            root: config
                .dir
                .canonicalize()
                .unwrap_or_else(|_| config.dir.clone()),
            parallelism: opts.parallelism.max(1),
            on_event: &on_event,
            interrupt: opts.interrupt.unwrap_or(quiet),
            failover: opts.failover,
        };
        let mut summary = match applier.apply(plan, &mut self.state).await {
            Ok(s) => s,
            Err(ApplyError::State(e)) => return Err(engine.keep_errored_state(&self.state, e)),
        };
        summary.imported = imported;
        // Outputs, evaluated against the state as it is now (none once everything is
        // destroyed).
        if plan.destroy {
            self.state.outputs.clear();
        } else {
            let outputs = outputs_now(config, &self.inputs, &self.state);
            crate::apply::set_outputs(&mut self.state, &outputs);
        }
        self.state.serial += 1;
        if let Err(e) = self.store.write(&self.state).await {
            return Err(engine.keep_errored_state(&self.state, e));
        }
        engine.write_ssh_config(&self.state);
        self.keep_controller().await;
        Ok(summary)
    }

    /// Starts the controller in the background when managed jobs need watching and none
    /// runs (it stopped, or the machine restarted since the last apply).
    async fn keep_controller(&self) {
        use super::clusters::FINISHED;
        use crate::controller::handoff::NAME;
        let watched = self.state.resources.values().any(|r| {
            r.provider == NAME
                && !r
                    .computed
                    .get("status")
                    .and_then(|s| s.as_str())
                    .is_some_and(|s| FINISHED.contains(&s))
        });
        let engine = self.engine;
        if !watched || crate::config::controller::declared(engine.config()) {
            return;
        }
        if let Err(e) = crate::controller::spawn::ensure_running(
            self.store.as_ref(),
            engine.dir(),
            &engine.config().workspace,
            engine.agent_exe(),
            &crate::controller::spawn::passed_vars(engine.inputs()),
        )
        .await
        {
            engine
                .reporter()
                .notice(Notice::Warning(format!("cannot start the controller: {e}")));
        }
    }

    /// Takes the clusters the plan imports into state (again asking their backends, since
    /// the world may have moved since the plan), writing state after each.
    async fn apply_imports(&mut self, plan: &Plan) -> Result<usize> {
        let registry = self.engine.registry();
        let mut done = 0;
        for c in plan.changes.iter().filter(|c| c.import.is_some()) {
            let id = c.import.clone().unwrap_or_default();
            if self.state.resources.contains_key(&c.address) {
                continue;
            }
            let found = import_one(&registry, &c.address, &id)
                .await
                .map_err(|e| Error::new(format!("cannot import {}: {e}", c.address)))?;
            let provider = id.split_once(':').map(|(b, _)| b).unwrap_or_default();
            self.state.resources.insert(
                c.address.clone(),
                ResourceState {
                    computed: found.computed.into(),
                    private: found.private,
                    dependencies: c.depends_on.clone(),
                    sensitive: c.sensitive.clone(),
                    ..ResourceState::new(
                        Status::Ready,
                        crate::model::backend::canonical(provider),
                        c.after.clone().ok_or_else(|| {
                            Error::new(format!("the plan has no specification for {}", c.address))
                        })?,
                    )
                },
            );
            self.state.serial += 1;
            self.store.write(&self.state).await?;
            done += 1;
            self.engine.reporter.notice(Notice::Imported {
                address: &c.address,
                id: &id,
            });
        }
        Ok(done)
    }
}

/// The refresh-only form of a plan: what apply would record, with refresh's account of why
/// for the resources that changed (a cluster already recorded as broken is no news).
fn refresh_only(plan: Plan, before: &State, after: &State) -> Plan {
    let changes = refresh::changes(before, after);
    let changed: BTreeSet<&Address> = changes.iter().map(|d| &d.address).collect();
    let mut p = plan.into_refresh_only();
    p.drift.retain(|d| changed.contains(&d.address));
    for d in &changes {
        if !p.drift.contains(d) {
            p.drift.push(d.clone());
        }
    }
    p
}

/// The outputs as the state stands, leaving out those still unknown (their resource failed).
fn outputs_now(
    config: &config::Config,
    inputs: &BTreeMap<String, InputValue>,
    state: &State,
) -> BTreeMap<String, config::OutputValue> {
    let (p, _) = plan::plan(config, inputs, state, &[], &Options::default());
    p.outputs
        .into_iter()
        .filter_map(|(k, o)| {
            let v = o.after?;
            (!crate::model::contains_unknown(&v)).then_some((
                k,
                config::OutputValue {
                    value: v,
                    sensitive: o.sensitive,
                },
            ))
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
    registry: &Registry,
    to: &Address,
    id: &str,
) -> std::result::Result<Created, String> {
    let (backend, rest) = id
        .split_once(':')
        .ok_or_else(|| format!("{id:?} does not name its backend"))?;
    let p = registry
        .get(backend)
        .ok_or_else(|| format!("no backend {backend:?} in this build"))?;
    p.import(to, rest).await.map_err(|e| e.message)
}
