//! `skyform convert`: SkyPilot task, managed-job, pipeline and service YAML → skyform HCL.
//!
//! Pure: YAML text in, canonical HCL (what `skyform fmt` leaves as is) and warnings out. Every
//! field SkyPilot's schema accepts either maps to its skyform equivalent or becomes a `#`
//! comment at that place plus a [`Warning`] naming the field, its line and what to do.
//! Fields outside the schema, wrong types and YAML syntax errors are a [`ConvertError`] with
//! the file, line and column. docs/from-skypilot.md has the field-by-field table.

mod doc;
mod hcl;
mod resources;
mod service;
mod yaml;

use doc::Doc;
use hcl::{Block, Item};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use yaml::{Node, V};

/// Something kept as a comment (or changed in meaning), for the user to act on.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Warning {
    pub file: String,
    pub line: usize,
    /// The SkyPilot field, e.g. `resources.labels`.
    pub field: String,
    /// What skyform does with it and what to do.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file, self.line, self.field, self.message
        )
    }
}

/// A file that cannot be converted: where and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ConvertError {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for ConvertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.col, self.message
        )
    }
}

impl std::error::Error for ConvertError {}

/// One converted file.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    /// Canonical HCL for one `.sky.hcl` file (without `infra` blocks: see [`Converter::infra`]).
    pub hcl: String,
    pub warnings: Vec<Warning>,
}

/// Converts several files into one configuration: names and variables stay unique across
/// them, and the clouds they name are collected for [`Converter::infra`].
#[derive(Debug, Default)]
pub struct Converter {
    /// Plain tasks become managed jobs (`sky jobs launch`), as with `-managed`.
    pub managed: bool,
    /// The way from the output's directory to where `sky` would run (`../..`), put before
    /// relative workdirs: SkyPilot reads them from there, skyform from the configuration's
    /// directory. None: the output goes where the YAML's paths start.
    pub workdir_base: Option<String>,
    names: BTreeSet<String>,
    variables: BTreeSet<String>,
    clouds: BTreeSet<String>,
}

/// Keys of a task document (SkyPilot's `get_task_schema`, plus the keys of older versions
/// that the corpus still uses).
const TASK_KEYS: &[&str] = &[
    "name",
    "workdir",
    "num_nodes",
    "resources",
    "file_mounts",
    "setup",
    "run",
    "envs",
    "secrets",
    "managed_secrets",
    "service",
    "pool",
    "volumes",
    "config",
    "api_server_access",
    "event_callback",
    "inputs",
    "outputs",
    "file_mounts_mapping",
    "volume_mounts",
    "_metadata",
    "_user_specified_yaml",
    "experimental",
];

/// Top-level fields with no skyform equivalent, and what to do instead.
fn top_advice(key: &str) -> &'static str {
    match key {
        "file_mounts" => {
            "skyform has no file_mounts yet: put local files in workdir, and copy bucket data in setup (e.g. `aws s3 sync`, `gcloud storage cp`)"
        }
        "managed_secrets" => {
            "skyform has no managed secrets: declare a sensitive variable and pass it in `secrets`"
        }
        "pool" => {
            "skyform has no worker pools: use a cluster with `num_nodes` and queue jobs on it"
        }
        "volumes" => {
            "skyform has no volumes yet: mount the storage in setup, or use the backend's own (e.g. a Kubernetes PVC outside skyform)"
        }
        "config" => {
            "skyform has no per-task config overrides: set the backend in its `infra` block"
        }
        "api_server_access" => "skyform has no API server; nothing to do",
        "event_callback" => {
            "skyform has no event callbacks: run the command after `skyform apply -wait`"
        }
        "inputs" | "outputs" => "SkyPilot's experimental data-size hints have no equivalent",
        "experimental" => {
            "skyform has no per-task config overrides: set the backend in its `infra` block"
        }
        _ => "SkyPilot's internal field has no equivalent; it is left out",
    }
}

impl Converter {
    pub fn new(managed: bool) -> Converter {
        Converter {
            managed,
            ..Converter::default()
        }
    }

    /// `infra` blocks for the catalog clouds the converted files name (`infra = "aws/…"`),
    /// so that `skyform plan` can place them; `None` when they name none.
    pub fn infra(&self) -> Option<String> {
        if self.clouds.is_empty() {
            return None;
        }
        let mut items = vec![Item::Comment(vec![
            "The infra the SkyPilot files name. Add `infra \"local\" {}` to keep this machine as an option.".into(),
        ])];
        for c in &self.clouds {
            let block = match c.split_once('/') {
                None if crate::model::backend::is_catalog_cloud(c) => {
                    Block::new(format!("infra {}", hcl::string(c)))
                }
                None if c == "kubernetes" => {
                    items.push(Item::Comment(vec![
                        "infra = \"kubernetes\" uses every `infra \"kubernetes\" \"CONTEXT\" {}` block: declare one per kubeconfig context.".into(),
                    ]));
                    continue;
                }
                None => {
                    items.push(Item::Comment(vec![format!(
                        "infra = \"{c}\" needs `infra \"{c}\" \"NAME\" {{ … }}` blocks."
                    )]));
                    continue;
                }
                // The context's (or pool's) name is the block's name.
                Some(("kubernetes", ctx)) if label(ctx) == ctx => {
                    Block::new(format!("infra \"kubernetes\" {}", hcl::string(ctx)))
                }
                Some(("ssh", pool)) if label(pool) == pool => {
                    let mut b = Block::new(format!("infra \"ssh\" {}", hcl::string(pool)));
                    b.items.push(Item::Comment(vec![
                        "The pool's machines: SkyPilot keeps them in ~/.sky/ssh_node_pools.yaml."
                            .into(),
                    ]));
                    b.attr("hosts", "[]".into());
                    b
                }
                Some((kind, name)) => {
                    items.push(Item::Comment(vec![format!(
                        "{kind}/{name} needs an `infra \"{kind}\" \"NAME\"` block (a name of letters, digits, _ and -; set context = \"{name}\") and infra = \"{kind}/NAME\"."
                    )]));
                    continue;
                }
            };
            items.push(Item::Block(block));
        }
        Some(crate::cli::fmt::format(&hcl::render(&items)))
    }

    /// Converts one file (`file` names it in messages and gives the default name).
    pub fn convert(&mut self, file: &str, text: &str) -> Result<Converted, ConvertError> {
        let mut doc = Doc::new(file, text);
        let docs = yaml::load(text).map_err(|e| ConvertError {
            file: file.into(),
            line: e.line,
            col: e.col,
            message: format!("invalid YAML: {}", e.message),
        })?;
        if docs.is_empty() {
            return Err(ConvertError {
                file: file.into(),
                line: 1,
                col: 1,
                message: "no task in this file (it is empty)".into(),
            });
        }
        for d in &docs {
            if d.as_map().is_none() {
                return Err(doc.error(d, format!("a task must be a mapping, found {}", d.kind())));
            }
        }
        let ends = doc.document_ends(&docs);
        let stem = file_stem(file);
        let mut items: Vec<Item> = Vec::new();
        let mut blocks: Vec<Item> = Vec::new();
        let header_keys = |d: &Node| -> Vec<String> {
            d.as_map()
                .unwrap_or_default()
                .iter()
                .map(|(k, _)| k.key_text())
                .collect()
        };
        let execution = |d: &Node| {
            d.as_map()
                .unwrap_or_default()
                .iter()
                .find(|(k, _)| k.key_text() == "execution")
                .and_then(|(_, v)| v.as_str().map(str::to_string))
        };
        let group = docs.len() >= 2 && execution(&docs[0]).as_deref() == Some("parallel");
        let chain_header = !group && docs.len() >= 2 && {
            let keys = header_keys(&docs[0]);
            keys.iter().any(|k| k == "name") && keys.iter().all(|k| k == "name" || k == "execution")
        };
        if group || chain_header {
            let header = &docs[0];
            let dag = header
                .as_map()
                .unwrap_or_default()
                .iter()
                .find(|(k, _)| k.key_text() == "name")
                .and_then(|(_, v)| v.scalar_text())
                .unwrap_or_else(|| stem.clone());
            let tasks = &docs[1..];
            let what = if group {
                "job group: its jobs start together, as managed jobs with no order between them"
            } else {
                "pipeline: each task is a managed job that starts after the one before has succeeded"
            };
            items.push(Item::Comment(vec![format!("SkyPilot {what} ({dag}).")]));
            self.header(&mut doc, header, ends[0], &mut items)?;
            let mut prev: Option<String> = None;
            for (i, t) in tasks.iter().enumerate() {
                let fallback = format!("{dag}-{}", i + 1);
                let dep = if group { None } else { prev.clone() };
                let name =
                    self.task(&mut doc, t, ends[i + 1], &fallback, true, dep, &mut blocks)?;
                prev = Some(format!("managed_job.{name}"));
            }
        } else if docs.len() >= 2 {
            items.push(Item::Comment(vec![
                "SkyPilot pipeline: each task is a managed job that starts after the one before has succeeded.".into(),
            ]));
            let mut prev: Option<String> = None;
            for (i, t) in docs.iter().enumerate() {
                let fallback = format!("{stem}-{}", i + 1);
                let name = self.task(
                    &mut doc,
                    t,
                    ends[i],
                    &fallback,
                    true,
                    prev.clone(),
                    &mut blocks,
                )?;
                prev = Some(format!("managed_job.{name}"));
            }
        } else {
            self.task(&mut doc, &docs[0], ends[0], &stem, false, None, &mut blocks)?;
        }
        let mut all = vec![Item::Comment(vec![format!(
            "Converted from {} by `skyform convert`.",
            base_name(file)
        )])];
        all.append(&mut doc.variables);
        all.extend(items);
        all.extend(blocks);
        self.clouds.extend(doc.clouds.iter().cloned());
        Ok(Converted {
            hcl: crate::cli::fmt::format(&hcl::render(&all)),
            warnings: doc.warnings,
        })
    }

    /// The header document of a pipeline or job group: its settings skyform has no
    /// equivalent of become comments.
    fn header(
        &mut self,
        doc: &mut Doc,
        header: &Node,
        end: usize,
        items: &mut Vec<Item>,
    ) -> Result<(), ConvertError> {
        let m = header.as_map().unwrap_or_default();
        let ends = doc.entry_ends(m, end);
        for (i, (k, v)) in m.iter().enumerate() {
            match k.key_text().as_str() {
                "name" => {}
                "execution" => match v.as_str() {
                    Some("serial") | Some("parallel") => {}
                    _ => {
                        return Err(doc.error(
                            v,
                            format!("execution must be \"serial\" or \"parallel\", found {}", describe(v)),
                        ));
                    }
                },
                "primary_tasks" => items.push(doc.unsupported(
                    k,
                    ends[i],
                    "primary_tasks",
                    "skyform has no primary tasks in a group: the other jobs are not stopped when these end",
                )),
                "termination_delay" => items.push(doc.unsupported(
                    k,
                    ends[i],
                    "termination_delay",
                    "skyform has no termination delay for a job group",
                )),
                other => items.push(doc.unsupported(
                    k,
                    ends[i],
                    other,
                    "SkyPilot ignores this header key too",
                )),
            }
        }
        Ok(())
    }

    /// A unique resource name for `kinds`, from `wanted`.
    fn name(&mut self, wanted: &str, kinds: &[&str]) -> String {
        let base = label(wanted);
        let mut n = 1;
        loop {
            let name = if n == 1 {
                base.clone()
            } else {
                format!("{base}-{n}")
            };
            if kinds
                .iter()
                .all(|k| !self.names.contains(&format!("{k}.{name}")))
            {
                for k in kinds {
                    self.names.insert(format!("{k}.{name}"));
                }
                return name;
            }
            n += 1;
        }
    }

    /// One task document → its blocks (appended to `out`); returns the main block's name.
    #[allow(clippy::too_many_arguments)]
    fn task(
        &mut self,
        doc: &mut Doc,
        node: &Node,
        end: usize,
        fallback: &str,
        in_pipeline: bool,
        depends_on: Option<String>,
        out: &mut Vec<Item>,
    ) -> Result<String, ConvertError> {
        let m = node.as_map().unwrap_or_default();
        let get = |name: &str| m.iter().find(|(k, _)| k.key_text() == name);
        for (k, _) in m {
            let key = k.key_text();
            if !TASK_KEYS.contains(&key.as_str()) {
                return Err(doc.unknown(k, &key, TASK_KEYS, "a task"));
            }
        }
        let is_service = get("service").is_some_and(|(_, v)| !v.is_null());
        let has_recovery = get("resources").is_some_and(|(_, r)| resources::has_recovery(r));
        let kind = if is_service {
            Kind::Service
        } else if in_pipeline || self.managed || has_recovery {
            Kind::ManagedJob
        } else {
            Kind::Cluster
        };
        let wanted = match get("name") {
            Some((_, v)) if !v.is_null() => match v.scalar_text() {
                Some(s) => s,
                None => {
                    return Err(doc.error(v, format!("name must be a string, found {}", v.kind())));
                }
            },
            _ => fallback.to_string(),
        };
        let name = match kind {
            Kind::Cluster => self.name(&wanted, &["cluster", "job"]),
            Kind::ManagedJob => self.name(&wanted, &["managed_job"]),
            Kind::Service => self.name(&wanted, &["service"]),
        };
        let num_nodes = match get("num_nodes") {
            None => 1,
            Some((_, v)) if v.is_null() => 1,
            Some((_, v)) => match v.as_int() {
                Some(n) if n > 0 => n,
                _ => {
                    return Err(doc.error(
                        v,
                        format!(
                            "num_nodes must be a whole number > 0, found {}",
                            describe(v)
                        ),
                    ));
                }
            },
        };
        // envs first: their values are substituted into workdir and the service section.
        let mut envs: Vec<(String, String)> = Vec::new();
        let mut env_values: BTreeMap<String, Option<String>> = BTreeMap::new();
        let mut envs_line = None;
        if let Some((k, v)) = get("envs") {
            envs_line = Some(k.line);
            match &v.v {
                V::Null => {}
                V::Map(entries) => {
                    for (ek, ev) in entries {
                        let var = ek.key_text();
                        if !env_name_ok(&var) {
                            return Err(doc.error(
                                ek,
                                format!(
                                    "envs: {var:?} is not a variable name ([a-zA-Z_][a-zA-Z0-9_]*)"
                                ),
                            ));
                        }
                        if ev.is_null() {
                            self.variable(doc, &var, false, None, "envs");
                            envs.push((var.clone(), format!("var.{var}")));
                            env_values.insert(var, None);
                        } else {
                            let Some(text) = ev.scalar_text() else {
                                return Err(doc.error(
                                    ev,
                                    format!(
                                        "envs.{var} must be a string, a number or null, found {}",
                                        ev.kind()
                                    ),
                                ));
                            };
                            envs.push((var.clone(), hcl::string(&text)));
                            env_values.insert(var, Some(text));
                        }
                    }
                }
                _ => {
                    return Err(doc.error(v, format!("envs must be a mapping, found {}", v.kind())));
                }
            }
        }
        let mut secrets: Vec<(String, String)> = Vec::new();
        let mut main: Vec<(usize, Item)> = Vec::new();
        let mut job: Vec<(usize, Item)> = Vec::new();
        let mut job_accel: Option<String> = None;
        let ends = doc.entry_ends(m, end);
        let mut setup_present = false;
        let mut run_present = false;
        let block_kind = kind;
        for (i, (k, v)) in m.iter().enumerate() {
            let key = k.key_text();
            let line = k.line;
            match key.as_str() {
                "name" | "envs" => {}
                "num_nodes" => {
                    if kind == Kind::Service {
                        if num_nodes > 1 {
                            main.push((line, doc.unsupported(k, ends[i], "num_nodes",
                                "skyform's service replicas are one node each: run a multi-node server as a cluster and job instead")));
                        }
                    } else {
                        main.push((line, Item::Attr("num_nodes".into(), num_nodes.to_string())));
                        if kind == Kind::Cluster {
                            job.push((line, Item::Attr("num_nodes".into(), num_nodes.to_string())));
                        }
                    }
                }
                "workdir" => match &v.v {
                    V::Null => {}
                    V::Str(s) => {
                        let path = match &self.workdir_base {
                            Some(base) if !s.starts_with(['/', '~', '$']) => {
                                let rel = s.trim_start_matches("./");
                                if rel.is_empty() || rel == "." {
                                    base.clone()
                                } else {
                                    format!("{base}/{rel}")
                                }
                            }
                            _ => s.clone(),
                        };
                        main.push((line, Item::Attr("workdir".into(), subst(&path, &env_values))));
                    }
                    V::Map(_) => main.push((line, doc.unsupported(k, ends[i], "workdir",
                        "skyform's workdir is a local directory: clone the repository first (git clone URL && git checkout REF) and point workdir at it, or clone it in setup"))),
                    _ => return Err(doc.error(v, format!("workdir must be a path or {{url, ref}}, found {}", v.kind()))),
                },
                "resources" => {
                    let r = resources::convert(doc, v, ends[i], kind, num_nodes)?;
                    if !r.items.is_empty() {
                        let mut b = Block::new("resources");
                        b.items = sorted(r.items);
                        main.push((line, Item::Block(b)));
                    }
                    main.extend(r.outside);
                    job_accel = r.job_accel;
                }
                "setup" => match &v.v {
                    V::Null => {}
                    V::Str(s) => {
                        setup_present = true;
                        main.push((line, Item::Attr("setup".into(), hcl::text(s))));
                    }
                    _ => return Err(doc.error(v, format!("setup must be a string, found {}", v.kind()))),
                },
                "run" => match &v.v {
                    V::Null => {}
                    V::Str(s) => {
                        run_present = true;
                        let item = Item::Attr("run".into(), hcl::text(s));
                        if kind == Kind::Cluster {
                            job.push((line, item));
                        } else {
                            main.push((line, item));
                        }
                    }
                    _ => return Err(doc.error(v, format!("run must be a string, found {}", v.kind()))),
                },
                "secrets" => match &v.v {
                    V::Null => {}
                    V::Map(entries) => {
                        for (sk, sv) in entries {
                            let var = sk.key_text();
                            if !env_name_ok(&var) {
                                return Err(doc.error(sk, format!("secrets: {var:?} is not a variable name")));
                            }
                            let default = if sv.is_null() {
                                None
                            } else {
                                match sv.scalar_text() {
                                    Some(t) => Some(t),
                                    None => return Err(doc.error(sv, format!("secrets.{var} must be a string or null, found {}", sv.kind()))),
                                }
                            };
                            self.variable(doc, &var, true, default, "secrets");
                            secrets.push((var.clone(), format!("var.{var}")));
                            env_values.insert(var.clone(), None);
                        }
                        let attr = Item::Attr("secrets".into(), hcl::object(&secrets));
                        if kind == Kind::Cluster {
                            job.push((line, attr));
                        } else {
                            main.push((line, attr));
                        }
                    }
                    V::Seq(_) => main.push((line, doc.unsupported(k, ends[i], "secrets",
                        "skyform has no managed secret references: declare a sensitive variable per secret and pass it in `secrets`"))),
                    _ => return Err(doc.error(v, format!("secrets must be a mapping or a list, found {}", v.kind()))),
                },
                "service" => {
                    if !v.is_null() {
                        service::convert(doc, v, ends[i], &env_values, &mut main)?;
                    }
                }
                "file_mounts" => {
                    if let Some(entries) = v.as_map() {
                        for (fk, _) in entries {
                            doc.warn(fk.line, &format!("file_mounts.{}", fk.key_text()), top_advice("file_mounts"));
                        }
                        if !entries.is_empty() {
                            main.push((line, doc.comment(k, ends[i], "file_mounts", top_advice("file_mounts"))));
                        }
                    } else if !v.is_null() {
                        return Err(doc.error(v, format!("file_mounts must be a mapping, found {}", v.kind())));
                    }
                }
                other => {
                    if !v.is_null() {
                        main.push((line, doc.unsupported(k, ends[i], other, top_advice(other))));
                    }
                }
            }
        }
        // envs (and, for a plain task, the secrets setup needs) in one attribute.
        if kind == Kind::Cluster && setup_present && !secrets.is_empty() {
            let line = envs_line.unwrap_or_else(|| {
                m.iter()
                    .find(|(k, _)| k.key_text() == "secrets")
                    .map_or(0, |(k, _)| k.line)
            });
            main.push((line, Item::Comment(vec![
                "The secrets are in envs too, for setup (a cluster has no secrets); they make envs sensitive, so plans mask it.".into(),
            ])));
        }
        if let Some(line) = envs_line {
            let mut all = envs.clone();
            if kind == Kind::Cluster && setup_present {
                all.extend(secrets.iter().cloned());
            }
            if !all.is_empty() {
                main.push((line, Item::Attr("envs".into(), hcl::object(&all))));
            }
        } else if kind == Kind::Cluster && setup_present && !secrets.is_empty() {
            let line = m
                .iter()
                .find(|(k, _)| k.key_text() == "secrets")
                .map_or(0, |(k, _)| k.line);
            main.push((line, Item::Attr("envs".into(), hcl::object(&secrets))));
        }
        let mut main = sorted(main);
        if let Some(dep) = depends_on {
            main.insert(0, Item::Attr("depends_on".into(), format!("[{dep}]")));
        }
        if kind != Kind::Cluster && !run_present {
            main.push(Item::Comment(vec![
                "The YAML has no run: nothing runs after setup.".into(),
            ]));
            main.push(Item::Attr("run".into(), hcl::string("true")));
        }
        let head = match block_kind {
            Kind::Cluster => "cluster",
            Kind::ManagedJob => "managed_job",
            Kind::Service => "service",
        };
        out.push(Item::Block(Block {
            head: format!("{head} {}", hcl::string(&name)),
            items: main,
        }));
        if kind == Kind::Cluster && run_present {
            let mut items = vec![Item::Attr("cluster".into(), format!("cluster.{name}"))];
            let mut job = sorted(job);
            if let Some(acc) = job_accel {
                // The job asks for the cluster's GPUs, as SkyPilot's job gets them.
                let mut r = Block::new("resources");
                r.attr("accelerators", acc);
                let at = job
                    .iter()
                    .position(|i| matches!(i, Item::Attr(n, _) if n == "run" || n == "secrets"))
                    .unwrap_or(job.len());
                job.insert(at, Item::Block(r));
            }
            items.extend(job);
            out.push(Item::Block(Block {
                head: format!("job {}", hcl::string(&name)),
                items,
            }));
        }
        Ok(name)
    }

    /// Declares `variable "NAME"` once per configuration (null envs and secrets).
    fn variable(
        &mut self,
        doc: &mut Doc,
        name: &str,
        sensitive: bool,
        default: Option<String>,
        from: &str,
    ) {
        if !self.variables.insert(name.to_string()) {
            return;
        }
        let mut b = Block::new(format!("variable {}", hcl::string(name)));
        b.attr("type", "string".into());
        let desc = match (&default, from) {
            (None, "envs") => format!(
                "envs.{name} of {} (null there: give it with -var {name}=… or SKYFORM_VAR_{name})",
                base_name(&doc.file)
            ),
            (None, _) => format!(
                "secrets.{name} of {} (give it with -var {name}=… or SKYFORM_VAR_{name})",
                base_name(&doc.file)
            ),
            (Some(_), _) => format!("{from}.{name} of {}", base_name(&doc.file)),
        };
        b.attr("description", hcl::string(&desc));
        if let Some(d) = default {
            b.attr("default", hcl::string(&d));
        }
        if sensitive {
            b.attr("sensitive", "true".into());
        }
        doc.variables.push(Item::Block(b));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A plain task: a cluster and a job on it.
    Cluster,
    ManagedJob,
    Service,
}

fn sorted(mut items: Vec<(usize, Item)>) -> Vec<Item> {
    items.sort_by_key(|(l, _)| *l);
    items.into_iter().map(|(_, i)| i).collect()
}

fn env_name_ok(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A value for "found …" messages.
fn describe(v: &Node) -> String {
    match v.scalar_text() {
        Some(t) if !matches!(v.v, V::Null) => format!("{} ({t:?})", v.kind()),
        _ => v.kind().to_string(),
    }
}

/// A block label from a SkyPilot name: letters, digits, `_` and `-`, starting with a letter
/// or `_`.
fn label(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if s.is_empty() {
        s = "task".into();
    }
    if !s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        s.insert(0, '_');
    }
    s
}

fn base_name(file: &str) -> String {
    std::path::Path::new(file)
        .file_name()
        .map_or_else(|| file.to_string(), |f| f.to_string_lossy().into_owned())
}

/// The name a file gives when its task has none: `llm/serve.sky.yaml` → `serve`.
fn file_stem(file: &str) -> String {
    let mut b = base_name(file);
    for ext in [".yaml", ".yml", ".sky"] {
        if let Some(s) = b.strip_suffix(ext) {
            b = s.to_string();
        }
    }
    if b.is_empty() || b == "-" {
        "task".into()
    } else {
        b
    }
}

/// A string with SkyPilot's env substitution (`$X`, `${X}`) done as `sky launch` does it
/// in workdir and the service section: a known value inline, a variable as `${var.X}`.
fn subst(s: &str, envs: &BTreeMap<String, Option<String>>) -> String {
    let mut out = String::from("\"");
    let mut rest = s;
    let mut lit = String::new();
    while let Some(pos) = rest.find('$') {
        lit.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let braced = after.starts_with('{');
        let name_from = if braced { &after[1..] } else { after };
        let len = name_from
            .char_indices()
            .take_while(|(_, c)| c.is_ascii_alphanumeric() || *c == '_')
            .count();
        let name = &name_from[..len];
        let closed = !braced || name_from[len..].starts_with('}');
        match envs.get(name) {
            Some(value)
                if !name.is_empty()
                    && closed
                    && !name.starts_with(|c: char| c.is_ascii_digit()) =>
            {
                let consumed = 1 + usize::from(braced) * 2 + len;
                match value {
                    Some(v) => lit.push_str(v),
                    None => {
                        out.push_str(&escape_inner(&lit));
                        lit.clear();
                        out.push_str(&format!("${{var.{name}}}"));
                    }
                }
                rest = &rest[pos + consumed..];
            }
            _ => {
                lit.push('$');
                rest = after;
            }
        }
    }
    lit.push_str(rest);
    out.push_str(&escape_inner(&lit));
    out.push('"');
    out
}

fn escape_inner(s: &str) -> String {
    let q = hcl::string(s);
    q[1..q.len() - 1].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_stems() {
        assert_eq!(label("gpt-oss.120b"), "gpt-oss-120b");
        assert_eq!(label("3d"), "_3d");
        assert_eq!(file_stem("a/b/gpt-oss-vllm.sky.yaml"), "gpt-oss-vllm");
        assert_eq!(file_stem("-"), "task");
    }

    #[test]
    fn substitutes_envs_like_skypilot() {
        let mut e = BTreeMap::new();
        e.insert("MODEL".to_string(), Some("m1".to_string()));
        e.insert("TOKEN".to_string(), None);
        assert_eq!(
            subst("$MODEL/${TOKEN}/$OTHER", &e),
            "\"m1/${var.TOKEN}/$OTHER\""
        );
    }
}
