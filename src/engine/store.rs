//! Which state store a run uses, and what changes it: the backend `init` recorded, the one the
//! configuration names, migrations between them, workspaces, and state surgery.

use super::session::LockOptions;
use super::{Engine, Error, Notice, Result};
use crate::config::StateBackend;
use crate::model::Address;
use crate::state::{self, LocalStore, LockInfo, State, StateStore, seal::Codec};
use std::path::Path;
use std::time::Duration;

/// What `init` does when the `state` block changed since the last init.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChange {
    /// Refuse while the old backend holds a state.
    Refuse,
    /// Use the new backend as it is.
    Reconfigure,
    /// Copy the state over (overwriting one already there with `force_copy`), under the
    /// lock of both backends as `lock` says (`-lock`, `-lock-timeout`).
    Migrate { force_copy: bool, lock: LockOptions },
}

/// A held state lock (nothing with `-lock=false`); released explicitly, since unlocking a
/// remote store is a request.
#[derive(Debug)]
pub struct Held<'a> {
    store: &'a dyn StateStore,
    info: Option<LockInfo>,
}

impl Held<'_> {
    /// The lock, for a holder that outlives this borrow of the store and releases it
    /// itself.
    pub(super) fn into_info(self) -> Option<LockInfo> {
        self.info
    }

    pub async fn release(self) {
        if let Some(info) = &self.info {
            let _ = self.store.unlock(&info.id).await;
        }
    }
}

/// Takes the lock of `store` for `operation`, waiting up to `timeout`; with `lock = false`
/// holds nothing (writes stay conditional on object stores, so an unlocked run still cannot
/// overwrite a newer state there).
pub async fn lock<'a>(
    store: &'a dyn StateStore,
    operation: &str,
    lock: bool,
    timeout: Duration,
) -> Result<Held<'a>> {
    if !lock {
        return Ok(Held { store, info: None });
    }
    let info = LockInfo::new(operation);
    state::lock_with_timeout(store, &info, timeout).await?;
    Ok(Held {
        store,
        info: Some(info),
    })
}

/// The key the `state` block's `encryption_key_env` names, if any.
fn codec_for(b: &StateBackend) -> Result<Codec> {
    match b.settings.get("encryption_key_env") {
        Some(var) => Ok(Codec::new(Some(std::sync::Arc::new(
            state::seal::Sealer::from_env(var)?,
        )))),
        None => Ok(Codec::default()),
    }
}

/// The same state object, perhaps encrypted differently.
fn same_place(a: &StateBackend, b: &StateBackend) -> bool {
    let strip = |x: &StateBackend| {
        let mut x = x.clone();
        x.settings.remove("encryption_key_env");
        x
    };
    strip(a) == strip(b)
}

impl Engine {
    /// The backend the configuration's `skyform { state … }` block names (the local file by
    /// default).
    pub(super) fn wanted_backend(&self) -> StateBackend {
        self.config.state_backend.clone().unwrap_or_default()
    }

    /// The state store the configuration names (`.skyform/state.json` by default). When the
    /// block changed since `init` recorded it and the old backend holds a state, this
    /// refuses: the state must be migrated first.
    pub async fn store(&self) -> Result<Box<dyn StateStore>> {
        let wanted = self.wanted_backend();
        let recorded = self.recorded_backend();
        let changed = recorded != wanted;
        if changed {
            let old = self.open_store(&recorded)?;
            let left_behind = old.read().await.map_err(|e| {
                Error::new(format!(
                    "the state backend changed since init, and the state may still be in {}, which cannot be read: {e}",
                    old.describe()
                ))
                .hint("if the state is already where the configuration points (the same bucket at another endpoint, say): skyform init -reconfigure")
            })?;
            if left_behind.is_some() {
                return Err(Error::new(format!(
                    "the state backend changed since init: the state is in {} but the configuration names {}",
                    old.describe(),
                    self.open_store(&wanted)?.describe()
                ))
                .hint("skyform init -migrate-state copies it over; skyform init -reconfigure uses the new backend as it is"));
            }
            // Nothing was left behind: this is the backend now, so a later change of the
            // block is noticed even if `init` never ran.
            self.record_backend(&wanted)?;
        }
        self.open_store(&wanted)
    }

    /// Reads the state; fails when there is none yet.
    pub async fn read_state(&self) -> Result<State> {
        let store = self.store().await?;
        store.read().await?.ok_or_else(|| {
            Error::new(format!("no state at {}", store.describe()))
                .hint("run `skyform apply` first")
        })
    }

    /// Makes the backend the configuration names current (`init`): migrates or
    /// reconfigures as asked, and creates an empty state when there is none. Answers where
    /// the state is and whether it was created.
    pub async fn init_backend(&self, how: BackendChange) -> Result<(String, bool)> {
        let wanted = self.wanted_backend();
        let recorded = self.recorded_backend();
        if recorded != wanted {
            match how {
                BackendChange::Migrate { force_copy, lock } => {
                    self.migrate_state(&recorded, &wanted, force_copy, lock)
                        .await?;
                    self.record_backend(&wanted)?;
                }
                BackendChange::Reconfigure => self.record_backend(&wanted)?,
                // `store()` below refuses while the old backend holds a state, and records
                // the new one otherwise.
                BackendChange::Refuse => {}
            }
        }
        let store = self.store().await?;
        let created = if store.read().await?.is_none() {
            store.write(&State::new()).await?;
            true
        } else {
            false
        };
        Ok((store.describe(), created))
    }

    /// The codec the configuration's `state` block asks for.
    pub fn configured_codec(&self) -> Result<Codec> {
        codec_for(&self.wanted_backend())
    }

    pub(super) fn open_store(&self, b: &StateBackend) -> Result<Box<dyn StateStore>> {
        self.open_store_with(b, codec_for(b)?)
    }

    fn open_store_with(&self, b: &StateBackend, codec: Codec) -> Result<Box<dyn StateStore>> {
        self.open_store_in(b, codec, &self.workspace()?)
    }

    fn open_store_in(
        &self,
        b: &StateBackend,
        codec: Codec,
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
                Error::new(format!("cannot open the state backend: {e}")).hint(
                    "fix the `skyform { state … }` block; docs/state.md lists each backend's settings",
                )
            })
    }

    /// The store of another workspace of the configured backend.
    fn workspace_store(&self, workspace: &str) -> Result<Box<dyn StateStore>> {
        let b = self.wanted_backend();
        self.open_store_in(&b, codec_for(&b)?, workspace)
    }

    /// The backend `init` last set up (`.skyform/backend.json`); the local file before any.
    fn recorded_backend(&self) -> StateBackend {
        std::fs::read(self.dir.join(".skyform").join("backend.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn record_backend(&self, b: &StateBackend) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(b).unwrap_or_default();
        self.write_dot_file("backend.json", &bytes)
    }

    /// Writes a file under `.skyform/` atomically.
    fn write_dot_file(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let dir = self.dir.join(".skyform");
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::new(format!("cannot create {}: {e}", dir.display())))?;
        LocalStore::write_atomic(&dir.join(name), bytes)?;
        Ok(())
    }

    /// When the store refuses or fails a write, the state this run holds (which may record
    /// resources that now exist) is kept in `.skyform/errored-state.json`, so nothing is
    /// lost.
    pub(crate) fn keep_errored_state(&self, state: &State, e: state::StateError) -> Error {
        let path = self.dir.join(".skyform").join("errored-state.json");
        // Encrypted like the state it stands in for.
        let kept = self
            .configured_codec()
            .map_err(|e| e.to_string())
            .and_then(|c| c.encode(state).map_err(|e| e.to_string()))
            .and_then(|bytes| {
                self.write_dot_file("errored-state.json", &bytes)
                    .map_err(|e| e.to_string())
            });
        let hint = e.hint();
        let mut message = e.to_string();
        let hint = match kept {
            Ok(()) => {
                message.push_str("\nthis run's state is kept in .skyform/errored-state.json");
                hint.or_else(|| {
                    Some(
                        "once the store works again: skyform state push .skyform/errored-state.json"
                            .into(),
                    )
                })
            }
            Err(w) => {
                message.push_str(&format!(
                    "\nand keeping this run's state in {} failed too: {w}",
                    path.display()
                ));
                hint
            }
        };
        Error::Failed { message, hint }
    }

    /// Copies the state from `from` to `to`, holding both locks.
    async fn migrate_state(
        &self,
        from: &StateBackend,
        to: &StateBackend,
        force_copy: bool,
        options: LockOptions,
    ) -> Result<()> {
        let (old_codec, new_codec) = (codec_for(from)?, codec_for(to)?);
        let (locking, wait) = (options.lock, options.timeout);
        if same_place(from, to) {
            // Only the encryption changes: one store that reads the old way and writes the
            // new.
            let codec = Codec {
                accept_plaintext: old_codec.decrypt.is_none(),
                decrypt: old_codec.decrypt,
                encrypt: new_codec.encrypt,
            };
            let store = self.open_store_with(to, codec)?;
            let held = lock(store.as_ref(), "migrate-state", locking, wait).await?;
            let done = async {
                if let Some(state) = store.read().await? {
                    store.write(&state).await?;
                    self.reporter.notice(Notice::StateResealed {
                        place: store.describe(),
                        encrypted: to.settings.contains_key("encryption_key_env"),
                        serial: state.serial,
                    });
                }
                Ok(())
            }
            .await;
            held.release().await;
            return done;
        }
        let old = self.open_store_with(from, old_codec)?;
        // A plaintext state already in the new place is read, to be compared.
        let new = self.open_store_with(
            to,
            Codec {
                accept_plaintext: true,
                ..new_codec
            },
        )?;
        let old_lock = lock(old.as_ref(), "migrate-state", locking, wait).await?;
        let new_lock = match lock(new.as_ref(), "migrate-state", locking, wait).await {
            Ok(l) => l,
            Err(e) => {
                old_lock.release().await;
                return Err(e);
            }
        };
        let copied = self
            .copy_state(old.as_ref(), new.as_ref(), force_copy)
            .await;
        new_lock.release().await;
        old_lock.release().await;
        copied
    }

    async fn copy_state(
        &self,
        old: &dyn StateStore,
        new: &dyn StateStore,
        force_copy: bool,
    ) -> Result<()> {
        let Some(state) = old.read().await? else {
            self.reporter.notice(Notice::NothingToMigrate {
                from: old.describe(),
            });
            return Ok(());
        };
        if let Some(there) = new.read().await?
            && there != state
            && !force_copy
        {
            return Err(Error::new(format!(
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
        self.reporter.notice(Notice::StateCopied {
            serial: state.serial,
            resources: state.resources.len(),
            from: old.describe(),
            to: new.describe(),
        });
        Ok(())
    }

    /// Locks the state, lets `edit` change it and writes it back; answers what `edit` said.
    pub async fn edit_state(
        &self,
        operation: &str,
        options: LockOptions,
        edit: impl FnOnce(&mut State) -> Result<String>,
    ) -> Result<String> {
        let store = self.store().await?;
        let held = lock(store.as_ref(), operation, options.lock, options.timeout).await?;
        let result = async {
            let mut state = store.read().await?.unwrap_or_default();
            let message = edit(&mut state)?;
            store.write(&state).await?;
            Ok(message)
        }
        .await;
        held.release().await;
        result
    }

    /// `state rm`: forgets a resource (it still exists in the world).
    pub async fn state_rm(&self, addr: &Address, lock: LockOptions) -> Result<String> {
        self.edit_state("state rm", lock, |state| {
            if state.resources.remove(addr).is_none() {
                return Err(Error::new(format!("{addr} is not in state")));
            }
            state.serial += 1;
            Ok(format!(
                "Removed {addr} from state (it still exists in the world; skyform forgot it)."
            ))
        })
        .await
    }

    /// `state mv`: the same resource under another address.
    pub async fn state_mv(
        &self,
        from: &Address,
        to: &Address,
        lock: LockOptions,
    ) -> Result<String> {
        if from.kind != to.kind {
            return Err(Error::new(format!(
                "cannot move a {} to a {}",
                from.kind, to.kind
            )));
        }
        self.edit_state("state mv", lock, |state| {
            if state.resources.contains_key(to) {
                return Err(Error::new(format!("{to} already exists in state")));
            }
            let res = state
                .resources
                .remove(from)
                .ok_or_else(|| Error::new(format!("{from} is not in state")))?;
            state.resources.insert(to.clone(), res);
            state.serial += 1;
            Ok(format!("Moved {from} to {to}."))
        })
        .await
    }

    /// `state push`: replaces the state with a file's (sealed or plaintext), refusing another
    /// lineage or an older serial unless `force`.
    pub async fn state_push(&self, file: &Path, force: bool, lock: LockOptions) -> Result<String> {
        let bytes = std::fs::read(file)
            .map_err(|e| Error::new(format!("cannot read {}: {e}", file.display())))?;
        let codec = Codec {
            accept_plaintext: true,
            ..self.configured_codec()?
        };
        let new = codec.decode(&bytes, &file.display().to_string())?;
        let existed = self.store().await?.read().await?.is_some();
        self.edit_state("state push", lock, |state| {
            if existed && !force {
                if state.lineage != new.lineage {
                    return Err(Error::new(format!(
                        "{} has lineage {}, the state has {}",
                        file.display(),
                        new.lineage,
                        state.lineage
                    ))
                    .hint("pass -force to replace a state of another lineage"));
                }
                if new.serial <= state.serial {
                    return Err(Error::new(format!(
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
        .await
    }

    /// The lock `id` (a prefix of at least 4 characters) names, if it is the current one.
    pub async fn lock_holder(&self, id: &str) -> Result<LockInfo> {
        let store = self.store().await?;
        let holder = store
            .lock_holder()
            .await?
            .ok_or_else(|| Error::new("the state is not locked"))?;
        if !holder.id.starts_with(id) || id.len() < 4 {
            return Err(Error::new(format!(
                "lock id {id} does not match the current lock {}",
                holder.id
            ))
            .hint("copy the id from the lock error"));
        }
        Ok(holder)
    }

    /// Removes a lock (`force-unlock`).
    pub async fn unlock(&self, holder: &LockInfo) -> Result<()> {
        self.store().await?.unlock(&holder.id).await?;
        Ok(())
    }

    /// Every workspace of the configured backend, `default` first.
    pub async fn workspaces(&self) -> Result<Vec<String>> {
        let mut all = self.workspace_store("default")?.workspaces().await?;
        all.retain(|w| w != "default");
        all.insert(0, "default".to_string());
        Ok(all)
    }

    /// Makes `name` the workspace later runs use.
    pub fn select_workspace(&self, name: &str) -> Result<()> {
        super::check_workspace_name(name)?;
        self.write_dot_file("workspace", format!("{name}\n").as_bytes())
    }

    /// Creates a workspace with an empty state and selects it.
    pub async fn new_workspace(&self, name: &str, options: LockOptions) -> Result<()> {
        super::check_workspace_name(name)?;
        if self.workspaces().await?.iter().any(|w| w == name) {
            return Err(Error::new(format!("workspace {name:?} already exists"))
                .hint(format!("skyform workspace select {name}")));
        }
        // Under its lock, as Terraform makes one: two runs creating it at once do not both
        // write a first state.
        let store = self.workspace_store(name)?;
        let held = lock(
            store.as_ref(),
            "workspace new",
            options.lock,
            options.timeout,
        )
        .await?;
        let written = store.write(&State::new()).await;
        held.release().await;
        written?;
        self.select_workspace(name)
    }

    /// Deletes a workspace's state; refused while it holds resources, unless `force`.
    pub async fn delete_workspace(
        &self,
        name: &str,
        force: bool,
        options: LockOptions,
    ) -> Result<()> {
        if name == "default" {
            return Err(Error::new("the default workspace cannot be deleted"));
        }
        if name == self.workspace()? {
            return Err(Error::new(format!("{name:?} is the current workspace"))
                .hint("skyform workspace select default, then delete it"));
        }
        if !self.workspaces().await?.iter().any(|w| w == name) {
            return Err(Error::new(format!("there is no workspace {name:?}")));
        }
        let store = self.workspace_store(name)?;
        let held = lock(
            store.as_ref(),
            "workspace delete",
            options.lock,
            options.timeout,
        )
        .await?;
        let done = async {
            let n = store.read().await?.map_or(0, |s| s.resources.len());
            if n > 0 && !force {
                return Err(Error::new(format!(
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
        done
    }
}
