//! The command line's flags and commands (clap), and Terraform's single-dash spelling.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "skyform",
    version,
    about = "Declarative reconciler for AI compute: plan and apply clusters, jobs and services"
)]
pub struct Cli {
    /// Run as if started in DIR.
    #[arg(long, global = true, value_name = "DIR")]
    pub chdir: Option<PathBuf>,
    /// No colour in output.
    #[arg(long, global = true)]
    pub no_color: bool,
    /// The workspace to work in (default: the one `workspace select` chose, else `default`).
    #[arg(long, global = true, env = "SKYFORM_WORKSPACE", value_name = "NAME")]
    pub workspace: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Args, Clone, Default)]
pub struct VarFlags {
    /// Set a variable: -var NAME=VALUE (repeatable).
    #[arg(long = "var", value_name = "NAME=VALUE")]
    pub vars: Vec<String>,
    /// Read variables from an HCL file (repeatable).
    #[arg(long = "var-file", value_name = "FILE")]
    pub var_files: Vec<PathBuf>,
}

/// How a plan is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PlanFormat {
    Human,
    Markdown,
    Json,
}

impl PlanFormat {
    /// `-format`, with `-json` as its shorthand.
    pub fn pick(format: Option<PlanFormat>, json: bool) -> PlanFormat {
        format.unwrap_or(if json {
            PlanFormat::Json
        } else {
            PlanFormat::Human
        })
    }
}

#[derive(Debug, clap::Args, Clone)]
pub struct RunFlags {
    /// How many changes run at once.
    #[arg(long, default_value_t = 10, env = "SKYFORM_PARALLELISM")]
    pub parallelism: usize,
    /// How long one placement may take before apply removes what it made and moves on.
    #[arg(long = "attempt-timeout", default_value = "120s", env = "SKYFORM_ATTEMPT_TIMEOUT", value_parser = humantime::parse_duration)]
    pub attempt_timeout: std::time::Duration,
    /// With retry_until_up, the pause before going down the placements again.
    #[arg(long = "retry-delay", default_value = "30s", env = "SKYFORM_RETRY_DELAY", value_parser = humantime::parse_duration)]
    pub retry_delay: std::time::Duration,
    /// Apply only if the state's serial is N (nobody applied since it was read).
    #[arg(long = "check-serial", value_name = "N", env = "SKYFORM_CHECK_SERIAL")]
    pub check_serial: Option<u64>,
    /// Report as JSON lines on stdout (planned, attempt, failover, applied, error, summary).
    #[arg(long)]
    pub json: bool,
}

impl RunFlags {
    pub fn failover(&self) -> crate::apply::FailoverOptions {
        crate::apply::FailoverOptions {
            attempt_timeout: self.attempt_timeout,
            retry_delay: self.retry_delay,
            ..crate::apply::FailoverOptions::default()
        }
    }
}

#[derive(Debug, clap::Args, Clone)]
pub struct LockFlags {
    /// How long to wait for the state lock (e.g. 30s, 5m).
    #[arg(long = "lock-timeout", default_value = "0s", env = "SKYFORM_LOCK_TIMEOUT", value_parser = humantime::parse_duration)]
    pub lock_timeout: std::time::Duration,
    /// -lock=false skips the state lock (dangerous: only when no other run can be active).
    #[arg(long = "lock", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub lock: bool,
}

impl LockFlags {
    pub fn options(&self) -> crate::engine::LockOptions {
        crate::engine::LockOptions {
            lock: self.lock,
            timeout: self.lock_timeout,
        }
    }
}

#[derive(Debug, clap::Args, Clone)]
pub struct PlanFlags {
    #[command(flatten)]
    pub vars: VarFlags,
    /// Only these resources (and what they depend on). Repeatable.
    #[arg(long = "target", value_name = "ADDR")]
    pub target: Vec<String>,
    /// Replace these resources even if unchanged. Repeatable.
    #[arg(long = "replace", value_name = "ADDR")]
    pub replace: Vec<String>,
    /// Skip asking providers what is running.
    #[arg(long = "refresh", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub refresh: bool,
    /// Only find what changed outside skyform; apply records it in state and changes nothing.
    #[arg(long = "refresh-only")]
    pub refresh_only: bool,
    #[command(flatten)]
    pub lock: LockFlags,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the configuration, create the state, report which infra is usable.
    Init {
        dir: Option<PathBuf>,
        /// Copy the state from the backend used before to the one the configuration names.
        #[arg(long)]
        migrate_state: bool,
        /// Use the configuration's backend as it is, leaving the old state where it is.
        #[arg(long)]
        reconfigure: bool,
        /// With -migrate-state: overwrite a state the new backend already holds.
        #[arg(long)]
        force_copy: bool,
    },
    /// Parse, evaluate and type-check, offline.
    Validate {
        dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        vars: VarFlags,
    },
    /// Rewrite *.sky.hcl files in canonical format.
    Fmt {
        dir: Option<PathBuf>,
        /// Only check; exit 3 if files would change.
        #[arg(long)]
        check: bool,
        /// Show the changes as a diff.
        #[arg(long)]
        diff: bool,
    },
    /// Convert SkyPilot task, managed-job and service YAML into skyform HCL.
    Convert {
        /// YAML files (`-` for standard input).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Write FILE.sky.hcl per input (and infra.sky.hcl) into DIR, not to standard output.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Print JSON: each input's HCL and warnings.
        #[arg(long)]
        json: bool,
        /// Plain tasks become managed jobs (as with `sky jobs launch`).
        #[arg(long)]
        managed: bool,
    },
    /// Refresh, diff and show what apply would do.
    Plan {
        dir: Option<PathBuf>,
        #[command(flatten)]
        flags: PlanFlags,
        /// Write the plan to FILE for `skyform apply FILE`.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Exit 0 with no changes, 2 with changes, 1 on error.
        #[arg(long = "detailed-exitcode")]
        detailed_exitcode: bool,
        /// The same as `-format json`.
        #[arg(long)]
        json: bool,
        /// human (default), markdown (for a pull request comment) or json.
        #[arg(long, value_enum, value_name = "FORMAT")]
        format: Option<PlanFormat>,
        /// Plan to destroy everything in state.
        #[arg(long)]
        destroy: bool,
    },
    /// Carry out a saved plan, or plan, confirm and apply.
    Apply {
        /// A plan file from `plan -out`.
        planfile: Option<PathBuf>,
        #[command(flatten)]
        flags: PlanFlags,
        #[arg(long = "auto-approve")]
        auto_approve: bool,
        /// Never prompt.
        #[arg(long = "input", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL", env = "SKYFORM_INPUT", value_parser = clap::builder::BoolishValueParser::new())]
        input: bool,
        #[command(flatten)]
        run: RunFlags,
        /// Wait for submitted jobs to finish; fail if any failed.
        #[arg(long)]
        wait: bool,
    },
    /// Destroy everything in state.
    Destroy {
        dir: Option<PathBuf>,
        #[arg(long = "auto-approve")]
        auto_approve: bool,
        #[arg(long = "input", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL", env = "SKYFORM_INPUT", value_parser = clap::builder::BoolishValueParser::new())]
        input: bool,
        #[command(flatten)]
        vars: VarFlags,
        #[command(flatten)]
        lock: LockFlags,
        #[command(flatten)]
        run: RunFlags,
    },
    /// Show a saved plan or the current state.
    Show {
        planfile: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        /// For a plan file: human (default), markdown or json.
        #[arg(long, value_enum, value_name = "FORMAT")]
        format: Option<PlanFormat>,
    },
    /// Outputs from state.
    Output {
        name: Option<String>,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        raw: bool,
    },
    /// State surgery.
    State {
        #[command(subcommand)]
        command: StateCommand,
    },
    /// The controller that keeps managed jobs running between applies.
    Controller {
        #[command(subcommand)]
        command: ControllerCommand,
    },
    /// Separate states, side by side in one backend.
    Workspace {
        #[command(subcommand)]
        command: WorkspaceCommand,
    },
    /// Remove a stale lock.
    #[command(name = "force-unlock")]
    ForceUnlock {
        lock_id: String,
        #[arg(long)]
        force: bool,
    },
    /// Clusters, jobs and services with their placement and cost.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// A shell, or a command, on a cluster's head node.
    Ssh {
        cluster: String,
        /// The command and its arguments (after `--`); none: an interactive shell.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Stop a cluster's machines, keeping their disks (clouds that support it).
    Stop {
        cluster: String,
        #[command(flatten)]
        lock: LockFlags,
    },
    /// Start a stopped cluster again.
    Start {
        cluster: String,
        #[command(flatten)]
        lock: LockFlags,
    },
    /// A job's output.
    Logs {
        address: String,
        /// Keep following.
        #[arg(short, long)]
        follow: bool,
    },
    /// The ranked offers for a request, from the catalogs (like `sky show-gpus`).
    Offers {
        #[command(flatten)]
        request: OffersRequest,
        /// Every offer, not the first 20.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
        /// Where the catalogs are (default: catalog_dir of the configuration, else
        /// ~/.skyform/catalogs).
        #[arg(long = "catalog-dir", env = "SKYFORM_CATALOG_DIR")]
        catalog_dir: Option<PathBuf>,
    },
    /// The price catalogs.
    Catalog {
        #[command(subcommand)]
        command: CatalogCommand,
        #[arg(long = "catalog-dir", env = "SKYFORM_CATALOG_DIR", global = true)]
        catalog_dir: Option<PathBuf>,
    },
    /// The dependency graph.
    Graph {
        dir: Option<PathBuf>,
        #[arg(long, default_value = "dot")]
        format: String,
    },
    /// (internal) run a node agent.
    #[command(name = "__agent", hide = true)]
    Agent { cluster_dir: PathBuf, rank: u32 },
    /// A node's side of the head's link to it (runtime internals).
    #[command(name = "__link", hide = true)]
    Link { cluster_dir: PathBuf, rank: u32 },
    /// One call to a cluster's head on stdin, the answer on stdout (runtime internals).
    #[command(name = "__runtime", hide = true)]
    Runtime { cluster_dir: PathBuf },
}

/// What `skyform offers` is asked for.
#[derive(Debug, clap::Args, Clone)]
pub struct OffersRequest {
    /// Accelerators: NAME[:COUNT], or several separated by commas (cheapest of).
    pub accelerators: Option<String>,
    #[arg(long)]
    pub cpus: Option<String>,
    #[arg(long)]
    pub memory: Option<String>,
    #[arg(long)]
    pub spot: bool,
    /// cloud[/region[/zone]], with "*" wildcards.
    #[arg(long)]
    pub infra: Option<String>,
    #[arg(long = "instance-type")]
    pub instance_type: Option<String>,
    #[arg(long = "max-hourly-cost")]
    pub max_hourly_cost: Option<f64>,
    #[arg(long, default_value_t = 1)]
    pub nodes: u32,
}

#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// What is loaded: clouds, files, rows and their age.
    List,
    /// Download the current public catalogs.
    Update {
        /// Base URL: files are fetched from URL/<cloud>/vms.csv.
        #[arg(long, env = "SKYFORM_CATALOG_URL", default_value = crate::optimizer::catalog::DEFAULT_CATALOG_URL)]
        url: String,
        /// Which clouds.
        #[arg(long, value_delimiter = ',', default_value = "aws,gcp,lambda")]
        clouds: Vec<String>,
        /// Give up on a download after this long.
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum WorkspaceCommand {
    /// Every workspace; the current one is marked with `*`.
    List,
    /// The current workspace.
    Show,
    /// Create a workspace with an empty state and switch to it.
    New { name: String },
    /// Switch to a workspace.
    Select { name: String },
    /// Delete a workspace's state (refused while it holds resources, unless -force).
    Delete {
        name: String,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum ControllerCommand {
    /// Run in the foreground (under systemd, or in a container) until stopped.
    Run {
        /// Stop once no managed job needs watching (how apply starts it).
        #[arg(long = "exit-when-idle")]
        exit_when_idle: bool,
    },
    /// Start it in the background, unless it runs.
    Start,
    /// Who runs it, and what it watches.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Stop it; managed jobs keep running, and the next apply or start resumes watching.
    Stop,
}

#[derive(Debug, Clone, Subcommand)]
pub enum StateCommand {
    List,
    Show {
        address: String,
    },
    Rm {
        address: String,
    },
    Mv {
        from: String,
        to: String,
    },
    Pull,
    Push {
        file: PathBuf,
        #[arg(long)]
        force: bool,
    },
}

/// Terraform-style single-dash long flags (`-auto-approve`) become clap's `--auto-approve`.
pub fn normalize_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut passthrough = false;
    for a in args {
        if passthrough || a == "--" {
            passthrough = true;
            out.push(a);
            continue;
        }
        let b = a.as_bytes();
        if b.len() > 2 && b[0] == b'-' && b[1] != b'-' && !b[1].is_ascii_digit() {
            out.push(format!("-{a}"));
        } else {
            out.push(a);
        }
    }
    out
}
