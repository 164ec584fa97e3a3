//! The command line's flags and commands (clap), and Terraform's single-dash spelling.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "skyform",
    version,
    about = "Declarative reconciler for AI compute: plan and apply clusters, jobs and services",
    disable_help_flag = true,
    disable_version_flag = true
)]
pub struct Cli {
    /// Run as if started in DIR.
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        help_heading = "Global Options"
    )]
    pub chdir: Option<PathBuf>,
    /// No colour in output.
    #[arg(long, global = true, help_heading = "Global Options")]
    pub no_color: bool,
    /// The workspace to work in (default: the one `workspace select` chose, else `default`).
    #[arg(
        long,
        global = true,
        env = "SKYFORM_WORKSPACE",
        value_name = "NAME",
        help_heading = "Global Options"
    )]
    pub workspace: Option<String>,
    /// This help (`skyform help COMMAND` too).
    #[arg(short = 'h', long = "help", global = true, action = clap::ArgAction::Help, help_heading = "Global Options")]
    pub help: Option<bool>,
    /// The version (the same as `skyform version`).
    #[arg(short = 'V', long = "version", visible_short_alias = 'v', action = clap::ArgAction::Version, help_heading = "Global Options")]
    pub version: Option<bool>,
    #[command(subcommand)]
    pub command: Command,
}

/// The command line, with the root help laid out as Terraform's: the main workflow
/// commands first, then all the others, then the global options.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    const MAIN: [&str; 5] = ["init", "validate", "plan", "apply", "destroy"];
    let cmd = Cli::command();
    let listed: Vec<&clap::Command> = cmd.get_subcommands().filter(|c| !c.is_hide_set()).collect();
    let width = listed.iter().map(|c| c.get_name().len()).max().unwrap_or(0) + 2;
    let line = |c: &&clap::Command| {
        let about = c.get_about().map(|a| a.to_string()).unwrap_or_default();
        format!("  {:<width$}{about}\n", c.get_name())
    };
    let main: String = MAIN
        .iter()
        .filter_map(|n| listed.iter().find(|c| c.get_name() == *n))
        .map(line)
        .collect();
    let others: String = listed
        .iter()
        .filter(|c| !MAIN.contains(&c.get_name()))
        .map(line)
        .collect();
    let template = format!(
        "{{about-with-newline}}\n{{usage-heading}} {{usage}}\n\nThe primary workflow commands are given first, followed by the others.\n\nMain commands:\n{main}\nAll other commands:\n{others}\nGlobal Options:\n{{options}}"
    );
    cmd.help_template(template)
}

/// Help and usage errors as Terraform writes flags: `-flag`, not clap's `--flag`.
pub fn single_dash(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut prev = ' ';
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '-' && !(prev.is_alphanumeric() || prev == '-') && chars.peek() == Some(&'-') {
            let mut ahead = chars.clone();
            ahead.next();
            if ahead.peek().is_some_and(char::is_ascii_lowercase) {
                chars.next();
            }
        }
        out.push(c);
        prev = c;
    }
    out
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
    #[arg(
        long,
        default_value_t = 10,
        env = "SKYFORM_PARALLELISM",
        value_name = "N"
    )]
    pub parallelism: usize,
    /// How long one placement may take before apply removes what it made and moves on.
    #[arg(long = "attempt-timeout", default_value = "120s", value_name = "DURATION", env = "SKYFORM_ATTEMPT_TIMEOUT", value_parser = humantime::parse_duration)]
    pub attempt_timeout: std::time::Duration,
    /// With retry_until_up, the pause before going down the placements again.
    #[arg(long = "retry-delay", default_value = "30s", value_name = "DURATION", env = "SKYFORM_RETRY_DELAY", value_parser = humantime::parse_duration)]
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
    #[arg(long = "lock-timeout", default_value = "0s", env = "SKYFORM_LOCK_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub lock_timeout: std::time::Duration,
    /// -lock=false skips the state lock (dangerous: only when no other run can be active).
    #[arg(long = "lock", default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set, value_name = "BOOL")]
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
    /// -refresh=false skips asking providers what is running.
    #[arg(long = "refresh", default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set, value_name = "BOOL")]
    pub refresh: bool,
    /// Only find what changed outside skyform; apply records it in state and changes nothing.
    #[arg(long = "refresh-only")]
    pub refresh_only: bool,
    #[command(flatten, next_help_heading = "Other Options")]
    pub lock: LockFlags,
}

/// `-input=BOOL`: whether skyform may ask questions on the terminal.
#[derive(Debug, clap::Args, Clone)]
pub struct InputFlag {
    /// -input=false never prompts: what would need an answer fails instead.
    #[arg(long = "input", default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set, value_name = "BOOL", env = "SKYFORM_INPUT", value_parser = clap::builder::BoolishValueParser::new())]
    pub input: bool,
}

/// `-compact-warnings`, as Terraform has it.
#[derive(Debug, clap::Args, Clone)]
pub struct WarningFlags {
    /// With warnings and no errors, show only each warning's summary line.
    #[arg(long = "compact-warnings")]
    pub compact_warnings: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the configuration, create the state, report which infra is usable.
    Init {
        /// The configuration directory (default: the current one).
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
        #[command(flatten)]
        input: InputFlag,
        #[command(flatten)]
        lock: LockFlags,
        /// Report as one JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Parse, evaluate and type-check, offline.
    Validate {
        /// The configuration directory (default: the current one).
        dir: Option<PathBuf>,
        /// Report as one JSON document on stdout: valid, and the diagnostics.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        vars: VarFlags,
    },
    /// Rewrite configuration files in the canonical format (the same as `terraform fmt`).
    Fmt {
        /// Files or directories (default: the current directory); `-` reads standard input
        /// and writes the result to standard output.
        targets: Vec<PathBuf>,
        /// -list=false: do not list the files whose formatting differs.
        #[arg(long, default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set, value_name = "BOOL")]
        list: bool,
        /// -write=false: do not rewrite the files (always off with -check or standard input).
        #[arg(long, default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set, value_name = "BOOL")]
        write: bool,
        /// Show the changes as a unified diff.
        #[arg(long)]
        diff: bool,
        /// Only check: exit 0 when every file is formatted, 3 when one is not.
        #[arg(long)]
        check: bool,
        /// Also the files in subdirectories.
        #[arg(long)]
        recursive: bool,
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
        /// The configuration directory (default: the current one).
        dir: Option<PathBuf>,
        #[command(flatten, next_help_heading = "Plan Customization Options")]
        flags: PlanFlags,
        /// Plan to destroy everything in state.
        #[arg(long, help_heading = "Plan Customization Options")]
        destroy: bool,
        /// Exit 0 with no changes, 2 with changes, 1 on error.
        #[arg(long = "detailed-exitcode", help_heading = "Other Options")]
        detailed_exitcode: bool,
        /// Write the plan to FILE for `skyform apply FILE`.
        #[arg(long, value_name = "FILE", help_heading = "Other Options")]
        out: Option<PathBuf>,
        /// The same as -format=json.
        #[arg(long, help_heading = "Other Options")]
        json: bool,
        /// human (default), markdown (for a pull request comment) or json.
        #[arg(
            long,
            value_enum,
            value_name = "FORMAT",
            help_heading = "Other Options"
        )]
        format: Option<PlanFormat>,
        /// Accepted for Terraform's pipelines; planning asks every provider at once.
        #[arg(long, value_name = "N", help_heading = "Other Options")]
        parallelism: Option<usize>,
        #[command(flatten, next_help_heading = "Other Options")]
        input: InputFlag,
        #[command(flatten, next_help_heading = "Other Options")]
        warnings: WarningFlags,
    },
    /// Carry out a saved plan, or plan, confirm and apply.
    Apply {
        /// A plan file from `plan -out` (or the configuration directory).
        planfile: Option<PathBuf>,
        #[command(flatten, next_help_heading = "Plan Customization Options")]
        flags: PlanFlags,
        /// The same as `skyform destroy`.
        #[arg(long, help_heading = "Plan Customization Options")]
        destroy: bool,
        /// Apply without asking for approval.
        #[arg(long = "auto-approve", help_heading = "Other Options")]
        auto_approve: bool,
        #[command(flatten, next_help_heading = "Other Options")]
        input: InputFlag,
        #[command(flatten, next_help_heading = "Other Options")]
        run: RunFlags,
        /// Wait for submitted jobs to finish; fail if any failed.
        #[arg(long, help_heading = "Other Options")]
        wait: bool,
        #[command(flatten, next_help_heading = "Other Options")]
        warnings: WarningFlags,
    },
    /// Destroy everything in state.
    Destroy {
        /// The configuration directory (default: the current one).
        dir: Option<PathBuf>,
        /// Destroy without asking for approval.
        #[arg(long = "auto-approve")]
        auto_approve: bool,
        #[command(flatten)]
        input: InputFlag,
        #[command(flatten)]
        vars: VarFlags,
        /// Only these resources (and what depends on them). Repeatable.
        #[arg(long = "target", value_name = "ADDR")]
        target: Vec<String>,
        /// -refresh=false skips asking providers what is running.
        #[arg(long = "refresh", default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set, value_name = "BOOL")]
        refresh: bool,
        #[command(flatten)]
        lock: LockFlags,
        #[command(flatten)]
        run: RunFlags,
        #[command(flatten)]
        warnings: WarningFlags,
    },
    /// Show a saved plan or the current state.
    Show {
        /// A plan file from `plan -out` (default: the current state).
        planfile: Option<PathBuf>,
        /// As JSON (the plan's or the state's document).
        #[arg(long)]
        json: bool,
        /// For a plan file: human (default), markdown or json.
        #[arg(long, value_enum, value_name = "FORMAT")]
        format: Option<PlanFormat>,
    },
    /// Outputs from state.
    Output {
        /// One output (default: all of them).
        name: Option<String>,
        /// As JSON: every output with its value, type and sensitivity, or one output's value.
        #[arg(long)]
        json: bool,
        /// One output's string, number or bool value, as it is (no quotes), for scripts.
        #[arg(long)]
        raw: bool,
    },
    /// Evaluate expressions against the configuration and state (reads stdin without a
    /// terminal).
    Console {
        /// The configuration directory (default: the current one).
        dir: Option<PathBuf>,
        #[command(flatten)]
        vars: VarFlags,
    },
    /// The version of skyform.
    Version {
        /// As a JSON document.
        #[arg(long)]
        json: bool,
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
        /// The lock's ID, as the error that names the lock shows it.
        lock_id: String,
        /// Remove it without asking.
        #[arg(long)]
        force: bool,
    },
    /// Clusters, jobs and services with their placement and cost.
    Status {
        /// As one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// A shell, or a command, on a cluster's head node.
    Ssh {
        /// The cluster's name.
        cluster: String,
        /// The command and its arguments (after `--`); none: an interactive shell.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Stop a cluster's machines, keeping their disks (clouds that support it).
    Stop {
        /// The cluster's name.
        cluster: String,
        #[command(flatten)]
        lock: LockFlags,
    },
    /// Start a stopped cluster again.
    Start {
        /// The cluster's name.
        cluster: String,
        #[command(flatten)]
        lock: LockFlags,
    },
    /// A job's output.
    Logs {
        /// The job's address (job.NAME).
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
        /// As one JSON document.
        #[arg(long)]
        json: bool,
        /// Where the catalogs are (default: the configuration's catalog_dir, or ~/.skyform/catalogs).
        #[arg(long = "catalog-dir", env = "SKYFORM_CATALOG_DIR", value_name = "DIR")]
        catalog_dir: Option<PathBuf>,
    },
    /// The price catalogs.
    Catalog {
        #[command(subcommand)]
        command: CatalogCommand,
        /// Where the catalogs are (default: the configuration's catalog_dir, or ~/.skyform/catalogs).
        #[arg(
            long = "catalog-dir",
            env = "SKYFORM_CATALOG_DIR",
            global = true,
            value_name = "DIR"
        )]
        catalog_dir: Option<PathBuf>,
    },
    /// The dependency graph.
    Graph {
        /// The configuration directory (default: the current one).
        dir: Option<PathBuf>,
        /// dot (Graphviz) or mermaid.
        #[arg(long, default_value = "dot", value_name = "FORMAT")]
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
    /// vCPUs: N, or N+ for at least N.
    #[arg(long, value_name = "N")]
    pub cpus: Option<String>,
    /// Memory in GB: N, or N+ for at least N.
    #[arg(long, value_name = "GB")]
    pub memory: Option<String>,
    /// Spot (preemptible) prices.
    #[arg(long)]
    pub spot: bool,
    /// cloud[/region[/zone]], with "*" wildcards.
    #[arg(long, value_name = "INFRA")]
    pub infra: Option<String>,
    /// Only this instance type.
    #[arg(long = "instance-type", value_name = "TYPE")]
    pub instance_type: Option<String>,
    /// Only offers at most this many dollars an hour (for all the nodes).
    #[arg(long = "max-hourly-cost", value_name = "DOLLARS")]
    pub max_hourly_cost: Option<f64>,
    /// How many nodes (prices are for all of them).
    #[arg(long, default_value_t = 1, value_name = "N")]
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
    New {
        /// The workspace's name.
        name: String,
        #[command(flatten)]
        lock: LockFlags,
    },
    /// Switch to a workspace.
    Select {
        /// The workspace's name.
        name: String,
        /// Create the workspace when there is none of that name.
        #[arg(long = "or-create", default_value_t = false, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set, value_name = "BOOL")]
        or_create: bool,
    },
    /// Delete a workspace's state (refused while it holds resources, unless -force).
    Delete {
        /// The workspace's name.
        name: String,
        /// Delete it even though its state still holds resources.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        lock: LockFlags,
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
        /// As one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Stop it; managed jobs keep running, and the next apply or start resumes watching.
    Stop,
}

#[derive(Debug, Clone, Subcommand)]
pub enum StateCommand {
    /// The addresses of the resources in state.
    List,
    /// One resource in state, as JSON.
    Show {
        /// The resource's address (cluster.NAME, job.NAME, …).
        address: String,
    },
    /// Forget a resource without touching what runs.
    Rm {
        /// The resource's address.
        address: String,
        /// Only say what would be removed.
        #[arg(long = "dry-run")]
        dry_run: bool,
        #[command(flatten)]
        lock: LockFlags,
    },
    /// Rename a resource in state.
    Mv {
        /// The address it has.
        from: String,
        /// The address it gets.
        to: String,
        /// Only say what would be moved.
        #[arg(long = "dry-run")]
        dry_run: bool,
        #[command(flatten)]
        lock: LockFlags,
    },
    /// The state document on stdout.
    Pull,
    /// Replace the state with a file's.
    Push {
        /// A state document, as `state pull` writes it.
        file: PathBuf,
        /// Push even when its lineage differs or its serial is older.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        lock: LockFlags,
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
